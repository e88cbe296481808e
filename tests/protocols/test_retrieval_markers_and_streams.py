"""The pieces of reversible compression on their own: id-carrying markers, part selection, the
adapters' tool handling, usage sums, and the stream sniffers fed chunk by chunk."""

from __future__ import annotations

import json
from typing import Any

import pytest

from compressors import CompressionConfig, CompressionContext, compress
from compressors.markers import content_id, marker_id, marker_ids, omitted_marker, unavailable
from proxy.protocols import GeminiAdapter, HopStream, JSONArraySplitter, OpenAIChatAdapter, add_usage
from proxy.retrieval import select

LOG = "\n".join(f"2024-05-01T10:{i % 60:02d}:00Z INFO worker-{i % 7} processed batch {i}" for i in range(800))
LOG += "\n2024-05-01T11:00:00Z ERROR worker-3 failed: bad checksum in /data/b_417.bin"
TOOL = "nocp_retrieve"


# ------------------------------------------------------------------------------ markers


def test_markers_carry_a_content_id_only_when_asked() -> None:
    """With marker_ids every lossy marker carries the stable content id; without, output is as before."""
    ctx = CompressionContext(tool_name="read_log")
    plain = compress(LOG, ctx, CompressionConfig())
    with_ids = compress(LOG, ctx, CompressionConfig(marker_ids=True))
    again = compress(LOG, ctx, CompressionConfig(marker_ids=True))
    assert not plain.lossless and plain.ref is None and "; id=" not in plain.text
    assert with_ids.ref == content_id(LOG) and len(with_ids.ref) == 10
    assert with_ids.text == again.text and marker_ids(with_ids.text) == [with_ids.ref]
    assert with_ids.text.count("[nocp omitted: ") == with_ids.text.count(f"; id={with_ids.ref}]")
    small = compress("tiny", ctx, CompressionConfig(marker_ids=True))
    assert small.ref is None


def test_marker_scope_and_unavailable() -> None:
    """marker_id() scopes the id; unavailable() rewrites only the given ids' markers."""
    assert omitted_marker("x") == "[nocp omitted: x]"
    with marker_id("0123456789"):
        a = omitted_marker("3 rows")
    with marker_id("abcdefabcd"):
        b = omitted_marker("4 rows")
    assert omitted_marker("x") == "[nocp omitted: x]"
    text = f"{a}\n{b}"
    assert marker_ids(text) == ["0123456789", "abcdefabcd"]
    assert unavailable(text, {"0123456789"}) == "[nocp omitted: 3 rows; not retrievable]\n" + b
    assert unavailable("no markers", {"0123456789"}) == "no markers"


# ------------------------------------------------------------------------------ selection


def test_select_whole_lines_and_search() -> None:
    """No query: everything; 'lines A-B': those lines; words: the matching lines with context; capped."""
    text = "\n".join(f"line {i} value {i * i}" for i in range(1, 101))
    assert select(text, None, 10_000) == text
    part = select(text, "lines 10-12", 10_000)
    assert part == "lines 10-12 of 100:\nline 10 value 100\nline 11 value 121\nline 12 value 144"
    assert select(text, "line 5", 10_000).startswith("lines 5-5 of 100:")
    assert "outside" in select(text, "lines 300-310", 10_000)
    hit = select(text, "value 2500", 10_000)
    assert "line 50 value 2500" in hit and "line 48 value" in hit and "line 53 value" not in hit
    miss = select(text, "zebra", 100_000)
    assert miss.startswith("[nocp: no line matches 'zebra'") and miss.endswith(text)
    capped = select(text, None, 1000)
    assert capped.startswith(text[:1000]) and "this is the first 1000" in capped
    assert select(text, "lines 10-12", 10_000) == part  # pure


# ------------------------------------------------------------------------------ adapters


@pytest.mark.parametrize(
    ("extra", "blocked"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, None),
        ({"tool_choice": "required"}, None),
        ({"tool_choice": "none"}, "tool_choice none"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            "tool_choice forces or restricts tools",
        ),
        ({"functions": []}, "legacy functions"),
        ({"n": 2}, "n > 1"),
        (
            {"tools": [{"type": "function", "function": {"name": TOOL}}]},
            f"the client has a tool named {TOOL}",
        ),
    ],
)
def test_openai_blocker(extra: dict[str, Any], blocked: str | None) -> None:
    """The tool is offered unless the client forbids, forces or restricts tools or wants n > 1."""
    body = {"model": "gpt-4o", "messages": [], **extra}
    assert OpenAIChatAdapter().retrieval_blocker(body, TOOL) == blocked


@pytest.mark.parametrize(
    ("extra", "blocked"),
    [
        ({}, None),
        ({"toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}, None),
        ({"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}, None),
        ({"toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}, "function calling mode NONE"),
        (
            {"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}},
            "allowedFunctionNames restricts tools",
        ),
        ({"tools": [{"googleSearch": {}}]}, "built-in tools"),
        ({"cachedContent": "cachedContents/x"}, "cachedContent (its tools are fixed)"),
        ({"generationConfig": {"candidateCount": 2}}, "candidateCount > 1"),
    ],
)
def test_gemini_blocker(extra: dict[str, Any], blocked: str | None) -> None:
    """Gemini: mode NONE, allowed names, built-in tools, cached content and several candidates block."""
    assert GeminiAdapter().retrieval_blocker({"contents": [], **extra}, TOOL) == blocked


def test_add_usage_sums_every_count() -> None:
    """Usage objects add up field by field, nested details and Gemini's per-modality lists included."""
    a = {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    b = {
        "prompt_tokens": 20,
        "completion_tokens": 3,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert add_usage(a, b) == {
        "prompt_tokens": 30,
        "completion_tokens": 5,
        "total_tokens": 35,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    g1 = {"promptTokenCount": 5, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 5}]}
    g2 = {
        "promptTokenCount": 7,
        "cachedContentTokenCount": 3,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}],
    }
    assert add_usage(g1, g2) == {
        "promptTokenCount": 12,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
        "cachedContentTokenCount": 3,
    }
    assert add_usage(a, None) == a


def test_json_array_splitter_any_chunking() -> None:
    """Streamed JSON array elements come out whole however the bytes are cut."""
    items = [{"t": 'a "quoted" [x] {y}', "n": i, "l": [1, [2, {"z": "\\"}]]} for i in range(5)]
    raw = ("[" + ",\r\n".join(json.dumps(x) for x in items) + "]").encode()
    for size in (1, 2, 3, 7, 64, len(raw)):
        splitter = JSONArraySplitter()
        out = [e for i in range(0, len(raw), size) for e in splitter.feed(raw[i : i + size])]
        assert [json.loads(e) for e in out] == items


# ------------------------------------------------------------------------------ sniffers


def _oai_events(*chunks: dict[str, Any]) -> list[bytes]:
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def _delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "x", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def _call(index: int, name: str | None, args: str, call_id: str | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"arguments": args}
    if name:
        fn["name"] = name
    tc: dict[str, Any] = {"index": index, "function": fn}
    if call_id:
        tc["id"] = call_id
    return _delta({"tool_calls": [tc]})


def _run(hop: HopStream, events: list[bytes], prior: Any = None) -> bytes:
    """Feed ``events`` to ``hop``; what the client gets when every event is rendered."""
    parsed = [e for raw in events for e in hop.feed(raw)] + hop.close()
    return b"".join(r for e in parsed if (r := hop.render(e, prior))) + hop.end()


def test_chat_stream_text_then_retrieval_call() -> None:
    """A chat stream is parsed once: text, nocp's call; rendered without the call, finish stop."""
    hop = OpenAIChatAdapter().hop_stream(TOOL)
    events = _oai_events(
        _delta({"role": "assistant", "content": ""}),
        _delta({"content": "Looking"}),
        _call(0, TOOL, "", "call_1"),
        _call(0, None, '{"id":"0123456789"}'),
        _delta({}, "tool_calls"),
    )
    out = _run(hop, events)
    assert TOOL.encode() not in out and b'"finish_reason":"stop"' in out and out.endswith(b"[DONE]\n\n")
    assert b"Looking" in out and hop.text() == "Looking"
    assert [c.args() for c in hop.ours()] == [{"id": "0123456789"}] and hop.client_calls() == []
    assert hop.turn().message["tool_calls"][0]["function"]["name"] == TOOL  # the model's whole turn


def test_chat_stream_mixed_calls_renumbered_and_usage_summed() -> None:
    """Beside a client call, ours is taken out, the client's renumbered from 0, usage summed."""
    mixed = _oai_events(
        _delta({"role": "assistant", "content": None}),
        _call(0, TOOL, '{"id":"0123456789"}', "c1"),
        _call(1, "get_weather", '{"city":"Paris"}', "c2"),
        _delta({}, "tool_calls"),
        {"id": "x", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
    )
    hop = OpenAIChatAdapter().hop_stream(TOOL)
    out = _run(hop, mixed, prior={"prompt_tokens": 100})
    assert TOOL.encode() not in out and hop.usage.prompt_tokens == 5
    chunks = [json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls == [
        {"index": 0, "id": "c2", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 105


def test_chat_stream_continuation_is_one_message() -> None:
    """A hop that continues a client stream drops its role chunk and takes the stream's id."""
    adapter = OpenAIChatAdapter()
    first = adapter.hop_stream(TOOL)
    _run(
        first, _oai_events(_delta({"role": "assistant", "content": ""}), _delta({"content": "Let me look."}))
    )
    second = adapter.hop_stream(TOOL, after=first)
    role, text = (
        {"id": "other", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
        for d in ({"role": "assistant", "content": ""}, {"content": " Found it."})
    )
    out = _run(second, _oai_events(role, text))
    chunks = [json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": " Found it."}]
    assert {c["id"] for c in chunks} == {"x"}


def test_gemini_stream_strips_calls_and_joins_text() -> None:
    """Gemini: text is relayed, nocp's call removed (an empty part keeps the finish), usage
    summed with earlier hops, and the model's turn keeps the text pieces joined."""
    hop = GeminiAdapter().hop_stream(TOOL)

    def ev(parts: list[Any], finish: bool = False) -> bytes:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            cand["finishReason"] = "STOP"
        body = {"candidates": [cand], "usageMetadata": {"promptTokenCount": 3}}
        return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"

    events = [
        ev([{"text": "thinking...", "thought": True}]),
        ev([{"text": "Ans"}]),
        ev([{"text": "wer"}]),
        ev([{"functionCall": {"name": TOOL, "args": {"id": "0123456789"}}}], finish=True),
    ]
    out = _run(hop, events, prior={"promptTokenCount": 7})
    assert TOOL.encode() not in out and b'"finishReason":"STOP"' in out and b'"parts":[{"text":""}]' in out
    assert b"thinking" in out and out.count(b'"promptTokenCount":10') == 4
    assert [c.args() for c in hop.ours()] == [{"id": "0123456789"}] and hop.text() == "Answer"
    parts = hop.turn().message["parts"]
    assert parts[1:3] == [{"text": "Answer"}, {"functionCall": {"name": TOOL, "args": {"id": "0123456789"}}}]
