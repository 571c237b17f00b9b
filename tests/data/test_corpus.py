from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.data.corpus import TextReader, find_text_files
from gptcli.errors import GptError
from gptcli.tokenizers.patterns import GPT2_PATTERN, GPT4_PATTERN

# text rich in the characters where split patterns are delicate: newlines, spaces, letters, digits
delicate_text = st.lists(
    st.sampled_from(list("ab Z9\n\r\t.'é🙂\u3000") + ["\n\n", "  ", "'s", "\nThe"]), max_size=150
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=delicate_text, block=st.integers(1, 64))
def test_block_reading_gives_the_chunks_of_the_whole_text(tmp_path_factory, text, block):
    path = tmp_path_factory.mktemp("c") / "c.txt"
    path.write_text(text, encoding="utf-8", newline="")
    blocks = list(TextReader(path, block_bytes=block))
    assert "".join(blocks) == text
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        whole = Counter(regex.findall(pattern, text))
        by_block = Counter(chunk for b in blocks for chunk in regex.findall(pattern, b))
        assert by_block == whole


def test_invalid_utf8_is_replaced_and_counted(corpus):
    path = corpus(b"ok \xff\xfe text \xe2\x82 end \xef\xbf\xbd")  # two bad sequences + one real U+FFFD
    reader = TextReader(path, block_bytes=4)
    text = "".join(reader)
    assert text == "ok \ufffd\ufffd text \ufffd end \ufffd"
    assert reader.invalid_bytes == 4


def test_find_text_files_resolves_dirs_globs_and_reports_problems(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "b.md").write_text("b")
    (tmp_path / "d" / "img.png").write_bytes(b"\x89PNG")
    files = find_text_files([tmp_path / "d"])
    assert [f.name for f in files] == ["a.txt", "b.md"]
    assert [f.name for f in find_text_files([str(tmp_path / "d" / "*.txt")])] == ["a.txt"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("")
    for bad, message in [
        ([tmp_path / "missing.txt"], "not found"),
        ([tmp_path / "empty"], "no text files"),
        ([tmp_path / "empty.txt"], "empty"),
        ([str(tmp_path / "*.nothing")], "no files match"),
        ([], "no corpus"),
    ]:
        with pytest.raises(GptError, match=message):
            find_text_files(bad)
