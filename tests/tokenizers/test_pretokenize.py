import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.tokenizers.patterns import GPT2_PATTERN, GPT4_PATTERN
from gptcli.tokenizers.pretokenize import Splitter

# every ASCII character (controls and \x1c-\x1f, where `re`'s and `regex`'s \s differ, included),
# and the non-ASCII letters, digits, spaces, marks and case folds that the fast path must hand over
ASCII = [chr(c) for c in range(128)]
OTHER = list("éÉ中文ſKİ٣²\u3000\xa0\u0301🙂ß")
WORDS = ["'s", "'S", "'ll", "'VE", "don't", "  ", "\n\n", "\r\n", " 123456", "abc", "x y"]
texts = st.lists(st.sampled_from(ASCII + OTHER + WORDS + [" "] * 8 + ["a"] * 8), max_size=80).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=texts, pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN]))
def test_chunks_equal_regex_on_the_whole_text(text, pattern):
    assert Splitter(pattern).findall(text) == regex.findall(pattern, text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
def test_ascii_text_takes_the_fast_path_and_agrees(text):
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        assert Splitter(pattern).ascii.findall(text) == regex.findall(pattern, text)


def test_mostly_ascii_text_with_a_few_other_characters():
    text = "def f(x):\n    return x  # café, naïve 中文 ok\n\n" * 50 + "end é"
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        assert Splitter(pattern).findall(text) == regex.findall(pattern, text)


def test_other_patterns_run_in_regex():
    splitter = Splitter(r"\p{L}+|\s+")
    assert splitter.ascii is None
    assert splitter.findall("añb c") == ["añb", " ", "c"]


def test_workers_count_what_one_process_counts():
    from collections import Counter

    from gptcli.tokenizers.pretokenize import count_in_workers

    texts = [f"line {i}: café {'x' * (i % 7)}\n\n  end" for i in range(400)]
    tasks = [texts[i : i + 50] for i in range(0, len(texts), 50)]
    handed = []
    counts = count_in_workers(iter(tasks), GPT4_PATTERN, 2, handed.append)
    assert counts == Counter(c for text in texts for c in regex.findall(GPT4_PATTERN, text))
    assert handed == tasks


def test_a_failing_input_stops_the_workers_and_reaches_the_caller():
    import psutil
    import pytest

    from gptcli.errors import GptError
    from gptcli.tokenizers.pretokenize import count_in_workers

    def tasks():
        yield ["some text"]
        raise GptError("data.jsonl line 2: not JSON")

    with pytest.raises(GptError, match="line 2"):
        count_in_workers(tasks(), GPT4_PATTERN, 2, lambda task: None)
    assert not [p for p in psutil.Process().children() if p.is_running() and p.status() != "zombie"]


def test_a_worker_that_dies_is_an_error():
    import pytest

    from gptcli.errors import GptError
    from gptcli.tokenizers.pretokenize import count_in_workers

    with pytest.raises(GptError, match="worker process failed"):
        count_in_workers(iter([["text"]]), "(", 2, lambda task: None)  # a pattern no worker can compile
