"""fp32 decoding on a CPU: the weight layout and the BLAS that multiply by the weights fastest.

    prepare_for_cpu(model)   # Engine does this for an fp32 model on a CPU (relayout=True)

A decode step multiplies a few rows (one per sequence) by every weight matrix, so its speed is that
of the BLAS's few-row products. Two things measured on the CPUs here (benchmarks/README.md) decide
how those run:

- input_major: every Linear weight is stored as the transpose of a contiguous (in, out) matrix
  (HF's Conv1D layout): same shape and values, other strides. MKL's fp32 few-row products read it
  15-25% faster; its bf16 ones are far slower with it, so fp32 only.
- On an AMD CPU, torch's MKL takes a generic code path: at 8 rows its products run at half the speed
  of the OpenBLAS that numpy ships (the same at 1 row, where both wait on memory). So there the
  Linear layers with at least OPENBLAS_MIN_WEIGHTS weights become OpenBlasLinear: no-grad fp32 CPU
  products go through numpy.matmul, the input-major weight being a contiguous (in, out) array for
  it, shared, not copied. Elsewhere nothing changes (Intel CPUs are MKL's own target; no Intel CPU
  was measured here).

The environment setting GPT_CPU_MATMUL forces either path on any machine: `torch` keeps torch's
products, `openblas` puts every Linear layer (whatever its size) through numpy's BLAS, `auto` (the
default) decides as above. The tests run both paths, so neither is tested only on the CPU it suits.

While such an engine generates, torch's own intra-op threads are set to 1 (torch_threads): the
two thread pools spinning on the same cores made a decode step 3x slower than either alone.
With compile=True nothing but the layout changes (torch.compile does not trace numpy's BLAS).

The products give the same values up to float rounding (another summation order): a greedy
text can differ from a plain model's where two tokens' logits tie to ~1e-6.
"""

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gptcli.errors import GptError

CPU_MATMUL = "GPT_CPU_MATMUL"  # the environment setting: auto | torch | openblas
CPU_MATMUL_CHOICES = ("auto", "torch", "openblas")


def prepare_for_cpu(model: torch.nn.Module, openblas: bool = True) -> None:
    """In place: input-major Linear weights, and (openblas) OpenBLAS products where that BLAS is the
    faster one (Engine passes openblas=False with compile=True)."""
    input_major(model)
    choice = cpu_matmul_choice()
    if not openblas or choice == "torch" or (choice == "auto" and not openblas_is_faster()):
        return
    smallest = 0 if choice == "openblas" else OPENBLAS_MIN_WEIGHTS
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.numel() >= smallest:
            module.__class__ = OpenBlasLinear  # same module, same parameters: only forward differs


def cpu_matmul_choice() -> str:
    """GPT_CPU_MATMUL from the environment: "auto" (unset or empty), "torch" or "openblas"."""
    choice = os.environ.get(CPU_MATMUL, "").strip().lower() or "auto"
    if choice not in CPU_MATMUL_CHOICES:
        raise GptError(f"{CPU_MATMUL}={choice!r}: expected one of {', '.join(CPU_MATMUL_CHOICES)}")
    return choice


# a numpy product costs ~30 us more per call than torch's (measured, 1 row, 1 torch thread): only
# large weights gain (768 x 2304: 152 vs 231 us; 768 x 768: 82 vs 88; 256 x 768: 72 vs 44; 128 x 384:
# 55 vs 22), so GPT-2's layers go through OpenBLAS and a small model keeps torch's products and threads
OPENBLAS_MIN_WEIGHTS = 1 << 19


def input_major(model: torch.nn.Module) -> None:
    """Store every Linear weight (out, in) as the transpose of a contiguous (in, out) matrix. A tied
    embedding shares the lm_head's weight and reads its rows strided: a few hundred values a token."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()


class OpenBlasLinear(torch.nn.Linear):
    """nn.Linear whose no-grad fp32 CPU forward is numpy.matmul (OpenBLAS); anything else, and
    anything torch.compile traces, is nn.Linear's own."""

    _arrays = None  # ((weight, bias) data pointers, weight as (in, out) ndarray, bias ndarray or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or (arrays := self._numpy_arrays()) is None
        ):
            return super().forward(x)
        _, weight, bias = arrays
        out = np.matmul(x.reshape(-1, x.size(-1)).numpy(), weight)  # (B*T, out): one product, not one per row
        if bias is not None:
            out += bias  # in place, in numpy: no torch dispatch
        return torch.from_numpy(out).view(*x.shape[:-1], out.shape[-1])

    def _numpy_arrays(self):
        """The weight (as its (in, out) transpose) and bias as ndarrays sharing their memory, made
        once (not on every call: a decode step makes ~50 calls) and again only if either tensor's
        memory changed (`.to()`, `.data =`); None when the weight is not input-major fp32."""
        weight, bias = self.weight, self.bias
        key = (weight.data_ptr(), 0 if bias is None else bias.data_ptr())
        if self._arrays is None or self._arrays[0] != key:
            w = weight.detach().t()
            if (
                weight.dtype != torch.float32
                or not w.is_contiguous()
                or (bias is not None and bias.dtype != torch.float32)
            ):
                return None
            self._arrays = (key, w.numpy(), None if bias is None else bias.detach().numpy())
        return self._arrays


def uses_openblas(model: torch.nn.Module) -> bool:
    return any(isinstance(module, OpenBlasLinear) for module in model.modules())


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to n inside (None: left alone), as they were after. Put back only
    if still n: two generations interleaved and ended out of order leave the count as it first was."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)  # ~0.2 us
    try:
        yield
    finally:
        if torch.get_num_threads() == n:
            torch.set_num_threads(before)


@functools.cache
def openblas_is_faster() -> bool:
    """True on an AMD x86 CPU with a numpy built on OpenBLAS (pip's numpy wheels are)."""
    return cpu_vendor() == "AuthenticAMD" and numpy_blas().startswith("scipy-openblas")


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id ("GenuineIntel", "AuthenticAMD"), or "" where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def numpy_blas() -> str:
    """The name of the BLAS numpy was built with ("scipy-openblas", "accelerate", ...), or ""."""
    try:
        return str(np.__config__.CONFIG["Build Dependencies"]["blas"]["name"])
    except (AttributeError, KeyError, TypeError):
        return ""
