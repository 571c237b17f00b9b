"""The GPT's KV cache: keys and values of the tokens seen so far, for generation.

A prefill writes T tokens for every row at once (`update`, rows share `pos`); a decode step writes
one token per row at that row's own position (`write_at`) and reads the whole preallocated buffer
under `decode_mask`, so the step's shapes never change (torch.compile, CUDA graphs) and rows can be
at different positions (continuous batching).

Shapes: B batch, nkv key/value heads, T new tokens, hs head size, L = max_len.
"""

import copy

import torch
from torch import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, preallocated for `max_len` tokens per layer.

    Two ways in. A prefill (`update`): `pos` is how many tokens every row holds; each attention
    layer writes its new keys/values at pos .. pos+T-1 and reads 0 .. pos+T-1, and the model
    advances `pos` once all layers have run. A decode step (`write_at`) with explicit per-row
    `positions`: one token per row, written at that row's own position, and the whole buffer read
    back under a mask, so its shapes are fixed (what torch.compile and CUDA graphs need) and rows
    may be at different positions (continuous batching); the caller tracks the positions.
    Keys are stored after the rotary rotation, so they are never rotated twice.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0
        self.rows = torch.arange(batch_size, device=device)  # (B,): write_at's row indices

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new (B, nkv, T, hs) keys/values of `layer`; return all of them, (B, nkv, pos+T, hs)."""
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        # cast back in case the cache was made in another dtype than the compute (e.g. under autocast)
        return self.k[layer][:, :, :end].to(k.dtype), self.v[layer][:, :, :end].to(v.dtype)

    def write_at(self, layer: int, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Store row b's new (nkv, 1, hs) key/value at positions[b]; return the whole (B, nkv, max_len, hs)
        buffers (the caller masks what each row may see, decode_mask, and may read only a prefix)."""
        # an indexed write (index_put_), which a compiled step does in place: a scatter_ there copied
        # the whole buffer out and back every step
        self.k[layer][self.rows, :, positions] = k[:, :, 0].to(self.k[layer].dtype)  # (B, nkv, hs)
        self.v[layer][self.rows, :, positions] = v[:, :, 0].to(self.v[layer].dtype)
        return self.k[layer].to(k.dtype), self.v[layer].to(v.dtype)

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.pos = 0

    def copy_row(self, slot: int, source: "KVCache", row: int, n: int) -> None:
        """Copy the first n positions of another cache's row `row` into our row `slot` (continuous
        batching: a request prefilled apart joins the batch); positions past n are never read."""
        for layer in range(len(self.k)):
            self.k[layer][slot, :, :n] = source.k[layer][row, :, :n]  # (nkv, n, hs)
            self.v[layer][slot, :, :n] = source.v[layer][row, :, :n]

    def first_rows(self, n: int, length: int) -> "KVCache":
        """A cache over our first n rows and first `length` positions: views of the same memory."""
        view = copy.copy(self)
        view.k = [k[:n, :, :length] for k in self.k]  # (n, nkv, length, hs) views
        view.v = [v[:n, :, :length] for v in self.v]
        view.batch_size, view.max_len, view.rows = n, length, self.rows[:n]
        return view


def decode_length(positions: Tensor, max_len: int, given: int | None) -> int:
    """The cache positions a decode step reads: `given` (a compiled CPU step's, compiled_decode_length);
    else, eager on a CPU, as far as the furthest row (reading positions costs no sync there: keys past
    it are nobody's yet); else all of them (fixed, as compiling and CUDA graphs need)."""
    if given is not None:
        return given
    if positions.device.type == "cpu" and not torch.compiler.is_compiling():
        return int(positions.max()) + 1
    return max_len


def compiled_decode_length(positions: Tensor, max_len: int) -> int:
    """What a compiled CPU step reads: past every row's position, rounded up to a power of two (at least
    64, at most the cache). Each length is compiled once (a handful up to any context), and a short
    context does not read the whole buffer: a step compiled over 1,024 positions took 60 ms a token on
    GPT-2 124M where one over 80 took 37 (2-core Xeon, 1 thread)."""
    return min(max_len, max(64, 1 << int(positions.max()).bit_length()))


def decode_mask(positions: Tensor, max_len: int, window: int | None) -> Tensor:
    """Which cached keys each row's one new token may see: (B, 1, 1, max_len) booleans, True = attend.

    Row b's token sits at positions[b]; keys 0 .. positions[b] are written, the rest of the
    preallocated cache is not yet (or no longer) this row's. With a window, only the last
    `window` of them. The shape never changes, so a compiled decode step never recompiles.
    """
    k_pos = torch.arange(max_len, device=positions.device)[None, :]  # (1, L)
    q_pos = positions[:, None]  # (B, 1)
    mask = k_pos <= q_pos
    if window is not None:
        mask = mask & (k_pos > q_pos - window)
    return mask[:, None, None, :]  # (B, 1, 1, L): broadcast over heads and the one query
