"""A baseline: an LSTM language model, trained, saved, sampled and evaluated exactly like the GPT.

    tokens -> wte -> dropout -> n_layer stacked LSTM layers of n_embd units -> dropout -> lm_head -> logits

`gpt train --arch lstm --tokenizer char` gives the character-level LSTM of the classic char-rnn
experiments, on the same data, trainer and checkpoints as the transformer, so `gpt eval` can put
the two side by side. It keeps the GPT's contract (gptcli.models.base.LanguageModel): forward(idx,
targets, cache, last_only) -> (logits, loss). For generation the "cache" is the recurrent
state: h and c of every layer after the tokens seen so far, instead of their keys and values.
Training windows start from a zero state, so block_size is the length the LSTM learns to carry
context over (truncated backpropagation through time), and generation re-reads the last 3/4 of a
block when a window is full, as it does for the GPT.

Shapes in comments: B batch, T new tokens, C n_embd, L n_layer, V vocab_size.
"""

import torch
from torch import Tensor, nn

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.models.base import LanguageModel


class RecurrentState:
    """The LSTM's stand-in for a KV cache: (h, c) of every layer after `pos` tokens."""

    def __init__(self, batch_size: int, max_len: int) -> None:
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0
        self.hc: tuple[Tensor, Tensor] | None = None  # (L, B, C) each; None: zeros, nothing seen yet

    def reset(self) -> None:
        self.pos, self.hc = 0, None


class LSTM(LanguageModel):
    """An LSTM language model configured by `ModelConfig` (arch "lstm"). forward(idx) -> (logits, loss)."""

    cache_kind = "state"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        V, C = config.padded_vocab_size, config.n_embd
        self.wte = nn.Embedding(V, C)
        self.drop = nn.Dropout(config.dropout)
        # dropout between stacked layers (nn.LSTM applies it to every layer's output but the last)
        between = config.dropout if config.n_layer > 1 else 0.0
        self.lstm = nn.LSTM(C, C, config.n_layer, bias=config.bias, batch_first=True, dropout=between)
        self.lm_head = nn.Linear(C, V, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # the input vector of a token is its output vector too
        self._init_weights()

    def _init_weights(self) -> None:
        # small embeddings, as in the GPT; the LSTM keeps PyTorch's uniform(+-1/sqrt(C)) init, except
        # that the forget gates start at bias 1: remember by default, which helps long contexts learn
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
        if not self.config.tie_weights:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        if self.config.bias:
            C = self.config.n_embd
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias_ih"):  # gates stacked as input, forget, cell, output
                    with torch.no_grad():
                        p[C : 2 * C].fill_(1.0)

    def lookup_tables(self) -> list[Tensor]:
        return [] if self.config.tie_weights else [self.wte.weight]

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RecurrentState:
        """An empty recurrent state; the GPT's cache interface, so the generation engine takes either."""
        return RecurrentState(batch_size, self.cache_length(max_len))

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        cache: RecurrentState | None = None,
        last_only: bool = False,
        doc_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx: (B, T) token ids -> logits (B, T, vocab_size), and the mean cross-entropy if targets.

        With a state, the T tokens continue from the cache.pos tokens it has seen, and the
        state then holds pos + T. Targets of -1 are ignored. last_only: logits of the last
        position only, (B, 1, vocab_size). doc_ids (packed rows) is the GPT's alone: an error here.
        """
        if doc_ids is not None:
            # a recurrent state carries over every boundary: no mask can keep documents apart
            raise GptError("packing several documents in one row needs the gpt architecture (use --no-pack)")
        self.check_input(idx, cache)
        hc = None if cache is None else cache.hc  # None: a zero state
        x = self.drop(self.wte(idx))  # (B, T, C)
        x, new_hc = self.lstm(x, hc)  # (B, T, C); h and c: (L, B, C)
        x = self.drop(x)
        if cache is not None:
            cache.hc, cache.pos = new_hc, cache.pos + idx.size(1)
        return self.logits_and_loss(x, targets, last_only)
