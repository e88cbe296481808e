"""The shared session store: Redis through ``redis.asyncio``, for several proxy replicas.

A state is a hash ``{v: version, d: JSON}`` under ``prefix + key`` with a millisecond TTL.
Reads and compare-and-set writes are Lua scripts, so each is atomic on the server whatever
the number of replicas: a read restarts the idle timer, a write happens only if the stored
version is still the expected one. Blobs are plain strings under ``prefix + "blob:" + key``,
read with ``GETEX ... PX`` (which restarts their timer; Redis 6.2+) in one pipeline per call.

A Redis that hangs or is gone must not hold requests up: the client has connect and read
timeouts and no retries, every call runs under a deadline (``timeout_s``), and a
:class:`CircuitBreaker` opens after ``breaker_failures`` failures in a row: for
``breaker_cooldown_s`` seconds every call fails at once with :class:`StoreUnavailable`
(callers fail open), then one call probes whether Redis is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from proxy.sessions._state import SessionState, decode_state, encode_state

__all__ = ["CircuitBreaker", "RedisSessionStore", "StoreUnavailable"]

T = TypeVar("T")
_log = structlog.get_logger("nocp.sessions")

_GET = """
local d = redis.call('HGET', KEYS[1], 'd')
if not d then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return d
"""

_CAS = """
local v = redis.call('HGET', KEYS[1], 'v')
if (not v and ARGV[1] == '0') or v == ARGV[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
"""

# Token buckets (proxy.auth): ARGV = name, capacity per minute, cost, ... for each bucket of
# KEYS[1]. All are taken or none; returns the seconds to wait (as a string) or "0".
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wait = 0
local levels = {}
for i = 1, #ARGV, 3 do
  local name, cap, cost = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local s = redis.call('HMGET', KEYS[1], name .. ':l', name .. ':t')
  local level = tonumber(s[1]) or cap
  level = math.min(cap, level + (now - (tonumber(s[2]) or now)) * cap / 60)
  if cost > cap then cost = cap end
  if level < cost then wait = math.max(wait, (cost - level) * 60 / cap) end
  levels[#levels + 1] = {name, level, cost}
end
for _, b in ipairs(levels) do
  local level = b[2]
  if wait == 0 then level = level - b[3] end
  redis.call('HSET', KEYS[1], b[1] .. ':l', tostring(level), b[1] .. ':t', tostring(now))
end
redis.call('PEXPIRE', KEYS[1], 120000)
return tostring(wait)
"""


class StoreUnavailable(ConnectionError):
    """The store did not answer in time, failed, or its circuit breaker is open."""


class CircuitBreaker:
    """Closed until ``failures`` calls in a row fail; then open for ``cooldown_s`` (calls are
    refused); then half-open: one call is let through, and its outcome closes or reopens it."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = max(1, failures)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._failed = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def open(self) -> bool:
        """True while calls are refused."""
        return self._open_until is not None

    def allow(self) -> bool:
        """May a call go to the store now?"""
        if self._open_until is None:
            return True
        if self._probing or self.clock() < self._open_until:
            return False
        self._probing = True  # half-open: this call is the probe
        return True

    def success(self) -> None:
        """A call succeeded: the breaker closes."""
        if self._open_until is not None:
            _log.info("session_store_recovered")
        self._failed = 0
        self._open_until = None
        self._probing = False

    def abandon(self) -> None:
        """A call was cancelled: it proves nothing (a probe is tried again)."""
        self._probing = False

    def failure(self) -> None:
        """A call failed: count it; open (again) at the threshold or after a failed probe."""
        self._failed += 1
        if self._probing or self._failed >= self.failures:
            if self._open_until is None:
                _log.warning("session_store_unavailable", cooldown_s=self.cooldown_s)
            self._open_until = self.clock() + self.cooldown_s
            self._probing = False


class RedisSessionStore:
    """:class:`~proxy.sessions.SessionStore` on Redis (connects on first use)."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        prefix: str = "nocp:session:",
        timeout_s: float = 0.25,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 10.0,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown_s)
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # the default retries 3 times with backoff (seconds)
        )
        self._get_script = self._redis.register_script(_GET)
        self._cas_script = self._redis.register_script(_CAS)
        self._take_script = self._redis.register_script(_TAKE)
        self._closed = False

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one store call under the deadline and the circuit breaker."""
        if not self.breaker.allow():
            raise StoreUnavailable("session store circuit open")
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
        except Exception as exc:
            self.breaker.failure()
            raise StoreUnavailable(f"session store: {type(exc).__name__}") from exc
        except asyncio.CancelledError:
            self.breaker.abandon()
            raise
        self.breaker.success()
        return result

    async def get(self, key: str) -> SessionState | None:
        """The live state under ``key`` (its idle timer restarted), or None."""
        data = await self._guard(lambda: self._get_script(keys=[self.prefix + key], args=[self.ttl_ms]))
        return decode_state(data) if data else None

    async def put(self, key: str, state: SessionState, *, expected_version: int) -> bool:
        """Compare-and-set ``state`` under ``key``; True when written."""
        args: list[bytes | str | int] = [
            str(expected_version),
            str(state.version),
            encode_state(state),
            self.ttl_ms,
        ]
        written = await self._guard(lambda: self._cas_script(keys=[self.prefix + key], args=args))
        return bool(written)

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        await self._guard(lambda: self._redis.delete(self.prefix + key))

    async def take_tokens(self, key: str, buckets: Sequence[tuple[str, float, float]]) -> float:
        """Take ``cost`` from each ``(name, capacity per minute, cost)`` token bucket of
        ``key``, all or none, atomically across replicas: 0, or the seconds to wait."""
        args = [str(x) for bucket in buckets for x in bucket]
        wait = await self._guard(lambda: self._take_script(keys=[f"{self.prefix}rate:{key}"], args=args))
        return float(wait)

    def _blob_key(self, key: str) -> str:
        return f"{self.prefix}blob:{key}"

    async def get_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bytes | None]:
        """The live blob under each key (its idle timer restarted to ``ttl_s``), or None."""
        if not keys:
            return []
        ttl_ms = max(1, round(ttl_s * 1000))

        async def call() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.getex(self._blob_key(key), px=ttl_ms)
                return list(await pipe.execute())

        values = await self._guard(call)
        return [bytes(v) if v is not None else None for v in values]

    async def touch_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bool]:
        """Restart the idle timer of each live blob; True where the key is live."""
        if not keys:
            return []
        ttl_ms = max(1, round(ttl_s * 1000))

        async def call() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(self._blob_key(key), ttl_ms)
                return list(await pipe.execute())

        found = await self._guard(call)
        return [bool(x) for x in found]

    async def put_blobs(self, items: Mapping[str, bytes], *, ttl_s: float) -> None:
        """Write each blob, to be forgotten ``ttl_s`` after its last use."""
        if not items:
            return
        ttl_ms = max(1, round(ttl_s * 1000))

        async def call() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self._blob_key(key), value, px=ttl_ms)
                await pipe.execute()

        await self._guard(call)

    async def aclose(self) -> None:
        """Close the connection pool (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        await self._redis.aclose()
