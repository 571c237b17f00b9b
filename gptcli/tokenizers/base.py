"""What every tokenizer offers, and the one JSON file format they are all saved in.

    tok.encode("hello world")            -> [104, 301, ...]   (refuses special-token strings)
    tok.encode("a<|endoftext|>", allow_special=True)
    tok.decode(ids)                      -> str (invalid UTF-8 shown as U+FFFD)
    tok.decode_bytes(ids)                -> the exact bytes
    tok.save("tokenizer.json")           -> atomic write of the file below

The file (format "gptcli.tokenizer", version 1) is a single JSON object:

    kind            "bpe" | "gpt2" | "char"
    pattern         split regex (bpe, gpt2)
    byte_order      bpe, gpt2: the byte of each id 0..255 (our BPE: 0..255 in order; GPT-2 permutes them)
    merges          bpe, gpt2: [[left_id, right_id], ...] in rank order; merge i creates id 256 + i
    chars           char: the character of each id
    special_tokens  {"<|endoftext|>": id, ...}, ids right after the ordinary vocabulary
    trained_on      the corpus files (path, bytes, sha256), when we trained it
"""

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import regex
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from gptcli.config import ENDOFTEXT
from gptcli.errors import GptError, one_line_validation_error
from gptcli.storage.files import atomic_write_json, sha256_file

FORMAT = "gptcli.tokenizer"
FORMAT_VERSION = 1


class CorpusFile(BaseModel):
    """A corpus file (or dataset folder) a tokenizer was trained on, as its file records it."""

    path: str
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path, parts: list[Path] | None = None) -> "CorpusFile":
        """A file; or a folder whose data is in `parts` (an HF dataset's Arrow files), hashed in order."""
        parts = parts or [path]
        h = None
        for part in parts:
            h = sha256_file(part, h)
        return cls(path=str(path), bytes=sum(p.stat().st_size for p in parts), sha256=h.hexdigest())


class TokenizerFile(BaseModel):
    """Schema of the tokenizer JSON; validation errors become one-line messages on load."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["gptcli.tokenizer"] = FORMAT
    version: Literal[1] = FORMAT_VERSION
    kind: Literal["bpe", "gpt2", "char"]
    pattern: str | None = None
    byte_order: list[int] | None = None
    merges: list[tuple[int, int]] | None = None
    chars: list[str] | None = None
    special_tokens: dict[str, int] = {}
    trained_on: list[CorpusFile] | None = None

    @model_validator(mode="after")
    def _check(self) -> "TokenizerFile":
        if self.kind == "char":
            if self.chars is None:
                raise ValueError("a char tokenizer needs 'chars'")
            if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
                raise ValueError("'chars' must be distinct single characters")
            n_base = len(self.chars)
        else:
            if self.pattern is None or self.merges is None:
                raise ValueError(f"a {self.kind} tokenizer needs 'pattern' and 'merges'")
            if self.byte_order is not None and sorted(self.byte_order) != list(range(256)):
                raise ValueError("'byte_order' must be a permutation of 0..255")
            for i, (a, b) in enumerate(self.merges):
                if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                    raise ValueError(f"merge {i} ({a}, {b}) refers to an id not defined before it")
            n_base = 256 + len(self.merges)
        if any(not s for s in self.special_tokens):
            raise ValueError("special tokens must be non-empty strings")
        if sorted(self.special_tokens.values()) != list(range(n_base, n_base + len(self.special_tokens))):
            raise ValueError(f"special token ids must be {n_base}..{n_base + len(self.special_tokens) - 1}")
        return self


class Tokenizer(ABC):
    """Base class: special-token handling, decoding to text, saving. Subclasses do the rest."""

    kind: str

    def __init__(self, special_tokens: dict[str, int], trained_on: list[CorpusFile] | None = None):
        self.special_tokens = dict(special_tokens)
        self.trained_on = trained_on
        self.id_to_special = {i: s for s, i in special_tokens.items()}
        # longest first, so that a special that contains another one wins
        alternatives = sorted(special_tokens, key=len, reverse=True)
        self._special_re = (
            regex.compile("|".join(regex.escape(s) for s in alternatives)) if alternatives else None
        )

    # --- sizes and special ids
    @property
    @abstractmethod
    def n_ordinary(self) -> int:
        """Number of ids that are not special tokens (they come first)."""

    @property
    def vocab_size(self) -> int:
        return self.n_ordinary + len(self.special_tokens)

    @property
    def eot_id(self) -> int | None:
        """Id of <|endoftext|>, the document separator, when the tokenizer has it."""
        return self.special_tokens.get(ENDOFTEXT)

    # --- encoding
    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating special-token strings as plain text."""

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """encode_ordinary over many texts (BPE runs them on tiktoken's threads)."""
        return [self.encode_ordinary(t) for t in texts]

    def _encode_allowing_special(self, text: str) -> list[int]:
        if self._special_re is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            ids += self.encode_ordinary(text[start : m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        return ids + self.encode_ordinary(text[start:])

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Encode text. Special-token strings become their ids if allowed, else raise GptError."""
        if self._special_re is None:
            return self.encode_ordinary(text)
        if allow_special:
            return self._encode_allowing_special(text)
        m = self._special_re.search(text)
        if m:
            raise GptError(
                f"text contains the special token {m.group()!r} at character {m.start()}; "
                "allow it with --allow-special (allow_special=True)"
            )
        return self.encode_ordinary(text)

    # --- decoding
    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token's are its UTF-8 string)."""

    def check_ids(self, ids: list[int]) -> None:
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < self.vocab_size):
                raise GptError(f"token id {i!r} is out of range for a vocabulary of {self.vocab_size}")

    def decode_bytes(self, ids: list[int]) -> bytes:
        self.check_ids(ids)
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- files
    @abstractmethod
    def to_file(self) -> TokenizerFile:
        """The tokenizer as its file schema."""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_file().model_dump(mode="json", exclude_none=True), indent=None)
        return path


def read_tokenizer_file(path: Path) -> TokenizerFile:
    """Parse and validate a tokenizer JSON file, turning every problem into a one-line GptError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptError(f"{path}: not a tokenizer file (invalid JSON: {e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise GptError(f'{path}: not a gptcli tokenizer file (expected "format": "{FORMAT}")')
    try:
        return TokenizerFile.model_validate(raw)
    except ValidationError as e:
        raise GptError(f"{path}: invalid tokenizer file: {one_line_validation_error(e)}") from None
