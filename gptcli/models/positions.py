"""Where each token sits, and which keys it may see: the GPT's position tables and attention masks.

    sinusoidal_table(n_pos, C)          fixed positions added to the embeddings ("sinusoidal")
    rope_tables(n_pos, hs) -> cos, sin  rotary angles, applied to q and k by apply_rotary ("rope")
    attention_mask(T, start, window)    causal (+ window) mask of T new tokens after `start` cached ones
    document_positions(doc_ids)         packed rows: each token's position inside its own document
    document_mask(doc_ids, window)      packed rows: causal (+ window) attention within a document only

A packed row holds several documents one after another; `doc_ids` (B, T) says which document each
token belongs to, e.g. [0, 0, 0, 1, 1, 2, 2, 2]. Positions restart at 0 in each document and no
token sees another document's, so the row computes what its documents would one at a time.
The decode step's mask over a KV cache is gptcli/models/kv_cache.py's decode_mask.
"""

import torch
from torch import Tensor


def _angles(n_pos: int, dim: int, base: float) -> Tensor:
    """Angle pos / base^(2i/dim) for every position and every pair i of dimensions: (n_pos, dim/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    pos = torch.arange(n_pos, dtype=torch.float64)
    return torch.outer(pos, inv_freq)  # float64 so that cos/sin of large angles stay exact in fp32


def sinusoidal_table(n_pos: int, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed positions of 'Attention Is All You Need': sin on even, cos on odd dims. (n_pos, dim)"""
    angles = _angles(n_pos, dim, base)
    table = torch.zeros(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()
    return table.float()


def rope_tables(n_pos: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, each (n_pos, head_dim/2)."""
    angles = _angles(n_pos, head_dim, base)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of every head by its position's angle (RoPE).

    x: (B, nh, T, hs); cos, sin: (T, hs/2) for the positions of x's T tokens, or (B, 1, T, hs/2)
    when every row has positions of its own. A query at position m and a key at position n then
    have a dot product that depends only on m - n.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, nh, T, hs)


def attention_mask(T: int, start: int, window: int | None, device: torch.device | None = None) -> Tensor:
    """Which keys each query may see: (T, start + T) booleans, True = attend.

    Query i sits at position start + i; key j at position j. A query sees itself and earlier keys,
    and with a window only the last `window` of them (itself included).
    """
    q_pos = torch.arange(start, start + T, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(start + T, device=device)[None, :]  # (1, L)
    mask = k_pos <= q_pos
    if window is not None:
        mask = mask & (k_pos > q_pos - window)
    return mask  # (T, L)


def document_positions(doc_ids: Tensor) -> Tensor:
    """Each token's position inside its document: (B, T) ids -> (B, T) positions.

    A document starts wherever the id changes: [0, 0, 0, 1, 1, 2, 2, 2] -> [0, 1, 2, 0, 1, 0, 1, 2].
    """
    B, T = doc_ids.shape
    t = torch.arange(T, device=doc_ids.device).expand(B, T)  # (B, T)
    first = torch.where(_starts(doc_ids), t, 0).cummax(dim=1).values  # (B, T): where its document starts
    return t - first


def document_mask(doc_ids: Tensor, window: int | None) -> Tensor:
    """Which keys each query of a packed row may see: (B, T) ids -> (B, 1, T, T) booleans, True = attend.

    Causal attention (with a window: the last `window` keys, itself included) within the query's own
    document only; the 1 broadcasts over heads. Every query sees itself, so no row of it is empty.
    """
    T = doc_ids.size(1)
    doc = _starts(doc_ids).cumsum(dim=1)  # (B, T): documents numbered along the row, as positions see them
    mask = attention_mask(T, 0, window, doc_ids.device)[None]  # (1, T, T)
    mask = mask & (doc[:, :, None] == doc[:, None, :])  # (B, T, T): the query's document is the key's
    return mask[:, None]  # (B, 1, T, T)


def _starts(doc_ids: Tensor) -> Tensor:
    """(B, T) booleans, True at the first token of each document (wherever the id changes)."""
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts
