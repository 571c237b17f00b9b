"""Exports are checked against the real readers: HF `tokenizers`, `transformers`' GPT-2 tokenizer, tiktoken."""

import json
import shutil

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe
from tokenizers import Tokenizer as HFTokenizer

from gptcli.config import TokenizerTrainConfig
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.export import export_tokenizer
from tests.conftest import SONNETS

transformers = pytest.importorskip("transformers")

random_text = st.lists(
    st.one_of(
        st.sampled_from(
            [" the", "Thou", "'s", "'LL", "\n\n", "  ", " \n", "\t", "!?", " 12345", "é", "🙂", "日本語"]
        ),
        st.integers(0, 10**9).map(str),
        st.text(max_size=6),
    ),
    max_size=30,
).map("".join)


def train_and_export(pattern, tmp_path_factory):
    """(our tokenizer trained on the sonnets + numbers, folder with its HF export)."""
    numbers = tmp_path_factory.mktemp("numbers") / "numbers.txt"
    # digit runs longer than three make digit merges, where split-pattern differences show
    numbers.write_text(
        "".join(f"In {1900 + i % 130} came {i * 7919} and {i % 1000:03d}.\n" for i in range(3000))
    )
    config = TokenizerTrainConfig(files=[str(SONNETS), str(numbers)], vocab_size=1000, pattern=pattern)
    tok = train_tokenizer(config).tokenizer
    out = tmp_path_factory.mktemp(f"hf-{pattern}")
    export_tokenizer(tok, "hf", out)
    return tok, out


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def exported(request, tmp_path_factory):
    return train_and_export(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def exported_gpt2(tmp_path_factory):
    return train_and_export("gpt2", tmp_path_factory)


@settings(max_examples=150, deadline=None)
@given(text=random_text)
def test_hf_tokenizers_reads_our_export_exactly(exported, text):
    tok, out = exported
    hf = HFTokenizer.from_file(str(out / "tokenizer.json"))
    ids = tok.encode_ordinary(text)
    assert hf.encode(text, add_special_tokens=False).ids == ids
    assert hf.decode(ids) == tok.decode(ids)


@settings(max_examples=100, deadline=None)
@given(text=random_text)
def test_transformers_gpt2_tokenizer_reads_vocab_and_merges(exported_gpt2, tmp_path_factory, text):
    # GPT2Tokenizer always splits with GPT-2's pattern. (transformers 5 has no separate slow
    # GPT-2 tokenizer any more; both the vocab.json+merges.txt and the tokenizer.json route are checked.)
    tok, out = exported_gpt2
    only_vocab = tmp_path_factory.mktemp("vocab-only")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(out / name, only_vocab / name)
    for folder in (only_vocab, out):  # from vocab.json + merges.txt, and from tokenizer.json
        hf = transformers.GPT2Tokenizer.from_pretrained(str(folder))
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode_ordinary(text)


def test_export_loads_back_as_kind_gpt2_with_the_same_ids(exported):
    tok, out = exported
    back = load_tokenizer(out)
    assert back.kind == "gpt2"
    assert back.pattern == tok.pattern  # taken from the HF tokenizer.json beside vocab.json
    text = "Shall I compare thee to a summer's day?\n<|endoftext|> 2024 🙂"
    assert back.encode(text, allow_special=True) == tok.encode(text, allow_special=True)
    assert back.eot_id == tok.eot_id


def test_tiktoken_export_builds_an_equal_encoding(exported, tmp_path):
    tok, _ = exported
    export_tokenizer(tok, "tiktoken", tmp_path)
    meta = json.loads((tmp_path / "tiktoken.json").read_text())
    enc = tiktoken.Encoding(
        "ours",
        pat_str=meta["pat_str"],
        mergeable_ranks=load_tiktoken_bpe(str(tmp_path / "tokenizer.tiktoken")),
        special_tokens=meta["special_tokens"],
    )
    text = "From fairest creatures we desire increase,<|endoftext|>"
    assert enc.encode(text, allowed_special="all") == tok.encode(text, allow_special=True)


def test_char_tokenizers_cannot_be_exported(corpus, tmp_path):
    tok = train_tokenizer(TokenizerTrainConfig(files=[str(corpus("abc"))], kind="char")).tokenizer
    with pytest.raises(GptError, match="only BPE"):
        export_tokenizer(tok, "hf", tmp_path)
