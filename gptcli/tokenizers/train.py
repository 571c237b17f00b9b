"""Train a tokenizer on texts, as a `TokenizerTrainConfig` says: the tokenizer side of `gpt tokenizer train`.

>>> from gptcli.config import TokenizerTrainConfig
>>> config = TokenizerTrainConfig(files=["corpus.txt"], vocab_size=300)
>>> tokenizer, warnings = train_on_texts(["Shall I compare thee", "to a summer's day?"], config)

The texts are the caller's: the tokenizer layer never finds or reads a corpus. `config.files` are
read (text, JSONL, Parquet, HF dataset folders, compressed) by the data layer,
`gptcli.data.tokenizer_corpus.train_tokenizer(config)`, which hands their texts to this module and
the files' records (`CorpusFile`: path, size, sha256) to the tokenizer as `trained_on`.
"""

import os
from collections.abc import Iterable

from gptcli.config import TokenizerTrainConfig
from gptcli.errors import GptError
from gptcli.tokenizers.base import CorpusFile, Tokenizer
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.bpe_train import Progress, chunks_to_words, count_chunks, learn_merges
from gptcli.tokenizers.char import CharTokenizer, count_chars
from gptcli.tokenizers.patterns import resolve_pattern


def train_on_texts(
    texts: Iterable[str],
    config: TokenizerTrainConfig,
    trained_on: list[CorpusFile] | None = None,
    progress: Progress | None = None,
    pretokenize_progress: Progress | None = None,
) -> tuple[Tokenizer, list[str]]:
    """A tokenizer of `config.kind` trained on `texts` (documents, or blocks of them cut at safe
    points; a chunk never spans two texts) -> (tokenizer, warnings).

    `progress` gets ("merging", merges done, merges in all); the pre-tokenizing stage goes to
    `pretokenize_progress` (the caller's measure, e.g. bytes of the corpus read), else to
    `progress` as ("pre-tokenizing", characters done, characters done)."""
    if config.kind == "char":
        counts = count_chars(texts)
        chars = sorted(counts)
        if config.vocab_size is not None and len(chars) + len(config.special_tokens) > config.vocab_size:
            raise GptError(
                f"the corpus has {len(chars)} distinct characters, more than --vocab-size {config.vocab_size} "
                f"allows with {len(config.special_tokens)} special token(s); omit --vocab-size for a char tokenizer"
            )
        specials = _special_ids(config.special_tokens, first_id=len(chars))
        return CharTokenizer(chars, specials, trained_on), []
    pattern = resolve_pattern(config.pattern)
    chunk_counts = count_chunks(texts, pattern, config.workers, pretokenize_progress or progress)
    words, word_counts = chunks_to_words(chunk_counts)
    del chunk_counts
    num_merges = config.vocab_size - 256 - len(config.special_tokens)
    merges = learn_merges(words, word_counts, num_merges, progress, config.workers or os.cpu_count() or 1)
    warnings = []
    if len(merges) < num_merges:
        got = 256 + len(merges) + len(config.special_tokens)
        warnings.append(
            f"the corpus yields only {len(merges)} merges, so the vocabulary is {got}, not {config.vocab_size}"
        )
    specials = _special_ids(config.special_tokens, first_id=256 + len(merges))
    return BPETokenizer(merges, pattern, specials, trained_on=trained_on), warnings


def _special_ids(specials: list[str], first_id: int) -> dict[str, int]:
    return {s: first_id + i for i, s in enumerate(specials)}
