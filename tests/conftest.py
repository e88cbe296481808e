"""Shared fixtures: the evaluation data, and a proxy in front of the fake upstream."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from proxy import Stage
    from proxy.testing import FakeUpstream

REPO = Path(__file__).resolve().parent.parent
SECRET = "nocp-test-secret"  # the retrieval secret every test proxy gets (marker ids are keyed)


def complete_lines(path: Path) -> list[str]:
    """The newline-terminated lines of ``path``: a line a writer is still writing is left out."""
    if not path.exists():
        return []
    return path.read_text().split("\n")[:-1]


def eval_data_root() -> Path:
    """``NOCP_EVAL_DATA`` or ``../shared/eval-data`` beside the checkout."""
    return Path(os.environ.get("NOCP_EVAL_DATA", REPO.parent / "shared" / "eval-data"))


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


@dataclass
class RunningProxy:
    """A proxy on a loopback port and where its TransactionLog goes."""

    server: TestServer
    log_path: Path

    @property
    def url(self) -> str:
        """Root URL of the proxy, e.g. ``http://127.0.0.1:PORT``."""
        return str(self.server.make_url("")).rstrip("/")

    async def log_lines(self, n: int, wait_s: float = 5.0) -> list[dict[str, Any]]:
        """Wait until the log holds at least ``n`` lines; return them decoded."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            lines = complete_lines(self.log_path)
            if len(lines) >= n or asyncio.get_running_loop().time() > deadline:
                return [json.loads(line) for line in lines]
            await asyncio.sleep(0.02)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI + Gemini provider on 127.0.0.1."""
    from proxy.testing import FakeUpstream

    async with FakeUpstream() as upstream:
        yield upstream


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


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
