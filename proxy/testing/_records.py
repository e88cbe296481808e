"""What the fake upstream records: the requests it received and the usage it billed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy

__all__ = ["RecordedRequest", "UsageRecord"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received: ``path`` is the raw (undecoded) path, ``query_string`` the raw
    query, ``headers`` a copy of the request headers, ``body`` the raw body bytes."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query parameters, decoded."""
        return MultiDictProxy(MultiDict(parse_qsl(self.query_string, keep_blank_values=True)))


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Tokens billed for one answered LLM request (as reported in its usage).

    ``prompt_tokens`` is the whole prompt and ``cached_tokens`` the part read from the cache. For
    Anthropic, whose usage reports them apart, ``prompt_tokens`` = input + cache read + cache
    creation, ``cache_creation_tokens`` is what was written to the cache (the 1-hour part of it in
    ``cache_creation_1h_tokens``); the other protocols write no separately billed cache."""

    protocol: Literal["openai", "gemini", "responses", "anthropic"]
    model: str
    stream: bool
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
