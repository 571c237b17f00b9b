import pytest

from gptcli.config import TokenizerTrainConfig
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from gptcli.tokenizers import CharTokenizer, load_tokenizer


def test_char_tokenizer_trains_roundtrips_and_saves(corpus, tmp_path):
    path = corpus("hello wörld\n<|endoftext|>")
    tok = train_tokenizer(TokenizerTrainConfig(files=[str(path)], kind="char")).tokenizer
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == sorted(set("hello wörld\n<|endoftext|>"))
    assert tok.eot_id == len(tok.chars)
    text = "hello <|endoftext|>wörld"
    assert tok.decode(tok.encode(text, allow_special=True)) == text
    loaded = load_tokenizer(tok.save(tmp_path / "char.json"))
    assert loaded.encode("world") == tok.encode("world")


def test_unknown_characters_are_named(corpus):
    tok = train_tokenizer(TokenizerTrainConfig(files=[str(corpus("abc"))], kind="char")).tokenizer
    with pytest.raises(GptError, match=r"2 character\(s\).*'x', 'z'"):
        tok.encode("zax")


def test_vocab_size_too_small_for_the_characters(corpus):
    with pytest.raises(GptError, match="distinct characters"):
        train_tokenizer(TokenizerTrainConfig(files=[str(corpus("abcdef"))], kind="char", vocab_size=4))
