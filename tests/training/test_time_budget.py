"""--max-time bounds the whole command (gptcli/training/time_budget.py): the rule on a fake clock,
then a real run whose full final eval would take longer than the whole budget."""

import time

import pytest
import torch

from gptcli.training.time_budget import EXIT_SECONDS, MIN_TOKEN_SECONDS, EvalShape, TimeBudget
from gptcli.training.trainer import train
from tests.training.test_trainer import tiny


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(max_time: float | None, clock: FakeClock, save_bytes: int = 0) -> TimeBudget:
    # two splits, one micro-batch of 4 rows of 8 tokens per step, a checkpoint of save_bytes
    shape = EvalShape(2, 1, 4, 8, save_bytes)
    return TimeBudget(max_time, start=0.0, shape=shape, clock=clock, exit_seconds=0)


def test_without_max_time_nothing_stops_or_shrinks():
    clock = FakeClock()
    b = budget(None, clock)
    b.record_step(1.0)
    clock.now = 1e9
    assert not b.should_stop(eval_iters=200, sample_tokens=100)
    assert b.plan_eval(200, 100) == (200, 100)


def test_stops_when_the_next_step_and_the_estimated_final_eval_would_not_fit():
    clock = FakeClock()
    b = budget(100, clock)
    b.record_step(0.3)  # so an eval batch ~0.1 s: 10 per split, 2 splits = 2 s of final eval
    assert b.reserve(eval_iters=10, sample_tokens=0) == pytest.approx(2.0)
    clock.now = 97.3  # 2.7 s left, 90% of it (FILL) 2.43 > 0.3 + 2
    assert not b.should_stop(10, 0)
    assert b.should_stop(10, 0, steps_ahead=2)  # under torchrun: the next chance to stop is 2 steps away
    clock.now = 97.5  # 2.5 s left: 2.25 < 0.3 + 2
    assert b.should_stop(10, 0)
    assert b.plan_eval(10, 0) == (10, 0)  # the full eval still fits


def test_the_exit_is_kept_out_of_the_time_left():
    clock = FakeClock()
    b = TimeBudget(100, start=0.0, shape=EvalShape(2, 1, 4, 8, 0), clock=clock)  # the default exit time
    b.record_step(0.3)
    clock.now = 97.6  # 2.4 s left, of which EXIT_SECONDS go to Python's exit: 0.9 x 1.9 < 0.3 + 2
    assert b.left() == pytest.approx(2.4 - EXIT_SECONDS)
    assert b.should_stop(10, 0)


def test_a_final_eval_longer_than_half_the_budget_is_shrunk_to_fit():
    clock = FakeClock()
    b = budget(10, clock)
    b.record_step(0.3)
    assert b.reserve(eval_iters=1000, sample_tokens=0) == 5.0  # 200 s of eval, capped at max_time / 2
    clock.now = 4.0  # 6 s left: 5.4 > 0.3 + 5
    assert not b.should_stop(1000, 0)
    clock.now = 4.2
    assert b.should_stop(1000, 0)
    assert b.plan_eval(1000, 0) == (26, 0)  # 90% of the 5.8 s left / 0.2 s per batch of both splits


def test_the_set_up_is_not_counted_in_the_half_kept_for_the_final_eval():
    clock = FakeClock()
    b = budget(60, clock)
    clock.now = 20.0  # the first step (1 s) ends 20 s in: 19 s went to loading data and the model
    b.record_step(1.0)
    assert b.reserve(eval_iters=1000, sample_tokens=0) == pytest.approx((60 - 19) / 2)
    clock.now = 36.0  # 24 s left, 90% of it 21.6: the next step and the 20.5 s reserve fit
    assert not b.should_stop(1000, 0)
    clock.now = 36.5
    assert b.should_stop(1000, 0)


def test_a_sampled_token_is_estimated_from_the_positions_of_a_batch():
    clock = FakeClock()
    big = TimeBudget(60, 0.0, EvalShape(2, 1, 12, 256, 0), clock=clock, exit_seconds=0)
    big.record_step(3.6)  # the default 10.7M model on a 2-core CPU: 12 ms a token measured, 15.6 estimated
    assert big.costs()[1] == pytest.approx(40 * 1.2 / (12 * 256))
    small = TimeBudget(60, 0.0, EvalShape(2, 1, 12, 64, 0), clock=clock, exit_seconds=0)
    small.record_step(0.08)  # cpu-char: its per-layer overhead is the floor
    assert small.costs()[1] == MIN_TOKEN_SECONDS


def test_measured_costs_replace_the_estimates():
    clock = FakeClock()
    b = budget(60, clock, save_bytes=150_000_000)  # estimated: 1 s to save
    b.record_step(3.0)
    # an eval batch: a third of the step; a sampled token: 40 of the batch's 4 x 8 positions
    assert b.costs() == pytest.approx((1.0, 40 / 32, 1.0))
    b.record_eval(batches=40, eval_seconds=2.0, tokens=100, sample_seconds=0.5)
    b.record_save(0.25)
    assert b.costs() == pytest.approx((0.05, 0.005, 0.25))
    assert b.reserve(eval_iters=20, sample_tokens=100) == pytest.approx(0.25 + 0.5 + 2.0)
    b.record_step(1.0)  # a moving average: one fast step does not halve the estimate
    assert 1.0 < b.step_seconds < 3.0


def test_the_sample_goes_when_not_even_one_batch_fits_beside_it():
    clock = FakeClock()
    b = budget(10, clock)
    b.record_eval(
        batches=2, eval_seconds=0.2, tokens=100, sample_seconds=1.0
    )  # 0.1 s a batch, 1 s the sample
    clock.now = 8.4  # 1.6 s left, 90% of it 1.44: the sample and 2 batches of each split
    assert b.plan_eval(50, 100) == (2, 100)
    clock.now = 9.5  # 0.5 s left, 0.45 of it planned: no sample, 2 batches of each split
    assert b.plan_eval(50, 100) == (2, 0)
    clock.now = 11  # past the end: still one batch, so the run has losses
    assert b.plan_eval(50, 100) == (1, 0)


def test_a_run_with_a_slow_final_eval_ends_within_max_time(tmp_path):
    # 2 x 2000 eval batches (several seconds on any machine) would not fit in a 3 s budget
    config = tiny(
        tmp_path, max_iters=10**6, eval_interval=10**6, eval_iters=2000, sample_tokens=50, max_time=3
    )
    torch.nn.Embedding(1, 1, device="meta")  # the first model built imports torch._dynamo (seconds), once
    started = time.time()
    summary = train(config, tmp_path / "run")
    seconds = time.time() - started
    assert summary.stop_reason == "max_time" and summary.step >= 1
    assert seconds < 3 + 1.5, seconds
    assert any(note.startswith("--max-time: the eval at step") for note in summary.notes), summary.notes
    assert summary.val_loss is not None and summary.last_checkpoint is not None
