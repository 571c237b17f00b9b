"""The words of BPE training as they are merged: their pair counts, the index pair -> words, merging.

    words = Words([b"hello", b"hell"], [3, 1], shift)  # each distinct chunk once, with its count
    words.pair_counts[ord("l") << shift | ord("l")]    # 4: pairs weighted by their words' counts
    gained = words.merge(ord("l"), ord("l"), 256)      # "ll" -> 256 in every word that holds it

A word is held as a str with one character per token (chr(id)), so finding a pair in it, and
merging it, are `str.find` and `str.replace` in C, whatever the word's length; Python only runs
once per merge site. A pair (a, b) is the int a << shift | b. `gptcli.tokenizers.bpe_train` pops
the best pair and calls `merge`, here or in worker processes that each hold a share of the words.
"""

from collections import Counter
from collections.abc import Iterable
from itertools import repeat
from operator import lshift, or_

from gptcli.tokenizers.pretokenize import group_texts

NUMPY_COUNT_MIN_BYTES = 1 << 20
COUNT_BATCH_BYTES = 1 << 18  # bytes of words per batch of the initial pair count: bounds its arrays


class Words:
    """The words in this process: their texts, the pair counts and the index pair -> words."""

    def __init__(self, words, counts: list[int], shift: int):
        self.texts = [bytes(word).decode("latin-1") for word in words]  # byte b -> chr(b)
        self.counts, self.shift = counts, shift
        self.pair_counts, self.where = count_pairs(words, counts, shift)
        words.clear()  # the words are held as texts from here on: let the caller's copies go

    def merge(self, a: int, b: int, new_id: int) -> Iterable[int]:
        """Merge (a, b) into new_id everywhere -> the pairs gained (their counts are in pair_counts)."""
        indices = self.where.pop(a << self.shift | b, ())
        created = _merge_everywhere(
            self.texts, indices, self.counts, a, b, new_id, self.shift, self.pair_counts
        )
        _freeze(self.where, created)
        return created

    def forget_dead(self) -> None:
        """Forget the pairs that no word holds any more (their heap entries are skipped when popped)."""
        for pair in [p for p, n in self.pair_counts.items() if n == 0]:
            del self.pair_counts[pair]
            self.where.pop(pair, None)

    def close(self) -> None:
        pass


def count_pairs(words, counts: list[int], shift: int) -> tuple[dict[int, int], dict]:
    """{pair: count over all words} and {pair: the words that hold it, as a tuple}.

    From NUMPY_COUNT_MIN_BYTES of words on, with numpy (count_pairs_numpy); below that a word at
    a time here, so training on a small corpus does not pay numpy's import (~0.1 s)."""
    if sum(map(len, words)) >= NUMPY_COUNT_MIN_BYTES:
        return count_pairs_numpy(words, counts, shift)
    pair_counts: dict[int, int] = {}
    where: dict[int, list[int] | tuple[int, ...]] = {}  # pair -> words that hold it, each once
    for idx, word in enumerate(words):
        n = counts[idx]
        # the word's pairs a << shift | b, made and counted in C (map, Counter), not one by one
        for pair, k in Counter(map(or_, map(lshift, word[:-1], repeat(shift)), word[1:])).items():
            if pair in pair_counts:
                pair_counts[pair] += n * k
                where[pair].append(idx)
            else:
                pair_counts[pair], where[pair] = n * k, [idx]
    _freeze(where, where)
    return pair_counts, where


def count_pairs_numpy(words, counts: list[int], shift: int) -> tuple[dict[int, int], dict]:
    """count_pairs with numpy, a batch of words at a time: the words are still bytes, so a pair is
    one of 65,536 codes a * 256 + b. On 8 MB of text without spaces (a merging worker's share of the
    20 MB benchmark corpus) the loop above took 4-5 s, this ~1.2 s."""
    import numpy as np  # here: the tokenizer commands otherwise never load numpy

    pair_counts: dict[int, int] = {}
    where: dict[int, list[int] | tuple[int, ...]] = {}  # pair -> the words that hold it, each once
    # one int object per word, shared by every list that holds it (as the loop's enumerate does):
    # ints fresh from tolist() would take 28 bytes more an entry, ~100 MB more on 100 MB of code
    word_ids = list(range(len(words)))
    first = 0  # index of the batch's first word
    for batch, _ in group_texts(words, COUNT_BATCH_BYTES):  # consecutive words, ~COUNT_BATCH_BYTES each
        flat = np.frombuffer(b"".join(map(bytes, batch)), dtype=np.uint8)  # the words end to end
        # each byte's word (int32: a batch holds far fewer than 2^31 words)
        word_of = np.repeat(np.arange(len(batch), dtype=np.int32), [len(word) for word in batch])
        inside = word_of[:-1] == word_of[1:]  # a pair of bytes within one word, not across two
        codes = (flat[:-1].astype(np.int32) << 8 | flat[1:])[inside]  # (pairs,) a * 256 + b
        held = word_of[:-1][inside]  # (pairs,) the word of each
        weights = np.asarray(counts[first : first + len(batch)], dtype=np.int64)[held]
        totals = np.bincount(codes, weights=weights, minlength=1 << 16)  # exact: counts < 2^53
        # each (pair, word) once, by pair then word (sorted: np.unique's hashing is far slower here)
        keys = np.sort(codes.astype(np.int64) * len(batch) + held)
        keys = keys[np.r_[True, keys[1:] != keys[:-1]][: len(keys)]]
        pair_codes, held = np.divmod(keys, len(batch))
        starts = np.flatnonzero(np.r_[True, pair_codes[1:] != pair_codes[:-1]][: len(keys)])
        for code, ids in zip(pair_codes[starts].tolist(), np.split(held + first, starts[1:])):
            pair, n = (code >> 8) << shift | (code & 255), int(totals[code])
            shared = map(word_ids.__getitem__, ids.tolist())
            if pair in pair_counts:
                pair_counts[pair] += n
                where[pair].extend(shared)
            else:
                pair_counts[pair], where[pair] = n, list(shared)
        first += len(batch)
    _freeze(where, where)
    return pair_counts, where


def _merge_everywhere(texts, indices, counts, a, b, new_id, shift, pair_counts) -> dict[int, list[int]]:
    """Merge (a, b) into new_id in the words at `indices`, adjusting the counts around each site ->
    the pairs gained, each with the words that now hold it.

    At each site ... x [a b] y ...: (x, a) and (b, y) lose n (the word's count); (x, new) and
    (new, y) gain n; (a, b) itself is deleted by the caller. When sites touch (a b a b -> N N), x is the new id just written, and the
    (N, a) gained at the first site is lost again at the second, as it should be. A stale index
    entry (the pair no longer in the word) changes nothing. (The two gains are spelled out, not
    called: this is the trainer's innermost loop.)
    """
    ab, new_char = chr(a) + chr(b), chr(new_id)
    new_hi = new_id << shift
    created: dict[int, list[int]] = {}
    created_get = created.get
    for idx in indices:
        text = texts[idx]
        i = text.find(ab)
        if i < 0:
            continue
        n, last = counts[idx], len(text) - 2
        end = -1  # where the previous site ended
        while i >= 0:  # (a, b) itself is not counted down: it is deleted after this step
            if i > 0:
                x_hi = new_hi if i == end else ord(text[i - 1]) << shift
                pair_counts[x_hi | a] -= n
                gained = x_hi | new_id
                if (words := created_get(gained)) is None:  # in created <=> in pair_counts (it holds new_id)
                    pair_counts[gained], created[gained] = n, [idx]
                else:
                    pair_counts[gained] += n
                    if words[-1] != idx:
                        words.append(idx)
            if i < last:
                y = ord(text[i + 2])
                pair_counts[b << shift | y] -= n
                gained = new_hi | y
                if (words := created_get(gained)) is None:
                    pair_counts[gained], created[gained] = n, [idx]
                else:
                    pair_counts[gained] += n
                    if words[-1] != idx:
                        words.append(idx)
            end = i + 2
            i = text.find(ab, end)
        texts[idx] = text.replace(ab, new_char)
    return created


def _freeze(where: dict, lists: dict) -> None:
    """Store finished index lists as tuples: no room kept for appends (most hold 1-3 words)."""
    for pair, words in lists.items():
        where[pair] = tuple(words)
