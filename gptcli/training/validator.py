"""Evaluation during training: mean loss on fixed batches of each split, and a short sample.

The batches come from their own seeded samplers, so every eval of a run (and of a resumed run)
sees the same windows, and the training sampler's state is untouched. Every rank computes the
same numbers (under FSDP the forward passes are collective, so all ranks must take part).
"""

import math

import torch

from gptcli.config import SampleConfig, TrainConfig
from gptcli.data.sampler import BatchSampler
from gptcli.data.token_cache import TokenData
from gptcli.generation import Engine
from gptcli.models import LanguageModel
from gptcli.runtime import autocast
from gptcli.tokenizers.base import Tokenizer


class Validator:
    def __init__(self, data: TokenData, config: TrainConfig, device: torch.device, precision: str):
        self.data, self.config, self.device, self.precision = data, config, device, precision

    @torch.no_grad()
    def losses(self, model: torch.nn.Module, batches: int | None = None) -> dict[str, float]:
        """Mean loss over the first `batches` (default eval_iters) fixed batches of each split (a split
        too small for a block is left out)."""
        config = self.config
        batches = batches or config.eval_iters
        model.eval()
        out = {}
        for offset, (split, tokens) in enumerate((("train", self.data.train), ("val", self.data.val))):
            if len(tokens) < config.model.block_size + 1:
                continue
            sampler = BatchSampler(
                tokens, config.model.block_size, config.batch_size, seed=config.seed + 1 + offset
            )
            total = 0.0
            for _ in range(batches):
                x, y = sampler.next_batch()
                with autocast(self.device, self.precision):
                    _, loss = model(x.to(self.device), y.to(self.device))
                total += loss.item()
            out[split] = total / batches
        model.train()
        return out

    def sample(self, model: LanguageModel, tokenizer: Tokenizer, tokens: int | None = None) -> str | None:
        """A short sample (`tokens`, default sample_tokens) from a fixed seed, so runs are comparable
        and the global RNG is untouched."""
        tokens = self.config.sample_tokens if tokens is None else tokens
        if tokens == 0:
            return None
        start = (
            [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode_ordinary("\n")[:1] or [0]
        )
        was_training = model.training
        engine = Engine(model, tokenizer, relayout=False)  # puts the model in eval mode; it goes on training
        settings = SampleConfig(max_new_tokens=tokens, temperature=1.0, top_k=200, seed=self.config.seed)
        text = engine.generate(start, settings).samples[0].text
        model.train(was_training)
        return text


def all_finite(losses: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in losses.values())
