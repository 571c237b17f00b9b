"""--target-loss and --early-stop (issue 13): the run stops at the eval that meets them, saved; every
metrics record carries `elapsed`, seconds since the command started."""

import json

from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.conftest import run_cli
from tests.training.test_trainer import tiny


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def val_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in records(run_dir) if r.get("kind") == "eval"}


def test_target_loss_stops_at_the_first_eval_that_reaches_it_and_saves_it(tmp_path):
    config = tiny(tmp_path, max_iters=20, eval_interval=2, sample_tokens=0)
    train(config, tmp_path / "full")
    full = val_losses(tmp_path / "full")
    target = full[6]  # reached at step 6 (and maybe again later: the first one counts)
    first = min(step for step, loss in full.items() if loss <= target)
    summary = train(config.model_copy(update={"target_loss": target}), tmp_path / "target")
    assert summary.stop_reason == "target_loss" and summary.step == first
    assert summary.last_checkpoint.name == f"step_{first:07d}"
    assert val_losses(tmp_path / "target") == {s: v for s, v in full.items() if s <= first}


def test_early_stop_after_n_evals_without_a_better_val_loss(tmp_path):
    # a learning rate too small to move the weights: every eval after the first is no better
    config = tiny(tmp_path, max_iters=40, eval_interval=2, sample_tokens=0, lr=1e-12, early_stop=2)
    summary = train(config, tmp_path / "run")
    assert summary.stop_reason == "early_stop" and summary.step == 6  # best at 2; 4 and 6 no better
    state = json.loads((summary.last_checkpoint / "train_state.json").read_text())
    assert state["evals_since_best"] == 2 and state["best_val_loss"] == val_losses(tmp_path / "run")[2]


def test_evals_since_best_survives_a_resume(tmp_path):
    config = tiny(tmp_path, max_iters=4, eval_interval=2, sample_tokens=0, lr=1e-12)
    train(config, tmp_path / "run")  # evals at 2 (best) and 4 (no better): one eval since the best
    resumed = read_run_config(tmp_path / "run").model_copy(update={"max_iters": 40, "early_stop": 2})
    summary = train(resumed, tmp_path / "run", resume=True)
    assert summary.stop_reason == "early_stop" and summary.step == 6


def test_every_record_carries_elapsed_seconds(tmp_path):
    train(tiny(tmp_path, max_iters=6, eval_interval=3, sample_tokens=0), tmp_path / "run")
    elapsed = [r["elapsed"] for r in records(tmp_path / "run")]
    assert len(elapsed) == 8 and all(isinstance(e, float) and e > 0 for e in elapsed)
    assert elapsed == sorted(elapsed)


def test_cli_says_why_it_stopped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    from tests.conftest import SONNETS

    result = run_cli(
        "train", "-d", str(SONNETS), "-t", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
        "--block-size", "16", "--batch-size", "4", "--max-iters", "40", "--eval-interval", "2",
        "--eval-iters", "1", "--sample-tokens", "0", "--device", "cpu", "--lr", "1e-12", "--early-stop", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "done (stopped by --early-stop): 4 steps" in result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["early_stop"] == 1
