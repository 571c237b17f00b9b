"""Cutting text into pre-token chunks with a split pattern, twice as fast on ASCII text.

    >>> Splitter(GPT4_PATTERN).findall("Hello world!! 123")
    ['Hello', ' world', '!!', ' ', '123']

The split patterns use Unicode classes (\\p{L}, \\p{N}), which only the `regex` module knows. On
ASCII text those classes are plain character sets, and Python's own `re` (possessive quantifiers
since 3.11) runs the same pattern spelled with those sets about twice as fast. `regex`'s \\s on
ASCII is [\\t\\n\\x0b\\x0c\\r ]; `re`'s would add \\x1c-\\x1f, so the sets are spelled out.

Most text is ASCII with a few other characters here and there (a name, a symbol in a comment), so
a text is cut into ASCII runs and the stretches around its other characters, at "safe cuts" (a
space right after a letter): with GPT-2's and GPT-4's patterns no chunk spans such a point and no
chunk before it depends on what follows (see gptcli.data.corpus), so the chunks of the pieces are
the chunks of the whole. Other patterns always run in `regex`. tests/tokenizers/test_pretokenize.py
checks both paths against `regex` on the whole text.
"""

import json
import os
import queue
import re
import string
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import regex

from gptcli.errors import GptError
from gptcli.tokenizers.patterns import GPT2_PATTERN, GPT4_PATTERN

_L, _N, _S = "A-Za-z", "0-9", r"\t\n\x0b\x0c\r "  # \p{L}, \p{N} and \s on ASCII characters
ASCII_PATTERNS = {
    GPT2_PATTERN: (
        rf"""'(?:[sdmt]|ll|ve|re)| ?[{_L}]++| ?[{_N}]++| ?[^{_S}{_L}{_N}]++|[{_S}]++$|[{_S}]+(?![^{_S}])"""
        rf"""|[{_S}]"""
    ),
    GPT4_PATTERN: (
        rf"""'(?i:[sdmt]|ll|ve|re)|[^\r\n{_L}{_N}]?+[{_L}]++|[{_N}]{{1,3}}+| ?[^{_S}{_L}{_N}]++[\r\n]*+"""
        rf"""|[{_S}]++$|[{_S}]*[\r\n]|[{_S}]+(?![^{_S}])|[{_S}]"""
    ),
}
_ASCII_LETTERS = frozenset(string.ascii_letters)
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
_SAFE_CUT = re.compile(r"(?<=[A-Za-z]) ")  # a space right after a letter (ASCII ones suffice)
Sized = TypeVar("Sized", str, bytes)  # texts (sized in characters) or byte words (in bytes)


class Splitter:
    """`findall(text)`: the pattern's chunks of the text, as `regex.findall` gives them."""

    def __init__(self, pattern: str):
        self.full = regex.compile(pattern)
        ascii_pattern = ASCII_PATTERNS.get(pattern)
        self.ascii = re.compile(ascii_pattern) if ascii_pattern else None

    def findall(self, text: str) -> list[str]:
        if self.ascii is None:
            return self.full.findall(text)
        if text.isascii():
            return self.ascii.findall(text)
        chunks: list[str] = []
        pos = 0  # text[:pos] is done
        while (other := _NOT_ASCII.search(text, pos)) is not None:
            start = _last_safe_cut(text, pos, other.start())
            after = _SAFE_CUT.search(text, other.end())
            end = after.start() if after else len(text)
            chunks += self.ascii.findall(text, pos, start)
            chunks += self.full.findall(text[start:end])
            pos = end
        chunks += self.ascii.findall(text, pos)
        return chunks


def _last_safe_cut(text: str, lo: int, hi: int) -> int:
    """The last safe cut in text[lo:hi], else lo."""
    while (i := text.rfind(" ", lo + 1, hi)) > lo:
        if text[i - 1] in _ASCII_LETTERS:
            return i
        hi = i
    return lo


# --- counting chunks in worker processes ---------------------------------------------------------
#
# Each worker is `python -m gptcli.tokenizers.pretokenize PATTERN`: a fresh interpreter that loads
# only this module (~15 MB), not a fork of the caller, whose imports every forked worker would carry
# in its resident memory (and copy page by page as Python touches the objects). A worker reads
# texts from stdin (each an 8-byte length, then UTF-8), keeps one running count, and at the end of
# its input writes it as one JSON object; the caller adds the workers' counts up. So the caller never
# holds more than the running total and the tasks in flight, and no process outlives the counting.


def count_in_workers(
    tasks: Iterable[list[str]], pattern: str, workers: int, task_done: Callable[[list[str]], None]
) -> Counter:
    """Count the chunks of every text of every task in `workers` processes; `task_done(task)` is
    called as each task is handed over (for progress)."""
    argv, env = worker_command(__name__, pattern)
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) for _ in range(workers)
    ]
    handoff: queue.Queue = queue.Queue(maxsize=workers)  # bounded: reading never runs far ahead
    feeders = [threading.Thread(target=_feed, args=(handoff, proc.stdin), daemon=True) for proc in procs]
    for feeder in feeders:
        feeder.start()
    try:
        for task in tasks:
            handoff.put(task)
            task_done(task)
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    finally:
        for _ in feeders:
            handoff.put(None)
        for feeder in feeders:
            feeder.join()
    counts: Counter = Counter()
    for proc in procs:
        out = proc.stdout.read()
        if proc.wait() != 0:
            raise GptError(f"a pre-tokenizing worker process failed (exit code {proc.returncode})")
        counts.update(json.loads(out))
    return counts


def group_texts(texts: Iterable[Sized], chars: int) -> Iterator[tuple[list[Sized], int]]:
    """Consecutive texts grouped into (texts, characters) of about `chars` characters each
    (byte strings: of about `chars` bytes): the tasks handed to workers, or batches."""
    group: list[Sized] = []
    size = 0
    for text in texts:
        group.append(text)
        size += len(text)
        if size >= chars:
            yield group, size
            group, size = [], 0
    if group:
        yield group, size


def worker_command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """(argv, env) to run `module` of this package as a worker process: this interpreter, -P (the
    cwd is not on its path: a regex.py beside the corpus cannot shadow the module), and this
    package's folder first on PYTHONPATH."""
    path = [PACKAGE_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return [sys.executable, "-P", "-m", module, *args], dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def _feed(handoff: queue.Queue, stdin) -> None:
    """In a thread of the caller: write tasks to one worker until the None that ends them."""
    gone = False  # the worker died: take the tasks still, write nothing (the caller sees its exit code)
    while (task := handoff.get()) is not None:
        for text in task:
            data = text.encode("utf-8", "surrogatepass")  # JSON records may hold lone surrogates
            try:
                if not gone:
                    stdin.write(len(data).to_bytes(8, "little") + data)
            except OSError:
                gone = True
    try:
        stdin.close()
    except OSError:
        pass


def _worker_main(pattern: str) -> None:
    splitter = Splitter(pattern)
    counts: Counter = Counter()
    stdin = sys.stdin.buffer
    while header := stdin.read(8):
        text = stdin.read(int.from_bytes(header, "little")).decode("utf-8", "surrogatepass")
        counts.update(splitter.findall(text))  # each text on its own: no chunk spans two
    sys.stdout.write(json.dumps(counts))


PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds gptcli/

if __name__ == "__main__":
    _worker_main(sys.argv[1])
