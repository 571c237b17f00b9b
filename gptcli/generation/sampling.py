"""Choosing the next token from the logits: temperature, top-k, top-p, a seeded draw.

next_ids = pick_next(logits, SampleConfig(temperature=0.8, top_k=200), generator)   # (B, V) -> (B,)

filter_logits says which tokens a draw may pick (and is what the tests check the sets against);
candidates + draw make the draw, over the top-k only when there is one.
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


def candidates(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, V) logits -> what a draw chooses among: probabilities (B, K) over the top-k (sorted, most
    likely first) and their ids (B, K); without a top-k, (B, V) over the whole vocabulary and None.

    The same sets and probabilities as softmax(filter_logits(...)), but a draw over k entries instead
    of V: with GPT-2's 50,257 a draw per row costs milliseconds on a CPU, over 200 almost nothing.
    """
    if top_k is None or top_k >= logits.size(-1):
        return torch.softmax(filter_logits(logits, temperature, None, top_p), dim=-1), None
    values, ids = torch.topk(logits.float() / temperature, top_k, dim=-1)  # (B, K), descending
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # the first always stays (mass before it: 0)
        values = values.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.softmax(values, dim=-1), ids


def draw_noise(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The random numbers of one draw per row of probs: q ~ Exp(1), shaped like probs.

    Exactly what torch.multinomial(probs, 1, generator=generator) draws (it picks argmax(p / q), the
    exponential race), so a seed gives the same tokens as it did with torch.multinomial. Drawn per
    generator, the noise of many jobs is then used in one batched draw."""
    return torch.empty_like(probs).exponential_(1, generator=generator)


NO_TOKEN = -1  # draw()'s id for a row whose probabilities are not finite: the caller fails it
NOT_FINITE = "the next token's probabilities are not finite (a temperature too small, or NaN/inf logits)"


def draw(probs: torch.Tensor, ids: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
    """One draw per row from candidates(...) and draw_noise(...) -> (B,) token ids, NO_TOKEN for a
    row whose probabilities are not finite.

    = torch.multinomial(probs, 1) with that noise, but its check of the probabilities is a host sync
    per call (~70 us on a CPU, a stall on a GPU); here a bad row comes back as NO_TOKEN, which the
    caller sees when it reads the ids (its one sync per step anyway)."""
    picked = (probs / noise).argmax(dim=-1, keepdim=True)  # (B, 1) positions among the candidates
    chosen = (picked if ids is None else ids.gather(-1, picked)).squeeze(-1)
    return torch.where(torch.isfinite(probs).all(dim=-1), chosen, NO_TOKEN)


def pick_next(logits: torch.Tensor, config: SampleConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax at temperature 0, else a filtered, seeded draw."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs, ids = candidates(logits, config.temperature, config.top_k, config.top_p)
    return draw(probs, ids, draw_noise(probs, generator))
