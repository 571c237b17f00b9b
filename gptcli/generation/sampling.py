"""Choosing the next token from the logits: temperature, top-k, top-p, a seeded draw.

next_ids = pick_next(logits, SampleConfig(temperature=0.8, top_k=200), generator)   # (B, V) -> (B,)
"""

import torch

from gptcli.config import SampleConfig


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """(B, V) logits -> (B, V) logits scaled by 1/temperature, -inf outside the top-k and top-p sets.

    top-k keeps exactly k tokens per row (torch.topk decides among ties at the cut); top-p then
    keeps the smallest set of the most likely tokens whose probability reaches p (at least one).
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, torch.topk(logits, top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
        drop_sorted = mass_before >= top_p  # the first token always stays (mass before it is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_next(logits: torch.Tensor, config: SampleConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax at temperature 0, else a filtered, seeded draw."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, config.temperature, config.top_k, config.top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
