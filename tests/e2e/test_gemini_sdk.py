"""The real google-genai client through the proxy to the fake upstream."""

from __future__ import annotations

import asyncio
from typing import Any

from google import genai
from google.genai import types

from proxy.testing import FakeUpstream

PROMPT = "Summarise the plot of Hamlet in one line."


def _client(base: str) -> genai.Client:
    return genai.Client(api_key="AIzaTESTKEY0123456789", http_options=types.HttpOptions(base_url=base))


async def test_generate_content_equals_direct(fake: FakeUpstream, make_proxy: Any) -> None:
    """generateContent through the proxy equals the direct answer, usage included, and is logged."""
    proxy = await make_proxy()

    async def call(base: str) -> dict[str, Any]:
        client = _client(base)
        try:
            resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
        finally:
            await client.aio.aclose()
        return resp.model_dump(exclude={"sdk_http_response"})

    want = await call(fake.url)
    fake.reset()
    got = await call(proxy.url)
    assert got == want
    assert got["usage_metadata"]["prompt_token_count"] > 0
    (line,) = await proxy.log_lines(1)
    assert (line["protocol"], line["model"], line["upstream"]) == (
        "gemini",
        "gemini-2.5-flash",
        "fake-gemini",
    )
    assert line["prompt_tokens"] == got["usage_metadata"]["prompt_token_count"]
    assert line["user_query"] == PROMPT
    assert "AIzaTESTKEY" not in proxy.log_path.read_text()


async def test_stream_generate_content_equals_direct(fake: FakeUpstream, make_proxy: Any) -> None:
    """streamGenerateContent (alt=sse) relays every chunk and the log reads usage from the stream."""
    proxy = await make_proxy()

    def call(base: str) -> list[dict[str, Any]]:
        client = _client(base)
        try:
            stream = client.models.generate_content_stream(model="gemini-2.5-flash", contents=PROMPT)
            return [c.model_dump(exclude={"sdk_http_response"}) for c in stream]
        finally:
            client.close()

    want = await asyncio.to_thread(call, fake.url)
    fake.reset()
    got = await asyncio.to_thread(call, proxy.url)
    assert got == want and len(got) > 1
    (line,) = await proxy.log_lines(1)
    assert line["stream"] is True
    assert line["prompt_tokens"] == got[-1]["usage_metadata"]["prompt_token_count"]
    assert line["completion_tokens"] == got[-1]["usage_metadata"]["candidates_token_count"]


async def test_gemini_key_and_query_forwarded(fake: FakeUpstream, make_proxy: Any) -> None:
    """The client's x-goog-api-key and the alt=sse query reach the upstream unchanged."""
    proxy = await make_proxy()
    client = _client(proxy.url)
    try:
        stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents=PROMPT)
        async for _ in stream:
            pass
    finally:
        await client.aio.aclose()
    req = fake.requests[-1]
    assert req.headers["x-goog-api-key"] == "AIzaTESTKEY0123456789"
    assert req.path.startswith("/v1") and req.path.endswith("/models/gemini-2.5-flash:streamGenerateContent")
    assert "alt=sse" in req.query_string
