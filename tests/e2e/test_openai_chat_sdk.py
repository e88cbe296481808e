"""The real openai SDK through the proxy to the fake upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest

from proxy.testing import Fail, FakeUpstream, StreamStall, ToolCall

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three prime numbers."},
]


def _client(base: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test-SECRET0123456789", max_retries=0, **kw)


async def test_non_streaming_equals_direct(fake: FakeUpstream, make_proxy: Any) -> None:
    """A non-streamed completion through the proxy equals the one the upstream gives directly."""
    proxy = await make_proxy()
    async with _client(fake.url) as direct, _client(proxy.url) as via:
        want = await direct.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        fake.reset()
        got = await via.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert got.model_dump() == want.model_dump()
    assert got.usage is not None and got.usage.prompt_tokens > 0


async def test_sync_client_through_proxy(fake: FakeUpstream, make_proxy: Any) -> None:
    """The synchronous OpenAI client, plain and streaming, works by changing only its base URL."""
    proxy = await make_proxy()

    def call(base: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-x", max_retries=0) as client:
            plain = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).model_dump()
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            return plain, [chunk.model_dump() for chunk in stream]

    want = await asyncio.to_thread(call, fake.url)
    fake.reset()
    got = await asyncio.to_thread(call, proxy.url)
    assert got == want and len(got[1]) > 2


async def test_streaming_with_usage_equals_direct(fake: FakeUpstream, make_proxy: Any) -> None:
    """A stream with include_usage reaches the client chunk for chunk, usage chunk included."""
    proxy = await make_proxy()

    async def chunks(base: str) -> list[dict[str, Any]]:
        async with _client(base) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            return [c.model_dump() async for c in stream]

    want = await chunks(fake.url)
    fake.reset()
    got = await chunks(proxy.url)
    assert got == want
    assert len(got) > 2 and got[-1]["usage"]["prompt_tokens"] > 0


async def test_stream_without_usage_hides_injected_usage_chunk(fake: FakeUpstream, make_proxy: Any) -> None:
    """Usage the proxy asked for itself is logged but its chunk never reaches the client."""
    proxy = await make_proxy()
    async with _client(proxy.url) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        got = [c async for c in stream]
    assert got and all(c.choices for c in got)
    assert all(c.usage is None for c in got)
    sent = fake.requests[-1].json()
    assert sent["stream_options"] == {"include_usage": True}
    (line,) = await proxy.log_lines(1)
    assert line["stream"] is True and line["prompt_tokens"] == fake.usage_log[-1].prompt_tokens
    assert line["completion_tokens"] and line["completion_tokens"] > 0


async def test_stream_headers_and_incremental_relay(fake: FakeUpstream, make_proxy: Any) -> None:
    """Streams carry no-cache/no-buffering headers and chunks arrive before the upstream finishes."""
    proxy = await make_proxy()
    fake.script(StreamStall(after_chunks=2, seconds=1.0))
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ") and loop.time() - started < 0.9
        rest = await resp.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_tool_calls_round_trip(fake: FakeUpstream, make_proxy: Any) -> None:
    """A tool call from the upstream reaches the client, and the tool result reaches the upstream."""
    proxy = await make_proxy()
    fake.script(ToolCall("get_weather", {"city": "Paris"}))
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with _client(proxy.url) as client:
        first = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=tools)
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        follow = [
            *MESSAGES,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
        ]
        await client.chat.completions.create(model="gpt-4o", messages=follow, tools=tools)
    assert fake.requests[-1].json()["messages"][-1]["content"] == '{"temp_c": 21}'
    line = (await proxy.log_lines(2))[-1]
    assert line["tools_invoked"] == ["get_weather"]


async def test_headers_forwarded_both_ways(fake: FakeUpstream, make_proxy: Any) -> None:
    """Custom headers reach the upstream and upstream headers reach the client; hop-by-hop ones do not."""
    proxy = await make_proxy()
    fake.script(Fail(429, headers={"retry-after": "7", "x-ratelimit-remaining-requests": "0"}))
    headers = {
        "openai-organization": "org-123",
        "x-request-id": "req-abc",
        "anthropic-beta": "tools-2024",
        "Authorization": "Bearer sk-client",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Connection": "keep-alive, x-hop",
        "x-hop": "1",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES},
            headers=headers,
        ) as resp,
    ):
        assert resp.status == 429
        assert resp.headers["retry-after"] == "7"
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    seen = fake.requests[-1].headers
    assert seen["openai-organization"] == "org-123"
    assert seen["x-request-id"] == "req-abc"
    assert seen["anthropic-beta"] == "tools-2024"
    assert seen["Authorization"] == "Bearer sk-client"
    assert "Proxy-Authorization" not in seen and "x-hop" not in seen


@pytest.mark.parametrize("status", [429, 500])
async def test_upstream_errors_pass_through(fake: FakeUpstream, make_proxy: Any, status: int) -> None:
    """Upstream 4xx/5xx reach the client with their status and body unchanged, and are logged."""
    proxy = await make_proxy()
    fake.script(Fail(status))
    async with aiohttp.ClientSession() as session:
        direct = await session.post(
            f"{fake.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
        )
        want = await direct.read()
        fake.script(Fail(status))
        via = await session.post(
            f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
        )
        assert via.status == status
        assert await via.read() == want
    async with _client(proxy.url) as client:
        fake.script(Fail(status))
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.status_code == status
    line = (await proxy.log_lines(2))[-1]
    assert line["status"] == status and line["outcome"] == "upstream_error"


async def test_upstream_timeout_gives_504(fake: FakeUpstream, make_proxy: Any) -> None:
    """An upstream slower than the read timeout gives a 504 in OpenAI's error shape."""
    from proxy.testing import Stall

    proxy = await make_proxy(timeouts={"read": 0.2})
    fake.script(Stall(2.0))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}) as r,
    ):
        assert r.status == 504
        err = (await r.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    (line,) = await proxy.log_lines(1)
    assert line["status"] == 504 and line["outcome"] == "upstream_error"


async def test_unreachable_upstream_gives_502(make_proxy: Any, unused_tcp_port: int) -> None:
    """A refused connection to the upstream gives a 502 in OpenAI's error shape."""
    proxy = await make_proxy(
        upstreams=[{"name": "dead", "base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"}]
    )
    async with _client(proxy.url) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and "unreachable" in info.value.body["message"]


async def test_client_disconnect_cancels_upstream(fake: FakeUpstream, make_proxy: Any) -> None:
    """When the client drops a stream, the proxy drops its upstream request and logs 'cancelled'."""
    proxy = await make_proxy()
    fake.script(StreamStall(after_chunks=1, seconds=30))
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
    session = aiohttp.ClientSession()
    resp = await session.post(f"{proxy.url}/v1/chat/completions", json=body)
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await session.close()
    await asyncio.wait_for(fake.disconnected.wait(), 5)
    assert fake.disconnects == 1
    (line,) = await proxy.log_lines(1)
    assert line["outcome"] == "cancelled"


async def test_api_key_from_env_replaces_clients(fake: FakeUpstream, make_proxy: Any) -> None:
    """An upstream with api_key_env sends its own key instead of the client's."""
    import os

    os.environ["NOCP_TEST_KEY"] = "sk-upstream-own"
    try:
        proxy = await make_proxy(
            upstreams=[{"name": "o", "base_url": f"{fake.url}/v1", "api_key_env": "NOCP_TEST_KEY"}],
            auth={"allow_open_relay": True},
        )
        async with _client(proxy.url) as client:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        del os.environ["NOCP_TEST_KEY"]
    assert fake.requests[-1].headers["Authorization"] == "Bearer sk-upstream-own"
