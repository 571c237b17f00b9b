"""The kinds of training data behind one face, so the Trainer and the Validator need not know which:

- plain text (`gpt train`): TokenData, random windows of block_size + 1 tokens (BatchSampler);
- conversations (`gpt finetune`, `gpt train --pairs`): ChatData, rendered and packed rows with a
  loss mask (RowSampler);
- prompt/completion pairs (`gpt train --arch encdec`): PairData, padded rows of prompts and
  targets (RowSampler).

Every sampler gives the micro-batches of a step with `next_step`, one batch with `next_batch`, and
saves and restores its whole state as one tensor (resume is exact for all).
"""

from collections.abc import Callable

from torch import Tensor

from gptcli.config import TrainConfig
from gptcli.data.sampler import BatchSampler
from gptcli.data.token_cache import TokenData
from gptcli.training.chat_data import ChatData, RowSampler
from gptcli.training.pair_data import PairData

TrainingData = TokenData | ChatData | PairData
RowData = (ChatData, PairData)  # rows of examples (train and val), drawn by a RowSampler
Sampler = BatchSampler | RowSampler


def train_sampler(data: TrainingData, config: TrainConfig) -> Sampler:
    if isinstance(data, RowData):
        return RowSampler(data.train, config.batch_size, seed=config.seed)
    return BatchSampler(data.train, config.model.block_size, config.batch_size, seed=config.seed)


def eval_sampler(data: TrainingData, split: str, config: TrainConfig, seed: int) -> Sampler | None:
    """A fresh sampler of a split's fixed eval batches (the same at every eval), or None for a split
    too small to measure."""
    if isinstance(data, RowData):
        rows = data.train if split == "train" else data.val
        return None if rows is None else RowSampler(rows, config.batch_size, seed=seed)
    tokens = data.train if split == "train" else data.val
    if len(tokens) < config.model.block_size + 1:
        return None
    return BatchSampler(tokens, config.model.block_size, config.batch_size, seed=seed)


def has_val(data: TrainingData, block_size: int) -> bool:
    if isinstance(data, RowData):
        return data.val is not None
    return len(data.val) >= block_size + 1


def split_sizes(data: TrainingData) -> tuple[int, int]:
    """Tokens of each split, as the start of a run reports them: for rows, trained ones."""
    if isinstance(data, RowData):
        return data.train.trained_tokens, 0 if data.val is None else data.val.trained_tokens
    return len(data.train), len(data.val)


def rows_cut(data: TrainingData) -> bool:
    """Whether a batch's rows are cut to its longest example (pairs, unpacked conversations), so a step
    trains at most batch_size x block_size positions rather than exactly that many."""
    return isinstance(data, PairData) or (isinstance(data, ChatData) and not data.train.packed)


def model_inputs(batch: tuple, to: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A sampler's (x, y), (x, y, doc_ids) or (x, y, {name: tensor}) -> x, y and the forward's other
    arguments (doc_ids for packed rows; src and src_mask for pairs), each moved by `to` (to the device)."""
    x, y, extra = (*batch, None)[:3]
    if extra is None:
        extra = {}
    elif not isinstance(extra, dict):
        extra = {"doc_ids": extra}
    return to(x), to(y), {name: to(t) for name, t in extra.items()}
