"""The token store: what it holds (against direct tokenization), shards that behave as one array,
resuming an interrupted prepare to the same bytes, refusing other inputs, and damage found."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import gptcli.data.block_encoder as block_encoder
import gptcli.data.prepare as prepare
import gptcli.data.shard_writer as shard_writer
from gptcli.config import TokenizerTrainConfig, TrainConfig
from gptcli.data.prepare import prepare_store
from gptcli.data.sampler import BatchSampler
from gptcli.data.sources import SourceOptions, find_sources
from gptcli.data.store import TokenShards, is_store, open_store, tokenizer_sha256
from gptcli.data.token_cache import TokenData
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from gptcli.models import build_model
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.char import CharTokenizer
from gptcli.training.validator import Validator
from tests.conftest import SONNETS

SONNET_TEXT = SONNETS.read_text()
RECORDS = [
    "Shall I compare thee to a summer's day?",
    "",
    "Thou art more lovely and more temperate: é 🙂",
    "Rough winds do shake the darling buds of May, <|endoftext|> as text",
]


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=400)).tokenizer


@pytest.fixture
def mixed_corpus(tmp_path):
    """A plain-text file (one document), JSON Lines and Parquet (one document per record)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a_sonnets.txt").write_text(SONNET_TEXT)
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in RECORDS))
    pq.write_table(pa.table({"text": RECORDS[::-1]}), folder / "c.parquet")
    documents = [SONNET_TEXT, *[t for t in RECORDS if t], *[t for t in RECORDS[::-1] if t]]
    return folder, documents


def ids_of(documents, tokenizer) -> list[int]:
    """What a store must hold: each document's encode_ordinary, then end-of-text."""
    return [i for doc in documents for i in [*tokenizer.encode_ordinary(doc), tokenizer.eot_id]]


def all_ids(store) -> list[int]:
    return np.asarray(store.train).tolist() + np.asarray(store.val).tolist()


def store_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---- what a store holds


def test_a_store_holds_each_document_then_eot_and_val_is_the_last_fraction(bpe, mixed_corpus, tmp_path):
    folder, documents = mixed_corpus
    result = prepare_store(tmp_path / "store", find_sources([folder]), bpe, val_fraction=0.25)
    expected = ids_of(documents, bpe)
    store = result.store
    assert result.status == "written" and all_ids(store) == expected
    assert len(store.val) == int(len(expected) * 0.25) > 0
    assert np.asarray(store.val).tolist() == expected[len(expected) - len(store.val) :]
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert (meta["format"], meta["version"], meta["dtype"]) == ("gptcli.token_store", 2, "uint16")
    assert meta["tokenizer_sha256"] == tokenizer_sha256(bpe) and meta["vocab_size"] == bpe.vocab_size
    assert (meta["documents"], meta["empty_documents"]) == (len(documents), 2)
    # a document belongs to the split its end-of-text falls in
    val_docs = expected[len(expected) - len(store.val) :].count(bpe.eot_id)
    assert meta["splits"]["val"]["documents"] == val_docs
    assert meta["splits"]["train"]["documents"] == len(documents) - val_docs
    assert meta["source_options"] == {"text_field": "text", "split": None, "skip_bad_records": False}
    assert [s["path"] for s in meta["sources"]["train"]] == [str(p) for p in find_sources([folder])]
    assert load_tokenizer(tmp_path / "store" / "tokenizer.json").merges == bpe.merges
    assert not (tmp_path / "store" / "progress.json").exists() and is_store(tmp_path / "store")


def test_val_sources_give_the_val_shards_and_a_zero_fraction_gives_none(bpe, corpus, tmp_path):
    train, val = corpus(SONNET_TEXT, "train.txt"), corpus("Thou art more lovely\n" * 50, "val.txt")
    store = prepare_store(tmp_path / "a", [train], bpe, val_sources=[val]).store
    assert np.asarray(store.train).tolist() == ids_of([SONNET_TEXT], bpe)
    assert np.asarray(store.val).tolist() == ids_of([val.read_text()], bpe)
    assert store.meta["val_fraction"] is None and store.meta["splits"]["val"]["documents"] == 1
    store = prepare_store(tmp_path / "b", [train], bpe, val_fraction=0.0).store
    assert len(store.val) == 0 and store.meta["splits"]["val"]["shards"] == []
    assert np.asarray(store.train).tolist() == ids_of([SONNET_TEXT], bpe)


def test_source_options_are_used_and_recorded(bpe, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "to be or not to be"}) + "\n" + "{broken\n")
    options = SourceOptions(text_field="body", skip_bad_records=True)
    result = prepare_store(tmp_path / "s", [path], bpe, val_fraction=0.0, options=options)
    assert all_ids(result.store) == ids_of(["to be or not to be"], bpe)
    assert (
        result.store.meta["bad_records"] == 1 and result.store.meta["source_options"]["text_field"] == "body"
    )
    assert any("1 bad record(s) skipped" in note and "d.jsonl line 2" in note for note in result.notes)


def test_a_vocabulary_past_uint16_is_stored_as_uint32(tmp_path, corpus):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000 + 2048) if not 0xD800 <= c <= 0xDFFF][:70_000]
    tok = CharTokenizer(chars, {"<|endoftext|>": len(chars)})
    text = "".join(chars[-50:]) * 3
    store = prepare_store(tmp_path / "s", [corpus(text)], tok, val_fraction=0.0).store
    assert store.train.dtype == np.uint32 and all_ids(store) == ids_of([text], tok)


# ---- shards as one array


def test_token_shards_slice_across_boundaries_like_one_array():
    whole = np.arange(100, dtype=np.uint16)
    cuts = [0, 7, 8, 40, 100]
    shards = TokenShards([whole[a:b] for a, b in zip(cuts, cuts[1:])])
    assert len(shards) == 100 and shards.dtype == np.uint16
    for a, b in [(0, 100), (5, 9), (7, 8), (6, 41), (39, 40), (99, 100), (50, 50), (90, 200), (-10, None)]:
        assert np.array_equal(shards[a:b], whole[a:b]), (a, b)
    assert shards[3:60:7].tolist() == whole[3:60:7].tolist()
    assert shards[8] == 8 and shards[-1] == 99 and np.array_equal(np.asarray(shards), whole)
    head, tail = shards.split_tail(0.25)
    assert (len(head), len(tail)) == (75, 25) and np.array_equal(tail[0:25], whole[75:])
    assert np.array_equal(shards.part(5, 45)[0:40], whole[5:45])
    with pytest.raises(IndexError):
        shards[100]
    single = TokenShards([whole])
    assert single[10:20].base is whole or np.shares_memory(single[10:20], whole)  # a view, not a copy


def test_many_shards_give_the_ids_and_batches_of_one(bpe, mixed_corpus, tmp_path):
    folder, _ = mixed_corpus
    sources = find_sources([folder])
    one = prepare_store(tmp_path / "one", sources, bpe, val_fraction=0.2).store
    many = prepare_store(tmp_path / "many", sources, bpe, val_fraction=0.2, shard_tokens=2000).store
    assert (
        len(many.meta["splits"]["train"]["shards"]) >= 10 and len(many.meta["splits"]["val"]["shards"]) >= 2
    )
    assert len(one.meta["splits"]["train"]["shards"]) == 1
    assert all_ids(many) == all_ids(one)
    for split in ("train", "val"):
        array = np.asarray(getattr(one, split))  # a plain array: what the sampler took before stores
        a, b, c = (BatchSampler(x, 32, 8, seed=5) for x in (getattr(many, split), getattr(one, split), array))
        for _ in range(5):
            (xa, ya), (xb, yb), (xc, yc) = a.next_batch(), b.next_batch(), c.next_batch()
            assert torch.equal(xa, xc) and torch.equal(ya, yc) and torch.equal(xb, xc) and torch.equal(yb, yc)
    config = TrainConfig(
        model=dict(n_layer=1, n_head=2, n_embd=16, block_size=32), batch_size=4, eval_iters=2
    )
    torch.manual_seed(0)
    model = build_model(config.model.model_copy(update={"vocab_size": bpe.vocab_size}))
    data = [TokenData(s.train, s.val, []) for s in (many, one)]
    data.append(TokenData(np.asarray(one.train), np.asarray(one.val), []))
    losses = [Validator(d, config, torch.device("cpu"), "fp32").losses(model) for d in data]
    assert losses[0] == losses[1] == losses[2] and set(losses[0]) == {"train", "val"}


def test_workers_change_nothing_but_the_speed(bpe, mixed_corpus, tmp_path, monkeypatch):
    folder, _ = mixed_corpus
    monkeypatch.setattr(block_encoder, "PARALLEL_MIN_BYTES", 0)  # a process pool even for this small corpus
    sources = find_sources([folder])
    prepare_store(tmp_path / "serial", sources, bpe, shard_tokens=3000, workers=1)
    prepare_store(tmp_path / "pool", sources, bpe, shard_tokens=3000, workers=2)
    assert store_files(tmp_path / "pool") == store_files(tmp_path / "serial")


# ---- resuming


class Crash(Exception):
    pass


def crash_after(monkeypatch, blocks: int) -> dict:
    """Make the (in-process) encoder fail after `blocks` blocks; count the blocks it encodes."""
    encode, calls = prepare._encode_block, {"n": 0, "limit": blocks}

    def counted(pieces):
        calls["n"] += 1
        if calls["n"] > calls["limit"]:
            raise Crash("killed")
        return encode(pieces)

    monkeypatch.setattr(prepare, "_encode_block", counted)
    return calls


@pytest.mark.parametrize("val", ["fraction", "sources"])
def test_an_interrupted_prepare_resumes_to_the_same_bytes(bpe, mixed_corpus, tmp_path, monkeypatch, val):
    folder, _ = mixed_corpus
    sources = find_sources([folder])
    options = dict(val_fraction=0.3, shard_tokens=2000, workers=1)
    if val == "sources":
        options["val_sources"] = [SONNETS]
    calls = crash_after(monkeypatch, blocks=10**9)
    prepare_store(tmp_path / "whole", sources, bpe, **options)
    uninterrupted = calls["n"]

    calls.update(n=0, limit=uninterrupted - 5)  # dies with a few blocks to go
    with pytest.raises(Crash):
        prepare_store(tmp_path / "store", sources, bpe, **options)
    journal = json.loads((tmp_path / "store" / "progress.json").read_text())
    kept = journal["splits"]["train"]["shards"] + journal["splits"]["val"]["shards"]
    assert len(kept) >= 3 and not (tmp_path / "store" / "meta.json").exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "store").iterdir())  # the open shard is gone

    calls.update(n=0, limit=10**9)
    result = prepare_store(tmp_path / "store", sources, bpe, **options)
    assert result.status == "resumed" and result.kept_shards == len(kept)
    assert calls["n"] < uninterrupted - 5  # the kept shards' input was read, not encoded again
    assert store_files(tmp_path / "store") == store_files(tmp_path / "whole")


def test_a_crash_while_the_val_tail_is_moved_is_finished_by_a_rerun(bpe, tmp_path, monkeypatch):
    options = dict(val_fraction=0.3, shard_tokens=2000, workers=1)
    prepare_store(tmp_path / "whole", [SONNETS], bpe, **options)
    apply_tail = shard_writer.apply_tail

    def cut_then_die(folder, journal):
        apply_tail(folder, journal)  # the train shards are already cut at the split point
        raise Crash("killed")

    monkeypatch.setattr(shard_writer, "apply_tail", cut_then_die)
    with pytest.raises(Crash):
        prepare_store(tmp_path / "store", [SONNETS], bpe, **options)
    monkeypatch.setattr(shard_writer, "apply_tail", apply_tail)
    assert prepare_store(tmp_path / "store", [SONNETS], bpe, **options).status == "resumed"
    assert store_files(tmp_path / "store") == store_files(tmp_path / "whole")


def test_a_damaged_kept_shard_is_tokenized_again_from_there(bpe, tmp_path, monkeypatch):
    options = dict(val_fraction=0.1, shard_tokens=2000, workers=1)
    prepare_store(tmp_path / "whole", [SONNETS], bpe, **options)
    calls = crash_after(monkeypatch, blocks=12)
    with pytest.raises(Crash):
        prepare_store(tmp_path / "store", [SONNETS], bpe, **options)
    shard = tmp_path / "store" / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    calls.update(n=0, limit=10**9)
    result = prepare_store(tmp_path / "store", [SONNETS], bpe, **options)
    assert result.kept_shards == 1 and any("train_000001.bin" in note for note in result.notes)
    assert store_files(tmp_path / "store") == store_files(tmp_path / "whole")


# ---- reruns, other inputs, damage


def test_a_complete_store_is_checked_and_kept(bpe, tmp_path, monkeypatch):
    first = prepare_store(tmp_path / "s", [SONNETS], bpe, shard_tokens=5000)
    files = store_files(tmp_path / "s")
    crash_after(monkeypatch, blocks=0)  # nothing may be encoded again
    again = prepare_store(tmp_path / "s", [SONNETS], bpe, shard_tokens=5000)
    assert (first.status, again.status, again.notes) == ("written", "complete", [])
    assert store_files(tmp_path / "s") == files


def test_other_inputs_into_a_store_need_overwrite(bpe, corpus, tmp_path):
    prepare_store(tmp_path / "s", [SONNETS], bpe)
    other = corpus("something else entirely " * 100)
    char = train_tokenizer(TokenizerTrainConfig(files=[str(SONNETS)], kind="char")).tokenizer
    for args, kwargs, what in [
        ([other], {}, "sources"),
        ([SONNETS], {"shard_tokens": 5000}, "shard_tokens"),
        ([SONNETS], {"val_fraction": 0.2}, "val_fraction"),
        ([SONNETS], {"options": SourceOptions(text_field="body")}, "source_options"),
    ]:
        with pytest.raises(GptError, match=f"other inputs .*{what}.*--overwrite"):
            prepare_store(tmp_path / "s", args, bpe, **kwargs)
    with pytest.raises(GptError, match="differ in: tokenizer"):
        prepare_store(tmp_path / "s", [SONNETS], char)
    store = prepare_store(tmp_path / "s", [other], bpe, overwrite=True).store
    assert all_ids(store) == ids_of([other.read_text()], bpe)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "meta.json", "tokenizer.json", "train_000000.bin", "val_000000.bin",
    ]  # fmt: skip


def test_a_folder_that_is_not_a_store_is_never_written_into(bpe, corpus, tmp_path):
    corpus("my notes", "notes/todo.txt")
    for overwrite in (False, True):
        with pytest.raises(GptError, match="not empty and is not a token store"):
            prepare_store(tmp_path / "notes", [SONNETS], bpe, overwrite=overwrite)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_shard_is_an_error_naming_it_and_a_rerun_repairs_it(bpe, tmp_path, damage):
    prepare_store(tmp_path / "s", [SONNETS], bpe, shard_tokens=5000)
    files = store_files(tmp_path / "s")
    shard = tmp_path / "s" / "train_000002.bin"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[10] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[:-1]))
    else:
        shard.unlink()
    with pytest.raises(
        GptError, match="train_000002.bin (does not match its checksum|has .* bytes|is missing)"
    ):
        open_store(tmp_path / "s")
    if damage != "flip":  # sizes are checked even when checksums are not
        with pytest.raises(GptError, match="train_000002.bin"):
            open_store(tmp_path / "s", checksums=False)
    result = prepare_store(tmp_path / "s", [SONNETS], bpe, shard_tokens=5000)
    assert result.status == "written" and any("train_000002.bin" in note for note in result.notes)
    assert store_files(tmp_path / "s") == files


def test_a_big_store_is_opened_with_sizes_checked_and_says_how_to_verify(bpe, tmp_path, monkeypatch):
    import gptcli.data.store as store_module

    prepare_store(tmp_path / "s", [SONNETS], bpe)
    monkeypatch.setattr(store_module, "VERIFY_ON_OPEN_BYTES", 10)
    shard = tmp_path / "s" / "train_000000.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 0x01
    shard.write_bytes(bytes(data))
    store = open_store(tmp_path / "s")  # sizes only: the flipped byte is not seen...
    assert not store.checksums_verified and "gpt data verify" in store.note()
    with pytest.raises(GptError, match="does not match its checksum"):  # ...until verified
        open_store(tmp_path / "s", checksums=True)


def test_incomplete_and_foreign_folders_are_clear_errors(bpe, tmp_path, monkeypatch):
    crash_after(monkeypatch, blocks=3)
    with pytest.raises(Crash):
        prepare_store(tmp_path / "s", [SONNETS], bpe, shard_tokens=2000, workers=1)
    assert is_store(tmp_path / "s")
    with pytest.raises(GptError, match="incomplete token store.*run the same gpt data prepare"):
        open_store(tmp_path / "s")
    (tmp_path / "plain").mkdir()
    assert not is_store(tmp_path / "plain")
    with pytest.raises(GptError, match="not a token store"):
        open_store(tmp_path / "plain")


def test_the_tokenizer_hash_ignores_where_it_was_trained_and_is_checked(bpe, tmp_path):
    bpe.save(tmp_path / "tok.json")
    copy = load_tokenizer(tmp_path / "tok.json")
    copy.trained_on = None
    assert tokenizer_sha256(copy) == tokenizer_sha256(bpe)
    store = prepare_store(tmp_path / "s", [SONNETS], bpe).store
    store.check_tokenizer(copy)
    char = train_tokenizer(TokenizerTrainConfig(files=[str(SONNETS)], kind="char")).tokenizer
    with pytest.raises(GptError, match=r"prepared with another tokenizer \(bpe, vocab 400.*this run's: char"):
        store.check_tokenizer(char)
