"""Where and how the arithmetic runs: device, precision, autocast, peak FLOPs, MFU.

    device = resolve_device("auto")                  # cuda if there is one, else mps, else cpu
    precision = resolve_precision("auto", device)    # bf16 on a GPU that has it, else fp32
    with autocast(device, precision): ...            # a no-op context in fp32

Training and generation both import this module; neither imports the other.
"""

from contextlib import AbstractContextManager, nullcontext

import torch

from gptcli.config import PRECISIONS
from gptcli.errors import GptError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_FLOPS = {  # dense bf16 tensor-core peaks, for MFU
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}


def resolve_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' -> a device that exists here (else a one-line error)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GptError(f"--device {name}: no CUDA GPU is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GptError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    if device.type == "mps" and not _mps_available():
        raise GptError(f"--device {name}: Apple MPS is not available")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 on a GPU that supports it, else fp32; fp16 only on CUDA."""
    if name not in PRECISIONS:
        raise GptError(f"unknown precision {name!r}: use {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise GptError("fp16 needs a CUDA GPU (use bf16 or fp32)")
    return name


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed precision for `precision` (a resolved one); fp32 runs as it is."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, when it is one we know; None on CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def mfu(flops_per_token: float, tokens_per_second: float, peak: float) -> float:
    """Model FLOPs utilization: the achieved FLOP/s as a fraction of the device's peak."""
    return flops_per_token * tokens_per_second / peak
