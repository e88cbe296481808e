"""OpenAI Responses through the running proxy with the real openai SDK and openai-agents, and
the fake provider: compression of tool outputs, the retrieval tool loop (plain, streamed,
chained by previous_response_id), WebSocket mode, pass-through paths, usage and errors."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from compressors.markers import content_id
from proxy.testing import FakeUpstream, Reply, ToolCall
from tests.helpers import SECRET, sent

TOOL = "nocp_retrieve"
MODEL = "gpt-4.1"
LOG = "\n".join(
    f"2024-05-{1 + i % 28:02d}T10:{i % 60:02d}:00Z INFO worker-{i % 7} job {i} took {i * 3 % 97} ms ok"
    for i in range(3000)
)
LOG += "\n2024-05-29T11:00:00Z ERROR worker-5 failed: ValueError: bad checksum 0xdeadbeef in /data/b_417.bin"
REF = content_id(LOG, SECRET)
ORDERS = json.dumps(
    {
        "orders": [
            {
                "order_id": f"ORD-{1000 + i}",
                "customer": {
                    "id": f"CUST-{i % 40}",
                    "name": f"Customer {i % 40}",
                    "tier": ["gold", "silver"][i % 2],
                },
                "status": ["shipped", "pending", "delivered"][i % 3],
                "total": round(10 + i * 3.17, 2),
                "currency": "EUR",
                "items": [{"sku": f"SKU-{i * 7 % 300}", "qty": 1 + i % 3}],
            }
            for i in range(120)
        ]
    },
    indent=2,
)
READ_LOG = {
    "type": "function",
    "name": "read_log",
    "description": "Read the job log.",
    "parameters": {"type": "object", "properties": {}},
}


def _client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test-responses-0123", max_retries=0)


def items() -> list[Any]:
    """An agent's request: the task, a read_log call and its long output."""
    return [
        {"role": "user", "content": "Why did the batch job fail?"},
        {"type": "function_call", "call_id": "call_log", "name": "read_log", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_log", "output": LOG},
    ]


async def create(client: openai.AsyncOpenAI, stream: bool, **kw: Any) -> Any:
    """One response, plain or streamed (the SDK's final response) and the streamed events."""
    kw.setdefault("model", MODEL)
    if not stream:
        return await client.responses.create(**kw), []
    events = []
    async with client.responses.stream(**kw) as s:
        async for event in s:
            events.append(event)
        final = await s.get_final_response()
    return final, events


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_outputs_are_compressed_and_logged(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """A function_call_output is cut before the upstream; one log line per request with the
    Responses usage; a reasoning item passes untouched, in its place."""
    proxy = await make_proxy()
    fake.script(Reply("A bad checksum."))
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAopaque=="}
    first, call, output = items()
    body_items = [first, reasoning, call, output]
    async with _client(proxy.url) as client:
        resp, _ = await create(client, stream, input=body_items, tools=[READ_LOG], store=False)
    assert resp.output_text == "A bad checksum."
    upstream = sent(fake, 0)
    out = upstream["input"][3]["output"]
    assert len(out) < len(LOG) / 5 and "0xdeadbeef" in out and f"id={REF}" in out
    assert upstream["input"][1] == body_items[1]  # reasoning, byte for byte
    assert upstream["input"][:3] == body_items[:3] and upstream["store"] is False
    (line,) = await proxy.log_lines(1)
    assert (line["protocol"], line["model"], line["stream"], line["outcome"]) == (
        "openai-responses",
        MODEL,
        stream,
        "ok",
    )
    assert line["prompt_tokens"] == fake.usage_log[0].prompt_tokens > 0
    assert line["raw_input_tokens"] > line["optimized_input_tokens"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("store", [True, False])
async def test_retrieval_round_and_next_turn(
    fake: FakeUpstream, make_proxy: Any, stream: bool, store: bool
) -> None:
    """nocp answers nocp_retrieve with a function_call_output and a follow-up (chained by
    previous_response_id when responses are stored); the client's output never holds our call;
    the next turn (items resent) puts the round back and is answered again."""
    proxy = await make_proxy()
    fake.script(
        ToolCall(TOOL, {"id": REF, "query": "ERROR"}),
        Reply("Worker 5 hit a bad checksum."),
        ToolCall(TOOL, {"id": REF, "query": "lines 1-2"}),
        Reply("Fine at first."),
    )
    conversation = items()
    async with _client(proxy.url) as client:
        resp, events = await create(client, stream, input=conversation, tools=[READ_LOG], store=store)
        assert resp.output_text == "Worker 5 hit a bad checksum."
        assert TOOL not in resp.model_dump_json(warnings=False) and all(
            TOOL not in e.model_dump_json(warnings=False) for e in events
        )
        if stream:
            seqs = [e.sequence_number for e in events]
            assert seqs == list(range(len(seqs)))
            assert [e.type for e in events].count("response.created") == 1
        conversation += [o.model_dump(exclude_none=True) for o in resp.output]
        conversation += [{"role": "user", "content": "And at the start?"}]
        again, _ = await create(client, stream, input=conversation, tools=[READ_LOG], store=store)
    assert again.output_text == "Fine at first."
    follow = sent(fake, 1)
    if store:
        assert follow["previous_response_id"] and [i["type"] for i in follow["input"]] == [
            "function_call_output"
        ]
    else:
        assert "previous_response_id" not in follow and follow["input"][-1]["type"] == "function_call_output"
    assert "0xdeadbeef" in follow["input"][-1]["output"]
    turn2 = sent(fake, 2)["input"]
    assert turn2[2] == sent(fake, 0)["input"][2]  # the cut keeps its bytes
    assert any(i.get("type") == "function_call" and i.get("name") == TOOL for i in turn2)  # round put back
    lines = await proxy.log_lines(2)
    assert [line["retrieval_rounds"] for line in lines] == [1, 1]


@pytest.mark.parametrize("stream", [False, True])
async def test_agents_sdk_default_agent_sends_at_most_half(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """The openai-agents default agent (Responses model) with a 5,000-token JSON tool result
    sends at most half the raw tokens through nocp, with a log line and metrics."""
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    from compressors import tokens

    set_tracing_disabled(True)
    proxy = await make_proxy()
    assert tokens.count(ORDERS, MODEL) > 5000

    @function_tool
    def list_orders() -> str:
        """List the open orders."""
        return ORDERS

    fake.script(ToolCall("list_orders", {}), Reply("120 orders, most shipped."))
    client = _client(proxy.url)
    agent = Agent(
        name="orders",
        instructions="You answer questions about orders.",
        tools=[list_orders],
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
    )
    if stream:
        result = Runner.run_streamed(agent, "How many orders are there?")
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(agent, "How many orders are there?")
    await client.close()
    assert result.final_output == "120 orders, most shipped."
    lines = await proxy.log_lines(2)
    second = lines[1]
    assert second["protocol"] == "openai-responses"
    assert second["optimized_input_tokens"] <= second["raw_input_tokens"] / 2
    assert fake.usage_log[1].prompt_tokens <= second["raw_input_tokens"] / 2 + 200
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/metrics") as r:
        metrics = await r.text()
    assert 'model="gpt-4.1"' in metrics


async def test_websocket_mode_through_nocp(fake: FakeUpstream, make_proxy: Any) -> None:
    """GET /v1/responses upgraded to a WebSocket: each response.create is compressed and
    answered (a retrieval round included) with the client seeing only its events; one log line
    per response; the connection serves the next turn too."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF, "query": "ERROR"}), Reply("Checksum."), Reply("Done."))
    ws_url = proxy.url.replace("http://", "ws://") + "/v1/responses"
    frames: list[list[dict[str, Any]]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, headers={"Authorization": "Bearer sk-test-ws"}) as ws,
    ):
        for request in (
            {"type": "response.create", "model": MODEL, "input": items(), "tools": [READ_LOG]},
            {"type": "response.create", "model": MODEL, "input": [{"role": "user", "content": "Thanks"}]},
        ):
            await ws.send_str(json.dumps(request))
            got: list[dict[str, Any]] = []
            while not got or got[-1]["type"] not in ("response.completed", "error"):
                got.append(json.loads((await ws.receive(timeout=10)).data))
            frames.append(got)
    first, second = frames
    assert first[-1]["type"] == "response.completed" and TOOL not in json.dumps(first)
    assert "".join(f["delta"] for f in first if f["type"] == "response.output_text.delta") == "Checksum."
    assert [f["sequence_number"] for f in first] == list(range(len(first)))
    assert second[-1]["response"]["output"][0]["content"][0]["text"] == "Done."
    ws_frames = [r for r in fake.requests if r.method == "WS"]
    upstream_first = json.loads(ws_frames[0].body)
    assert len(upstream_first["input"][2]["output"]) < len(LOG) / 5
    lines = await proxy.log_lines(2)
    assert [line["protocol"] for line in lines] == ["openai-responses"] * 2
    assert lines[0]["retrieval_rounds"] == 1 and lines[0]["stream"] is True


async def test_other_responses_paths_pass_through(fake: FakeUpstream, make_proxy: Any) -> None:
    """retrieve, input_items and delete go to the upstream unchanged, with no log line."""
    proxy = await make_proxy()
    fake.script(Reply("Stored."))
    async with _client(proxy.url) as client:
        resp = await client.responses.create(model=MODEL, input="Hi")
        again = await client.responses.retrieve(resp.id)
        listed = await client.responses.input_items.list(resp.id)
        await client.responses.delete(resp.id)
    assert again.id == resp.id and listed.data
    lines = await proxy.log_lines(1)
    assert len(lines) == 1


async def test_bad_items_get_a_400_and_are_not_forwarded(fake: FakeUpstream, make_proxy: Any) -> None:
    """Malformed items or wrong types get 400 in OpenAI's error shape; nothing is forwarded."""
    proxy = await make_proxy()
    async with _client(proxy.url) as client:
        for bad in ([{"type": "function_call_output", "output": 5}], [7], {"role": "user"}):
            with pytest.raises(openai.BadRequestError) as info:
                await client.responses.create(model=MODEL, input=bad)  # type: ignore[arg-type]
            assert info.value.status_code == 400
    assert fake.requests == []


async def test_parse_and_fields_nocp_does_not_touch(fake: FakeUpstream, make_proxy: Any) -> None:
    """responses.parse gets its typed answer; text.format, include, truncation,
    prompt_cache_key, store and metadata reach the upstream exactly as sent."""
    from pydantic import BaseModel

    class Verdict(BaseModel):
        cause: str
        worker: int

    proxy = await make_proxy()
    fake.script(Reply('{"cause":"bad checksum","worker":5}'))
    async with _client(proxy.url) as client:
        parsed = await client.responses.parse(
            model=MODEL,
            input=items(),
            tools=[READ_LOG],
            text_format=Verdict,
            include=["reasoning.encrypted_content"],
            truncation="auto",
            prompt_cache_key="job-debugging",
            store=False,
            metadata={"ticket": "OPS-7"},
        )
    assert parsed.output_parsed == Verdict(cause="bad checksum", worker=5)
    upstream = sent(fake, 0)
    assert (
        upstream["text"]["format"]["type"] == "json_schema"
        and upstream["text"]["format"]["name"] == "Verdict"
    )
    assert upstream["include"] == ["reasoning.encrypted_content"] and upstream["truncation"] == "auto"
    assert upstream["prompt_cache_key"] == "job-debugging" and upstream["store"] is False
    assert upstream["metadata"] == {"ticket": "OPS-7"}
    from proxy.protocols import OpenAIResponsesAdapter

    assert OpenAIResponsesAdapter().session_id({}, upstream) == "job-debugging"  # Codex-style key
