"""A tokenizer trained on a corpus of files: the library call behind `gpt tokenizer train`.

>>> from gptcli.config import TokenizerTrainConfig
>>> result = train_tokenizer(TokenizerTrainConfig(files=["corpus.txt"], vocab_size=1000))
>>> result.tokenizer.save("tokenizer.json")

The corpus (`config.files`: text, JSONL, Parquet, HF dataset folders, compressed) is found and read
here, in blocks of the pre-tokenizer's task size (gptcli.data.sources); each source is recorded in
the tokenizer as `trained_on` (path, size, sha256), and its texts are handed to the tokenizer
layer's trainer (gptcli.tokenizers.train.train_on_texts), which never reads files itself.
"""

import time
from dataclasses import dataclass, field

from gptcli.config import TokenizerTrainConfig
from gptcli.data.sources import CorpusReader, SourceOptions, find_sources
from gptcli.tokenizers.base import CorpusFile, Tokenizer
from gptcli.tokenizers.bpe_train import PRETOKENIZE_BLOCK_BYTES, Progress
from gptcli.tokenizers.train import train_on_texts


@dataclass
class TrainResult:
    tokenizer: Tokenizer
    seconds: float
    invalid_bytes: int = 0  # undecodable corpus bytes, replaced by U+FFFD
    warnings: list[str] = field(default_factory=list)


def train_tokenizer(config: TokenizerTrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train the tokenizer `config` describes on the corpus `config.files` names."""
    start = time.perf_counter()
    # plain text in blocks of the pre-tokenizer's task size
    reader = CorpusReader(find_sources(config.files), SourceOptions.of(config), PRETOKENIZE_BLOCK_BYTES)
    trained_on = [CorpusFile.of(s.path, list(s.files)) for s in reader.sources]
    texts = (text for text, _ in reader)
    tokenizer, warnings = train_on_texts(texts, config, trained_on, progress, _reading(progress, reader))
    warnings = reader.report() + warnings
    return TrainResult(tokenizer, time.perf_counter() - start, reader.invalid_bytes, warnings)


def _reading(progress: Progress | None, reader: CorpusReader) -> Progress | None:
    """Pre-tokenizing progress as bytes of the corpus read on disk (characters done are no measure
    against a compressed size)."""
    if progress is None:
        return None
    return lambda stage, _done, _total: progress(stage, reader.bytes_read, reader.total_bytes)
