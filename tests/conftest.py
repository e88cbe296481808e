"""Shared fixtures: the evaluation data, and a proxy in front of the fake upstream.

Plain helpers (functions, classes, constants) shared between test modules are in
``tests/helpers.py``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestServer

from tests.helpers import SECRET, ProxyFactory, RedisProcess, RunningProxy, eval_data_root, start_redis

if TYPE_CHECKING:
    from proxy import Stage
    from proxy.testing import FakeUpstream


@pytest.fixture(scope="session")
def eval_data() -> Path:
    """The evaluation data folder; skips when absent, but fails in CI where it must exist."""
    root = eval_data_root()
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"evaluation data not found at {root} (set NOCP_EVAL_DATA)")
        pytest.skip(f"evaluation data not found at {root} (set NOCP_EVAL_DATA)")
    return root


# --- the proxy in front of the fake upstream ------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI + Gemini provider on 127.0.0.1."""
    from proxy.testing import FakeUpstream

    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def make_proxy(tmp_path: Path, fake: FakeUpstream) -> AsyncIterator[ProxyFactory]:
    """Start proxies in front of ``fake``: ``await make_proxy(stages=..., **settings)``."""
    from proxy import create_app, load_settings

    servers: list[TestServer] = []

    async def start(
        stages: Sequence[Stage] | None = None, env: dict[str, str] | None = None, **raw: Any
    ) -> RunningProxy:
        raw.setdefault(
            "upstreams",
            [
                {"name": "fake-openai", "base_url": f"{fake.url}/v1", "protocol": "openai"},
                {"name": "fake-gemini", "base_url": fake.url, "protocol": "gemini"},
                {"name": "fake-anthropic", "base_url": fake.url, "protocol": "anthropic"},
            ],
        )
        raw.setdefault("log", {"dir": str(tmp_path / "logs")})
        raw["retrieval"] = {"secret": SECRET, **raw.get("retrieval", {})}
        settings = load_settings(env=env or {}, overrides=raw)
        server = TestServer(create_app(settings, stages=stages), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return RunningProxy(server=server, log_path=settings.log.path)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, on a loopback port (it may be paused)."""
    redis = start_redis(tmp_path)
    try:
        yield redis
    finally:
        redis.resume()  # a stopped process does not act on SIGTERM
        redis.proc.terminate()
        redis.proc.wait(timeout=10)
