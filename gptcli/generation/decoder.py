"""The model side of generation: prefill a batch of rows, then one decode step per token.

    decoder = Decoder(model, batch_size=4, max_len=512, compile=False)
    logits = decoder.prefill(rows)       # (B, V): rows are lists of ids, all the same length
    logits = decoder.step(next_ids)      # (B,) ids -> (B, V); each row advances one position

The KV cache is allocated once for the decoder's life and reused: a prefill resets it. A decode
step hands the model each row's position as a tensor (GPT.forward(..., positions=)), so its
shapes never change: one token per row, the whole preallocated cache read under a mask. That is
what lets `compile=True` compile the step whole with torch.compile (fullgraph, static shapes:
no recompilation from one position to the next) and, on CUDA, replay it as a CUDA graph: one
launch per token instead of one per kernel. The step never synchronizes with the host; reading
the sampled ids back (for streaming) is the caller's one sync per token.

Models without a fixed-shape step (the LSTM baseline; a model's `static_decode` says) run every
forward eagerly through the cache's `pos`.
"""

import torch
from torch import Tensor

from gptcli.errors import GptError

GRAPH_WARMUP_STEPS = 3  # CUDA graphs need their kernels run (and compiled) once before capture


class Decoder:
    """One model, one batch size, one cache length: prefill and decode steps, eager or compiled."""

    def __init__(self, model: torch.nn.Module, batch_size: int, max_len: int, compile: bool = False):
        self.model = model
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.static = bool(getattr(model, "static_decode", False))
        if compile and not self.static:
            raise GptError(
                f"--compile needs a model with a fixed-shape decode step; {type(model).__name__} has none"
            )
        self.cache = model.new_cache(batch_size, max_len=max_len, device=self.device)
        self.max_len = self.cache.max_len
        # the step's inputs live in fixed tensors, so a captured CUDA graph reads them in place
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self._step = self._forward_step
        if compile:
            self._step = torch.compile(self._forward_step, fullgraph=True, dynamic=False)
        self.graph = None  # a CUDA graph of the compiled step, captured on the first decode step
        self.use_graph = compile and self.device.type == "cuda"

    @torch.no_grad()
    def prefill(self, rows: list[list[int]]) -> Tensor:
        """Start over from these rows (B lists of ids of one length) -> (B, V) logits of their last token."""
        if len(rows) != self.batch_size or len({len(r) for r in rows}) != 1:
            raise GptError(f"prefill takes {self.batch_size} rows of one length")
        self.cache.reset()
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)  # (B, T)
        logits, _ = self.model(idx, cache=self.cache, last_only=True)
        self.positions.fill_(idx.size(1))  # the next token of every row goes here
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
            logits = self._step(self.ids, self.positions)
        self.positions += 1
        return logits

    def _forward_step(self, ids: Tensor, positions: Tensor) -> Tensor:
        """The fixed-shape step: (B, 1) ids at (B,) positions -> (B, V) logits (what is compiled)."""
        logits, _ = self.model(ids, cache=self.cache, last_only=True, positions=positions)
        return logits[:, -1, :]

    def _replay(self) -> Tensor:
        """The compiled step as a CUDA graph: captured once (after warm-up runs), replayed after."""
        if self.graph is None:
            saved = self.positions.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up writes at the current positions, as the step will
                for _ in range(GRAPH_WARMUP_STEPS):
                    self._step(self.ids, self.positions)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.graph_logits = self._step(self.ids, self.positions)
            self.positions.copy_(saved)
        self.graph.replay()
        return self.graph_logits
