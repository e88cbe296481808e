"""The request lifecycle without a socket: an Exchange driven through its seams (MockSend as
the upstream, RecordingClient as the client, MemoryWriter for the log)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from proxy import load_settings
from proxy.exchange import ClientRequest, Exchange, FeatureRequest, Services, UpstreamRequest
from proxy.pipeline import Pipeline
from proxy.protocols import Adapter, OpenAIChatAdapter, Prompt
from proxy.testing import MemoryWriter, MockResponse, MockSend, RecordingClient

MESSAGES = [{"role": "user", "content": "Hi"}]
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 0}},
}


def request(body: Any, path: str = "/v1/chat/completions") -> ClientRequest:
    """A client request as the server would hand it over."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = CIMultiDict({"Authorization": "Bearer sk-test", "Content-Type": "application/json"})
    return ClientRequest(path=path, raw_path=path, headers=headers, query={}, match_info={}, body=raw)


def services(features: Any = (), writer: MemoryWriter | None = None) -> Services:
    """Default settings, no stages, and a writer that keeps the records."""
    settings = load_settings(env={}, overrides={})
    return Services(
        settings=settings, pipeline=Pipeline([]), writer=writer or MemoryWriter(), features=features
    )


async def run(body: Any, answer: MockResponse) -> tuple[MockSend, RecordingClient, MemoryWriter]:
    """One chat request through an exchange whose upstream answers ``answer``."""
    send, client, writer = MockSend(lambda req: answer), RecordingClient(), MemoryWriter()
    await Exchange(services(writer=writer), OpenAIChatAdapter(), request(body), send, client).run()
    return send, client, writer


async def test_a_whole_answer_without_a_socket() -> None:
    """The exchange parses, sends, relays the answer and writes one record with the usage."""
    send, client, writer = await run({"model": "gpt-4o", "messages": MESSAGES}, MockResponse(body=COMPLETION))
    assert client.status == 200 and client.ended and client.json() == COMPLETION
    assert send.bodies() == [{"model": "gpt-4o", "messages": MESSAGES}]
    assert str(send.requests[0].url) == "https://api.openai.com/v1/chat/completions"
    (record,) = writer.records
    assert (record.outcome, record.prompt_tokens, record.completion_tokens) == ("ok", 8, 2)


async def test_a_bad_body_is_a_400_and_never_sent() -> None:
    """A body that is not a chat request gets 400 in OpenAI's error shape; nothing goes upstream."""
    send, client, writer = await run({"model": "gpt-4o", "messages": "hi"}, MockResponse(body=COMPLETION))
    assert client.status == 400 and client.json()["error"]["param"] == "messages"
    assert send.requests == [] and writer.records[0].outcome == "client_error"


async def test_an_upstream_error_reaches_the_client_as_it_came() -> None:
    """An upstream error keeps its status and body."""
    error = {
        "error": {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }
    _, client, writer = await run(
        {"model": "gpt-4o", "messages": MESSAGES},
        MockResponse(status=429, body=error, headers={"Retry-After": "2"}),
    )
    assert client.status == 429 and client.json() == error and client.headers["Retry-After"] == "2"
    assert writer.records[0].outcome == "upstream_error"


async def test_a_stream_is_relayed_chunk_by_chunk_as_it_arrives() -> None:
    """Each upstream chunk reaches the client before the next one is produced."""
    chunks = [
        b'data: {"id":"s","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
        b'data: {"id":"s","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
        b'data: {"id":"s","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    client = RecordingClient()
    seen: list[int] = []

    class Stream:
        status, reason = 200, "OK"
        headers: ClassVar[CIMultiDict[str]] = CIMultiDict({"Content-Type": "text/event-stream"})

        async def read(self) -> bytes:
            raise AssertionError("a stream is not read whole")

        async def iter_chunks(self) -> Any:
            for chunk in chunks:
                seen.append(len(client.writes))  # what the client had before this chunk
                yield chunk
                await asyncio.sleep(0)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def send(req: UpstreamRequest) -> Any:
        yield Stream()

    body = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    x = Exchange(services(), OpenAIChatAdapter(), request(body), send, client)
    await x.run()
    assert seen == [0, 1, 2, 3] and client.writes == chunks
    assert client.headers["Cache-Control"] == "no-cache" and client.ended


class _Phases(FeatureRequest):
    """A feature that notes the phases it sees."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def before_stages(self, x: Exchange) -> bool:
        self.log.append("before_stages")
        return False

    async def after_stages(self, x: Exchange, before: Prompt, after: Prompt) -> Prompt:
        self.log.append("after_stages")
        return after

    def before_send(self, x: Exchange) -> bool:
        self.log.append("before_send")
        x.body["metadata"] = {"seen": "yes"}
        return True

    def finish(self, x: Exchange) -> None:
        self.log.append(f"finish:{x.record.outcome}")


async def test_features_plug_into_the_phases_in_order() -> None:
    """A feature sees before stages, after stages, before send and finish; its edit is sent."""
    log: list[str] = []

    class Feature:
        def begin(self, x: Exchange) -> FeatureRequest:
            log.append("begin")
            return _Phases(log)

    send = MockSend(lambda req: MockResponse(body=COMPLETION))
    settings = load_settings(env={}, overrides={})
    svc = Services(settings=settings, pipeline=Pipeline([_noop]), writer=MemoryWriter(), features=[Feature()])
    await Exchange(
        svc, OpenAIChatAdapter(), request({"model": "gpt-4o", "messages": MESSAGES}), send, RecordingClient()
    ).run()
    assert log == ["begin", "before_stages", "after_stages", "before_send", "finish:ok"]
    assert send.bodies()[0]["metadata"] == {"seen": "yes"}


async def _noop(prompt: Prompt, ctx: Any) -> Prompt:
    return prompt


class _EchoAdapter(OpenAIChatAdapter):
    """A protocol of its own at a path of its own (to show the server needs no edit)."""

    protocol: ClassVar[str] = "echo"
    routes: ClassVar[tuple[tuple[str, str], ...]] = (("POST", "/v1/echo"),)


async def test_a_new_protocol_is_served_without_touching_the_server(monkeypatch: Any, tmp_path: Any) -> None:
    """Registering an adapter in proxy.protocols.ADAPTERS is enough for the server to serve it."""
    import proxy.protocols
    from proxy import create_app

    adapters: tuple[Adapter, ...] = (*proxy.protocols.ADAPTERS, _EchoAdapter())
    monkeypatch.setattr(proxy.protocols, "ADAPTERS", adapters)
    settings = load_settings(env={}, overrides={"log": {"dir": str(tmp_path)}})
    async with TestClient(TestServer(create_app(settings))) as http:
        resp = await http.post("/v1/echo", json={"model": "gpt-4o", "messages": "not a list"})
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "messages"


async def test_prompt_cache_key_per_session_when_switched_on() -> None:
    """With openai.prompt_cache_key, a request without a key gets one per tenant and session
    (the same on every turn, none of the session id visible); the client's own key stays."""
    from proxy.config import AnthropicConfig, OpenAIConfig
    from proxy.promptcache import PromptCache, cache_key

    send = MockSend(lambda req: MockResponse(body=COMPLETION))
    svc = services(features=[PromptCache(AnthropicConfig(), OpenAIConfig(prompt_cache_key=True))])
    for body in (
        {"model": "gpt-4o", "messages": MESSAGES, "user": "session-9"},
        {
            "model": "gpt-4o",
            "messages": [*MESSAGES, {"role": "user", "content": "More"}],
            "user": "session-9",
        },
        {"model": "gpt-4o", "messages": MESSAGES, "user": "session-9", "prompt_cache_key": "mine"},
    ):
        x = Exchange(svc, OpenAIChatAdapter(), request(body), send, RecordingClient())
        await x.run()
    first, second, own = (b["prompt_cache_key"] for b in send.bodies())
    assert x.record.session_id is not None
    assert first == second == cache_key(x.tenant, x.record.session_id) and own == "mine"
    assert "session-9" not in first
    off = MockSend(lambda req: MockResponse(body=COMPLETION))
    quiet = services(features=[PromptCache(AnthropicConfig(), OpenAIConfig())])
    body = {"model": "gpt-4o", "messages": MESSAGES, "user": "session-9"}
    await Exchange(quiet, OpenAIChatAdapter(), request(body), off, RecordingClient()).run()
    assert "prompt_cache_key" not in off.bodies()[0]
