"""The model side of generation: prefill a batch of rows, then one decode step per token.

    decoder = Decoder(model, batch_size=4, max_len=512, compile=False)
    logits = decoder.prefill(rows)       # (B, V): rows are lists of ids, all the same length
    logits = decoder.step(next_ids)      # (B,) ids -> (B, V); each row advances one position

The KV cache is allocated once for the decoder's life and reused: a prefill resets it. A decode
step hands the model each row's position as a tensor (GPT.forward(..., positions=)), so its
shapes never change: one token per row, the whole preallocated cache read under a mask (eager on a
CPU, where it costs no sync, only as far as the furthest row's position; compiled on a CPU, as far
as a power of two past it, each such length compiled once: kv_cache.compiled_decode_length). That is
what lets `compile=True` compile the step whole with torch.compile (fullgraph, static shapes:
no recompilation from one position to the next) and, on CUDA, replay it as a CUDA graph: one
launch per token instead of one per kernel. The step never synchronizes with the host; reading
the sampled ids back (for streaming) is the caller's one sync per token.

Models without a fixed-shape step (the LSTM baseline; a model's `static_decode` says) run every
forward eagerly through the cache's `pos`.

An encoder-decoder (a model's `encoder_decoder` says) reads its prompts apart: `encode(sources,
start)` runs the encoder once (prompts of different lengths padded, the padding masked), keeps every
decoder layer's cross-attention keys and values in the cache, and prefills the start token; the
decoder's steps then go as a GPT's do.

Continuous batching (gptcli.serving) prefills requests apart from the batch, copies each row into a
free slot of a batch decoder (`load_row`), and steps only the rows and cache positions in use
(`first_rows`: a decoder over views of the same cache memory).
"""

import copy

import torch
from torch import Tensor

from gptcli.errors import GptError
from gptcli.models.kv_cache import compiled_decode_length

GRAPH_WARMUP_STEPS = 3  # CUDA graphs need their kernels run (and compiled) once before capture


class Decoder:
    """One model, one batch size, one cache length: prefill and decode steps, eager or compiled."""

    def __init__(self, model: torch.nn.Module, batch_size: int, max_len: int, compile: bool = False):
        self.model = model
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.static = bool(getattr(model, "static_decode", False))
        self.encoder_decoder = bool(getattr(model, "encoder_decoder", False))
        if compile and not self.static:
            raise GptError(
                f"--compile needs a model with a fixed-shape decode step; {type(model).__name__} has none"
            )
        self.cache = model.new_cache(batch_size, max_len=max_len, device=self.device)
        self.max_len = self.cache.max_len
        # the step's inputs live in fixed tensors, so a captured CUDA graph reads them in place
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.compiled = compile
        # a compiled step compiles (on CUDA: is captured) on its first call: the read lengths compiled so far
        self.compiled_lengths: set[int | None] = set()
        self._step = self._new_step()
        self.graph = None  # a CUDA graph of the compiled step, captured on the first decode step
        self.use_graph = compile and self.device.type == "cuda"
        self.views: dict[tuple[int, int], Decoder] = {}  # (rows, cache length) -> first_rows, kept

    @torch.no_grad()
    def prefill(self, rows: list[list[int]]) -> Tensor:
        """Start over from these rows (B lists of ids of one length) -> (B, V) logits of their last token."""
        return self.extend(rows, 0)

    @torch.no_grad()
    def encode(self, sources: list[list[int]], start: int) -> Tensor:
        """An encoder-decoder: encode B prompts (lists of ids of any lengths) and start each row's decoder
        from the token `start` -> (B, V) logits of the first token after it."""
        if not self.encoder_decoder:
            raise GptError(f"{type(self.model).__name__} has no encoder: prefill its prompts")
        if len(sources) != self.batch_size or not all(sources):
            raise GptError(f"encode takes {self.batch_size} prompts of at least one token")
        from gptcli.models.encdec import pad_prompts

        src, mask = pad_prompts(sources)  # (B, S) each: padded at the end, the padding masked
        self.model.encode_source(src.to(self.device), self.cache, mask.to(self.device))
        return self.prefill([[start]] * self.batch_size)

    @torch.no_grad()
    def extend(self, rows: list[list[int]], start: int) -> Tensor:
        """Keep the first `start` cached tokens of every row and feed these rows (B lists of ids of one
        length) after them -> (B, V) logits of their last token. What was cached past `start` is
        forgotten: a chat's next turn (or a prefix cache hit) prefills only what is new. A model
        without a fixed-shape step (a recurrent state cannot go back) continues only from where it is."""
        if len(rows) != self.batch_size or len({len(r) for r in rows}) != 1:
            raise GptError(f"prefill takes {self.batch_size} rows of one length")
        if start == 0:
            self.cache.reset()
        elif not self.static and start != self.cache.pos:
            raise GptError(f"{type(self.model).__name__} can continue only from its {self.cache.pos} tokens")
        self.cache.pos = start
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)  # (B, T)
        logits, _ = self.model(idx, cache=self.cache, last_only=True)
        self.positions.fill_(start + idx.size(1))  # the next token of every row goes here
        return logits[:, -1, :]

    @torch.no_grad()
    def step(self, next_ids: Tensor) -> Tensor:
        """Feed each row its next token, (B,) -> (B, V) logits for the token after it."""
        if not self.static:
            logits, _ = self.model(next_ids.view(-1, 1), cache=self.cache, last_only=True)
            return logits[:, -1, :]
        self.ids.copy_(next_ids.view(-1, 1))
        if self.use_graph:
            logits = self._replay()
        else:
            length = self._compiled_length()
            logits = self._step(self.ids, self.positions, length)
            self.compiled_lengths.add(length)
        self.positions += 1
        return logits

    @property
    def warm(self) -> bool:
        """Whether the next step runs without compiling (or, on CUDA, capturing) one first."""
        if self.use_graph:
            return self.graph is not None
        return not self.compiled or self._compiled_length() in self.compiled_lengths

    def _compiled_length(self) -> int | None:
        """The cache positions a compiled CPU step reads, fixed for each compile (a handful up to any
        context; kv_cache.compiled_decode_length); None (the model decides) eager or on CUDA."""
        if not self.compiled or self.device.type != "cpu":
            return None
        return compiled_decode_length(self.positions, self.max_len)

    def load_row(self, slot: int, source: "Decoder", row: int = 0) -> None:
        """Copy row `row` of another decoder's cache (a request prefilled apart, say) into row `slot`
        of this one, with its position; the other rows are left as they are. Positions past the
        source row's keep what they held: never read, a row attends only up to its position."""
        if source.max_len > self.max_len:
            raise GptError(f"a cache of {source.max_len} tokens does not fit in one of {self.max_len}")
        n = int(source.positions[row])  # the positions the row holds: the rest is never read
        self.cache.copy_row(slot, source.cache, row, n)
        self.positions[slot] = source.positions[row]

    def first_rows(self, n: int, length: int | None = None) -> "Decoder":
        """A decoder over this one's first n rows (and first `length` cache positions): views of the
        same cache and positions, so a step of it advances those rows here; its own step (compiled
        apart when this one is). Its steps must write below `length`: rows' positions < length."""
        if not self.static:
            raise GptError(f"{type(self.model).__name__} has no fixed-shape decode step to run on some rows")
        length = self.max_len if length is None else length
        sub = copy.copy(self)
        sub.batch_size, sub.max_len = n, length
        sub.cache = self.cache.first_rows(n, length)  # views of the same memory
        sub.ids = torch.zeros(n, 1, dtype=torch.long, device=self.device)
        sub.positions = self.positions[:n]  # a view: stepping sub advances these rows here
        sub._step = sub._new_step()
        sub.graph, sub.compiled_lengths, sub.views = None, set(), {}
        return sub

    def view(self, n: int, length: int | None = None) -> "Decoder":
        """This decoder itself, or first_rows(n, length), made once and kept (compiled once)."""
        length = length or self.max_len
        if (n, length) == (self.batch_size, self.max_len):
            return self
        if (n, length) not in self.views:
            self.views[n, length] = self.first_rows(n, length)
        return self.views[n, length]

    def _new_step(self):
        """The step this decoder runs: _forward_step, compiled whole (fullgraph, static shapes) or eager."""
        if self.compiled:
            # every decoder (and view) compiles this one function, a graph per (rows, read length):
            # past dynamo's 8 per function the rest would run eager
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            return torch.compile(self._forward_step, fullgraph=True, dynamic=False)
        return self._forward_step

    def _forward_step(self, ids: Tensor, positions: Tensor, length: int | None) -> Tensor:
        """The fixed-shape step: (B, 1) ids at (B,) positions, reading `length` cache positions -> (B, V)
        logits (what is compiled: once per length)."""
        logits, _ = self.model(ids, cache=self.cache, last_only=True, positions=positions, read_length=length)
        return logits[:, -1, :]

    def _replay(self) -> Tensor:
        """The compiled step as a CUDA graph: captured once (after warm-up runs), replayed after."""
        if self.graph is None:  # (the step leaves positions alone: step() advances them after)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up writes at the current positions, as the step will
                for _ in range(GRAPH_WARMUP_STEPS):
                    self._step(self.ids, self.positions, None)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.graph_logits = self._step(self.ids, self.positions, None)
        self.graph.replay()
        return self.graph_logits
