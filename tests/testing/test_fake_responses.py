"""The fake upstream's OpenAI Responses API, exercised with the real openai SDK (HTTP, SSE and
WebSocket), aiohttp's WebSocket client and the openai-agents SDK on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from compressors import tokens
from proxy.testing import FIXED_CREATED, Drop, Fail, FakeUpstream, Replay, Reply, ToolCall
from tests.helpers import long_text

MODEL = "gpt-4o-mini"
FRAME = 3  # framing tokens per item (and per instructions), as the fake bills them
PRIMING = 3  # reply priming tokens
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def without_ids(items: list[Any]) -> list[dict[str, Any]]:
    """Output items as JSON, minus the ids (fresh for every response)."""
    return [{k: v for k, v in item.model_dump(exclude_none=True).items() if k != "id"} for item in items]


async def ws_turn(ws: aiohttp.ClientWebSocketResponse, **fields: Any) -> list[dict[str, Any]]:
    """Send one response.create frame; the events received up to completed / error."""
    await ws.send_str(json.dumps({"type": "response.create", **fields}))
    events: list[dict[str, Any]] = []
    while True:
        event = await ws.receive_json(timeout=10)
        events.append(event)
        if event["type"] in ("response.completed", "error"):
            return events


# ------------------------------------------------------------------------------ plain


async def test_plain_default_reply_and_usage(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """A plain response answers "Fake reply to: <input>" with usage billed over instructions and input."""
    r = await oai.responses.create(
        model=MODEL, input="What is the capital of France?", instructions="Be brief."
    )
    reply = "Fake reply to: What is the capital of France?"
    assert r.output_text == reply
    assert (r.object, r.status, r.model, r.created_at) == ("response", "completed", MODEL, FIXED_CREATED)
    assert r.id.startswith("resp_") and r.store is True and r.previous_response_id is None
    assert r.instructions == "Be brief." and r.tools == [] and r.tool_choice == "auto"
    [message] = r.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert (message.role, message.status) == ("assistant", "completed")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    expected = FRAME + tokens.count("Be brief.", MODEL)
    expected += FRAME + tokens.count("user", MODEL) + tokens.count("What is the capital of France?", MODEL)
    assert r.usage is not None
    assert r.usage.input_tokens == expected + PRIMING
    assert r.usage.output_tokens == tokens.count(reply, MODEL)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    record = fake.usage_log[-1]
    assert (record.protocol, record.stream, record.prompt_tokens) == (
        "responses",
        False,
        r.usage.input_tokens,
    )
    assert fake.last_request.path == "/v1/responses"


async def test_bad_input_is_a_400_in_openai_shape(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """An invalid role, a missing model or a non-JSON body is a 400 with OpenAI's error fields."""
    with pytest.raises(openai.BadRequestError) as err:
        await oai.responses.create(model=MODEL, input=[{"role": "robot", "content": "hi"}])
    assert err.value.param == "input[0].role"
    assert err.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="Missing required parameter: 'model'"):
        await oai.post("/responses", body={"input": "hi"}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="JSON object"):
        await oai.post("/responses", body=[1, 2], cast_to=object)
    assert fake.usage_log == []


async def test_fail_429_is_a_rate_limit_error(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Fail(429) answers OpenAI's rate-limit error, plain and streaming; the next request succeeds."""
    fake.script(Fail(429), Fail(429))
    with pytest.raises(openai.RateLimitError) as err:
        await oai.responses.create(model=MODEL, input="hi")
    assert err.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        await oai.responses.create(model=MODEL, input="hi", stream=True)
    r = await oai.responses.create(model=MODEL, input="hi")
    assert r.output_text == "Fake reply to: hi"


async def test_replay_of_responses_items_and_of_a_chat_message(oai: AsyncOpenAI, fake: FakeUpstream) -> None:
    """Replay sends recorded Responses output items verbatim, and converts a chat-form message."""
    recorded = [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi!", "annotations": []}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
    ]
    chat = {
        "role": "assistant",
        "content": "Ok.",
        "tool_calls": [
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
            }
        ],
    }
    fake.script(Replay(recorded), Replay(chat))
    one = await oai.responses.create(model=MODEL, input="hi", tools=[WEATHER])
    assert one.output_text == "Hi!"
    assert [(i.type, i.status) for i in one.output] == [
        ("message", "completed"),
        ("function_call", "completed"),
    ]
    call = one.output[1]
    assert call.type == "function_call" and (call.call_id, call.arguments) == ("call_1", '{"city":"Oslo"}')
    two = await oai.responses.create(model=MODEL, input="hi", tools=[WEATHER])
    assert two.output_text == "Ok."
    assert two.output[1].type == "function_call" and two.output[1].call_id == "call_2"


async def test_reasoning_item_with_encrypted_content(oai: AsyncOpenAI) -> None:
    """With reasoning asked for, a reasoning item (encrypted when included) comes first and its
    tokens are billed as reasoning tokens; sent back as input it is accepted; effort "none" has none."""
    r = await oai.responses.create(
        model="gpt-5", input="Think.", reasoning={"effort": "low"}, include=["reasoning.encrypted_content"]
    )
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and message.type == "message"
    assert reasoning.encrypted_content and reasoning.summary == []
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens > 0
    visible = tokens.count(r.output_text, "gpt-5")
    assert r.usage.output_tokens == visible + r.usage.output_tokens_details.reasoning_tokens
    back = [{"role": "user", "content": "Think."}, *[i.model_dump(exclude_none=True) for i in r.output]]
    again = await oai.responses.create(model="gpt-5", input=[*back, {"role": "user", "content": "More."}])
    assert again.output_text == "Fake reply to: More."
    plain = await oai.responses.create(model="gpt-5", input="Think.", reasoning={"effort": "none"})
    assert [i.type for i in plain.output] == ["message"]


# ---------------------------------------------------------------------------- streaming


async def test_stream_events_in_order(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """create(stream=True) sends OpenAI's event order with consecutive sequence numbers, and the
    completed response carries the plain answer's output."""
    plain = await oai.responses.create(model=MODEL, input="one two three")
    stream = await oai.responses.create(model=MODEL, input="one two three", stream=True)
    events = [e async for e in stream]
    words = 6  # "Fake reply to: one two three", one delta per word
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * words,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0], events[-1]
    assert created.type == "response.created" and created.response.status == "in_progress"
    assert created.response.output == [] and created.response.usage is None
    assert completed.type == "response.completed"
    item_id = completed.response.output[0].id
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all((e.item_id, e.output_index, e.content_index) == (item_id, 0, 0) for e in deltas)
    assert "".join(e.delta for e in deltas) == plain.output_text
    assert without_ids(completed.response.output) == without_ids(plain.output)
    assert completed.response.usage == plain.usage
    assert fake.usage_log[-1].stream is True


async def test_stream_helper_with_a_function_call(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """responses.stream() assembles a function call from its argument deltas."""
    fake.script(Reply("Checking.", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, id="call_w"),)))
    async with oai.responses.stream(model=MODEL, input="Weather in Paris?", tools=[WEATHER]) as stream:
        events = [e async for e in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds.index("response.function_call_arguments.delta") > kinds.index("response.output_item.done")
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == '{"city":"Paris"}'
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == args and done.output_index == 1 and done.item_id == final.output[1].id
    assert final.output_text == "Checking."
    call = final.output[1]
    assert call.type == "function_call" and (call.call_id, call.name, call.arguments) == (
        "call_w",
        "get_weather",
        args,
    )


async def test_sse_framing(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """Each SSE event is `event: <type>` then `data: <json>` and a blank line; no [DONE]."""
    async with http.post(
        fake.openai_base_url + "/responses", json={"model": MODEL, "input": "x", "stream": True}
    ) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    blocks = raw.split("\n\n")
    assert blocks[-1] == "" and "[DONE]" not in raw
    for block in blocks[:-1]:
        head, data = block.split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[len("data: ") :])["type"] == head[len("event: ") :]


async def test_drop_mid_stream_is_a_connection_error(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Drop(after_chunks) ends the SSE stream early: the SDK raises after the events sent."""
    fake.script(Drop(after_chunks=3))
    stream = await oai.responses.create(model=MODEL, input="one two three", stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for event in stream:
            received.append(event.type)
    assert received == ["response.created", "response.in_progress", "response.output_item.added"]


# --------------------------------------------------------------------- tools and state


async def test_function_call_round_trip(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """The SDK sends the call and its output back; the scripted second answer is billed for all items."""
    fake.script(ToolCall("get_weather", {"city": "Paris"}), Reply("It is sunny in Paris."))
    first = await oai.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city":"Paris"}', "completed")
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}
    items: list[Any] = [{"role": "user", "content": "Weather in Paris?"}, call, output]
    second = await oai.responses.create(model=MODEL, input=items, tools=[WEATHER])
    assert second.output_text == "It is sunny in Paris."
    sent = fake.last_request.json()["input"]
    assert [i.get("type", "message") for i in sent] == ["message", "function_call", "function_call_output"]
    assert first.usage is not None and second.usage is not None
    grown = FRAME + tokens.count("get_weather", MODEL) + tokens.count('{"city":"Paris"}', MODEL)
    grown += FRAME + tokens.count("sunny, 21C", MODEL)
    assert second.usage.input_tokens == first.usage.input_tokens + grown


async def test_tool_output_without_its_call_is_rejected(oai: AsyncOpenAI) -> None:
    """A function_call_output whose call is not in the conversation is a 400, as OpenAI answers."""
    with pytest.raises(
        openai.BadRequestError, match="No tool call found for function call output with call_id c9"
    ):
        await oai.responses.create(
            model=MODEL, input=[{"type": "function_call_output", "call_id": "c9", "output": "x"}]
        )


async def test_previous_response_id_bills_the_whole_chain(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """A chained turn sees the earlier input and output before its own: it is billed for the whole
    chain, exactly like resending everything, and a long shared prefix is billed as cached."""
    first = await oai.responses.create(model=MODEL, input=long_text(1500), instructions="Be brief.")
    second = await oai.responses.create(
        model=MODEL, input="And then?", previous_response_id=first.id, instructions="Be brief."
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "Fake reply to: And then?"
    assert first.usage is not None and second.usage is not None
    assert first.usage.input_tokens >= 1024 and first.usage.input_tokens_details.cached_tokens == 0
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached > 0 and cached % 128 == 0 and cached <= first.usage.input_tokens
    resent: list[Any] = [
        {"role": "user", "content": long_text(1500)},
        *first.output,
        {"role": "user", "content": "And then?"},
    ]
    explicit = await oai.responses.create(model=MODEL, input=resent, instructions="Be brief.", store=False)
    assert explicit.usage is not None
    assert second.usage.input_tokens == explicit.usage.input_tokens > first.usage.input_tokens
    assert fake.usage_log[1].prompt_tokens == second.usage.input_tokens


async def test_previous_response_id_must_exist_and_be_stored(oai: AsyncOpenAI) -> None:
    """An unknown previous_response_id, or one of a store=false response, is previous_response_not_found."""
    unstored = await oai.responses.create(model=MODEL, input="hi", store=False)
    for rid in ("resp_nope", unstored.id):
        with pytest.raises(openai.BadRequestError) as err:
            await oai.responses.create(model=MODEL, input="x", previous_response_id=rid)
        assert err.value.code == "previous_response_not_found"
        assert err.value.param == "previous_response_id"
        assert f"Previous response with id '{rid}' not found." in str(err.value)


async def test_item_reference_resolves_a_stored_item(oai: AsyncOpenAI) -> None:
    """An item_reference stands for a stored item: billed exactly as the item itself."""
    stored = await oai.responses.create(model=MODEL, input="w?")
    ref = [{"role": "user", "content": "w?"}, {"type": "item_reference", "id": stored.output[0].id}]
    by_ref = await oai.responses.create(model=MODEL, input=ref)
    full = [{"role": "user", "content": "w?"}, stored.output[0]]
    by_value = await oai.responses.create(model=MODEL, input=full)
    assert by_ref.usage is not None and by_value.usage is not None
    assert by_ref.usage.input_tokens == by_value.usage.input_tokens
    with pytest.raises(openai.BadRequestError, match="Item with id 'msg_x' not found"):
        await oai.responses.create(model=MODEL, input=[{"type": "item_reference", "id": "msg_x"}])


async def test_retrieve_input_items_and_delete(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """A stored response can be retrieved, its input items listed (newest first, paged), and deleted."""
    first = await oai.responses.create(model=MODEL, input="one")
    second = await oai.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "two"}]}],
        previous_response_id=first.id,
    )
    again = await oai.responses.retrieve(second.id)
    assert again.model_dump() == second.model_dump()
    assert second.id in fake.responses and fake.responses[second.id].response["id"] == second.id
    page = await oai.responses.input_items.list(second.id)
    assert [i.type for i in page.data] == ["message", "message", "message"]
    texts = [i.content[0].text for i in page.data if i.type == "message"]
    assert texts == ["two", "Fake reply to: one", "one"]
    assert page.data[2].role == "user" and page.data[1].role == "assistant"
    ascending = [i.id async for i in oai.responses.input_items.list(second.id, order="asc", limit=1)]
    assert ascending == [i.id for i in reversed(page.data)] and len(set(ascending)) == 3
    await oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError, match=f"Response with id '{first.id}' not found"):
        await oai.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.input_items.list(first.id)
    with pytest.raises(openai.BadRequestError, match="background=true"):
        await oai.responses.cancel(second.id)


async def test_store_forgets_the_oldest_beyond_its_bound(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """Past max_responses the oldest stored response is forgotten; a kept chain still continues."""
    fake.responses.max_responses = 2
    first = await oai.responses.create(model=MODEL, input="one")
    second = await oai.responses.create(model=MODEL, input="two", previous_response_id=first.id)
    third = await oai.responses.create(model=MODEL, input="three", previous_response_id=second.id)
    assert list(fake.responses) == [second.id, third.id]
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(first.id)
    items = [i.id async for i in oai.responses.input_items.list(third.id, order="asc")]
    assert len(items) == 5  # one, its answer, two, its answer, three: the chain outlives its head


async def test_input_tokens_count_matches_the_billing(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """POST /v1/responses/input_tokens gives the create request's input tokens, consuming nothing."""
    fake.script(Reply("scripted"))
    counted = await oai.responses.input_tokens.count(
        model=MODEL,
        input="How many?",
        instructions="Count.",
        tools=[WEATHER],
    )
    assert counted.object == "response.input_tokens"
    assert fake.pending == (Reply("scripted"),) and fake.usage_log == []
    r = await oai.responses.create(model=MODEL, input="How many?", instructions="Count.", tools=[WEATHER])
    assert r.usage is not None and counted.input_tokens == r.usage.input_tokens


# ---------------------------------------------------------------------------- WebSocket


async def test_websocket_two_turns_on_one_connection(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """Two response.create frames on one socket: each gets the SSE events as text frames; the second
    sends only its new input with previous_response_id (store=false works on the connection)."""
    async with http.ws_connect(fake.openai_base_url + "/responses") as ws:
        one = await ws_turn(ws, model=MODEL, input="first question", store=False)
        assert [e["sequence_number"] for e in one] == list(range(len(one)))
        assert one[0]["type"] == "response.created" and one[-1]["type"] == "response.completed"
        done = one[-1]["response"]
        assert done["output"][0]["content"][0]["text"] == "Fake reply to: first question"
        two = await ws_turn(
            ws,
            model=MODEL,
            input=[{"role": "user", "content": "second"}],
            previous_response_id=done["id"],
            store=False,
        )
        final = two[-1]["response"]
        assert two[-1]["type"] == "response.completed" and final["previous_response_id"] == done["id"]
        assert final["output"][0]["content"][0]["text"] == "Fake reply to: second"
        grown = (
            tokens.count("Fake reply to: first question", MODEL) + FRAME + tokens.count("assistant", MODEL)
        )
        grown += FRAME + tokens.count("user", MODEL) + tokens.count("second", MODEL)
        assert final["usage"]["input_tokens"] == done["usage"]["input_tokens"] + grown
        assert not ws.closed
    assert done["id"] not in fake.responses  # store=false: only the connection knew it
    assert [r.method for r in fake.requests] == ["GET", "WS", "WS"]
    assert fake.requests[2].json()["previous_response_id"] == done["id"]
    assert fake.disconnects == 0


async def test_websocket_errors_are_events_and_the_connection_stays(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A bad turn or a scripted failure is an `error` event; the next response.create still works."""
    fake.script(Fail(429))
    async with http.ws_connect(fake.openai_base_url + "/responses") as ws:
        [missing] = await ws_turn(ws, model=MODEL, input="x", previous_response_id="resp_gone")
        assert missing["type"] == "error" and missing["status"] == 400
        assert missing["error"]["code"] == "previous_response_not_found"
        [limited] = await ws_turn(ws, model=MODEL, input="x")
        assert limited["status"] == 429 and limited["error"]["code"] == "rate_limit_exceeded"
        await ws.send_str(json.dumps({"type": "response.cancel"}))
        unknown = await ws.receive_json(timeout=10)
        assert unknown["type"] == "error" and unknown["error"]["param"] == "type"
        ok = await ws_turn(ws, model=MODEL, input="x")
        assert ok[-1]["type"] == "response.completed"


async def test_websocket_drop_closes_mid_response(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """Drop(after_chunks) over the WebSocket sends that many events, then the connection is gone."""
    fake.script(Drop(after_chunks=2))
    async with http.ws_connect(fake.openai_base_url + "/responses") as ws:
        await ws.send_str(json.dumps({"type": "response.create", "model": MODEL, "input": "x"}))
        first, second = await ws.receive_json(timeout=10), await ws.receive_json(timeout=10)
        assert (first["type"], second["type"]) == ("response.created", "response.in_progress")
        end = await ws.receive(timeout=10)
        assert end.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_websocket_with_the_openai_sdk(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """The SDK's responses.connect() runs two chained turns over the fake's WebSocket."""
    async with oai.responses.connect() as conn:
        await conn.response.create(model=MODEL, input="hello")
        first = None
        async for event in conn:
            if event.type == "response.completed":
                first = event.response
                break
        assert first is not None
        await conn.response.create(model=MODEL, input="again", previous_response_id=first.id)
        async for event in conn:
            if event.type == "response.completed":
                assert event.response.output_text == "Fake reply to: again"
                break
    assert [r.stream for r in fake.usage_log] == [True, True]


# --------------------------------------------------------------------------- openai-agents


async def test_agents_sdk_default_agent_runs_a_tool(fake: FakeUpstream, oai: AsyncOpenAI) -> None:
    """The openai-agents default agent (Responses model) calls a tool and answers with its result."""
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from agents.models import get_default_model

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    fake.script(ToolCall("get_weather", {"city": "Paris"}), Reply("It is sunny in Paris."))
    agent = Agent(
        name="weather",
        instructions="Answer weather questions.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=get_default_model(), openai_client=oai),
    )
    result = await Runner.run(agent, "Weather in Paris?")
    assert result.final_output == "It is sunny in Paris."
    assert calls == ["Paris"]
    second = fake.last_request.json()
    assert second["model"] == get_default_model() and second["instructions"] == "Answer weather questions."
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert [o["output"] for o in outputs] == ["sunny in Paris"]
    assert [u.protocol for u in fake.usage_log] == ["responses", "responses"]
