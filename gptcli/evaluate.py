"""Evaluating a model on a text: mean loss, perplexity, and bits per byte.

    result = evaluate_text(model, tokenizer, text)
    result.loss, result.perplexity, result.bits_per_byte

The text's ids are cut into windows of block_size + 1 tokens that overlap by one, so every token
after the first is predicted exactly once (each window starts with a fresh context). Bits per byte
divide the total loss by the UTF-8 bytes of the predicted text, which makes models with different
tokenizers (characters, BPE of any size) comparable on the same file.
"""

import math
from dataclasses import dataclass

import torch

from gptcli.errors import GptError
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.bpe_train import Progress


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per predicted token, in nats
    perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the predicted text

    def to_json(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in vars(self).items()}


@torch.no_grad()
def evaluate_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    text: str,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    ids = tokenizer.encode_ordinary(text)
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    if len(ids) < 2:
        raise GptError(f"the text has {len(ids)} token(s): at least 2 are needed to predict one")
    T = model.config.block_size
    device = next(model.parameters()).device
    starts = list(range(0, len(ids) - 1, T))  # window i predicts ids[start + 1 : start + T + 1]
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for b in range(0, len(starts), batch_size):
        windows = [ids[s : s + T + 1] for s in starts[b : b + batch_size]]
        width = max(len(w) for w in windows)
        x = torch.zeros(len(windows), width - 1, dtype=torch.long)
        y = torch.full((len(windows), width - 1), -1, dtype=torch.long)  # -1: padding, not scored
        for row, w in enumerate(windows):
            x[row, : len(w) - 1] = torch.tensor(w[:-1])
            y[row, : len(w) - 1] = torch.tensor(w[1:])
        logits, _ = model(x.to(device))
        nll = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            y.to(device).reshape(-1),
            ignore_index=-1,
            reduction="sum",
        )
        total_nll += nll.item()
        total_tokens += int((y != -1).sum())
        if progress:
            progress("evaluating", min(b + batch_size, len(starts)), len(starts))
    n_bytes = len(tokenizer.decode_bytes(ids[1:]))
    loss = total_nll / total_tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total_nll / math.log(2) / max(n_bytes, 1),
        tokens=total_tokens,
        bytes=n_bytes,
    )
