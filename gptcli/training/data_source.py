"""The two kinds of training data behind one face, so the Trainer and the Validator need not know which:

- plain text (`gpt train`): TokenData, random windows of block_size + 1 tokens (BatchSampler);
- conversations (`gpt finetune`): ChatData, rendered and packed rows with a loss mask (RowSampler).

Both samplers give the micro-batches of a step with `next_step`, one batch with `next_batch`, and
save and restore their whole state as one tensor (resume is exact for both).
"""

from collections.abc import Callable

from torch import Tensor

from gptcli.config import TrainConfig
from gptcli.data.sampler import BatchSampler
from gptcli.data.token_cache import TokenData
from gptcli.training.chat_data import ChatData, RowSampler

TrainingData = TokenData | ChatData
Sampler = BatchSampler | RowSampler


def train_sampler(data: TrainingData, config: TrainConfig) -> Sampler:
    if isinstance(data, ChatData):
        return RowSampler(data.train, config.batch_size, seed=config.seed)
    return BatchSampler(data.train, config.model.block_size, config.batch_size, seed=config.seed)


def eval_sampler(data: TrainingData, split: str, config: TrainConfig, seed: int) -> Sampler | None:
    """A fresh sampler of a split's fixed eval batches (the same at every eval), or None for a split
    too small to measure."""
    if isinstance(data, ChatData):
        rows = data.train if split == "train" else data.val
        return None if rows is None else RowSampler(rows, config.batch_size, seed=seed)
    tokens = data.train if split == "train" else data.val
    if len(tokens) < config.model.block_size + 1:
        return None
    return BatchSampler(tokens, config.model.block_size, config.batch_size, seed=seed)


def has_val(data: TrainingData, block_size: int) -> bool:
    if isinstance(data, ChatData):
        return data.val is not None
    return len(data.val) >= block_size + 1


def split_sizes(data: TrainingData) -> tuple[int, int]:
    """Tokens of each split, as the start of a run reports them: for conversations, trained ones."""
    if isinstance(data, ChatData):
        return data.train.trained_tokens, 0 if data.val is None else data.val.trained_tokens
    return len(data.train), len(data.val)


def model_inputs(batch: tuple, to: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A sampler's (x, y) or (x, y, doc_ids) -> x, y and the forward's other arguments (doc_ids for
    packed rows), each moved by `to` (to the device)."""
    x, y, doc_ids = (*batch, None)[:3]
    return to(x), to(y), {} if doc_ids is None else {"doc_ids": to(doc_ids)}
