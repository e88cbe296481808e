"""Reversible compression through the running proxy: real SDKs, the fake provider scripted to
call the retrieval tool, OpenAI and Gemini, plain and streamed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
from google import genai
from google.genai import types

from compressors.markers import content_id
from proxy.protocols import OpenAIChatAdapter
from proxy.protocols.openai_chat import ChatStream
from proxy.retrieval import LAST_ROUND_NOTE
from proxy.server import STATE
from proxy.testing import FakeUpstream, Reply, Stall, ToolCall
from tests.helpers import SECRET, WEATHER, read_log_turn

TOOL = "nocp_retrieve"
LOG = "\n".join(
    f"2024-05-0{1 + i % 9}T10:{i % 60:02d}:00Z INFO worker-{i % 7} processed batch {i} in {i * 3 % 97} ms"
    for i in range(600)
)
LOG += "\n2024-05-09T11:00:00Z ERROR worker-3 failed: ValueError: bad checksum 0xdeadbeef in /data/b_417.bin"
REF = content_id(LOG, SECRET)


def conversation(output: str = LOG) -> list[Any]:
    """An agent turn: the task, a read_log call and its (large) output."""
    return read_log_turn(output)


def gemini_contents(output: str = LOG) -> list[Any]:
    """The same agent turn in Gemini's form."""
    return [
        {"role": "user", "parts": [{"text": "Why did the batch job fail?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "read_log", "args": {}}}]},
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "read_log", "response": {"output": output}}}],
        },
    ]


def _client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test-0123456789", max_retries=0)


def _gclient(base: str) -> genai.Client:
    return genai.Client(api_key="AIzaTESTKEY0123456789", http_options=types.HttpOptions(base_url=base))


def tool_names(body: dict[str, Any]) -> list[str]:
    """Names of the function tools of an OpenAI or Gemini request body."""
    names = []
    for t in body.get("tools") or ():
        if "function" in t:
            names.append(t["function"]["name"])
        for d in t.get("functionDeclarations") or ():
            names.append(d["name"])
    return names


async def metrics_text(proxy: Any, wait_for: str = "nocp_retrievals_total{") -> str:
    """GET /metrics, polling until ``wait_for`` shows (metrics follow the log line, off the request path)."""
    deadline = asyncio.get_running_loop().time() + 5
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(f"{proxy.url}/metrics") as r:
                text = await r.text()
            if wait_for in text or asyncio.get_running_loop().time() > deadline:
                return text
            await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------ OpenAI


async def test_openai_round_answered_by_nocp(fake: FakeUpstream, make_proxy: Any) -> None:
    """nocp answers the model's retrieval call itself; the client sees the final answer, usage summed."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF}), Reply("The checksum of batch 417 was bad."))
    async with _client(proxy.url) as client:
        resp = await client.chat.completions.create(model="gpt-4o", messages=conversation())
    msg = resp.choices[0].message
    assert msg.content == "The checksum of batch 417 was bad." and msg.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"
    first, second = (r.json() for r in fake.requests)
    assert tool_names(first) == [TOOL]
    assert f"; id={REF}]" in first["messages"][3]["content"]
    call = second["messages"][-2]["tool_calls"][0]
    assert call["function"]["name"] == TOOL
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": LOG}
    assert second["messages"][:4] == first["messages"]  # the conversation, continued
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == sum(u.prompt_tokens for u in fake.usage_log)
    assert resp.usage.completion_tokens == sum(u.completion_tokens for u in fake.usage_log)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    (line,) = await proxy.log_lines(1)
    assert line["retrieval_offered"] is True and line["retrieval_rounds"] == 1
    (ret,) = line["retrievals"]
    assert (ret["id"], ret["tool"], ret["found"], ret["deferred"]) == (REF, "read_log", True, False)
    assert ret["tokens"] == line["retrieval_tokens"] > 1000
    assert line["prompt_tokens"] == resp.usage.prompt_tokens
    assert [h["prompt_tokens"] for h in line["retrieval_hops"]] == [u.prompt_tokens for u in fake.usage_log]
    assert (
        line["compression_overhead_tokens"]
        == fake.usage_log[1].prompt_tokens + fake.usage_log[0].completion_tokens
    )
    text = await metrics_text(proxy, "nocp_retrievals_total{")
    assert f'nocp_retrievals_total{{content_type="{ret["content_type"]}",tool="read_log"}} 1.0' in text
    assert 'nocp_retrieval_rounds_total{model="gpt-4o"} 1.0' in text


@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_stream_round_never_leaks(
    fake: FakeUpstream, make_proxy: Any, include_usage: bool
) -> None:
    """Streamed: the retrieval hop is consumed, no nocp_retrieve chunk leaks, the usage chunk is summed."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF, "query": "ERROR"}), Reply("Batch 417 had a bad checksum."))
    extra: Any = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with _client(proxy.url) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=conversation(), stream=True, **extra
        )
        chunks = [c async for c in stream]
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "Batch 417 had a bad checksum."
    )
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        (u,) = usage
        assert u.prompt_tokens == sum(x.prompt_tokens for x in fake.usage_log)
        assert u.completion_tokens == sum(x.completion_tokens for x in fake.usage_log)
    else:
        assert usage == []
    second = fake.requests[1].json()
    assert second["stream"] is True
    answer = second["messages"][-1]["content"]
    assert "matching lines" in answer and "bad checksum 0xdeadbeef" in answer and len(answer) < 1000
    (line,) = await proxy.log_lines(1)
    assert line["stream"] is True and line["retrieval_rounds"] == 1 and line["outcome"] == "ok"
    assert line["prompt_tokens"] == sum(x.prompt_tokens for x in fake.usage_log)


async def test_round_bound(fake: FakeUpstream, make_proxy: Any) -> None:
    """At most max_rounds rounds: the last result says so and the request after it no longer
    offers the tool, so the model answers with what it has."""
    proxy = await make_proxy(retrieval={"max_rounds": 2})
    fake.script(
        *(ToolCall(TOOL, {"id": REF, "query": f"batch {i}"}) for i in range(2)), Reply("Batch 417 failed.")
    )
    async with _client(proxy.url) as client:
        resp = await client.chat.completions.create(model="gpt-4o", messages=conversation())
    assert resp.choices[0].message.content == "Batch 417 failed." and resp.choices[0].finish_reason == "stop"
    first, second, last = (r.json() for r in fake.requests)
    assert tool_names(first) == tool_names(second) == [TOOL] and "tools" not in last
    assert last["messages"][-1]["content"].endswith(LAST_ROUND_NOTE)
    assert not last["messages"][-3]["content"].endswith(LAST_ROUND_NOTE)
    (line,) = await proxy.log_lines(1)
    assert line["retrieval_rounds"] == 2 and len(line["retrieval_hops"]) == 3
    assert [r["deferred"] for r in line["retrievals"]] == [False, False]


@pytest.mark.parametrize("stream", [False, True])
async def test_round_bound_with_a_model_that_calls_anyway(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """A model that calls nocp_retrieve after it was withdrawn gets one last answer and a request
    that forbids tool calls; the client never gets an empty answer or our call."""
    proxy = await make_proxy(retrieval={"max_rounds": 1})
    fake.script(
        ToolCall(TOOL, {"id": REF}),
        Reply("Partial answer.", tool_calls=(ToolCall(TOOL, {"id": REF}),)),
        Reply(" Done."),
    )
    async with _client(proxy.url) as client:
        if stream:
            it = await client.chat.completions.create(model="gpt-4o", messages=conversation(), stream=True)
            chunks = [c async for c in it]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
            reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            assert text == "Partial answer. Done." and reasons == ["stop"]
        else:
            resp = await client.chat.completions.create(model="gpt-4o", messages=conversation())
            assert resp.choices[0].message.content == " Done." and resp.choices[0].message.tool_calls is None
    assert len(fake.requests) == 3
    assert "tools" not in fake.requests[1].json() and "tools" not in fake.requests[2].json()
    (line,) = await proxy.log_lines(1)
    assert line["retrieval_rounds"] == 2 and line["outcome"] == "ok"


@pytest.mark.parametrize("stream", [False, True])
async def test_mixed_client_and_retrieval_calls(fake: FakeUpstream, make_proxy: Any, stream: bool) -> None:
    """Client tool + retrieval in one turn: client gets its call; ours is answered in later requests."""
    proxy = await make_proxy()
    fake.script(Reply(tool_calls=(ToolCall(TOOL, {"id": REF}), ToolCall("get_weather", {"city": "Paris"}))))
    messages = conversation()
    async with _client(proxy.url) as client:
        if stream:
            async with client.chat.completions.stream(
                model="gpt-4o", messages=messages, tools=[WEATHER]
            ) as s:
                resp = await s.get_final_completion()
        else:
            resp = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
        calls = resp.choices[0].message.tool_calls
        assert calls is not None and [c.function.name for c in calls] == ["get_weather"]
        assert resp.choices[0].finish_reason == "tool_calls"
        assert len(fake.requests) == 1
        assistant = resp.choices[0].message.model_dump(exclude_none=True)
        messages += [assistant, {"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21 C"}]
        await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
        messages += [{"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And the log?"}]
        await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
    second, third = (r.json()["messages"] for r in fake.requests[1:])
    sent_calls = second[4]["tool_calls"]  # the model's own message, both calls as it made them
    assert [c["function"]["name"] for c in sent_calls] == [TOOL, "get_weather"]
    assert second[5] == {"role": "tool", "tool_call_id": sent_calls[0]["id"], "content": LOG}
    assert second[6] == {"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21 C"}
    assert third[: len(second)] == second  # cache-stable: the same insertion on every later turn
    assert f"; id={REF}]" in second[3]["content"]  # the deferred answer holds the content; the cut stays
    lines = await proxy.log_lines(3)
    assert [r["deferred"] for r in lines[0]["retrievals"]] == [True]
    assert lines[0]["retrieval_rounds"] == 0


# ------------------------------------------------------------------------------ Gemini


async def test_gemini_round_non_stream(fake: FakeUpstream, make_proxy: Any) -> None:
    """Gemini generateContent: the functionCall is answered with the original; usage is summed."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF}), Reply("A bad checksum."))
    client = _gclient(proxy.url)
    try:
        resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents=gemini_contents())
    finally:
        await client.aio.aclose()
    assert resp.text == "A bad checksum." and not resp.function_calls
    first, second = (r.json() for r in fake.requests)
    assert tool_names(first) == [TOOL]
    assert second["contents"][-2]["parts"][0]["functionCall"]["name"] == TOOL
    part = second["contents"][-1]["parts"][0]["functionResponse"]
    assert part == {"name": TOOL, "response": {"content": LOG}}
    assert resp.usage_metadata is not None
    assert resp.usage_metadata.prompt_token_count == sum(u.prompt_tokens for u in fake.usage_log)
    assert resp.usage_metadata.candidates_token_count == sum(u.completion_tokens for u in fake.usage_log)
    (line,) = await proxy.log_lines(1)
    assert line["retrieval_rounds"] == 1 and line["retrievals"][0]["found"] is True


async def test_gemini_stream_sse_round(fake: FakeUpstream, make_proxy: Any) -> None:
    """Gemini SSE stream: the client sees only the answering hop, no functionCall, usage summed."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF}), Reply("The job failed on a bad checksum."))

    def call() -> list[Any]:
        client = _gclient(proxy.url)
        try:
            return list(
                client.models.generate_content_stream(model="gemini-2.5-flash", contents=gemini_contents())
            )
        finally:
            client.close()

    chunks = await asyncio.to_thread(call)
    assert "".join(c.text or "" for c in chunks) == "The job failed on a bad checksum."
    assert not any(c.function_calls for c in chunks)
    meta = chunks[-1].usage_metadata
    assert meta is not None and meta.prompt_token_count == sum(u.prompt_tokens for u in fake.usage_log)
    assert len(fake.requests) == 2 and "alt=sse" in fake.requests[1].query_string


async def test_gemini_stream_json_array_round(fake: FakeUpstream, make_proxy: Any) -> None:
    """streamGenerateContent without alt=sse (a streamed JSON array) is re-framed as a valid array."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF}), Reply("Bad checksum."))
    url = f"{proxy.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    async with aiohttp.ClientSession() as s, s.post(url, json={"contents": gemini_contents()}) as r:
        assert r.status == 200
        items = json.loads(await r.read())
    text = "".join(p.get("text", "") for i in items for p in i["candidates"][0]["content"]["parts"])
    assert text == "Bad checksum."
    assert not any("functionCall" in p for i in items for p in i["candidates"][0]["content"]["parts"])
    assert items[-1]["usageMetadata"]["promptTokenCount"] == sum(u.prompt_tokens for u in fake.usage_log)


async def test_gemini_mixed_calls(fake: FakeUpstream, make_proxy: Any) -> None:
    """Gemini client function + retrieval in one turn: ours is answered in the next request."""
    proxy = await make_proxy()
    fake.script(Reply(tool_calls=(ToolCall("get_weather", {"city": "Paris"}), ToolCall(TOOL, {"id": REF}))))
    decl = {
        "name": "get_weather",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
    }
    body: dict[str, Any] = {"contents": gemini_contents(), "tools": [{"functionDeclarations": [decl]}]}
    url = f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as r:
            got = await r.json()
        content = got["candidates"][0]["content"]
        assert [p["functionCall"]["name"] for p in content["parts"]] == ["get_weather"]
        result = {"functionResponse": {"name": "get_weather", "response": {"output": "Sunny"}}}
        body["contents"] += [content, {"role": "user", "parts": [result]}]
        async with s.post(url, json=body) as r:
            assert r.status == 200
    sent = fake.requests[1].json()
    assert tool_names(sent) == ["get_weather", TOOL]  # the cut stays: its marker is still there
    model_parts = sent["contents"][3]["parts"]
    assert [p["functionCall"]["name"] for p in model_parts] == ["get_weather", TOOL]
    responses = [p["functionResponse"] for p in sent["contents"][4]["parts"]]  # one user turn
    assert sorted(r["name"] for r in responses) == ["get_weather", TOOL]
    assert next(r for r in responses if r["name"] == TOOL)["response"] == {"content": LOG}
    assert [c["role"] for c in sent["contents"][3:]] == ["model", "user"]


async def test_gemini_stream_text_then_retrieval_continues(fake: FakeUpstream, make_proxy: Any) -> None:
    """Gemini stream: text is relayed live; a retrieval call after it is a round whose answer
    follows in the same stream, and the round is put back on the next turn."""
    proxy = await make_proxy()
    fake.script(
        Reply("Let me check.", tool_calls=(ToolCall(TOOL, {"id": REF}),)), Reply(" The checksum was bad.")
    )
    url = f"{proxy.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    body: dict[str, Any] = {"contents": gemini_contents()}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as r:
            raw = await r.read()
        events = [json.loads(e[6:]) for e in raw.split(b"\r\n\r\n") if e.startswith(b"data: ")]
        parts = [p for e in events for p in e["candidates"][0]["content"]["parts"]]
        text = "".join(p.get("text", "") for p in parts)
        assert text == "Let me check. The checksum was bad."
        assert not any("functionCall" in p for p in parts)
        body["contents"] += [
            {"role": "model", "parts": [{"text": text}]},
            {"role": "user", "parts": [{"text": "Go on."}]},
        ]
        async with s.post(url, json=body) as r:
            await r.read()
    sent = fake.requests[2].json()["contents"]
    assert sent[3]["parts"][-1]["functionCall"]["name"] == TOOL  # the round, as the model saw it
    assert sent[4]["parts"][0]["functionResponse"]["response"] == {"content": LOG}
    assert sent[5] == {"role": "model", "parts": [{"text": " The checksum was bad."}]}  # text joined
    assert sent[6] == {"role": "user", "parts": [{"text": "Go on."}]}


# ------------------------------------------------------------------------------ when not to offer


async def test_tool_choice_none_offers_nothing(fake: FakeUpstream, make_proxy: Any) -> None:
    """tool_choice none / forced / Gemini NONE: no tool added, markers say not retrievable."""
    proxy = await make_proxy()
    async with _client(proxy.url) as client:
        await client.chat.completions.create(
            model="gpt-4o", messages=conversation(), tools=[WEATHER], tool_choice="none"
        )
        forced: Any = {"type": "function", "function": {"name": "get_weather"}}
        await client.chat.completions.create(
            model="gpt-4o", messages=conversation(), tools=[WEATHER], tool_choice=forced
        )
    for req in fake.requests:
        body = req.json()
        assert tool_names(body) == ["get_weather"]
        out = body["messages"][3]["content"]
        assert "; not retrievable]" in out and "; id=" not in out
    gemini = {"contents": gemini_contents(), "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}
    url = f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with aiohttp.ClientSession() as s, s.post(url, json=gemini) as r:
        assert r.status == 200
    sent = fake.requests[-1].json()
    assert "tools" not in sent
    out = sent["contents"][2]["parts"][0]["functionResponse"]["response"]["output"]
    assert "; not retrievable]" in out
    lines = await proxy.log_lines(3)
    assert not any(line["retrieval_offered"] for line in lines)


async def test_no_marker_no_tool(fake: FakeUpstream, make_proxy: Any) -> None:
    """No lossy marker, no tool; an unchanged request goes upstream byte for byte."""
    proxy = await make_proxy()
    pretty = json.dumps([{"id": i, "name": f"user{i}", "active": i % 2 == 0} for i in range(60)], indent=2)
    async with _client(proxy.url) as client:
        await client.chat.completions.create(model="gpt-4o", messages=conversation("3 lines of output"))
        await client.chat.completions.create(model="gpt-4o", messages=conversation(pretty))
    plain, lossless = (r.json() for r in fake.requests)
    assert "tools" not in plain and "tools" not in lossless
    assert plain["messages"] == conversation("3 lines of output")
    assert (
        lossless["messages"][3]["content"] != pretty
        and "nocp omitted" not in lossless["messages"][3]["content"]
    )
    lines = await proxy.log_lines(2)
    assert not any(line["retrieval_offered"] for line in lines)


async def test_retrieval_disabled(fake: FakeUpstream, make_proxy: Any) -> None:
    """retrieval.enabled false: markers carry no id and no tool is offered."""
    proxy = await make_proxy(retrieval={"enabled": False})
    async with _client(proxy.url) as client:
        await client.chat.completions.create(model="gpt-4o", messages=conversation())
    body = fake.requests[0].json()
    assert "tools" not in body
    assert "nocp omitted" in body["messages"][3]["content"] and "; id=" not in body["messages"][3]["content"]


# ------------------------------------------------------------------------------ ids and later turns


async def test_expired_and_unknown_ids(fake: FakeUpstream, make_proxy: Any) -> None:
    """An id that expired (kept ttl_s after last use) or never existed gets a plain tool result saying so."""
    proxy = await make_proxy(retrieval={"ttl_s": 0.2})
    fake.script(
        Stall(
            0.6, then=Reply(tool_calls=(ToolCall(TOOL, {"id": REF}), ToolCall(TOOL, {"id": "0123456789"})))
        ),
        Reply("I could not see the log."),
    )
    async with _client(proxy.url) as client:
        resp = await client.chat.completions.create(model="gpt-4o", messages=conversation())
    assert resp.choices[0].message.content == "I could not see the log."
    results = [m["content"] for m in fake.requests[1].json()["messages"][-2:]]
    assert all(r.startswith("Nothing is stored under id ") and "expired" in r for r in results)
    assert f"id {REF}:" in results[0] and "id 0123456789:" in results[1]
    (line,) = await proxy.log_lines(1)
    assert [r["found"] for r in line["retrievals"]] == [False, False]
    assert "nocp_retrieval_misses_total 2.0" in await metrics_text(proxy, "nocp_retrieval_misses_total 2.0")


async def test_cut_keeps_its_bytes_after_a_retrieval(fake: FakeUpstream, make_proxy: Any) -> None:
    """After a retrieval the cut output stays cut on every later turn; the round (our call and
    its answer) is put back where it happened, the same bytes each time; other sessions get none."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF}), Reply("Bad checksum."))
    messages = conversation()
    headers = {"X-Session-Id": "s-1"}
    async with _client(proxy.url) as client:
        await client.chat.completions.create(model="gpt-4o", messages=messages, extra_headers=headers)
        messages += [{"role": "assistant", "content": "Bad checksum."}, {"role": "user", "content": "Fix?"}]
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o", messages=messages, extra_headers=headers)
        await client.chat.completions.create(
            model="gpt-4o", messages=messages, extra_headers={"X-Session-Id": "s-2"}
        )
    first, round_, later, again, other = (r.json() for r in fake.requests)
    cut_text = first["messages"][3]["content"]
    assert f"; id={REF}]" in cut_text and len(cut_text) < len(LOG) / 10
    assert later["messages"][:4] == first["messages"][:4]  # the cut, byte for byte
    final = {"role": "assistant", "content": "Bad checksum."}
    assert later["messages"][4:7] == [*round_["messages"][4:], final]
    assert later["messages"][5]["content"] == LOG  # what the model retrieved, still in front of it
    assert later["messages"][7:] == [{"role": "user", "content": "Fix?"}]
    assert tool_names(later) == [TOOL] and again == later
    assert other["messages"][3]["content"] == cut_text and other["messages"][4:] == messages[4:]


async def test_history_summary_is_retrievable(fake: FakeUpstream, make_proxy: Any) -> None:
    """A history roll-up's summary carries a marker whose id fetches the replaced messages verbatim."""
    proxy = await make_proxy(
        history={"threshold_tokens": 1500, "keep_last_messages": 2, "cut_step_tokens": 300}
    )
    filler = (
        "The quarterly report was reviewed in general terms and the plan for next year was discussed, "
        "with the usual caveats about staffing and the budget process. "
    ) * 6
    messages: list[Any] = [{"role": "user", "content": "Remember my notes."}]
    for k in range(8):
        messages += [
            {"role": "user", "content": f"Note {k}: the locker code is {7000 + k * 13}. {filler}"},
            {"role": "assistant", "content": "Noted."},
        ]
    messages.append({"role": "user", "content": "What was the locker code of note 1?"})
    async with _client(proxy.url) as client:
        await client.chat.completions.create(model="gpt-4o", messages=messages)
        summary = fake.requests[0].json()["messages"][1]["content"]
        (ref,) = [line.split("; id=")[1][:10] for line in summary.splitlines() if "; id=" in line]
        fake.script(ToolCall(TOOL, {"id": ref, "query": "Note 1:"}), Reply("7013"))
        resp = await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert resp.choices[0].message.content == "7013"
    assert tool_names(fake.requests[0].json()) == [TOOL]
    answer = fake.requests[2].json()["messages"][-1]["content"]
    assert "Note 1: the locker code is 7013." in answer
    line = (await proxy.log_lines(2))[1]
    assert line["retrievals"][0]["content_type"] == "history" and line["retrievals"][0]["tool"] is None


# ------------------------------------------------------------------------------ fail open


async def test_store_failure_fails_open(
    fake: FakeUpstream, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Originals cannot be stored: no tool, markers say not retrievable, the log says why."""
    proxy = await make_proxy()
    store = proxy.server.app[STATE].retrieval.store

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")

    monkeypatch.setattr(store, "touch_blobs", broken)
    async with _client(proxy.url) as client:
        resp = await client.chat.completions.create(model="gpt-4o", messages=conversation())
    assert resp.choices[0].message.content
    body = fake.requests[0].json()
    assert "tools" not in body and "; not retrievable]" in body["messages"][3]["content"]
    (line,) = await proxy.log_lines(1)
    assert line["outcome"] == "ok" and line["fail_open"][0]["stage"] == "retrieval"
    assert "store down" in line["fail_open"][0]["reason"]


async def test_read_failure_answers_unavailable(
    fake: FakeUpstream, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original cannot be read: the tool result says so and the request succeeds."""
    proxy = await make_proxy()
    store = proxy.server.app[STATE].retrieval.store
    real = store.get_blobs

    async def flaky(keys: Any, *, ttl_s: float) -> Any:
        if any(k.startswith("o:") for k in keys):
            raise ConnectionError("read failed")
        return await real(keys, ttl_s=ttl_s)

    monkeypatch.setattr(store, "get_blobs", flaky)
    fake.script(ToolCall(TOOL, {"id": REF}), Reply("Done."))
    async with _client(proxy.url) as client:
        resp = await client.chat.completions.create(model="gpt-4o", messages=conversation())
    assert resp.choices[0].message.content == "Done."
    assert "cannot be fetched right now" in fake.requests[1].json()["messages"][-1]["content"]
    (line,) = await proxy.log_lines(1)
    assert line["outcome"] == "ok" and line["fail_open"][0]["stage"] == "retrieval"


async def test_loop_failure_returns_what_came(
    fake: FakeUpstream, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the tool loop never fails the request: a whole answer comes as the upstream gave
    it, a stream ends whole, and the log says why."""
    proxy = await make_proxy()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("follow-up broke")

    monkeypatch.setattr(OpenAIChatAdapter, "follow_up", boom)
    fake.script(ToolCall(TOOL, {"id": REF}), ToolCall(TOOL, {"id": REF}))
    async with _client(proxy.url) as client:
        resp = await client.chat.completions.create(model="gpt-4o", messages=conversation(), user="u1")
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=conversation(), stream=True, user="u2"
        )
        chunks = [c async for c in stream]
    assert resp.choices[0].message.tool_calls is not None  # what the upstream said, unchanged
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(fake.requests) == 2
    lines = await proxy.log_lines(2)
    assert all(
        line["outcome"] == "ok" and "follow-up broke" in line["fail_open"][0]["reason"] for line in lines
    )


async def test_stream_parser_failure_passes_stream_through(
    fake: FakeUpstream, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure inside the stream parser passes the upstream's stream through unchanged."""
    proxy = await make_proxy()

    def boom(self: Any, chunk: Any) -> None:
        raise ValueError("parser bug")

    monkeypatch.setattr(ChatStream, "feed", boom)
    fake.script(Reply("All fine."))
    async with _client(proxy.url) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=conversation(), stream=True)
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "All fine."
    (line,) = await proxy.log_lines(1)
    assert line["outcome"] == "ok" and "parser bug" in line["fail_open"][0]["reason"]


async def test_offer_to_agents_keeps_tool_list_stable(fake: FakeUpstream, make_proxy: Any) -> None:
    """With offer_to_agents, an agent's tool list holds nocp_retrieve before any cut; chats get none."""
    proxy = await make_proxy(retrieval={"offer_to_agents": True})
    async with _client(proxy.url) as client:
        await client.chat.completions.create(
            model="gpt-4o", messages=conversation("3 lines"), tools=[WEATHER]
        )
        await client.chat.completions.create(model="gpt-4o", messages=conversation(), tools=[WEATHER])
        await client.chat.completions.create(model="gpt-4o", messages=conversation("3 lines"))
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    first, second, agent_no_tools, chat = (r.json() for r in fake.requests)
    names = [t["function"]["name"] for t in first["tools"]]
    assert names == ["get_weather", "nocp_retrieve"]
    assert second["tools"] == first["tools"]
    assert [t["function"]["name"] for t in agent_no_tools["tools"]] == ["nocp_retrieve"]
    assert "tools" not in chat
