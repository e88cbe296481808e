"""Scripted behaviours of the fake upstream, and how one resolves into a plan and an answer.

Each LLM request (OpenAI chat completions, Gemini generateContent / streamGenerateContent,
OpenAI Responses, each ``response.create`` of a Responses WebSocket, Anthropic Messages)
consumes one step from the script; an empty script gives the default reply. Answers are
``Reply`` (text and/or tool calls), ``ToolCall`` (one call) and ``Replay`` (a recorded assistant
message, OpenAI, Gemini, Responses or Anthropic form). ``Fail`` answers with an error status.
``Stall``, ``StreamStall`` and ``Drop`` change *how* an answer is delivered; their ``then`` is the
answer (default reply when ``None``) and may itself be another modifier, e.g.
``Stall(1, then=Drop(2, then=Reply("x")))``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from proxy.testing._common import as_mapping, dumps_str, hex_id, text_parts

__all__ = [
    "Answer",
    "Drop",
    "Fail",
    "FakeCall",
    "FakeTurn",
    "Plan",
    "Replay",
    "Reply",
    "Stall",
    "Step",
    "StreamStall",
    "Structured",
    "ToolCall",
    "plan_for",
    "turn_for",
]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model calls one tool. ``arguments`` is a dict (sent as compact JSON) or raw JSON text;
    ``id`` defaults to ``call_`` + a hash of the request body and the call's position."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The model answers ``text`` and/or calls ``tool_calls``. ``Reply()`` is the default reply."""

    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def __post_init__(self) -> None:
        # Accept any sequence (e.g. a list) but store a tuple, so the value stays immutable.
        if not isinstance(self.tool_calls, tuple):
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))


@dataclass(frozen=True, slots=True)
class Replay:
    """Answer with a recorded assistant message, verbatim: an OpenAI message (``content`` and/or
    ``tool_calls``), a Gemini ``Content`` (``parts``), Responses output items (a list, or a
    recorded Response with ``output``), or an Anthropic message (``content`` blocks: text,
    tool_use, thinking). It is converted when the request is of another protocol."""

    message: Mapping[str, Any] | Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer with an HTTP error. ``body=None`` gives the protocol's own error shape for
    ``status`` (OpenAI ``{"error": {message, type, param, code}}``, Gemini
    ``{"error": {code, message, status}}``, Anthropic ``{"type": "error", "error": {type,
    message}}``); a dict is sent as JSON, a str as is."""

    status: int = 500
    body: Mapping[str, Any] | str | None = None
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"Fail status must be 4xx or 5xx, got {self.status}")


@dataclass(frozen=True, slots=True)
class Stall:
    """Wait ``seconds`` before answering (before any response byte, headers included)."""

    seconds: float
    then: Step | None = None

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError("Stall seconds must be >= 0")


@dataclass(frozen=True, slots=True)
class StreamStall:
    """Send ``after_chunks`` stream events, then wait ``seconds``, then finish. On a non-streaming
    request this is the same as ``Stall(seconds)``."""

    after_chunks: int
    seconds: float
    then: Step | None = None

    def __post_init__(self) -> None:
        if self.after_chunks < 0 or self.seconds < 0:
            raise ValueError("StreamStall after_chunks and seconds must be >= 0")


@dataclass(frozen=True, slots=True)
class Drop:
    """Close the connection after ``after_chunks`` stream events (0: right after the response
    headers), without ending the stream. A non-streaming request gets no response at all."""

    after_chunks: int = 0
    then: Step | None = None

    def __post_init__(self) -> None:
        if self.after_chunks < 0:
            raise ValueError("Drop after_chunks must be >= 0")


@dataclass(frozen=True, slots=True)
class Structured:
    """The model answers the JSON value ``value`` as text. ``form``: ``auto`` writes TOON (as
    :func:`proxy.output.toon_answer` does) when the request asks for TOON (nocp's instruction
    is in it) and JSON (``json.dumps``) otherwise; ``toon`` and ``json`` always that;
    ``broken`` TOON that does not decode (its first array declares one item more than it has,
    or, without an array, an unterminated quote)."""

    value: Any
    form: Literal["auto", "toon", "json", "broken"] = "auto"

    def text(self, body: bytes) -> str:
        """The answer's text for a request of ``body``."""
        from proxy.output import TOON_MARKER, toon_answer

        form = self.form
        if form == "auto":
            form = "toon" if TOON_MARKER.encode() in body else "json"
        if form == "json":
            return json.dumps(self.value, ensure_ascii=False)
        text = toon_answer(self.value)
        if form == "broken":
            found = re.search(r"\[(\d+)\]", text)
            if found is None:
                return text + '\nnote: "unterminated'
            n = int(found.group(1)) + 1
            return text[: found.start()] + f"[{n}]" + text[found.end() :]
        return text


Answer: TypeAlias = Reply | ToolCall | Replay | Structured
Step: TypeAlias = Reply | ToolCall | Replay | Structured | Fail | Stall | StreamStall | Drop


@dataclass(slots=True)
class Plan:
    """What to do for one request, flattened from a (possibly nested) step."""

    answer: Answer | None = None
    fail: Fail | None = None
    delay: float = 0.0
    stall_after: int | None = None
    stall_seconds: float = 0.0
    drop_after: int | None = None


def plan_for(step: Step | None) -> Plan:
    plan = Plan()
    while step is not None:
        if isinstance(step, Stall):
            plan.delay += step.seconds
            step = step.then
        elif isinstance(step, StreamStall):
            plan.stall_after, plan.stall_seconds = step.after_chunks, step.seconds
            step = step.then
        elif isinstance(step, Drop):
            plan.drop_after = step.after_chunks
            step = step.then
        elif isinstance(step, Fail):
            plan.fail = step
            step = None
        else:
            plan.answer = step
            step = None
    return plan


@dataclass(frozen=True, slots=True)
class FakeCall:
    """A tool call as both protocols need it: ``arguments`` is JSON text (OpenAI's form)."""

    id: str
    name: str
    arguments: str

    def args_object(self) -> Any:
        """The arguments as a JSON value (Gemini's ``functionCall.args``); ``{}`` if not JSON."""
        try:
            return json.loads(self.arguments) if self.arguments else {}
        except ValueError:
            return {}


@dataclass(frozen=True, slots=True)
class FakeTurn:
    """The assistant turn to send. ``openai_message`` / ``gemini_parts`` / ``responses_items`` /
    ``anthropic_content`` hold a replayed message verbatim when it was recorded in that form."""

    text: str | None
    calls: tuple[FakeCall, ...] = ()
    openai_message: Mapping[str, Any] | None = None
    gemini_parts: tuple[Mapping[str, Any], ...] | None = None
    responses_items: tuple[Mapping[str, Any], ...] | None = None
    anthropic_content: tuple[Mapping[str, Any], ...] | None = None


_ANTHROPIC_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})


def _call_id(body: bytes, index: int, prefix: str = "call_") -> str:
    return prefix + hex_id(body, 24, "call", str(index))


def _anthropic_turn(
    message: Mapping[str, Any], blocks: tuple[Mapping[str, Any], ...], body: bytes
) -> FakeTurn:
    """Anthropic content blocks: text of ``text`` blocks, calls of ``tool_use`` blocks."""
    texts = [b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)]
    uses = [b for b in blocks if b.get("type") == "tool_use"]
    calls = tuple(
        FakeCall(
            str(b.get("id") or _call_id(body, i)), str(b.get("name", "")), dumps_str(b.get("input") or {})
        )
        for i, b in enumerate(uses)
    )
    # A list of text blocks is also an OpenAI content list: OpenAI then gets the message verbatim.
    text_only = all(b.get("type") == "text" for b in blocks)
    return FakeTurn(
        "".join(texts) if texts else None,
        calls,
        openai_message=message if text_only else None,
        anthropic_content=blocks,
    )


def _responses_turn(items: Sequence[Any], body: bytes) -> FakeTurn:
    """Responses output items: text of ``message`` items, calls of ``function_call`` items."""
    kept = tuple(i for i in items if isinstance(i, Mapping))
    texts: list[str] = []
    calls: list[FakeCall] = []
    for item in kept:
        if item.get("type", "message") == "message":
            texts += text_parts(item.get("content"))
        elif item.get("type") == "function_call":
            args = item.get("arguments", "")
            cid = item.get("call_id") if isinstance(item.get("call_id"), str) else _call_id(body, len(calls))
            calls.append(
                FakeCall(
                    str(cid), str(item.get("name", "")), args if isinstance(args, str) else dumps_str(args)
                )
            )
    return FakeTurn("".join(texts) if texts else None, tuple(calls), responses_items=kept)


def _replay_turn(message: Mapping[str, Any] | Sequence[Mapping[str, Any]], body: bytes) -> FakeTurn:
    if not isinstance(message, Mapping):
        return _responses_turn(message, body)
    if isinstance(message.get("output"), list) and "role" not in message:  # a recorded Response
        return _responses_turn(message["output"], body)
    parts = message.get("parts")
    if isinstance(parts, list):  # Gemini Content
        gparts = tuple(p for p in parts if isinstance(p, Mapping))
        texts = [p["text"] for p in gparts if isinstance(p.get("text"), str) and not p.get("thought")]
        calls: list[FakeCall] = []
        for p in gparts:
            fc = as_mapping(p.get("functionCall") or p.get("function_call"))
            if fc is not None:
                cid = fc.get("id") if isinstance(fc.get("id"), str) else _call_id(body, len(calls))
                calls.append(FakeCall(str(cid), str(fc.get("name", "")), dumps_str(fc.get("args") or {})))
        return FakeTurn("".join(texts) if texts else None, tuple(calls), gemini_parts=gparts)
    content = message.get("content")
    if (
        isinstance(content, list)
        and "tool_calls" not in message
        and all(isinstance(b, Mapping) and b.get("type") in _ANTHROPIC_BLOCKS for b in content)
    ):
        return _anthropic_turn(message, tuple(content), body)
    texts = text_parts(content)
    calls = []
    for raw in message.get("tool_calls") or ():
        tc = as_mapping(raw)
        fn = as_mapping(tc.get("function")) if tc is not None else None
        if tc is None or fn is None:
            continue
        args = fn.get("arguments", "")
        calls.append(
            FakeCall(
                str(tc.get("id") or _call_id(body, len(calls))),
                str(fn.get("name", "")),
                args if isinstance(args, str) else dumps_str(args),
            )
        )
    return FakeTurn("".join(texts) if texts else None, tuple(calls), openai_message=message)


def _calls(tool_calls: Sequence[ToolCall], body: bytes, prefix: str) -> tuple[FakeCall, ...]:
    return tuple(
        FakeCall(
            tc.id or _call_id(body, i, prefix),
            tc.name,
            tc.arguments if isinstance(tc.arguments, str) else dumps_str(tc.arguments),
        )
        for i, tc in enumerate(tool_calls)
    )


def turn_for(answer: Answer | None, default_text: str, body: bytes, call_prefix: str = "call_") -> FakeTurn:
    """The assistant turn for ``answer``; ``default_text`` when nothing specific is scripted.
    Scripted tool calls without an id get ``call_prefix`` + a hash (Anthropic's: ``toolu_``)."""
    if isinstance(answer, Replay):
        return _replay_turn(answer.message, body)
    if isinstance(answer, ToolCall):
        return FakeTurn(None, _calls((answer,), body, call_prefix))
    if isinstance(answer, Structured):
        return FakeTurn(answer.text(body))
    if answer is None or (answer.text is None and not answer.tool_calls):
        return FakeTurn(default_text)
    return FakeTurn(answer.text, _calls(answer.tool_calls, body, call_prefix))
