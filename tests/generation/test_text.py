"""SampleState: a sample in progress, as `gpt generate` and the server take tokens into it."""

from test_engine import char_tokenizer

from gptcli.generation.text import SampleState, SampleText


def take_all(sample: SampleState, tokens: list[int], eos: int | None) -> str:
    text = ""
    for token in tokens:
        if sample.finish_reason is None:
            text += sample.take(token, char_tokenizer(), eos)
    return text


def test_a_stop_string_ends_the_sample_with_its_text_cut_before_it():
    tokenizer = char_tokenizer()
    ids = tokenizer.encode("abcxyd")
    sample = SampleState(SampleText(["xy"]))
    assert take_all(sample, ids, eos=tokenizer.eot_id) == "abc"
    assert sample.finish_reason == "stop" and sample.ids == ids[:5]  # the stop's tokens are taken


def test_the_end_of_text_ends_the_sample_and_is_not_kept_unless_ignored():
    tokenizer = char_tokenizer()
    ids = [*tokenizer.encode("ab"), tokenizer.eot_id, *tokenizer.encode("c")]
    sample = SampleState(SampleText([]))
    assert take_all(sample, ids, eos=tokenizer.eot_id) == "ab"
    assert sample.finish_reason == "eos" and sample.ids == ids[:2]
    ignoring = SampleState(SampleText([]))
    take_all(ignoring, ids, eos=None)
    assert ignoring.finish_reason is None and ignoring.ids == ids
