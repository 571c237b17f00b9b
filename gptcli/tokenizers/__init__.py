"""Tokenizers: byte-level BPE (trained here or GPT-2's), character-level; one file format for all.

from gptcli.tokenizers import load_tokenizer
tok = load_tokenizer("tokenizer.json")
ids = tok.encode("Hello world")
assert tok.decode(ids) == "Hello world"
"""

import importlib

# names -> their modules, imported on first use: a process that needs one module (a pre-tokenizing
# worker: gptcli.tokenizers.pretokenize) does not load pydantic and tiktoken with the others
_HOMES = {
    "ENDOFTEXT": "base",
    "Tokenizer": "base",
    "BPETokenizer": "bpe",
    "CharTokenizer": "char",
    "load_tokenizer": "load",
    "with_special_tokens": "load",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = ["ENDOFTEXT", "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer", "with_special_tokens"]
