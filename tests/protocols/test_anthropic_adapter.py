"""The Anthropic Messages adapter through the exchange, without a socket: what reaches the
upstream (byte for byte where nocp has nothing to change), breakpoints, errors, streams."""

from __future__ import annotations

import json
from typing import Any

from multidict import CIMultiDict

from proxy import load_settings
from proxy.config import AnthropicConfig, OpenAIConfig
from proxy.exchange import ClientRequest, Exchange, Services
from proxy.pipeline import Pipeline
from proxy.promptcache import PromptCache
from proxy.protocols import AnthropicAdapter, encode_json
from proxy.server import default_stages
from proxy.testing import MemoryWriter, MockResponse, MockSend, RecordingClient

ADAPTER = AnthropicAdapter()
LOG = "\n".join(
    f"2024-05-01T10:{i % 60:02d}:00Z INFO worker-{i % 7} processed batch {i}" for i in range(3000)
)
LOG += "\n2024-05-01T11:00:00Z ERROR worker-3 failed: bad checksum 0xdeadbeef"
ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Found it."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 3,
    },
}


def claude_code_request() -> dict[str, Any]:
    """A Claude Code-shaped request: many tools, system blocks with cache_control, thinking
    blocks with signatures, a list-form tool_result holding a long log, an image, and a block
    type nocp does not know."""
    tools = [
        {
            "name": f"tool_{i}",
            "description": f"Tool number {i}.",
            "input_schema": {"type": "object", "properties": {}},
        }
        for i in range(12)
    ]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": False,
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "metadata": {"user_id": "user_abc_account_123_session_9f2"},
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Work in /repo.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "tools": tools,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Why does the job fail?"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "I should read the log.",
                        "signature": "EqQBCkYIBxgCKkA==",
                    },
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va=="},
                    {"type": "text", "text": "Reading the log."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "tool_3",
                        "input": {"path": "/var/log/job.log"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "is_error": False,
                        "content": [
                            {"type": "text", "text": LOG},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "iVBORw0KGgo=",
                                },
                            },
                        ],
                    },
                    {"type": "future_block", "payload": {"x": 1}},
                    {"type": "text", "text": "Go on.", "cache_control": {"type": "ephemeral"}},
                ],
            },
        ],
    }


async def run(
    body: Any, answer: MockResponse | None = None, *, stages: bool = True, auto: bool = True
) -> tuple[MockSend, RecordingClient, MemoryWriter]:
    """One Messages request through an exchange with the default stages."""
    settings = load_settings(env={}, overrides={"retrieval": {"enabled": False}})
    writer = MemoryWriter()
    services = Services(
        settings=settings,
        pipeline=Pipeline(default_stages(settings) if stages else []),
        writer=writer,
        features=[PromptCache(AnthropicConfig(auto_cache=auto), OpenAIConfig())],
    )
    send = MockSend(lambda req: answer or MockResponse(body=ANSWER))
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = CIMultiDict({"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"})
    request = ClientRequest(
        path="/v1/messages", raw_path="/v1/messages", headers=headers, query={}, match_info={}, body=raw
    )
    client = RecordingClient()
    await Exchange(services, ADAPTER, request, send, client).run()
    return send, client, writer


async def test_claude_code_request_changes_only_the_compressed_block() -> None:
    """Everything but the long tool_result text reaches the upstream as the client sent it:
    thinking signatures, redacted thinking, images, unknown blocks, every cache_control."""
    body = claude_code_request()
    send, client, writer = await run(body)
    assert client.status == 200
    (sent,) = send.bodies()
    block = sent["messages"][2]["content"][0]["content"][0]
    assert len(block["text"]) < len(LOG) / 5 and "0xdeadbeef" in block["text"]
    body["messages"][2]["content"][0]["content"][0]["text"] = block["text"]
    assert sent == body  # the rest, field for field and in order
    assert json.dumps(sent) == json.dumps(body)
    (record,) = writer.records
    assert record.protocol == "anthropic" and record.cache_breakpoints_added == 0
    assert record.session_id == "user_abc_account_123_session_9f2"


async def test_bad_input_is_a_400_in_anthropics_shape_and_never_sent() -> None:
    """Malformed messages get Anthropic's error shape; nothing reaches the upstream."""
    for bad in (
        {"model": "claude-sonnet-4-5", "messages": "hi"},
        {"model": "claude-sonnet-4-5", "messages": [{"role": "system", "content": "x"}]},
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
        b"{not json",
    ):
        send, client, _ = await run(bad)
        assert client.status == 400 and send.requests == []
        error = client.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"


async def test_auto_cache_adds_breakpoints_only_where_the_client_set_none() -> None:
    """No breakpoint of the client's: nocp marks the end of the tools, of the system prompt and
    the last message; with one of the client's, nothing is added."""
    long_system = "You are a careful assistant. " * 400
    tools = [{"name": "read", "description": "Read a file. " * 400, "input_schema": {"type": "object"}}]
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": long_system,
        "tools": tools,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    send, _, writer = await run(body, stages=False)
    (sent,) = send.bodies()
    assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["system"] == [{"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}}]
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}
    ]
    assert writer.records[0].cache_breakpoints_added == 3
    short = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    send, _, writer = await run(short, stages=False)
    assert send.bodies()[0] == short and writer.records[0].cache_breakpoints_added == 0  # below the minimum
    own = {**body, "system": [{"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}}]}
    send, _, writer = await run(own, stages=False)
    assert send.bodies()[0] == own and writer.records[0].cache_breakpoints_added == 0
    send, _, _ = await run(body, stages=False, auto=False)
    assert send.bodies()[0] == body


def _sse(*events: dict[str, Any]) -> list[bytes]:
    return [b"event: " + e["type"].encode() + b"\ndata: " + encode_json(e) + b"\n\n" for e in events]


def _stream(tool_name: str, *, text: str = "", msg_id: str = "msg_1") -> list[bytes]:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "content": [],
                "usage": {"input_tokens": 20, "output_tokens": 1},
            },
        },
        {"type": "ping"},
    ]
    index = 0
    if text:
        events += [
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            {"type": "content_block_stop", "index": 0},
        ]
        index = 1
    if tool_name:
        events += [
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": "toolu_9", "name": tool_name, "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": '{"id": "0123'},
            },
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": '456789"}'},
            },
            {"type": "content_block_stop", "index": index},
        ]
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if tool_name else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    return _sse(*events)


def test_stream_takes_out_nocps_call_and_continues_as_one_message() -> None:
    """A hop with text then nocp's call renders without the call (stop reason end_turn); the
    next hop continues it: no second message_start, block indexes go on, usage summed."""
    first = ADAPTER.hop_stream("nocp_retrieve")
    events = [e for raw in _stream("nocp_retrieve", text="Let me look.") for e in first.feed(raw)]
    out = b"".join(r for e in events if (r := first.render(e, None)))
    assert b"nocp_retrieve" not in out and b'"stop_reason":"end_turn"' in out
    assert [c.args() for c in first.ours()] == [{"id": "0123456789"}] and first.text() == "Let me look."
    assert first.turn().message["content"][1]["input"] == {"id": "0123456789"}
    second = ADAPTER.hop_stream("nocp_retrieve", after=first)
    events = [e for raw in _stream("", text="Found it.", msg_id="msg_2") for e in second.feed(raw)]
    out = b"".join(r for e in events if (r := second.render(e, {"input_tokens": 20, "output_tokens": 9})))
    parsed = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert parsed[0]["type"] == "ping"  # no second message_start
    assert {p["index"] for p in parsed if "index" in p} == {1}
    (delta,) = [p for p in parsed if p["type"] == "message_delta"]
    assert delta["usage"]["input_tokens"] == 40 and delta["usage"]["output_tokens"] == 18


def test_turns_nocp_creates_are_merged_with_tool_results_first() -> None:
    """Two user messages in a row, one of them nocp's, become one with its tool results first."""
    body: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "Start"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "text", "text": "a note"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "ok"}]},
        ]
    }
    client = {id(m) for m in body["messages"][:2]} | {id(body["messages"][3])}
    assert ADAPTER.enforce_turns(body, client)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text"]
    mine = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    assert not ADAPTER.enforce_turns(mine, {id(m) for m in mine["messages"]})  # the client's own
