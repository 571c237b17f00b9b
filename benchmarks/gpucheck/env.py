"""The env section: torch, CUDA, the GPU, bf16 support, free memory and package versions, probed in a
subprocess (the check itself never imports torch)."""

from typing import Any

from gpucheck.base import CheckFailed, Context, Step, StepRun
from gpucheck.outputs import last_json

ENV_SCRIPT = r"""
import importlib, json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "packages": {}}
for name in ("triton", "transformers", "pydantic", "pydantic_core", "typer", "rich", "tiktoken", "safetensors",
             "numpy", "pytest", "hypothesis"):
    try:
        info["packages"][name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as e:
        info["packages"][name] = None
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    major, minor = torch.cuda.get_device_capability()
    info.update(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(), capability=f"{major}.{minor}",
                bf16=torch.cuda.is_bf16_supported(), free_gib=round(free / 2**30, 1), total_gib=round(total / 2**30, 1),
                driver=getattr(torch._C, "_cuda_getDriverVersion", lambda: None)())
try:  # needs pydantic: the check names it if it is missing
    from gptcli.runtime import peak_flops
    peak = peak_flops(torch.device("cuda")) if torch.cuda.is_available() else None
    info["peak_bf16_tflops"] = peak and peak / 1e12  # what MFU is measured against (None: not a known GPU)
except Exception as e:
    info["gptcli_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(info))
"""


def env_steps(ctx: Context, left: float) -> list[Step]:
    def check(run: StepRun) -> dict[str, Any]:
        info = last_json(run.output)
        missing = [name for name, version in info["packages"].items() if version is None]
        info["missing_packages"] = missing
        if "pydantic" in missing:
            raise CheckFailed(
                "pydantic is missing: make gpu-wheels where there is a package index, copy .whl/"
            )
        if "gptcli_error" in info:
            raise CheckFailed(f"import gptcli failed: {info['gptcli_error']}")
        if ctx.cuda and not info["cuda_available"]:
            raise CheckFailed(f"--device {ctx.device}: torch sees no CUDA GPU (torch {info['torch']})")
        if ctx.cuda and not info.get("bf16"):
            raise CheckFailed(f"{info.get('gpu')}: no bf16 support")
        return info

    return [Step("torch and the GPU", [ctx.python, "-c", ENV_SCRIPT], check)]


def env_summary(f: dict[str, Any]) -> str:
    if not f:
        return ""
    gpu = (
        f"{f['gpu']} x{f['gpus']}, sm {f['capability']}, {f['free_gib']}/{f['total_gib']} GiB free"
        if f.get("gpu")
        else "no GPU"
    )
    return f"torch {f['torch']} (CUDA {f['cuda_build']}), {gpu}, bf16 {f.get('bf16', False)}"
