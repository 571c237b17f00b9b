"""`--tensorboard`: the event files hold what metrics.jsonl holds, also across a resume; a missing package
fails before any work."""

import json
import shutil
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptcli.errors import GptError
from gptcli.storage import checkpoint as ckpt
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.training.test_trainer import tiny

TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "tokens_per_sec": "train/tokens_per_sec"}
EVAL_TAGS = {"train_loss": "eval/train_loss", "val_loss": "eval/val_loss"}


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events


def assert_events_match_metrics(run_dir) -> None:
    """Every scalar tag holds one value per step, equal (as float32) to the metrics.jsonl record's."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = read_events(run_dir)
    assert set(events.Tags()["scalars"]) == {*TRAIN_TAGS.values(), *EVAL_TAGS.values()}
    for kind, tags in ((None, TRAIN_TAGS), ("eval", EVAL_TAGS)):
        wanted = [r for r in records if r.get("kind") == kind]
        for key, tag in tags.items():
            scalars = events.Scalars(tag)
            assert [e.step for e in scalars] == [r["step"] for r in wanted], tag
            assert [e.value for e in scalars] == pytest.approx([r[key] for r in wanted], rel=1e-6), tag


def test_events_hold_the_metrics(tmp_path):
    run = tmp_path / "run"
    train(tiny(tmp_path, max_iters=4, eval_interval=2, tensorboard=True), run)
    assert_events_match_metrics(run)
    samples = read_events(run).Tensors("eval/sample/text_summary")
    assert [s.step for s in samples] == [2, 4]


def test_a_resumed_run_replaces_the_steps_it_redoes(tmp_path):
    run = tmp_path / "run"
    train(tiny(tmp_path, max_iters=4, eval_interval=2, tensorboard=True), run)
    before = read_events(run).Scalars("train/tokens_per_sec")
    shutil.rmtree(ckpt.list_checkpoints(run)[-1])  # "crashed" after the step-2 checkpoint
    train(read_run_config(run), run, resume=True)  # redoes steps 3 and 4
    assert_events_match_metrics(run)  # one event per step, and for 3 and 4 the new run's
    after = read_events(run).Scalars("train/tokens_per_sec")
    assert after[:2] == before[:2] and after[2:] != before[2:]


def test_without_tensorboard_the_run_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what `import` finds when missing
    with pytest.raises(GptError, match=r"pip install 'gptcli\[tensorboard\]'"):
        train(tiny(tmp_path, tensorboard=True), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no data was prepared
