"""Training data: corpus -> token memmap (cached) -> train/val split.

    data = prepare_data(["corpus.txt"], tokenizer, val_fraction=0.1)
    data.train, data.val                     # read-only 1-D memmaps of token ids

Tokenizing happens once: the ids are written to `tokens.bin` (uint16 when the vocabulary fits,
else uint32) in a cache folder keyed by the corpus content, the tokenizer and the format, with a
`meta.json` written last (so a half-written cache is never used). Files are read and encoded in
blocks, so memory is bounded by a block, not by the corpus. Files (documents) are separated by the
tokenizer's end-of-text token when it has one. The validation split is the last `val_fraction` of
the tokens, or separate files (`val_data`).
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli.data.corpus import TextReader, find_text_files
from gptcli.storage.files import atomic_write_json, sha256_file
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.bpe_train import Progress

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
    files = find_text_files(data)
    tokens, where = tokenize_files(files, tokenizer, cache_dir, progress)
    if val_data:
        val_files = find_text_files(val_data)
        val, val_where = tokenize_files(val_files, tokenizer, cache_dir, progress)
        return TokenData(tokens, val, files, val_files, [where, val_where])
    n_val = int(len(tokens) * val_fraction)
    return TokenData(tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :], files, files, [where])


def tokenize_files(
    files: list[Path], tokenizer: Tokenizer, cache_dir: Path, progress: Progress | None = None
) -> tuple[np.ndarray, Path]:
    """All files' ids as one memmap, from the cache when the same corpus and tokenizer were seen."""
    key = cache_key(files, tokenizer)
    folder = cache_dir / key
    meta_path, bin_path = folder / "meta.json", folder / "tokens.bin"
    if meta_path.is_file() and bin_path.is_file():
        meta = json.loads(meta_path.read_text())
        if bin_path.stat().st_size == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize:
            return _memmap(bin_path, meta), folder

    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    total = sum(f.stat().st_size for f in files)
    done = n_tokens = invalid = 0
    tmp_path = folder / f"tokens.bin.tmp{os.getpid()}"
    try:
        with open(tmp_path, "wb") as out:
            for i, f in enumerate(files):
                if i > 0 and tokenizer.eot_id is not None:  # documents are separated by <|endoftext|>
                    np.array([tokenizer.eot_id], dtype=dtype).tofile(out)
                    n_tokens += 1
                reader = TextReader(f, ENCODE_BLOCK_BYTES)
                for group in _groups(reader, os.cpu_count() or 1):  # one block per core at a time
                    for ids in tokenizer.encode_batch(group):
                        np.asarray(ids, dtype=dtype).tofile(out)
                        n_tokens += len(ids)
                    done += sum(len(block) for block in group)
                    if progress:
                        progress("tokenizing", min(done, total), total)
                invalid += reader.invalid_bytes
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, bin_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    if progress:
        progress("tokenizing", total, total)
    meta = {
        "format": CACHE_FORMAT,
        "n_tokens": n_tokens,
        "dtype": np.dtype(dtype).name,
        "files": [str(f) for f in files],
        "invalid_utf8_bytes": invalid,
        "vocab_size": tokenizer.vocab_size,
    }
    atomic_write_json(meta_path, meta)  # written last: its presence marks a complete cache entry
    return _memmap(bin_path, meta), folder


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
