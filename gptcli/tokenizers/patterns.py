"""Pre-tokenization split patterns: text is cut into chunks by a regex, and BPE never merges across chunks.

The two named patterns are OpenAI's: GPT-2's (r50k) and GPT-4's (cl100k). Anything else passed as
`--pattern` is taken as a regex for the `regex` module (it must support \\p{L} and friends).
"""

import regex

from gptcli.errors import GptError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
NAMED_PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(name_or_regex: str) -> str:
    """'gpt2' | 'gpt4' | a regex -> the regex, checked to compile in both engines that run it:
    Python's `regex` (training) and tiktoken's Rust fancy-regex (encoding)."""
    pattern = NAMED_PATTERNS.get(name_or_regex, name_or_regex)
    import tiktoken  # here, not at the top: pre-tokenizing workers import this module and need no tiktoken

    try:
        regex.compile(pattern)
        tiktoken.Encoding("pattern-check", pat_str=pattern, mergeable_ranks=_BYTE_RANKS, special_tokens={})
    except (regex.error, ValueError) as e:
        raise GptError(f"invalid split pattern {name_or_regex!r}: {e}") from None
    return pattern


_BYTE_RANKS = {bytes([i]): i for i in range(256)}


def pattern_name(pattern: str) -> str:
    """The short name of a pattern for display ('gpt2', 'gpt4' or 'custom')."""
    for name, known in NAMED_PATTERNS.items():
        if pattern == known:
            return name
    return "custom"
