"""A whole answer as the stream the client asked for (Chat Completions chunks, Responses
events): nocp asked the upstream for a whole answer to decode it, and the client gets it in
one go, in the protocol's own stream shape."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from proxy.protocols import encode_json

__all__ = ["chat_stream", "responses_stream"]


def _sse(value: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + encode_json(value) + b"\n\n"


def chat_stream(completion: Mapping[str, Any], *, include_usage: bool) -> bytes:
    """A ``chat.completion`` as ``chat.completion.chunk`` events: per choice a role chunk, its
    content (or refusal, tool calls) in one delta, its finish; the usage chunk when asked."""
    base = {
        k: completion[k]
        for k in ("id", "created", "model", "system_fingerprint", "service_tier")
        if k in completion
    }
    base["object"] = "chat.completion.chunk"
    out: list[bytes] = []

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> None:
        out.append(b"data: " + encode_json({**base, "choices": choices, **extra}) + b"\n\n")

    for choice in completion.get("choices") or ():
        if not isinstance(choice, Mapping):
            continue
        index = choice.get("index", 0)
        found = choice.get("message")
        message: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        chunk(
            [
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        delta: dict[str, Any] = {}
        for key in ("content", "refusal"):
            if message.get(key):
                delta[key] = message[key]
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {**call, "index": i}
                for i, call in enumerate(message["tool_calls"])
                if isinstance(call, Mapping)
            ]
        if delta:
            chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])
        chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}])
    if include_usage:
        chunk([], usage=completion.get("usage"))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _item_events(item: Mapping[str, Any], index: int) -> Iterator[tuple[str, dict[str, Any]]]:
    item_id = item.get("id", "")
    if item.get("type") != "message":
        yield "response.output_item.added", {"output_index": index, "item": item}
        yield "response.output_item.done", {"output_index": index, "item": item}
        return
    yield (
        "response.output_item.added",
        {
            "output_index": index,
            "item": {**item, "status": "in_progress", "content": []},
        },
    )
    for ci, part in enumerate(item.get("content") or ()):
        if not isinstance(part, Mapping):
            continue
        where = {"item_id": item_id, "output_index": index, "content_index": ci}
        empty = {**part, "text": ""} if part.get("type") == "output_text" else part
        yield "response.content_part.added", {**where, "part": empty}
        if part.get("type") == "output_text":
            text = part.get("text", "")
            yield "response.output_text.delta", {**where, "delta": text, "logprobs": []}
            yield "response.output_text.done", {**where, "text": text, "logprobs": []}
        elif part.get("type") == "refusal":
            yield "response.refusal.delta", {**where, "delta": part.get("refusal", "")}
            yield "response.refusal.done", {**where, "refusal": part.get("refusal", "")}
        yield "response.content_part.done", {**where, "part": part}
    yield "response.output_item.done", {"output_index": index, "item": item}


def responses_stream(response: Mapping[str, Any]) -> bytes:
    """A Response as its stream: created, in_progress, each output item's events (text as one
    ``output_text.delta`` and its ``done``), then ``response.completed`` (or the Response's
    own terminal status) with the whole Response."""
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": pending}),
        ("response.in_progress", {"response": pending}),
    ]
    for i, item in enumerate(response.get("output") or ()):
        if isinstance(item, Mapping):
            events += list(_item_events(item, i))
    status = response.get("status")
    final = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(
        str(status), "response.completed"
    )
    events.append((final, {"response": dict(response)}))
    return b"".join(
        _sse({"type": name, "sequence_number": seq, **fields}, name)
        for seq, (name, fields) in enumerate(events)
    )
