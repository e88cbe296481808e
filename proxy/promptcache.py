"""Prompt caching the provider does only when asked: a feature of the exchange.

- Anthropic caches a prompt only up to explicit ``cache_control`` breakpoints: before the
  request is sent, the adapter adds its breakpoints to a request that has none
  (``anthropic.auto_cache``) and the TransactionLog says how many
  (``cache_breakpoints_added``); the cost model then prices the baseline (the request as the
  client sent it) without any prompt cache.
- OpenAI routes a prompt to a cache by its prefix and, when given, ``prompt_cache_key``: with
  ``openai.prompt_cache_key`` (off by default) a request without one gets a key per tenant and
  session, so one session's requests reach the same cache.
"""

from __future__ import annotations

import hashlib

from proxy.config import AnthropicConfig, OpenAIConfig
from proxy.exchange import Exchange, FeatureRequest

__all__ = ["PromptCache", "cache_key"]


def cache_key(tenant: str, session: str) -> str:
    """The ``prompt_cache_key`` of a session (a digest: nothing of the session id shows)."""
    raw = f"{tenant}\0{session}".encode("utf-8", "surrogatepass")
    return "nocp-" + hashlib.blake2b(raw, digest_size=12).hexdigest()


class PromptCache:
    """The feature: breakpoints and cache keys where the adapter knows how."""

    def __init__(self, anthropic: AnthropicConfig, openai: OpenAIConfig) -> None:
        self.anthropic = anthropic
        self.openai = openai

    def begin(self, x: Exchange) -> FeatureRequest | None:
        """Its part in ``x``: only what is switched on and what the protocol supports."""
        breakpoints = self.anthropic.auto_cache and x.adapter.caches_at_breakpoints
        key_field = x.adapter.cache_key_field if self.openai.prompt_cache_key else None
        if not breakpoints and (key_field is None or x.record.session_id is None):
            return None
        return _Request(self.anthropic.cache_ttl if breakpoints else None, key_field)


class _Request(FeatureRequest):
    def __init__(self, ttl: str | None, key_field: str | None) -> None:
        self.ttl = ttl
        self.key_field = key_field

    def before_send(self, x: Exchange) -> bool:
        changed = False
        if self.ttl is not None:
            added = x.adapter.auto_cache(x.body, x.model, self.ttl)
            x.record.cache_breakpoints_added = added
            changed = added > 0
        field = self.key_field
        if field is not None and x.record.session_id and not x.body.get(field):
            x.body[field] = cache_key(x.tenant, x.record.session_id)
            changed = True
        return changed
