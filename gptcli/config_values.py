"""Option values the configs check that are not a plain type: device names and durations.

check_device("cuda:1")   -> "cuda:1" (whether this machine has it is checked when it is used)
parse_duration("15m")    -> 900.0
"""

import re

DEVICE_PATTERN = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


def check_device(name: str) -> str:
    """A device name as --device takes it (whether this machine has it is checked when it is used)."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return name


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '1.5h' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise ValueError(
            f"{text!r} is not a duration: use seconds or a number with s, m or h (e.g. 90, 15m, 1.5h)"
        )
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
