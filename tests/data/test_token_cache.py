import json

import numpy as np
import pytest

from gptcli.config import TokenizerTrainConfig
from gptcli.data.token_cache import prepare_data, tokenize_files
from gptcli.tokenizers.train import train_tokenizer
from tests.conftest import SONNETS


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_tokenizer(TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=500)).tokenizer


def test_tokens_equal_encoding_each_file_with_eot_between(bpe, corpus, tmp_path):
    a = corpus("Shall I compare thee to a summer's day?\n" * 30, "a.txt")
    b = corpus("Thou art more lovely and more temperate.\n" * 30, "b.txt")
    tokens, _ = tokenize_files([a, b], bpe, tmp_path / "cache")
    expected = bpe.encode_ordinary(a.read_text()) + [bpe.eot_id] + bpe.encode_ordinary(b.read_text())
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == expected


def test_block_by_block_encoding_equals_whole_file(bpe, tmp_path, monkeypatch):
    import gptcli.data.corpus

    monkeypatch.setattr(gptcli.data.corpus, "BLOCK_BYTES", 257)  # many blocks
    tokens, _ = tokenize_files([SONNETS], bpe, tmp_path / "cache")
    assert tokens.tolist() == bpe.encode_ordinary(SONNETS.read_text())


def test_cache_is_reused_and_keyed_by_content(bpe, corpus, tmp_path):
    path = corpus("to be or not to be\n" * 100)
    _, where = tokenize_files([path], bpe, tmp_path / "cache")
    meta = json.loads((where / "meta.json").read_text())
    assert meta["n_tokens"] > 0 and meta["vocab_size"] == bpe.vocab_size
    (where / "tokens.bin").touch()  # same size, same key: reused, not rewritten
    mtime = (where / "tokens.bin").stat().st_mtime_ns
    _, again = tokenize_files([path], bpe, tmp_path / "cache")
    assert again == where and (where / "tokens.bin").stat().st_mtime_ns == mtime
    path.write_text("something else entirely\n" * 100)
    _, changed = tokenize_files([path], bpe, tmp_path / "cache")
    assert changed != where


def test_truncated_cache_is_rebuilt(bpe, corpus, tmp_path):
    path = corpus("to be or not to be\n" * 100)
    tokens, where = tokenize_files([path], bpe, tmp_path / "cache")
    n = len(tokens)
    with open(where / "tokens.bin", "r+b") as fh:
        fh.truncate(10)
    tokens, _ = tokenize_files([path], bpe, tmp_path / "cache")
    assert len(tokens) == n


def test_split_and_separate_val_data(bpe, corpus, tmp_path):
    path = corpus("word " * 1000)
    data = prepare_data([str(path)], bpe, val_fraction=0.1, cache_dir=tmp_path)
    total = len(data.train) + len(data.val)
    assert len(data.val) == int(total * 0.1)
    val_path = corpus("other words " * 50, "val.txt")
    data = prepare_data([str(path)], bpe, val_data=[str(val_path)], cache_dir=tmp_path)
    assert len(data.train) == total and data.val.tolist() == bpe.encode_ordinary(val_path.read_text())


def test_meta_records_the_checksum_hashed_while_writing(bpe, corpus, tmp_path, monkeypatch):
    import gptcli.data.token_cache as token_cache
    from gptcli.storage.files import sha256_file

    read_back = []

    def spy(path, h=None):
        if path.name == "tokens.bin":
            read_back.append(path)
        return sha256_file(path, h)

    monkeypatch.setattr(token_cache, "sha256_file", spy)
    path = corpus("to be or not to be\n" * 100)
    _, where = tokenize_files([path], bpe, tmp_path / "cache")
    assert read_back == []  # hashed as it was written, not read again
    meta = json.loads((where / "meta.json").read_text())
    assert meta["sha256"] == sha256_file(where / "tokens.bin").hexdigest()
    tokenize_files([path], bpe, tmp_path / "cache")
    assert read_back == [where / "tokens.bin"]  # verified before it is used


def test_damaged_cache_is_rebuilt_with_a_warning(bpe, corpus, tmp_path):
    path = corpus("to be or not to be\n" * 100)
    tokens, where = tokenize_files([path], bpe, tmp_path / "cache")
    expected = tokens.tolist()
    del tokens  # the memmap
    data = bytearray((where / "tokens.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped: the right size, other ids
    (where / "tokens.bin").write_bytes(bytes(data))
    warnings = []
    tokens, again = tokenize_files([path], bpe, tmp_path / "cache", warn=warnings.append)
    assert again == where and tokens.tolist() == expected
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(where) in warnings[0] and "does not match its checksum" in warnings[0]
    assert "tokenizing the corpus again" in warnings[0]
    warnings.clear()
    tokenize_files([path], bpe, tmp_path / "cache", warn=warnings.append)
    assert warnings == []  # rebuilt whole: used as it is from now on


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda meta: meta.pop("sha256"), "older version without a checksum"),
        (lambda meta: meta.pop("n_tokens"), "meta.json is damaged"),
    ],
    ids=["old-format", "damaged-meta"],
)
def test_a_cache_entry_without_a_usable_meta_is_rebuilt(bpe, corpus, tmp_path, damage, fragment):
    path = corpus("to be or not to be\n" * 100)
    tokens, where = tokenize_files([path], bpe, tmp_path / "cache")
    expected = tokens.tolist()
    meta = json.loads((where / "meta.json").read_text())
    damage(meta)
    (where / "meta.json").write_text(json.dumps(meta))
    data = prepare_data([str(path)], bpe, val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert data.train.tolist() == expected
    assert len(data.notes) == 1 and fragment in data.notes[0]
    assert "sha256" in json.loads((where / "meta.json").read_text())  # rewritten in the new form
    (where / "meta.json").write_text("{not json")
    assert "meta.json is damaged" in prepare_data([str(path)], bpe, cache_dir=tmp_path / "cache").notes[0]
