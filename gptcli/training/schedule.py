"""The learning rate at each step."""

import math

from gptcli.config import TrainConfig


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    decay_iters = config.lr_decay_iters or config.max_iters
    if step < config.warmup_iters:
        return config.lr * (step + 1) / (config.warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - config.warmup_iters) / max(1, decay_iters - config.warmup_iters)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (config.lr - min_lr)
