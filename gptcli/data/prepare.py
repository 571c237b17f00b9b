"""Writing a token store: corpus sources -> token ids in shards, in parallel, resumable.

    result = prepare_store("data/owt", find_sources(["owt/"]), tokenizer, val_fraction=0.0005)
    result.store.train[:10], len(result.store.val)      # TokenShards over the shards written
    result.status                                       # "written", "resumed" or "complete"

How (the layout and meta.json are described in `gptcli.data.store`):

1. The sources are read as pieces, `(text, ends_document)` (`CorpusReader`), and consecutive
   pieces are grouped into blocks of about `block_chars` characters.
2. Worker processes encode the blocks, a bounded number in flight (memory does not grow with the
   corpus): each piece's `encode_ordinary`, then the end-of-text id where a document ends, sent
   back as the bytes of the store's dtype. The parent writes them in order.
3. A shard ends at the first block boundary at or after `shard_tokens` tokens, so where shards end
   depends only on the input and the options, not on timing or on the number of workers. Each
   shard is written atomically and then recorded in progress.json with its tokens, sha256 and the
   number of pieces consumed so far. A rerun of an interrupted prepare checks the shards kept,
   reads (without encoding) the pieces they hold, and goes on from there: it ends with the same
   shards and meta.json as a run that was never interrupted.
4. Validation ids come from separate sources (val shards written the same way), or are the last
   `val_fraction` of the tokens: the total is known only at the end, so everything is first
   written as train shards, then the tail is copied into val shards and the train shards past the
   split point are truncated or deleted (about val_fraction of the data is rewritten).
5. meta.json is written last, and progress.json removed.

A rerun with other sources, tokenizer or options into a store folder is refused unless
`overwrite`; a rerun of a complete store checks its shards' checksums and changes nothing.
"""

import dataclasses
import hashlib
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from gptcli.config import SHARD_TOKENS
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
    shard_name,
    shard_problem,
    store_dtype,
    tokenizer_sha256,
)
from gptcli.errors import GptError
from gptcli.storage.files import atomic_open, atomic_write_json, read_json
from gptcli.tokenizers.base import Tokenizer

Progress = Callable[[str, int, int], None]  # (stage, bytes done, bytes in all)

ENCODE_BLOCK_CHARS = 1 << 20  # text per block sent to a worker: memory is bounded by workers x this
MIN_BLOCK_CHARS = 1 << 10  # tiny --shard-tokens (tests) still get blocks of some size
IN_FLIGHT_PER_WORKER = 2  # blocks queued per worker: enough to keep each one busy
PARALLEL_MIN_BYTES = 8 << 20  # below this, starting worker processes costs more than it saves
COPY_TOKENS = 1 << 24  # ids copied at a time when the validation tail is moved
PROGRESS_FORMAT = "gptcli.token_store.progress"
_TEMP_FILE = re.compile(r"\.(.+)\.\w+\.tmp")  # what atomic_open leaves behind when killed


@dataclass
class PrepareResult:
    store: TokenStore
    status: str  # written | resumed | complete (it was already, and its checksums match)
    kept_shards: int = 0  # shards an interrupted run had finished, kept
    notes: list[str] = field(default_factory=list)  # warnings for the user (bad records, damage repaired)


def block_chars(shard_tokens: int) -> int:
    """Characters per block (and per piece of a plain-text document): a function of the options only."""
    return min(ENCODE_BLOCK_CHARS, max(MIN_BLOCK_CHARS, shard_tokens))


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
    writer = _StoreWriter(folder, tokenizer, journal, shard_tokens, workers, progress)
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
        _apply_tail(folder, journal)
        tail = journal["tail"]
        problem = check_shards(folder, _meta_shards(tail["train"], tail["val"], journal), checksums=True)
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


# ---- writing


@dataclass
class Block:
    """Consecutive pieces, encoded together by one worker."""

    pieces: list[tuple[str, bool]]
    documents: int  # pieces that end a document
    bytes_read: int  # of the input, once this block was read (for progress)


def _blocks(reader: CorpusReader, pieces: Iterator[tuple[str, bool]], chars: int) -> Iterator[Block]:
    block: list[tuple[str, bool]] = []
    size = 0
    for piece in pieces:
        block.append(piece)
        size += len(piece[0])
        if size >= chars:
            yield Block(block, sum(ends for _, ends in block), reader.bytes_read)
            block, size = [], 0
    if block:
        yield Block(block, sum(ends for _, ends in block), reader.bytes_read)


# what _encode_block uses in this process (a worker, or the parent when it encodes itself)
_worker_state: dict = {}


def _init_worker(tokenizer: Tokenizer | str, dtype: str) -> None:
    """A forked worker gets the parent's tokenizer as it is; a spawned one loads it from its path."""
    if isinstance(tokenizer, str):
        from gptcli.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    _set_encoder(tokenizer, np.dtype(dtype), threads=1)


def _set_encoder(tokenizer: Tokenizer, dtype: np.dtype, threads: int) -> None:
    _worker_state.update(tokenizer=tokenizer, dtype=dtype, threads=threads)


def _encode_block(pieces: list[tuple[str, bool]]) -> bytes:
    """Each piece's ids, then end-of-text where a document ends, as the bytes of the store's dtype."""
    tokenizer, dtype = _worker_state["tokenizer"], _worker_state["dtype"]
    eot = tokenizer.eot_id
    encoded = tokenizer.encode_batch([text for text, _ in pieces], num_threads=_worker_state["threads"])
    if eot is not None:
        for ids, (_, ends) in zip(encoded, pieces):
            if ends:
                ids.append(eot)
    n = sum(map(len, encoded))
    return np.fromiter(chain.from_iterable(encoded), dtype=dtype, count=n).tobytes()


class _Encoder:
    """Encodes blocks in order: in worker processes (started when first needed), or in this one."""

    def __init__(self, tokenizer: Tokenizer, tokenizer_path: Path, dtype: np.dtype, workers: int):
        self.tokenizer, self.tokenizer_path = tokenizer, tokenizer_path
        self.dtype, self.workers = dtype, workers
        self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def encode(self, blocks: Iterable[Block], parallel: bool) -> Iterator[tuple[Block, bytes]]:
        if not parallel or self.workers == 1:
            _set_encoder(self.tokenizer, self.dtype, threads=self.workers)
            for block in blocks:
                yield block, _encode_block(block.pieces)
            return
        if self.pool is None:
            # fork where it is safe and cheap (Linux): the workers share the tokenizer built here
            # (building GPT-2's takes ~0.3 s); elsewhere spawn, and each worker loads it from its file
            fork = sys.platform == "linux" and "fork" in get_all_start_methods()
            tokenizer = self.tokenizer if fork else str(self.tokenizer_path)
            self.pool = get_context("fork" if fork else "spawn").Pool(
                self.workers, _init_worker, (tokenizer, self.dtype.name)
            )
        pending: deque = deque()
        for block in blocks:
            pending.append((block, self.pool.apply_async(_encode_block, (block.pieces,))))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


class _StoreWriter:
    """Writes the splits' shards into `folder`, recording each in the journal (progress.json)."""

    def __init__(self, folder, tokenizer, journal, shard_tokens, workers, progress):
        self.folder, self.tokenizer, self.journal = folder, tokenizer, journal
        self.shard_tokens, self.progress = shard_tokens, progress
        self.dtype = np.dtype(journal["dtype"])
        self.encoder = _Encoder(tokenizer, folder / TOKENIZER, self.dtype, workers or os.cpu_count() or 1)

    def __enter__(self) -> "_StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.encoder.close()

    def _save_journal(self) -> None:
        atomic_write_json(self.folder / PROGRESS, self.journal)

    def write_split(self, split: str, reader: CorpusReader) -> None:
        state = self.journal["splits"][split]
        if state["done"]:
            return
        shards = state["shards"]
        consumed = shards[-1]["pieces"] if shards else 0
        pieces = iter(reader)
        deque(islice(pieces, consumed), maxlen=0)  # read, not encoded: the kept shards hold their ids
        parallel = reader.total_bytes >= PARALLEL_MIN_BYTES
        encoded = self.encoder.encode(_blocks(reader, pieces, block_chars(self.shard_tokens)), parallel)
        stage, itemsize = f"tokenizing {split}", self.dtype.itemsize
        start = time.perf_counter()
        for block, ids in encoded:  # a block that starts a shard; the loop inside adds more to it
            name = shard_name(split, len(shards))
            n_tokens = documents = 0
            with atomic_open(self.folder / name) as out:
                while True:
                    out.write(ids)
                    n_tokens += len(ids) // itemsize
                    documents += block.documents
                    consumed += len(block.pieces)
                    if self.progress:
                        self.progress(stage, block.bytes_read, reader.total_bytes)
                    if n_tokens >= self.shard_tokens:
                        break
                    following = next(encoded, None)
                    if following is None:
                        break
                    block, ids = following
            shards.append(
                {
                    "name": name,
                    "n_tokens": n_tokens,
                    "sha256": out.sha256,
                    "documents": documents,
                    "pieces": consumed,
                }
            )
            self._save_journal()
        if self.progress:
            self.progress(stage, reader.total_bytes, reader.total_bytes)
        state["done"] = True
        state["stats"] = {
            "documents": reader.documents,
            "empty_documents": reader.empty_documents,
            "invalid_utf8_bytes": reader.invalid_bytes,
            "bad_records": reader.bad_records,
            "warnings": reader.report(),
            "seconds": round(time.perf_counter() - start, 3),
        }
        self._save_journal()

    def hold_out_tail(self, fraction: float) -> None:
        """Move the last `fraction` of the train tokens into val shards (see the module docstring)."""
        journal = self.journal
        if fraction == 0:
            return
        if journal["tail"] is None:
            journal["tail"] = self._copy_tail(fraction)
            self._save_journal()
        _apply_tail(self.folder, journal)

    def _copy_tail(self, fraction: float) -> dict:
        train = self.journal["splits"]["train"]["shards"]
        total = sum(s["n_tokens"] for s in train)
        cut = total - int(total * fraction)
        val, eot, val_documents = [], self.tokenizer.eot_id, 0
        for start in range(cut, total, self.shard_tokens):
            stop = min(total, start + self.shard_tokens)
            name = shard_name("val", len(val))
            with atomic_open(self.folder / name) as out:
                for chunk in self._train_ids(start, stop):
                    out.write(chunk.tobytes())
                    if eot is not None:
                        val_documents += int(np.count_nonzero(chunk == eot))
            val.append({"name": name, "n_tokens": stop - start, "sha256": out.sha256})
        kept, position = [], 0
        for shard in train:
            keep = min(shard["n_tokens"], cut - position)
            if keep <= 0:
                break
            if keep < shard["n_tokens"]:  # the shard the split point falls in: its head stays
                shard = {
                    **shard,
                    "n_tokens": keep,
                    "sha256": _sha256_head(self.folder / shard["name"], keep * self.dtype.itemsize),
                }
            kept.append({k: shard[k] for k in ("name", "n_tokens", "sha256")})
            position += shard["n_tokens"]
        return {"train": kept, "val": val, "val_documents": val_documents if eot is not None else None}

    def _train_ids(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """The train ids at positions start..stop, COPY_TOKENS at a time, read (not memory-mapped:
        the pages of a mapped tail would count in this process's memory)."""
        position = 0
        for shard in self.journal["splits"]["train"]["shards"]:
            lo, hi = max(start, position), min(stop, position + shard["n_tokens"])
            if lo < hi:
                with open(self.folder / shard["name"], "rb") as fh:
                    fh.seek((lo - position) * self.dtype.itemsize)
                    for a in range(lo, hi, COPY_TOKENS):
                        yield np.fromfile(fh, dtype=self.dtype, count=min(hi, a + COPY_TOKENS) - a)
            position += shard["n_tokens"]

    def meta(self) -> dict:
        journal = self.journal
        request, splits = journal["request"], journal["splits"]
        stats = [splits[s]["stats"] for s in SPLITS if splits[s]["stats"] is not None]
        meta = {key: request[key] for key in REQUEST_KEYS}
        meta |= {
            "tokenizer_kind": self.tokenizer.kind,
            "vocab_size": self.tokenizer.vocab_size,
            "eot_id": self.tokenizer.eot_id,
            "dtype": self.dtype.name,
            **{
                key: sum(s[key] for s in stats)
                for key in ("documents", "empty_documents", "invalid_utf8_bytes", "bad_records")
            },
        }
        return meta | _meta_shards(*self._final_shards(), journal)

    def _final_shards(self) -> tuple[list[dict], list[dict]]:
        tail, splits = self.journal["tail"], self.journal["splits"]
        if tail is not None:
            return tail["train"], tail["val"]
        return splits["train"]["shards"], splits["val"]["shards"]


def _meta_shards(train: list[dict], val: list[dict], journal: dict) -> dict:
    """meta.json's "splits" (and dtype, so check_shards can read it) from the final shard lists."""
    tail, splits = journal["tail"], journal["splits"]
    documents = {split: sum(s.get("documents", 0) for s in splits[split]["shards"]) for split in SPLITS}
    if tail is not None:  # documents whose end-of-text lies in the tail are the val split's
        val_documents = tail["val_documents"]
        documents = {
            "train": None if val_documents is None else documents["train"] - val_documents,
            "val": val_documents,
        }
    lists = {"train": train, "val": val}
    return {
        "dtype": journal["dtype"],
        "splits": {
            split: {
                "n_tokens": sum(s["n_tokens"] for s in lists[split]),
                "documents": documents[split],
                "shards": [{k: s[k] for k in ("name", "n_tokens", "sha256")} for s in lists[split]],
            }
            for split in SPLITS
        },
    }


def _apply_tail(folder: Path, journal: dict) -> None:
    """Cut the train shards at the split point (idempotent: a rerun after a crash here finishes it)."""
    itemsize = np.dtype(journal["dtype"]).itemsize
    kept = {s["name"]: s["n_tokens"] * itemsize for s in journal["tail"]["train"]}
    for shard in journal["splits"]["train"]["shards"]:
        path = folder / shard["name"]
        if shard["name"] not in kept:
            path.unlink(missing_ok=True)
        elif path.is_file() and path.stat().st_size > kept[shard["name"]]:
            with open(path, "r+b") as fh:
                fh.truncate(kept[shard["name"]])
                os.fsync(fh.fileno())


def _sha256_head(path: Path, n_bytes: int) -> str:
    """The sha256 of a file's first n_bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while n_bytes > 0:
            chunk = fh.read(min(n_bytes, 4 << 20))
            if not chunk:
                break
            h.update(chunk)
            n_bytes -= len(chunk)
    return h.hexdigest()
