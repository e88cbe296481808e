"""OpenAI chat completions (``POST /v1/chat/completions``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._base import (
    Adapter,
    Call,
    ModelTurn,
    PathKey,
    Prompt,
    RetrievalSniffer,
    Segment,
    SegmentKind,
    SSESplitter,
    StreamSniffer,
    ToolSpec,
    Turn,
    Usage,
    add_usage,
    anchor_digest,
    decode_json_object,
    digest,
    encode_json,
    sse_data,
)

_ROLE_KIND: Mapping[str, SegmentKind] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool_output",
    "function": "tool_output",
}


class _UsageIn(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: dict[str, Any] | None = None


class _Body(msgspec.Struct):
    usage: _UsageIn | None = None


class _Chunk(msgspec.Struct):
    choices: list[dict[str, Any]] = msgspec.field(default_factory=list)
    usage: _UsageIn | None = None


_body_decoder = msgspec.json.Decoder(_Body)
_chunk_decoder = msgspec.json.Decoder(_Chunk)


def _to_usage(raw: _UsageIn) -> Usage:
    cached = (raw.prompt_tokens_details or {}).get("cached_tokens")
    return Usage(
        prompt_tokens=raw.prompt_tokens,
        completion_tokens=raw.completion_tokens,
        cached_tokens=cached if isinstance(cached, int) else None,
    )


class OpenAIChatSniffer(StreamSniffer):
    """Reads usage and finish reasons from a chat-completions SSE stream.

    When the proxy added ``stream_options.include_usage`` itself, the usage-only chunk the
    client did not ask for is held back; every other event is forwarded as it completes.
    Otherwise chunks are forwarded exactly as they arrive.
    """

    def __init__(self, drop_usage_chunk: bool) -> None:
        super().__init__()
        self._drop = drop_usage_chunk
        self._events = SSESplitter()

    def _inspect(self, event: bytes) -> bool:
        """Record what the event says; return False when it must not be forwarded."""
        data = sse_data(event)
        if not data or data == b"[DONE]":
            return True
        has_usage = b'"usage"' in data and b'"usage":null' not in data
        if not has_usage and b'"finish_reason":"' not in data:
            return True
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.DecodeError:
            return True
        for choice in chunk.choices:
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
        if chunk.usage is not None:
            self.usage = _to_usage(chunk.usage)
            if self._drop and not chunk.choices:
                return False
        return True

    def feed(self, chunk: bytes) -> bytes:
        if not self._drop:
            for event in self._events.feed(chunk):
                self._inspect(event)
            return chunk
        return b"".join(e for e in self._events.feed(chunk) if self._inspect(e))

    def close(self) -> bytes:
        rest = self._events.rest()
        return rest if self._drop else b""


def _text(content: Any) -> str:
    """The text of a message ``content``: a string, text parts joined, or ``""``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _call_of(raw: Any) -> Call | None:
    if not isinstance(raw, dict):
        return None
    fn = raw.get("function")
    if not isinstance(fn, dict):
        return None
    args = fn.get("arguments")
    return Call(
        name=str(fn.get("name", "")),
        arguments=args if isinstance(args, str) else encode_json(args or {}).decode(),
        id=raw.get("id") if isinstance(raw.get("id"), str) else None,
        raw=_raw_call(raw.get("id"), fn.get("name"), args),
    )


def _raw_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _client_calls(calls: Sequence[Call]) -> list[tuple[str, str, str]]:
    return [(c.id or "", c.name, c.arguments) for c in calls]


def _name_of(call: dict[str, Any]) -> Any:
    fn = call.get("function")
    return fn.get("name") if isinstance(fn, dict) else None


def _event(chunk: Any) -> bytes:
    return b"data: " + encode_json(chunk) + b"\n\n"


class OpenAIRetrievalSniffer(RetrievalSniffer):
    """:class:`RetrievalSniffer` for chat-completions SSE streams (one choice)."""

    def __init__(
        self, tool: str, *, drop_usage_chunk: bool, prior: Mapping[str, Any] | None, allow_round: bool
    ) -> None:
        super().__init__(tool, drop_usage_chunk=drop_usage_chunk, prior=prior, allow_round=allow_round)
        self._events = SSESplitter()
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}  # index -> {"id", "name", "arguments"}
        self._ours: set[int] = set()
        self._renumber: dict[int, int] = {}

    # ----------------------------------------------------------------- what was answered

    def turn(self) -> ModelTurn:
        calls = [self._as_call(i) for i in sorted(self._calls)]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text) or None}
        if calls:
            message["tool_calls"] = [c.raw for c in calls]
        return ModelTurn(message=message, calls=calls, usage=self.usage_raw)

    def _as_call(self, index: int) -> Call:
        c = self._calls[index]
        raw = {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        return Call(name=c["name"], arguments=c["arguments"], id=c["id"], raw=raw)

    def ours(self) -> list[Call]:
        return [self._as_call(i) for i in sorted(self._ours)]

    def client_calls(self) -> int:
        return len(self._calls) - len(self._ours)

    def client_message(self) -> tuple[str, list[tuple[str, str, str]]]:
        calls = [self._as_call(i) for i in sorted(self._calls) if i not in self._ours]
        return "".join(self._text), _client_calls(calls)

    # ----------------------------------------------------------------- the stream

    def _observe(self, chunk: Any) -> None:
        """Record what one chunk says, and decide the mode when it tells."""
        if not isinstance(chunk, dict):
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage_raw = usage
            with contextlib.suppress(msgspec.ValidationError):
                self.usage = _to_usage(msgspec.convert(usage, _UsageIn))
        decided_by: str | None = "usage" if isinstance(usage, dict) else None
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text.append(content)
                decided_by = decided_by or "text"
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                decided_by = decided_by or "text"
            for tc in delta.get("tool_calls") or ():
                index = tc.get("index", 0)
                fn = tc.get("function") or {}
                call = self._calls.get(index)
                if call is None:
                    name = str(fn.get("name") or "")
                    call = self._calls[index] = {"id": tc.get("id"), "name": name, "arguments": ""}
                    if name == self.tool:
                        self._ours.add(index)
                        decided_by = decided_by or "ours"
                    else:
                        self._renumber[index] = len(self._renumber)
                        decided_by = decided_by or "call"
                if isinstance(fn.get("arguments"), str):
                    call["arguments"] += fn["arguments"]
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
                decided_by = decided_by or "finish"
        if self.mode == "undecided" and decided_by is not None:
            self.mode = "consume" if decided_by == "ours" and self.allow_round else "relay"

    def _rewrite(self, event: bytes, chunk: Any) -> bytes | None:
        """``event`` as the client gets it: retrieval calls out, usage summed; None: drop it."""
        if not isinstance(chunk, dict):
            return event
        changed = False
        has_finish = False
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if isinstance(delta, dict) and delta.get("tool_calls"):
                kept = []
                for tc in delta["tool_calls"]:
                    index = tc.get("index", 0)
                    if index in self._ours:
                        changed = True
                        continue
                    new = self._renumber.get(index, index)
                    if new != index:
                        tc = {**tc, "index": new}
                        changed = True
                    kept.append(tc)
                if kept:
                    delta["tool_calls"] = kept
                else:
                    del delta["tool_calls"]
            if choice.get("finish_reason") == "tool_calls" and self._ours and not self.client_calls():
                choice["finish_reason"] = "stop"
                changed = True
            has_finish = has_finish or choice.get("finish_reason") is not None
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            if self.drop_usage_chunk and not chunk.get("choices"):
                return None
            if self.prior:
                chunk["usage"] = add_usage(usage, self.prior)
                changed = True
        if not changed:
            return event
        choices = chunk.get("choices") or []
        if choices and not has_finish and not usage and all(not c.get("delta") for c in choices):
            return None  # nothing left but an empty delta
        return _event(chunk)

    def _parse(self, event: bytes) -> Any:
        data = sse_data(event)
        if not data or data == b"[DONE]":
            return None
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError:
            return None

    def _release(self, items: list[tuple[bytes, Any]]) -> bytes:
        out = []
        for event, chunk in items:
            data = self._rewrite(event, chunk)
            if data:
                out.append(data)
        return b"".join(out)

    def _items(self, chunk: bytes) -> Iterator[tuple[bytes, Any]]:
        for event in self._events.feed(chunk):
            yield event, self._parse(event)

    def _rest(self) -> tuple[bytes, Any] | None:
        rest = self._events.rest()
        return (rest, self._parse(rest)) if rest else None

    def _finishing(self, parsed: Any) -> bool:
        return any(isinstance(c, dict) and c.get("finish_reason") for c in _choices(parsed))


def _choices(chunk: Any) -> list[Any]:
    if isinstance(chunk, dict) and isinstance(chunk.get("choices"), list):
        return list(chunk["choices"])
    return []


class OpenAIChatAdapter(Adapter):
    """Adapter for ``/v1/chat/completions``."""

    protocol: ClassVar[Literal["openai", "gemini"]] = "openai"

    def parse(self, body: bytes, match_info: Mapping[str, str]) -> dict[str, Any]:
        data = decode_json_object(body)
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a string", param="model")
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise BadRequest("'messages' is required and must be an array", param="messages")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise BadRequest(f"messages[{i}] must be an object with a string 'role'", param="messages")
            content = msg.get("content")
            if content is not None and not isinstance(content, str | list):
                raise BadRequest(
                    f"messages[{i}].content must be a string, an array of parts or null",
                    param=f"messages[{i}].content",
                )
        return data

    def model(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> str:
        return str(body["model"])

    def is_stream(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> bool:
        return body.get("stream") is True

    turns_key: ClassVar[str] = "messages"

    def summary_message(self, text: str) -> dict[str, Any]:
        return {"role": "user", "content": text}

    def prompt(self, body: Mapping[str, Any], *, turns: bool = True) -> Prompt:
        segs: list[Segment] = []
        turn_list: list[Turn] = []
        call_names: dict[str, tuple[str, str]] = {}
        for i, msg in enumerate(body["messages"]):
            role = msg["role"]
            if turns:
                turn_list.append(
                    Turn(index=i, role=role, tool_result=role in ("tool", "function"), digest=digest(msg))
                )
            kind = _ROLE_KIND.get(role)
            if kind is None:
                continue
            tool_name: str | None = None
            tool_args = ""
            if kind == "tool_output":
                tool_name, tool_args = call_names.get(str(msg.get("tool_call_id")), (msg.get("name"), ""))
            content = msg.get("content")
            parts: list[tuple[tuple[PathKey, ...], str]] = []
            if isinstance(content, str):
                parts.append((("messages", i, "content"), content))
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        parts.append((("messages", i, "content", j, "text"), part["text"]))
            for path, text in parts:
                segs.append(
                    Segment(
                        kind=kind,
                        index=i,
                        path=path,
                        text=text,
                        role=role,
                        tool_name=tool_name,
                        tool_args=tool_args,
                    )
                )
            for k, call in enumerate(msg.get("tool_calls") or ()):
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    name = str(fn.get("name", ""))
                    call_names[str(call.get("id"))] = (name, fn["arguments"])
                    segs.append(
                        Segment(
                            kind="tool_call",
                            index=i,
                            path=("messages", i, "tool_calls", k, "function", "arguments"),
                            text=fn["arguments"],
                            role=role,
                            tool_name=name,
                        )
                    )
        return Prompt(segments=tuple(segs), turns=tuple(turn_list))

    def prepare_upstream(self, body: dict[str, Any], stream: bool) -> bool:
        if not stream:
            return False
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return True

    def usage(self, body: bytes) -> Usage:
        try:
            parsed = _body_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Usage()
        return _to_usage(parsed.usage) if parsed.usage else Usage()

    def sniffer(self, body: Mapping[str, Any], injected_usage: bool) -> StreamSniffer:
        return OpenAIChatSniffer(drop_usage_chunk=injected_usage)

    def count_prompt(self, body: Mapping[str, Any], model: str) -> int:
        return tokens.count_chat_request(body, model)

    # --- retrieval

    def retrieval_blocker(self, body: Mapping[str, Any], tool: str) -> str | None:
        if "functions" in body or "function_call" in body:
            return "legacy functions"
        n = body.get("n")
        if isinstance(n, int) and n > 1:
            return "n > 1"
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            return "tools is not a list"
        for t in tools or ():
            fn = t.get("function") if isinstance(t, dict) else None
            if isinstance(fn, dict) and fn.get("name") == tool:
                return f"the client has a tool named {tool}"
        choice = body.get("tool_choice")
        if choice == "none":
            return "tool_choice none"
        if isinstance(choice, dict):
            return "tool_choice forces or restricts tools"
        return None

    def add_tool(self, body: dict[str, Any], spec: ToolSpec) -> None:
        props = {name: {"type": "string", "description": desc} for name, desc in spec.parameters}
        tool = {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": {
                    "type": "object",
                    "properties": props,
                    "required": list(spec.required),
                    "additionalProperties": False,
                },
            },
        }
        body["tools"] = [*(body.get("tools") or []), tool]

    @staticmethod
    def _message(data: bytes) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
        try:
            parsed = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return None
        choices = parsed.get("choices") if isinstance(parsed, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            return None
        message = choices[0].get("message")
        return (parsed, choices[0], message) if isinstance(message, dict) else None

    def model_turn(self, data: bytes) -> ModelTurn | None:
        found = self._message(data)
        if found is None:
            return None
        parsed, _, message = found
        calls = [c for raw in message.get("tool_calls") or () if (c := _call_of(raw)) is not None]
        turn_message: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if calls:
            turn_message["tool_calls"] = [c.raw for c in calls]
        usage = parsed.get("usage")
        return ModelTurn(message=turn_message, calls=calls, usage=usage if isinstance(usage, dict) else None)

    def client_reply(self, data: bytes, tool: str, prior: Mapping[str, Any] | None) -> bytes:
        found = self._message(data)
        if found is None:
            return data
        parsed, choice, message = found
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            kept = [
                c
                for c in calls
                if not (isinstance(c, dict) and (c.get("function") or {}).get("name") == tool)
            ]
            if len(kept) != len(calls):
                if kept:
                    message["tool_calls"] = kept
                else:
                    del message["tool_calls"]
                    if choice.get("finish_reason") == "tool_calls":
                        choice["finish_reason"] = "stop"
        if prior and isinstance(parsed.get("usage"), dict):
            parsed["usage"] = add_usage(parsed["usage"], prior)
        return encode_json(parsed)

    def client_message(self, data: bytes, tool: str) -> tuple[str, list[tuple[str, str, str]]]:
        turn = self.model_turn(data)
        if turn is None:
            return "", []
        return _text(turn.message.get("content")), _client_calls([c for c in turn.calls if c.name != tool])

    def follow_up(
        self, body: Mapping[str, Any], turn: ModelTurn, answers: Sequence[tuple[Call, str]]
    ) -> dict[str, Any]:
        results = [{"role": "tool", "tool_call_id": call.id or "", "content": text} for call, text in answers]
        return {**body, "messages": [*body["messages"], turn.message, *results]}

    def assistant_anchors(self, body: Mapping[str, Any]) -> list[tuple[int, str]]:
        out = []
        for i, msg in enumerate(body["messages"]):
            if msg.get("role") != "assistant":
                continue
            calls = [c for raw in msg.get("tool_calls") or () if (c := _call_of(raw)) is not None]
            out.append((i, anchor_digest(_text(msg.get("content")), _client_calls(calls))))
        return out

    def insert_answers(
        self, body: dict[str, Any], index: int, calls: Sequence[Any], answers: Sequence[str]
    ) -> None:
        messages = body["messages"]
        msg = messages[index]
        msg["tool_calls"] = [*(msg.get("tool_calls") or []), *copy.deepcopy(list(calls))]
        end = index + 1
        while end < len(messages) and messages[end].get("role") == "tool":
            end += 1
        results = [
            {"role": "tool", "tool_call_id": str(call.get("id") or ""), "content": text}
            for call, text in zip(calls, answers, strict=True)
        ]
        messages[end:end] = results

    def retrieval_sniffer(
        self, tool: str, *, drop_usage_chunk: bool, prior: Mapping[str, Any] | None, allow_round: bool
    ) -> RetrievalSniffer:
        return OpenAIRetrievalSniffer(
            tool, drop_usage_chunk=drop_usage_chunk, prior=prior, allow_round=allow_round
        )

    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        return {
            "error": {"message": err.message, "type": err.error_type, "param": err.param, "code": err.code}
        }
