"""The generation engine: a model + tokenizer -> text, with a KV cache, batched, streamable.

    engine = Engine.from_checkpoint("out")                     # newest checkpoint of a run
    result = engine.generate("Once upon a time", SampleConfig(max_new_tokens=100, seed=0))
    print(result.samples[0].text)

    run = engine.start("Once upon a time", SampleConfig(num_samples=4))
    for event in run:                                          # TokenEvent(sample, token, text)
        print(event.text, end="", flush=True)                  # text: what became printable now
    run.result                                                 # GenerationResult, after the loop

How a run goes: the prompt is encoded and prefilled once for all samples (one batch of identical
rows), then one token per step for every row: logits / temperature -> top-k -> top-p -> a draw
from a seeded generator. The forward passes are gptcli.generation.decoder's: a KV cache
allocated once, and a fixed-shape decode step that `compile=True` compiles (a CUDA graph on a
GPU). In bf16 or fp16 the engine casts the model's weights once, up front: no autocast re-casting
every weight at every step, and half the bytes each step reads.
When the rows reach the model's context length, the cache is rebuilt
from the last 3/4 of the context (a cropped re-prefill), so generation can go on indefinitely;
`context_note` says so in the words `gpt generate` prints and `gpt serve` answers with (the server's
scheduler slides its rows the same way).

An encoder-decoder (gptcli.models.encdec) reads the prompt with its encoder, once (a prompt longer
than the context: its last block_size tokens), and its decoder starts every row from <|endoftext|>
(gptcli.data.pairs.start_id). Its decoder's context cannot slide (what it writes depends on the
whole prompt and all it wrote): a sample that fills it ends with finish_reason "length".

A sample ends at the end-of-text token (unless ignore_eos), at a stop string (its text is cut just
before it), or after max_new_tokens. Choosing a token is gptcli.generation.sampling; turning token
bytes into printable text, stop strings included, is gptcli.generation.text.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from gptcli.chat.template import ChatTemplate
from gptcli.config import SampleConfig
from gptcli.data.pairs import start_id
from gptcli.errors import GptError
from gptcli.generation.cpu_matmul import prepare_for_cpu, torch_threads, uses_openblas
from gptcli.generation.decoder import Decoder
from gptcli.generation.sampling import NO_TOKEN, NOT_FINITE, pick_next
from gptcli.generation.text import SampleState, SampleText
from gptcli.loading import load_newest
from gptcli.models.int8 import is_quantized
from gptcli.models.int8_kernel import cpu_isa
from gptcli.runtime import DTYPES, resolve_device, resolve_precision
from gptcli.storage.checkpoint import Warn
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
    seconds: float  # prefill + decode, compiling included
    new_tokens: int  # generated over all samples
    tokens_per_second: float  # compiling not counted
    compile_seconds: float = 0.0  # the first call of a newly compiled decode step (compile=True)

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
            "compile_seconds": round(self.compile_seconds, 4),
            "tokens_per_second": round(self.tokens_per_second, 1),
        }


def keep_tokens(block_size: int) -> int:
    """The tokens a full context keeps when it slides: its last 3/4 (the engine's and the server's)."""
    return max(1, block_size - block_size // 4)


def context_note(
    prompt_tokens: int, max_new_tokens: int, block_size: int, encoder_decoder: bool = False
) -> str | None:
    """What happens when a prompt and the tokens asked for do not fit the model's context (None when
    they do): one line, the same from `gpt generate` (stderr, --json) and `gpt serve` (the response)."""
    if encoder_decoder:
        return encdec_context_note(prompt_tokens, max_new_tokens, block_size)
    if prompt_tokens + max_new_tokens <= block_size:
        return None
    window = f"a window of the last {keep_tokens(block_size)} to {block_size} tokens"
    if prompt_tokens > block_size:
        return (
            f"the prompt has {prompt_tokens} tokens, more than the model's context of {block_size}: it "
            f"sees the prompt's last {block_size}, then {window}, sliding as it generates"
        )
    return (
        f"the prompt ({prompt_tokens} tokens) and up to {max_new_tokens} new tokens exceed the model's "
        f"context of {block_size}: once it is full, the model sees {window}, sliding as it generates"
    )


def encdec_context_note(prompt_tokens: int, max_new_tokens: int, block_size: int) -> str | None:
    """context_note for an encoder-decoder: the prompt and the completion each have a context of their own."""
    notes = []
    if prompt_tokens > block_size:
        notes.append(
            f"the prompt has {prompt_tokens} tokens, more than the encoder's context of {block_size}: "
            f"it reads the prompt's last {block_size}"
        )
    if max_new_tokens > block_size:
        notes.append(
            f"an encoder-decoder writes at most {block_size} tokens (its decoder's context, which cannot "
            'slide): a longer sample ends there, finish_reason "length"'
        )
    return "; ".join(notes) or None


# ---------------------------------------------------------------------------------------------
# the engine


class Engine:
    """A model and its tokenizer on a device, ready to generate.

    precision bf16/fp16 casts the model's weights to it, in place (the engine takes the model
    over); compile=True compiles the decode step (see gptcli.generation.decoder). relayout (fp32
    on a CPU): the Linear weights' layout and BLAS for few-row products, in place too (see
    gptcli.generation.cpu_matmul); the trainer's validator, whose model goes on training, turns it off.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        precision: str = "fp32",
        checkpoint: Path | None = None,
        compile: bool = False,
        relayout: bool = True,
        chat_template: ChatTemplate | None = None,
    ):
        self.model = model.eval()
        if precision in ("bf16", "fp16"):
            self.model.to(DTYPES[precision])  # once, here: the decode path never autocasts
        self.device = next(model.parameters()).device
        if relayout and precision == "fp32" and self.device.type == "cpu":
            prepare_for_cpu(self.model, openblas=not compile)
        # torch's threads while it generates: 1 where the products run in OpenBLAS's own (cpu_matmul)
        self.threads = 1 if uses_openblas(self.model) else None
        self.tokenizer = tokenizer
        self.precision = precision
        self.compile = compile
        self.block_size = model.config.block_size
        self.checkpoint = checkpoint  # the directory the model was loaded from, if any
        self.chat_template = (
            chat_template  # a fine-tune's (see gptcli.chat): how to talk to it; None: a base model
        )
        self.decoders: dict[tuple[int, int], Decoder] = {}  # (batch, cache length): kept, compiled once
        self.encoder_decoder = bool(getattr(model, "encoder_decoder", False))
        self.start_id = start_id(tokenizer) if self.encoder_decoder else None  # the decoder's first token
        self.int8 = is_quantized(self.model)  # int8 weights (gptcli.models.int8), activations in precision
        if self.int8 and self.device.type == "cpu":
            # the int8 kernel is built here (once per machine: gptcli.models.int8_kernel), not inside
            # the first token's time
            isa = cpu_isa()
            if compile and not isa:
                # ours compiles as it is; torch's cannot be lowered by Inductor, and the compiled
                # dequantize-matmul took 277 ms a token on GPT-2 124M against its eager 42 (2-core Xeon)
                raise GptError(
                    "--compile with int8 weights needs the int8 CPU kernel (gptcli.models.int8_kernel), "
                    "which cannot run here; torch's compiled would be slower than without: leave out --compile"
                )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str = "auto",
        best: bool = False,
        strict: bool = False,
        warn: Warn | None = None,
        compile: bool = False,
        quantize: str | None = None,
    ) -> "Engine":
        """A checkpoint dir, or a run dir: its newest (or best) intact checkpoint; a damaged one is
        passed over with a warning through `warn` (with strict: an error). quantize "int8": int8
        weights (gptcli.models.int8); an int8 checkpoint has them anyway."""
        torch_device = resolve_device(device)
        model, tokenizer, config, directory = load_newest(path, torch_device, best, strict, warn, quantize)
        saved = config.get("chat_template")
        template = None if saved is None else ChatTemplate.from_json(saved)
        precision = resolve_precision(precision, torch_device)
        return cls(model, tokenizer, precision, directory, compile, chat_template=template)

    def describe_weights(self) -> str:
        """The precision, as the commands print it: "fp32", "bf16, int8 weights", ..."""
        return f"{self.precision}, int8 weights" if self.int8 else self.precision

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

    def decoder(self, batch_size: int, tokens: int) -> Decoder:
        """A decoder for this batch size whose cache holds `tokens` (rounded up to a multiple of 64,
        at most the context), reused by later calls of the same size."""
        max_len = min(self.block_size, -(-tokens // 64) * 64)
        key = (batch_size, max_len)
        if key not in self.decoders:
            self.decoders[key] = Decoder(self.model, batch_size, max_len, self.compile)
        return self.decoders[key]


class GenerationRun:
    """One generate call, as an iterator of TokenEvents; `result` is set when it is exhausted."""

    def __init__(self, engine: Engine, prompt: str | list[int], config: SampleConfig):
        self.engine = engine
        self.config = config
        self.prompt_ids = engine.encode_prompt(prompt)
        self.prompt = prompt if isinstance(prompt, str) else engine.tokenizer.decode(self.prompt_ids)
        self.context_note = context_note(
            len(self.prompt_ids), config.max_new_tokens, engine.block_size, engine.encoder_decoder
        )
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        """The tokens as they come; while it runs, torch has engine.threads threads (see Engine)."""
        with torch_threads(self.engine.threads):
            yield from self._events()

    def _events(self) -> Iterator[TokenEvent]:
        engine, config = self.engine, self.config
        block_size, B = engine.block_size, config.num_samples
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=engine.device).manual_seed(config.seed)
        visible = self.prompt_ids[-block_size:]
        # every row: the tokens its decoder sees (an encoder-decoder's: the start token, then its own)
        rows = [[engine.start_id] if engine.encoder_decoder else list(visible) for _ in range(B)]
        samples = [SampleState(SampleText(config.stop)) for _ in range(B)]
        eos = None if config.ignore_eos else engine.tokenizer.eot_id
        keep = keep_tokens(block_size)  # tokens kept when the context is full

        t0 = time.perf_counter()
        decoder = engine.decoder(B, len(rows[0]) + config.max_new_tokens)
        # a new compiled decoder: torch.compile's set-up (importing dynamo: ~1.5 s) counts as compiling
        compile_seconds = 0.0 if decoder.warm else time.perf_counter() - t0
        if engine.encoder_decoder:
            logits = decoder.encode([visible] * B, engine.start_id)  # (B, V)
        else:
            logits = decoder.prefill(rows)
        for i in range(config.max_new_tokens):
            next_tensor = pick_next(logits, config, generator)  # (B,)
            next_ids = next_tensor.tolist()  # the one host sync per step
            if NO_TOKEN in next_ids:
                raise GptError(f"sampling failed: {NOT_FINITE}")
            for b, (sample, token) in enumerate(zip(samples, next_ids)):
                if sample.finish_reason is None:  # finished rows run along (the batch stays rectangular)
                    yield TokenEvent(b, token, sample.take(token, engine.tokenizer, eos))
            if all(s.finish_reason is not None for s in samples) or i == config.max_new_tokens - 1:
                break  # (no forward pass for a token nothing will follow)
            held = len(rows[0])  # tokens in the cache
            for row, token in zip(rows, next_ids):
                row.append(token)
            if held == decoder.max_len and engine.encoder_decoder:
                break  # its context cannot slide: the samples end with "length"
            if held == decoder.max_len:  # the context is full: keep its last 3/4 and prefill again
                rows = [row[-keep:] for row in rows]
                logits = decoder.prefill(rows)
            elif decoder.warm:
                logits = decoder.step(next_tensor)
            else:  # this call compiles the step: time it apart, so tok/s is the decoding's
                started = time.perf_counter()
                logits = decoder.step(next_tensor)
                compile_seconds += time.perf_counter() - started
        for b, sample in enumerate(samples):
            if sample.finish_reason is None:
                sample.finish_reason = "length"
                if tail := sample.text.add(b"", final=True):  # bytes held back for a stop string
                    yield TokenEvent(b, sample.ids[-1] if sample.ids else -1, tail)
        self.result = self._result(samples, time.perf_counter() - t0, compile_seconds)

    def _result(self, samples: list[SampleState], seconds: float, compile_seconds: float) -> GenerationResult:
        total = sum(len(s.ids) for s in samples)
        decoding = seconds - compile_seconds
        return GenerationResult(
            prompt=self.prompt,
            prompt_ids=self.prompt_ids,
            samples=[Sample(s.text.text, s.ids, s.finish_reason) for s in samples],
            seconds=seconds,
            new_tokens=total,
            tokens_per_second=total / decoding if decoding > 0 else 0.0,
            compile_seconds=compile_seconds,
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
