"""Tokenizers: byte-level BPE (trained here or GPT-2's), character-level; one file format for all.

from gptcli.tokenizers import load_tokenizer
tok = load_tokenizer("tokenizer.json")
ids = tok.encode("Hello world")
assert tok.decode(ids) == "Hello world"
"""

from gptcli.tokenizers.base import ENDOFTEXT, Tokenizer
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.char import CharTokenizer
from gptcli.tokenizers.load import load_tokenizer

__all__ = ["ENDOFTEXT", "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer"]
