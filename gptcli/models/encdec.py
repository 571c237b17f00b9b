"""The encoder-decoder Transformer (Vaswani et al. 2017, pre-norm as T5), beside the GPT and the LSTM.

    prompt -> wte (+ positions) -> n_enc_layer x Block (bidirectional) -> ln_f = memory (B, S, C)
    target -> wte (+ positions) -> n_layer x DecoderBlock(memory)      -> ln_f -> lm_head -> logits
    Block (gpt.py):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))   (every prompt token sees every other)
    DecoderBlock:    x = x + attn(ln_1(x))            causal self-attention, as the GPT's
                     x = x + cross(ln_2(x), memory)   every target token sees the whole prompt
                     x = x + mlp(ln_3(x))

One token table serves the encoder, the decoder and the head (tied, as the paper's). Trained on
prompt/completion pairs (gptcli.training.pair_data): the encoder reads the prompt, the decoder reads
the start token then the completion, and learns to predict the completion then the end token (the
tokenizer's <|endoftext|> is both). Prompts of a batch are padded at the end and `src_mask` (B, S)
says which tokens are real: padding is never attended to, so a padded batch computes what each pair
gives alone.

Generation (gptcli.generation.decoder): `encode_source` runs the encoder once and stores every
decoder layer's cross-attention keys and values in the cache (EncDecCache); the decoder then goes
as the GPT's does, with a KV cache for its self-attention, including the fixed-shape decode step
(forward(..., positions=)) that continuous batching and torch.compile use. Its layers are gpt.py's:
the same attention, MLP and norms, and the same position tables (gptcli/models/positions.py).

Shapes in comments: B batch, S prompt tokens, T target tokens, C n_embd, nh n_head, nkv n_kv_head,
hs head_dim, V vocab_size.
"""

import math
from collections.abc import Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.models.base import LanguageModel
from gptcli.models.gpt import (
    MLP,
    Block,
    CausalSelfAttention,
    embed,
    embedding,
    make_norm,
    masked_attention,
    register_position_tables,
    repeat_kv,
)
from gptcli.models.kv_cache import KVCache, decode_length, decode_mask


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Prompts of any lengths (at least one token each) -> src (B, S) ids padded at the end with
    pad_id, and src_mask (B, S), True at the real tokens: what encode() and encode_source() take."""
    S = max(len(p) for p in prompts)
    src = torch.full((len(prompts), S), pad_id, dtype=torch.long)
    src_mask = torch.zeros((len(prompts), S), dtype=torch.bool)
    for row, ids in enumerate(prompts):
        src[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        src_mask[row, : len(ids)] = True
    return src, src_mask


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's output (its padding masked)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.flash = config.flash
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_kv = nn.Linear(config.n_embd, 2 * self.n_kv_head * self.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's output (B, S, C) -> keys and values (B, nkv, S, hs) each: computed once per prompt."""
        B, S, _ = memory.size()
        k, v = self.c_kv(memory).view(B, S, 2, self.n_kv_head, self.head_dim).unbind(2)  # (B, S, nkv, hs)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, C) attends to k, v (B, nkv, S, hs) where mask (B, 1, 1, S) is True -> (B, T, C)."""
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k, v = repeat_kv(k.to(q.dtype), v.to(q.dtype), self.n_head)  # (B, nh, S, hs): GQA, as the GPT's
        y = masked_attention(q, k, v, mask, self.flash, self.attn_dropout)  # a prompt has >= 1 real token
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the prompt, MLP: each pre-normed, added to the residual."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.cross = CrossAttention(config)
        self.ln_3 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, kv_cache, positions, mask, cross_k, cross_v, cross_mask) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, kv_cache, positions, mask)
        x = x + self.cross(self.ln_2(x), cross_k, cross_v, cross_mask)
        return x + self.mlp(self.ln_3(x))


class EncDecCache(KVCache):
    """The decoder's KV cache, plus each decoder layer's cross-attention keys and values of the prompt.

    Prompts of up to `src_len` tokens (block_size); `src_mask` (B, src_len) is True at each row's
    real prompt tokens, so rows whose prompts differ in length share one fixed-shape buffer.
    `src_used` is how far any row's prompt reaches: an eager step reads no further.
    """

    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, src_len, device=None, dtype=None):
        super().__init__(n_layer, batch_size, n_kv_head, max_len, head_dim, device, dtype)
        shape = (batch_size, n_kv_head, src_len, head_dim)
        self.cross_k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.cross_v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.src_mask = torch.zeros(batch_size, src_len, dtype=torch.bool, device=device)
        self.src_used = 0

    def copy_row(self, slot: int, source: "EncDecCache", row: int, n: int) -> None:
        super().copy_row(slot, source, row, n)
        for layer in range(len(self.cross_k)):
            self.cross_k[layer][slot] = source.cross_k[layer][row]  # (nkv, src_len, hs)
            self.cross_v[layer][slot] = source.cross_v[layer][row]
        self.src_mask[slot] = source.src_mask[row]
        self.src_used = max(self.src_used, source.src_used)

    def first_rows(self, n: int, length: int) -> "EncDecCache":
        view = super().first_rows(n, length)
        view.cross_k = [k[:n] for k in self.cross_k]
        view.cross_v = [v[:n] for v in self.cross_v]
        view.src_mask = self.src_mask[:n]
        view.src_used = self.src_mask.size(1)  # rows loaded later may reach further: read them whole
        return view


class EncoderDecoder(LanguageModel):
    """An encoder-decoder configured by `ModelConfig` (arch "encdec"). forward(idx, src=...) -> (logits, loss)."""

    cache_kind = "KV cache"
    static_decode = True  # forward(..., positions=) runs a fixed-shape decode step, as the GPT's
    encoder_decoder = True  # generation feeds the prompt to encode_source and starts the decoder apart

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        V, C = config.padded_vocab_size, config.n_embd
        self.lm_head = nn.Linear(C, V, bias=False)
        self.wte = nn.Embedding(V, C)
        if config.tie_weights:  # one Parameter: a token's input vector is its output vector too
            self.wte.weight = self.lm_head.weight
        self.encoder = self._stack([Block(config, i) for i in range(config.n_enc_layer)])
        self.decoder = self._stack([DecoderBlock(config, i) for i in range(config.n_layer)])
        register_position_tables(self, config)
        self.activation_checkpointing = False  # a training-time switch, as the GPT's
        self.apply(self._init_weights)
        # GPT-2's scaling of the projections that add into the residual stream, per stack
        for stack, adds in ((self.encoder, 2 * config.n_enc_layer), (self.decoder, 3 * config.n_layer)):
            for name, p in stack.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(adds))

    def _stack(self, blocks: list[nn.Module]) -> nn.ModuleDict:
        layers: dict[str, nn.Module] = {}
        if self.config.pos_emb == "learned":  # the prompt's and the target's positions are learned apart
            layers["wpe"] = embedding(self.config.block_size, self.config.n_embd)
        layers.update(
            drop=nn.Dropout(self.config.dropout), h=nn.ModuleList(blocks), ln_f=make_norm(self.config)
        )
        return nn.ModuleDict(layers)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def lookup_tables(self) -> list[Tensor]:
        tables = [stack.wpe.weight for stack in (self.encoder, self.decoder) if "wpe" in stack]
        return tables if self.config.tie_weights else [*tables, self.wte.weight]

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> EncDecCache:
        """An empty cache: the decoder's keys and values for up to max_len tokens (default block_size),
        and room for prompts of up to block_size tokens."""
        cfg = self.config
        ref = self.decoder.ln_f.weight  # float, where a Linear's weight may be int8
        return EncDecCache(
            cfg.n_layer, batch_size, cfg.n_kv_head, self.cache_length(max_len), cfg.head_dim, cfg.block_size,
            device=ref.device if device is None else device, dtype=ref.dtype if dtype is None else dtype,
        )  # fmt: skip

    # --- the encoder ---------------------------------------------------------------------------

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Prompts (B, S) -> the encoder's output (B, S, C). src_mask (B, S): True at real tokens
        (None: all are); padding is never attended to (its own outputs are never read)."""
        B, S = src.size()
        if S > self.config.block_size:
            raise GptError(f"a prompt of {S} tokens is longer than block_size ({self.config.block_size})")
        mask = None if src_mask is None else src_mask[:, None, None, :]  # (B, 1, 1, S): keys seen
        if mask is None:  # Block's attention is causal without a mask: give it the all-seeing one
            mask = torch.ones(1, 1, 1, S, dtype=torch.bool, device=src.device)
        x, rope = self._embed(self.encoder, src, 0, None)  # (B, S, C)
        for block in self.encoder.h:
            x = self._run(block, x, rope, None, None, mask)
        return self.encoder.ln_f(x)

    @torch.no_grad()
    def encode_source(self, src: Tensor, cache: EncDecCache, src_mask: Tensor | None = None) -> None:
        """Generation: encode prompts (B, S) once and store every decoder layer's cross-attention keys
        and values in the cache (its rows 0..B-1); the decoder then starts from nothing (pos 0)."""
        if src.size(0) != cache.batch_size:
            raise GptError(f"{src.size(0)} prompts, but the cache was made for {cache.batch_size}")
        S = src.size(1)
        memory = self.encode(src, src_mask)
        for layer, block in enumerate(self.decoder.h):
            k, v = block.cross.keys_values(memory)  # (B, nkv, S, hs)
            cache.cross_k[layer][:, :, :S] = k
            cache.cross_v[layer][:, :, :S] = v
        cache.src_mask.zero_()
        cache.src_mask[:, :S] = True if src_mask is None else src_mask
        cache.src_used, cache.pos = S, 0

    # --- the decoder ---------------------------------------------------------------------------

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        cache: EncDecCache | None = None,
        last_only: bool = False,
        positions: Tensor | None = None,
        src: Tensor | None = None,
        src_mask: Tensor | None = None,
        read_length: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx: (B, T) target ids (the start token, then the completion) -> logits (B, T, vocab_size),
        and the mean cross-entropy if targets (-1 ignored).

        Training and eval: src (B, S) prompts, src_mask (B, S) True at real tokens (None: all).
        Generation: no src; the cache holds the prompt (encode_source) and the tokens decoded so
        far, as a GPT's does: T tokens after cache.pos, or with positions (B,) one token per row at
        its own position (the fixed-shape step; cache.pos left alone), reading read_length cache
        positions (kv_cache.decode_length says how many when None).
        """
        T = idx.size(1)
        mask = None  # the decode step's self-attention mask, the same in every layer
        if cache is None:
            if src is None:
                raise GptError("an encoder-decoder reads a prompt: forward(idx, src=prompt ids)")
            self.check_input(idx, None)
            memory = self.encode(src, src_mask)  # (B, S, C)
            cross = [block.cross.keys_values(memory) for block in self.decoder.h]
            seen = torch.ones_like(src, dtype=torch.bool) if src_mask is None else src_mask
            cross_mask = seen[:, None, None, :]  # (B, 1, 1, S)
            x, rope = self._embed(self.decoder, idx, 0, None)
        else:
            if src is not None:
                raise GptError("with a cache, the prompt is given once, to encode_source")
            used = cache.src_mask.size(1) if torch.compiler.is_compiling() else cache.src_used
            cross = [(k[:, :, :used], v[:, :, :used]) for k, v in zip(cache.cross_k, cache.cross_v)]
            cross_mask = cache.src_mask[:, None, None, :used]  # (B, 1, 1, S)
            if positions is None:
                self.check_input(idx, cache)
                x, rope = self._embed(self.decoder, idx, cache.pos, None)
            else:
                if T != 1:
                    raise GptError("a decode step with positions takes one token per row")
                x, rope = self._embed(self.decoder, idx, 0, positions)  # (B, 1, C)
                length = decode_length(positions, cache.max_len, read_length)
                mask = decode_mask(positions, length, None)  # (B, 1, 1, length)
        for block, (k, v) in zip(self.decoder.h, cross):
            x = self._run(block, x, rope, cache, positions, mask, k, v, cross_mask)  # (B, T, C)
        x = self.decoder.ln_f(x)
        if cache is not None and positions is None:
            cache.pos += T
        return self.logits_and_loss(x, targets, last_only)

    def _run(self, block: nn.Module, x: Tensor, *args) -> Tensor:
        """One block, its activations recomputed in backward with activation checkpointing."""
        if self.activation_checkpointing and self.training and args[1] is None:  # args[1]: no cache
            return torch.utils.checkpoint.checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    def _embed(self, stack: nn.ModuleDict, idx: Tensor, start: int, positions: Tensor | None):
        """gpt.embed with the shared token table and this stack's positions and dropout."""
        return embed(self, self.wte, stack, idx, start, positions)

    def flops_per_token(self) -> int:
        """Training FLOPs per target token: 6 per weight, plus the attention's (self and cross)."""
        cfg = self.config
        width = cfg.n_head * cfg.head_dim * cfg.block_size
        return super().flops_per_token() + 12 * width * (cfg.n_enc_layer + 2 * cfg.n_layer)
