"""Encoding a corpus into token ids for a token store: pieces -> blocks -> ids, in order, in parallel.

    encoder = BlockEncoder(tokenizer, folder / "tokenizer.json", np.dtype("uint16"), workers=8)
    for block, ids in encoder.encode(blocks(reader, iter(reader), block_chars(shard_tokens)), total):
        out.write(ids)                    # the block's ids as the bytes of the store's dtype

Consecutive pieces `(text, ends_document)` of a `CorpusReader` are grouped into blocks of about
`block_chars` characters. Worker processes encode the blocks, a bounded number in flight (memory
does not grow with the corpus): each piece's `encode_ordinary`, then the end-of-text id where a
document ends, sent back as the bytes of the store's dtype; the blocks come back in input order.
Below PARALLEL_MIN_BYTES of input, or with one worker, this process encodes them itself.
`gptcli.data.shard_writer` writes what comes back into shards.
"""

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from gptcli.data.sources import CorpusReader
from gptcli.tokenizers.base import Tokenizer

ENCODE_BLOCK_CHARS = 1 << 20  # text per block sent to a worker: memory is bounded by workers x this
MIN_BLOCK_CHARS = 1 << 10  # tiny --shard-tokens (tests) still get blocks of some size
IN_FLIGHT_PER_WORKER = 2  # blocks queued per worker: enough to keep each one busy
PARALLEL_MIN_BYTES = 8 << 20  # below this, starting worker processes costs more than it saves

EncodeBlock = Callable[[list[tuple[str, bool]]], bytes]  # a block's pieces -> its ids' bytes


def block_chars(shard_tokens: int) -> int:
    """Characters per block (and per piece of a plain-text document): a function of the options only."""
    return min(ENCODE_BLOCK_CHARS, max(MIN_BLOCK_CHARS, shard_tokens))


@dataclass
class Block:
    """Consecutive pieces, encoded together by one worker."""

    pieces: list[tuple[str, bool]]
    documents: int  # pieces that end a document
    bytes_read: int  # of the input, once this block was read (for progress)


def blocks(reader: CorpusReader, pieces: Iterator[tuple[str, bool]], chars: int) -> Iterator[Block]:
    """The pieces grouped into blocks of at least `chars` characters (the last one: what is left)."""
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


# what encode_block uses in this process (a worker, or the parent when it encodes itself)
_worker_state: dict = {}


def _init_worker(tokenizer: Tokenizer | str, dtype: str) -> None:
    """A forked worker gets the parent's tokenizer as it is; a spawned one loads it from its path."""
    if isinstance(tokenizer, str):
        from gptcli.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    _set_encoder(tokenizer, np.dtype(dtype), threads=1)


def _set_encoder(tokenizer: Tokenizer, dtype: np.dtype, threads: int) -> None:
    _worker_state.update(tokenizer=tokenizer, dtype=dtype, threads=threads)


def encode_block(pieces: list[tuple[str, bool]]) -> bytes:
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


class BlockEncoder:
    """Encodes blocks in order: in worker processes (started when first needed), or in this one.

    `encode` is what encodes one block (`encode_block`; prepare_store hands it over)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        tokenizer_path: Path,
        dtype: np.dtype,
        workers: int,
        encode: EncodeBlock = encode_block,
    ):
        self.tokenizer, self.tokenizer_path = tokenizer, tokenizer_path
        self.dtype, self.workers, self.encode_one = dtype, workers, encode
        self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def encode(self, blocks: Iterable[Block], total_bytes: int) -> Iterator[tuple[Block, bytes]]:
        """(block, its ids' bytes) in input order; in worker processes from PARALLEL_MIN_BYTES of
        input (`total_bytes`) on."""
        if total_bytes < PARALLEL_MIN_BYTES or self.workers == 1:
            _set_encoder(self.tokenizer, self.dtype, threads=self.workers)
            for block in blocks:
                yield block, self.encode_one(block.pieces)
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
            pending.append((block, self.pool.apply_async(self.encode_one, (block.pieces,))))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
