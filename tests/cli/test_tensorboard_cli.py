"""`gpt train --tensorboard`: the flag, the event files in the run dir, and the error without the package."""

import json
import sys

from tests.cli.test_train_cli import tiny
from tests.conftest import SONNETS, assert_one_line_error, run_cli


def train_args(tmp_path, *extra: str) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SONNETS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return ["train", "--data", str(corpus), "-t", "char", *tiny(), "--data-cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "-q", *extra]  # fmt: skip


def test_tensorboard_writes_event_files_and_overwrite_clears_them(tmp_path):
    out = tmp_path / "out"
    result = run_cli(*train_args(tmp_path, "--tensorboard"))
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["tensorboard"] is True  # --resume keeps it on
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    result = run_cli(*train_args(tmp_path, "--overwrite"))  # a new run: the old events would mislead
    assert result.exit_code == 0, result.stderr
    assert not (out / "tensorboard").exists()


def test_without_tensorboard_installed_a_one_line_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = run_cli(*train_args(tmp_path, "--tensorboard"))
    assert_one_line_error(
        result, "--tensorboard needs the tensorboard package", "pip install 'gptcli[tensorboard]'"
    )
    assert not (tmp_path / "out").exists()
