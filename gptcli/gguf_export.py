"""`gpt export-gguf`: a checkpoint -> one GGUF file that llama.cpp, llama-cpp-python and Ollama run.

    export_gguf("out", "model.gguf", dtype="q8_0")   -> the path written

A GGUF file names one of llama.cpp's architectures, whose C++ graph then runs the weights; it holds
that graph's hyperparameters as `{arch}.*` keys, the tensors under its names, and the tokenizer
(gptcli/gguf_tokenizer.py). Ours map onto two graphs, the ones llama.cpp's converter fills for GPT-2
and StarCoder2:

    learned positions   gpt2         LayerNorm, tanh-GELU MLP, learned positions (GQA too)
    rotary positions    starcoder2   LayerNorm, tanh-GELU MLP, GQA, NEOX rotary (our rotate-half:
                                     pairs (i, i + hs/2)) over the whole head

What neither graph computes is refused with a one-line error naming it: the LSTM, sinusoidal or no
positions, RMSNorm (with a GELU MLP: no llama.cpp graph has that pair), sliding-window attention,
and the exact GELU (both graphs use the tanh form).

**Tensors.** Shapes are numpy's, (rows, columns); GGUF lists them reversed (ne0, the contiguous
dimension, first), so nn.Linear's (out, in) goes in as it is and reads as llama.cpp's {in, out}.
HF's GPT-2 keeps Conv1D's (in, out): llama.cpp's converter transposes those, we need not.

    token_embd.weight              (V, C)        wte, without our padding rows past the vocabulary
    position_embd.weight           (T, C)        wpe (gpt2 only)
    blk.N.attn_norm.weight/bias    (C,)          ln_1
    blk.N.attn_qkv.weight/bias     (C + 2kv, C)  attn.c_attn: q, then k, then v rows (gpt2)
    blk.N.attn_q/_k/_v.weight/bias (C|kv, C)     the same rows cut in three (starcoder2, as its converter)
    blk.N.attn_output.weight/bias  (C, C)        attn.c_proj
    blk.N.ffn_norm.weight/bias     (C,)          ln_2
    blk.N.ffn_up.weight/bias       (4C, C)       mlp.c_fc
    blk.N.ffn_down.weight/bias     (C, 4C)       mlp.c_proj
    output_norm.weight/bias        (C,)          ln_f
    output.weight                  (V, C)        lm_head, only when not tied (else llama.cpp reuses token_embd)

Both graphs load every bias: a model trained without them gets zeros. A LoRA run exports merged.

**dtype.** f32 writes every tensor in float32. f16 and q8_0 (llama.cpp's 8-bit blocks: 32 weights
of a row share one fp16 scale) apply to the matrices; norms, biases and position_embd stay float32,
as llama.cpp's converter keeps them. A matrix whose rows are not a multiple of 32 long cannot be
q8_0 and is written f16 (the converter's fallback too).
"""

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from gptcli.chat.template import ChatTemplate
from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.gguf_tokenizer import GgufVocab, gguf_vocab
from gptcli.loading import load_checkpoint
from gptcli.models.lora import has_lora, merge_lora
from gptcli.quantize import refuse_int8
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.files import current_umask

DTYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = 32  # weights per Q8_0 block (one fp16 scale + 32 int8)


def import_gguf():
    """The `gguf` package (an optional extra), or a one-line error saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise GptError("writing GGUF needs the gguf package: pip install 'gptcli[gguf]'") from None
    return gguf


def gguf_arch(config: ModelConfig, directory: Path | str) -> str:
    """The llama.cpp architecture our model maps onto, or a one-line error naming what none computes."""
    if config.arch != "gpt":
        raise GptError(
            f"{directory}: llama.cpp has no {config.arch.upper()} architecture; only GPTs export to GGUF"
        )
    problems = []
    if config.pos_emb in ("sinusoidal", "none"):
        problems.append(f"{config.pos_emb} positions (llama.cpp's gpt2 learns them, starcoder2 rotates)")
    if config.norm == "rmsnorm":
        problems.append("RMSNorm with a GELU MLP (gpt2 and starcoder2 use LayerNorm)")
    if config.window is not None:
        problems.append(
            f"sliding-window attention (window {config.window}; both attend to the whole context)"
        )
    if config.gelu == "exact":
        problems.append("the exact GELU (both compute the tanh form)")
    if problems:
        raise GptError(f"{directory}: llama.cpp cannot run this model: {'; '.join(problems)}")
    return "gpt2" if config.pos_emb == "learned" else "starcoder2"


def export_gguf(checkpoint: str | Path, out: str | Path, dtype: str = "f32", best: bool = False) -> Path:
    """`gpt export-gguf`: a checkpoint (or a run's newest/best) -> a GGUF file at `out` (written whole
    or not at all). -> the path"""
    if dtype not in DTYPES:
        raise GptError(f"unknown GGUF dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    gguf = import_gguf()
    directory = ckpt.resolve_checkpoint(checkpoint, best=best)
    saved = ckpt.read_config(directory)
    config = saved["model"]
    arch = gguf_arch(config, directory)  # refused before any weight is read
    refuse_int8(directory, saved, "gpt export-gguf")
    model, tokenizer, _ = load_checkpoint(directory)
    template = ChatTemplate.from_json(saved["chat_template"]) if saved.get("chat_template") else None
    vocab = gguf_vocab(tokenizer, template)
    if has_lora(model):
        model = merge_lora(model)
    tensors = gguf_tensors(ckpt.model_weights(model), config, arch)
    name = Path(checkpoint).resolve().name  # the run or checkpoint as the user named it
    return write_gguf(gguf, Path(out), arch, config, vocab, tensors, dtype, name=name)


def gguf_tensors(weights: dict[str, torch.Tensor], config: ModelConfig, arch: str) -> dict[str, np.ndarray]:
    """Our weights (model_weights: the tied head stored once) -> float32 arrays under llama.cpp's names."""
    V, C = config.vocab_size, config.n_embd
    kv = (config.n_kv_head or config.n_head) * config.head_dim

    def get(name: str, size: int | None = None) -> np.ndarray:
        """A weight as float32, or zeros of `size` for a bias the model does not have."""
        if name not in weights:
            return np.zeros(size, dtype=np.float32)
        return weights[name].detach().float().numpy()

    out = {"token_embd.weight": get("transformer.wte.weight")[:V]}  # our padding rows are never predicted
    if arch == "gpt2":
        out["position_embd.weight"] = get("transformer.wpe.weight")
    for i in range(config.n_layer):
        ours, blk = f"transformer.h.{i}.", f"blk.{i}."
        out[blk + "attn_norm.weight"] = get(ours + "ln_1.weight")
        out[blk + "attn_norm.bias"] = get(ours + "ln_1.bias", C)
        qkv_w, qkv_b = get(ours + "attn.c_attn.weight"), get(ours + "attn.c_attn.bias", C + 2 * kv)
        if arch == "gpt2":
            out[blk + "attn_qkv.weight"], out[blk + "attn_qkv.bias"] = qkv_w, qkv_b
        else:  # rows 0..C are q, then kv rows of k, then kv of v (CausalSelfAttention's split)
            for part, rows in (("q", slice(0, C)), ("k", slice(C, C + kv)), ("v", slice(C + kv, None))):
                out[blk + f"attn_{part}.weight"], out[blk + f"attn_{part}.bias"] = qkv_w[rows], qkv_b[rows]
        out[blk + "attn_output.weight"] = get(ours + "attn.c_proj.weight")
        out[blk + "attn_output.bias"] = get(ours + "attn.c_proj.bias", C)
        out[blk + "ffn_norm.weight"] = get(ours + "ln_2.weight")
        out[blk + "ffn_norm.bias"] = get(ours + "ln_2.bias", C)
        out[blk + "ffn_up.weight"] = get(ours + "mlp.c_fc.weight")
        out[blk + "ffn_up.bias"] = get(ours + "mlp.c_fc.bias", 4 * C)
        out[blk + "ffn_down.weight"] = get(ours + "mlp.c_proj.weight")
        out[blk + "ffn_down.bias"] = get(ours + "mlp.c_proj.bias", C)
    out["output_norm.weight"] = get("transformer.ln_f.weight")
    out["output_norm.bias"] = get("transformer.ln_f.bias", C)
    if not config.tie_weights:
        out["output.weight"] = get("lm_head.weight")[:V]
    return {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in out.items()}


def tensor_type(name: str, array: np.ndarray, dtype: str) -> str:
    """What one tensor is stored as: f32, f16 or q8_0 (the module docstring's rules)."""
    if dtype == "f32" or array.ndim < 2 or name == "position_embd.weight":
        return "f32"
    if dtype == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        return "q8_0"
    return "f16"


def write_gguf(
    gguf,
    out: Path,
    arch: str,
    config: ModelConfig,
    vocab: GgufVocab,
    tensors: dict[str, np.ndarray],
    dtype: str,
    name: str,
) -> Path:
    """The GGUF file: keys, tokenizer, tensors; written to a temp file beside `out`, then renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file normal permissions
    os.close(fd)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
        writer.add_name(name)
        writer.add_file_type(file_types.get(dtype, gguf.LlamaFileType.MOSTLY_Q8_0))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_head_count_kv(config.n_kv_head or config.n_head)
        writer.add_layer_norm_eps(config.norm_eps)
        writer.add_vocab_size(len(vocab.tokens))
        if arch == "starcoder2":
            writer.add_rope_freq_base(config.rope_base)
            writer.add_rope_dimension_count(config.head_dim)  # every dimension of a head rotates
        vocab.write(writer)
        qtypes = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                  "q8_0": gguf.GGMLQuantizationType.Q8_0}  # fmt: skip
        for tensor_name, array in tensors.items():
            qtype = qtypes[tensor_type(tensor_name, array, dtype)]
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
