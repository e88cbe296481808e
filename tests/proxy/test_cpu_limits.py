"""CPU amplification (issue 14, item 4): large compression work runs in a worker process that
is killed at the stage's budget, and per request only so much uncached output is analysed."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import aiohttp
import pytest

from compressors import CompressionConfig, CompressionContext, cached, clear_cache, compress, remember
from proxy.pipeline import StageContext
from proxy.protocols import OpenAIChatAdapter
from proxy.server import STATE
from proxy.stages import ToolOutputStage
from proxy.testing import FakeUpstream
from proxy.translog import TransactionLog
from proxy.workers import CompressPool

NEWLINES = "\n" * 999_000  # the costliest output found: ~1 CPU-s to analyse


def log_output(seed: int, lines: int = 1200) -> str:
    """A compressible log of about 100 KB, different for each seed."""
    return "\n".join(
        f"2024-05-01T10:{i % 60:02d}:00Z INFO worker-{i % 7} processed batch {seed}-{i} in {i * 3 % 97} ms"
        for i in range(lines)
    )


def agent(outputs: list[str]) -> dict[str, Any]:
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
        for i in range(len(outputs))
    ]
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "What failed?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            *({"role": "tool", "tool_call_id": f"c{i}", "content": o} for i, o in enumerate(outputs)),
        ],
    }


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_pool_job_is_killed_at_its_deadline() -> None:
    """A job cancelled at its deadline stops at once: its worker process is gone, and the next
    job runs on a fresh worker with the same results as in this process."""
    pool = CompressPool(1)
    try:
        assert await pool.start()
        pid = pool._idle[0].proc.pid
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.run([(NEWLINES + "a", CompressionContext())], CompressionConfig())
        assert time.perf_counter() - started < 0.5
        for _ in range(100):
            if not alive(pid):
                break
            await asyncio.sleep(0.01)
        assert not alive(pid) and pool.killed == 1
        job = (log_output(1), CompressionContext())
        (result,) = await pool.run([job], CompressionConfig())
        assert result == compress(job[0], job[1], CompressionConfig()) and result.changed
        assert pool._idle[0].proc.pid != pid
    finally:
        await pool.aclose()


async def test_untouched_results_come_back_whole() -> None:
    """A result the worker left untouched comes back with the caller's text (sent back empty)."""
    pool = CompressPool(1)
    try:
        assert await pool.start()
        text = "short tool output " * 5  # below min_tokens: untouched
        (result,) = await pool.run([(text, CompressionContext())], CompressionConfig())
        assert not result.changed and result.text == text
    finally:
        await pool.aclose()


def test_cached_and_remember() -> None:
    """``cached`` reads the result cache without computing; ``remember`` fills it with a result
    computed elsewhere, which ``compress`` then returns as its own."""
    clear_cache()
    text, ctx, cfg = log_output(2), CompressionContext(), CompressionConfig()
    assert cached(text, ctx, cfg) is None
    result = compress(text, ctx, cfg)
    assert cached(text, ctx, cfg) == result
    clear_cache()
    remember(text, ctx, cfg, result)
    assert cached(text, ctx, cfg) == result and compress(text, ctx, cfg) is not None


async def test_analysis_budget_per_request() -> None:
    """Per request at most max_analysis_chars of uncached output are analysed, oldest first; the
    rest go as they were sent, and are analysed on a later request once earlier ones are cached."""
    clear_cache()
    outputs = [log_output(10 + i) for i in range(3)]
    budget = len(outputs[0]) + len(outputs[1]) // 2  # room for the first output only
    stage = ToolOutputStage(CompressionConfig(), max_analysis_chars=budget)
    adapter = OpenAIChatAdapter()

    async def run() -> list[bool]:
        body = agent(outputs)
        prompt = adapter.prompt(body)
        ctx = StageContext(
            model="gpt-4o", protocol="openai", record=TransactionLog(endpoint="/", protocol="openai")
        )
        after = await stage(prompt, ctx)
        return [
            a.text != b.text
            for a, b in zip(after.segments, prompt.segments, strict=True)
            if b.kind == "tool_output"
        ]

    assert await run() == [True, False, False]
    assert await run() == [True, True, False]  # the first is cached now: the budget goes to the second
    assert await run() == [True, True, True]


async def test_large_request_stops_at_stage_budget(fake: FakeUpstream, make_proxy: Any) -> None:
    """A 30 MB request of 15 outputs of ~1 MB of newlines: the stage times out, the request goes
    through unchanged, and the work stops (the worker is killed) instead of running on."""
    proxy = await make_proxy(pipeline={"stage_timeout_ms": 300}, history={"enabled": False})
    pool = proxy.server.app[STATE].compress_pool
    assert pool is not None and await pool.start()
    pid = pool._idle[0].proc.pid
    body = json.dumps(agent([NEWLINES + f"end {i}" for i in range(15)])).encode()
    assert len(body) > 29_000_000
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{proxy.url}/v1/chat/completions",
            data=io.BytesIO(body),
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        await r.read()
        assert r.status == 200
    (line,) = await proxy.log_lines(1)
    print(f"\nproxy overhead of the 30 MB request: {line['proxy_overhead_ms']:.0f} ms")
    assert line["proxy_overhead_ms"] < 3000  # the 300 ms budget, parsing and hashing; not the work
    assert [f["stage"] for f in line["fail_open"]] == ["tool_output"] and line["fail_open"][0][
        "reason"
    ] == "timeout"
    assert fake.requests[-1].body == body  # forwarded as sent
    for _ in range(100):
        if not alive(pid):
            break
        await asyncio.sleep(0.01)
    assert pool.killed >= 1 and not alive(pid)


async def test_small_requests_stay_inline(fake: FakeUpstream, make_proxy: Any) -> None:
    """Small tool outputs are compressed in the proxy's own process: no worker is started."""
    proxy = await make_proxy(history={"enabled": False})
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/v1/chat/completions", json=agent([log_output(3, 300)])) as r,
    ):
        assert r.status == 200
    pool = proxy.server.app[STATE].compress_pool
    assert pool is not None and pool._live == 0 and pool._starting == 0


def test_pipeline_limits_config(tmp_path: Any) -> None:
    """pipeline.workers and pipeline.max_analysis_chars load, and negative values are refused;
    workers: 0 builds no pool (compression on a thread)."""
    from proxy.config import load_settings
    from proxy.exceptions import ConfigError
    from proxy.server import create_app

    settings = load_settings(env={}, overrides={"pipeline": {"workers": 2, "max_analysis_chars": 1000}})
    assert (settings.pipeline.workers, settings.pipeline.max_analysis_chars) == (2, 1000)
    for bad in ({"workers": -1}, {"max_analysis_chars": -5}):
        with pytest.raises(ConfigError, match="pipeline"):
            load_settings(env={}, overrides={"pipeline": bad})
    log = {"dir": str(tmp_path)}
    app = create_app(load_settings(env={}, overrides={"pipeline": {"workers": 0}, "log": log}))
    assert app[STATE].compress_pool is None
