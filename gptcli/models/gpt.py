"""The GPT: one file, top to bottom, with GPT-2's parameter names.

    tokens -> wte (+ wpe | + sinusoidal) -> dropout -> n_layer x Block -> ln_f -> lm_head -> logits
    Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))

Names follow OpenAI GPT-2 / Hugging Face (`transformer.h.0.attn.c_attn.weight` ...), so importing GPT-2
weights is a rename-free copy plus the transposes of HF's Conv1D layers (see gptcli/hf_gpt2.py).
Options beyond GPT-2, all set by `ModelConfig`: rotary / sinusoidal / no positions, grouped-query
attention (n_kv_head < n_head), sliding-window attention, RMSNorm, exact GELU, untied lm_head, a
KV cache for generation (gptcli/models/kv_cache.py), and packed rows of several documents (doc_ids:
positions restart and attention stays inside each document; gptcli/models/positions.py). Attention
has two paths that compute the same thing: PyTorch's fused `scaled_dot_product_attention`
(config.flash) and the explicit softmax(q k^T / sqrt(hs)) v to read.

Shapes in comments: B batch, T new tokens, L keys attended (cached + new), C n_embd, nh n_head,
nkv n_kv_head, hs head_dim, V vocab_size.
"""

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.models.base import LanguageModel
from gptcli.models.kv_cache import KVCache, decode_length, decode_mask
from gptcli.models.positions import (
    apply_rotary,
    attention_mask,
    document_mask,
    document_positions,
    rope_tables,
    sinusoidal_table,
)

# ---------------------------------------------------------------------------------------------------
# Layers


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (GPT-2 has one; many newer models do not)."""

    def __init__(self, ndim: int, bias: bool, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Scale by the root mean square, no centering and no bias (as LLaMA)."""

    def __init__(self, ndim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # the mean of squares can overflow in half precision
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return LayerNorm(config.n_embd, config.bias, config.norm_eps)


def repeat_kv(k: Tensor, v: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
    """Grouped-query attention: (B, nkv, L, hs) keys and values -> (B, n_head, L, hs), each group of
    n_head / nkv query heads sharing one key/value head (as they are when nkv = n_head)."""
    repeat = n_head // k.size(1)
    if repeat == 1:
        return k, v
    return k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, flash: bool, dropout: nn.Dropout
) -> Tensor:
    """Attention under a mask: q (B, nh, T, hs), k/v (B, nh, L, hs), mask broadcastable to (B, nh, T, L),
    True = attend -> (B, nh, T, hs). A decode step (T = 1): row b sees cached keys 0 .. positions[b]
    (decode_mask); a packed row: each query its own document's keys up to itself (document_mask); an
    encoder-decoder: the prompt's real tokens (gptcli/models/encdec.py). Every query sees a key: no NaN."""
    if flash:
        dropout_p = dropout.p if dropout.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, L)
    att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
    return dropout(att) @ v  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, with grouped key/value heads and an optional sliding window."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.head_dim = config.head_dim
        self.window = config.window
        self.flash = config.flash
        self.dropout = config.dropout
        self.layer_idx = layer_idx  # which slot of the KV cache is ours
        kv_dim = self.n_kv_head * self.head_dim
        # q, k and v in one matmul; k and v are smaller than q when n_kv_head < n_head
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        B, T, C = x.size()
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.c_attn(x).split([C, kv_dim, kv_dim], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)

        start = 0  # position of the first new token
        if positions is not None:  # a decode step: one token per row, each at its own position
            # (its (B, 1, 1, length) mask comes from GPT.forward, made once for all layers)
            k, v = kv_cache.write_at(self.layer_idx, k, v, positions)  # (B, nkv, max_len, hs)
            k, v = k[:, :, : mask.size(-1)], v[:, :, : mask.size(-1)]  # (B, nkv, length, hs)
        elif kv_cache is not None:
            start = kv_cache.pos
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nkv, L, hs), L = start + T

        k, v = repeat_kv(k, v, self.n_head)  # (B, nh, L, hs) each

        if mask is not None:
            y = masked_attention(q, k, v, mask, self.flash, self.attn_dropout)
        elif self.flash:
            dropout_p = self.dropout if self.training else 0.0
            if self.window is None and start == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            elif T == 1:
                # one new token (a decode step) sees every cached key, or the last `window` of them: no mask
                if self.window is not None and k.size(2) > self.window:
                    k, v = k[:, :, -self.window :], v[:, :, -self.window :]
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            else:
                # is_causal aligns the triangle top-left, wrong once keys precede the queries: pass a mask
                mask = attention_mask(T, start, self.window, x.device)  # (T, L)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, L)
            mask = attention_mask(T, start, self.window, x.device)  # (T, L)
            att = att.masked_fill(~mask, float("-inf"))  # every row keeps its own diagonal: no NaN
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, L) x (B, nh, L, hs) -> (B, nh, T, hs)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, kv_cache, positions, mask)
        x = x + self.mlp(self.ln_2(x))
        return x


# ---------------------------------------------------------------------------------------------------
# The model


def register_position_tables(model: nn.Module, config: ModelConfig) -> None:
    """Fixed tables: computed, not learned, so they stay out of the state_dict (persistent=False)."""
    if config.pos_emb == "sinusoidal":
        model.register_buffer(
            "sinusoid", sinusoidal_table(config.block_size, config.n_embd), persistent=False
        )
    if config.pos_emb == "rope":
        cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_base)
        model.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs/2)
        model.register_buffer("rope_sin", sin, persistent=False)  # (block_size, hs/2)


def embed(
    model: nn.Module, wte: nn.Module, stack: nn.ModuleDict, idx: Tensor, start: int, positions: Tensor | None
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Token (+ position) embeddings of (B, T) ids at start .. start+T-1, or at a decode step's (B,)
    positions, or a packed row's (B, T) positions -> (B, T, C), and the rotary tables for those
    positions (rope only). The model holds the fixed tables (register_position_tables); the stack its
    learned positions (wpe) and its dropout (drop)."""
    cfg = model.config
    T = idx.size(1)
    if positions is None:
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
    elif positions.dim() == 1:
        pos = positions[:, None]  # (B, 1): every row at its own position
    else:
        pos = positions  # (B, T): every token at its own position
    x = wte(idx)  # (B, T, C)
    if cfg.pos_emb == "learned":
        x = x + stack.wpe(pos)  # (B, T, C) + (T, C) or (B, T|1, C)
    elif cfg.pos_emb == "sinusoidal":
        x = x + model.sinusoid[pos].to(x.dtype)  # (B, T, C) + (T, C) or (B, T|1, C)
    rope = None
    if cfg.pos_emb == "rope":
        rope = (model.rope_cos[pos], model.rope_sin[pos])  # (T, hs/2) each, or (B, T|1, hs/2)
        if positions is not None:
            rope = (rope[0][:, None], rope[1][:, None])  # (B, 1, T|1, hs/2): broadcast over heads
    return stack.drop(x), rope


def embedding(n: int, dim: int, weight: Tensor | None = None) -> nn.Embedding:
    """nn.Embedding, with `weight` (tied) or its own; built on the meta device (to be loaded into),
    left uninitialized: normal_ on a meta tensor imports torch._dynamo, seconds of start-up."""
    if weight is None and torch.empty(0).is_meta:
        weight = torch.empty(n, dim)
    return nn.Embedding(n, dim, _weight=weight)


class GPT(LanguageModel):
    """A GPT language model configured by `ModelConfig`. forward(idx) -> (logits, loss)."""

    cache_kind = "KV cache"
    static_decode = True  # forward(..., positions=) runs a fixed-shape decode step (see KVCache)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        V = config.padded_vocab_size  # rows beyond vocab_size exist only to make matmuls faster
        lm_head = nn.Linear(config.n_embd, V, bias=False)  # registered after the blocks, as GPT-2's
        # tied: wte is handed lm_head's weight, so it never allocates or initializes one of its own
        tied = lm_head.weight if config.tie_weights else None
        layers: dict[str, nn.Module] = {"wte": embedding(V, config.n_embd, tied)}
        if config.pos_emb == "learned":
            layers["wpe"] = embedding(config.block_size, config.n_embd)
        layers["drop"] = nn.Dropout(config.dropout)
        layers["h"] = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        layers["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = lm_head
        if config.tie_weights:
            # one Parameter for both: the input embedding of a token is its output vector too
            self.transformer.wte.weight = self.lm_head.weight

        register_position_tables(self, config)

        self.activation_checkpointing = False  # a training-time switch (gpt train --activation-checkpointing)
        if lm_head.weight.is_meta:
            return  # built to be loaded into (GPT.empty): nothing to initialize
        self.apply(self._init_weights)
        # GPT-2: scale the projections that add into the residual stream by 1/sqrt(number of them)
        for name, p in self.named_parameters():
            if name.endswith("attn.c_proj.weight") or name.endswith("mlp.c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @classmethod
    def empty(cls, config: ModelConfig) -> "GPT":
        """A CPU model whose weights are allocated but not initialized: for loading weights into.

        Built on the meta device, so no time goes into a random init that is overwritten at once,
        and no page of memory is touched before the loaded weights fill it.
        """
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device="cpu")
        if config.tie_weights:  # to_empty gives the two modules separate tensors: tie them again
            model.transformer.wte.weight = model.lm_head.weight
        register_position_tables(model, config)  # the meta tables hold no values
        return model

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # norms start at weight 1, bias 0 from their constructors

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty cache for up to `max_len` tokens (default block_size), on the model's device/dtype.

        Under autocast pass the compute dtype (e.g. torch.bfloat16) to halve the cache's memory.
        """
        cfg = self.config
        ref = self.transformer.ln_f.weight  # float, where the head's weight may be int8 (gptcli.models.int8)
        return KVCache(
            cfg.n_layer,
            batch_size,
            cfg.n_kv_head or cfg.n_head,
            self.cache_length(max_len),
            cfg.head_dim,
            device=ref.device if device is None else device,
            dtype=ref.dtype if dtype is None else dtype,
        )

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        positions: Tensor | None = None,
        doc_ids: Tensor | None = None,
        read_length: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx: (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy if targets.

        With a KV cache the T tokens follow the cache.pos tokens already cached: they take
        positions pos .. pos+T-1 and attend to the cached keys as well; the cache then holds pos+T.
        Targets of -1 are ignored. last_only (generation): logits of the last position only,
        (B, 1, vocab_size), which spares the (B, T, V) matmul of a long prefill.
        positions (a decode step, with a cache): (B,) the position of each row's one new token;
        shapes stay fixed and cache.pos is left alone (the caller counts), see KVCache; read_length:
        the cache positions it reads (kv_cache.decode_length says how many when None).
        doc_ids (training and eval, no cache): (B, T) the document of each token of a packed row,
        non-decreasing, e.g. [0, 0, 0, 1, 1, 2, 2, 2]; positions restart at 0 in each document and
        attention never crosses into another, so each document's logits are what it gives alone
        (the caller sets -1 as the target of each document's last token, to learn no cross-document
        prediction).
        """
        T = idx.size(1)
        start = 0 if cache is None else cache.pos
        mask = None  # a packed row or a decode step: which keys each row sees, the same in every layer
        if doc_ids is not None:
            if cache is not None or positions is not None or doc_ids.shape != idx.shape:
                raise GptError("doc_ids (packed rows) take the shape of idx, and no KV cache or positions")
            self.check_input(idx, None)
            x, rope = self._embed(idx, 0, document_positions(doc_ids))  # (B, T, C): restarting positions
            mask = document_mask(doc_ids, self.config.window)  # (B, 1, T, T)
        elif positions is None:
            self.check_input(idx, cache)
            x, rope = self._embed(idx, start, None)  # (B, T, C)
        else:
            if cache is None or T != 1:
                raise GptError("a decode step with positions takes one token per row and a KV cache")
            x, rope = self._embed(idx, start, positions)  # (B, 1, C)
            length = decode_length(positions, cache.max_len, read_length)
            mask = decode_mask(positions, length, self.config.window)  # (B, 1, 1, length)
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training and cache is None:
                # keep only each block's input; recompute its activations in backward (less memory, ~1/3 more compute)
                x = torch.utils.checkpoint.checkpoint(block, x, rope, None, None, mask, use_reentrant=False)
            else:
                x = block(x, rope, cache, positions, mask)  # (B, T, C)
        x = self.transformer.ln_f(x)
        if cache is not None and positions is None:
            cache.pos += T  # every layer has stored its keys/values for these T tokens
        return self.logits_and_loss(x, targets, last_only)

    def _embed(
        self, idx: Tensor, start: int, positions: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        return embed(self, self.transformer.wte, self.transformer, idx, start, positions)

    def lookup_tables(self) -> list[Tensor]:
        """Weights read by index, not multiplied: wpe, and wte when it is not also the lm_head."""
        tables = [self.transformer.wpe.weight] if "wpe" in self.transformer else []
        if not self.config.tie_weights:
            tables.append(self.transformer.wte.weight)
        return tables

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B / nanoGPT."""
        cfg = self.config
        attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size  # q k^T and att v
        return super().flops_per_token() + attention
