"""What every part of the tokenizer benchmark uses: the MB it counts in, progress lines, timing."""

import sys
import time
from collections.abc import Callable

MB = 1_000_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(fn: Callable, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out
