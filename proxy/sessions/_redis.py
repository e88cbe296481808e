"""The shared session store: Redis through ``redis.asyncio``, for several proxy replicas.

A state is a hash ``{v: version, d: JSON}`` under ``prefix + key`` with a millisecond TTL.
Reads and compare-and-set writes are Lua scripts, so each is atomic on the server whatever
the number of replicas: a read restarts the idle timer, a write happens only if the stored
version is still the expected one. Blobs are plain strings under ``prefix + "blob:" + key``,
read with ``GETEX ... PX`` (which restarts their timer; Redis 6.2+) in one pipeline per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.sessions._state import SessionState, decode_state, encode_state

__all__ = ["RedisSessionStore"]

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


class RedisSessionStore:
    """:class:`~proxy.sessions.SessionStore` on Redis (connects on first use)."""

    def __init__(self, url: str, *, ttl_s: float, prefix: str = "nocp:session:") -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.prefix = prefix
        self._redis: Any = aioredis.Redis.from_url(url)
        self._get_script = self._redis.register_script(_GET)
        self._cas_script = self._redis.register_script(_CAS)
        self._closed = False

    async def get(self, key: str) -> SessionState | None:
        """The live state under ``key`` (its idle timer restarted), or None."""
        data = await self._get_script(keys=[self.prefix + key], args=[self.ttl_ms])
        return decode_state(data) if data else None

    async def put(self, key: str, state: SessionState, *, expected_version: int) -> bool:
        """Compare-and-set ``state`` under ``key``; True when written."""
        written = await self._cas_script(
            keys=[self.prefix + key],
            args=[str(expected_version), str(state.version), encode_state(state), self.ttl_ms],
        )
        return bool(written)

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        await self._redis.delete(self.prefix + key)

    def _blob_key(self, key: str) -> str:
        return f"{self.prefix}blob:{key}"

    async def get_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bytes | None]:
        """The live blob under each key (its idle timer restarted to ``ttl_s``), or None."""
        if not keys:
            return []
        ttl_ms = max(1, round(ttl_s * 1000))
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.getex(self._blob_key(key), px=ttl_ms)
            values = await pipe.execute()
        return [bytes(v) if v is not None else None for v in values]

    async def touch_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bool]:
        """Restart the idle timer of each live blob; True where the key is live."""
        if not keys:
            return []
        ttl_ms = max(1, round(ttl_s * 1000))
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pexpire(self._blob_key(key), ttl_ms)
            found = await pipe.execute()
        return [bool(x) for x in found]

    async def put_blobs(self, items: Mapping[str, bytes], *, ttl_s: float) -> None:
        """Write each blob, to be forgotten ``ttl_s`` after its last use."""
        if not items:
            return
        ttl_ms = max(1, round(ttl_s * 1000))
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self._blob_key(key), value, px=ttl_ms)
            await pipe.execute()

    async def aclose(self) -> None:
        """Close the connection pool (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        await self._redis.aclose()
