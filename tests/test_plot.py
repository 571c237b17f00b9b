"""gptcli.plot: reading a run's metrics.jsonl into curves (resumed runs, crashes, bad files) and drawing them."""

import json
import sys
from pathlib import Path

import pytest

from gptcli.errors import GptError
from gptcli.plot import plot_runs, read_metrics
from gptcli.training.trainer import train
from tests.training.test_trainer import tiny


def write_metrics(run_dir: Path, *lines: str | dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def log(step: int, loss: float, lr: float = 1e-3) -> dict:
    return {"step": step, "loss": loss, "lr": lr, "tokens_per_sec": 100.0}


def evaluation(step: int, train_loss: float, val_loss: float | None) -> dict:
    return {"step": step, "kind": "eval", "train_loss": train_loss, "val_loss": val_loss, "sample": "x"}


def test_read_metrics_of_a_real_run(tmp_path):
    run = tmp_path / "run"
    train(tiny(tmp_path, max_iters=4, eval_interval=2, log_interval=1), run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "kind" not in r]
    evals = [r for r in records if r.get("kind") == "eval"]

    curves = read_metrics(run)
    assert curves.name == str(run)
    assert curves.steps == [1, 2, 3, 4] and curves.eval_steps == [2, 4]
    assert curves.loss == [r["loss"] for r in logs] and curves.lr == [r["lr"] for r in logs]
    assert curves.train_loss == [r["train_loss"] for r in evals]
    assert curves.val_loss == [r["val_loss"] for r in evals]


def test_a_redone_step_replaces_the_earlier_record(tmp_path):
    # a resumed run redoes the steps after its checkpoint; should the old lines still be there, the new win
    run = write_metrics(
        tmp_path, log(1, 5.0), log(2, 4.0), evaluation(2, 4.1, 4.2), log(3, 9.0), log(2, 4.5), log(3, 3.0)
    )
    curves = read_metrics(run)
    assert curves.steps == [1, 2, 3] and curves.loss == [5.0, 4.5, 3.0]
    assert curves.eval_steps == [2]


def test_a_line_cut_short_at_the_end_is_skipped(tmp_path):
    run = write_metrics(tmp_path, log(1, 5.0), log(2, 4.0))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-write: no newline
    assert read_metrics(run).steps == [1, 2]


def test_no_val_loss_and_unknown_kinds_are_kept_apart(tmp_path):
    run = write_metrics(
        tmp_path, log(1, 5.0), evaluation(1, 4.9, None), {"step": 1, "kind": "future", "x": 1}
    )
    curves = read_metrics(run)
    assert curves.val_loss == [None] and curves.train_loss == [4.9] and curves.steps == [1]


@pytest.mark.parametrize(
    "lines, fragment",
    [
        ((), "holds no metrics yet"),
        (("",), "holds no metrics yet"),
        (("not json", json.dumps(log(1, 5.0))), "line 1: not JSON"),
        (("[1, 2]",), "line 1: not a metrics record"),
        (('{"step": "3", "loss": 1, "lr": 1}',), "integer 'step'"),
        ((json.dumps(log(1, 5.0)), '{"step": 2, "loss": "high", "lr": 0.1}'), "line 2: 'loss' is \"high\""),
        (('{"step": 2, "loss": 1.0}',), "'lr' is null"),
        (('{"step": 2, "kind": "eval", "train_loss": true, "val_loss": null}',), "'train_loss' is true"),
    ],
)
def test_bad_metrics_are_one_line_errors(tmp_path, lines, fragment):
    run = write_metrics(tmp_path / "run", *lines)
    with pytest.raises(GptError, match="metrics.jsonl") as e:
        read_metrics(run)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_missing_run_dir_or_metrics_file(tmp_path):
    with pytest.raises(GptError, match="run directory not found"):
        read_metrics(tmp_path / "nope")
    with pytest.raises(GptError, match="holds no metrics.jsonl"):
        read_metrics(tmp_path)


@pytest.mark.parametrize(
    "name, magic", [("loss.png", b"\x89PNG\r\n\x1a\n"), ("loss.pdf", b"%PDF"), ("loss.svg", b"<?xml")]
)
def test_the_format_follows_the_extension(tmp_path, name, magic):
    run = write_metrics(tmp_path / "run", log(1, 5.0), log(2, 4.0), evaluation(2, 4.1, 4.2))
    out = plot_runs([run], tmp_path / "plots" / name)  # a missing folder is made
    assert out.read_bytes().startswith(magic)


def test_several_runs_in_one_figure(tmp_path):
    a = write_metrics(tmp_path / "gpt", log(1, 5.0), evaluation(1, 4.9, 5.0))
    b = write_metrics(tmp_path / "lstm", log(1, 6.0), log(2, 5.5))  # no eval yet
    svg = plot_runs([a, b], tmp_path / "both.svg").read_text()
    assert str(a) in svg and str(b) in svg  # both named in the legend


def test_an_unknown_extension_is_refused_before_reading(tmp_path):
    with pytest.raises(GptError, match=r"use a name ending in \.png, \.svg, \.pdf"):
        plot_runs([tmp_path / "nope"], tmp_path / "loss.jpg")


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch):
    run = write_metrics(tmp_path / "run", log(1, 5.0))
    for module in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)  # what `import` finds when it is not installed
    with pytest.raises(GptError, match=r"pip install 'gptcli\[plot\]'"):
        plot_runs([run], tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()
