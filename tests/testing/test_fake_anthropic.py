"""The fake upstream's Anthropic Messages API, exercised with the real ``anthropic`` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam, TextBlockParam, ToolParam
from openai import AsyncOpenAI

from compressors import tokens
from proxy.testing import Drop, Fail, FakeUpstream, Replay, Reply, StreamStall, ToolCall
from proxy.testing import _anthropic as fake_anthropic
from tests.helpers import long_text

SONNET = "claude-sonnet-4-5"
HAIKU = "claude-3-5-haiku-20241022"
THINKING: Any = {"type": "enabled", "budget_tokens": 1024}
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_tokens(at_least: int, seed: str = "w") -> str:
    """A text of at least ``at_least`` tokens (and not many more)."""
    words = at_least // 2
    while tokens.count(long_text(words, seed)) < at_least:
        words += 16
    return long_text(words, seed)


def user(text: str) -> MessageParam:
    return {"role": "user", "content": text}


def cached_system(text: str, ttl: str | None = None) -> list[TextBlockParam]:
    block: Any = {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}
    if ttl is not None:
        block["cache_control"]["ttl"] = ttl
    return [block]


def billed(u: anthropic.types.Usage) -> tuple[int, int, int]:
    """(input, cache read, cache creation) of a usage."""
    return u.input_tokens, u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(clock=clock) as upstream:
        yield upstream


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[AsyncAnthropic]:
    c = AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0)
    yield c
    await c.close()


async def post(
    http: aiohttp.ClientSession, url: str, payload: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.post(url, json=payload, headers=HEADERS if headers is None else headers) as resp:
        return resp.status, await resp.json()


# ----------------------------------------------------------------------------- answers


async def test_create_plain_default_reply_and_usage(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """A plain request answers "Fake reply to: <user text>" as a message billed in tokens."""
    question = "What is the capital of France?"
    r = await client.messages.create(
        model=SONNET, max_tokens=100, system="Be brief.", messages=[user(question)]
    )
    reply = "Fake reply to: " + question
    assert r.id.startswith("msg_") and r.type == "message" and r.role == "assistant" and r.model == SONNET
    assert [b.model_dump(exclude_none=True) for b in r.content] == [{"type": "text", "text": reply}]
    assert (r.stop_reason, r.stop_sequence) == ("end_turn", None)
    assert billed(r.usage) == (tokens.count("Be brief.") + tokens.count(question), 0, 0)
    assert r.usage.output_tokens == tokens.count(reply)
    assert r.usage.cache_creation is not None
    assert (
        r.usage.cache_creation.ephemeral_5m_input_tokens
        == r.usage.cache_creation.ephemeral_1h_input_tokens
        == 0
    )
    record = fake.usage_log[-1]
    assert (record.protocol, record.stream, record.prompt_tokens) == (
        "anthropic",
        False,
        r.usage.input_tokens,
    )
    sent = fake.last_request.headers  # the SDK authenticates with x-api-key or a bearer token
    assert "sk-ant-test" in sent.get("x-api-key", "") + sent.get("authorization", "")
    assert sent["anthropic-version"]


async def test_stream_final_message_equals_plain_answer(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """A streamed text + tool_use answer accumulates to the same blocks, usage and stop reason."""
    answer = Reply("Let me check the weather.", (ToolCall("get_weather", {"city": "Paris", "days": [1, 2]}),))
    fake.script(answer, answer)
    kwargs: Any = {"model": SONNET, "max_tokens": 200, "tools": [WEATHER], "messages": [user("Weather?")]}
    plain = await client.messages.create(**kwargs)
    async with client.messages.stream(**kwargs) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert [b.type for b in plain.content] == ["text", "tool_use"]
    tool_use = plain.content[1]
    assert tool_use.type == "tool_use" and tool_use.id.startswith("toolu_")
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Paris", "days": [1, 2]})
    assert plain.stop_reason == final.stop_reason == "tool_use"
    # The same blocks; tool_use ids are derived from each request's body, so they differ.
    assert [b.model_dump(exclude_none=True, exclude={"id"}) for b in final.content] == [
        b.model_dump(exclude_none=True, exclude={"id"}) for b in plain.content
    ]
    assert final.content[1].type == "tool_use" and final.content[1].id.startswith("toolu_")
    assert "".join(texts) == "Let me check the weather." and len(texts) == 5
    assert final.usage.model_dump() == plain.usage.model_dump()
    assert [r.stream for r in fake.usage_log] == [False, True]


async def test_stream_wire_format(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """The SSE stream names each event, pings once after the first block starts, and ends with
    message_delta (stop reason, usage) and message_stop."""
    fake.script(Reply("one two", (ToolCall("get_weather", {"city": "Oslo"}),)))
    payload = {"model": SONNET, "max_tokens": 50, "stream": True, "messages": [user("hi")]}
    async with http.post(fake.url + "/v1/messages", json=payload, headers=HEADERS) as resp:
        assert resp.content_type == "text/event-stream"
        raw = (await resp.read()).decode()
    events = [chunk.split("\n") for chunk in raw.split("\n\n") if chunk]
    names = [lines[0].removeprefix("event: ") for lines in events]
    data = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert [d["type"] for d in data] == names
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * (len(names) - 10),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = data[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 1
    assert data[6]["content_block"] == {
        "type": "tool_use",
        "id": data[6]["content_block"]["id"],
        "name": "get_weather",
        "input": {},
    }
    json_pieces = [d["delta"]["partial_json"] for d in data[7:-3]]
    assert json.loads("".join(json_pieces)) == {"city": "Oslo"}
    assert data[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert data[-2]["usage"]["output_tokens"] == fake.usage_log[-1].completion_tokens


async def test_replay_anthropic_message_and_convert_for_openai(
    fake: FakeUpstream, client: AsyncAnthropic
) -> None:
    """Replay sends a recorded Anthropic message's blocks as they are; OpenAI gets it converted."""
    recorded = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_rec", "name": "lookup", "input": {"q": "x"}},
        ],
    }
    fake.script(Replay(recorded), Replay(recorded))
    r = await client.messages.create(model=SONNET, max_tokens=50, messages=[user("go")])
    assert [b.model_dump(exclude_none=True) for b in r.content] == recorded["content"]
    oai = AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
    c = await oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}])
    await oai.close()
    msg = c.choices[0].message
    assert msg.content == "Checking." and msg.tool_calls is not None
    call = msg.tool_calls[0]
    assert call.type == "function"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_rec",
        "lookup",
        {"q": "x"},
    )


# ----------------------------------------------------------------------------- errors


async def test_scripted_failures_raise_the_sdk_errors(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """Fail(429/529/500) give Anthropic's error shapes: RateLimitError, OverloadedError, and a
    streamed request fails before its stream starts; failed requests bill nothing."""
    fake.script(Fail(429), Fail(529), Fail(500))
    with pytest.raises(anthropic.RateLimitError) as rate:
        await client.messages.create(model=SONNET, max_tokens=10, messages=[user("a")])
    assert rate.value.status_code == 429
    assert isinstance(rate.value.body, dict)
    assert rate.value.body["type"] == "error" and rate.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await client.messages.create(model=SONNET, max_tokens=10, messages=[user("a")])
    assert (
        isinstance(overloaded.value.body, dict)
        and overloaded.value.body["error"]["type"] == "overloaded_error"
    )
    with pytest.raises(anthropic.InternalServerError) as server:
        async with client.messages.stream(model=SONNET, max_tokens=10, messages=[user("a")]) as stream:
            await stream.get_final_message()
    assert isinstance(server.value.body, dict) and server.value.body["error"]["type"] == "api_error"
    assert not fake.usage_log


async def test_invalid_requests_get_400_and_keep_the_script(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Missing max_tokens, a bad block, a missing anthropic-version header (400) or API key (401)
    are refused in Anthropic's error shape without consuming a scripted step."""
    fake.script(Reply("kept"))
    url = fake.url + "/v1/messages"
    good = {"model": SONNET, "max_tokens": 5, "messages": [user("x")]}
    cases: list[tuple[dict[str, Any], dict[str, str], int, str, str]] = [
        ({"model": SONNET, "messages": [user("x")]}, HEADERS, 400, "invalid_request_error", "max_tokens"),
        (
            {**good, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            HEADERS,
            400,
            "invalid_request_error",
            "messages.0.content.0.text",
        ),
        (good, {"x-api-key": "k"}, 400, "invalid_request_error", "anthropic-version"),
        (good, {"anthropic-version": "2023-06-01"}, 401, "authentication_error", "x-api-key"),
    ]
    for payload, headers, status, kind, mentioned in cases:
        got, body = await post(http, url, payload, headers)
        assert (got, body["type"], body["error"]["type"]) == (status, "error", kind)
        assert mentioned in body["error"]["message"]
    assert len(fake.pending) == 1 and not fake.usage_log
    status, body = await post(
        http, url, good, {"authorization": "Bearer k", "anthropic-version": "2023-06-01"}
    )
    assert status == 200 and body["content"][0]["text"] == "kept"


async def test_tool_result_without_its_tool_use_is_refused(client: AsyncAnthropic) -> None:
    """A tool_result whose tool_use is not in the previous assistant message is a 400."""
    messages: list[MessageParam] = [
        user("weather?"),
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "sunny"}]},
    ]
    with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
        await client.messages.create(model=SONNET, max_tokens=10, messages=messages)


async def test_drop_and_stall_mid_stream(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """Drop cuts a Messages stream after the given events; StreamStall delays but completes it."""
    fake.script(Drop(after_chunks=3), StreamStall(after_chunks=2, seconds=0.05))
    received = []
    with pytest.raises(anthropic.APIConnectionError):
        async with client.messages.stream(model=SONNET, max_tokens=10, messages=[user("a b c")]) as stream:
            async for event in stream:
                received.append(event.type)
    assert received[:2] == ["message_start", "content_block_start"] and len(received) <= 3
    async with client.messages.stream(model=SONNET, max_tokens=10, messages=[user("a b c")]) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "Fake reply to: a b c"


# ----------------------------------------------------------------------------- thinking


async def test_thinking_signature_round_trip(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """With thinking enabled the answer starts with a signed thinking block; sent back unchanged
    (with the tool result) it is accepted; an altered text or signature is a 400."""
    fake.script(ToolCall("get_weather", {"city": "Rome"}))
    first = await client.messages.create(
        model=SONNET, max_tokens=2048, thinking=THINKING, tools=[WEATHER], messages=[user("Weather in Rome?")]
    )
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    tool_use = first.content[1]
    assert tool_use.type == "tool_use"
    assert first.usage.output_tokens > tokens.count(thinking.thinking)

    def history(blocks: list[dict[str, Any]]) -> list[Any]:
        result = {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}
        return [
            user("Weather in Rome?"),
            {"role": "assistant", "content": blocks},
            {"role": "user", "content": [result]},
        ]

    kept = [b.model_dump(exclude_none=True) for b in first.content]
    ok = await client.messages.create(
        model=SONNET, max_tokens=2048, thinking=THINKING, tools=[WEATHER], messages=history(kept)
    )
    assert ok.content[0].type == "thinking"
    for altered in (
        [{**kept[0], "thinking": kept[0]["thinking"] + " (edited)"}, kept[1]],
        [{**kept[0], "signature": kept[0]["signature"][:-2] + "AA"}, kept[1]],
    ):
        with pytest.raises(anthropic.BadRequestError, match="Invalid `signature` in `thinking` block") as bad:
            await client.messages.create(
                model=SONNET, max_tokens=2048, thinking=THINKING, tools=[WEATHER], messages=history(altered)
            )
        assert bad.value.status_code == 400
    with pytest.raises(anthropic.BadRequestError, match="must start with a thinking block"):
        await client.messages.create(
            model=SONNET, max_tokens=2048, thinking=THINKING, tools=[WEATHER], messages=history(kept[1:])
        )


async def test_streamed_thinking_has_its_signature(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """A streamed thinking block arrives as thinking deltas then a signature delta, and equals
    the plain answer's block; without thinking enabled no thinking block is sent."""
    kwargs: Any = {"model": SONNET, "max_tokens": 2048, "thinking": THINKING, "messages": [user("Why?")]}
    plain = await client.messages.create(**kwargs)
    async with client.messages.stream(**kwargs) as stream:
        kinds = [e.delta.type async for e in stream if e.type == "content_block_delta" and e.index == 0]
        final = await stream.get_final_message()
    assert kinds[-1] == "signature_delta" and set(kinds[:-1]) == {"thinking_delta"}
    assert final.content[0].model_dump() == plain.content[0].model_dump()
    bare = await client.messages.create(model=SONNET, max_tokens=50, messages=[user("Why?")])
    assert [b.type for b in bare.content] == ["text"]


async def test_redacted_thinking_data_must_be_issued(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """redacted_thinking data the fake sent is accepted back; data it never sent is a 400."""
    fake.script(
        Replay(
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "EmwKAhgB"},
                    {"type": "text", "text": "Done."},
                ],
            }
        )
    )
    r = await client.messages.create(model=SONNET, max_tokens=2048, thinking=THINKING, messages=[user("q")])
    assert [b.type for b in r.content] == ["redacted_thinking", "text"]

    def history(data: str) -> list[MessageParam]:
        blocks: Any = [{"type": "redacted_thinking", "data": data}, {"type": "text", "text": "Done."}]
        return [user("q"), {"role": "assistant", "content": blocks}, user("and?")]

    ok = await client.messages.create(
        model=SONNET, max_tokens=2048, thinking=THINKING, messages=history("EmwKAhgB")
    )
    assert ok.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError, match="redacted_thinking"):
        await client.messages.create(
            model=SONNET, max_tokens=2048, thinking=THINKING, messages=history("forged")
        )


# ----------------------------------------------------------------------------- caching


async def test_no_breakpoint_caches_nothing(client: AsyncAnthropic) -> None:
    """Without cache_control a long prompt sent twice is billed in full both times."""
    system = with_tokens(2000)
    for _ in range(2):
        r = await client.messages.create(model=SONNET, max_tokens=10, system=system, messages=[user("q")])
        assert billed(r.usage) == (tokens.count(system) + tokens.count("q"), 0, 0)


async def test_breakpoint_writes_then_reads(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """A breakpoint on a long system prompt: the first request writes the prefix up to it (5m
    TTL), the second reads the same amount; the tokens after it are input both times."""
    system = with_tokens(1500)
    prefix = tokens.count(system)
    first = await client.messages.create(
        model=SONNET, max_tokens=10, system=cached_system(system), messages=[user("first question")]
    )
    assert billed(first.usage) == (tokens.count("first question"), 0, prefix)
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    second = await client.messages.create(
        model=SONNET, max_tokens=10, system=cached_system(system), messages=[user("another one")]
    )
    assert billed(second.usage) == (tokens.count("another one"), prefix, 0)
    record = fake.usage_log[-1]
    assert (record.prompt_tokens, record.cached_tokens, record.cache_creation_tokens) == (
        prefix + tokens.count("another one"),
        prefix,
        0,
    )
    assert fake.usage_log[0].cache_creation_tokens == prefix
    changed = await client.messages.create(
        model=SONNET, max_tokens=10, system=cached_system(system + " changed"), messages=[user("another one")]
    )
    assert billed(changed.usage)[1] == 0  # a different prefix is a miss


async def test_moving_breakpoint_reads_the_earlier_prefix(client: AsyncAnthropic) -> None:
    """A breakpoint moved to the newest message finds the prefix the previous turn wrote at an
    earlier block (the lookback) and writes only the new tail."""
    turn1: list[Any] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": with_tokens(1200), "cache_control": {"type": "ephemeral"}}],
        }
    ]
    r1 = await client.messages.create(model=SONNET, max_tokens=10, messages=turn1)
    written = r1.usage.cache_creation_input_tokens
    assert written and r1.usage.input_tokens == 0
    first_text = turn1[0]["content"][0]["text"]
    turn2: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": first_text}]},
        {"role": "assistant", "content": "An answer."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Follow-up?", "cache_control": {"type": "ephemeral"}}],
        },
    ]
    r2 = await client.messages.create(model=SONNET, max_tokens=10, messages=turn2)
    assert billed(r2.usage) == (0, written, tokens.count("An answer.") + tokens.count("Follow-up?"))


async def test_prefix_below_the_model_minimum_is_never_cached(client: AsyncAnthropic) -> None:
    """A breakpoint prefix under the model's minimum (1024 Sonnet, 2048 Haiku) is not written,
    so the same request again reads nothing."""
    short, medium = with_tokens(600), with_tokens(1500)
    assert fake_anthropic.min_cacheable_tokens(HAIKU) == 2048 > tokens.count(medium) > 1024
    for model, system in ((SONNET, short), (HAIKU, medium)):
        for _ in range(2):
            r = await client.messages.create(
                model=model, max_tokens=10, system=cached_system(system), messages=[user("q")]
            )
            assert billed(r.usage) == (tokens.count(system) + tokens.count("q"), 0, 0)
    r = await client.messages.create(
        model=SONNET, max_tokens=10, system=cached_system(medium), messages=[user("q")]
    )
    assert billed(r.usage)[2] == tokens.count(medium)  # the same prefix is long enough for Sonnet


async def test_ttl_expiry_with_an_injected_clock(clock: Clock, client: AsyncAnthropic) -> None:
    """A 5m entry lives 5 minutes after its last read; a 1h entry an hour, reported per TTL."""
    system = with_tokens(1100)
    prefix = tokens.count(system)

    async def cache(ttl: str | None = None) -> tuple[int, int]:
        r = await client.messages.create(
            model=SONNET, max_tokens=10, system=cached_system(system, ttl), messages=[user("q")]
        )
        return r.usage.cache_read_input_tokens or 0, r.usage.cache_creation_input_tokens or 0

    assert await cache() == (0, prefix)
    clock.now += 299
    assert await cache() == (prefix, 0)  # the read refreshes the entry
    clock.now += 299
    assert await cache() == (prefix, 0)
    clock.now += 301
    assert await cache() == (0, prefix)  # expired: written again

    system = with_tokens(1100, seed="h")
    prefix = tokens.count(system)
    r = await client.messages.create(
        model=SONNET, max_tokens=10, system=cached_system(system, "1h"), messages=[user("q")]
    )
    assert r.usage.cache_creation is not None
    assert (
        r.usage.cache_creation.ephemeral_1h_input_tokens,
        r.usage.cache_creation.ephemeral_5m_input_tokens,
    ) == (
        prefix,
        0,
    )
    clock.now += 3000
    assert await cache("1h") == (prefix, 0)
    clock.now += 3601
    assert await cache("1h") == (0, prefix)


async def test_more_than_four_breakpoints_is_a_400(fake: FakeUpstream, client: AsyncAnthropic) -> None:
    """Five cache_control blocks are refused; four are fine."""
    blocks: Any = [
        {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}} for i in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4 blocks with cache_control"):
        await client.messages.create(model=SONNET, max_tokens=10, system=blocks, messages=[user("q")])
    r = await client.messages.create(model=SONNET, max_tokens=10, system=blocks[:4], messages=[user("q")])
    assert r.stop_reason == "end_turn"


async def test_count_tokens_matches_the_billed_prompt(client: AsyncAnthropic) -> None:
    """count_tokens gives the prompt's tokens (tools, system, messages): what a request bills as
    input + cache read + cache creation."""
    system = with_tokens(1100)
    kwargs: Any = {
        "model": SONNET,
        "system": cached_system(system),
        "tools": [WEATHER],
        "messages": [user("Weather?")],
    }
    counted = await client.messages.count_tokens(**kwargs)
    tool = json.dumps(WEATHER, separators=(",", ":"))
    assert counted.input_tokens == tokens.count(tool) + tokens.count(system) + tokens.count("Weather?")
    for _ in range(2):
        r = await client.messages.create(max_tokens=10, **kwargs)
        assert sum(billed(r.usage)) == counted.input_tokens
