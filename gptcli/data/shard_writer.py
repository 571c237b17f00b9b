"""Writing a token store's shards from the encoded blocks, recorded in progress.json as they are done.

    with ShardWriter(folder, tokenizer, journal, shard_tokens, workers, progress) as writer:
        writer.write_split("train", reader)     # resumes after the shards the journal holds
    writer.hold_out_tail(0.1)                   # the last 10% of the train ids become val shards
    meta = writer.meta()                        # meta.json's content (prepare_store writes it)

A shard ends at the first block boundary at or after `shard_tokens` tokens, so where shards end
depends only on the input and the options, not on timing or on the number of workers. Each shard
is written atomically and then recorded in the journal (progress.json) with its tokens, sha256 and
the number of pieces consumed so far; a rerun reads (without encoding) the pieces that the kept
shards hold, and goes on from there.

Without separate validation sources, the val ids are the last `val_fraction` of the tokens: the
total is known only at the end, so everything is first written as train shards, then the tail is
copied into val shards (its shard lists recorded in the journal's "tail") and the train shards
past the split point are truncated or deleted (`apply_tail`, idempotent, so a crash in the middle
is finished by the rerun). The journal and the folder it describes are `gptcli.data.prepare`'s.
"""

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from gptcli.data.block_encoder import BlockEncoder, EncodeBlock, block_chars, blocks, encode_block
from gptcli.data.sources import CorpusReader
from gptcli.data.store import PROGRESS, REQUEST_KEYS, SPLITS, TOKENIZER, shard_name
from gptcli.storage.files import atomic_open, atomic_write_json
from gptcli.tokenizers.base import Tokenizer

Progress = Callable[[str, int, int], None]  # (stage, bytes done, bytes in all)

COPY_TOKENS = 1 << 24  # ids copied at a time when the validation tail is moved


class ShardWriter:
    """Writes the splits' shards into `folder`, recording each in the journal (progress.json)."""

    def __init__(
        self,
        folder: Path,
        tokenizer: Tokenizer,
        journal: dict,
        shard_tokens: int,
        workers: int | None,
        progress: Progress | None,
        encode: EncodeBlock = encode_block,
    ):
        self.folder, self.tokenizer, self.journal = folder, tokenizer, journal
        self.shard_tokens, self.progress = shard_tokens, progress
        self.dtype = np.dtype(journal["dtype"])
        workers = workers or os.cpu_count() or 1
        self.encoder = BlockEncoder(tokenizer, folder / TOKENIZER, self.dtype, workers, encode)

    def __enter__(self) -> "ShardWriter":
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
        chars = block_chars(self.shard_tokens)
        encoded = self.encoder.encode(blocks(reader, pieces, chars), reader.total_bytes)
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
        apply_tail(self.folder, journal)

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
        return meta | meta_shards(*self._final_shards(), journal)

    def _final_shards(self) -> tuple[list[dict], list[dict]]:
        tail, splits = self.journal["tail"], self.journal["splits"]
        if tail is not None:
            return tail["train"], tail["val"]
        return splits["train"]["shards"], splits["val"]["shards"]


def meta_shards(train: list[dict], val: list[dict], journal: dict) -> dict:
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


def apply_tail(folder: Path, journal: dict) -> None:
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
