"""Paths nocp does not rewrite pass through unchanged, streamed both ways."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import openai

from proxy.testing import FakeUpstream


async def test_models_and_embeddings_equal_direct(fake: FakeUpstream, make_proxy: Any) -> None:
    """/v1/models and /v1/embeddings answer the same through the proxy as directly, and are not logged."""
    proxy = await make_proxy()

    async def call(base: str) -> tuple[Any, Any]:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as client:
            models = (await client.models.list()).model_dump()
            emb = (await client.embeddings.create(model="text-embedding-3-small", input="hi")).model_dump()
        return models, emb

    assert await call(proxy.url) == await call(fake.url)
    assert not proxy.log_path.exists() or proxy.log_path.read_text() == ""


async def test_arbitrary_request_forwarded_unchanged(fake: FakeUpstream, make_proxy: Any) -> None:
    """Method, path, query, headers and a binary body reach the upstream exactly as sent."""
    proxy = await make_proxy()
    body = bytes(range(256)) * 4000
    async with (
        aiohttp.ClientSession() as s,
        s.put(
            f"{proxy.url}/v1/files/abc%2Fdef?purpose=fine-tune&x=1&x=2",
            data=body,
            headers={"X-Custom": "yes", "Content-Type": "application/octet-stream"},
        ) as r,
    ):
        assert r.status == 200
        await r.read()
    req = fake.requests[-1]
    assert req.method == "PUT"
    assert req.path == "/v1/files/abc%2Fdef" or req.path == "/v1/files/abc/def"
    assert req.query_string == "purpose=fine-tune&x=1&x=2"
    assert req.headers["X-Custom"] == "yes"
    assert req.body == body


async def test_large_response_streamed_back(fake: FakeUpstream, make_proxy: Any) -> None:
    """A large passthrough response arrives whole and unchanged."""
    proxy = await make_proxy()
    body = b"z" * 3_000_000
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{fake.url}/echo/raw", data=io.BytesIO(body)) as r:
            direct = await r.read()
        async with s.post(f"{proxy.url}/echo/raw", data=io.BytesIO(body)) as r:
            via = await r.read()
    assert len(via) > len(body) and via == direct


async def test_health_and_ready(make_proxy: Any) -> None:
    """/healthz says the process is up; /readyz says the log writer runs."""
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"{proxy.url}/readyz") as r:
            assert r.status == 200 and (await r.json())["log_writer"] is True
