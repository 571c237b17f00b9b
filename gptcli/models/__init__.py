"""The language models: a `ModelConfig` names one (`arch`), `build_model` makes it.

base.py   LanguageModel: the forward/cache contract and the bookkeeping every model shares
gpt.py    the GPT (GPT-2 names, RoPE/sinusoidal/learned positions, GQA, sliding window, packed rows)
positions.py  its position tables and attention masks (causal, windowed, per document of a packed row)
kv_cache.py  its KV cache: prefill writes, fixed-shape decode-step writes and their mask
lstm.py   the LSTM baseline, whose recurrent state stands in for the KV cache
encdec.py the encoder-decoder (prompt -> encoder, completion -> decoder with cross-attention)
resize.py resize_vocab: grow the embedding and head for new tokens (new rows at the old rows' mean)
"""

from gptcli.config import ModelConfig
from gptcli.models.base import LanguageModel
from gptcli.models.encdec import EncoderDecoder
from gptcli.models.gpt import GPT
from gptcli.models.kv_cache import KVCache
from gptcli.models.lstm import LSTM, RecurrentState
from gptcli.models.resize import resize_vocab

ARCHITECTURES: dict[str, type[LanguageModel]] = {"gpt": GPT, "lstm": LSTM, "encdec": EncoderDecoder}

__all__ = [
    "ARCHITECTURES",
    "EncoderDecoder",
    "GPT",
    "KVCache",
    "LSTM",
    "LanguageModel",
    "RecurrentState",
    "build_model",
    "resize_vocab",
]


def build_model(config: ModelConfig, empty: bool = False) -> LanguageModel:
    """The model `config.arch` names, randomly initialized, or `empty` to load weights into."""
    cls = ARCHITECTURES[config.arch]
    return cls.empty(config) if empty else cls(config)
