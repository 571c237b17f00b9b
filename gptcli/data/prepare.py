"""Preparing a token store: corpus sources -> token ids in shards, in parallel, resumable.

    result = prepare_store("data/owt", find_sources(["owt/"]), tokenizer, val_fraction=0.0005)
    result.store.train[:10], len(result.store.val)      # TokenShards over the shards written
    result.status                                       # "written", "resumed" or "complete"

How (the layout and meta.json are described in `gptcli.data.store`):

1. The sources are read as pieces, `(text, ends_document)` (`CorpusReader`), grouped into blocks
   and encoded in worker processes, in order (`gptcli.data.block_encoder`).
2. The ids are written into shards, each recorded in progress.json when done, and the validation
   tail is moved into val shards (`gptcli.data.shard_writer`). Validation ids come from separate
   sources (val shards written the same way), or are the last `val_fraction` of the tokens.
3. This module decides what to do with the folder: a rerun of an interrupted prepare checks the
   shards kept (progress.json) and goes on after them, ending with the same shards and meta.json
   as a run that was never interrupted; meta.json is written last, and progress.json removed.

A rerun with other sources, tokenizer or options into a store folder is refused unless
`overwrite`; a rerun of a complete store checks its shards' checksums and changes nothing.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptcli.config import SHARD_TOKENS
from gptcli.data import block_encoder
from gptcli.data.block_encoder import block_chars
from gptcli.data.shard_writer import Progress, ShardWriter, apply_tail, meta_shards
from gptcli.data.sources import CorpusReader, SourceOptions
from gptcli.data.store import (
    META,
    PROGRESS,
    REQUEST_KEYS,
    SHARD_NAME,
    SPLITS,
    STORE_FORMAT,
    STORE_VERSION,
    TOKENIZER,
    TokenStore,
    check_shards,
    memmap_store,
    read_meta,
    shard_problem,
    store_dtype,
    tokenizer_sha256,
)
from gptcli.errors import GptError
from gptcli.storage.files import atomic_write_json, read_json
from gptcli.tokenizers.base import Tokenizer

PROGRESS_FORMAT = "gptcli.token_store.progress"
_TEMP_FILE = re.compile(r"\.(.+)\.\w+\.tmp")  # what atomic_open leaves behind when killed

# what encodes a block: looked up here by every prepare_store, so a test can stand in for it
_encode_block = block_encoder.encode_block


@dataclass
class PrepareResult:
    store: TokenStore
    status: str  # written | resumed | complete (it was already, and its checksums match)
    kept_shards: int = 0  # shards an interrupted run had finished, kept
    notes: list[str] = field(default_factory=list)  # warnings for the user (bad records, damage repaired)


def prepare_store(
    folder: str | Path,
    sources: list[Path],
    tokenizer: Tokenizer,
    val_fraction: float = 0.1,
    val_sources: list[Path] | None = None,
    options: SourceOptions = SourceOptions(),
    shard_tokens: int = SHARD_TOKENS,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PrepareResult:
    """Write (or finish, or find complete) the store of `sources` tokenized by `tokenizer` in `folder`."""
    folder = Path(folder)
    chars = block_chars(shard_tokens)
    readers = {
        "train": CorpusReader(sources, options, chars),
        "val": CorpusReader(val_sources, options, chars) if val_sources else None,
    }
    request = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "sources": {
            split: [_fingerprint(s) for s in r.sources] if r else None for split, r in readers.items()
        },
        "source_options": dataclasses.asdict(options),
        "val_fraction": None if val_sources else val_fraction,
        "shard_tokens": shard_tokens,
    }
    notes: list[str] = []
    _check_out_folder(folder)
    complete = _complete_store(folder, request, overwrite, notes)
    if complete is not None:
        if not (folder / TOKENIZER).is_file():
            tokenizer.save(folder / TOKENIZER)
        return PrepareResult(complete, "complete", notes=notes)
    journal = _journal(folder, request, store_dtype(tokenizer), overwrite, notes)
    kept = sum(len(journal["splits"][s]["shards"]) for s in SPLITS)
    tokenizer.save(folder / TOKENIZER)  # the workers load it from here
    writer = ShardWriter(folder, tokenizer, journal, shard_tokens, workers, progress, _encode_block)
    with writer:
        for split, reader in readers.items():
            if reader is not None:
                writer.write_split(split, reader)
    if not val_sources:
        writer.hold_out_tail(val_fraction)
    meta = writer.meta()
    atomic_write_json(folder / META, meta)  # last: its presence marks a complete store
    (folder / PROGRESS).unlink(missing_ok=True)
    for split in (split for split, reader in readers.items() if reader is not None):
        notes.extend(
            f"{'validation data: ' if split == 'val' else ''}{line}"
            for line in journal["splits"][split]["stats"]["warnings"]
        )
    store = memmap_store(folder, meta, checksums_verified=True)  # hashed as written
    return PrepareResult(store, "resumed" if kept else "written", kept, notes)


def _fingerprint(source) -> dict:
    """What a rerun compares to tell the same source from another: path, bytes and last change."""
    stats = [f.stat() for f in source.files]
    return {
        "path": str(source.path),
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


# ---- what is in the folder already


def _check_out_folder(folder: Path) -> None:
    """Only a new or empty folder, or a store's, is written into (never a folder of other files)."""
    if folder.exists() and not folder.is_dir():
        raise GptError(f"--out {folder} is a file, not a folder")
    if not folder.is_dir() or (folder / META).is_file() or (folder / PROGRESS).is_file():
        return
    if any(not _is_store_file(p.name) for p in folder.iterdir()):
        raise GptError(f"--out {folder} is not empty and is not a token store: choose a new or empty folder")


def _complete_store(folder: Path, request: dict, overwrite: bool, notes: list[str]) -> TokenStore | None:
    """The complete store of this request if `folder` holds it intact; else None, with the folder
    ready to write into (cleared when it held another store and `overwrite`, or a damaged one)."""
    if not (folder / META).is_file():
        return None
    try:
        meta = read_meta(folder)
    except GptError as e:
        if not overwrite:
            raise GptError(f"{e}; pass --overwrite to prepare it again") from None
        clear_store(folder)
        return None
    differ = [key for key in REQUEST_KEYS if meta.get(key) != request[key]]
    if differ:
        if not overwrite:
            raise _other_store(folder, differ)
        clear_store(folder)
        return None
    problem = check_shards(folder, meta, checksums=True)
    if problem is None:
        return memmap_store(folder, meta, checksums_verified=True)
    notes.append(f"{folder}/{problem}; preparing the store again")
    clear_store(folder)
    return None


def _journal(folder: Path, request: dict, dtype: np.dtype, overwrite: bool, notes: list[str]) -> dict:
    """progress.json of an interrupted run of this request, its shards checked; else a new one."""
    path = folder / PROGRESS
    if path.is_file():
        try:
            journal = read_json(path)
            differ = [key for key in REQUEST_KEYS if journal["request"].get(key) != request[key]]
        except (GptError, KeyError, TypeError, AttributeError):
            notes.append(f"{path} is damaged; preparing the store from the start")
            differ, journal = [], None
        if differ and not overwrite:
            raise _other_store(folder, differ)
        if journal is not None and not differ and _usable_shards(folder, journal, notes):
            _remove_temp_files(folder)
            return journal
        clear_store(folder)
    else:
        clear_store(folder)  # store files without progress.json or meta.json: nothing to resume
    journal = {
        "format": PROGRESS_FORMAT,
        "request": request,
        "dtype": dtype.name,
        "splits": {split: {"shards": [], "done": False, "stats": None} for split in SPLITS},
        "tail": None,
    }
    atomic_write_json(path, journal)
    return journal


def _usable_shards(folder: Path, journal: dict, notes: list[str]) -> bool:
    """Drop the journal's shards from the first damaged one on (False: start over instead)."""
    if journal["tail"] is not None:  # the train shards may already be cut at the split point
        apply_tail(folder, journal)
        tail = journal["tail"]
        problem = check_shards(folder, meta_shards(tail["train"], tail["val"], journal), checksums=True)
        if problem is not None:
            notes.append(f"{folder}/{problem}; preparing the store from the start")
            return False
        return True
    itemsize = np.dtype(journal["dtype"]).itemsize
    for split in SPLITS:
        state = journal["splits"][split]
        for i, shard in enumerate(state["shards"]):
            problem = shard_problem(folder, shard, itemsize)
            if problem is not None:
                notes.append(f"{folder}/{problem}; tokenizing again from there")
                state["shards"], state["done"], state["stats"] = state["shards"][:i], False, None
                break
    return True


def _other_store(folder: Path, differ: list[str]) -> GptError:
    what = ", ".join("tokenizer" if key == "tokenizer_sha256" else key for key in differ)
    return GptError(
        f"{folder} holds a token store of other inputs (they differ in: {what}): "
        "pass --overwrite to replace it, or choose another --out"
    )


def _is_store_file(name: str) -> bool:
    temp = _TEMP_FILE.fullmatch(name)
    name = temp.group(1) if temp else name
    return name in (META, PROGRESS, TOKENIZER) or SHARD_NAME.fullmatch(name) is not None


def clear_store(folder: Path) -> None:
    """Delete a store's files (and temp files of them); anything else in the folder stays."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and _is_store_file(p.name):
                p.unlink()


def _remove_temp_files(folder: Path) -> None:
    for p in folder.iterdir():
        if _TEMP_FILE.fullmatch(p.name) and _is_store_file(p.name):
            p.unlink()
