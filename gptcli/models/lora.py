"""LoRA: small trained adapters beside a frozen model (Hu et al. 2021), as litgpt and PEFT do it.

    add_lora(model, LoraConfig(r=8, alpha=16, targets=["attn"]), new_rows=(50257, 50259))
    adapter_weights(model)          # {name: tensor}: what an adapter checkpoint holds
    merge_lora(model)               # a plain model again, the adapters added into its weights

A targeted Linear y = x W^T + b becomes y = x W^T + b + (alpha / r) * dropout(x) A^T B^T, with A
(r, in) and B (out, r): A starts random (Kaiming-uniform, as PEFT), B at zero, so a new adapter
changes nothing. Every weight of the model is frozen; only A and B are trained, so the optimizer
(built from the parameters that require grad) holds state for them alone.

Targets name our layers: "attn" the attention's input projection (c_attn: query, key and value),
"proj" its output projection (attn.c_proj), "mlp" both MLP layers (mlp.c_fc, mlp.c_proj).

Tokens a fine-tune added to the vocabulary (a chat template's <|im_start|> ...) have no trained
rows in the base: their rows of the embedding and the head are trained too (`new_rows`), as a
small Parameter of their own while the rest of the table stays frozen (TokenRows). For generation
`fold_new_rows` writes them into the table once: a plain table, nothing assembled per token.
"""

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptcli.config import LoraConfig
from gptcli.errors import GptError
from gptcli.models.base import LanguageModel
from gptcli.models.resize import token_layers

TARGETS = {"attn": ("attn.c_attn",), "proj": ("attn.c_proj",), "mlp": ("mlp.c_fc", "mlp.c_proj")}


class FrozenLinear(nn.Module):
    """A frozen nn.Linear (`base`), possibly held in bf16: its input is cast to the weight's dtype and
    its output back, so the rest of the model computes as it did."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base

    @property
    def weight(self) -> Tensor:  # what code that reads a Linear's weight (its dtype, its device) sees
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        w = self.base.weight
        return self.base(x if x.dtype == w.dtype else x.to(w.dtype)).to(x.dtype)


class LoRALinear(FrozenLinear):
    """A frozen nn.Linear plus its low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base)
        self.r, self.scaling = r, alpha / r
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, in) -> (B, T, out)
        update = self.dropout(x) @ self.lora_A.to(x.dtype).T @ self.lora_B.to(x.dtype).T  # (B, T, out)
        return super().forward(x) + update * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with the update added into its weight (W + scaling * B A), in fp32 math."""
        base = self.base
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
            base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
        return base


class TokenRows(nn.Module):
    """A frozen token table (embedding or head, (P, C)), possibly held in bf16, whose rows
    first..last-1 (the tokens a fine-tune added) are trained as a small fp32 Parameter of their own."""

    def __init__(self, weight: Tensor, first: int, last: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.first, self.last = first, last
        frozen = weight.detach() if dtype is None else weight.detach().to(dtype)
        self.frozen = nn.Parameter(frozen, requires_grad=False)  # (P, C); its rows first..last-1 unused
        new = weight.detach()[first:last].float().clone()  # (last - first, C)
        self.new = nn.Parameter(new) if last > first else None

    def table(self) -> Tensor:
        """The whole (P, C) table in fp32, trained rows in place (a copy: for folding, not per step)."""
        frozen = self.frozen.float()
        return (
            frozen if self.new is None else torch.cat([frozen[: self.first], self.new, frozen[self.last :]])
        )


class RowsEmbedding(nn.Module):
    """The token embedding over TokenRows: the frozen table's rows, and the trained ones for new ids.
    No table is assembled, so a step holds no copy of it and no gradient of it."""

    def __init__(self, rows: TokenRows):
        super().__init__()
        self.rows = rows

    @property
    def weight(self) -> Tensor:
        return self.rows.table()

    def forward(self, idx: Tensor) -> Tensor:  # (B, T) -> (B, T, C)
        rows = self.rows
        x = F.embedding(idx, rows.frozen).float()
        if rows.new is None:
            return x
        added = (idx >= rows.first) & (idx < rows.last)
        picked = F.embedding((idx - rows.first).clamp(0, rows.last - rows.first - 1), rows.new)
        return torch.where(added.unsqueeze(-1), picked, x)


class RowsHead(RowsEmbedding):
    """The output head over TokenRows: the frozen rows' logits, and the trained rows' written over theirs."""

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, P)
        rows = self.rows
        logits = F.linear(x.to(rows.frozen.dtype), rows.frozen).to(x.dtype)
        if rows.new is not None:  # in place: the product does not keep its output for backward
            logits[..., rows.first : rows.last] = F.linear(x, rows.new)
        return logits


# ---- putting adapters on a model, and taking them off


def targeted(model: LanguageModel, targets: list[str]) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """(parent module, attribute, Linear) of every layer the targets name."""
    suffixes = [s for t in targets for s in TARGETS[t]]
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(name.endswith(s) for s in suffixes):
            parent_name, _, attr = name.rpartition(".")
            yield model.get_submodule(parent_name), attr, module


def add_lora(
    model: LanguageModel, config: LoraConfig, new_rows: tuple[int, int] | None = None
) -> LanguageModel:
    """In place: freeze every weight, put adapters on the targeted layers, and (new_rows: the ids
    first..last-1 the vocabulary gained) make those tokens' rows trainable. base_precision bf16 holds
    the frozen Linear layers and token tables in bf16 (half their memory); the rest computes in fp32. -> model"""
    if not hasattr(model, "transformer"):
        raise GptError(f"LoRA adapts a GPT's layers; {type(model).__name__} has none of them")
    for p in model.parameters():
        p.requires_grad_(False)
    half = config.base_precision == "bf16"
    for parent, attr, linear in targeted(model, config.targets):
        lora = LoRALinear(
            linear.to(torch.bfloat16) if half else linear, config.r, config.alpha, config.dropout
        )
        setattr(parent, attr, lora.train(linear.training))  # in the mode the model is in (eval: no dropout)
    if half:
        for parent, attr, linear in targeted(model, list(TARGETS)):  # the layers left without adapters
            setattr(parent, attr, FrozenLinear(linear.to(torch.bfloat16)))
    first, last = new_rows if new_rows is not None else (0, 0)
    if last > first or half:
        wte, lm_head = token_layers(model)
        dtype = torch.bfloat16 if half else None
        head_rows = TokenRows(lm_head.weight, first, last, dtype)
        model.lm_head = RowsHead(head_rows)
        tied = wte.weight is lm_head.weight
        model.transformer.wte = RowsEmbedding(
            head_rows if tied else TokenRows(wte.weight, first, last, dtype)
        )
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trained parameters by name (a tied table's new rows once): what an adapter checkpoint holds."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapter_weights(model: nn.Module) -> dict[str, Tensor]:
    """adapter_parameters' values, on the CPU, to save."""
    return {name: p.detach().contiguous().cpu() for name, p in adapter_parameters(model).items()}


def fold_new_rows(model: LanguageModel) -> LanguageModel:
    """In place: trained new-token rows written into plain tables (for generation, and merging). -> model"""
    wte, head = model.transformer.wte, model.lm_head
    if not isinstance(head, RowsHead):
        return model
    tied = wte.rows is head.rows
    with torch.no_grad():
        head_table = nn.Parameter(head.rows.table().to(head.rows.frozen.dtype), requires_grad=False)
        table = (
            head_table
            if tied
            else nn.Parameter(wte.rows.table().to(wte.rows.frozen.dtype), requires_grad=False)
        )
    with torch.device("meta"):  # shells: their weights are the tables above (tied: one Parameter)
        model.lm_head = nn.Linear(head_table.size(1), head_table.size(0), bias=False)
        model.transformer.wte = nn.Embedding(table.size(0), table.size(1))
    model.lm_head.weight, model.transformer.wte.weight = head_table, table
    return model


def merge_lora(model: LanguageModel) -> LanguageModel:
    """In place: every adapter added into its layer's weight and the new rows into the tables; a
    plain model in fp32, every weight trainable again. -> model"""
    fold_new_rows(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, FrozenLinear):
            parent_name, _, attr = name.rpartition(".")
            merged = module.merged() if isinstance(module, LoRALinear) else module.base
            setattr(model.get_submodule(parent_name), attr, merged)
    model.float()
    for p in model.parameters():
        p.requires_grad_(True)
    return model
