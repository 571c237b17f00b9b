"""Evaluation during training: mean loss on fixed batches of each split, and a short sample.

The batches come from their own seeded samplers, so every eval of a run (and of a resumed run)
sees the same windows, and the training sampler's state is untouched. Every rank computes the
same numbers (under FSDP the forward passes are collective, so all ranks must take part).
"""

import math

import torch

from gptcli.chat.template import ChatTemplate, render
from gptcli.config import SampleConfig, TrainConfig
from gptcli.generation import Engine
from gptcli.models import LanguageModel
from gptcli.runtime import autocast
from gptcli.tokenizers.base import Tokenizer
from gptcli.training.chat_data import ChatData
from gptcli.training.data_source import TrainingData, eval_sampler, model_inputs
from gptcli.training.pair_data import PairData


class Validator:
    def __init__(self, data: TrainingData, config: TrainConfig, device: torch.device, precision: str):
        self.data, self.config, self.device, self.precision = data, config, device, precision

    @torch.no_grad()
    def losses(self, model: torch.nn.Module, batches: int | None = None) -> dict[str, float]:
        """Mean loss over the first `batches` (default eval_iters) fixed batches of each split (a split
        too small for a block is left out)."""
        config = self.config
        batches = batches or config.eval_iters
        model.eval()
        out = {}
        for offset, split in enumerate(("train", "val")):
            sampler = eval_sampler(self.data, split, config, seed=config.seed + 1 + offset)
            if sampler is None:
                continue
            total = 0.0
            for _ in range(batches):
                x, y, inputs = model_inputs(sampler.next_batch(), lambda t: t.to(self.device))
                with autocast(self.device, self.precision):
                    _, loss = model(x, y, **inputs)
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
        if isinstance(self.data, ChatData):
            return self.reply(model, tokenizer, tokens)
        if isinstance(self.data, PairData):
            return self.completion(model, tokenizer, tokens)
        start = (
            [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode_ordinary("\n")[:1] or [0]
        )
        was_training = model.training
        engine = Engine(model, tokenizer, relayout=False)  # puts the model in eval mode; it goes on training
        settings = SampleConfig(max_new_tokens=tokens, temperature=1.0, top_k=200, seed=self.config.seed)
        text = engine.generate(start, settings).samples[0].text
        model.train(was_training)
        return text

    def reply(self, model: LanguageModel, tokenizer: Tokenizer, tokens: int) -> str | None:
        """Fine-tuning's sample: the model's reply (greedy) to the first held-out conversation, up to
        its last user turn, shown with that turn."""
        if not self.data.held_out:
            return None
        conversation = self.data.held_out[0]
        last_user = max(i for i, m in enumerate(conversation) if m["role"] == "user")
        template = ChatTemplate.from_json(self.config.chat.template)
        prompt = render(conversation[: last_user + 1], template, tokenizer, add_generation_prompt=True).ids
        was_training = model.training
        engine = Engine(model, tokenizer, relayout=False)
        settings = SampleConfig(max_new_tokens=tokens, temperature=0.0, stop=[template.end_token])
        text = engine.generate(prompt, settings).samples[0].text
        model.train(was_training)
        return f"user: {conversation[last_user]['content']}\nassistant: {text}"

    def completion(self, model: LanguageModel, tokenizer: Tokenizer, tokens: int) -> str | None:
        """An encoder-decoder's sample: its greedy completion of the first held-out pair's prompt."""
        if not self.data.held_out:
            return None
        pair = self.data.held_out[0]
        was_training = model.training
        engine = Engine(model, tokenizer, relayout=False)  # the prompt goes to the encoder
        settings = SampleConfig(max_new_tokens=min(tokens, self.config.model.block_size), temperature=0.0)
        text = engine.generate(tokenizer.encode_ordinary(pair.prompt), settings).samples[0].text
        model.train(was_training)
        return f"prompt: {pair.prompt}\ncompletion: {text}"


def all_finite(losses: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in losses.values())
