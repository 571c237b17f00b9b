"""Byte-level BPE: ids stand for byte strings; merges, in rank order, build longer ones from shorter.

    >>> tok = BPETokenizer(merges=[(104, 105)], pattern=GPT4_PATTERN, special_tokens={"<|endoftext|>": 257})
    >>> tok.encode("hi hi")         # 'h'=104, 'i'=105 -> merge 0 gives id 256
    [256, 32, 256]
    >>> tok.decode([256, 32, 256])
    'hi hi'

Encoding runs in tiktoken's Rust core, built from our ranks (a token's rank is its id). tiktoken
merges, at each step, the adjacent pair whose concatenation has the lowest rank; with unique token
byte strings (checked here) that is the same as applying our merges in rank order, which
`reference_encode` does in pure Python for the tests.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import regex
import tiktoken

from gptcli.errors import GptError
from gptcli.tokenizers.base import CorpusFile, Tokenizer, TokenizerFile
from gptcli.tokenizers.patterns import GPT4_PATTERN, pattern_name, resolve_pattern

IDENTITY_BYTE_ORDER = list(range(256))
MIN_CHARS_PER_THREADED_TEXT = 1 << 14  # shorter texts are encoded in one thread (see encode_batch)


class BPETokenizer(Tokenizer):
    """kind 'bpe' (trained here) or 'gpt2' (loaded from OpenAI/HF GPT-2 vocab files)."""

    def __init__(
        self,
        merges: list[tuple[int, int]],
        pattern: str = GPT4_PATTERN,
        special_tokens: dict[str, int] | None = None,
        byte_order: list[int] | None = None,
        kind: str = "bpe",
        trained_on: list[CorpusFile] | None = None,
    ):
        super().__init__(special_tokens or {}, trained_on)
        self.kind = kind
        self.merges = [tuple(m) for m in merges]
        self.pattern = pattern
        self.byte_order = list(byte_order) if byte_order is not None else IDENTITY_BYTE_ORDER
        # vocab[id] = the bytes of that id
        self.vocab: list[bytes] = [bytes([b]) for b in self.byte_order]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        resolve_pattern(pattern)  # a clear error for a regex that does not compile
        ranks = {token: i for i, token in enumerate(self.vocab)}
        if len(ranks) != len(self.vocab):
            first = next(i for i, t in enumerate(self.vocab) if ranks[t] != i)
            raise GptError(
                f"tokenizer is invalid: ids {ranks[self.vocab[first]]} and {first} are the same bytes"
            )
        self._enc = tiktoken.Encoding(
            name=f"gptcli-{kind}-{len(self.vocab)}",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )

    @property
    def n_ordinary(self) -> int:
        return len(self.vocab)

    @property
    def pattern_name(self) -> str:
        return pattern_name(self.pattern)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts (specials as plain text), on `num_threads` threads for long texts.

        Threads pay off only for long texts: tiktoken releases the GIL while it encodes, but for
        short ones (a line) the Python call around it dominates and threads just fight over the
        GIL. Each thread takes one contiguous slice of the list (tiktoken's own batch call makes
        one task per text, which is ~7x slower on a million lines).
        """
        n = min(num_threads or os.cpu_count() or 1, len(texts))
        if n <= 1 or sum(map(len, texts)) < len(texts) * MIN_CHARS_PER_THREADED_TEXT:
            return [self._enc.encode_ordinary(t) for t in texts]
        size = -(-len(texts) // n)
        slices = [texts[i : i + size] for i in range(0, len(texts), size)]
        with ThreadPoolExecutor(n) as pool:
            parts = pool.map(lambda part: [self._enc.encode_ordinary(t) for t in part], slices)
        return [ids for part in parts for ids in part]

    def _encode_allowing_special(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < len(self.vocab):
            return self.vocab[token_id]
        return self.id_to_special[token_id].encode("utf-8")

    def decode_bytes(self, ids: list[int]) -> bytes:
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, ValueError, OverflowError, TypeError):
            self.check_ids(ids)  # names the bad id
            raise

    def to_file(self) -> TokenizerFile:
        return TokenizerFile(
            kind=self.kind,
            pattern=self.pattern,
            byte_order=self.byte_order,
            merges=self.merges,
            special_tokens=self.special_tokens,
            trained_on=self.trained_on,
        )

    # --- the pure-Python reference, for tests: apply merges in rank order to each chunk
    def reference_encode(self, text: str) -> list[int]:
        byte_to_id = {b: i for i, b in enumerate(self.byte_order)}
        merge_rank = {pair: i for i, pair in enumerate(self.merges)}
        ids: list[int] = []
        for chunk in regex.findall(self.pattern, text):
            part = [byte_to_id[b] for b in chunk.encode("utf-8")]
            while len(part) >= 2:
                # the adjacent pair merged earliest in training
                pair = min(zip(part, part[1:]), key=lambda p: merge_rank.get(p, float("inf")))
                if pair not in merge_rank:
                    break
                part = merge_pair(part, pair, 256 + merge_rank[pair])
            ids += part
        return ids


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`.

    >>> merge_pair([1, 2, 2, 2, 2], (2, 2), 9)
    [1, 9, 9]
    """
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
