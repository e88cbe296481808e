"""Provider-style prompt prefix caching, simulated.

OpenAI caches prompts of 1024 tokens or more; a later request that starts with the same tokens
gets the shared prefix billed as ``cached_tokens``, in steps of 128 tokens. We model exactly
that: a prompt (a sequence of token ids) is cut into 128-token blocks, and each block is named
by a hash chained over all blocks before it, so a block hash stands for the whole prefix up to
its end. The set of hashes seen so far is a trie keyed by block hashes; a lookup walks the new
prompt's blocks until the first unseen one. Both lookup and insert are O(prompt length).

The store is an LRU bounded by ``max_blocks`` so a long benchmark run cannot grow it without
limit (real providers evict after minutes of inactivity, too); the default holds prompts
totalling about 25M tokens in roughly 30 MB.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

__all__ = ["BLOCK_TOKENS", "MIN_CACHED_TOKENS", "PrefixCache"]

BLOCK_TOKENS: Final = 128
MIN_CACHED_TOKENS: Final = 1024


class PrefixCache:
    """Longest shared prefix with earlier prompts of the same namespace (e.g. model)."""

    def __init__(
        self,
        *,
        block: int = BLOCK_TOKENS,
        min_tokens: int = MIN_CACHED_TOKENS,
        max_blocks: int = 200_000,
    ) -> None:
        self.block = block
        self.min_tokens = min_tokens
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()

    def _chain(self, namespace: str, ids: Sequence[int]) -> list[bytes]:
        """Chained hashes of the full blocks of ``ids``: entry i names the prefix ids[:(i+1)*block]."""
        prev = hashlib.blake2b(namespace.encode("utf-8"), digest_size=16).digest()
        packed = array("q", ids).tobytes()
        width = self.block * 8
        out: list[bytes] = []
        for start in range(0, (len(ids) // self.block) * width, width):
            prev = hashlib.blake2b(prev + packed[start : start + width], digest_size=16).digest()
            out.append(prev)
        return out

    def lookup_and_store(self, namespace: str, ids: Sequence[int]) -> int:
        """Cached tokens for prompt ``ids``: the longest prefix shared with an earlier prompt,
        rounded down to a multiple of ``block``, or 0 when that is below ``min_tokens``. The
        prompt is then remembered (prompts shorter than ``min_tokens`` are neither)."""
        if len(ids) < self.min_tokens:
            return 0
        chain = self._chain(namespace, ids)
        hit = 0
        for h in chain:
            if h not in self._blocks:
                break
            hit += 1
        # Newest-first, so the LRU evicts a prompt's tail blocks before the prefix they extend.
        for h in reversed(chain):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
        cached = hit * self.block
        return cached if cached >= self.min_tokens else 0
