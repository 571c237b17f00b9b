"""--max-time bounds the whole command, the final eval, sample and checkpoint included.

The rule, checked after every step:

    stop when  steps_ahead * step + reserve  >=  FILL * (max_time - elapsed - exit)

- elapsed: seconds since the command started (the Trainer's start, set-up included);
- step: the time of one training step (a moving average, the slow first steps included);
- steps_ahead: the steps until the loop can next stop: 1, or under torchrun up to the next log or
  eval step, where the ranks agree on a stop;
- reserve: what the final eval + sample + checkpoint will take. Measured at each eval (seconds per
  eval batch, per sampled token, per checkpoint); before the first, estimated from the step time:
  an eval batch is a forward pass, ~1/3 of a micro-batch's forward + backward; a sampled token is
  one position through the KV cache, which costs ~40 positions of a batch forward (a batch spreads
  each layer's overhead and weight reads over batch x block positions: 25-46x measured for 6-12
  layer models on a 2-core CPU), at least 5 ms; a checkpoint writes ~150 MB/s.
  The reserve is at most half of the time that was left when training began (max_time less the
  set-up): a final eval that would take longer is shrunk instead;
- the process's exit is kept too: EXIT_SECONDS after the last checkpoint, for Python to unload its
  modules (torch's take 0.25-0.4 s on a 2-core VM, after gc.freeze in gptcli/__main__.py);
- FILL: plans fill 90% of the time left, not all of it. Their costs are estimates on a machine
  whose speed varies: of two 45 s runs on held-out text that filled it all, one ended 0.9 s past
  max_time; in the other, timed, the eval batch was 3% and the sampled token 25% slower than
  estimated, and 0.13 s was left when the checkpoint began.

Each eval then takes as many of its eval_iters batches as fit in FILL of the time left (at least one), and
drops its sample if even one batch does not fit beside it, so the command ends within max_time
unless one eval batch and the checkpoint alone do not fit.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MIN_TOKEN_SECONDS = 0.005  # a sampled token is one small forward pass: its overhead dominates
TOKEN_POSITIONS = 40  # a sampled token costs about this many positions of a batch forward (see the module)
EXIT_SECONDS = 0.5  # the process's exit after the summary (see the module)
SAVE_BYTES_PER_SECOND = 150e6  # a checkpoint's weights + optimizer state: written, hashed, fsynced
FILL = 0.9  # the share of the time left that a plan fills (see the module)
STEP_AVERAGE = 0.3  # weight of the newest step in the moving average of the step time


@dataclass
class EvalShape:
    """The sizes an eval's time is estimated from before one was measured."""

    splits: int  # 2 (train and val), or 1 where the val split is too small for a block
    micro_batches: int  # forward + backward passes per training step on this rank
    batch_size: int
    block_size: int
    checkpoint_bytes: int  # weights + optimizer state


class TimeBudget:
    """When to stop for --max-time, and how large an eval fits in the time left (see the module)."""

    def __init__(
        self,
        max_time: float | None,
        start: float,
        shape: EvalShape,
        clock: Callable[[], float] = time.time,
        exit_seconds: float = EXIT_SECONDS,
    ):
        self.max_time, self.start, self.shape, self.clock = max_time, start, shape, clock
        self.exit_seconds = exit_seconds
        self.step_seconds: float | None = None
        self.training_started: float | None = None  # when the first step began: the set-up is over
        self.batch_seconds: float | None = None  # measured per eval batch, once an eval ran
        self.token_seconds: float | None = None
        self.save_seconds: float | None = None

    def record_step(self, seconds: float) -> None:
        if self.training_started is None:
            self.training_started = self.clock() - seconds
        previous = self.step_seconds
        self.step_seconds = seconds if previous is None else previous + STEP_AVERAGE * (seconds - previous)

    def record_eval(self, batches: int, eval_seconds: float, tokens: int, sample_seconds: float) -> None:
        if batches:
            self.batch_seconds = eval_seconds / batches
        if tokens:
            self.token_seconds = sample_seconds / tokens

    def record_save(self, seconds: float) -> None:
        self.save_seconds = seconds

    def left(self) -> float:
        """Seconds until the work must end: max_time less what has passed and the exit."""
        if self.max_time is None:
            return math.inf
        return self.max_time - (self.clock() - self.start) - self.exit_seconds

    def costs(self) -> tuple[float, float, float]:
        """(seconds per eval batch, per sampled token, per checkpoint): measured, else estimated."""
        step = self.step_seconds or 0.0
        batch = self.batch_seconds or step / self.shape.micro_batches / 3
        positions = self.shape.batch_size * self.shape.block_size
        token = self.token_seconds or max(TOKEN_POSITIONS * batch / positions, MIN_TOKEN_SECONDS)
        save = self.save_seconds or self.shape.checkpoint_bytes / SAVE_BYTES_PER_SECOND
        return batch, token, save

    def reserve(self, eval_iters: int, sample_tokens: int) -> float:
        """The time kept for the final eval + sample + checkpoint: at most half of the time that was
        left when training began."""
        batch, token, save = self.costs()
        full = save + sample_tokens * token + eval_iters * self.shape.splits * batch
        if self.max_time is None:
            return full
        set_up = 0.0 if self.training_started is None else max(0.0, self.training_started - self.start)
        return min(full, max(0.0, self.max_time - set_up - self.exit_seconds) / 2)

    def should_stop(self, eval_iters: int, sample_tokens: int, steps_ahead: int = 1) -> bool:
        """Would another `steps_ahead` steps leave too little time for the final work?"""
        if self.max_time is None:
            return False
        ahead = steps_ahead * (self.step_seconds or 0.0)
        return ahead + self.reserve(eval_iters, sample_tokens) >= FILL * self.left()

    def plan_eval(self, eval_iters: int, sample_tokens: int) -> tuple[int, int]:
        """(eval batches per split, sample tokens) that fit in FILL of the time left; all if they do."""
        if self.max_time is None:
            return eval_iters, sample_tokens
        left = FILL * self.left()
        batch, token, save = self.costs()
        per_iter = self.shape.splits * batch
        if save + per_iter + sample_tokens * token > left:
            sample_tokens = 0  # not even one batch fits beside the sample: keep the losses
        fit = (left - save - sample_tokens * token) / per_iter if per_iter > 0 else eval_iters
        return max(1, min(eval_iters, math.floor(fit))), sample_tokens
