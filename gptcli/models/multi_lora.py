"""Many LoRA adapters on one frozen base, each row of a batch applying its own (as S-LoRA and vLLM do).

    adapters = [Adapter.of(lora_model_a), Adapter.of(lora_model_b)]   # from add_lora'd models, loaded
    add_multi_lora(model, adapters, names=["a", "b"], vocab_size=65)
    bank = bank_of(model, rows=4, device="cpu")
    bank.index[:4] = torch.tensor([0, 2, 1, 1])   # row i applies adapter index[i]; 0 is the base
    logits, _ = model(idx, cache=cache)           # (4, T) ids: rows 0 and 1 differ only by their adapter

Each Linear that some adapter targets becomes a MultiLoRALinear: for row i,
y = x W^T + b + (x A[k]^T) B[k]^T with k = index[i], A (n+1, r, in) and B (n+1, out, r) stacked
over the adapters: index 0 (the base) all zeros, a smaller rank padded with zeros, the scaling
alpha / r folded into B, and zeros for an adapter that does not target the layer. Every layer reads
the one `index` tensor of the bank, sliced to the batch's rows: a fixed tensor that a compiled step
(or a CUDA graph) reads in place, as it reads the decoder's positions.

Tokens a fine-tune added (ChatML's <|im_start|> ...) have trained rows of their own in each
adapter: an id past the base's vocabulary is embedded from its row's adapter's rows, and the
logits of those ids are that adapter's head rows times x. The base has no such tokens: its rows
give them -inf, so it never picks one.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gptcli.errors import GptError
from gptcli.models.lora import LoRALinear, RowsEmbedding


@dataclass
class Adapter:
    """One adapter's tensors: the update of each layer it targets, the rows of the tokens it added."""

    layers: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # name -> A (r, in), s*B (out, r)
    embedding_rows: Tensor | None = None  # (N, C): the ids first .. first + N - 1
    head_rows: Tensor | None = None  # (N, C)

    @classmethod
    def of(cls, model: nn.Module) -> "Adapter":
        """What add_lora put on a model (its trained values loaded), before fold_new_rows."""
        layers = {
            name: (m.lora_A.detach().float(), m.lora_B.detach().float() * m.scaling)
            for name, m in model.named_modules()
            if isinstance(m, LoRALinear)
        }
        wte, head = model.transformer.wte, model.lm_head
        rows = [t.rows.new.detach().float() if isinstance(t, RowsEmbedding) else None for t in (wte, head)]
        return cls(layers, *rows)


class AdapterBank:
    """The adapters' names (index 0: the base, None) and which one each row of the batch applies."""

    def __init__(self, names: list[str]):
        self.names: list[str | None] = [None, *names]
        self.index = torch.zeros(1, dtype=torch.long)  # (rows,): read in place by every multi layer
        self.slots: list[str | None] = [None]  # index, on the host: what a row applies

    @property
    def active(self) -> bool:
        return len(self.names) > 1

    def fit(self, rows: int, device: torch.device | str) -> None:
        """Room for `rows` rows on the device (before a step is compiled: the layers read the new tensor)."""
        if self.index.numel() < rows or self.index.device != torch.device(device):
            self.index = torch.zeros(max(rows, self.index.numel()), dtype=torch.long, device=device)
            self.slots = [None] * self.index.numel()

    def number(self, name: str | None) -> int:
        if name not in self.names:
            raise GptError(f"no adapter {name!r} here; there are {', '.join(map(str, self.names[1:]))}")
        return self.names.index(name)

    def place(self, slot: int, name: str | None) -> None:
        """Row `slot` of the batch applies adapter `name` (None: the base) from its next step on."""
        if self.active and self.slots[slot] != name:
            self.index[slot] = self.number(name)
            self.slots[slot] = name

    @contextmanager
    def prefilling(self, names: list[str | None], slots: list[list[int]]):
        """Rows 0 .. len(names)-1 apply these adapters inside (a prefill apart from the batch); after, the
        batch's rows are as they were, except that slots[i] (where row i is copied) apply names[i]."""
        if not self.active:
            yield
            return
        held = self.index[: len(names)].clone()
        self.index[: len(names)] = torch.tensor([self.number(n) for n in names], device=self.index.device)
        try:
            yield
        finally:
            self.index[: len(names)] = held
        for name, targets in zip(names, slots):
            for slot in targets:
                self.place(slot, name)


def bank_of(model: nn.Module, rows: int, device: torch.device | str) -> AdapterBank:
    """The bank of a model's multi-adapter layers, with room for `rows` rows; for a plain model an empty
    one (the base alone, nothing reads it)."""
    bank = next((m.bank for m in model.modules() if hasattr(m, "bank")), None) or AdapterBank([])
    bank.fit(rows, device)
    return bank


# ---- the layers


class MultiLoRALinear(nn.Module):
    """A frozen Linear plus, per row, the low-rank update of that row's adapter (see the module docstring)."""

    def __init__(self, base: nn.Module, updates: list[tuple[Tensor, Tensor] | None], bank: AdapterBank):
        super().__init__()
        self.base, self.bank = base, bank
        w = base.weight
        out_features, in_features = w.shape
        r = max((a.size(0) for a, _ in filter(None, updates)), default=1)
        A = torch.zeros(len(updates) + 1, r, in_features)  # index 0: the base, no update
        B = torch.zeros(len(updates) + 1, out_features, r)
        for i, update in enumerate(updates, start=1):
            if update is not None:
                a, b = update  # (r_i, in), (out, r_i): zeros pad the rank to r, changing nothing
                A[i, : a.size(0)], B[i, :, : b.size(1)] = a, b
        self.register_buffer("lora_A", A.to(w.device, w.dtype), persistent=False)  # (n+1, r, in)
        self.register_buffer("lora_B", B.to(w.device, w.dtype), persistent=False)  # (n+1, out, r)

    @property
    def weight(self) -> Tensor:  # what code that reads a Linear's weight (its dtype, its device) sees
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:  # (B, T, in) -> (B, T, out)
        k = self.bank.index[: x.size(0)]  # (B,): each row's adapter
        low = x @ self.lora_A[k].transpose(1, 2)  # (B, T, in) @ (B, in, r) -> (B, T, r)
        return self.base(x) + low @ self.lora_B[k].transpose(1, 2)  # + (B, T, r) @ (B, r, out)


class MultiTokenEmbedding(nn.Module):
    """The base's embedding for ids < first; for the added ids, the rows of each row's adapter."""

    def __init__(self, base: nn.Module, rows: Tensor, first: int, bank: AdapterBank):
        super().__init__()
        self.base, self.first, self.bank = base, first, bank
        w = base.weight
        self.register_buffer("rows", rows.to(w.device, w.dtype), persistent=False)  # (n+1, N, C)

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    def forward(self, ids: Tensor) -> Tensor:  # (B, T) -> (B, T, C)
        added = ids >= self.first  # (B, T)
        x = self.base(torch.where(added, 0, ids))  # (B, T, C)
        rows = self.rows[self.bank.index[: ids.size(0)]]  # (B, N, C): each row's adapter's rows
        at = (ids - self.first).clamp(min=0)[..., None].expand(-1, -1, rows.size(-1))  # (B, T, C)
        return torch.where(added[..., None], rows.gather(1, at), x)


class MultiTokenHead(nn.Module):
    """The base's head for ids < first; the added ids' logits from each row's adapter's rows (the base's:
    -inf)."""

    def __init__(self, base: nn.Module, rows: Tensor, first: int, bank: AdapterBank):
        super().__init__()
        self.base, self.first, self.bank = base, first, bank
        w = base.weight
        self.register_buffer("rows", rows.to(w.device, w.dtype), persistent=False)  # (n+1, N, C)
        never = torch.zeros(rows.shape[:2], dtype=w.dtype, device=w.device)  # (n+1, N)
        never[0] = -math.inf
        self.register_buffer("never", never, persistent=False)

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, first + N)
        k = self.bank.index[: x.size(0)]
        added = x @ self.rows[k].transpose(1, 2) + self.never[k][:, None, :]  # (B, T, C) @ (B, C, N)
        return torch.cat([self.base(x)[..., : self.first], added], dim=-1)


def add_multi_lora(
    model: nn.Module, adapters: list[Adapter], names: list[str], vocab_size: int
) -> AdapterBank:
    """In place: every Linear an adapter targets becomes a MultiLoRALinear, and (vocab_size past the
    base's) the token tables read the added ids' rows per row. -> the bank all of them read."""
    bank = AdapterBank(names)
    for name in sorted({name for adapter in adapters for name in adapter.layers}):
        parent, _, attr = name.rpartition(".")
        updates = [adapter.layers.get(name) for adapter in adapters]
        setattr(model.get_submodule(parent), attr, MultiLoRALinear(model.get_submodule(name), updates, bank))
    first = model.config.vocab_size
    if vocab_size > first:
        wte, head = model.transformer.wte, model.lm_head
        for adapter in adapters:
            if adapter.embedding_rows is None or len(adapter.embedding_rows) != vocab_size - first:
                raise GptError(f"an adapter has no rows for the {vocab_size - first} tokens past the base's")
        model.transformer.wte = MultiTokenEmbedding(
            wte, _stacked([a.embedding_rows for a in adapters]), first, bank
        )
        heads = [a.head_rows if a.head_rows is not None else a.embedding_rows for a in adapters]  # tied
        model.lm_head = MultiTokenHead(head, _stacked(heads), first, bank)
        model.config = model.config.model_copy(update={"vocab_size": vocab_size})  # logits are cut to it
    return bank


def _stacked(rows: list[Tensor]) -> Tensor:
    """(N, C) each -> (n+1, N, C), index 0 (the base) zeros."""
    return torch.stack([torch.zeros_like(rows[0]), *rows])
