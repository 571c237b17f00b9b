"""The tests section: `python -m pytest tests/gpu` (the CUDA correctness tests) and its summary line."""

import re
from typing import Any

from gpucheck.base import CheckFailed, Context, SectionSkipped, Step, StepRun


def tests_steps(ctx: Context, left: float) -> list[Step]:
    def check(run: StepRun) -> dict[str, Any]:
        counts = pytest_counts(run.output)
        if counts["passed"] == 0:
            if ctx.cuda:
                raise CheckFailed(f"no CUDA test ran on --device {ctx.device}: {counts}")
            skipped = [line for line in run.output.splitlines() if line.startswith("SKIPPED")]
            raise SectionSkipped(skipped[0] if skipped else f"no test ran: {counts}")
        return counts

    # pyproject's addopts has -q already: -qq would drop the summary line that says what ran
    argv = [ctx.python, "-m", "pytest", "tests/gpu", *"-o addopts= -q -rfEs -p no:cacheprovider".split()]
    argv += ["-W", "ignore::DeprecationWarning"]
    return [Step("pytest tests/gpu", argv, check, exit_codes=(0, 5))]  # 5: nothing collected


def tests_summary(f: dict[str, Any]) -> str:
    return ", ".join(f"{v} {k}" for k, v in f.items() if v)


PYTEST_SUMMARY = re.compile(r"^=*\s*(\d+ [a-z]+(?:, \d+ [a-z]+)*) in [\d.]+s")


def pytest_counts(output: str) -> dict[str, int]:
    """'3 passed, 1 skipped in 4.2s' (pytest's summary line) -> {'passed': 3, 'skipped': 1, ...}."""
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors"), 0)
    for line in reversed(output.splitlines()):
        if match := PYTEST_SUMMARY.match(line.strip()):
            for part in match.group(1).split(", "):
                number, word = part.split(" ")
                word = "errors" if word.startswith("error") else word
                if word in counts:
                    counts[word] = int(number)
            break
    return counts
