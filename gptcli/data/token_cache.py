"""Training data: the corpus -> a token store (cached, or one given) -> train/val splits.

    data = prepare_data(["corpus.txt"], tokenizer, val_fraction=0.1)
    data.train, data.val                     # TokenShards: len(), dtype, slices -> numpy arrays
    data = prepare_data(["data/owt"], tokenizer)   # a store `gpt data prepare` wrote

Tokenizing happens once. A corpus is written as a token store (`gptcli.data.prepare`, the same
writer as `gpt data prepare`) in a cache folder named by its key: the content of the sources, the
source options, the tokenizer's hash and the store version. A cache entry is used only once its
shards match meta.json (sizes, and checksums; see `gptcli.data.store`); a damaged one is tokenized
again, with a note saying so (`TokenData.notes`). An interrupted one is finished where it stopped.
The cache store holds every token as train ids; the validation split is the last `val_fraction`
of them (so another --val-fraction reuses the entry), or the ids of separate sources (`val_data`).

A store given as the data (`gpt train --data DIR`) is opened as it is: its val shards are the
validation split (when it has none, the last `val_fraction` of its train ids), unless `val_data`
is given. Its tokenizer must be the run's.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptcli.data.prepare import Progress, clear_store, prepare_store
from gptcli.data.sources import SourceOptions, describe_source, find_sources
from gptcli.data.store import (
    META,
    STORE_VERSION,
    TokenShards,
    TokenStore,
    check_shards,
    is_store,
    memmap_store,
    open_store,
    read_meta,
    tokenizer_sha256,
)
from gptcli.errors import GptError
from gptcli.storage.files import sha256_file
from gptcli.tokenizers.base import Tokenizer


def default_cache_dir() -> Path:
    """$GPTCLI_CACHE_DIR, else ~/.cache/gptcli (XDG_CACHE_HOME respected)."""
    if env := os.environ.get("GPTCLI_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptcli"


@dataclass
class TokenData:
    """The token ids of a train run, each split as TokenShards over read-only memmaps."""

    train: TokenShards
    val: TokenShards
    stores: list[Path]  # the store folders the ids come from (cache entries, or the store given)
    notes: list[str] = field(default_factory=list)  # e.g. a damaged cache entry that was rebuilt


def prepare_data(
    data: list[str],
    tokenizer: Tokenizer,
    val_fraction: float = 0.1,
    val_data: list[str] | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    options: SourceOptions = SourceOptions(),
    workers: int | None = None,
) -> TokenData:
    """The train and val ids of a run: a store given as `data`, or the corpus tokenized into the cache."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    notes: list[str] = []
    stores: list[Path] = []

    def tokenized(paths: list[str]) -> TokenShards:
        store = cached_store(find_sources(paths), tokenizer, cache_dir, options, progress, notes, workers)
        stores.append(store.folder)
        return store.train  # a cache store holds every id as train

    for path in val_data or []:
        if is_store(path):
            raise GptError(
                f"--val-data takes corpus files, not a token store ({path}); "
                "a store's own val shards are used when it is the --data"
            )
    given = [path for path in data if is_store(path)]
    if given:
        if len(data) > 1:
            raise GptError(f"a token store is the whole training data: pass --data {given[0]} alone")
        store = open_store(given[0])
        store.check_tokenizer(tokenizer)
        notes.extend(note for note in [store.note()] if note)
        stores.append(store.folder)
        train, val = store.train, store.val
        if val_data:
            val = tokenized(val_data)
        elif len(val) == 0:
            train, val = train.split_tail(val_fraction)
        return TokenData(train, val, stores, notes)

    train = tokenized(data)
    if val_data:
        return TokenData(train, tokenized(val_data), stores, notes)
    train, val = train.split_tail(val_fraction)
    return TokenData(train, val, stores, notes)


def cached_store(
    sources: list[Path],
    tokenizer: Tokenizer,
    cache_dir: Path,
    options: SourceOptions = SourceOptions(),
    progress: Progress | None = None,
    notes: list[str] | None = None,
    workers: int | None = None,
) -> TokenStore:
    """The store of these sources in the cache: reused when intact, else (re)written, with a note."""
    notes = [] if notes is None else notes
    folder = cache_dir / cache_key(sources, tokenizer, options)
    if (folder / META).is_file():
        meta, problem = _check_entry(folder)
        if problem is None:
            return memmap_store(folder, meta, checksums_verified=True)
        notes.append(f"token cache {folder}: {problem}; tokenizing the corpus again")
        clear_store(folder)
    # every id as train: the split is made when the entry is used, so it does not key the entry
    result = prepare_store(
        folder, sources, tokenizer, 0.0, None, options, workers=workers, overwrite=True, progress=progress
    )
    notes.extend(result.notes)
    return result.store


def _check_entry(folder: Path) -> tuple[dict, str | None]:
    """(meta, None) for a cache entry fit to use, else (meta, what is wrong with it)."""
    try:
        meta = read_meta(folder)
    except GptError:
        return {}, "meta.json is damaged"
    return meta, check_shards(folder, meta, checksums=True)  # a cache entry is used only once verified


def cache_key(sources: list[Path], tokenizer: Tokenizer, options: SourceOptions = SourceOptions()) -> str:
    """Hash of the sources' bytes (in order), the source options, the tokenizer and the store version."""
    h = hashlib.sha256(f"gptcli-tokens-v{STORE_VERSION}".encode())
    h.update(tokenizer_sha256(tokenizer).encode())
    h.update(json.dumps(asdict(options), sort_keys=True).encode())
    for source in sources:
        h.update(b"\x00source\x00")
        for f in describe_source(Path(source), options).files:
            h.update(b"\x00file\x00")
            sha256_file(f, h)
    return h.hexdigest()[:24]
