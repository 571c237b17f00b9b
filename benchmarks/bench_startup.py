"""How fast `gpt` starts: ours against a bare `python -c "import typer, rich, pydantic"`, same run.

    python benchmarks/bench_startup.py [--runs 15]

Each command runs --runs times in a fresh process (after one warm-up run each, so the disk cache is
warm for all); the median wall time and the peak resident memory of the process are printed, with
our time as a ratio of the bare import's. The target (issue 11): `gpt --version` at most 1.5x.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BARE = [sys.executable, "-c", "import typer, rich, pydantic"]


def gpt_command() -> list[str]:
    """The `gpt` script beside this interpreter (the venv's), else `python -m gptcli`."""
    script = Path(sys.executable).with_name("gpt")
    if script.is_file():
        return [str(script)]
    found = shutil.which("gpt")
    return [found] if found else [sys.executable, "-m", "gptcli"]


def run_once(argv: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one run of argv, output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def measure(argv: list[str], runs: int) -> tuple[float, int]:
    run_once(argv)  # warm-up
    results = [run_once(argv) for _ in range(runs)]
    return statistics.median(s for s, _ in results), max(m for _, m in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    gpt = gpt_command()
    cases = {
        'python -c "import typer, rich, pydantic"': BARE,
        "gpt --version": [*gpt, "--version"],
        "gpt --help": [*gpt, "--help"],
        "gpt train --help": [*gpt, "train", "--help"],
        "gpt tokenizer --help": [*gpt, "tokenizer", "--help"],
    }
    bare_seconds = None
    print(f"{'command':<44} {'median':>9} {'vs bare':>8} {'peak RSS':>9}")
    for name, argv in cases.items():
        seconds, rss = measure(argv, args.runs)
        bare_seconds = bare_seconds or seconds
        print(f"{name:<44} {seconds * 1000:>7.0f}ms {seconds / bare_seconds:>7.2f}x {rss / 1e6:>7.0f}MB")


if __name__ == "__main__":
    main()
