"""Structured answers in TOON and verbosity, through the running proxy with the real openai SDK
(``chat.completions.parse`` / ``responses.parse`` with a pydantic model, and their streams)
and the fake provider scripted to answer in TOON, in broken TOON and in JSON anyway."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from pydantic import BaseModel

from compressors import tokens
from proxy.output import toon_answer
from proxy.testing import FakeUpstream, Structured
from tests.helpers import ProxyFactory, RunningProxy, sent

MODEL = "gpt-4.1"
OUTPUT = {"output": {"toon_models": ["gpt-4.1*"]}}


class Row(BaseModel):
    sku: str
    name: str
    units: int
    price: float
    tags: list[str]


class Report(BaseModel):
    quarter: str
    rows: list[Row]


REPORT = Report(
    quarter="2025-Q3",
    rows=[
        Row(
            sku=f"SKU-{i:03d}",
            name=f"Trail tent, {i} person",
            units=3 * i,
            price=40.0 + i,
            tags=["out", f"t{i}"],
        )
        for i in range(1, 9)
    ],
)
VALUE = REPORT.model_dump(mode="json")
MESSAGES: list[Any] = [{"role": "user", "content": "Top products of Q3, as a report."}]


def _client(proxy: RunningProxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test-output-0123", max_retries=0)


def _last_text(body: dict[str, Any], key: str) -> str:
    last = body[key][-1]
    return str(last["content"])


@pytest.mark.parametrize("form", ["toon", "json"])
async def test_chat_parse_gets_the_model_from_toon_or_json(
    fake: FakeUpstream, make_proxy: ProxyFactory, form: str
) -> None:
    """chat.completions.parse gets the right object whether the model answers TOON or JSON
    anyway; the upstream was asked for TOON (no response_format) and the log has the tokens."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE, form))  # type: ignore[arg-type]
    async with _client(proxy) as client:
        completion = await client.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Report
        )
    assert completion.choices[0].message.parsed == REPORT
    body = sent(fake, 0)
    assert "response_format" not in body
    assert "Token-Oriented Object Notation" in _last_text(body, "messages")
    assert len(fake.requests) == 1
    (line,) = await proxy.log_lines(1)
    answer = toon_answer(VALUE) if form == "toon" else json.dumps(VALUE, ensure_ascii=False)
    delivered = json.dumps(VALUE, ensure_ascii=False, separators=(",", ":"))
    assert line["serialization_format"] == form
    assert line["raw_output_tokens"] == tokens.count(delivered, MODEL)
    assert line["optimized_output_tokens"] == tokens.count(answer, MODEL)
    if form == "toon":
        assert line["optimized_output_tokens"] < line["raw_output_tokens"]


async def test_chat_broken_toon_is_retried_with_the_original_request(
    fake: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    """Broken TOON is never delivered: nocp retries once with the client's response_format and
    returns that answer; the failed attempt's tokens are the record's overhead."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE, "broken"), Structured(VALUE))
    async with _client(proxy) as client:
        completion = await client.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Report
        )
    assert completion.choices[0].message.parsed == REPORT
    assert len(fake.requests) == 2
    retry = sent(fake, 1)
    assert retry["response_format"]["type"] == "json_schema"
    assert retry["response_format"]["json_schema"]["name"] == "Report"
    assert retry["messages"] == MESSAGES
    (line,) = await proxy.log_lines(1)
    failed = fake.usage_log[0]
    assert line["serialization_format"] == "json-retry"
    assert line["compression_overhead_tokens"] == failed.prompt_tokens + failed.completion_tokens
    assert line["completion_tokens"] == failed.completion_tokens + fake.usage_log[1].completion_tokens
    assert [f["stage"] for f in line["fail_open"]] == ["output"]


async def test_chat_stream_delivers_the_decoded_json_in_chunks(
    fake: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    """A streamed parse gets valid chunks carrying the decoded JSON (and usage when asked); the
    upstream was asked for a whole answer."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE, "toon"))
    async with (
        _client(proxy) as client,
        client.chat.completions.stream(
            model=MODEL, messages=MESSAGES, response_format=Report, stream_options={"include_usage": True}
        ) as stream,
    ):
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == REPORT
    assert final.usage is not None and final.usage.completion_tokens == fake.usage_log[0].completion_tokens
    body = sent(fake, 0)
    assert "stream" not in body and "stream_options" not in body
    (line,) = await proxy.log_lines(1)
    assert line["stream"] is True and line["serialization_format"] == "toon"


async def test_chat_stream_broken_toon_retries(fake: FakeUpstream, make_proxy: ProxyFactory) -> None:
    """A streamed request whose TOON answer breaks gets the retry's JSON answer as its stream."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE, "broken"), Structured(VALUE))
    async with (
        _client(proxy) as client,
        client.chat.completions.stream(model=MODEL, messages=MESSAGES, response_format=Report) as stream,
    ):
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == REPORT
    assert len(fake.requests) == 2


@pytest.mark.parametrize("form", ["toon", "json", "broken"])
async def test_responses_parse_gets_the_model(
    fake: FakeUpstream, make_proxy: ProxyFactory, form: str
) -> None:
    """responses.parse gets the right object from TOON, JSON anyway, or (after a retry with the
    client's text.format) broken TOON; the response echoes the client's text config."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE, form), Structured(VALUE))  # type: ignore[arg-type]
    async with _client(proxy) as client:
        response = await client.responses.parse(model=MODEL, input=MESSAGES, text_format=Report)
    assert response.output_parsed == REPORT
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    first = sent(fake, 0)
    assert "format" not in (first.get("text") or {})
    assert "Token-Oriented Object Notation" in _last_text(first, "input")
    assert len(fake.requests) == (2 if form == "broken" else 1)
    if form == "broken":
        assert sent(fake, 1)["text"]["format"]["type"] == "json_schema"
    (line,) = await proxy.log_lines(1)
    assert line["serialization_format"] == {"broken": "json-retry"}.get(form, form)


async def test_responses_stream_delivers_the_decoded_json(
    fake: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    """responses.stream gets output_text events with the decoded JSON and response.completed."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE, "toon"))
    deltas: list[str] = []
    async with (
        _client(proxy) as client,
        client.responses.stream(model=MODEL, input=MESSAGES, text_format=Report) as stream,
    ):
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert final.output_parsed == REPORT
    assert json.loads("".join(deltas)) == VALUE
    assert "stream" not in sent(fake, 0)


async def test_same_request_twice_sends_the_same_bytes(fake: FakeUpstream, make_proxy: ProxyFactory) -> None:
    """The same request sent twice reaches the upstream as the same bytes (the prompt cache
    keeps hitting)."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE), Structured(VALUE))
    async with _client(proxy) as client:
        for _ in range(2):
            completion = await client.chat.completions.parse(
                model=MODEL, messages=MESSAGES, response_format=Report
            )
            assert completion.choices[0].message.parsed == REPORT
    assert fake.requests[0].body == fake.requests[1].body


@pytest.mark.parametrize(
    ("settings", "schema_model"),
    [({"output": {"toon_models": ["gpt-5*"]}}, Report), (OUTPUT, Row), ({}, Report)],
    ids=["model-not-enabled", "schema-not-tabular", "output-off"],
)
async def test_untouched_requests_keep_their_bytes(
    fake: FakeUpstream, make_proxy: ProxyFactory, settings: dict[str, Any], schema_model: type[BaseModel]
) -> None:
    """A model not enabled, a schema without a table, or the output side off: the upstream
    gets the client's bytes and the log has no output format."""
    proxy = await make_proxy(**settings)
    schema = openai.lib._pydantic.to_strict_json_schema(schema_model)
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": schema, "strict": True},
        },
    }
    data = json.dumps(body).encode()
    value = VALUE if schema_model is Report else VALUE["rows"][0]
    fake.script(Structured(value))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        answer = await r.json()
    assert json.loads(answer["choices"][0]["message"]["content"]) == value
    assert fake.requests[0].body == data
    (line,) = await proxy.log_lines(1)
    assert line["serialization_format"] is None and line["raw_output_tokens"] is None


async def test_verbosity_parameter_and_instruction(fake: FakeUpstream, make_proxy: ProxyFactory) -> None:
    """output.verbosity sets the parameter for models that have it (not over the client's),
    and for others appends the short instruction as the last message."""
    proxy = await make_proxy(
        output={"verbosity": {"gpt-5*": "low", "gpt-4.1*": "high"}, "verbosity_instruction": True}
    )
    async with _client(proxy) as client:
        await client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES)
        await client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, verbosity="high")
        await client.responses.create(model="gpt-5-mini", input="hi")
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert sent(fake, 0)["verbosity"] == "low"
    assert sent(fake, 1)["verbosity"] == "high"
    assert sent(fake, 2)["text"]["verbosity"] == "low"
    last = sent(fake, 3)
    assert "verbosity" not in last
    assert last["messages"][:-1] == MESSAGES
    assert last["messages"][-1]["role"] == "system" and "thorough" in last["messages"][-1]["content"]


async def test_websocket_mode_is_left_alone(fake: FakeUpstream, make_proxy: ProxyFactory) -> None:
    """A Responses WebSocket response.create keeps its text.format (answers are events there,
    never decoded) and the client gets the provider's JSON."""
    proxy = await make_proxy(**OUTPUT)
    fake.script(Structured(VALUE))
    schema = openai.lib._pydantic.to_strict_json_schema(Report)
    fmt = {"type": "json_schema", "name": "Report", "schema": schema, "strict": True}
    request = {"type": "response.create", "model": MODEL, "input": MESSAGES, "text": {"format": fmt}}
    got: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(proxy.url.replace("http://", "ws://") + "/v1/responses") as ws,
    ):
        await ws.send_str(json.dumps(request))
        while not got or got[-1]["type"] not in ("response.completed", "error"):
            got.append(json.loads((await ws.receive(timeout=10)).data))
    text = "".join(f["delta"] for f in got if f["type"] == "response.output_text.delta")
    assert json.loads(text) == VALUE
    (frame,) = [r for r in fake.requests if r.method == "WS"]
    assert json.loads(frame.body)["text"]["format"]["type"] == "json_schema"
