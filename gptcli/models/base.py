"""The contract every language model here keeps (the GPT, and the LSTM baseline), and what they share.

    logits, loss = model(idx, targets=None, cache=None, last_only=False)
    cache = model.new_cache(batch_size)        # what generation carries from one step to the next

`idx` is (B, T) token ids; logits are (B, T, vocab_size) (or (B, 1, vocab_size) with last_only);
loss is the mean cross-entropy when targets are given (-1 = ignored). The cache is a GPT's KV cache
or an LSTM's recurrent state: anything with `pos` (tokens seen), `max_len` and `batch_size`.
The GPT also takes `doc_ids` (B, T) for rows packed with several documents (see GPT.forward).
The trainer's bookkeeping (optimizer groups, parameter and FLOP counts) lives here once.
"""

import inspect
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptcli.config import ModelConfig
from gptcli.errors import GptError


class LanguageModel(nn.Module):
    """forward(idx, targets, cache, last_only) -> (logits, loss); new_cache(batch_size) -> a cache."""

    config: ModelConfig
    cache_kind = "cache"  # what generation carries from step to step (see new_cache)

    @classmethod
    def empty(cls, config: ModelConfig) -> "LanguageModel":
        """A CPU model to load weights into (subclasses skip the random init where it is costly)."""
        return cls(config)

    def lookup_tables(self) -> list[Tensor]:
        """Weights read by index rather than multiplied (left out of the non-embedding count)."""
        return []

    def cache_length(self, max_len: int | None) -> int:
        """A new cache's capacity: block_size by default, never more (no longer window was trained)."""
        block = self.config.block_size
        max_len = block if max_len is None else max_len
        if not 1 <= max_len <= block:
            raise GptError(
                f"{self.cache_kind} max_len must be between 1 and block_size ({block}), got {max_len}"
            )
        return max_len

    def check_input(self, idx: Tensor, cache) -> None:
        """(B, T) ids must fit the context, or the cache they continue (its room and its batch)."""
        B, T = idx.size()
        if cache is None:
            if T > self.config.block_size:
                raise GptError(f"sequence of {T} tokens is longer than block_size ({self.config.block_size})")
            return
        if cache.pos + T > cache.max_len:
            raise GptError(
                f"{self.cache_kind} full: {cache.pos} tokens held + {T} new > max_len ({cache.max_len}); "
                "crop the context and prefill again"
            )
        if B != cache.batch_size:
            raise GptError(
                f"batch of {B} sequences, but the {self.cache_kind} was made for {cache.batch_size}"
            )

    def logits_and_loss(
        self, x: Tensor, targets: Tensor | None, last_only: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Final hidden states (B, T, C) -> logits (B, T, vocab_size) and the mean cross-entropy if targets.

        last_only (generation, no targets): the last position's logits only, (B, 1, vocab_size), which
        spares the (B, T, V) matmul of a long prefill. Targets of -1 are ignored.
        """
        if last_only and targets is None:
            x = x[:, -1:, :]  # (B, 1, C)
        V = self.config.vocab_size
        if targets is not None and x.device.type == "cpu" and isinstance(self.lm_head, nn.Linear):
            # on a CPU the padding rows are only cost (a 65-token vocab pads to 128, twice the work):
            # multiply by the vocabulary's rows alone
            logits = F.linear(x, self.lm_head.weight[:V])  # (B, T, V)
        else:
            # padding rows are cut off, so a padding id can never be predicted or sampled
            logits = self.lm_head(x)[..., :V]  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (a tied weight counts once); non_embedding leaves out lookup tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(t.numel() for t in self.lookup_tables())
        return n

    def hidden_matrices(self) -> list[Tensor]:
        """The hidden layers' 2-D weights (what --optimizer muon updates): every matrix but the
        embeddings and the output head, e.g. a transformer block's attention and MLP weights."""
        io = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} | {id(self.lm_head.weight)}
        return [p for p in self.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in io]

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
        exclude: Iterable[Tensor] = (),
    ) -> torch.optim.AdamW:
        """AdamW that decays matrices and embeddings (dim >= 2) but not biases and norm weights;
        `exclude`: parameters another optimizer updates (Muon's)."""
        skip = {id(p) for p in exclude}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in skip]  # tied: once
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # the fused kernel updates all tensors in one pass (CUDA, and CPU since torch 2.4): much faster
        if device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters:
            try:
                return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
            except (RuntimeError, ValueError):
                pass  # this build has no fused kernel for the device
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per weight (a multiply-add forward, two backward)."""
        return 6 * self.num_params()
