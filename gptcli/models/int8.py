"""Int8 weight-only quantization: a GPT's weight matrices as int8 with a scale per output row.

    quantize_model(model)              # in place: every Linear, the head and the token table -> int8
    model = empty_int8_model(config)   # the same layers, empty: what an int8 checkpoint loads into

At batch 1 a decode step reads every weight once and does two flops per weight read, so its speed
is the memory's: int8 weights are a quarter of fp32's bytes. Each row w of a weight matrix (out, in)
becomes q = round(w / s) in -127..127 with s = max|w| / 127 (symmetric, per output channel, as
gpt-fast's WeightOnlyInt8QuantHandler), so |w - q s| <= s / 2 elementwise. The scale is rounded up
to a bfloat16 value (kept in fp32): torch's CPU kernel multiplies by a bf16 scale, and an exact one
adds no error of its own. Activations, norms, biases, positions and the KV cache stay fp32 (or the
engine's bf16/fp16).

The head and the token table: GPT-2 ties them, and the head is a third of GPT-2-124M's weights, so it
is quantized too, and the embedding reads the same int8 table, a row at a time (q[id] * s[id]):
one copy, as in the float model. An untied table becomes int8 rows of its own.

The product y = x (q s)^T + b:
- on a CPU, a kernel that streams the int8 rows from memory and widens them to fp32 in registers:
  ours (int8_matmul.cpp, built on first use; gptcli.models.int8_kernel) on x86 CPUs with AVX-512 or
  AVX2, fp32 activations and sums; elsewhere torch._weight_int8pack_mm (bf16 activations). Both are
  few-row kernels: past KERNEL_MAX_TOKENS tokens per sequence (a long prefill, `gpt eval`'s windows)
  the weight is dequantized to the activations' dtype and multiplied by BLAS instead. The choice
  depends on the tokens of one sequence only, so a row gives the same values alone or in a batch.
- elsewhere (CUDA), the weight cast to the activations' dtype, then a matmul and the scale: under
  torch.compile (--compile) Inductor fuses the cast into the matmul (gpt-fast's way). Unmeasured:
  no GPU was lent while it was written.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.models.int8_kernel import cpu_isa, int8_matmul

KIND = "int8"
# what an int8 checkpoint's config.json records under "quantization" (gpt quantize writes it)
RECORD = {
    "kind": KIND,
    "scheme": "symmetric per output row: weight = int8 * scale (fp32, a bfloat16 value)",
    "layers": "every Linear, the head and the token embedding (one table when tied)",
}
KERNEL_MAX_TOKENS = 32  # tokens per sequence up to which the CPU's int8 kernel runs (see above)
_BF16_ROUND_UP = 1 + 2**-8  # bf16 rounds to nearest within 2**-9: this much up first keeps s >= max|w|/127


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """(out, in) float weight -> int8 (out, in), fp32 scale (out,): w ~ q * scale[:, None]."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)  # (out,)
    scale = (amax / 127 * _BF16_ROUND_UP).to(torch.bfloat16).float()
    scale = torch.where(amax > 0, scale, torch.ones_like(scale))  # an all-zero row: zeros at any scale
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """int8 (out, in), scale (out,) -> the (out, in) weight they stand for."""
    return q.to(dtype) * scale.to(dtype)[:, None]


def int8_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., in) times the int8 weight q (out, in) with row scales (out,), plus bias -> (..., out)."""
    few_tokens = x.dim() < 3 or x.size(-2) <= KERNEL_MAX_TOKENS
    if x.is_cpu and few_tokens and (isa := cpu_isa()):  # ours: fp32; a compiled step calls it as it is
        if x.dtype == scale.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
            # an fp32 model's: no casts (~1 us each, 49 products a token)
            return int8_matmul(x.contiguous(), q, scale, bias, isa)  # (..., out)
        b = None if bias is None else bias.float()
        return int8_matmul(x.float().contiguous(), q, scale.float(), b, isa).to(x.dtype)
    # Inductor cannot lower torch's CPU kernel (a compiled step): there it compiles the dequantize-matmul
    if x.device.type == "cpu" and few_tokens and not torch.compiler.is_compiling():
        # torch's: a contiguous 2-D bf16 x (a strided one crashes it on AVX-512), bf16 scales
        x2 = x.reshape(-1, x.size(-1)).to(torch.bfloat16).contiguous()  # (rows, in)
        y = torch._weight_int8pack_mm(x2, q, scale.to(torch.bfloat16))  # (rows, out)
        y = y.to(x.dtype).view(*x.shape[:-1], q.size(0))
    else:
        y = F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)  # compiled on CUDA: one fused kernel
    return y if bias is None else y + bias.to(x.dtype)


class QuantizedLinear(nn.Module):
    """nn.Linear with an int8 weight (out, in) and a scale per output row; no gradients."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # a Parameter (frozen), so it counts in num_params and moves with the model like a weight
        int8 = torch.empty(out_features, in_features, dtype=torch.int8, device=device)
        self.weight = nn.Parameter(int8, requires_grad=False)
        self.register_buffer("scale", torch.empty(out_features, device=device))  # (out,)
        self.bias = (
            nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        )

    @classmethod
    def of(cls, linear: nn.Linear) -> "QuantizedLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device)
        q, scale = quantize_rows(linear.weight)
        with torch.no_grad():
            layer.weight.copy_(q)
            layer.scale.copy_(scale)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:  # (B, T, in) -> (B, T, out)
        return int8_linear(x, self.weight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class QuantizedEmbedding(nn.Module):
    """A token table read row by row from int8 rows and their scales (a tied head's own)."""

    def __init__(self, weight: nn.Parameter, scale: Tensor):
        super().__init__()
        self.weight = weight  # (V, C) int8
        self.register_buffer("scale", scale)  # (V,), the model's float dtype

    @classmethod
    def of(cls, embedding: nn.Embedding) -> "QuantizedEmbedding":
        q, scale = quantize_rows(embedding.weight)
        return cls(nn.Parameter(q, requires_grad=False), scale)

    def forward(self, ids: Tensor) -> Tensor:  # (B, T) -> (B, T, C)
        return self.weight[ids].to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantizedLinear) for m in model.modules())


def quantize_model(model: nn.Module, fill: bool = True) -> nn.Module:
    """In place: every nn.Linear -> QuantizedLinear, the token table -> QuantizedEmbedding (the head's
    own when tied). fill=False: empty layers of the same shapes, to load an int8 checkpoint into. -> model"""
    check_quantizable(model)
    tied = model.transformer.wte.weight is model.lm_head.weight
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, attr = name.rpartition(".")
            if fill:
                layer = QuantizedLinear.of(module)
            else:
                layer = QuantizedLinear(module.in_features, module.out_features, module.bias is not None)
            setattr(model.get_submodule(parent), attr, layer)
    wte, head = model.transformer.wte, model.lm_head
    if tied:
        model.transformer.wte = QuantizedEmbedding(head.weight, head.scale)
    elif fill:
        model.transformer.wte = QuantizedEmbedding.of(wte)
    else:
        empty = torch.empty(wte.weight.shape, dtype=torch.int8)
        model.transformer.wte = QuantizedEmbedding(
            nn.Parameter(empty, requires_grad=False), torch.empty(len(empty))
        )
    return model


def check_quantizable(model: nn.Module) -> None:
    """A plain GPT, not yet quantized; a one-line error otherwise."""
    from gptcli.models.lora import has_lora  # (lora imports the models package: imported when used)

    if getattr(getattr(model, "config", None), "arch", None) != "gpt":
        raise GptError(f"int8 quantization is for the GPT; this model is {type(model).__name__}")
    if is_quantized(model):
        raise GptError("the model is int8 already")
    if has_lora(model):
        raise GptError("the model has LoRA adapters: merge them first (gptcli.models.lora.merge_lora)")


def empty_int8_model(config: ModelConfig) -> nn.Module:
    """An int8 GPT of this shape on the CPU, its weights allocated but not set: to load a checkpoint into."""
    from gptcli.models import build_model

    return quantize_model(build_model(config, empty=True), fill=False)
