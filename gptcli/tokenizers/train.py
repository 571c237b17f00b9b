"""Train a tokenizer from a `TokenizerTrainConfig`: the library side of `gpt tokenizer train`.

>>> from gptcli.config import TokenizerTrainConfig
>>> result = train_tokenizer(TokenizerTrainConfig(files=["corpus.txt"], vocab_size=1000))
>>> result.tokenizer.save("tokenizer.json")
"""

import os
import time
from dataclasses import dataclass, field

from gptcli.config import TokenizerTrainConfig
from gptcli.data.sources import CorpusReader, SourceOptions, find_sources
from gptcli.errors import GptError
from gptcli.tokenizers import bpe_train
from gptcli.tokenizers.base import CorpusFile, Tokenizer
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.bpe_train import Progress, chunks_to_words, count_chunks, learn_merges
from gptcli.tokenizers.char import CharTokenizer, count_chars
from gptcli.tokenizers.patterns import resolve_pattern


@dataclass
class TrainResult:
    tokenizer: Tokenizer
    seconds: float
    invalid_bytes: int = 0  # undecodable corpus bytes, replaced by U+FFFD
    warnings: list[str] = field(default_factory=list)


def train_tokenizer(config: TokenizerTrainConfig, progress: Progress | None = None) -> TrainResult:
    start = time.perf_counter()
    # plain text in blocks of the pre-tokenizer's task size
    reader = CorpusReader(
        find_sources(config.files), SourceOptions.of(config), bpe_train.PRETOKENIZE_BLOCK_BYTES
    )
    trained_on = [CorpusFile.of(s.path, list(s.files)) for s in reader.sources]
    texts = (text for text, _ in reader)
    warnings: list[str] = []

    if config.kind == "char":
        counts = count_chars(texts)
        chars = sorted(counts)
        if config.vocab_size is not None and len(chars) + len(config.special_tokens) > config.vocab_size:
            raise GptError(
                f"the corpus has {len(chars)} distinct characters, more than --vocab-size {config.vocab_size} "
                f"allows with {len(config.special_tokens)} special token(s); omit --vocab-size for a char tokenizer"
            )
        specials = _special_ids(config.special_tokens, first_id=len(chars))
        tokenizer: Tokenizer = CharTokenizer(chars, specials, trained_on)
    else:
        pattern = resolve_pattern(config.pattern)
        chunk_counts = count_chunks(texts, pattern, config.workers, _reading(progress, reader))
        words, word_counts = chunks_to_words(chunk_counts)
        del chunk_counts
        num_merges = config.vocab_size - 256 - len(config.special_tokens)
        merges = learn_merges(words, word_counts, num_merges, progress, config.workers or os.cpu_count() or 1)
        if len(merges) < num_merges:
            got = 256 + len(merges) + len(config.special_tokens)
            warnings.append(
                f"the corpus yields only {len(merges)} merges, so the vocabulary is {got}, not {config.vocab_size}"
            )
        specials = _special_ids(config.special_tokens, first_id=256 + len(merges))
        tokenizer = BPETokenizer(merges, pattern, specials, trained_on=trained_on)

    warnings = reader.report() + warnings
    return TrainResult(tokenizer, time.perf_counter() - start, reader.invalid_bytes, warnings)


def _reading(progress: Progress | None, reader: CorpusReader) -> Progress | None:
    """Pre-tokenizing progress as bytes of the corpus read on disk (characters done are no measure
    against a compressed size)."""
    if progress is None:
        return None
    return lambda stage, _done, _total: progress(stage, reader.bytes_read, reader.total_bytes)


def _special_ids(specials: list[str], first_id: int) -> dict[str, int]:
    return {s: first_id + i for i, s in enumerate(specials)}
