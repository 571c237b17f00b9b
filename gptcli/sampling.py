"""Sampling token ids from a GPT with its KV cache.

    ids = sample_ids(model, prompt_ids=[eot], max_new_tokens=200, temperature=0.8, top_k=200,
                     generator=torch.Generator().manual_seed(0))

The prompt is prefilled once, then one token per step. When the sequence reaches the model's
context length, the cache is rebuilt from the last `block_size // 2` tokens (a cropped re-prefill),
so generation can run on indefinitely with correct positions.
"""

import torch

from gptcli.errors import GptError


@torch.no_grad()
def sample_ids(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue `prompt_ids`; returns only the new ids. temperature 0 means greedy."""
    if not prompt_ids:
        raise GptError("cannot sample from an empty prompt")
    block_size = model.config.block_size
    device = next(model.parameters()).device
    seq = list(prompt_ids)[-block_size:]
    new: list[int] = []
    cache = model.new_kv_cache(batch_size=1, device=device)
    logits, _ = model(torch.tensor([seq], device=device), kv_cache=cache)  # prefill: (1, T, V)
    for _ in range(max_new_tokens):
        next_id = pick_next(logits[:, -1, :], temperature, top_k, generator)
        new.append(next_id)
        seq.append(next_id)
        if cache.pos >= block_size:  # context full: keep the recent half and prefill it again
            seq = seq[-(block_size // 2 or 1) :]
            cache = model.new_kv_cache(batch_size=1, device=device)
            logits, _ = model(torch.tensor([seq], device=device), kv_cache=cache)
        else:
            logits, _ = model(torch.tensor([[next_id]], device=device), kv_cache=cache)
    return new


def pick_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> int:
    """One id from (1, V) logits: greedy at temperature 0, else top-k filtered sampling."""
    if temperature == 0:
        return int(logits.argmax(dim=-1))
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (1, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
