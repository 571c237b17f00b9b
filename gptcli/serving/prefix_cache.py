"""Automatic prefix caching: keys and values of prompts seen before, reused by the prompts that repeat them.

    cache = PrefixCache(max_bytes=256 * 2**20)           # 0: off
    n, blocks = cache.lookup(prompt[:-1])                # the longest run of leading blocks held
    cache.load(decoder.cache, row, blocks)               # into positions 0 .. n-1 of that row
    logits = decoder.extend([prompt[n:]], n)             # prefill only the rest
    cache.store(prompt, decoder.cache, row)              # its full blocks, for the next prompt
    cache.lookup(prompt[:-1], namespace="chat")          # an adapter's blocks (gpt serve --adapter): its own

A chat sends its whole history every turn; with this cache the server prefills only the new turn.
The cache holds blocks of `block_tokens` tokens: each block's keys and values for every layer. A
block's key is a hash chained from position 0, blake2b(parent's key + the block's ids), so a key
names the whole prefix up to the end of its block. That is what makes a block valid: the keys are
stored after the rotary rotation at absolute positions, and every key and value depends on all the
tokens before it, so the same 16 ids after another prefix (or at another offset) are another block.
The same ids through another LoRA adapter have other keys and values too: a namespace (the
adapter's name; None for the base) is hashed into the chain's root.

Blocks are shared by every prompt that starts with them and evicted least recently used under
`max_bytes`. A chain is always touched from its leaf back to its root, so a parent is more recent than
any of its children and eviction takes leaves first: a child whose parent is gone could never match.

Shapes: n_layer layers, nkv key/value heads, b = block_tokens, hs head size.
"""

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from gptcli.models.kv_cache import KVCache

BLOCK_TOKENS = 16  # vLLM's default: a short block wastes little of a prompt, a long one hashes less


@dataclass
class PrefixCacheStats:
    lookups: int = 0  # prompts looked up
    hits: int = 0  # ... of which started from cached blocks
    cached_tokens: int = 0  # prompt tokens whose keys and values the cache gave, all prompts
    blocks: int = 0  # held now
    bytes: int = 0  # held now (device memory)
    max_bytes: int = 0
    evicted: int = 0  # blocks, since the start


@dataclass
class Block:
    k: Tensor  # (n_layer, nkv, b, hs)
    v: Tensor  # (n_layer, nkv, b, hs)


class PrefixCache:
    """Blocks of keys and values by the prefix they end, least recently used first (see the module docstring)."""

    def __init__(self, max_bytes: int, block_tokens: int = BLOCK_TOKENS):
        self.max_bytes, self.block_tokens = max_bytes, block_tokens
        self.blocks: OrderedDict[bytes, Block] = OrderedDict()  # oldest first
        self.stats = PrefixCacheStats(max_bytes=max_bytes)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def keys(self, ids: list[int], namespace: str | None = None) -> list[bytes]:
        """The chained key of every full block of ids: keys[i] names ids[: (i + 1) * block_tokens]."""
        keys, b = [], self.block_tokens
        parent = hashlib.blake2b(namespace.encode(), digest_size=16).digest() if namespace else b""
        for start in range(0, len(ids) - b + 1, b):
            block = array("q", ids[start : start + b]).tobytes()  # 8 bytes an id
            parent = hashlib.blake2b(parent + block, digest_size=16).digest()
            keys.append(parent)
        return keys

    def lookup(self, ids: list[int], namespace: str | None = None) -> tuple[int, list[Block]]:
        """The longest run of ids' leading full blocks held -> (its length in tokens, its blocks).
        Pass a prompt less its last token: that one must be prefilled, for the next token's logits."""
        if not self.enabled:
            return 0, []
        keys = []
        for key in self.keys(ids, namespace):
            if key not in self.blocks:
                break
            keys.append(key)
        self._touch(keys)
        self.stats.lookups += 1
        self.stats.hits += bool(keys)
        self.stats.cached_tokens += len(keys) * self.block_tokens
        return len(keys) * self.block_tokens, [self.blocks[key] for key in keys]

    def load(self, cache: KVCache, row: int, blocks: list[Block]) -> int:
        """Copy blocks (from lookup) into positions 0 .. n-1 of a cache's row -> n, the tokens loaded."""
        if not blocks:
            return 0
        b = self.block_tokens
        for i, block in enumerate(blocks):  # straight into the row: no joined copy of them all first
            for layer in range(len(cache.k)):
                cache.k[layer][row, :, i * b : (i + 1) * b].copy_(block.k[layer])  # (nkv, b, hs)
                cache.v[layer][row, :, i * b : (i + 1) * b].copy_(block.v[layer])
        return len(blocks) * b

    def store(self, ids: list[int], cache: KVCache, row: int, namespace: str | None = None) -> None:
        """Keep the full blocks of a cache's row that holds ids (its positions 0 .. len(ids)-1), those not
        held yet, evicting the least recently used blocks of other prefixes to make room."""
        if not self.enabled:
            return
        k0 = cache.k[0]  # (B, nkv, max_len, hs)
        block_bytes = 2 * len(cache.k) * k0.size(1) * self.block_tokens * k0.size(3) * k0.element_size()
        keys = self.keys(ids, namespace)[: self.max_bytes // block_bytes]  # a chain that fits, root first
        self._touch([key for key in keys if key in self.blocks])  # its held blocks are not evicted now
        b = self.block_tokens
        for i, key in enumerate(keys):
            if key in self.blocks:
                continue
            while self.stats.bytes + block_bytes > self.max_bytes:
                self.blocks.popitem(last=False)  # never this chain's: it fits and is the most recent
                self.stats.bytes -= block_bytes
                self.stats.evicted += 1
            positions = slice(i * b, (i + 1) * b)
            k = torch.stack([layer[row, :, positions] for layer in cache.k])  # (n_layer, nkv, b, hs), a copy
            v = torch.stack([layer[row, :, positions] for layer in cache.v])
            self.blocks[key] = Block(k, v)
            self.stats.bytes += block_bytes
        self._touch(keys)
        self.stats.blocks = len(self.blocks)

    def _touch(self, chain: list[bytes]) -> None:
        """Mark a chain (root first) most recently used, its root the most recent of all."""
        for key in reversed(chain):
            self.blocks.move_to_end(key)
