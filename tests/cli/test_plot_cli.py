"""`gpt plot` as a user runs it: on a real (tiny) training run, and one-line errors for bad input."""

import sys
from pathlib import Path

import pytest

from tests.cli.test_train_cli import tiny
from tests.conftest import SONNETS, assert_one_line_error, run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One finished 4-step char-level run, shared by the tests (they only read it)."""
    tmp = tmp_path_factory.mktemp("plot")
    corpus = tmp / "corpus.txt"
    corpus.write_text(SONNETS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out, cache = str(tmp / "run"), str(tmp / "cache")
    result = run_cli(
        "train", "--data", str(corpus), "-t", "char", *tiny(), "--out", out, "--data-cache", cache, "-q"
    )
    assert result.exit_code == 0, result.stderr
    return tmp / "run"


def test_plot_writes_a_png(run, tmp_path):
    out = tmp_path / "loss.png"
    result = run_cli("plot", str(run), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"wrote {out}\n" and result.stdout == ""
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000  # a drawn figure, not an empty canvas


def test_the_default_output_is_loss_png_in_the_run_dir(run):
    result = run_cli("plot", str(run), "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # --quiet
    assert (run / "loss.png").read_bytes().startswith(PNG)


def test_several_runs_overlaid(run, tmp_path):
    result = run_cli("plot", str(run), str(run), "-o", str(tmp_path / "both.svg"))
    assert result.exit_code == 0, result.stderr
    assert "<svg" in (tmp_path / "both.svg").read_text()


def test_bad_inputs_are_one_line_errors(run, tmp_path):
    assert_one_line_error(run_cli("plot", str(tmp_path / "nope")), "run directory not found")
    assert_one_line_error(run_cli("plot", str(tmp_path)), "holds no metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text("")
    assert_one_line_error(run_cli("plot", str(tmp_path)), "holds no metrics yet")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "lr": 0.1}\n{oops\n{"step": 2}\n')
    assert_one_line_error(run_cli("plot", str(tmp_path)), "line 2: not JSON")
    assert_one_line_error(run_cli("plot", str(run), "--out", str(tmp_path / "loss.gif")), ".png, .svg, .pdf")
    result = run_cli("plot")
    assert_one_line_error(result, "RUN_DIR")
    assert result.exit_code == 2
    assert not list(tmp_path.glob("*.png"))


def test_without_matplotlib_the_error_says_what_to_install(run, tmp_path, monkeypatch):
    for module in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)
    result = run_cli("plot", str(run), "--out", str(tmp_path / "loss.png"))
    assert_one_line_error(result, "pip install 'gptcli[plot]'")
