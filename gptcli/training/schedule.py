"""The learning rate at each step: linear warmup, then cosine decay (the default) or warmup-stable-decay.

Both warm up linearly over warmup_iters steps and reach min_lr (default: the peak / 10) at
decay_iters (lr_decay_iters, default max_iters), where they stay:

    cosine  warmup, then a cosine from the peak down to min_lr over all the remaining steps
    wsd     warmup, the peak held (stable), then a linear decay to min_lr over the last
            decay_fraction of decay_iters (WSD: a run can be continued from any stable step)

Each optimizer param group has its own peak (--lr for AdamW, --muon-lr for Muon) and follows the
same curve scaled to it, min_lr included: every group's lr is its peak times the same factor.
"""

import math

from gptcli.config import TrainConfig


def learning_rate(step: int, config: TrainConfig, peak: float | None = None) -> float:
    """The learning rate of `step` (0-based) for a param group whose peak is `peak` (default: config.lr)."""
    lr = config.lr if peak is None else peak
    # min_lr scaled to this peak; for the groups at config.lr the ratio is exactly 1.0 (same numbers)
    min_lr = lr / 10 if config.min_lr is None else config.min_lr * (lr / config.lr)
    decay_iters = config.lr_decay_iters or config.max_iters
    if step < config.warmup_iters:
        return lr * (step + 1) / (config.warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    if config.schedule == "wsd":
        start = max(config.warmup_iters, decay_iters - round(config.decay_fraction * decay_iters))
        if step < start:
            return lr
        return min_lr + (decay_iters - step) / (decay_iters - start) * (lr - min_lr)
    progress = (step - config.warmup_iters) / max(1, decay_iters - config.warmup_iters)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)
