"""with_special_tokens: a chat template's tokens added to bpe, gpt2 and char tokenizers, old ids unchanged."""

import pytest

from gptcli.tokenizers import CharTokenizer, load_tokenizer, with_special_tokens
from gptcli.tokenizers.export import export_tokenizer

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
TEXT = "Shall I compare thee to a summer's day?\n"


def kinds(base_bpe, tmp_path):
    export_tokenizer(base_bpe, "hf", tmp_path / "hf")
    gpt2 = load_tokenizer(tmp_path / "hf")
    char = CharTokenizer(sorted(set(TEXT)), {"<|endoftext|>": len(set(TEXT))})
    return {"bpe": base_bpe, "gpt2": gpt2, "char": char}


@pytest.mark.parametrize("kind", ["bpe", "gpt2", "char"])
def test_new_ids_follow_the_old_ones_and_the_file_round_trips(base_bpe, tmp_path, kind):
    base = kinds(base_bpe, tmp_path)[kind]
    assert base.kind == kind
    tok, added = with_special_tokens(base, CHAT_TOKENS + ["<|endoftext|>", "<|im_end|>"])
    assert added == CHAT_TOKENS  # the ones it had, and repeats, are not added again
    assert tok.vocab_size == base.vocab_size + 2 and tok.n_ordinary == base.n_ordinary
    assert [tok.special_tokens[s] for s in CHAT_TOKENS] == [base.vocab_size, base.vocab_size + 1]
    assert {s: tok.special_tokens[s] for s in base.special_tokens} == base.special_tokens
    assert tok.encode(TEXT) == base.encode(TEXT) and tok.decode(base.encode(TEXT)) == TEXT
    assert "<|im_start|>" not in base.special_tokens  # the given tokenizer is left as it was
    back = load_tokenizer(tok.save(tmp_path / "tok.json"))
    assert back.special_tokens == tok.special_tokens and back.kind == kind
    assert back.encode("<|im_start|>a<|im_end|>", allow_special=True)[::2] == [
        base.vocab_size,
        base.vocab_size + 1,
    ]
    assert with_special_tokens(back, CHAT_TOKENS) == (back, [])
