"""Reading a plain-text document as text in bounded-memory blocks.

Shared by tokenizer training and the training-data pipeline (through `gptcli.data.sources`, which
finds the corpus and reads its other formats). A document is read from a binary stream (a file, or a
decompressor over one) in blocks and decoded incrementally, so a multi-GB text never sits in
memory. Invalid UTF-8 is replaced by U+FFFD and counted, never fatal. Blocks end at a "safe cut":
between a letter and a space. With GPT-2's and GPT-4's split patterns a chunk never spans such a
point and the chunk before it never depends on what follows (the patterns look ahead only past
whitespace), so pre-tokenizing block by block gives exactly the chunks of the whole text
(tests/data/test_corpus.py checks this).

    >>> with open("corpus.txt", "rb") as fh:
    ...     blocks = list(TextReader(Path("corpus.txt"), block_bytes=1 << 20, stream=fh))
"""

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

BLOCK_BYTES = 1 << 22  # 4 MiB of input per block
MAX_CARRY_CHARS = (
    1 << 26
)  # text with no safe cut (no spaces: CJK, minified data) is cut hard at 64M characters


_invalid_seen = [0]  # bytes replaced so far by the handler below (reading is single-threaded)


def _replace_and_count(err: UnicodeDecodeError) -> tuple[str, int]:
    _invalid_seen[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("gptcli-replace-count", _replace_and_count)


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """Bytes -> (text, bytes replaced by U+FFFD): b"ok \\xff" -> ("ok \\ufffd", 1)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        seen = _invalid_seen[0]
        text = raw.decode("utf-8", errors="gptcli-replace-count")
        return text, _invalid_seen[0] - seen


def _safe_cut(text: str) -> int:
    """Index of the last space that directly follows a letter, or 0 if there is none."""
    end = len(text)
    while (i := text.rfind(" ", 1, end)) > 0:
        if text[i - 1].isalpha():
            return i
        end = i
    return 0


class TextReader:
    """Iterates a file's text in blocks of about `block_bytes`, cut at safe points.

    With `stream` (an open binary stream: the file, or a decompressor over it) the text is read from
    it, and `path` only names it; else the file at `path` is opened. After iteration,
    `invalid_bytes` holds how many undecodable bytes were replaced.
    """

    def __init__(self, path: Path, block_bytes: int | None = None, stream: BinaryIO | None = None):
        self.path = path
        self.block_bytes = block_bytes or BLOCK_BYTES
        self.stream = stream
        self.invalid_bytes = 0

    def __iter__(self) -> Iterator[str]:
        if self.stream is not None:
            yield from self._blocks(self.stream)
        else:
            with open(self.path, "rb") as fh:
                yield from self._blocks(fh)

    def _blocks(self, fh: BinaryIO) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="gptcli-replace-count")
        carry = ""
        while True:
            raw = fh.read(self.block_bytes)
            final = not raw
            seen = _invalid_seen[0]
            text = decoder.decode(raw, final=final)
            self.invalid_bytes += _invalid_seen[0] - seen
            text = carry + text
            if final:
                if text:
                    yield text
                return
            cut = _safe_cut(text)
            if cut == 0:
                if len(text) < MAX_CARRY_CHARS:  # no safe point yet: read on
                    carry = text
                    continue
                cut = len(text)
            yield text[:cut]
            carry = text[cut:]
