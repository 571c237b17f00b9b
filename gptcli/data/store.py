"""A token store on disk: its layout, its meta.json, opening and checking it, and its splits.

    store = open_store("data/owt")            # checks every shard's size (and checksum, see below)
    store.check_tokenizer(tokenizer)         # the store's ids mean something only to its tokenizer
    store.train[1000:1257]                   # a numpy array, even across a shard boundary
    len(store.val), store.train.dtype

A store (written by `gptcli.data.prepare`, for `gpt data prepare` and for `gpt train`'s cache) is a
folder:

    train_000000.bin, train_000001.bin, ...  token ids, uint16 when the vocabulary fits, else uint32;
    val_000000.bin, ...                      each document's ids followed by end-of-text (if any)
    tokenizer.json                           a copy of the tokenizer the ids belong to
    meta.json                                written last: its presence marks a complete store
    progress.json                            only while a prepare runs (or was interrupted)

meta.json holds the format and version, the tokenizer's hash (`tokenizer_sha256`), vocab size and
dtype, what was asked for (sources, source options, val fraction, shard size: the "request", which
a rerun compares), counts (documents, empty documents, invalid UTF-8 bytes, bad records) and, per
split, its tokens, documents and shards ({name, n_tokens, sha256}).

Checking: every shard's size is checked whenever a store is opened. Its sha256 is checked too when
the store is at most VERIFY_ON_OPEN_BYTES (a few seconds of hashing); a bigger store would spend
minutes hashing at every `gpt train` start, so there only the sizes are checked and a note says how
to verify it whole (`gpt data verify DIR`, which a rerun of `gpt data prepare` also does). A shard
whose size or checksum does not match is a one-line error naming it; it is never used.
"""

import bisect
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli.errors import GptError
from gptcli.storage.files import sha256_file
from gptcli.tokenizers.base import Tokenizer

STORE_FORMAT = "gptcli.token_store"
# 2: end-of-text after every document (1, the token cache's tokens.bin, put it between files)
STORE_VERSION = 2
META, PROGRESS, TOKENIZER = "meta.json", "progress.json", "tokenizer.json"
SPLITS = ("train", "val")
SHARD_NAME = re.compile(r"(train|val)_\d{6}\.bin")
VERIFY_ON_OPEN_BYTES = 2 << 30  # 2 GiB of shards: a few seconds of sha256 at each open
# meta.json's keys that say what was asked for: a rerun asking for other values is another store
REQUEST_KEYS = (
    "format",
    "version",
    "tokenizer_sha256",
    "sources",
    "source_options",
    "val_fraction",
    "shard_tokens",
)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def store_dtype(tokenizer: Tokenizer) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """The sha256 of the tokenizer's canonical JSON (sorted keys; its training corpus left out, so a
    copy saved elsewhere, or the same vocabulary trained from another path, hashes the same)."""
    spec = tokenizer.to_file().model_dump(mode="json", exclude={"trained_on"})
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def is_store(path: str | Path) -> bool:
    """Whether `path` is a token store folder, complete or not (a meta.json of ours, or a progress.json)."""
    path = Path(path)
    if (path / PROGRESS).is_file():
        return True
    try:
        return json.loads((path / META).read_text(encoding="utf-8")).get("format") == STORE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class TokenShards:
    """The shards of one split as one read-only 1-D sequence of ids: `len()`, `dtype`, and slices.

    >>> shards = TokenShards([np.arange(5, dtype=np.uint16), np.arange(5, 8, dtype=np.uint16)])
    >>> len(shards), shards[3:7].tolist()
    (8, [3, 4, 5, 6])

    A slice is a numpy array: a view of one shard when it lies inside one (a single-shard split
    slices exactly as its memmap would), else the pieces concatenated. `BatchSampler` and the
    validator take it in place of an array.
    """

    def __init__(self, arrays: list[np.ndarray], dtype=np.uint16):
        self.arrays = [a for a in arrays if len(a)]
        self.dtype = np.dtype(self.arrays[0].dtype if self.arrays else dtype)
        self.starts = [0]  # starts[i]: the position of arrays[i][0]; starts[-1]: the length
        for a in self.arrays:
            self.starts.append(self.starts[-1] + len(a))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[start:stop][::step]
            return self._range(start, max(start, stop))
        index = key + len(self) if key < 0 else key
        if not 0 <= index < len(self):
            raise IndexError(f"index {key} is out of range for {len(self)} tokens")
        i = bisect.bisect_right(self.starts, index) - 1
        return self.arrays[i][index - self.starts[i]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        if start == stop:
            return np.zeros(0, dtype=self.dtype)
        i = bisect.bisect_right(self.starts, start) - 1
        offset = self.starts[i]
        if stop <= self.starts[i + 1]:  # the common case: inside one shard
            return self.arrays[i][start - offset : stop - offset]
        parts = []
        while start < stop:
            end = min(stop, self.starts[i + 1])
            parts.append(self.arrays[i][start - self.starts[i] : end - self.starts[i]])
            start, i = end, i + 1
        return np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        out = self._range(0, len(self)) if len(self) else np.zeros(0, dtype=self.dtype)
        return np.asarray(out, dtype=dtype)

    def part(self, start: int, stop: int) -> "TokenShards":
        """Positions start..stop as shards of their own (views, nothing copied)."""
        arrays = []
        for i, a in enumerate(self.arrays):
            lo, hi = max(start, self.starts[i]), min(stop, self.starts[i + 1])
            if lo < hi:
                arrays.append(a[lo - self.starts[i] : hi - self.starts[i]])
        return TokenShards(arrays, self.dtype)

    def split_tail(self, fraction: float) -> tuple["TokenShards", "TokenShards"]:
        """(the first 1 - fraction, the last fraction) of the tokens: how a val split is held out."""
        n_val = int(len(self) * fraction)
        return self.part(0, len(self) - n_val), self.part(len(self) - n_val, len(self))


@dataclass
class TokenStore:
    """A complete store, opened: its folder, its meta.json, and its splits as TokenShards."""

    folder: Path
    meta: dict
    train: TokenShards
    val: TokenShards
    checksums_verified: bool

    @property
    def n_bytes(self) -> int:
        return shard_bytes(self.meta)

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """A GptError unless `tokenizer` is the one the store was prepared with (same hash)."""
        theirs, ours = self.meta["tokenizer_sha256"], tokenizer_sha256(tokenizer)
        if theirs != ours:
            store = f"{self.meta['tokenizer_kind']}, vocab {self.meta['vocab_size']}, sha256 {theirs[:12]}"
            run = f"{tokenizer.kind}, vocab {tokenizer.vocab_size}, sha256 {ours[:12]}"
            raise GptError(
                f"the store {self.folder} was prepared with another tokenizer ({store}; this run's: {run}); "
                f"pass --tokenizer {self.folder / TOKENIZER}"
            )

    def note(self) -> str | None:
        """What a user should know about how far the store was checked, if anything."""
        if self.checksums_verified:
            return None
        return (
            f"{self.folder}: shard sizes checked, checksums not ({self.n_bytes / 1e9:.1f} GB); "
            f"check them with: gpt data verify {self.folder}"
        )


def shard_bytes(meta: dict) -> int:
    itemsize = np.dtype(meta["dtype"]).itemsize
    return sum(s["n_tokens"] * itemsize for split in SPLITS for s in meta["splits"][split]["shards"])


def read_meta(folder: Path) -> dict:
    """A complete store's meta.json; a GptError for anything else (incomplete, damaged, other version)."""
    path = folder / META
    if not path.is_file():
        if (folder / PROGRESS).is_file():
            raise GptError(
                f"{folder} is an incomplete token store (its gpt data prepare did not finish): "
                "run the same gpt data prepare command again to finish it"
            )
        raise GptError(f"{folder} is not a token store (no {META}): prepare one with gpt data prepare")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        version, dtype = meta["version"], np.dtype(meta["dtype"])
        splits = {split: meta["splits"][split] for split in SPLITS}
        for split in splits.values():
            for shard in split["shards"]:
                int(shard["n_tokens"]), str(shard["name"]), str(shard["sha256"])
    except (ValueError, KeyError, TypeError):  # bad JSON, a missing key, a wrong type
        raise GptError(f"{path} is damaged (not a token store's meta.json)") from None
    if meta.get("format") != STORE_FORMAT:
        raise GptError(f"{path} is not a token store's meta.json (format {meta.get('format')!r})")
    if version != STORE_VERSION:
        raise GptError(
            f"{folder} is a token store of version {version}; this gpt reads version {STORE_VERSION}: "
            "prepare it again (gpt data prepare ... --overwrite)"
        )
    if dtype not in (np.uint16, np.uint32):
        raise GptError(f"{path} is damaged (dtype {dtype})")
    return meta


def check_shards(folder: Path, meta: dict, checksums: bool | None = True) -> str | None:
    """What is wrong with the store's shards (missing, another size, other bytes), or None.

    checksums: None decides by size (see the module docstring). Every size is checked before any
    checksum: a truncated shard is found without hashing the others."""
    if checksums is None:
        checksums = shard_bytes(meta) <= VERIFY_ON_OPEN_BYTES
    itemsize = np.dtype(meta["dtype"]).itemsize
    shards = [shard for split in SPLITS for shard in meta["splits"][split]["shards"]]
    for check in (False, True) if checksums else (False,):
        for shard in shards:
            if (problem := shard_problem(folder, shard, itemsize, check)) is not None:
                return problem
    return None


def shard_problem(folder: Path, shard: dict, itemsize: int, checksum: bool = True) -> str | None:
    """What is wrong with one shard ({name, n_tokens, sha256}) in `folder`, or None."""
    path, expected = folder / shard["name"], shard["n_tokens"] * itemsize
    if not path.is_file():
        return f"{shard['name']} is missing"
    if path.stat().st_size != expected:
        return f"{shard['name']} has {path.stat().st_size} bytes, not {expected} (damaged)"
    if checksum and sha256_file(path).hexdigest() != shard["sha256"]:
        return f"{shard['name']} does not match its checksum (damaged)"
    return None


def open_store(folder: str | Path, checksums: bool | None = None) -> TokenStore:
    """Open a complete store, checked (see the module docstring); a damaged shard is a GptError.

    checksums: None decides by size (VERIFY_ON_OPEN_BYTES); True or False forces it.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    if checksums is None:
        checksums = shard_bytes(meta) <= VERIFY_ON_OPEN_BYTES
    problem = check_shards(folder, meta, checksums)
    if problem is not None:
        raise GptError(f"{folder}/{problem}: prepare the store again (rerun its gpt data prepare command)")
    return memmap_store(folder, meta, checksums)


def memmap_store(folder: Path, meta: dict, checksums_verified: bool) -> TokenStore:
    """The store's splits as memory-mapped shards (read-only), with no checks (see open_store)."""
    dtype = np.dtype(meta["dtype"])

    def split(name: str) -> TokenShards:
        shards = meta["splits"][name]["shards"]
        arrays = [
            np.memmap(folder / s["name"], dtype=dtype, mode="r", shape=(s["n_tokens"],))
            for s in shards
            if s["n_tokens"]
        ]
        return TokenShards(arrays, dtype)

    return TokenStore(folder, meta, split("train"), split("val"), checksums_verified)
