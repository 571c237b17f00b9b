"""What an encoder-decoder trains on: prompt/completion pairs read, split, encoded, batched with padding.

    data = load_pair_data(config, tokenizer, notes)             # PairData: train and val rows
    sampler = RowSampler(data.train, batch_size=8, seed=1337)   # shuffled epochs, as for chat rows
    x, y, inputs = sampler.next_batch()   # x, y (B, T); inputs {"src": (B, S), "src_mask": (B, S)}

Each pair is encoded once (gptcli.data.pairs.encode_pair): the prompt's ids for the encoder, and
target = [eot] + completion + [eot] for the decoder, which reads x = target[:-1] and learns
y = target[1:]. A batch pads each side to its longest member, after the real tokens: prompts with
src_mask False there (never attended to), targets with y = -1 (no loss), so each row computes
what its pair gives alone. Pairs are never packed: one pair a row.

A pair whose prompt is longer than block_size, or whose target is longer than block_size + 1 (the
decoder reads block_size of it), does not fit the context: it is dropped and counted, as an
over-long conversation is. So is a pair with an empty prompt (the encoder would attend to nothing).
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from gptcli.config import TrainConfig
from gptcli.data.pairs import Pair, encode_pair, read_pairs, require_pair_sources, start_id
from gptcli.errors import GptError
from gptcli.models.encdec import pad_prompts
from gptcli.tokenizers.base import Tokenizer
from gptcli.training.chat_data import split_conversations

PAIRS_NEEDED = "an encoder-decoder trains on prompt/completion pairs"


@dataclass
class PairRows:
    """Encoded pairs, one a row: the prompts' ids and the targets' ([eot] + completion + [eot])."""

    src: list[np.ndarray]
    target: list[np.ndarray]
    pad_id: int

    def __len__(self) -> int:
        return len(self.src)

    @property
    def trained_tokens(self) -> int:
        return sum(len(t) - 1 for t in self.target)

    def batch(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x, y (B, T) and the encoder's inputs: src (B, S) and src_mask (B, S), each cut to the batch's
        longest prompt and target."""
        targets = [self.target[i] for i in index]
        src, src_mask = pad_prompts([self.src[i] for i in index], self.pad_id)  # (B, S) each
        B, T = len(index), max(len(t) for t in targets) - 1
        x = torch.full((B, T), self.pad_id, dtype=torch.long)
        y = torch.full((B, T), -1, dtype=torch.long)
        for row, t in enumerate(targets):
            x[row, : len(t) - 1] = torch.from_numpy(t[:-1])
            y[row, : len(t) - 1] = torch.from_numpy(t[1:])
        return x, y, {"src": src, "src_mask": src_mask}


@dataclass
class PairData:
    train: PairRows
    val: PairRows | None  # None: too few pairs to hold any out
    held_out: list[Pair]  # the val pairs that fit, for the samples of each eval
    notes: list[str] = field(default_factory=list)


def read_training_pairs(config: TrainConfig, notes: list[str]) -> list[Pair]:
    """config.data's pairs; plain text (a text file, or records of "text" alone) is refused."""
    require_pair_sources(config.data, config.split, PAIRS_NEEDED)
    try:
        pairs, report = read_pairs(config.data, "auto", skip_bad=config.skip_bad_records, split=config.split)
    except GptError as e:
        raise GptError(f"{PAIRS_NEEDED}: {e}") from None
    notes.extend(report)
    return pairs


def pair_texts(config: TrainConfig) -> list[str]:
    """Every prompt's and completion's text: what a char tokenizer for pairs learns its characters from."""
    return [text for pair in read_training_pairs(config, []) for text in (pair.prompt, pair.completion)]


def load_pair_data(config: TrainConfig, tokenizer: Tokenizer, notes: list[str]) -> PairData:
    """Read config.data's pairs, hold out config.val_fraction of them (at least one when there are
    two or more, as for conversations), encode each split and drop what does not fit the context."""
    start_id(tokenizer)  # the tokenizer has <|endoftext|>, which starts and ends every target
    pairs = read_training_pairs(config, notes)
    train, val = split_conversations(pairs, config.val_fraction, config.seed)
    block = config.model.block_size
    pad_id = tokenizer.eot_id or 0

    def rows(split: list[Pair], name: str) -> tuple[PairRows, list[Pair]]:
        kept, src, target, empty = [], [], [], 0
        for pair in split:
            try:
                s, t = encode_pair(tokenizer, pair)
            except GptError as e:  # e.g. a character a char tokenizer does not know: say which pair
                raise GptError(f"the {name} pair with prompt {pair.prompt[:40]!r}: {e}") from None
            empty += not s
            if 1 <= len(s) <= block and len(t) <= block + 1:
                kept.append(pair)
                src.append(np.array(s, dtype=np.int64))
                target.append(np.array(t, dtype=np.int64))
        if too_long := len(split) - len(kept) - empty:
            notes.append(
                f"{too_long} of {len(split)} {name} pairs are longer than the context (prompts of "
                f"{block} tokens, completions of {block - 1}) and were dropped"
            )
        if empty:
            notes.append(f"{empty} of {len(split)} {name} pairs have an empty prompt and were dropped")
        return PairRows(src, target, pad_id), kept

    train_rows, _ = rows(train, "training")
    if len(train_rows) == 0:
        raise GptError(
            f"every training pair is longer than the context (block_size {block}: prompts of up to {block} "
            f"tokens, completions of up to {block - 1}): use a larger --block-size, or shorter pairs"
        )
    val_rows, held_out = rows(val, "held-out") if val else (None, [])
    if val_rows is not None and len(val_rows) == 0:
        val_rows = None
    return PairData(train_rows, val_rows, held_out, notes)
