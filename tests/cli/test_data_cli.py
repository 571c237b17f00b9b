"""`gpt data prepare|verify` as a user runs them, and `gpt train --data STORE`: training from a store
equals training from the files, the store's tokenizer is the default, and every mistake or damage
is a one-line error."""

import json

import pytest

from tests.cli.test_train_cli import metrics, tiny, without_speed
from tests.conftest import SONNETS, assert_one_line_error, run_cli


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A tmp cwd with a small BPE tokenizer (./tokenizer.json) and its own token cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    result = run_cli("tokenizer", "train", str(SONNETS), "--vocab-size", "300", "--quiet")
    assert result.exit_code == 0, result.stderr
    return tmp_path


def prepare(*args: str):
    return run_cli("data", "prepare", str(SONNETS), "--out", "store", *args)


def test_training_from_a_store_equals_training_from_the_files(workdir):
    result = prepare("--shard-tokens", "4000")
    assert result.exit_code == 0, result.stderr
    assert (
        "prepared store: train" in result.stderr and " MB, " in result.stderr
    )  # progress, not on a terminal
    meta = json.loads((workdir / "store" / "meta.json").read_text())
    assert len(meta["splits"]["train"]["shards"]) > 3  # the sampler draws across shards
    from_store = run_cli("train", "--data", "store", "--out", "run_store", *tiny())
    assert from_store.exit_code == 0, from_store.stderr
    assert (
        "tokenizer: " in from_store.stderr and "store/tokenizer.json (the token store's)" in from_store.stderr
    )
    from_files = run_cli(
        "train", "--data", str(SONNETS), "--tokenizer", "tokenizer.json", "--out", "run_files", *tiny()
    )
    assert from_files.exit_code == 0, from_files.stderr
    records = without_speed(metrics(workdir / "run_store"))
    assert records == without_speed(metrics(workdir / "run_files"))
    assert any("val_loss" in r for r in records)
    config = json.loads((workdir / "run_store" / "config.json").read_text())
    assert config["data"] == [str(workdir / "store")] and config["tokenizer"] == str(
        workdir / "store" / "tokenizer.json"
    )


def test_a_rerun_says_complete_and_other_inputs_need_overwrite(workdir):
    assert prepare().exit_code == 0
    again = prepare()
    assert again.exit_code == 0 and "store is complete, its checksums match" in again.stderr
    assert_one_line_error(prepare("--val-fraction", "0.2"), "other inputs", "val_fraction", "--overwrite")
    replaced = prepare("--val-fraction", "0.2", "--overwrite")
    assert (
        replaced.exit_code == 0
        and json.loads((workdir / "store" / "meta.json").read_text())["val_fraction"] == 0.2
    )
    verified = run_cli("data", "verify", "store")
    assert verified.exit_code == 0 and "intact" in verified.stderr


def test_jsonl_with_a_text_field_and_separate_val_data(workdir):
    (workdir / "d.jsonl").write_text(
        "".join(json.dumps({"body": f"to be or not to be {i}"}) + "\n" for i in range(50))
    )
    args = ["data", "prepare", "d.jsonl", "--text-field", "body", "--val-data", str(SONNETS), "--out", "j"]
    result = run_cli(*args, "--quiet")
    assert (result.exit_code, result.stderr) == (0, "")
    meta = json.loads((workdir / "j" / "meta.json").read_text())
    assert meta["documents"] == 51 and meta["splits"]["val"]["documents"] == 1
    assert meta["splits"]["train"]["documents"] == 50 and meta["source_options"]["text_field"] == "body"


def test_a_store_with_another_tokenizer_is_refused(workdir):
    assert prepare().exit_code == 0
    other = run_cli(
        "tokenizer", "train", str(SONNETS), "--vocab-size", "280", "--out", "other.json", "--quiet"
    )
    assert other.exit_code == 0
    result = run_cli("train", "--data", "store", "--tokenizer", "other.json", "--out", "run", *tiny())
    assert_one_line_error(
        result, "the store", "was prepared with another tokenizer", "pass --tokenizer", "store/tokenizer.json"
    )
    result = run_cli("train", "--data", "store", "--tokenizer", "char", "--out", "run", *tiny())
    assert_one_line_error(result, "--tokenizer char", "is a token store")


def test_a_damaged_or_unfinished_store_is_never_trained_on(workdir):
    assert prepare("--shard-tokens", "4000").exit_code == 0
    shard = workdir / "store" / "train_000001.bin"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x01
    shard.write_bytes(bytes(data))
    for args in (["train", "--data", "store", "--out", "run", *tiny()], ["data", "verify", "store"]):
        result = run_cli(*args)
        assert_one_line_error(result, "train_000001.bin does not match its checksum")
        assert result.exit_code == 1
    assert not (workdir / "run" / "metrics.jsonl").exists()
    (workdir / "store" / "meta.json").unlink()
    (workdir / "store" / "progress.json").write_text("{}")
    result = run_cli("train", "--data", "store", "--out", "run", *tiny())
    assert_one_line_error(result, "incomplete token store", "run the same gpt data prepare command again")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["data", "prepare", str(SONNETS)], ["no --out given"]),
        (["data", "prepare", str(SONNETS), "--out", "s", "--tokenizer", "nope.json"], ["tokenizer not found: nope.json"]),
        (["data", "prepare", "missing.txt", "--out", "s"], ["corpus file not found"]),
        (["data", "prepare", str(SONNETS), "--out", "s", "--val-fraction", "0.2", "--val-data", str(SONNETS)],
         ["--val-fraction or --val-data, not both"]),
        (["data", "prepare", str(SONNETS), "--out", "s", "--val-fraction", "1.5"], ["--val-fraction"]),
        (["data", "prepare", str(SONNETS), "--out", "tokenizer.json"], ["is a file, not a folder"]),
        (["data", "verify", "nowhere"], ["nowhere is not a token store"]),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_errors(workdir, args, fragments):
    result = run_cli(*args)
    assert_one_line_error(result, *fragments)
    assert result.exit_code == (2 if "--val-fraction" in fragments else 1)  # a bad option's value: 2


def test_a_folder_that_is_not_a_store_is_refused(workdir):
    (workdir / "notes").mkdir()
    (workdir / "notes" / "todo.txt").write_text("mine")
    result = run_cli("data", "prepare", str(SONNETS), "--out", "notes", "--overwrite")
    assert_one_line_error(result, "not empty and is not a token store")
    assert [p.name for p in (workdir / "notes").iterdir()] == ["todo.txt"]


def test_progress_line_shows_the_rate_and_eta_once_measured(monkeypatch, capsys):
    import gptcli.cli.data as data_cli

    clock = iter([0.0, 10.0, 20.0, 30.0])
    monkeypatch.setattr(data_cli.time, "monotonic", lambda: next(clock))
    progress = data_cli.RateProgress()
    progress.every = 0
    progress("tokenizing train", 0, 40_000_000)
    progress("tokenizing train", 10_000_000, 40_000_000)  # 1 MB/s so far: 30 s to go
    progress("tokenizing val", 5_000_000, 5_000_000)  # a stage whose first report is its last
    lines = capsys.readouterr().err.splitlines()
    assert lines[1] == "tokenizing train: 10.0 / 40.0 MB, 1.0 MB/s, ETA 30s"
    assert lines[2] == "tokenizing val: 5.0 / 5.0 MB, done"
