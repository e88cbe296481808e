"""Prompt-cache breakpoints for protocols that cache only where the client marks it.

A feature of the exchange (see :mod:`proxy.exchange`): before the request is sent, the
adapter adds its breakpoints to a request that has none (Anthropic: ``anthropic.auto_cache``),
and the TransactionLog says how many (``cache_breakpoints_added``); the cost model then
prices the baseline (the request as the client sent it) without any prompt cache.
"""

from __future__ import annotations

from proxy.config import AnthropicConfig
from proxy.exchange import Exchange, FeatureRequest

__all__ = ["AutoCache"]


class AutoCache:
    """The feature: adds breakpoints where the adapter knows how."""

    def __init__(self, config: AnthropicConfig) -> None:
        self.config = config

    def begin(self, x: Exchange) -> FeatureRequest | None:
        """Its part in ``x``: only when switched on, for protocols that cache only where marked."""
        if not self.config.auto_cache or not x.adapter.caches_at_breakpoints:
            return None
        return _Breakpoints(self.config.cache_ttl)


class _Breakpoints(FeatureRequest):
    def __init__(self, ttl: str) -> None:
        self.ttl = ttl

    def before_send(self, x: Exchange) -> bool:
        added = x.adapter.auto_cache(x.body, x.model, self.ttl)
        x.record.cache_breakpoints_added = added
        return added > 0
