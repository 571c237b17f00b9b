"""A second Ctrl-C stops training at once, mid-step, saving nothing: its one line says plainly what
is left, the last checkpoint and how to continue, or that nothing was saved yet."""

from pathlib import Path

import pytest

from gptcli.config import TrainConfig
from gptcli.training.interrupt import TrainingInterrupted, cut_short_message
from gptcli.training.trainer import train
from tests.conftest import SONNETS


def ctrl_c_at(step: int):
    """A report callback that behaves as a second Ctrl-C arriving once `step` is logged."""

    def report(event: str, data: dict) -> None:
        if event == "step" and data["step"] == step:
            raise KeyboardInterrupt

    return report


def tiny_config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(
        data=[str(SONNETS)], tokenizer="char", data_cache=tmp_path / "cache", max_iters=10, eval_interval=3,
        eval_iters=1, log_interval=1, sample_tokens=0, device="cpu",
        model=dict(n_layer=1, n_head=2, n_embd=32, block_size=16),
    )  # fmt: skip


def test_before_the_first_checkpoint_it_says_nothing_was_saved_yet(tmp_path):
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny_config(tmp_path), tmp_path / "out", report=ctrl_c_at(1))
    message = str(stopped.value)
    assert "nothing was saved yet" in message and "--overwrite" in message, message
    assert "none" not in message  # was: 'the last checkpoint is none'
    assert stopped.value.exit_code == 130
    assert not (tmp_path / "out" / "checkpoints").exists() or not any(
        (tmp_path / "out" / "checkpoints").iterdir()
    )


def test_after_a_checkpoint_it_names_it_and_how_to_continue(tmp_path):
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny_config(tmp_path), tmp_path / "out", report=ctrl_c_at(4))
    saved = tmp_path / "out" / "checkpoints" / "step_0000003"
    assert saved.is_dir()
    assert str(stopped.value) == (
        f"interrupted during step 5; the last checkpoint is {saved}; "
        f"continue with: gpt train --resume {tmp_path / 'out'}"
    )


def test_the_message_is_one_plain_line():
    for saved in (None, Path("out/checkpoints/step_0000250")):
        message = cut_short_message(7, saved, Path("out"))
        assert "\n" not in message and message.startswith("interrupted during step 7")
