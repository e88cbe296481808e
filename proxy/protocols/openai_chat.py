"""OpenAI chat completions (``POST /v1/chat/completions``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import msgspec

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._base import (
    Adapter,
    PathKey,
    Prompt,
    Segment,
    SegmentKind,
    SSESplitter,
    StreamSniffer,
    Turn,
    Usage,
    decode_json_object,
    digest,
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

    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        return {
            "error": {"message": err.message, "type": err.error_type, "param": err.param, "code": err.code}
        }
