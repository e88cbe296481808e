"""OpenAI chat completions (``POST /v1/chat/completions``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._adapter import Adapter, Route
from proxy.protocols._answer import Call, ModelTurn, ToolSpec, Usage, add_usage
from proxy.protocols._codec import decode_json_object, digest, encode_json
from proxy.protocols._prompt import PathKey, Prompt, Segment, SegmentKind, Turn
from proxy.protocols._stream import HopStream, SSESplitter, StreamEvent, sse_data

__all__ = ["ChatStream", "OpenAIChatAdapter"]

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


_body_decoder = msgspec.json.Decoder(_Body)


def _to_usage(raw: _UsageIn) -> Usage:
    cached = (raw.prompt_tokens_details or {}).get("cached_tokens")
    return Usage(
        prompt_tokens=raw.prompt_tokens,
        completion_tokens=raw.completion_tokens,
        cached_tokens=cached if isinstance(cached, int) else None,
    )


def _text(content: Any) -> str:
    """The text of a message ``content``: a string, text parts joined, or ``""``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _raw_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


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


def _empty_delta(delta: Any) -> bool:
    return isinstance(delta, dict) and all(v in (None, "", []) for v in delta.values())


class ChatStream(HopStream):
    """A chat-completions SSE stream (one choice): ``data: {chunk}`` events and ``[DONE]``.

    Tool calls are followed by their ``index``; nocp's own are taken out when rendering and
    the client's renumbered from 0, and a ``tool_calls`` finish reason left without calls
    becomes ``stop``. A continuing hop drops its role chunk and takes the client stream's id.
    """

    def __init__(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> None:
        super().__init__(tool, drop_usage_chunk=drop_usage_chunk, after=after)
        self._events = SSESplitter()
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}  # index -> {"id", "name", "arguments"}
        self._ours: set[int] = set()
        self._renumber: dict[int, int] = {}
        self.stream_id: str | None = after.stream_id if isinstance(after, ChatStream) else None

    # ----------------------------------------------------------------- parsing

    def _event(self, raw: bytes) -> StreamEvent:
        event, chunk = self._parsed(raw, sse_data(raw), (b'"usage":{', b'"finish_reason":"'))
        if chunk is None:
            return event
        if self.stream_id is None and isinstance(chunk.get("id"), str):
            self.stream_id = chunk["id"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            event.usage = True
            self.usage_raw = usage
            with contextlib.suppress(msgspec.ValidationError):
                self.usage = _to_usage(msgspec.convert(usage, _UsageIn))
        calls: list[str] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "refusal"):
                    if isinstance(delta.get(key), str) and delta[key]:
                        event.text += delta[key]
                        if key == "content":
                            self._text.append(delta[key])
                for tc in delta.get("tool_calls") or ():
                    if isinstance(tc, dict):
                        self._observe_call(tc, calls)
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
                event.finishing = True
        event.calls = tuple(calls)
        return event

    def _observe_call(self, tc: dict[str, Any], new: list[str]) -> None:
        index = tc.get("index", 0)
        fn: dict[str, Any] = tc["function"] if isinstance(tc.get("function"), dict) else {}
        call = self._calls.get(index)
        if call is None:
            name = str(fn.get("name") or "")
            call = self._calls[index] = {"id": tc.get("id"), "name": name, "arguments": ""}
            new.append(name)
            if self.tool is not None and name == self.tool:
                self._ours.add(index)
            else:
                self._renumber[index] = len(self._renumber)
        if isinstance(fn.get("arguments"), str):
            call["arguments"] += fn["arguments"]

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        return [self._event(raw) for raw in self._events.feed(chunk)]

    def close(self) -> list[StreamEvent]:
        rest = self._events.rest()
        return [self._event(rest)] if rest.strip() else []

    # ----------------------------------------------------------------- the answer

    def _call(self, index: int) -> Call:
        c = self._calls[index]
        return Call(
            name=c["name"],
            arguments=c["arguments"],
            id=c["id"],
            raw=_raw_call(c["id"], c["name"], c["arguments"]),
        )

    def calls(self) -> list[Call]:
        return [self._call(i) for i in sorted(self._calls)]

    def text(self) -> str:
        return "".join(self._text)

    def turn(self) -> ModelTurn:
        calls = self.calls()
        message: dict[str, Any] = {"role": "assistant", "content": self.text() or None}
        if calls:
            message["tool_calls"] = [c.raw for c in calls]
        return ModelTurn(message=message, calls=calls, usage=self.usage_raw)

    # ----------------------------------------------------------------- for the client

    def render(self, event: StreamEvent, prior: Mapping[str, Any] | None) -> bytes | None:
        chunk = event.data
        if not isinstance(chunk, dict) or (self.passthrough and not event.usage):
            self.emitted += 1
            return event.raw
        changed = False
        if self.continues and self.stream_id and chunk.get("id") != self.stream_id:
            chunk["id"] = self.stream_id
            changed = True
        stop = bool(self._ours) and len(self._ours) == len(self._calls)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if self.continues and "role" in delta:
                    del delta["role"]
                    changed = True
                if delta.get("tool_calls"):
                    kept = []
                    for tc in delta["tool_calls"]:
                        index = tc.get("index", 0) if isinstance(tc, dict) else None
                        if index in self._ours:
                            changed = True
                            continue
                        new = self._renumber.get(index, index) if index is not None else None
                        if new != index:
                            tc = {**tc, "index": new}
                            changed = True
                        kept.append(tc)
                    if kept:
                        delta["tool_calls"] = kept
                    else:
                        del delta["tool_calls"]
            if stop and choice.get("finish_reason") == "tool_calls":
                choice["finish_reason"] = "stop"
                changed = True
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            if self.drop_usage_chunk and not chunk.get("choices"):
                return None
            if prior:
                chunk["usage"] = add_usage(usage, prior)
                changed = True
        if not changed:
            self.emitted += 1
            return event.raw
        choices = [c for c in chunk.get("choices") or () if isinstance(c, dict)]
        if (
            choices
            and not isinstance(usage, dict)
            and all(c.get("finish_reason") is None and _empty_delta(c.get("delta")) for c in choices)
        ):
            return None  # nothing left but an empty delta
        self.emitted += 1
        return b"data: " + encode_json(chunk) + b"\n\n"


class OpenAIChatAdapter(Adapter):
    """Adapter for ``/v1/chat/completions``."""

    protocol: ClassVar[str] = "openai"
    upstream_protocol: ClassVar[str] = "openai"
    routes: ClassVar[tuple[Route, ...]] = (("POST", "/v1/chat/completions"),)
    cache_key_field: ClassVar[str | None] = "prompt_cache_key"

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

    def hop_stream(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> HopStream:
        return ChatStream(tool, drop_usage_chunk=drop_usage_chunk, after=after)

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

    def intercepts(self, body: Mapping[str, Any], tool: str) -> bool:
        blocker = self.retrieval_blocker(body, tool)
        return blocker is None or blocker.startswith("tool_choice")

    def remove_tool(self, body: dict[str, Any], tool: str, *, forbid_calls: bool) -> None:
        tools = [
            t
            for t in body.get("tools") or ()
            if not (isinstance(t, dict) and (t.get("function") or {}).get("name") == tool)
        ]
        if tools:
            body["tools"] = tools
        else:
            body.pop("tools", None)
            body.pop("tool_choice", None)
            body.pop("parallel_tool_calls", None)
        if forbid_calls and tools and body.get("tool_choice") != "required":
            body["tool_choice"] = "none"

    def tool_results(self, answers: Sequence[tuple[Call, str]]) -> list[dict[str, Any]]:
        return [{"role": "tool", "tool_call_id": call.id or "", "content": text} for call, text in answers]

    def client_view(
        self, turns: Sequence[Mapping[str, Any]], tool: str
    ) -> tuple[str, list[tuple[str, str, str]]]:
        texts: list[str] = []
        kept: list[tuple[str, str, str]] = []
        for message in turns:
            texts.append(_text(message.get("content")))
            calls = [c for raw in message.get("tool_calls") or () if (c := _call_of(raw)) is not None]
            kept += [(c.id or "", c.name, c.arguments) for c in calls if c.name != tool]
        return "".join(texts), kept

    def visible_turns(self, text: str, calls: Sequence[Call]) -> list[dict[str, Any]]:
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [c.raw for c in calls]
        return [message]

    def assistant_spans(self, body: Mapping[str, Any]) -> list[tuple[int, int]]:
        return [(i, i + 1) for i, msg in enumerate(body["messages"]) if msg.get("role") == "assistant"]

    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        return {
            "error": {"message": err.message, "type": err.error_type, "param": err.param, "code": err.code}
        }
