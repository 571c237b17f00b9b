import random
from collections import Counter

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.config import TokenizerTrainConfig
from gptcli.data.sources import CorpusReader
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.tokenizers.bpe_train import chunks_to_words, count_chunks, learn_merges, learn_merges_naive
from gptcli.tokenizers.patterns import GPT2_PATTERN, GPT4_PATTERN

# small alphabets make many repeated pairs and many ties, where trainers most easily disagree
small_corpus = st.lists(
    st.text(alphabet=st.sampled_from(list("aab  bcé🙂\n")), max_size=40), min_size=1, max_size=12
).map("\n".join)


def words_of(text: str, pattern: str = GPT4_PATTERN):
    return chunks_to_words(Counter(regex.findall(pattern, text)))


@settings(max_examples=200, deadline=None)
@given(
    text=small_corpus, num_merges=st.integers(1, 60), pattern=st.sampled_from([GPT2_PATTERN, GPT4_PATTERN])
)
def test_fast_trainer_gives_exactly_the_naive_trainers_merges(text, num_merges, pattern):
    words, counts = words_of(text, pattern)
    expected = learn_merges_naive(words, counts, num_merges)
    assert learn_merges([list(w) for w in words], counts, num_merges) == expected


@settings(max_examples=100, deadline=None)
@given(
    words=st.lists(st.binary(max_size=12), min_size=1, max_size=30),
    batch_bytes=st.sampled_from([1, 5, 64, 1 << 20]),
    data=st.data(),
)
def test_initial_pair_counts_and_index_count_every_word_once(words, batch_bytes, data):
    # empty and one-byte words, repeats, and batches that cut anywhere: each pair's count is the
    # sum over words of (its occurrences x the word's count); its index lists each word once, in order
    import gptcli.tokenizers.bpe_words as bpe_words

    counts = data.draw(st.lists(st.integers(1, 10**6), min_size=len(words), max_size=len(words)))
    bpe_words.COUNT_BATCH_BYTES, before = batch_bytes, bpe_words.COUNT_BATCH_BYTES
    try:
        pair_counts, where = bpe_words.count_pairs_numpy(words, counts, 9)
    finally:
        bpe_words.COUNT_BATCH_BYTES = before
    assert (pair_counts, where) == bpe_words.count_pairs(words, counts, 9)  # (a word at a time)
    expected, holders = Counter(), {}
    for i, (word, n) in enumerate(zip(words, counts)):
        for a, b in zip(word, word[1:]):
            expected[a << 9 | b] += n
            ids = holders.setdefault(a << 9 | b, [])
            if not ids or ids[-1] != i:
                ids.append(i)
    assert pair_counts == dict(expected)
    assert where == {pair: tuple(ids) for pair, ids in holders.items()}


def test_tie_rule_highest_count_then_smallest_ids():
    # 'ab' and 'cd' both occur twice: the smaller left id ('a' = 97) wins the tie
    words, counts = [list(b"cd"), list(b"ab")], [2, 2]
    assert learn_merges(words, counts, 1) == [(97, 98)]
    # a higher count beats smaller ids
    words, counts = [list(b"cd"), list(b"ab")], [3, 2]
    assert learn_merges(words, counts, 1) == [(99, 100)]


def test_never_creates_two_tokens_with_the_same_bytes():
    # 'abc' can be built as (ab, c) and as (a, bc); only the first of the two is learned
    words, counts = [list(b"ab"), list(b"bc"), list(b"abc"), list(b"xbc")], [5, 5, 1, 1]
    merges = learn_merges(words, counts, 10)
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    assert len(set(vocab)) == len(vocab)
    assert merges == learn_merges_naive([list(b"ab"), list(b"bc"), list(b"abc"), list(b"xbc")], counts, 10)


def test_parallel_pre_tokenization_counts_the_same(tmp_path, monkeypatch):
    import gptcli.tokenizers.bpe_train as bpe_train

    text = "".join(
        f"Line {i}: the quick brown fox's {i * 7} jumps\n\n  over  {'é' * (i % 5)}" for i in range(3000)
    )
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    blocks = [block for block, _ in CorpusReader([path], block_bytes=4096)]
    serial = count_chunks(blocks, GPT4_PATTERN, workers=1)
    monkeypatch.setattr(bpe_train, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(bpe_train, "PRETOKENIZE_BLOCK_BYTES", 4096)
    parallel = count_chunks(iter(blocks), GPT4_PATTERN, workers=2)
    assert parallel == serial == Counter(regex.findall(GPT4_PATTERN, text))


def test_same_corpus_gives_a_byte_identical_file(tmp_path, corpus):
    path = corpus("the cat sat on the mat; the dog sat on the log.\n" * 50 + "zebra zoo\n")
    outputs = []
    for i in range(2):
        result = train_tokenizer(TokenizerTrainConfig(files=[str(path)], vocab_size=300))
        outputs.append(result.tokenizer.save(tmp_path / f"t{i}.json").read_bytes())
    assert outputs[0] == outputs[1]


def test_vocab_larger_than_corpus_allows_stops_with_a_warning(corpus):
    result = train_tokenizer(TokenizerTrainConfig(files=[str(corpus("abab"))], vocab_size=1000))
    assert result.tokenizer.vocab_size < 1000
    assert "yields only" in result.warnings[0]
    assert result.tokenizer.decode(result.tokenizer.encode("abab")) == "abab"


def test_trained_tokenizer_compresses_and_records_its_corpus(corpus):
    path = corpus("To be, or not to be, that is the question.\n" * 20)
    result = train_tokenizer(TokenizerTrainConfig(files=[str(path)], vocab_size=400))
    tok = result.tokenizer
    ids = tok.encode("To be, or not to be")
    assert len(ids) == 7  # one token per pre-token chunk: "To", " be", ",", " or", " not", " to", " be"
    assert tok.trained_on[0].path == str(path.resolve()) and tok.trained_on[0].bytes == path.stat().st_size


def test_merging_in_worker_processes_gives_the_same_merges(monkeypatch):
    import gptcli.tokenizers.bpe_train as bpe_train

    # long words, as text without spaces makes them: a sentence of CJK ideographs is one chunk
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(40)]
    text = "。".join("".join(rng.choices(chars, k=rng.randint(5, 80))) for _ in range(300))
    words, counts = words_of(text)
    expected = learn_merges([bytes(w) for w in words], counts, 300)
    monkeypatch.setattr(bpe_train, "PARALLEL_MERGE_MIN_BYTES", 0)
    assert learn_merges([bytes(w) for w in words], counts, 300, workers=2) == expected
    assert learn_merges_naive(words, counts, 60) == expected[:60]
