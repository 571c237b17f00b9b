"""The learning-rate schedules: cosine as it always was, warmup-stable-decay at its corners, other peaks."""

import math

import pytest

from gptcli.config import TrainConfig
from gptcli.training.schedule import learning_rate


def config(**overrides) -> TrainConfig:
    values = dict(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    values.update(overrides)
    return TrainConfig(**values)


def cosine_as_it_was(step: int, config: TrainConfig) -> float:
    """The cosine schedule before --schedule existed, kept as the reference for its exact numbers."""
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    decay_iters = config.lr_decay_iters or config.max_iters
    if step < config.warmup_iters:
        return config.lr * (step + 1) / (config.warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - config.warmup_iters) / max(1, decay_iters - config.warmup_iters)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (config.lr - min_lr)


@pytest.mark.parametrize(
    "overrides", [{}, {"min_lr": None}, {"lr": 6e-4, "lr_decay_iters": 80}, {"warmup_iters": 0, "lr": 3e-3}]
)
def test_cosine_is_the_default_and_its_numbers_are_unchanged(overrides):
    c = config(**overrides)
    assert c.schedule == "cosine"
    assert [learning_rate(s, c) for s in range(120)] == [cosine_as_it_was(s, c) for s in range(120)]
    assert [learning_rate(s, c, c.lr) for s in range(120)] == [cosine_as_it_was(s, c) for s in range(120)]


def test_wsd_warms_up_holds_the_peak_then_decays_linearly_to_min_lr():
    c = config(schedule="wsd")  # decay over the last 20 of 100 steps
    lrs = [learning_rate(s, c) for s in range(120)]
    assert lrs[:10] == [learning_rate(s, config()) for s in range(10)]  # the same warmup as cosine
    assert lrs[10:80] == [1e-3] * 70  # stable: exactly the peak, up to the first decay step
    steps = [a - b for a, b in zip(lrs[80:100], lrs[81:100])]
    assert all(d == pytest.approx(9e-4 / 20) for d in steps)  # a straight line ...
    assert lrs[99] == pytest.approx(1e-4 + 9e-4 / 20)  # ... that reaches min_lr at max_iters
    assert lrs[100:] == [1e-4] * 20


def test_wsd_decay_fraction_and_lr_decay_iters():
    lrs = [
        learning_rate(s, config(schedule="wsd", decay_fraction=0.5, lr_decay_iters=60)) for s in range(100)
    ]
    assert lrs[29] == 1e-3 and lrs[30] == 1e-3 and lrs[31] < 1e-3  # decays over steps 30..59
    assert lrs[60:] == [1e-4] * 40
    # the whole run decaying: straight down from the end of the warmup
    whole = [learning_rate(s, config(schedule="wsd", decay_fraction=1.0)) for s in range(100)]
    assert whole[10] == 1e-3 and whole[11] < 1e-3 and whole[99] == pytest.approx(1e-4 + 9e-4 / 90)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
@pytest.mark.parametrize("min_lr", [1e-4, None])
def test_every_peak_follows_the_same_curve(schedule, min_lr):
    """Muon's groups (peak muon_lr) are scaled by the same factor as AdamW's (peak lr) at every step."""
    c = config(schedule=schedule, min_lr=min_lr)
    for step in range(120):
        assert learning_rate(step, c, 0.02) / 0.02 == pytest.approx(learning_rate(step, c) / c.lr)
