"""The int8 product of a decode step on x86 CPUs: int8_matmul.cpp, built on first use.

    isa = cpu_isa()                            # 0 where it cannot run: then torch._weight_int8pack_mm
    y = int8_matmul(x, q, scale, bias, isa)    # x (..., in) fp32, q (out, in) int8 -> (..., out) fp32

The kernel streams int8 weights from memory at 1.9x the speed of torch's `_weight_int8pack_mm`
on GPT-2-124M's matrices (2-core Xeon; benchmarks/README.md, "Int8 decoding"; only this CPU was
measured). It is C++ built once per machine with
torch's cpp_extension (a C++ compiler and ninja; ~10 s, kept in torch's extension folder,
TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions), and it needs AVX-512 or AVX2 + FMA. Where it
cannot be built or run (no compiler, an ARM CPU) torch's kernel is used, and the reason is said once.

The environment setting GPT_INT8_KERNEL picks one: `auto` (default: the widest the CPU has),
`avx512`, `avx2` or `torch`. `auto` goes no wider than torch's own kernels (ATEN_CPU_CAPABILITY):
with `default` it is torch's kernel, the path of a CPU without either. The tests run every one this
CPU can.
"""

import functools
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

from gptcli.errors import GptError

SETTING = "GPT_INT8_KERNEL"
CHOICES = {"auto": -1, "avx2": 1, "avx512": 2, "torch": 0}  # -> the isa number int8_matmul.cpp takes
SOURCE = Path(__file__).with_name("int8_matmul.cpp")
X86 = platform.machine().lower() in ("x86_64", "amd64")  # the only CPUs the kernel is written for
NAME = "gptcli_int8"


@torch.compiler.assume_constant_result  # torch.compile calls it while tracing and keeps the number
def cpu_isa() -> int:
    """The kernel GPT_INT8_KERNEL picks (or the widest the CPU runs): 2 AVX-512, 1 AVX2, 0 torch's own."""
    choice = os.environ.get(SETTING, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise GptError(f"{SETTING}={choice!r}: expected one of {', '.join(CHOICES)}")
    return _isa(choice)


def int8_matmul(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None, isa: int) -> Tensor:
    """x (..., in) fp32, q (out, in) int8, scale (out,) fp32, bias (out,) fp32 or None -> (..., out)
    fp32, with the kernel cpu_isa() names (not 0)."""
    return torch.ops.gptcli_int8.int8_matmul.default(x, q, scale, bias, isa)


@functools.cache
def _isa(choice: str) -> int:
    if choice == "torch":
        return 0
    if not X86:
        return _refuse(choice, f"the kernel is for x86 CPUs, this one is {platform.machine()}")
    # auto: no wider than torch's own kernels run (ATEN_CPU_CAPABILITY=default stands for a plain CPU)
    capability = torch.backends.cpu.get_cpu_capability()
    allowed = {"AVX512": 2, "AVX2": 1}.get(capability, 0)
    if choice == "auto" and allowed == 0:
        return _refuse(choice, f"torch's CPU capability is {capability}")
    ops = build()
    if ops is None:
        return 0
    best = int(ops.int8_isa())  # what this CPU runs
    isa = min(best, allowed) if choice == "auto" else CHOICES[choice]
    if isa == 0 or isa > best:
        why = "this CPU has neither AVX-512 nor AVX2 + FMA" if best == 0 else "this CPU cannot run it"
        return _refuse(choice, why)
    return isa


@functools.cache
def build(source: Path = SOURCE, name: str = NAME):
    """torch.ops.gptcli_int8, compiled here the first time (None, said once, where that fails)."""
    from torch.utils import cpp_extension  # (slow to import: only when an int8 model runs)

    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    folder = Path(base) / f"{name}-torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"
    if not any(folder.glob("*.so")):
        print(f"note: building the int8 CPU kernel once (~10 s; kept in {folder})", file=sys.stderr)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if shutil.which("ninja") is None:  # the ninja wheel's, where it is not on PATH (a venv not activated)
            import ninja

            os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
        cpp_extension.load(
            name, [str(source)], extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"], extra_ldflags=["-fopenmp"],
            build_directory=str(folder), is_python_module=False,
        )  # fmt: skip
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:  # no compiler or ninja
        _say(f"it could not be built ({str(e).strip().splitlines()[0][:200]})")
        return None
    return torch.ops.gptcli_int8


def _refuse(choice: str, why: str) -> int:
    """auto: say once why torch's kernel runs (-> 0); a kernel asked for by name: an error."""
    if choice != "auto":
        raise GptError(f"{SETTING}={choice}: {why}")
    _say(why)
    return 0


def _say(why: str) -> None:
    print(f"note: int8 products use torch's kernel: {why}", file=sys.stderr)
