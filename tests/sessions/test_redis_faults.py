"""A hung or dead Redis: every store call under a deadline, a circuit breaker, requests unharmed."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import pytest

from proxy.sessions import CircuitBreaker, RedisSessionStore, StoreUnavailable
from proxy.testing import FakeUpstream
from tests.helpers import RedisProcess

LOG = "\n".join(
    f"2024-05-0{1 + i % 9}T10:{i % 60:02d}:00Z INFO worker-{i % 7} processed batch {i} in {i * 3 % 97} ms"
    for i in range(600)
)


def test_breaker_opens_refuses_then_probes() -> None:
    """The breaker opens after N failures in a row, refuses during the cool-down, then lets
    one probe through: a failed probe reopens it, a successful one closes it."""
    now = [0.0]
    breaker = CircuitBreaker(3, 10.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert not breaker.open
    breaker.failure()
    assert breaker.open and not breaker.allow()
    now[0] = 10.5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    breaker.failure()
    assert breaker.open and not breaker.allow()
    now[0] = 21.0
    assert breaker.allow()
    breaker.success()
    assert not breaker.open and breaker.allow() and breaker.allow()


async def test_paused_redis_fails_within_deadline_then_fast(redis_proc: RedisProcess) -> None:
    """With Redis paused, a store call fails within its deadline, and once the breaker is open
    calls fail at once; after Redis resumes and the cool-down passes, calls succeed again."""
    store = RedisSessionStore(
        redis_proc.url, ttl_s=60, timeout_s=0.2, breaker_failures=2, breaker_cooldown_s=0.5
    )
    try:
        await store.put_blobs({"k": b"v"}, ttl_s=60)
        redis_proc.pause()
        for _ in range(2):
            started = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await store.get_blobs(["k"], ttl_s=60)
            assert time.perf_counter() - started < 1.0
        assert store.breaker.open
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            await store.touch_blobs(["k"], ttl_s=60)
        assert time.perf_counter() - started < 0.05
        redis_proc.resume()
        await asyncio.sleep(0.6)
        assert await store.get_blobs(["k"], ttl_s=60) == [b"v"]
        assert not store.breaker.open
    finally:
        await store.aclose()


def agent_body(i: int) -> dict[str, Any]:
    """An agent turn whose large log output is cut (so its original is stored)."""
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": f"Why did batch job {i} fail?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": LOG + f"\nERROR job {i} failed"},
        ],
    }


async def latencies(http: aiohttp.ClientSession, url: str, n: int, offset: int) -> list[float]:
    """Seconds each of ``n`` agent requests took; every one must answer 200."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        async with http.post(
            f"{url}/v1/chat/completions",
            json=agent_body(offset + i),
            headers={"Authorization": "Bearer sk-test", "X-Session-Id": f"s{offset + i}"},
        ) as resp:
            await resp.read()
            assert resp.status == 200
        out.append(time.perf_counter() - started)
    return out


async def test_agent_requests_with_redis_paused(
    redis_proc: RedisProcess, fake: FakeUpstream, make_proxy: Any
) -> None:
    """With Redis paused (SIGSTOP), agent requests through nocp all succeed and add at most
    300 ms p50 over Redis healthy (printed: both p50s)."""
    proxy = await make_proxy(sessions={"backend": "redis", "redis_url": redis_proc.url})
    n = 20
    async with aiohttp.ClientSession() as http:
        await latencies(http, proxy.url, 3, 1000)  # warm up: connections, tokenizer, caches
        healthy = await latencies(http, proxy.url, n, 0)
        redis_proc.pause()
        paused = await latencies(http, proxy.url, n, 100)
    healthy_p50, paused_p50 = statistics.median(healthy), statistics.median(paused)
    print(
        f"\nagent requests, p50: Redis healthy {healthy_p50 * 1000:.1f} ms, "
        f"paused {paused_p50 * 1000:.1f} ms (max paused {max(paused) * 1000:.0f} ms)"
    )
    assert paused_p50 - healthy_p50 <= 0.3
    lines = await proxy.log_lines(2 * n + 3)
    assert all(line["status"] == 200 for line in lines)
