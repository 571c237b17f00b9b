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


class LoRALinear(nn.Module):
    """A frozen nn.Linear (`base`) plus its low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.r, self.scaling = r, alpha / r
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    @property
    def weight(self) -> Tensor:  # what code that reads a Linear's weight (its dtype, its device) sees
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:  # (B, T, in) -> (B, T, out)
        w = self.base.weight
        y = self.base(x if x.dtype == w.dtype else x.to(w.dtype)).to(x.dtype)  # a base held in bf16
        return y + (self.dropout(x) @ self.lora_A.to(x.dtype).T @ self.lora_B.to(x.dtype).T) * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with the update added into its weight (W + scaling * B A), in fp32 math."""
        base = self.base
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
            base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
        return base


class TokenRows(nn.Module):
    """A token table (embedding or head, (P, C)) whose rows first..last-1 are trained and the rest frozen."""

    def __init__(self, weight: Tensor, first: int, last: int):
        super().__init__()
        self.first, self.last = first, last
        self.frozen = nn.Parameter(weight.detach(), requires_grad=False)  # (P, C), new rows included
        self.new = nn.Parameter(weight.detach()[first:last].clone().float())  # (last - first, C)

    def table(self) -> Tensor:  # (P, C)
        frozen = self.frozen.to(self.new.dtype)
        return torch.cat([frozen[: self.first], self.new, frozen[self.last :]])


class RowsEmbedding(nn.Module):
    def __init__(self, rows: TokenRows):
        super().__init__()
        self.rows = rows

    @property
    def weight(self) -> Tensor:
        return self.rows.table()

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.rows.table())


class RowsHead(RowsEmbedding):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.rows.table())


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
    first..last-1 the vocabulary gained) make those tokens' rows trainable. -> model"""
    if not hasattr(model, "transformer"):
        raise GptError(f"LoRA adapts a GPT's layers; {type(model).__name__} has none of them")
    for p in model.parameters():
        p.requires_grad_(False)
    dtype = torch.bfloat16 if config.base_precision == "bf16" else None
    for parent, attr, linear in targeted(model, config.targets):
        if dtype is not None:
            linear.to(dtype)  # the frozen base at half the bytes; the adapter stays fp32
        lora = LoRALinear(linear, config.r, config.alpha, config.dropout)
        setattr(parent, attr, lora.train(linear.training))  # in the mode the model is in (eval: no dropout)
    if new_rows is not None and new_rows[1] > new_rows[0]:
        wte, lm_head = token_layers(model)
        tied = wte.weight is lm_head.weight
        head_rows = TokenRows(lm_head.weight.to(dtype) if dtype else lm_head.weight, *new_rows)
        model.lm_head = RowsHead(head_rows)
        model.transformer.wte = RowsEmbedding(head_rows if tied else TokenRows(wte.weight, *new_rows))
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
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, module.merged())
    model.float()
    for p in model.parameters():
        p.requires_grad_(True)
    return model
