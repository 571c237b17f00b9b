"""An independent reader of what `gpt export-gguf` writes: numpy and gguf's GGUFReader, none of our model
or tokenizer code. It runs the file the way llama.cpp's gpt2 and starcoder2 graphs do, so a layout
mistake (a transposed matrix, q/k/v rows swapped, a rotary pairing, a missing bias) shows as logits
that differ from ours; and it encodes text from the file's tokens and merges with llama.cpp's regex.

    model = GgufModel("model.gguf")
    model.forward([5, 9, 2])        -> (T, V) logits, float64
    GgufBpe(model).encode(text)     -> ids, special tokens' text matched as theirs

Also what the GGUF tests export: MODELS, tiny_checkpoint, export_models.
"""

import math
from pathlib import Path

import numpy as np
import regex
import torch

# llama.cpp's regex for each named pre-tokenizer (src/llama-vocab.cpp, llama_vocab::impl::load);
# text no alternative matches is a piece of its own there, as here. llama-bpe also sets ignore_merges:
# a piece that is a token as a whole is that token (tiktoken does the same)
LLAMA_CPP_PRE = {
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    "llama-bpe": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
Q8_0_BLOCK_BYTES = 2 + 32  # one fp16 scale d, then 32 int8 q: the weights are d * q
NORMAL, CONTROL = 1, 3


def dequantize_q8_0(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Q8_0 bytes -> float32 of `shape` (numpy order): each row is blocks of 32 weights, d * q."""
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, Q8_0_BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)  # (n_blocks, 32)
    return (d * q).reshape(shape)


def split_pieces(pattern: str, text: str) -> list[str]:
    """Matches of `pattern`, and what lies between them, in order (llama.cpp keeps unmatched text)."""
    pieces, at = [], 0
    for m in regex.finditer(pattern, text):
        if m.start() > at:
            pieces.append(text[at : m.start()])
        pieces.append(m.group())
        at = m.end()
    return pieces + ([text[at:]] if at < len(text) else [])


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (its encoder.py's bytes_to_unicode)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(extra)}}


class GgufModel:
    """A GGUF file's keys and tensors (dequantized to float32, numpy shapes), and a forward pass."""

    def __init__(self, path: str | Path):
        import gguf

        reader = gguf.GGUFReader(path)
        self.keys = {name: field.contents() for name, field in reader.fields.items()}
        self.arch = self.keys["general.architecture"]
        self.types, self.shapes, self.tensors = {}, {}, {}
        for t in reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 (the contiguous dim) first
            kind = t.tensor_type.name
            self.types[t.name], self.shapes[t.name] = kind, shape
            if kind == "Q8_0":
                self.tensors[t.name] = dequantize_q8_0(t.data, shape)
            elif kind in ("F32", "F16"):
                self.tensors[t.name] = np.asarray(t.data, dtype=np.float32).reshape(shape)
            else:
                raise AssertionError(f"{t.name}: unexpected tensor type {kind}")

    def key(self, name: str):
        return self.keys[f"{self.arch}.{name}"]

    def forward(self, ids: list[int]) -> np.ndarray:
        """Logits (T, V) of `ids` at positions 0..T-1, in float64: llama.cpp's graph, step by step."""
        W = {k: v.astype(np.float64) for k, v in self.tensors.items()}
        n_layer, C = self.key("block_count"), self.key("embedding_length")
        n_head, n_kv = self.key("attention.head_count"), self.key("attention.head_count_kv")
        eps, hs, T = self.key("attention.layer_norm_epsilon"), C // n_head, len(ids)
        x = W["token_embd.weight"][ids]  # (T, C)
        if self.arch == "gpt2":
            x = x + W["position_embd.weight"][:T]
        for i in range(n_layer):
            b = f"blk.{i}."
            h = layer_norm(x, W[b + "attn_norm.weight"], W[b + "attn_norm.bias"], eps)
            if self.arch == "gpt2":
                qkv = h @ W[b + "attn_qkv.weight"].T + W[b + "attn_qkv.bias"]  # (T, C + 2 kv)
                q, k, v = np.split(qkv, [C, C + n_kv * hs], axis=1)
            else:
                q, k, v = (h @ W[b + f"attn_{p}.weight"].T + W[b + f"attn_{p}.bias"] for p in "qkv")
            q, k, v = q.reshape(T, n_head, hs), k.reshape(T, n_kv, hs), v.reshape(T, n_kv, hs)
            if self.arch == "starcoder2":
                base, n_rot = self.key("rope.freq_base"), self.key("rope.dimension_count")
                q, k = rope_neox(q, base, n_rot), rope_neox(k, base, n_rot)
            y = attention(q, k, v)  # (T, C)
            x = x + y @ W[b + "attn_output.weight"].T + W[b + "attn_output.bias"]
            h = layer_norm(x, W[b + "ffn_norm.weight"], W[b + "ffn_norm.bias"], eps)
            h = gelu_tanh(h @ W[b + "ffn_up.weight"].T + W[b + "ffn_up.bias"])
            x = x + h @ W[b + "ffn_down.weight"].T + W[b + "ffn_down.bias"]
        x = layer_norm(x, W["output_norm.weight"], W["output_norm.bias"], eps)
        head = W.get("output.weight", W["token_embd.weight"])  # tied: the embedding is the head
        return x @ head.T


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def rope_neox(x, base, n_rot):
    """NEOX rotary: dims i and i + n_rot/2 of each head turn by pos * base^(-2i / n_rot). x (T, heads, hs)."""
    T, half = x.shape[0], n_rot // 2
    theta = np.arange(T)[:, None] * base ** (-2 * np.arange(half) / n_rot)  # (T, half)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]  # (T, 1, half)
    a, b = x[..., :half], x[..., half:n_rot]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos, x[..., n_rot:]], axis=-1)


def attention(q, k, v):
    """Causal attention; query head h reads key/value head h // (heads per kv head). -> (T, heads * hs)"""
    T, n_head, hs = q.shape
    group = n_head // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (T, n_head, hs)
    scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(hs)  # (n_head, T, T)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v).reshape(T, n_head * hs)


class GgufBpe:
    """The file's tokenizer rebuilt from its tokens and merges: control tokens cut out first, the rest
    split by the named pre-tokenizer's regex and merged lowest rank first (GPT-2's encoder.py)."""

    def __init__(self, model: GgufModel):
        keys = model.keys
        assert keys["tokenizer.ggml.model"] == "gpt2"
        self.pattern = LLAMA_CPP_PRE[keys["tokenizer.ggml.pre"]]
        self.ignore_merges = keys["tokenizer.ggml.pre"] == "llama-bpe"
        tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(keys["tokenizer.ggml.merges"])}
        control = sorted((t for t, kind in zip(tokens, types) if kind == CONTROL), key=len, reverse=True)
        self.control = regex.compile("|".join(map(regex.escape, control))) if control else None
        self.char = byte_to_unicode()

    def encode(self, text: str) -> list[int]:
        ids, at = [], 0
        for m in self.control.finditer(text) if self.control else []:
            ids += self._ordinary(text[at : m.start()]) + [self.ids[m.group()]]
            at = m.end()
        return ids + self._ordinary(text[at:])

    def _ordinary(self, text: str) -> list[int]:
        ids = []
        for piece in split_pieces(self.pattern, text):
            word = [self.char[b] for b in piece.encode("utf-8")]
            if self.ignore_merges and "".join(word) in self.ids:
                word = ["".join(word)]
            while len(word) > 1:
                pairs = set(zip(word, word[1:]))
                best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
                if best not in self.ranks:
                    break
                merged, i = [], 0
                while i < len(word):
                    if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                        merged.append(word[i] + word[i + 1])
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                word = merged
            ids += [self.ids[w] for w in word]
        return ids


# ---------------------------------------------------------------------------------------------------
# What the tests export

# name -> the model's shape: learned positions (gpt2) and rotary (starcoder2), GQA, tied and untied heads;
# and its tokenizer's split pattern (default gpt2)
MODELS = {
    "gpt2": dict(pos_emb="learned"),
    "gpt2-gqa-untied-nobias": dict(pos_emb="learned", n_kv_head=2, tie_weights=False, bias=False),
    "rope-gqa-gpt4": dict(pos_emb="rope", n_kv_head=1, rope_base=500.0, pattern="gpt4"),
    "rope-untied-nobias": dict(pos_emb="rope", tie_weights=False, bias=False),
}
# special tokens, non-ASCII, a tab, blank lines
SPECIAL_TEXT = (
    "<|im_start|>user\nCombien coûte un café ? 日本語 🎉 naïve — «ok»<|im_end|>\n"
    "<|im_start|>assistant\n  Shall I compare thee\tto a summer's day?\n\n<|endoftext|>x \n  y\n"
)
# texts ending in whitespace with a newline then more whitespace: gpt2 splits them as llama.cpp's gpt-2,
# gpt4 not as llama-bpe (gptcli/gguf_tokenizer.py)
TRAILING = ["x \n  ", "end\t\n\t", "a.\n \n  "]


def chat_tokenizer(pattern: str = "gpt2"):
    """A BPE of 400 tokens trained on the sonnets, with ChatML's tokens (as fine-tuning adds them)."""
    from gptcli.tokenizers import with_special_tokens
    from tests.chat.conftest import train

    return with_special_tokens(train(pattern=pattern), ["<|im_start|>", "<|im_end|>"])[0]


def export_models(root: Path, dtypes) -> dict[tuple[str, str], tuple[Path, Path]]:
    """Every model of MODELS (the first fine-tuned, with ChatML) saved and exported in every dtype:
    (name, dtype) -> (checkpoint dir, GGUF file)."""
    from gptcli.gguf_export import export_gguf

    out, tokenizers = {}, {}
    for i, (name, shape) in enumerate(MODELS.items()):
        shape = dict(shape)
        pattern = shape.pop("pattern", "gpt2")
        tokenizer = tokenizers.setdefault(pattern, chat_tokenizer(pattern))
        directory = tiny_checkpoint(root / name, tokenizer, seed=i, chat=i == 0, **shape)
        for dtype in dtypes:
            out[name, dtype] = directory, export_gguf(directory, root / f"{name}-{dtype}.gguf", dtype=dtype)
    return out


def tiny_checkpoint(directory: Path, tokenizer, seed: int = 0, chat: bool = False, **shape) -> Path:
    """A random GPT (every weight, norm and bias perturbed, so that none is left at 0 or 1) saved as a
    checkpoint; chat: with ChatML's template, as `gpt finetune` leaves one."""
    from gptcli.chat.template import ChatTemplate
    from gptcli.config import ModelConfig
    from gptcli.models import GPT
    from gptcli.storage import checkpoint as ckpt

    torch.manual_seed(seed)
    config = dict(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=64)
    model = GPT(ModelConfig(**{**config, "dropout": 0.0, **shape}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if "ln" in name or name.endswith("bias") else 0.05))
    info = {"step": 1}
    if chat:
        info["chat_template"] = ChatTemplate.chatml().to_json()
    return ckpt.save_checkpoint(directory, model, model.config, tokenizer, info)
