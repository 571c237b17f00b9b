"""Finding corpus files and reading them as text in bounded-memory blocks.

Shared by tokenizer training and the training-data pipeline. Files are read in binary blocks and
decoded incrementally, so a multi-GB corpus never sits in memory. Invalid UTF-8 is replaced by
U+FFFD and counted, never fatal. Blocks end at a "safe cut": between a letter and a space. With
GPT-2's and GPT-4's split patterns a chunk never spans such a point and the chunk before it never
depends on what follows (the patterns look ahead only past whitespace), so pre-tokenizing block by
block gives exactly the chunks of the whole file (tests/data/test_corpus.py checks this).
"""

import codecs
import glob
from collections.abc import Iterator
from pathlib import Path

from gptcli.errors import GptError

TEXT_SUFFIXES = {
    ".txt",
    ".md",
    ".text",
    ".rst",
    ".csv",
    ".tsv",
    ".json",
    ".jsonl",
    ".py",
    ".html",
    ".xml",
    "",
}
BLOCK_BYTES = 1 << 22  # 4 MiB of input per block
MAX_CARRY_CHARS = (
    1 << 26
)  # text with no safe cut (no spaces: CJK, minified data) is cut hard at 64M characters


def find_text_files(paths: list[str | Path]) -> list[Path]:
    """Files, directories (searched recursively for text files) and glob patterns -> sorted unique files."""
    if not paths:
        raise GptError("no corpus given: pass one or more files or directories")
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if any(ch in str(raw) for ch in "*?[") and not p.exists():
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            if not matches:
                raise GptError(f"no files match {str(raw)!r}")
            found.extend(m for m in matches if m.is_file())
        elif p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in TEXT_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not files:
                raise GptError(
                    f"directory {str(p)!r} holds no text files ({', '.join(sorted(s for s in TEXT_SUFFIXES if s))})"
                )
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise GptError(f"corpus file not found: {str(raw)!r}")
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if sum(f.stat().st_size for f in unique) == 0:
        raise GptError("the corpus is empty: " + ", ".join(str(f) for f in unique))
    return unique


_invalid_seen = [0]  # bytes replaced so far by the handler below (reading is single-threaded)


def _replace_and_count(err: UnicodeDecodeError) -> tuple[str, int]:
    _invalid_seen[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("gptcli-replace-count", _replace_and_count)


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

    After iteration, `invalid_bytes` holds how many undecodable byte sequences were replaced.
    """

    def __init__(self, path: Path, block_bytes: int | None = None):
        self.path = path
        self.block_bytes = block_bytes or BLOCK_BYTES
        self.invalid_bytes = 0

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="gptcli-replace-count")
        carry = ""
        with open(self.path, "rb") as fh:
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
