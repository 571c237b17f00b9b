"""Training byte-level BPE: count pre-token chunks, then learn merges incrementally.

1. Pre-tokenize: the split pattern cuts the corpus into chunks (" the", "ing", "\\n\\n", ...). Only
   the distinct chunks and their counts matter, so each distinct chunk is stored once as a "word"
   (its UTF-8 bytes) with a count. Large corpora are cut into blocks counted in parallel processes
   (gptcli.tokenizers.pretokenize does the cutting).
2. Learn merges: keep the count of every adjacent pair over all words (weighted by word count), an
   index from each pair to the words that hold it, and a max-heap of pairs. Each step pops the best
   pair, rewrites only the words that contain it, and adjusts the counts of the pairs around each
   rewrite (the words, their counts and the index are gptcli.tokenizers.bpe_words'). Heap entries
   are checked when popped (lazy invalidation): an entry whose count went stale is pushed back
   with the true count. Long words (text without spaces, where a chunk is a whole sentence) are
   dealt out to worker processes that rewrite their share at each step and send back the count
   changes; the heap and the counts stay here, so the merges are the same.

The tie rule, shared by `learn_merges` and `learn_merges_naive`: the pair with the highest count
wins; among equal counts, the smaller left id, then the smaller right id. A pair whose bytes already
exist as a token (two different splits of the same string) is never merged, so every token's byte
string is unique, as tiktoken requires. The same corpus therefore always gives the same merges.
"""

import contextlib
import gc
import heapq
import os
import struct
import subprocess
import sys
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

from gptcli.errors import GptError
from gptcli.tokenizers.bpe_words import Words
from gptcli.tokenizers.pretokenize import Splitter, count_in_workers, group_texts, worker_command

Progress = Callable[[str, int, int], None]  # (stage, done, total)

PARALLEL_MIN_BYTES = 4 << 20  # below this, a process pool costs more than it saves
LONG_WORD_BYTES = 32  # words this long on average (text without spaces) are merged in workers
PARALLEL_MERGE_MIN_BYTES = 1 << 20  # and only when there are this many bytes of them
# small tasks: the few in flight stay a few MB (a str can take 4 bytes a character)
PRETOKENIZE_BLOCK_BYTES = 1 << 18


def count_chunks(
    texts: Iterable[str],
    pattern: str,
    workers: int | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> Counter:
    """Count the pre-token chunks of the texts (documents, or blocks cut at safe points) -> {chunk: count}.

    Each text is pre-tokenized on its own, so chunks never span two texts. Texts are grouped into
    tasks of about PRETOKENIZE_BLOCK_BYTES characters for the worker processes; below
    PARALLEL_MIN_BYTES of text in all, one process counts them. `progress` gets the characters done
    (against `total`, when given).
    """
    workers = workers or os.cpu_count() or 1
    done = 0

    def report(n_chars: int) -> None:
        nonlocal done
        done += n_chars
        if progress:
            progress("pre-tokenizing", min(done, total) if total else done, total or done)

    tasks = group_texts(texts, PRETOKENIZE_BLOCK_BYTES)
    first = deque(_take_chars(tasks, PARALLEL_MIN_BYTES))  # enough text to be worth worker processes?
    if workers > 1 and sum(n for _, n in first) >= PARALLEL_MIN_BYTES:
        tasks = chain(_popping(first), tasks)
        counts = count_in_workers(
            (task for task, _ in tasks),
            pattern,
            workers,
            lambda task: report(sum(map(len, task))),
        )
    else:
        splitter, counts = Splitter(pattern), Counter()
        for task, n in chain(_popping(first), tasks):
            for text in task:  # each text on its own: a chunk never spans two
                counts.update(splitter.findall(text))
            report(n)
    if progress:
        progress("pre-tokenizing", total or done, total or done)
    return counts


def _take_chars(tasks: Iterator[tuple[list[str], int]], chars: int) -> Iterator[tuple[list[str], int]]:
    """Tasks from the front of `tasks` until they hold `chars` characters (or `tasks` ends)."""
    seen = 0
    while seen < chars and (task := next(tasks, None)) is not None:
        seen += task[1]
        yield task


def _popping(items: deque) -> Iterator:
    """The items, each let go as it is taken (a list iterated over would keep them all alive)."""
    while items:
        yield items.popleft()


def chunks_to_words(chunk_counts: Counter) -> tuple[list[bytes], list[int]]:
    """{chunk str: count} -> (words as the chunks' UTF-8 bytes, counts), in a fixed order."""
    return [chunk.encode("utf-8") for chunk in chunk_counts], list(chunk_counts.values())


def learn_merges(
    words: list[bytes] | list[list[int]],
    counts: list[int],
    num_merges: int,
    progress: Progress | None = None,
    workers: int = 1,
) -> list[tuple[int, int]]:
    """The fast incremental trainer: the merges in rank order. `words` is emptied (taken over).

    A word is held as a str with one character per token (chr(id)), so finding a pair in it, and
    merging it, are `str.find` and `str.replace` in C, whatever the word's length; Python only runs
    once per merge site. A pair (a, b) is the int a << shift | b, and a heap entry is one int,
    -count << 2 * shift | pair, so the smallest entry is the tie rule's winner.

    A pair's count only grows in the step that creates its newer token (only pairs with the new
    token gain), so each index list is complete after that step (it is then frozen into a tuple)
    and a pair whose count reaches 0 is gone for good (swept from time to time).

    With `workers` > 1 and long words (text without spaces: a word per sentence), the words are
    dealt out to worker processes that merge them (`_WorkerWords`); this loop keeps the counts.
    """
    shift = (256 + num_merges).bit_length()
    low, top = (1 << shift) - 1, 2 * shift
    index = _index(words, counts, shift, workers)
    pair_counts = index.pair_counts
    heap = [(-n << top) | pair for pair, n in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    known = set(vocab)
    merges: list[tuple[int, int]] = []
    live = len(pair_counts)  # pairs after the last sweep
    with _collector_off(), contextlib.closing(index):
        while len(merges) < num_merges and (pair := _pop_best(heap, pair_counts, top)) is not None:
            a, b = pair >> shift, pair & low
            merged = vocab[a] + vocab[b]
            if merged in known:  # would duplicate an existing token: never merged (see module docs)
                del pair_counts[pair]
                continue
            new_id = len(vocab)
            vocab.append(merged)
            known.add(merged)
            merges.append((a, b))

            created = index.merge(a, b, new_id)
            del pair_counts[pair]
            for p in created:  # pairs with the new id: pushed once, with their final count
                heapq.heappush(heap, (-pair_counts[p] << top) | p)
            if len(pair_counts) > 2 * live:  # many pairs may be dead: forget them
                index.forget_dead()
                live = len(pair_counts)
            if progress and (len(merges) % 256 == 0 or len(merges) == num_merges):
                progress("merging", len(merges), num_merges)
    return merges


def _index(words, counts: list[int], shift: int, workers: int) -> "Words | _WorkerWords":
    """The words, their pair counts and the pair -> words index: in this process, or dealt out to
    `workers` processes when the words are long (text without spaces: a word per sentence)."""
    total = sum(map(len, words))
    long_words = total >= PARALLEL_MERGE_MIN_BYTES and total >= LONG_WORD_BYTES * len(words)
    if workers > 1 and long_words:
        return _WorkerWords(words, counts, shift, workers)
    return Words(words, counts, shift)


def _pop_best(heap: list[int], pair_counts: dict[int, int], top: int) -> int | None:
    """Pop the pair the tie rule picks among the current counts (None: no pair left). Entries are
    checked as they come (lazy invalidation): a dead pair's is dropped, and a stale one (its count
    dropped since it was pushed) goes back with the true count."""
    while heap:
        entry = heapq.heappop(heap)
        pair = entry & ((1 << top) - 1)
        n = pair_counts.get(pair, 0)
        if n <= 0:
            continue
        if -(entry >> top) != n:
            heapq.heappush(heap, (-n << top) | pair)
            continue
        return pair
    return None


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """The cyclic garbage collector off inside: the trainer holds millions of containers, none in a
    cycle, which the collector would only rescan again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _WorkerWords:
    """The words dealt out (round robin) to worker processes, `python -P -m gptcli.tokenizers.bpe_train`.

    Each worker holds its share as a `Words` (gptcli.tokenizers.bpe_words) and answers each merge with the changes to the pair
    counts of its words (8-byte ints: a count of entries, the pairs, the changes); this process adds
    them up into `pair_counts`, the whole corpus's. The messages are plain arrays, no pickle.
    """

    def __init__(self, words, counts: list[int], shift: int, workers: int):
        self.shift, self.low = shift, (1 << shift) - 1
        argv, env = worker_command(__name__)
        self.procs = [
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            for _ in range(workers)
        ]
        for w, proc in enumerate(self.procs):
            mine = [bytes(word) for word in words[w::workers]]
            header = struct.pack("<qq", shift, len(mine))
            lengths, my_counts = array("q", map(len, mine)), array("q", counts[w::workers])
            proc.stdin.write(header + lengths.tobytes() + my_counts.tobytes() + b"".join(mine))
            proc.stdin.flush()
        words.clear()
        self.pair_counts: dict[int, int] = {}
        for proc in self.procs:
            self._add(proc)

    def merge(self, a: int, b: int, new_id: int) -> Iterable[int]:
        message = _STEP.pack(a, b, new_id)
        for proc in self.procs:  # all workers merge at once
            proc.stdin.write(message)
            proc.stdin.flush()
        gained = [self._add(proc) for proc in self.procs]
        return {p for pairs in gained for p in pairs if p >> self.shift == new_id or p & self.low == new_id}

    def _add(self, proc) -> array:
        """Add one worker's message of count changes to pair_counts -> its pairs."""
        pairs, changes = _read_counts(proc.stdout)
        get = self.pair_counts.get
        for p, change in zip(pairs, changes):
            self.pair_counts[p] = get(p, 0) + change
        return pairs

    def forget_dead(self) -> None:  # (the workers keep their index entries of dead pairs: never used)
        for pair in [p for p, n in self.pair_counts.items() if n == 0]:
            del self.pair_counts[pair]

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.write(_STEP.pack(-1, -1, -1))
                proc.stdin.close()
            except OSError:
                pass
            if proc.wait() != 0:
                raise GptError(f"a merging worker process failed (exit code {proc.returncode})")


_STEP = struct.Struct("<qqq")  # a, b, new_id; a = -1 ends the worker


def _write_counts(out, counts: dict) -> None:
    pairs, changes = array("q", counts.keys()), array("q", counts.values())
    out.write(struct.pack("<q", len(pairs)) + pairs.tobytes() + changes.tobytes())
    out.flush()


def _read_counts(stream) -> tuple[array, array]:
    (n,) = struct.unpack("<q", _read_exactly(stream, 8))
    pairs, changes = array("q"), array("q")
    pairs.frombytes(_read_exactly(stream, 8 * n))
    changes.frombytes(_read_exactly(stream, 8 * n))
    return pairs, changes


def _read_exactly(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise GptError("a merging worker process stopped early")
    return data


def _merge_worker_main() -> None:
    """A worker of `_WorkerWords`: read its words, send their pair counts, then answer each merge."""
    gc.disable()  # as in learn_merges
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    shift, n_words = struct.unpack("<qq", _read_exactly(stdin, 16))
    lengths, counts = array("q"), array("q")
    lengths.frombytes(_read_exactly(stdin, 8 * n_words))
    counts.frombytes(_read_exactly(stdin, 8 * n_words))
    blob, words, start = _read_exactly(stdin, sum(lengths)), [], 0
    for length in lengths:
        words.append(blob[start : start + length])
        start += length
    del blob
    mine = Words(words, list(counts), shift)
    _write_counts(stdout, mine.pair_counts)
    while (step := _STEP.unpack(_read_exactly(stdin, 24)))[0] >= 0:
        mine.pair_counts = defaultdict(int)  # this merge's changes only (missing keys made in C)
        mine.merge(*step)
        _write_counts(stdout, mine.pair_counts)


def learn_merges_naive(words: list[list[int]], counts: list[int], num_merges: int) -> list[tuple[int, int]]:
    """Reference trainer for tests: recount every pair before every merge. Same tie rule."""
    from gptcli.tokenizers.bpe import merge_pair  # here: merging workers import this module, not bpe's

    words = [list(w) for w in words]
    vocab = [bytes([i]) for i in range(256)]
    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges:
        pair_counts: Counter = Counter()
        for word, n in zip(words, counts):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += n
        known = set(vocab)
        candidates = [
            (-n, pair) for pair, n in pair_counts.items() if vocab[pair[0]] + vocab[pair[1]] not in known
        ]
        if not candidates:
            break
        _, pair = min(candidates)
        new_id = len(vocab)
        vocab.append(vocab[pair[0]] + vocab[pair[1]])
        merges.append(pair)
        words = [merge_pair(w, pair, new_id) for w in words]
    return merges


if __name__ == "__main__":
    _merge_worker_main()
