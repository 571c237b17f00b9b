"""The token cache: a token store per corpus + tokenizer + source options, reused when intact,
rebuilt with a note when damaged; and a store given as the data."""

import json

import numpy as np
import pytest

import gptcli.data.block_encoder as block_encoder
import gptcli.data.prepare as prepare
from gptcli.config import TokenizerTrainConfig
from gptcli.data.prepare import prepare_store
from gptcli.data.sources import SourceOptions, find_sources
from gptcli.data.token_cache import cache_key, cached_store, prepare_data
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from tests.conftest import SONNETS


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_tokenizer(TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=500)).tokenizer


def tokenize(paths, tokenizer, cache_dir, notes=None, **options):
    store = cached_store(find_sources(paths), tokenizer, cache_dir, SourceOptions(**options), notes=notes)
    return np.asarray(store.train), store.folder


def test_every_document_is_followed_by_eot(bpe, corpus, tmp_path):
    a = corpus("Shall I compare thee to a summer's day?\n" * 30, "a.txt")
    b = corpus("Thou art more lovely and more temperate.\n" * 30, "b.txt")
    tokens, where = tokenize([a, b], bpe, tmp_path / "cache")
    eot = [bpe.eot_id]
    expected = bpe.encode_ordinary(a.read_text()) + eot + bpe.encode_ordinary(b.read_text()) + eot
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert json.loads((where / "meta.json").read_text())["format"] == "gptcli.token_store"


def test_block_by_block_encoding_equals_whole_file(bpe, tmp_path, monkeypatch):
    monkeypatch.setattr(block_encoder, "ENCODE_BLOCK_CHARS", 257)  # many pieces, many blocks
    tokens, _ = tokenize([SONNETS], bpe, tmp_path / "cache")
    assert tokens.tolist() == bpe.encode_ordinary(SONNETS.read_text()) + [bpe.eot_id]


def test_cache_is_reused_and_keyed_by_content_and_source_options(bpe, corpus, tmp_path):
    path = corpus("to be or not to be\n" * 100)
    _, where = tokenize([path], bpe, tmp_path / "cache")
    meta = json.loads((where / "meta.json").read_text())
    assert meta["splits"]["train"]["n_tokens"] > 0 and meta["vocab_size"] == bpe.vocab_size
    shard = where / "train_000000.bin"
    shard.touch()  # same bytes, same key: reused, not rewritten
    mtime = shard.stat().st_mtime_ns
    _, again = tokenize([path], bpe, tmp_path / "cache")
    assert again == where and shard.stat().st_mtime_ns == mtime
    assert cache_key([path], bpe, SourceOptions(text_field="body")) != where.name
    path.write_text("something else entirely\n" * 100)
    _, changed = tokenize([path], bpe, tmp_path / "cache")
    assert changed != where


def test_truncated_cache_is_rebuilt(bpe, corpus, tmp_path):
    path = corpus("to be or not to be\n" * 100)
    tokens, where = tokenize([path], bpe, tmp_path / "cache")
    expected = tokens.tolist()
    del tokens  # the memmap of the shard cut next
    with open(where / "train_000000.bin", "r+b") as fh:
        fh.truncate(10)
    notes = []
    again, _ = tokenize([path], bpe, tmp_path / "cache", notes)
    assert again.tolist() == expected and "has 10 bytes" in notes[0]


def test_split_and_separate_val_data(bpe, corpus, tmp_path):
    path = corpus("word " * 1000)
    data = prepare_data([str(path)], bpe, val_fraction=0.1, cache_dir=tmp_path)
    total = len(data.train) + len(data.val)
    assert len(data.val) == int(total * 0.1) and len(data.stores) == 1
    val_path = corpus("other words " * 50, "val.txt")
    data = prepare_data([str(path)], bpe, val_data=[str(val_path)], cache_dir=tmp_path)
    assert len(data.train) == total
    assert np.asarray(data.val).tolist() == bpe.encode_ordinary(val_path.read_text()) + [bpe.eot_id]


def test_meta_records_the_checksum_hashed_while_writing(bpe, corpus, tmp_path, monkeypatch):
    import gptcli.data.store as store
    from gptcli.storage.files import sha256_file

    read_back = []

    def spy(path, h=None):
        if path.suffix == ".bin":
            read_back.append(path)
        return sha256_file(path, h)

    monkeypatch.setattr(store, "sha256_file", spy)
    path = corpus("to be or not to be\n" * 100)
    _, where = tokenize([path], bpe, tmp_path / "cache")
    assert read_back == []  # hashed as it was written, not read again
    meta = json.loads((where / "meta.json").read_text())
    assert (
        meta["splits"]["train"]["shards"][0]["sha256"] == sha256_file(where / "train_000000.bin").hexdigest()
    )
    tokenize([path], bpe, tmp_path / "cache")
    assert read_back == [where / "train_000000.bin"]  # verified before it is used


def test_damaged_cache_is_rebuilt_with_a_warning(bpe, corpus, tmp_path):
    path = corpus("to be or not to be\n" * 100)
    tokens, where = tokenize([path], bpe, tmp_path / "cache")
    expected = tokens.tolist()
    shard = where / "train_000000.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped: the right size, other ids
    shard.write_bytes(bytes(data))
    notes = []
    tokens, again = tokenize([path], bpe, tmp_path / "cache", notes)
    assert again == where and tokens.tolist() == expected
    assert len(notes) == 1 and "\n" not in notes[0]
    assert str(where) in notes[0] and "does not match its checksum" in notes[0]
    assert "tokenizing the corpus again" in notes[0]
    notes.clear()
    tokenize([path], bpe, tmp_path / "cache", notes)
    assert notes == []  # rebuilt whole: used as it is from now on


@pytest.mark.parametrize(
    "damage",
    [lambda meta: meta.pop("splits"), lambda meta: meta.update(version="x"), None],
    ids=["missing-key", "wrong-type", "not-json"],
)
def test_a_cache_entry_without_a_usable_meta_is_rebuilt(bpe, corpus, tmp_path, damage):
    path = corpus("to be or not to be\n" * 100)
    tokens, where = tokenize([path], bpe, tmp_path / "cache")
    expected = tokens.tolist()
    if damage is None:
        (where / "meta.json").write_text("{not json")
    else:
        meta = json.loads((where / "meta.json").read_text())
        damage(meta)
        (where / "meta.json").write_text(json.dumps(meta))
    data = prepare_data([str(path)], bpe, val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert np.asarray(data.train).tolist() == expected
    assert len(data.notes) == 1 and "meta.json is damaged" in data.notes[0]
    assert json.loads((where / "meta.json").read_text())["version"] == 2  # rewritten whole


def test_an_interrupted_cache_entry_is_finished_by_the_next_run(bpe, tmp_path, monkeypatch):
    monkeypatch.setattr(block_encoder, "ENCODE_BLOCK_CHARS", 4096)
    encode, calls = prepare._encode_block, []

    def dies_once(pieces):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(pieces)

    monkeypatch.setattr(prepare, "_encode_block", dies_once)
    with pytest.raises(KeyboardInterrupt):
        tokenize([SONNETS], bpe, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    assert (entry / "progress.json").is_file() and not (entry / "meta.json").exists()
    tokens, _ = tokenize([SONNETS], bpe, tmp_path / "cache")
    assert tokens.tolist() == bpe.encode_ordinary(SONNETS.read_text()) + [bpe.eot_id]


def test_a_store_given_as_the_data(bpe, corpus, tmp_path):
    store = prepare_store(tmp_path / "store", [SONNETS], bpe, val_fraction=0.1).store
    data = prepare_data([str(tmp_path / "store")], bpe, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.asarray(data.train), np.asarray(store.train))
    assert np.array_equal(np.asarray(data.val), np.asarray(store.val))
    assert data.stores == [tmp_path / "store"] and not (tmp_path / "cache").exists()  # nothing tokenized
    # no val shards: the last val_fraction of its train ids; --val-data: tokenized into the cache
    prepare_store(tmp_path / "all", [SONNETS], bpe, val_fraction=0.0)
    data = prepare_data([str(tmp_path / "all")], bpe, val_fraction=0.2, cache_dir=tmp_path / "cache")
    assert len(data.val) == int(len(store.train) + len(store.val)) // 5
    val = corpus("Thou art more lovely\n" * 20, "val.txt")
    data = prepare_data([str(tmp_path / "store")], bpe, val_data=[str(val)], cache_dir=tmp_path / "cache")
    assert np.asarray(data.val).tolist() == bpe.encode_ordinary(val.read_text()) + [bpe.eot_id]
    with pytest.raises(GptError, match="pass --data .*store alone"):
        prepare_data([str(tmp_path / "store"), str(SONNETS)], bpe, cache_dir=tmp_path / "cache")
    with pytest.raises(GptError, match="--val-data takes corpus files, not a token store"):
        prepare_data([str(SONNETS)], bpe, val_data=[str(tmp_path / "store")], cache_dir=tmp_path / "cache")
