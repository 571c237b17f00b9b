"""What every section is made of: the context its commands run in, its steps and the errors a
step's check raises."""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SONNETS = REPO / "toy_data" / "sonnets.txt"
SHAKESPEARE = REPO / "toy_data" / "shakespeare.txt"


class CheckFailed(Exception):
    """A step ran but its output is wrong: the section fails with this message."""


class SectionSkipped(Exception):
    """The section does not apply here (CPU only: e.g. the CUDA tests skip themselves)."""


@dataclass
class Context:
    device: str
    tiny: bool
    work: Path
    python: str = sys.executable

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def gpt(self, *args: str) -> list[str]:
        return [self.python, "-m", "gptcli", *args]


@dataclass
class StepRun:
    """What a step's check gets: the command's whole output (stdout and stderr) and its wall time."""

    output: str
    seconds: float


@dataclass
class Step:
    label: str
    argv: list[str]
    check: Callable[[StepRun], dict[str, Any]] = lambda run: {}
    exit_codes: tuple[int, ...] = (0,)  # the exit codes that pass on to `check`


@dataclass
class Section:
    name: str
    title: str
    budget: float  # seconds, before scaling to --budget
    steps: Callable[[Context, float], list[Step]]  # (context, seconds left to the deadline)
    summary: Callable[[dict[str, Any]], str] = lambda figures: ""


@dataclass
class Timer:
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start
