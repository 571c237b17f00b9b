"""Evaluating a model on a corpus or a text: mean loss, perplexity, and bits per byte.

    ids = document_ids(tokenizer, CorpusReader(find_sources(["held_out.jsonl"])))
    result = evaluate_ids(model, tokenizer, ids)
    result.loss, result.perplexity, result.bits_per_byte
    evaluate_text(model, tokenizer, "one text")  # its ids alone, no end-of-text id after them

A corpus's ids are those training sees: each document's `encode_ordinary`, followed by the
tokenizer's end-of-text id when it has one. The ids are cut into windows of block_size + 1 tokens
that overlap by one, so every token after the first is predicted exactly once (each window starts
with a fresh context). Bits per byte divide the total loss by the UTF-8 bytes of the predicted
tokens (special tokens count none: they are no text), which makes models with different tokenizers
(characters, BPE of any size) comparable on the same documents.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
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


ENCODE_GROUP_CHARS = 1 << 22  # text encoded in one encode_batch call (tiktoken spreads it on threads)


def document_ids(
    tokenizer: Tokenizer, pieces: Iterable[tuple[str, bool]], max_ids: int | None = None
) -> np.ndarray:
    """(text piece, ends_document) -> the ids training sees: each document's ids, then end-of-text.

    Stops reading once `max_ids` ids are there (the result is cut to that many).
    """
    arrays: list[np.ndarray] = []
    n_ids = 0
    group: list[str] = []
    ends: list[bool] = []
    size = 0

    def encode_group() -> None:
        nonlocal n_ids
        for ids, end in zip(tokenizer.encode_batch(group), ends):
            if end and tokenizer.eot_id is not None:
                ids = [*ids, tokenizer.eot_id]
            arrays.append(np.asarray(ids, dtype=np.int64))
            n_ids += len(ids)
        group.clear()
        ends.clear()

    for text, ends_document in pieces:
        group.append(text)
        ends.append(ends_document)
        size += len(text)
        if size >= ENCODE_GROUP_CHARS:
            encode_group()
            size = 0
            if max_ids is not None and n_ids >= max_ids:
                break
    if group:
        encode_group()
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return ids if max_ids is None else ids[:max_ids]


def evaluate_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    text: str,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """The figures on one text's ids (`encode_ordinary`, no end-of-text id), the first max_tokens + 1."""
    ids = np.asarray(tokenizer.encode_ordinary(text), dtype=np.int64)
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    return evaluate_ids(model, tokenizer, ids, batch_size, progress)


@torch.no_grad()
def evaluate_ids(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    ids: np.ndarray,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> EvalResult:
    """Loss, perplexity and bits per byte of the model predicting ids[1:], window by window."""
    if len(ids) < 2:
        raise GptError(f"the text has {len(ids)} token(s): at least 2 are needed to predict one")
    T = model.config.block_size
    device = next(model.parameters()).device
    starts = list(range(0, len(ids) - 1, T))  # window i predicts ids[start + 1 : start + T + 1]
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for b in range(0, len(starts), batch_size):
        windows = [torch.from_numpy(ids[s : s + T + 1]) for s in starts[b : b + batch_size]]
        width = max(len(w) for w in windows)
        x = torch.zeros(len(windows), width - 1, dtype=torch.long)
        y = torch.full((len(windows), width - 1), -1, dtype=torch.long)  # -1: padding, not scored
        for row, w in enumerate(windows):
            x[row, : len(w) - 1] = w[:-1]
            y[row, : len(w) - 1] = w[1:]
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
    n_bytes = int(_text_bytes_per_id(tokenizer)[ids[1:]].sum())
    loss = total_nll / total_tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total_nll / math.log(2) / max(n_bytes, 1),
        tokens=total_tokens,
        bytes=n_bytes,
    )


def _text_bytes_per_id(tokenizer: Tokenizer) -> np.ndarray:
    """The UTF-8 bytes each id stands for, indexed by id; special tokens 0."""
    lengths = np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)
    lengths[list(tokenizer.id_to_special)] = 0
    return lengths
