"""The fake upstream, exercised with the real openai and google-genai clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallUnion,
    ChatCompletionUserMessageParam,
)

from compressors import tokens
from proxy.testing import (
    FIXED_CREATED,
    Drop,
    Fail,
    FakeUpstream,
    PrefixCache,
    Replay,
    Reply,
    Stall,
    StreamStall,
    ToolCall,
    run_fake_upstream,
)
from proxy.testing import _openai as fake_openai
from tests.helpers import free_port, long_text

# google-genai's async client subclasses aiohttp.ClientSession, which aiohttp deprecates.

MODEL = "gpt-4o-mini"
GEMINI = "gemini-2.5-flash"
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def user(text: str) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": text}


def system(text: str) -> ChatCompletionMessageParam:
    return {"role": "system", "content": text}


def call_of(calls: list[ChatCompletionMessageToolCallUnion] | None, i: int = 0) -> tuple[str, str, str]:
    """(id, name, arguments) of a parsed function tool call."""
    assert calls is not None
    call = calls[i]
    assert call.type == "function"
    return call.id, call.function.name, call.function.arguments


@pytest.fixture
async def gem(fake: FakeUpstream) -> AsyncIterator[genai.Client]:
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.url))
    yield client
    client.close()
    await client.aio.aclose()


async def raw_post(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], **kw: Any
) -> tuple[int, bytes]:
    async with session.post(url, json=payload, **kw) as resp:
        return resp.status, await resp.read()


# ----------------------------------------------------------------------------- OpenAI


async def test_openai_default_reply_and_usage(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """A plain completion answers "Fake reply to: <user text>" with usage billed like OpenAI."""
    messages = [system("Be brief."), user("What is the capital of France?")]
    r = await oai.chat.completions.create(model=MODEL, messages=messages)
    reply = "Fake reply to: What is the capital of France?"
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.created == FIXED_CREATED
    assert r.model == MODEL
    assert r.system_fingerprint and r.service_tier == "default"
    choice = r.choices[0]
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert choice.message.content == reply
    assert choice.message.refusal is None and choice.message.tool_calls is None
    assert r.usage is not None
    assert r.usage.prompt_tokens == tokens.count_messages(messages, MODEL)
    assert r.usage.completion_tokens == tokens.count(reply, MODEL)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    assert fake.usage_log[-1].prompt_tokens == r.usage.prompt_tokens


async def test_openai_sync_client_in_thread(fake: FakeUpstream) -> None:
    """The sync OpenAI client (plain and streaming) works against the fake from a thread."""

    def call() -> tuple[str | None, str]:
        with OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0) as client:
            plain = client.chat.completions.create(model=MODEL, messages=[user("sync hello")])
            stream = client.chat.completions.create(model=MODEL, messages=[user("sync hello")], stream=True)
            with stream:
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return plain.choices[0].message.content, text

    plain, streamed = await asyncio.to_thread(call)
    assert plain == streamed == "Fake reply to: sync hello"


async def test_openai_stream_chunks_with_include_usage(oai: AsyncOpenAI) -> None:
    """Streams send a chunk per word; include_usage adds usage null to each and a final usage chunk."""
    messages: list[ChatCompletionMessageParam] = [user("Tell me something interesting please")]
    stream = await oai.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    reply = "Fake reply to: Tell me something interesting please"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == len(reply.split())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == tokens.count_messages(messages, MODEL)
    assert last.usage.completion_tokens == tokens.count(reply, MODEL)


async def test_openai_stream_wire_format(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """On the wire: `data: {json}` events, then `data: [DONE]`; no usage key without include_usage."""
    payload = {"model": MODEL, "messages": [user("wire format")], "stream": True}
    async with http.post(fake.openai_base_url + "/chat/completions", json=payload) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    bodies = [json.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert all(e.startswith(b"data: ") for e in events[:-1])
    assert all("usage" not in b for b in bodies)
    assert bodies[0]["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": "", "refusal": None},
        "logprobs": None,
        "finish_reason": None,
    }


async def test_openai_tool_call_non_stream(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """A scripted ToolCall comes back as a parsed tool call with finish_reason tool_calls."""
    fake.script(ToolCall("get_weather", {"city": "Paris"}, id="call_fixed"))
    r = await oai.chat.completions.create(
        model=MODEL,
        messages=[user("Weather in Paris?")],
        tools=[WEATHER_TOOL],
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call_id, name, arguments = call_of(choice.message.tool_calls)
    assert (call_id, name, json.loads(arguments)) == ("call_fixed", "get_weather", {"city": "Paris"})
    assert r.usage is not None
    expected = tokens.count("get_weather", MODEL) + tokens.count('{"city":"Paris"}', MODEL)
    assert r.usage.completion_tokens == expected


async def test_openai_several_tool_calls_streamed(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Several tool calls stream as index/id/name deltas plus argument pieces that the SDK reassembles."""
    fake.script(
        Reply(
            tool_calls=(ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Rome"}))
        )
    )
    async with oai.chat.completions.stream(
        model=MODEL,
        messages=[user("Weather in Paris and Rome?")],
        tools=[WEATHER_TOOL],
    ) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert calls is not None and len(calls) == 2
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert calls[0].id != calls[1].id and all(c.id.startswith("call_") for c in calls)
    assert fake.usage_log[-1].stream is True


async def test_openai_tool_definitions_are_billed(oai: AsyncOpenAI) -> None:
    """Prompt tokens are count_messages plus the tool definitions' JSON."""
    messages: list[ChatCompletionMessageParam] = [user("Weather?")]
    r = await oai.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    tools_json = json.dumps([WEATHER_TOOL], separators=(",", ":"))
    assert r.usage is not None
    assert r.usage.prompt_tokens == tokens.count_messages(messages, MODEL) + tokens.count(tools_json, MODEL)


def test_prompt_ids_have_the_billed_length() -> None:
    """The token sequence used for prefix caching is exactly as long as the billed prompt."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
    ]
    payload = {"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL]}
    for model in (MODEL, "gpt-4"):
        assert len(fake_openai.prompt_ids(payload, model)) == fake_openai.prompt_tokens(payload, model)


# ----------------------------------------------------------------------------- errors


async def test_scripted_errors_surface_in_the_openai_sdk(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Fail(429) and Fail(500) become RateLimitError / InternalServerError with OpenAI error bodies."""
    fake.script(Fail(429), Fail(500))
    with pytest.raises(openai.RateLimitError) as rate:
        await oai.chat.completions.create(model=MODEL, messages=[user("a")])
    assert rate.value.status_code == 429
    assert rate.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as server:
        await oai.chat.completions.create(model=MODEL, messages=[user("a")], stream=True)
    assert server.value.status_code == 500 and server.value.type == "server_error"
    ok = await oai.chat.completions.create(model=MODEL, messages=[user("a")])
    assert ok.choices[0].message.content == "Fake reply to: a"
    assert len(fake.usage_log) == 1  # failed requests bill nothing


async def test_scripted_errors_surface_in_genai(fake: FakeUpstream, gem: genai.Client) -> None:
    """Fail(429) / Fail(500) on Gemini become genai ClientError / ServerError with Gemini statuses."""
    fake.script(Fail(429), Fail(500))
    with pytest.raises(genai_errors.ClientError) as rate:
        await gem.aio.models.generate_content(model=GEMINI, contents="a")
    assert (rate.value.code, rate.value.status) == (429, "RESOURCE_EXHAUSTED")
    with pytest.raises(genai_errors.ServerError) as server:
        await asyncio.to_thread(gem.models.generate_content, model=GEMINI, contents="a")
    assert (server.value.code, server.value.status) == (500, "INTERNAL")


async def test_fail_with_custom_body_and_headers(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """Fail sends a given dict as JSON or a str verbatim, with the given headers."""
    fake.script(
        Fail(503, {"error": {"message": "busy"}}, headers={"Retry-After": "7"}), Fail(400, "not json")
    )
    url = fake.openai_base_url + "/chat/completions"
    payload = {"model": MODEL, "messages": [user("x")]}
    async with http.post(url, json=payload) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "7"
        assert await resp.json() == {"error": {"message": "busy"}}
    async with http.post(url, json=payload) as resp:
        assert resp.status == 400 and resp.content_type == "text/plain"
        assert await resp.read() == b"not json"


async def test_invalid_requests_get_400_and_keep_the_script(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Bad bodies get a 400 in the protocol's error shape and do not consume a scripted step."""
    fake.script(Reply("kept"))
    status, body = await raw_post(http, fake.openai_base_url + "/chat/completions", {"model": MODEL})
    assert status == 400
    assert json.loads(body)["error"]["param"] == "messages"
    async with http.post(fake.url + f"/v1beta/models/{GEMINI}:generateContent", data=b"{oops") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
    assert len(fake.pending) == 1 and not fake.usage_log


# ----------------------------------------------------------------------------- prefix caching


async def test_openai_prefix_cache(oai: AsyncOpenAI) -> None:
    """Extending a >=1024-token prompt caches the shared prefix in 128-token steps; else 0."""
    first = [system(long_text(700)), user("first question")]
    r1 = await oai.chat.completions.create(model=MODEL, messages=first)
    assert r1.usage is not None and r1.usage.prompt_tokens >= 1024
    assert r1.usage.prompt_tokens_details is not None and r1.usage.prompt_tokens_details.cached_tokens == 0

    answer: ChatCompletionMessageParam = {"role": "assistant", "content": "answer"}
    second = [*first, answer, user(long_text(300, "x"))]
    r2 = await oai.chat.completions.create(model=MODEL, messages=second)
    assert r2.usage is not None and r2.usage.prompt_tokens_details is not None
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # Everything of the first prompt but its 3 reply-priming tokens is a shared prefix.
    assert cached == (r1.usage.prompt_tokens - 3) // 128 * 128
    assert cached is not None and cached >= 1024 and cached % 128 == 0

    again = await oai.chat.completions.create(model=MODEL, messages=second)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens // 128 * 128

    other = await oai.chat.completions.create(model="gpt-4o", messages=second)
    assert other.usage is not None and other.usage.prompt_tokens_details is not None
    assert other.usage.prompt_tokens_details.cached_tokens == 0

    for _ in range(2):
        short = await oai.chat.completions.create(model=MODEL, messages=[user("short")])
        assert short.usage is not None and short.usage.prompt_tokens_details is not None
        assert short.usage.prompt_tokens_details.cached_tokens == 0


async def test_openai_prefix_cache_breaks_at_first_change(oai: AsyncOpenAI) -> None:
    """Changing an early message forfeits the cache even when the rest is identical."""
    tail = [user(long_text(900))]
    await oai.chat.completions.create(model=MODEL, messages=[system("A"), *tail])
    r = await oai.chat.completions.create(model=MODEL, messages=[system("B"), *tail])
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 0


async def test_gemini_prefix_cache(fake: FakeUpstream, gem: genai.Client) -> None:
    """Gemini reports the shared prefix of a longer request as cachedContentTokenCount."""
    base = long_text(700)
    r1 = await gem.aio.models.generate_content(model=GEMINI, contents=base)
    assert r1.usage_metadata is not None and r1.usage_metadata.cached_content_token_count is None
    longer = [base, long_text(200, "y")]
    r2 = await gem.aio.models.generate_content(model=GEMINI, contents=longer)
    assert r2.usage_metadata is not None
    prompt1 = tokens.count(base, GEMINI)
    assert r2.usage_metadata.prompt_token_count == prompt1 + tokens.count(long_text(200, "y"), GEMINI)
    assert r2.usage_metadata.cached_content_token_count == prompt1 // 128 * 128
    assert fake.usage_log[-1].cached_tokens == prompt1 // 128 * 128


def test_prefix_cache_rules() -> None:
    """PrefixCache: below 1024 nothing, then the shared prefix rounded down to 128, per namespace."""
    cache = PrefixCache()
    assert cache.lookup_and_store("m", list(range(1023))) == 0
    assert cache.lookup_and_store("m", list(range(1023))) == 0  # too short to have been stored
    assert cache.lookup_and_store("m", list(range(2000))) == 0
    assert cache.lookup_and_store("m", [*range(1500), -1, *range(100)]) == 1408
    assert cache.lookup_and_store("m", [*range(1100), -1]) == 1024
    assert cache.lookup_and_store("m", [-1, *range(2000)]) == 0
    assert cache.lookup_and_store("other", list(range(2000))) == 0
    small = PrefixCache(max_blocks=8)
    small.lookup_and_store("m", list(range(1024)))
    small.lookup_and_store("n", list(range(1024)))
    assert len(small) == 8
    assert small.lookup_and_store("m", list(range(1024))) == 0  # evicted


# ----------------------------------------------------------------------------- Gemini


async def test_gemini_generate_content_sync_and_async(fake: FakeUpstream, gem: genai.Client) -> None:
    """generateContent answers text with usageMetadata, via the sync and the async genai client."""
    sync = await asyncio.to_thread(gem.models.generate_content, model=GEMINI, contents="Hello Gemini")
    aio = await gem.aio.models.generate_content(
        model=GEMINI,
        contents="Hello Gemini",
        config=types.GenerateContentConfig(system_instruction="Be brief."),
    )
    reply = "Fake reply to: Hello Gemini"
    assert sync.text == aio.text == reply
    assert sync.candidates is not None and sync.candidates[0].finish_reason == types.FinishReason.STOP
    assert sync.candidates[0].content is not None and sync.candidates[0].content.role == "model"
    assert sync.model_version == GEMINI and sync.response_id
    meta = aio.usage_metadata
    assert meta is not None
    assert meta.prompt_token_count == tokens.count("Hello Gemini", GEMINI) + tokens.count("Be brief.", GEMINI)
    assert meta.candidates_token_count == tokens.count(reply, GEMINI)
    assert meta.total_token_count == meta.prompt_token_count + meta.candidates_token_count
    assert fake.requests[-1].path.endswith(f"/models/{GEMINI}:generateContent")


async def test_gemini_stream_sse_sync_and_async(fake: FakeUpstream, gem: genai.Client) -> None:
    """streamGenerateContent?alt=sse streams one word per chunk; the last carries finishReason and usage."""

    def sync_stream() -> list[types.GenerateContentResponse]:
        return list(gem.models.generate_content_stream(model=GEMINI, contents="Stream to me"))

    chunks = await asyncio.to_thread(sync_stream)
    achunks = [
        c async for c in await gem.aio.models.generate_content_stream(model=GEMINI, contents="Stream to me")
    ]
    reply = "Fake reply to: Stream to me"
    for got in (chunks, achunks):
        assert len(got) == len(reply.split())
        assert "".join(c.text or "" for c in got) == reply
        last = got[-1]
        assert last.candidates is not None and last.candidates[0].finish_reason == types.FinishReason.STOP
        assert last.usage_metadata is not None
        assert last.usage_metadata.candidates_token_count == tokens.count(reply, GEMINI)
        assert got[0].usage_metadata is not None and got[0].usage_metadata.candidates_token_count is None
    assert fake.requests[-1].query_string == "alt=sse"


async def test_gemini_sse_and_json_array_wire_format(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """With alt=sse events are `data: {json}\\r\\n\\r\\n`; without it the same chunks form one JSON array."""
    payload = {"contents": [{"role": "user", "parts": [{"text": "wire please"}]}]}
    url = fake.url + f"/v1beta/models/{GEMINI}:streamGenerateContent"
    async with http.post(url + "?alt=sse", json=payload) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        sse = await resp.read()
    events = sse.split(b"\r\n\r\n")
    assert events[-1] == b"" and all(e.startswith(b"data: ") for e in events[:-1])
    sse_chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    status, body = await raw_post(http, url, payload)
    assert status == 200
    assert json.loads(body) == sse_chunks
    assert sse_chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert set(sse_chunks[-1]) == {"candidates", "usageMetadata", "modelVersion", "responseId"}


async def test_gemini_function_call(fake: FakeUpstream, gem: genai.Client) -> None:
    """A scripted ToolCall on Gemini is a functionCall part that genai parses, streamed or not."""
    fake.script(ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "Rome"}))
    r = await gem.aio.models.generate_content(model=GEMINI, contents="Weather?")
    assert r.function_calls is not None
    assert (r.function_calls[0].name, r.function_calls[0].args) == ("get_weather", {"city": "Paris"})
    streamed = [
        c async for c in await gem.aio.models.generate_content_stream(model=GEMINI, contents="Weather?")
    ]
    calls = [fc for c in streamed for fc in (c.function_calls or [])]
    assert [fc.args for fc in calls] == [{"city": "Rome"}]
    assert fake.usage_log[-1].completion_tokens == tokens.count(
        json.dumps({"name": "get_weather", "args": {"city": "Rome"}}, separators=(",", ":")), GEMINI
    )


async def test_gemini_function_response_parts_are_billed(fake: FakeUpstream, gem: genai.Client) -> None:
    """Function call and response parts in the prompt are billed as their compact JSON."""
    call = types.FunctionCall(name="get_weather", args={"city": "Paris"})
    result = types.FunctionResponse(name="get_weather", response={"temp": 21})
    contents = [
        types.Content(role="user", parts=[types.Part(text="Weather?")]),
        types.Content(role="model", parts=[types.Part(function_call=call)]),
        types.Content(role="user", parts=[types.Part(function_response=result)]),
    ]
    r = await gem.aio.models.generate_content(model=GEMINI, contents=contents)
    sent = [part for c in fake.last_request.json()["contents"] for part in c["parts"]]
    assert [sent[1]["functionCall"]["name"], sent[2]["functionResponse"]["response"]] == [
        "get_weather",
        {"temp": 21},
    ]
    compact = [
        json.dumps(v, separators=(",", ":")) for v in (sent[1]["functionCall"], sent[2]["functionResponse"])
    ]
    expected = sum(tokens.count(t, GEMINI) for t in ("Weather?", *compact))
    assert r.usage_metadata is not None and r.usage_metadata.prompt_token_count == expected
    assert r.text == "Fake reply to: Weather?"


# ----------------------------------------------------------------------------- replay


async def test_replay_openai_message(fake: FakeUpstream, oai: AsyncOpenAI, gem: genai.Client) -> None:
    """Replay answers a recorded OpenAI assistant message verbatim, and converts it for Gemini."""
    recorded = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_rec", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
        ],
    }
    fake.script(Replay(recorded), Replay(recorded))
    r = await oai.chat.completions.create(model=MODEL, messages=[user("go")])
    msg = r.choices[0].message
    assert msg.content == "Let me check."
    assert call_of(msg.tool_calls) == ("call_rec", "lookup", '{"q": "x"}')
    assert r.choices[0].finish_reason == "tool_calls"
    g = await gem.aio.models.generate_content(model=GEMINI, contents="go")
    assert g.text == "Let me check."
    assert g.function_calls is not None and g.function_calls[0].args == {"q": "x"}


async def test_replay_gemini_content(fake: FakeUpstream, gem: genai.Client, oai: AsyncOpenAI) -> None:
    """Replay of a Gemini Content sends its parts verbatim, and converts it for OpenAI."""
    recorded = {"role": "model", "parts": [{"text": "Hello "}, {"text": "world"}]}
    fake.script(Replay(recorded), Replay(recorded))
    g = await gem.aio.models.generate_content(model=GEMINI, contents="hi")
    assert g.candidates is not None and g.candidates[0].content is not None
    assert [p.text for p in g.candidates[0].content.parts or []] == ["Hello ", "world"]
    r = await oai.chat.completions.create(model=MODEL, messages=[user("hi")])
    assert r.choices[0].message.content == "Hello world"


# ----------------------------------------------------------------------------- stalls, drops, disconnects


async def test_stall_delays_the_answer(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Stall(seconds, then=...) waits before answering with the given step."""
    fake.script(Stall(0.3, then=Reply("late")))
    start = time.monotonic()
    r = await oai.chat.completions.create(model=MODEL, messages=[user("x")])
    assert time.monotonic() - start >= 0.3
    assert r.choices[0].message.content == "late"


async def test_stream_stall_pauses_mid_stream(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """StreamStall sends the first chunks at once, then pauses before the rest."""
    fake.script(StreamStall(after_chunks=2, seconds=0.4))
    payload = {"model": MODEL, "messages": [user("pause here please")], "stream": True}
    async with http.post(fake.openai_base_url + "/chat/completions", json=payload) as resp:
        start = time.monotonic()
        first = await resp.content.readuntil(b"\n\n")
        second = await resp.content.readuntil(b"\n\n")
        early = time.monotonic() - start
        rest = await resp.read()
        late = time.monotonic() - start
    assert first.startswith(b"data: ") and second.startswith(b"data: ")
    assert early < 0.3 <= late
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_drop_mid_stream_is_an_sdk_error(
    fake: FakeUpstream, oai: AsyncOpenAI, gem: genai.Client
) -> None:
    """Drop(after_chunks) closes the connection mid-stream: the SDKs raise after the chunks sent."""
    fake.script(Drop(after_chunks=3))
    stream = await oai.chat.completions.create(
        model=MODEL, messages=[user("one two three four")], stream=True
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 3

    fake.script(Drop(after_chunks=2))
    with pytest.raises(aiohttp.ClientPayloadError):
        async for _ in await gem.aio.models.generate_content_stream(
            model=GEMINI, contents="one two three four"
        ):
            pass

    fake.script(Drop(after_chunks=1))

    def sync_stream() -> None:
        for _ in gem.models.generate_content_stream(model=GEMINI, contents="one two three"):
            pass

    # genai's sync client uses httpx or httpx2; both say so in the error.
    with pytest.raises(Exception, match="incomplete chunked read"):
        await asyncio.to_thread(sync_stream)
    assert fake.disconnects == 0  # dropping is not the client going away


async def test_drop_non_stream_is_a_connection_error(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Drop on a non-streaming request closes the connection with no response."""
    fake.script(Drop())
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model=MODEL, messages=[user("x")])
    r = await oai.chat.completions.create(model=MODEL, messages=[user("x")])
    assert r.choices[0].message.content == "Fake reply to: x"


async def test_client_disconnect_during_stream_stall_is_detected(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A client closing the connection during a StreamStall is counted and sets fake.disconnected."""
    fake.script(StreamStall(after_chunks=2, seconds=30))
    payload = {"model": MODEL, "messages": [user("hang on")], "stream": True}
    resp = await http.post(fake.openai_base_url + "/chat/completions", json=payload)
    await resp.content.readuntil(b"\n\n")
    resp.close()  # drop the connection, as a proxy does when its own client goes away
    await asyncio.wait_for(fake.disconnected.wait(), 5)
    assert fake.disconnects == 1


async def test_client_timeout_during_stall_is_detected(fake: FakeUpstream) -> None:
    """A client that times out while the fake stalls before answering counts as a disconnect."""
    fake.script(Stall(30))
    async with AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0, timeout=0.2) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=MODEL, messages=[user("x")])
    await asyncio.wait_for(fake.disconnected.wait(), 5)
    assert fake.disconnects == 1


async def test_disconnect_detected_without_handler_cancellation(http: aiohttp.ClientSession) -> None:
    """fake.app under a runner without handler cancellation still notices the client leaving."""
    fake = FakeUpstream()
    runner = web.AppRunner(fake.app, handler_cancellation=False)
    await runner.setup()
    site = web.SockSite(runner, socket.create_server(("127.0.0.1", 0)))
    await site.start()
    try:
        port = runner.addresses[0][1]
        fake.script(StreamStall(after_chunks=1, seconds=30))
        payload = {"model": MODEL, "messages": [user("x")], "stream": True}
        resp = await http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=payload)
        await resp.content.readuntil(b"\n\n")
        resp.close()
        await asyncio.wait_for(fake.disconnected.wait(), 5)
        assert fake.disconnects == 1
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------- recording, passthrough


async def test_requests_are_recorded(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Every request is recorded with method, raw path, query, headers and body bytes."""
    await oai.chat.completions.create(
        model=MODEL,
        messages=[user("record me")],
        extra_headers={"X-Trace": "abc"},
        extra_query={"api-version": "1 2"},
    )
    rec = fake.last_request
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.query_string == "api-version=1+2" and rec.query["api-version"] == "1 2"
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.headers["X-Trace"] == "abc"
    assert rec.json()["messages"] == [user("record me")]
    assert isinstance(rec.body, bytes) and b"record me" in rec.body
    assert fake.usage_log[-1].protocol == "openai" and fake.usage_log[-1].model == MODEL


async def test_echo_catch_all_returns_the_request(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """Unknown routes echo method, path, query, end-to-end headers and body, and are recorded."""
    url = fake.url + "/v1/responses/abc%2Fdef?x=1&x=2&y=%20"
    async with http.put(
        url, data=b"\xff\x00binary", headers={"X-Custom": "v", "Authorization": "Bearer t"}
    ) as resp:
        assert resp.status == 200 and resp.headers["x-request-id"].startswith("req_")
        echoed = await resp.json()
    assert echoed["method"] == "PUT"
    assert echoed["raw_path"] == "/v1/responses/abc%2Fdef" and echoed["path"] == "/v1/responses/abc/def"
    assert echoed["query_string"] == "x=1&x=2&y=%20"
    assert echoed["headers"]["x-custom"] == "v" and echoed["headers"]["authorization"] == "Bearer t"
    assert "host" not in echoed["headers"] and "content-length" not in echoed["headers"]
    assert echoed["body"] is None and base64.b64decode(echoed["body_base64"]) == b"\xff\x00binary"
    assert fake.last_request.method == "PUT" and fake.last_request.body == b"\xff\x00binary"


async def test_echo_streams_large_bodies(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """A large chunked upload to the catch-all is read whole (no size limit) and echoed."""
    block = b"0123456789abcdef" * 4096

    async def body() -> AsyncIterator[bytes]:
        for _ in range(256):  # 16 MiB
            yield block

    async with http.post(fake.url + "/v1/files", data=body()) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["body_length"] == 256 * len(block)
    assert echoed["headers"]["content-type"] == "application/octet-stream"
    assert "transfer-encoding" not in echoed["headers"]
    assert len(fake.last_request.body) == 256 * len(block)


async def test_models_and_embeddings(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """GET /v1/models lists models; /v1/embeddings gives deterministic unit vectors, float or base64."""
    models = [m.id async for m in oai.models.list()]
    assert MODEL in models
    assert (await oai.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("no-such-model")
    floats = await oai.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    packed = await oai.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="base64"
    )
    assert len(floats.data) == 2 and floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == 2
    assert abs(sum(v * v for v in floats.data[0].embedding) - 1.0) < 1e-5
    raw: Any = packed.data[0].embedding
    vector = list(struct.unpack("<16f", base64.b64decode(raw))) if isinstance(raw, str) else raw
    assert vector == floats.data[0].embedding
    dims = await oai.embeddings.create(model="text-embedding-3-small", input="a", dimensions=4)
    assert len(dims.data[0].embedding) == 4


# ----------------------------------------------------------------------------- determinism, lifecycle


async def test_responses_are_deterministic(http: aiohttp.ClientSession) -> None:
    """The same request to fakes in the same state gives byte-identical responses (plain and streamed)."""
    openai_payload = {"model": MODEL, "messages": [user("same")], "stream_options": {"include_usage": True}}
    gemini_payload = {"contents": [{"parts": [{"text": "same"}]}]}
    results = []
    for _ in range(2):
        async with FakeUpstream() as fake:
            chat = fake.openai_base_url + "/chat/completions"
            gen = fake.url + f"/v1beta/models/{GEMINI}"
            results.append(
                [
                    await raw_post(http, chat, openai_payload),
                    await raw_post(http, chat, {**openai_payload, "stream": True}),
                    await raw_post(http, gen + ":generateContent", gemini_payload),
                    await raw_post(http, gen + ":streamGenerateContent?alt=sse", gemini_payload),
                    await raw_post(http, chat, openai_payload),  # again, same state for short prompts
                ]
            )
    assert results[0] == results[1]
    assert results[0][0] == results[0][4]
    assert results[0][0][1] != results[0][1][1]


async def test_reset_clears_records_script_and_cache(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """reset() forgets requests, usage, disconnects, the script and the prefix cache."""
    messages: list[ChatCompletionMessageParam] = [user(long_text(800))]
    await oai.chat.completions.create(model=MODEL, messages=messages)
    fake.script(Reply("unused"))
    fake.reset()
    assert not fake.requests and not fake.usage_log and not fake.pending and fake.disconnects == 0
    r = await oai.chat.completions.create(model=MODEL, messages=messages)
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.choices[0].message.content is not None and r.choices[0].message.content.startswith("Fake reply")


async def test_fake_app_runs_under_aiohttp_test_server(http: aiohttp.ClientSession) -> None:
    """fake.app can be served by aiohttp's TestServer."""
    fake = FakeUpstream()
    async with TestServer(fake.app) as server:
        status, body = await raw_post(
            http, str(server.make_url("/v1/chat/completions")), {"model": MODEL, "messages": [user("ts")]}
        )
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Fake reply to: ts"
    assert len(fake.requests) == 1


async def test_run_fake_upstream_serves_until_cancelled(http: aiohttp.ClientSession) -> None:
    """run_fake_upstream(host, port) serves on that port until its task is cancelled."""
    port = free_port()
    task = asyncio.create_task(run_fake_upstream("127.0.0.1", port))
    try:
        for _ in range(100):
            try:
                async with http.get(f"http://127.0.0.1:{port}/v1/models") as resp:
                    assert resp.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("fake upstream did not start")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_url_needs_a_started_fake() -> None:
    """fake.url raises before the server is started and after it is closed."""
    fake = FakeUpstream()
    with pytest.raises(RuntimeError):
        _ = fake.url
    async with fake:
        assert fake.url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError):
        _ = fake.url


@pytest.mark.parametrize(
    "make",
    [lambda: Fail(200), lambda: Stall(-1), lambda: StreamStall(-1, 1), lambda: Drop(-1)],
)
def test_invalid_script_values_are_rejected(make: Callable[[], object]) -> None:
    """Script values reject impossible parameters at construction."""
    with pytest.raises(ValueError):
        make()


async def test_record_false_keeps_no_records(http: aiohttp.ClientSession) -> None:
    """FakeUpstream(record=False) (long-running servers, benchmarks) keeps no requests or usage."""
    async with FakeUpstream(record=False) as fake:
        status, _ = await raw_post(
            http, fake.openai_base_url + "/chat/completions", {"model": MODEL, "messages": [user("x")]}
        )
        assert status == 200
        assert fake.requests == [] and fake.usage_log == []
