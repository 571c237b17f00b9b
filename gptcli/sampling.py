"""The generation engine: a GPT + tokenizer -> text, with a KV cache, batched, streamable.

    engine = Engine.from_checkpoint("out")                     # newest checkpoint of a run
    result = engine.generate("Once upon a time", SampleConfig(max_new_tokens=100, seed=0))
    print(result.samples[0].text)

    run = engine.start("Once upon a time", SampleConfig(num_samples=4))
    for event in run:                                          # TokenEvent(sample, token, text)
        print(event.text, end="", flush=True)                  # text: what became printable now
    run.result                                                 # GenerationResult, after the loop

How a run goes: the prompt is encoded and prefilled once for all samples (one batch of identical
rows), then one token per step for every row: logits / temperature -> top-k -> top-p -> a draw
from a seeded generator. When the rows reach the model's context length, the cache is rebuilt
from the last 3/4 of the context (a cropped re-prefill), so generation can go on indefinitely.
A sample ends at the end-of-text token (unless ignore_eos), at a stop string (its text is cut just
before it), or after max_new_tokens. Text is decoded incrementally, so a character whose bytes
span two tokens is printed whole, once both have arrived; text that might be the start of a stop
string is held back until it is clear that it is not.
"""

import codecs
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from gptcli import checkpoint as ckpt
from gptcli.config import SampleConfig
from gptcli.errors import GptError
from gptcli.tokenizers.base import Tokenizer


@dataclass
class TokenEvent:
    sample: int  # which sample (row of the batch)
    token: int  # the id just generated
    text: str  # text that became final with this token ("" while a character or stop is pending)


@dataclass
class Sample:
    text: str  # the continuation (prompt not included), cut before a stop string
    ids: list[int]  # generated ids (an end-of-text token that ended the sample is not included)
    finish_reason: str  # "length" | "eos" | "stop"


@dataclass
class GenerationResult:
    prompt: str
    prompt_ids: list[int]
    samples: list[Sample]
    seconds: float  # prefill + decode
    new_tokens: int  # generated over all samples
    tokens_per_second: float

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "prompt_tokens": len(self.prompt_ids),
            "samples": [
                {"text": s.text, "ids": s.ids, "tokens": len(s.ids), "finish_reason": s.finish_reason}
                for s in self.samples
            ],
            "new_tokens": self.new_tokens,
            "seconds": round(self.seconds, 4),
            "tokens_per_second": round(self.tokens_per_second, 1),
        }


# ---------------------------------------------------------------------------------------------
# choosing the next token


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """(B, V) logits -> (B, V) logits scaled by 1/temperature, -inf outside the top-k and top-p sets.

    top-k keeps exactly k tokens per row (torch.topk decides among ties at the cut); top-p then
    keeps the smallest set of the most likely tokens whose probability reaches p (at least one).
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, torch.topk(logits, top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
        drop_sorted = mass_before >= top_p  # the first token always stays (mass before it is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_next(logits: torch.Tensor, config: SampleConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax at temperature 0, else a filtered, seeded draw."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, config.temperature, config.top_k, config.top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# the running text of one sample


class _SampleText:
    """Bytes in, printable text out: incremental UTF-8 decoding, stop strings, held-back text."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def add(self, data: bytes, final: bool = False) -> str:
        """Feed one token's bytes; return the text that is now final."""
        before = len(self.text)
        self.text += self.decoder.decode(data, final=final)
        for stop in self.stops:
            # a stop can only newly appear where it overlaps what was just added
            at = self.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
        return self.flush(final or self.stopped)

    def flush(self, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._held_back()
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest end of the text that could still grow into a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


# ---------------------------------------------------------------------------------------------
# the engine


class Engine:
    """A model and its tokenizer on a device, ready to generate."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, precision: str = "fp32"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.precision = precision
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else nullcontext
        self.block_size = model.config.block_size

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", precision: str = "auto", best: bool = False
    ) -> "Engine":
        """A checkpoint dir, or a run dir (its newest, or best, complete checkpoint)."""
        from gptcli.trainer import resolve_device, resolve_precision

        torch_device = resolve_device(device)
        directory = ckpt.resolve_checkpoint(path, best=best)
        model, tokenizer, _ = ckpt.load_checkpoint(directory, torch_device)
        engine = cls(model, tokenizer, resolve_precision(precision, torch_device))
        engine.checkpoint = directory
        return engine

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Prompt text (or ids) -> ids; an empty prompt starts from end-of-text when the tokenizer has it."""
        if isinstance(prompt, list):
            self.tokenizer.check_ids(prompt)
            if not prompt:
                raise GptError("the prompt has no tokens")
            return list(prompt)
        if prompt == "":
            if self.tokenizer.eot_id is None:
                raise GptError("the prompt is empty and this tokenizer has no <|endoftext|> to start from")
            return [self.tokenizer.eot_id]
        ids = self.tokenizer.encode(prompt, allow_special=True)
        if not ids:
            raise GptError("the prompt encodes to no tokens")
        return ids

    def start(self, prompt: str | list[int], config: SampleConfig) -> "GenerationRun":
        return GenerationRun(self, prompt, config)

    def generate(self, prompt: str | list[int], config: SampleConfig) -> GenerationResult:
        run = self.start(prompt, config)
        for _ in run:
            pass
        return run.result

    def forward_last(self, idx: torch.Tensor, cache) -> torch.Tensor:
        """(B, T) ids through the model with the cache -> (B, V) logits of the last position."""
        with torch.no_grad(), self.autocast():
            logits, _ = self.model(idx, kv_cache=cache, last_only=True)
        return logits[:, -1, :]


class GenerationRun:
    """One generate call, as an iterator of TokenEvents; `result` is set when it is exhausted."""

    def __init__(self, engine: Engine, prompt: str | list[int], config: SampleConfig):
        self.engine = engine
        self.config = config
        self.prompt_ids = engine.encode_prompt(prompt)
        self.prompt = prompt if isinstance(prompt, str) else engine.tokenizer.decode(self.prompt_ids)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        engine, config = self.engine, self.config
        tokenizer, device, block_size = engine.tokenizer, engine.device, engine.block_size
        B = config.num_samples
        eos = None if config.ignore_eos else tokenizer.eot_id
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(config.seed)

        rows = [list(self.prompt_ids[-block_size:]) for _ in range(B)]  # every row: the visible tokens
        texts = [_SampleText(config.stop) for _ in range(B)]
        new_ids: list[list[int]] = [[] for _ in range(B)]
        reasons: list[str | None] = [None] * B
        keep = max(1, block_size - block_size // 4)  # tokens kept when the context is full

        t0 = time.perf_counter()
        cache = engine.model.new_kv_cache(B, device=device)
        logits = engine.forward_last(torch.tensor(rows, device=device), cache)  # prefill: (B, V)
        for _ in range(config.max_new_tokens):
            next_ids = pick_next(logits, config, generator).tolist()  # (B,)
            for b, token in enumerate(next_ids):
                if reasons[b] is not None:
                    continue  # finished rows run along (the batch stays rectangular) but are ignored
                if token == eos:
                    reasons[b] = "eos"
                    yield TokenEvent(b, token, texts[b].add(b"", final=True))
                    continue
                new_ids[b].append(token)
                text = texts[b].add(tokenizer.token_bytes(token))
                if texts[b].stopped:
                    reasons[b] = "stop"
                yield TokenEvent(b, token, text)
            if all(r is not None for r in reasons):
                break
            for row, token in zip(rows, next_ids):
                row.append(token)
            if cache.pos == block_size:  # the context is full: keep its last 3/4 and prefill again
                rows = [row[-keep:] for row in rows]
                cache = engine.model.new_kv_cache(B, device=device)
                logits = engine.forward_last(torch.tensor(rows, device=device), cache)
            else:
                logits = engine.forward_last(torch.tensor([[t] for t in next_ids], device=device), cache)
        for b in range(B):
            if reasons[b] is None:
                reasons[b] = "length"
                tail = texts[b].add(b"", final=True)
                if tail:
                    yield TokenEvent(b, new_ids[b][-1] if new_ids[b] else -1, tail)
        seconds = time.perf_counter() - t0
        total = sum(len(ids) for ids in new_ids)
        self.result = GenerationResult(
            prompt=self.prompt,
            prompt_ids=self.prompt_ids,
            samples=[Sample(t.text, ids, r) for t, ids, r in zip(texts, new_ids, reasons)],
            seconds=seconds,
            new_tokens=total,
            tokens_per_second=total / seconds if seconds > 0 else 0.0,
        )


def generate(
    source: "str | Path | Engine | torch.nn.Module",
    prompt: str | list[int] = "",
    config: SampleConfig | None = None,
    tokenizer: Tokenizer | None = None,
    **options,
) -> GenerationResult:
    """One call from Python: a checkpoint/run dir, an Engine, or a model + its tokenizer -> result.

    Options are SampleConfig fields (num_samples, max_new_tokens, temperature, top_k, top_p, seed,
    stop, ignore_eos).
    """
    if isinstance(source, Engine):
        engine = source
    elif isinstance(source, torch.nn.Module):
        if tokenizer is None:
            raise GptError(
                "generate(model, ...) needs the model's tokenizer: generate(model, prompt, tokenizer=tok)"
            )
        engine = Engine(source, tokenizer)
    else:
        engine = Engine.from_checkpoint(source)
    config = config or SampleConfig(**options)
    return engine.generate(prompt, config)
