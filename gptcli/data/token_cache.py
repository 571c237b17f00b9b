"""Training data: corpus -> token memmap (cached) -> train/val split.

    data = prepare_data(["corpus.txt"], tokenizer, val_fraction=0.1)
    data.train, data.val                     # read-only 1-D memmaps of token ids

Tokenizing happens once: the ids are written to `tokens.bin` (uint16 when the vocabulary fits,
else uint32) in a cache folder keyed by the corpus content, the tokenizer and the format, with a
`meta.json` written last (so a half-written cache is never used). meta.json records the sha256 of
tokens.bin, hashed as it is written; a cache entry is used only once its file matches it. A damaged
entry (another size, other bytes, an unreadable meta.json) or one written before checksums were
recorded is tokenized again, with a note saying so (`TokenData.notes`, or the `warn` callback).
Files are read and encoded in blocks, so memory is bounded by a block, not by the corpus. Files
(documents) are separated by the tokenizer's end-of-text token when it has one. The validation
split is the last `val_fraction` of the tokens, or separate files (`val_data`).
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptcli.data.corpus import TextReader, find_text_files
from gptcli.storage.files import atomic_open, atomic_write_json, sha256_file
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.bpe_train import Progress

# meta.json's "sha256" came without a format change: the key (and so the folder) stays the same, an
# entry from before it is found and rebuilt in place, and older versions still read the new entries
CACHE_FORMAT = 1
ENCODE_BLOCK_BYTES = 1 << 22  # text encoded per call: memory stays bounded by cores x this


def default_cache_dir() -> Path:
    """$GPTCLI_CACHE_DIR, else ~/.cache/gptcli (XDG_CACHE_HOME respected)."""
    if env := os.environ.get("GPTCLI_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptcli"


@dataclass
class TokenData:
    """The token ids of a train run: `train` and `val` are read-only 1-D memmap views."""

    train: np.ndarray
    val: np.ndarray
    train_files: list[Path]
    val_files: list[Path]
    cache_dirs: list[Path]
    notes: list[str] = field(default_factory=list)  # e.g. a damaged cache entry that was rebuilt


def prepare_data(
    data: list[str],
    tokenizer: Tokenizer,
    val_fraction: float = 0.1,
    val_data: list[str] | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> TokenData:
    """Tokenize (or reuse the cached ids of) the corpus and split it into train and val."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    notes: list[str] = []
    files = find_text_files(data)
    tokens, where = tokenize_files(files, tokenizer, cache_dir, progress, notes.append)
    if val_data:
        val_files = find_text_files(val_data)
        val, val_where = tokenize_files(val_files, tokenizer, cache_dir, progress, notes.append)
        return TokenData(tokens, val, files, val_files, [where, val_where], notes)
    n_val = int(len(tokens) * val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    return TokenData(train, val, files, files, [where], notes)


def tokenize_files(
    files: list[Path],
    tokenizer: Tokenizer,
    cache_dir: Path,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, Path]:
    """All files' ids as one memmap, from the cache when the same corpus and tokenizer were seen.

    A cache entry is used only when tokens.bin matches meta.json's size and sha256; otherwise it is
    rebuilt, and `warn` (if given) gets one line saying why.
    """
    key = cache_key(files, tokenizer)
    folder = cache_dir / key
    meta_path, bin_path = folder / "meta.json", folder / "tokens.bin"
    if meta_path.is_file() and bin_path.is_file():
        meta, problem = _check_entry(meta_path, bin_path)
        if problem is None:
            return _memmap(bin_path, meta), folder
        if warn:
            warn(f"token cache {folder}: {problem}; tokenizing the corpus again")

    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    meta_path.unlink(missing_ok=True)  # a rebuilt entry: never a new tokens.bin beside an old meta.json
    n_tokens, invalid, sha256 = write_tokens(files, tokenizer, dtype, bin_path, progress)
    meta = {
        "format": CACHE_FORMAT,
        "n_tokens": n_tokens,
        "dtype": np.dtype(dtype).name,
        "sha256": sha256,  # of tokens.bin, hashed as it was written
        "files": [str(f) for f in files],
        "invalid_utf8_bytes": invalid,
        "vocab_size": tokenizer.vocab_size,
    }
    atomic_write_json(meta_path, meta)  # written last: its presence marks a complete cache entry
    return _memmap(bin_path, meta), folder


def write_tokens(files: list[Path], tokenizer: Tokenizer, dtype, path: Path, progress: Progress | None):
    """Encode the files in blocks into `path` (atomically) -> (tokens, invalid UTF-8 bytes, sha256)."""
    total = sum(f.stat().st_size for f in files)
    done = n_tokens = invalid = 0
    with atomic_open(path) as out:
        for i, f in enumerate(files):
            if i > 0 and tokenizer.eot_id is not None:  # documents are separated by <|endoftext|>
                out.write(np.array([tokenizer.eot_id], dtype=dtype))
                n_tokens += 1
            reader = TextReader(f, ENCODE_BLOCK_BYTES)
            for group in _groups(reader, os.cpu_count() or 1):  # one block per core at a time
                for ids in tokenizer.encode_batch(group):
                    out.write(np.asarray(ids, dtype=dtype))
                    n_tokens += len(ids)
                done += sum(len(block) for block in group)
                if progress:
                    progress("tokenizing", min(done, total), total)
            invalid += reader.invalid_bytes
    if progress:
        progress("tokenizing", total, total)
    return n_tokens, invalid, out.sha256


def _check_entry(meta_path: Path, bin_path: Path) -> tuple[dict, str | None]:
    """(meta, None) for a cache entry fit to use, else (meta, what is wrong with it)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        expected_size = meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
    except (ValueError, KeyError, TypeError):  # bad JSON, a missing key, a wrong type
        return {}, "meta.json is damaged"
    if bin_path.stat().st_size != expected_size:
        return meta, f"tokens.bin has {bin_path.stat().st_size} bytes, not {expected_size} (damaged)"
    if "sha256" not in meta:
        return meta, "written by an older version without a checksum"
    if sha256_file(bin_path).hexdigest() != meta["sha256"]:
        return meta, "tokens.bin does not match its checksum (damaged)"
    return meta, None


def _groups(blocks, n: int):
    group = []
    for block in blocks:
        group.append(block)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def _memmap(path: Path, meta: dict) -> np.ndarray:
    if meta["n_tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))


def cache_key(files: list[Path], tokenizer: Tokenizer) -> str:
    """Hash of the corpus bytes (in order), the tokenizer's content and the cache format."""
    h = hashlib.sha256(f"gptcli-tokens-v{CACHE_FORMAT}".encode())
    tok = tokenizer.to_file().model_dump(mode="json", exclude={"trained_on"})
    h.update(json.dumps(tok, sort_keys=True).encode())
    for f in files:
        h.update(b"\x00file\x00")
        sha256_file(f, h)
    return h.hexdigest()[:24]
