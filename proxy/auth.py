"""Client authentication, per-key rate limits and the admin key.

With ``auth.keys`` configured, every proxied request (rewritten or passed through) must carry
one of those keys where its protocol puts a key (``Authorization: Bearer``, ``x-api-key``,
``x-goog-api-key`` or ``?key=``); nocp knows only their SHA-256 (:func:`hash_key`). The key
names a tenant, which scopes everything nocp stores for the request. The client's key is
nocp's own: it is taken off the request, and the upstream gets the operator's key
(``api_key_env``) or none.

Each key may have limits, token buckets refilled per minute: requests and tokens (estimated
as body bytes / 4). Buckets live in Redis when ``sessions.backend`` is ``redis`` (shared by
replicas; one atomic script per request), else in the process; when Redis is unavailable the
process's own buckets stand in.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from proxy.config import AuthConfig
from proxy.exceptions import ProxyHTTPError

__all__ = [
    "Authenticator",
    "LocalLimiter",
    "Principal",
    "RateLimited",
    "Unauthorized",
    "hash_key",
    "strip_credentials",
]

_log = structlog.get_logger("nocp.auth")
CREDENTIAL_HEADERS = ("Authorization", "x-api-key", "x-goog-api-key")
BYTES_PER_TOKEN = 4


class Unauthorized(ProxyHTTPError):
    """No key, or a key nocp does not know."""

    status = 401
    error_type = "invalid_request_error"


class RateLimited(ProxyHTTPError):
    """A key is over one of its limits; ``retry_after`` is when it may try again (seconds)."""

    status = 429
    error_type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, math.ceil(retry_after))


def hash_key(key: str) -> str:
    """What ``auth.keys[].key_sha256`` holds for ``key``: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The key a request carries, wherever its protocol puts it."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or query.get("key") or None


def strip_credentials(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], query: Mapping[str, str], raw_path: str
) -> tuple[CIMultiDict[str], MultiDict[str], str]:
    """The request without the client's key: headers, query and raw path (``key=`` removed)."""
    out = CIMultiDict(headers)
    for name in CREDENTIAL_HEADERS:
        out.popall(name, None)
    rest: MultiDict[str] = MultiDict((k, v) for k, v in query.items() if k != "key")
    path, sep, qs = raw_path.partition("?")
    if sep:
        kept = [p for p in qs.split("&") if p.split("=", 1)[0] != "key"]
        raw_path = path + ("?" + "&".join(kept) if kept else "")
    return out, rest, raw_path


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client key: its tenant, an id for its buckets, its limits (0: none)."""

    tenant: str
    key_id: str
    requests_per_min: float
    tokens_per_min: float


Bucket = tuple[str, float, float]  # name, capacity (= refill per minute), cost


class Limiter(Protocol):
    """Token buckets: take ``cost`` from each bucket of ``key``, all or nothing."""

    async def take(self, key: str, buckets: list[Bucket]) -> float:
        """0 when taken; else the seconds until they could be (nothing is taken)."""


class LocalLimiter:
    """Token buckets in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._state: dict[tuple[str, str], tuple[float, float]] = {}

    async def take(self, key: str, buckets: list[Bucket]) -> float:
        """0 when taken; else the seconds until they could be (nothing is taken)."""
        return self.take_now(key, buckets)

    def take_now(self, key: str, buckets: list[Bucket]) -> float:
        """:meth:`take`, synchronously."""
        now = self.clock()
        wait = 0.0
        levels = []
        for name, capacity, cost in buckets:
            level, at = self._state.get((key, name), (capacity, now))
            level = min(capacity, level + (now - at) * capacity / 60)
            cost = min(cost, capacity)  # a request bigger than a minute's worth needs a full bucket
            if level < cost:
                wait = max(wait, (cost - level) * 60 / capacity)
            levels.append((name, level, cost))
        for name, level, cost in levels:
            self._state[key, name] = (level - cost if wait == 0 else level, now)
        return wait


class RedisLimiter:
    """Token buckets in Redis (shared by replicas); the process's own when Redis fails."""

    def __init__(self, store: Any) -> None:
        self.store = store  # a RedisSessionStore (its deadline and circuit breaker apply)
        self.local = LocalLimiter()

    async def take(self, key: str, buckets: list[Bucket]) -> float:
        """0 when taken; else the seconds until they could be (nothing is taken)."""
        try:
            return float(await self.store.take_tokens(key, buckets))
        except Exception as exc:
            _log.warning("rate_limit_store_unavailable", error=type(exc).__name__)
            return self.local.take_now(key, buckets)


class Authenticator:
    """Who a request is (``auth.keys``), whether it may go now (limits), and the admin key."""

    def __init__(self, cfg: AuthConfig, limiter: Limiter | None = None) -> None:
        self.cfg = cfg
        self.limiter: Limiter = limiter or LocalLimiter()
        self._keys = {
            k.key_sha256.lower(): Principal(
                tenant=k.tenant,
                key_id=k.key_sha256.lower()[:24],
                requests_per_min=cfg.requests_per_min if k.requests_per_min is None else k.requests_per_min,
                tokens_per_min=cfg.tokens_per_min if k.tokens_per_min is None else k.tokens_per_min,
            )
            for k in cfg.keys
        }

    @property
    def enabled(self) -> bool:
        """True when clients must present one of nocp's keys."""
        return bool(self._keys)

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Principal | None:
        """The key's principal (None when client auth is off); raises :class:`Unauthorized`."""
        if not self._keys:
            return None
        key = presented_key(headers, query)
        if not key:
            raise Unauthorized("nocp: this proxy needs an API key (one nocp issued)", code="missing_api_key")
        principal = self._keys.get(hash_key(key))
        if principal is None:
            raise Unauthorized("nocp: unknown API key", code="invalid_api_key")
        return principal

    async def admit(self, principal: Principal | None, body_bytes: int) -> None:
        """Take one request and ``body_bytes / 4`` tokens from the key's buckets; raises
        :class:`RateLimited` (nothing taken) when either is short."""
        if principal is None:
            return
        buckets: list[Bucket] = []
        if principal.requests_per_min > 0:
            buckets.append(("requests", principal.requests_per_min, 1.0))
        if principal.tokens_per_min > 0:
            buckets.append(("tokens", principal.tokens_per_min, body_bytes / BYTES_PER_TOKEN))
        if not buckets:
            return
        wait = await self.limiter.take(principal.key_id, buckets)
        if wait > 0:
            raise RateLimited(
                f"nocp: rate limit of tenant {principal.tenant} reached; retry in {math.ceil(wait)} s",
                retry_after=wait,
                code="rate_limit_exceeded",
            )

    def admin_allowed(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """May this request read ``/metrics`` and ``/v1/nocp/*`` on the proxy's port? With
        ``admin_key_sha256``: only with that key; else only while client auth is off."""
        want = self.cfg.admin_key_sha256
        if want is None:
            return not self._keys
        key = presented_key(headers, query)
        return key is not None and hmac.compare_digest(hash_key(key), want.lower())
