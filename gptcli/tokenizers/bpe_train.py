"""Training byte-level BPE: count pre-token chunks, then learn merges incrementally.

1. Pre-tokenize: the split pattern cuts the corpus into chunks (" the", "ing", "\\n\\n", ...). Only
   the distinct chunks and their counts matter, so each distinct chunk is stored once as a "word"
   (a list of ids) with a count. Large corpora are cut into blocks counted in parallel processes.
2. Learn merges: keep the count of every adjacent pair over all words (weighted by word count), an
   index from each pair to the words that hold it, and a max-heap of pairs. Each step pops the best
   pair, rewrites only the words that contain it, and adjusts the counts of the pairs around each
   rewrite. Heap entries are checked when popped (lazy invalidation): an entry whose count went
   stale is pushed back with the true count.

The tie rule, shared by `learn_merges` and `learn_merges_naive`: the pair with the highest count
wins; among equal counts, the smaller left id, then the smaller right id. A pair whose bytes already
exist as a token (two different splits of the same string) is never merged, so every token's byte
string is unique, as tiktoken requires. The same corpus therefore always gives the same merges.
"""

import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from multiprocessing import get_context
from pathlib import Path

import regex

from gptcli.data.corpus import TextReader
from gptcli.tokenizers.bpe import merge_pair

Progress = Callable[[str, int, int], None]  # (stage, done, total)

PARALLEL_MIN_BYTES = 4 << 20  # below this, a process pool costs more than it saves
PRETOKENIZE_BLOCK_BYTES = 1 << 20

_worker_pattern = None


def _init_worker(pattern: str) -> None:
    global _worker_pattern
    _worker_pattern = regex.compile(pattern)


def _count_block(block: str) -> Counter:
    return Counter(_worker_pattern.findall(block))


def count_chunks(
    files: list[Path], pattern: str, workers: int | None = None, progress: Progress | None = None
) -> tuple[Counter, int]:
    """Count the pre-token chunks of all files -> (Counter{chunk str: count}, invalid UTF-8 bytes replaced)."""
    total_bytes = sum(f.stat().st_size for f in files)
    readers = [TextReader(f, PRETOKENIZE_BLOCK_BYTES) for f in files]
    blocks = (block for reader in readers for block in reader)
    workers = workers or os.cpu_count() or 1
    counts: Counter = Counter()
    done = 0

    def absorb(block_counts: Counter, n_chars: int) -> None:
        nonlocal done
        counts.update(block_counts)
        done = min(total_bytes, done + n_chars)
        if progress:
            progress("pre-tokenizing", done, total_bytes)

    if workers > 1 and total_bytes >= PARALLEL_MIN_BYTES:
        sized = ((b, len(b)) for b in blocks)
        sizes: list[int] = []

        def texts() -> Iterable[str]:
            for b, n in sized:
                sizes.append(n)
                yield b

        with get_context("fork").Pool(workers, initializer=_init_worker, initargs=(pattern,)) as pool:
            for i, block_counts in enumerate(pool.imap(_count_block, texts(), chunksize=1)):
                absorb(block_counts, sizes[i])
    else:
        _init_worker(pattern)
        for block in blocks:
            absorb(_count_block(block), len(block))
    if progress:
        progress("pre-tokenizing", total_bytes, total_bytes)
    return counts, sum(r.invalid_bytes for r in readers)


def chunks_to_words(chunk_counts: Counter) -> tuple[list[list[int]], list[int]]:
    """{chunk str: count} -> (words as lists of byte ids, counts), in a fixed order."""
    words, counts = [], []
    for chunk, n in chunk_counts.items():
        words.append(list(chunk.encode("utf-8")))
        counts.append(n)
    return words, counts


def learn_merges(
    words: list[list[int]], counts: list[int], num_merges: int, progress: Progress | None = None
) -> list[tuple[int, int]]:
    """The fast incremental trainer. `words` are rewritten in place. Returns merges in rank order."""
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) hold it
    for idx, word in enumerate(words):
        n = counts[idx]
        for pair in zip(word, word[1:]):
            pair_counts[pair] += n
            where[pair].add(idx)
    # max-heap via negated counts; tuples compare (count, left, right) exactly as the tie rule says
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    known = set(vocab)
    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        n = pair_counts[pair]
        if n <= 0:
            continue
        if -neg != n:  # stale entry: the count dropped since it was pushed
            heapq.heappush(heap, (-n, pair))
            continue
        merged = vocab[pair[0]] + vocab[pair[1]]
        if merged in known:  # would duplicate an existing token: never merged (see module docs)
            continue
        new_id = len(vocab)
        vocab.append(merged)
        known.add(merged)
        merges.append(pair)

        created: set[tuple[int, int]] = set()
        for idx in where.pop(pair):
            _merge_in_word(words, idx, pair, new_id, counts[idx], pair_counts, where, created)
        # only pairs with the new id can have grown; push each once with its final count
        for p in created:
            heapq.heappush(heap, (-pair_counts[p], p))
        if progress and (len(merges) % 256 == 0 or len(merges) == num_merges):
            progress("merging", len(merges), num_merges)
    return merges


def _merge_in_word(words, idx, pair, new_id, n, pair_counts, where, created) -> None:
    """Merge `pair` in words[idx] (which occurs n times), updating only the counts around each site.

    At each site ... x [a b] y ...: (a, b), (x, a) and (b, y) lose n; (x, new) and (new, y) gain n
    and are indexed to this word. When sites touch (a b a b -> N N), x is the new id just written,
    and the (N, a) gained at the first site is lost again at the second, as it should be.
    A stale index entry (the pair no longer in the word) changes nothing.
    """
    a, b = pair
    word = words[idx]
    out: list[int] = []
    i, length = 0, len(word)
    while i < length:
        if word[i] == a and i + 1 < length and word[i + 1] == b:
            pair_counts[pair] -= n
            if out:
                x = out[-1]
                pair_counts[(x, a)] -= n
                pair_counts[(x, new_id)] += n
                created.add((x, new_id))
                where[(x, new_id)].add(idx)
            if i + 2 < length:
                y = word[i + 2]
                pair_counts[(b, y)] -= n
                pair_counts[(new_id, y)] += n
                created.add((new_id, y))
                where[(new_id, y)].add(idx)
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    if len(out) != length:
        words[idx] = out


def learn_merges_naive(words: list[list[int]], counts: list[int], num_merges: int) -> list[tuple[int, int]]:
    """Reference trainer for tests: recount every pair before every merge. Same tie rule."""
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
