"""What the chat tests share: small BPE tokenizers trained on the sonnets, and conversations."""

import pytest

from gptcli.config import TokenizerTrainConfig
from gptcli.data.tokenizer_corpus import train_tokenizer
from tests.conftest import SONNETS

# several multi-turn conversations: with and without a system message, non-ASCII, odd spacing
CONVERSATIONS = [
    [
        {"role": "user", "content": "Shall I compare thee to a summer's day?"},
        {"role": "assistant", "content": "Thou art more lovely and more temperate."},
    ],
    [
        {"role": "system", "content": "You answer in one line.\n"},
        {"role": "user", "content": "Combien coûte un café à Paris ? 日本語も話せますか"},
        {"role": "assistant", "content": "Trois euros, à peu près. はい、少し。🎉"},
        {"role": "user", "content": "  and   with spaces  "},
        {"role": "assistant", "content": "\n\nRough winds do shake the darling buds of May,\n"},
    ],
    [
        {"role": "system", "content": "Ünïcödé system"},
        {"role": "user", "content": "1+1=?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 12345 * 678?"},
        {"role": "assistant", "content": " 8,369,910 (I think)."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome — «de rien»."},
    ],
]


def train(vocab_size: int = 400, pattern: str = "gpt2"):
    return train_tokenizer(
        TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=vocab_size, pattern=pattern)
    ).tokenizer


@pytest.fixture(scope="session")
def base_bpe():
    """A GPT-2-pattern BPE of 400 tokens (399 + <|endoftext|>), no chat tokens."""
    return train()


@pytest.fixture(scope="session")
def chat_bpe(base_bpe):
    """base_bpe with ChatML's special tokens added, as fine-tuning adds them."""
    from gptcli.tokenizers import with_special_tokens

    tok, added = with_special_tokens(base_bpe, ["<|im_start|>", "<|im_end|>"])
    assert added == ["<|im_start|>", "<|im_end|>"]
    return tok
