"""The two trainers side by side: ours (`train_tokenizer`, GPT-4's split) and HF's `BpeTrainer` with
GPT-2's split (the usual HF setup) or GPT-4's, from a file or from text blocks."""

import os
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from gptcli.config import TokenizerTrainConfig
from gptcli.data.sources import CorpusReader
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.tokenizers.base import ENDOFTEXT
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.bpe_train import PRETOKENIZE_BLOCK_BYTES
from gptcli.tokenizers.patterns import GPT4_PATTERN

BLOCK_CHARS = 1 << 20  # text blocks fed to HF's train_from_iterator
# Oniguruma (HF) reads `{1,3}+` as "{1,3}, one or more times", not as possessive; plain `{1,3}`
# splits exactly as GPT4_PATTERN does in the `regex` module and in tiktoken.
HF_GPT4_PATTERN = GPT4_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")


def train_ours(path: Path, vocab_size: int) -> BPETokenizer:
    return train_tokenizer(TokenizerTrainConfig(files=[str(path)], vocab_size=vocab_size)).tokenizer


def new_hf(split: str) -> Tokenizer:
    """split 'gpt2': ByteLevel's built-in regex (the usual HF setup); 'gpt4': the same split as ours."""
    tok = Tokenizer(models.BPE())
    if split == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        gpt4_split = pre_tokenizers.Split(Regex(HF_GPT4_PATTERN), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([gpt4_split, byte_level])
    tok.decoder = decoders.ByteLevel()
    return tok


def text_blocks(path: Path) -> Iterator[str]:
    """The file's text in blocks of about BLOCK_CHARS, each ending at a newline."""
    text = path.read_text(encoding="utf-8")
    start = 0
    while start < len(text):
        end = text.find("\n", start + BLOCK_CHARS) + 1 or len(text)
        yield text[start:end]
        start = end


def corpus_texts(path: Path) -> Iterator[str]:
    """The file's text in the blocks `gpt tokenizer train` pre-tokenizes."""
    return (text for text, _ in CorpusReader([path], block_bytes=PRETOKENIZE_BLOCK_BYTES))


def train_hf(path: Path, vocab_size: int, split: str = "gpt2", blocks: bool = False) -> Tokenizer:
    """HF's usual `train(files)` (line by line), or with blocks=True `train_from_iterator` on text blocks."""
    tok = new_hf(split)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[ENDOFTEXT],
        show_progress=False,
    )
    if blocks:
        tok.train_from_iterator(text_blocks(path), trainer)
    else:
        tok.train([str(path)], trainer)
    return tok


def hf_parallel(enabled: bool) -> None:
    """HF reads this variable on every call: 'false' keeps encode_batch (and training) on one thread."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
