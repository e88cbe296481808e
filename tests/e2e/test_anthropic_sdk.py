"""Anthropic Messages through the running proxy with the real ``anthropic`` SDK and the fake
provider: compression, the retrieval tool loop (plain, streamed, with extended thinking whose
signatures the fake verifies), automatic prompt caching, usage, cost and errors."""

from __future__ import annotations

import itertools
import json
from typing import Any

import aiohttp
import anthropic
import pytest

from compressors.markers import content_id
from proxy.testing import Fail, FakeUpstream, Reply, ToolCall
from tests.helpers import SECRET, sent

MODEL = "claude-sonnet-4-5"
TOOL = "nocp_retrieve"
LOG = "\n".join(
    f"2024-05-{1 + i % 28:02d}T10:{i % 60:02d}:00Z INFO worker-{i % 7} job {i} took {i * 3 % 97} ms ok"
    for i in range(3000)
)
LOG += "\n2024-05-29T11:00:00Z ERROR worker-5 failed: ValueError: bad checksum 0xdeadbeef in /data/b_417.bin"
REF = content_id(LOG, SECRET)
READ_LOG = {
    "name": "read_log",
    "description": "Read the job log.",
    "input_schema": {"type": "object", "properties": {}},
}
SYSTEM = "You debug batch jobs. " + "Follow the runbook carefully and cite log lines. " * 150


def _client(base: str, key: str = "sk-ant-tenant-a-0123456789") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base, api_key=key, max_retries=0)


def conversation(thinking: bool = False) -> list[Any]:
    """An agent's first request: the task, a read_log call and its long output."""
    turn: list[Any] = [{"type": "tool_use", "id": "toolu_log", "name": "read_log", "input": {}}]
    return [
        {"role": "user", "content": "Why did the batch job fail?"},
        {"role": "assistant", "content": turn},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_log", "content": LOG}]},
    ]


async def ask(client: anthropic.AsyncAnthropic, stream: bool, **kw: Any) -> Any:
    """One message, plain or streamed (the SDK's accumulated final message)."""
    kw.setdefault("model", MODEL)
    kw.setdefault("max_tokens", 4096)
    if not stream:
        return await client.messages.create(**kw)
    async with client.messages.stream(**kw) as s:
        return await s.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_are_compressed_logged_and_priced(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """A long tool_result is cut before the upstream; the log line has Anthropic's usage, cache
    fields and a cost; the client's answer is the provider's."""
    proxy = await make_proxy()
    fake.script(Reply("It failed on a bad checksum."))
    async with _client(proxy.url) as client:
        msg = await ask(client, stream, messages=conversation(), tools=[READ_LOG])
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "It failed on a bad checksum."
    upstream = sent(fake, 0)
    result = upstream["messages"][2]["content"][0]["content"]
    assert len(result) < len(LOG) / 5 and "0xdeadbeef" in result and f"id={REF}" in result
    assert [t["name"] for t in upstream["tools"]] == ["read_log", TOOL]
    (line,) = await proxy.log_lines(1)
    assert (line["protocol"], line["model"], line["stream"], line["outcome"]) == (
        "anthropic",
        MODEL,
        stream,
        "ok",
    )
    usage = fake.usage_log[0]
    assert (
        line["prompt_tokens"] == usage.prompt_tokens and line["completion_tokens"] == usage.completion_tokens
    )
    assert line["raw_input_tokens"] > line["optimized_input_tokens"] > 0
    assert line["estimated_cost_usd"] > 0 and line["cost_savings_usd"] > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_retrieval_round_with_extended_thinking(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """With extended thinking on, an agent's tool loop and nocp's retrieval round inside it keep
    every thinking block and signature as the model made them (the fake verifies each), and
    the next turn, which puts the round back, is accepted too."""
    proxy = await make_proxy()
    fake.script(
        ToolCall("read_log", {}),
        ToolCall(TOOL, {"id": REF, "query": "ERROR"}),
        Reply("Worker 5 hit a bad checksum."),
        Reply("Restart it."),
    )
    thinking = {"type": "enabled", "budget_tokens": 1024}
    messages: list[Any] = [{"role": "user", "content": "Why did the batch job fail?"}]
    async with _client(proxy.url) as client:
        call = await ask(client, stream, messages=messages, tools=[READ_LOG], thinking=thinking)
        assert [b.type for b in call.content] == ["thinking", "tool_use"]
        messages += [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in call.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.content[1].id, "content": LOG}],
            },
        ]
        msg = await ask(client, stream, messages=messages, tools=[READ_LOG], thinking=thinking)
        # streamed, the thinking of the round's hop reaches the client too (one message)
        assert (
            [b.type for b in msg.content] == ["thinking", "thinking", "text"]
            if stream
            else ["thinking", "text"]
        )
        assert msg.content[-1].text == "Worker 5 hit a bad checksum." and msg.stop_reason == "end_turn"
        assert TOOL not in msg.model_dump_json()
        messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]}]
        messages += [{"role": "user", "content": "What now?"}]
        again = await ask(client, stream, messages=messages, tools=[READ_LOG], thinking=thinking)
    assert again.content[-1].text == "Restart it."
    assert len(fake.requests) == 4  # each accepted: the fake refuses an altered signature with 400
    follow = sent(fake, 2)["messages"]
    assert follow[-2]["content"][0]["type"] == "thinking" and follow[-2]["content"][-1]["name"] == TOOL
    assert (
        follow[-1]["content"][0]["type"] == "tool_result"
        and "0xdeadbeef" in follow[-1]["content"][0]["content"]
    )
    turn3 = sent(fake, 3)["messages"]
    roles = [m["role"] for m in turn3]
    assert all(a != b for a, b in itertools.pairwise(roles)), roles
    assert turn3[3:5] == follow[3:5]  # the round, put back where it happened
    lines = await proxy.log_lines(3)
    assert [line["retrieval_rounds"] for line in lines] == [0, 1, 0]


async def test_streamed_preamble_and_answer_are_one_message(fake: FakeUpstream, make_proxy: Any) -> None:
    """Text streamed before a retrieval call is followed by the answer in the same stream."""
    proxy = await make_proxy()
    fake.script(
        Reply("Let me check the log.", tool_calls=(ToolCall(TOOL, {"id": REF, "query": "ERROR"}),)),
        Reply(" Worker 5 failed."),
    )
    events: list[Any] = []
    async with (
        _client(proxy.url) as client,
        client.messages.stream(model=MODEL, max_tokens=1024, messages=conversation(), tools=[READ_LOG]) as s,
    ):
        async for event in s:
            events.append(event)
        msg = await s.get_final_message()
    assert [b.type for b in msg.content] == ["text", "text"]
    assert "".join(b.text for b in msg.content) == "Let me check the log. Worker 5 failed."
    assert msg.stop_reason == "end_turn"
    assert sum(1 for e in events if e.type == "message_start") == 1
    assert TOOL not in json.dumps([e.model_dump(mode="json") for e in events])


async def test_auto_cache_makes_the_second_turn_a_cache_read(fake: FakeUpstream, make_proxy: Any) -> None:
    """A client that sets no breakpoint gets them from nocp: the second turn reads the cache the
    first wrote, and the cost counts the write (1.25x) and the read (0.1x)."""
    proxy = await make_proxy(stages={"tool_output": False}, history={"enabled": False})
    fake.script(Reply("One."), Reply("Two."))
    messages: list[Any] = [{"role": "user", "content": "Summarise the runbook."}]
    async with _client(proxy.url) as client:
        one = await client.messages.create(model=MODEL, max_tokens=100, system=SYSTEM, messages=messages)
        messages += [{"role": "assistant", "content": "One."}, {"role": "user", "content": "And step 2?"}]
        two = await client.messages.create(model=MODEL, max_tokens=100, system=SYSTEM, messages=messages)
    assert one.usage.cache_creation_input_tokens and one.usage.cache_creation_input_tokens > 1000
    assert (
        two.usage.cache_read_input_tokens
        and two.usage.cache_read_input_tokens >= one.usage.cache_creation_input_tokens
    )
    first, second = sent(fake, 0), sent(fake, 1)
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert second["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    lines = await proxy.log_lines(2)
    assert [line["cache_breakpoints_added"] for line in lines] == [2, 2]
    assert lines[0]["cache_creation_input_tokens"] == one.usage.cache_creation_input_tokens
    assert lines[1]["cached_tokens"] == two.usage.cache_read_input_tokens
    assert lines[1]["estimated_cost_usd"] < lines[1]["baseline_cost_usd"]  # the read pays for the write


async def test_client_breakpoints_are_kept_and_nothing_added(fake: FakeUpstream, make_proxy: Any) -> None:
    """A request with its own cache_control reaches the upstream with exactly those."""
    proxy = await make_proxy()
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}
    ]
    async with _client(proxy.url) as client:
        await client.messages.create(model=MODEL, max_tokens=100, system=system, messages=messages)  # type: ignore[arg-type]
    upstream = sent(fake, 0)
    assert upstream["system"] == system and upstream["messages"] == messages
    (line,) = await proxy.log_lines(1)
    assert line["cache_breakpoints_added"] == 0 and line["cache_creation_1h_input_tokens"] > 0


async def test_errors_in_anthropics_shape(fake: FakeUpstream, make_proxy: Any) -> None:
    """An upstream 429 reaches the SDK as RateLimitError; a malformed body gets nocp's 400 in
    Anthropic's shape and is never forwarded."""
    proxy = await make_proxy()
    fake.script(Fail(429))
    async with _client(proxy.url) as client:
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{proxy.url}/v1/messages",
            json={"model": MODEL, "max_tokens": 10, "messages": [{"role": "tool", "content": "x"}]},
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert len(fake.requests) == 1


async def test_count_tokens_passes_through(fake: FakeUpstream, make_proxy: Any) -> None:
    """/v1/messages/count_tokens goes to the Anthropic upstream unchanged, with no log line."""
    proxy = await make_proxy()
    async with _client(proxy.url) as client:
        counted = await client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "Hello there"}]
        )
    assert counted.input_tokens > 0
    assert fake.requests[-1].path == "/v1/messages/count_tokens"


async def test_client_breakpoints_get_a_new_tool_only_when_it_pays(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """A client with its own breakpoints whose session went without nocp's tool gets it only
    when the cut pays for rewriting its cache: a modest output under a long prompt is sent
    whole (tool list unchanged); a huge one is cut and the tool added."""
    proxy = await make_proxy()
    marked = [{"type": "text", "text": SYSTEM * 12, "cache_control": {"type": "ephemeral"}}]
    short = [
        {"role": "user", "content": "Why did the batch job fail?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_log", "name": "read_log", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_log", "content": "3 lines, all ok"}],
        },
    ]
    modest = "\\n".join(LOG.splitlines()[-400:])

    def later(output: str) -> list[Any]:
        return [
            *short,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_2", "name": "read_log", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": output}],
            },
        ]

    async with _client(proxy.url) as client:
        for messages in (short, later(modest), later(LOG + "\n" + LOG)):
            await client.messages.create(
                model=MODEL, max_tokens=100, system=marked, messages=messages, tools=[READ_LOG]
            )  # type: ignore[arg-type]
    first, second, third = (sent(fake, k) for k in range(3))
    assert [t["name"] for t in first["tools"]] == ["read_log"] and second["tools"] == first["tools"]
    assert second["messages"][4]["content"][0]["content"] == modest  # sent whole, not cut
    assert [t["name"] for t in third["tools"]] == ["read_log", TOOL]
    assert len(third["messages"][4]["content"][0]["content"]) < len(LOG)
