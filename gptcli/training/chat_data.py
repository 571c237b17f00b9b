"""What a fine-tune trains on: conversations read, split, rendered with their loss mask, packed into rows.

    data = load_chat_data(config, tokenizer, template, notes)   # ChatData: train and val rows
    sampler = RowSampler(data.train, batch_size=8, seed=1337)   # shuffled epochs of rows
    x, y, doc_ids = sampler.next_batch()                        # (B, T) each

Each conversation is rendered once by the chat template (gptcli.chat.template.render): ids, and which
of them are trained (by default the assistant's replies and their end tokens). A conversation of L
ids gives L - 1 positions: the input x[i] = ids[i] and the target y[i] = ids[i + 1], or -1 where
ids[i + 1] is not trained (the model ignores targets of -1).

Packing (best-fit decreasing): the longest conversations are placed first, each in the row whose
free space fits it most tightly, so rows are nearly full and few. doc_ids says which conversation
each position belongs to (0, 1, ... along a row; the padding after them one more), and the model
keeps attention inside each and restarts positions in each (GPT.forward(doc_ids=...)): a packed
row trains exactly as its conversations one at a time. Without packing, each row holds one
conversation and padding, and doc_ids is not needed (the padding comes after it).
A conversation longer than block_size + 1 ids fits no row: it is dropped and counted.
"""

import bisect
import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from gptcli.chat.formats import iter_conversations, read_conversations
from gptcli.chat.template import ChatTemplate, render
from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.tokenizers.base import Tokenizer

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # x, y, doc_ids: (B, T) each


class Examples(Protocol):
    """What RowSampler draws from: chat Rows, or an encoder-decoder's PairRows (training.pair_data),
    whose batches' third element is the forward's other inputs (doc_ids, or src and src_mask)."""

    def __len__(self) -> int: ...

    def batch(self, index: list[int]) -> tuple: ...


@dataclass
class Rows:
    """Training rows of block_size positions each."""

    x: np.ndarray  # (N, T) input ids
    y: np.ndarray  # (N, T) target ids, -1 where nothing is trained
    doc_ids: np.ndarray  # (N, T) the conversation each position belongs to, within its row
    packed: bool

    def __len__(self) -> int:
        return len(self.x)

    @property
    def trained_tokens(self) -> int:
        return int((self.y >= 0).sum())

    def batch(self, index: list[int]) -> Batch:
        x, y = torch.from_numpy(self.x[index]), torch.from_numpy(self.y[index])
        if self.packed:
            return x, y, torch.from_numpy(self.doc_ids[index])
        # one conversation a row, then padding: the columns of padding every row has are cut (no
        # loss, no attention lost: the padding comes after each conversation)
        width = max(1, int((self.doc_ids[index] == 0).sum(axis=1).max()))
        return x[:, :width].contiguous(), y[:, :width].contiguous(), None


@dataclass
class ChatData:
    train: Rows
    val: Rows | None  # None: too few conversations to hold any out
    held_out: list[list[dict]]  # the val conversations, for the samples of each eval
    notes: list[str] = field(default_factory=list)


def load_chat_data(
    config: TrainConfig, tokenizer: Tokenizer, template: ChatTemplate, notes: list[str]
) -> ChatData:
    """Read config.data's conversations, hold out config.val_fraction of them (at least one when
    there are two or more), render and pack each split."""
    chat = config.chat
    conversations, report = read_conversations(
        config.data, chat.format, skip_bad=config.skip_bad_records, split=config.split
    )
    notes.extend(report)
    if not conversations:
        raise GptError("no conversations to train on in " + ", ".join(config.data))
    train, val = split_conversations(conversations, config.val_fraction, config.seed)
    block = config.model.block_size

    def render_one(conversation: list[dict]):
        try:
            return render(conversation, template, tokenizer, train_on_prompt=chat.train_on_prompt)
        except GptError as e:  # e.g. a character a char base does not know: say which record
            raise GptError(f"{place_of(conversation, config)}: {e}") from None

    def rows(split: list[list[dict]], name: str) -> Rows:
        rendered = [render_one(c) for c in split]
        packed, dropped = pack(
            [(r.ids, r.trained) for r in rendered], block, chat.pack, tokenizer.eot_id or 0
        )
        if dropped:
            notes.append(
                f"{dropped} of {len(split)} {name} conversations are longer than the context "
                f"({block + 1} tokens) and were dropped"
            )
        return packed

    train_rows = rows(train, "training")
    if len(train_rows) == 0:
        raise GptError(
            f"every training conversation is longer than the context ({block + 1} tokens): "
            "use a base with a longer context, or shorter conversations"
        )
    val_rows = rows(val, "held-out") if val else None
    if val_rows is not None and len(val_rows) == 0:
        val_rows = None
    return ChatData(train_rows, val_rows, val, notes)


def conversation_texts(config: TrainConfig) -> list[str]:
    """The text config.data's conversations are rendered into, special tokens apart: what a char
    tokenizer for a chat model trained from scratch learns its characters from (the template's
    own text, its role names say, included)."""
    template = ChatTemplate.from_json(config.chat.template)
    collector = _TextCollector({name: i for i, name in enumerate(template.special_tokens)})
    for _, conversation in iter_conversations(
        config.data, config.chat.format, config.skip_bad_records, config.split
    ):
        render(conversation, template, collector)
    return collector.texts


class _TextCollector(Tokenizer):
    """Keeps the text a renderer asks it to encode (and gives no ids)."""

    kind = "text"
    n_ordinary = 0

    def __init__(self, special_tokens: dict[str, int]):
        super().__init__(special_tokens)
        self.texts: list[str] = []

    def encode_ordinary(self, text: str) -> list[int]:
        self.texts.append(text)
        return []

    def token_bytes(self, token_id: int) -> bytes:
        return b""

    def to_file(self):
        raise NotImplementedError


def place_of(conversation: list[dict], config: TrainConfig) -> str:
    """Where a conversation of config.data was read (file and line or record), found by reading again:
    only for an error message."""
    for place, messages in iter_conversations(config.data, config.chat.format, True, config.split):
        if messages == conversation:
            return place
    return "a conversation"


def split_conversations(
    conversations: list[list[dict]], val_fraction: float, seed: int
) -> tuple[list[list[dict]], list[list[dict]]]:
    """A seeded choice of round(val_fraction * n) conversations held out (at least one when
    val_fraction > 0 and n >= 2), both splits in file order."""
    n = len(conversations)
    n_val = min(n - 1, max(1, round(val_fraction * n))) if val_fraction > 0 and n >= 2 else 0
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [c for i, c in enumerate(conversations) if i not in held]
    return train, [c for i, c in enumerate(conversations) if i in held]


def pack(
    examples: list[tuple[list[int], list[int]]], block_size: int, packed: bool, pad_id: int
) -> tuple[Rows, int]:
    """(ids, trained) per conversation -> rows of block_size positions, and how many were dropped
    (longer than block_size + 1 ids). packed=False: one conversation per row."""
    fits = [e for e in examples if 2 <= len(e[0]) <= block_size + 1]
    dropped = sum(1 for e in examples if len(e[0]) > block_size + 1)
    bins = (
        best_fit([len(ids) - 1 for ids, _ in fits], block_size) if packed else [[i] for i in range(len(fits))]
    )
    x = np.full((len(bins), block_size), pad_id, dtype=np.int64)
    y = np.full((len(bins), block_size), -1, dtype=np.int64)
    doc_ids = np.zeros((len(bins), block_size), dtype=np.int64)
    for row, members in enumerate(bins):
        at = 0
        for doc, i in enumerate(members):
            ids, trained = fits[i]
            n = len(ids) - 1
            x[row, at : at + n] = ids[:-1]
            y[row, at : at + n] = [t if keep else -1 for t, keep in zip(ids[1:], trained[1:])]
            doc_ids[row, at : at + n] = doc
            at += n
        doc_ids[row, at:] = len(members)  # the padding: a document of its own
    return Rows(x, y, doc_ids, packed), dropped


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` grouped into bins of at most `capacity`, longest
    first, each into the fullest bin it still fits (a sorted list of (free space, bin))."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(free, (lengths[i], -1))  # the tightest bin with room
        if at == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - lengths[i], len(bins) - 1))
        else:
            space, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (space - lengths[i], b))
    return [sorted(b) for b in bins]


def epoch_steps(rows: Rows, epochs: float, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps for `epochs` passes over the rows (at least one)."""
    return max(1, math.ceil(epochs * len(rows) / (batch_size * grad_accum)))


class RowSampler:
    """Batches of rows, each epoch in a new seeded order: all rows once per epoch.

    Its state is (epoch, index into the epoch's order): `state()` / `load_state()` resume the
    exact batch sequence (saved with training checkpoints, as BatchSampler's generator is).
    """

    def __init__(self, rows: Examples, batch_size: int, seed: int):
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.epoch, self.index = 0, 0
        self.order = self._order(0)

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.rows), generator=generator).tolist()

    def _take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.index == len(self.order):  # the next epoch, in its own order
                self.epoch, self.index = self.epoch + 1, 0
                self.order = self._order(self.epoch)
            step = min(n - len(out), len(self.order) - self.index)
            out.extend(self.order[self.index : self.index + step])
            self.index += step
        return out

    def next_batch(self) -> Batch:
        return self.rows.batch(self._take(self.batch_size))

    def next_step(self, grad_accum: int, rank: int = 0, world_size: int = 1) -> list[Batch]:
        """This rank's micro-batches of one optimizer step: the step's rows are drawn at once, the
        same on every rank, and rank r takes the r-th share (as BatchSampler.next_step)."""
        B = self.batch_size
        index = self._take(grad_accum * B)
        per_rank = grad_accum // world_size
        return [
            self.rows.batch(index[m * B : (m + 1) * B]) for m in range(rank * per_rank, (rank + 1) * per_rank)
        ]

    def state(self) -> torch.Tensor:
        return torch.tensor([self.epoch, self.index], dtype=torch.int64)

    def load_state(self, state: torch.Tensor) -> None:
        self.epoch, self.index = (int(v) for v in state.tolist())
        self.order = self._order(self.epoch)
