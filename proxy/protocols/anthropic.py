"""Anthropic Messages (``POST /v1/messages``).

Segments: ``system`` (a string or text blocks), the text blocks of user and assistant
messages, and the ``tool_result`` blocks nocp compresses like chat tool outputs (content as a
string or a list of blocks: its text blocks only; ``is_error`` kept). Never touched:
``thinking`` / ``redacted_thinking`` blocks and their signatures, ``tool_use`` inputs,
``server_tool_use`` and its result blocks, citations, documents, images, container uploads,
any block or field nocp does not know, and every ``cache_control`` the client set.

Messages must alternate user / assistant, and a ``tool_result`` answers the ``tool_use`` of
the assistant message before it: the turn rules the adapter enforces on what nocp produced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._adapter import Adapter, Route
from proxy.protocols._answer import Call, ModelTurn, ToolSpec, Usage, add_usage
from proxy.protocols._codec import decode, decode_json_object, digest, encode_json
from proxy.protocols._prompt import PathKey, Prompt, Segment, SegmentKind, Turn
from proxy.protocols._stream import HopStream, SSESplitter, StreamEvent, sse_data

__all__ = ["MAX_BREAKPOINTS", "AnthropicAdapter", "AnthropicStream", "min_cache_tokens"]

MAX_BREAKPOINTS = 4
_ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


# The shortest prefix Anthropic caches, by model (its documented table; first match wins):
# other Haiku models 2,048, everything else 1,024. A shorter prefix is simply not cached.
_MIN_CACHE: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 2048),
)


def min_cache_tokens(model: str) -> int:
    """The shortest prefix Anthropic caches for ``model`` (see ``_MIN_CACHE``)."""
    name = model.lower().rsplit("/", 1)[-1]
    for prefix, minimum in _MIN_CACHE:
        if name.startswith(prefix):
            return minimum
    return 2048 if "haiku" in name else 1024


def _to_usage(raw: Mapping[str, Any] | None) -> Usage:
    """Anthropic's usage as the log counts it: the prompt is input + cache reads + writes."""
    if not isinstance(raw, Mapping):
        return Usage()
    fresh, read, write = (
        raw.get(k) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    out = raw.get("output_tokens")
    ints = [v for v in (fresh, read, write) if isinstance(v, int)]
    details = raw.get("cache_creation")
    hour = details.get("ephemeral_1h_input_tokens") if isinstance(details, Mapping) else None
    return Usage(
        prompt_tokens=sum(ints) if ints else None,
        cached_tokens=read if isinstance(read, int) else (0 if ints else None),
        completion_tokens=out if isinstance(out, int) else None,
        cache_write_tokens=write if isinstance(write, int) else None,
        cache_write_1h_tokens=hour if isinstance(hour, int) else None,
    )


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content) if isinstance(content, list) else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        b["text"]
        for b in _blocks(content)
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _call(block: Mapping[str, Any]) -> Call:
    return Call(
        name=str(block.get("name", "")),
        arguments=_canonical(block.get("input") or {}),
        id=block.get("id") if isinstance(block.get("id"), str) else None,
        raw=dict(block),
    )


def _calls(content: Any) -> list[Call]:
    return [_call(b) for b in _blocks(content) if isinstance(b, dict) and b.get("type") == "tool_use"]


def has_cache_control(body: Mapping[str, Any]) -> bool:
    """True when the client set a ``cache_control`` anywhere (tools, system, messages)."""
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and "cache_control" in tool:
            return True
    if isinstance(body.get("system"), list) and any(
        isinstance(b, dict) and "cache_control" in b for b in body["system"]
    ):
        return True
    return any(
        isinstance(msg, dict)
        and isinstance(msg.get("content"), list)
        and any(isinstance(b, dict) and "cache_control" in b for b in msg["content"])
        for msg in body.get("messages") or ()
    )


class AnthropicStream(HopStream):
    """A Messages SSE stream: ``message_start``, per block ``content_block_start`` /
    ``_delta`` / ``_stop``, ``message_delta`` (stop reason, usage), ``message_stop``, ``ping``.

    nocp's own ``tool_use`` blocks are taken out (every event of their index), the client's
    block indexes renumbered so its stream stays consistent, a ``tool_use`` stop reason left
    without tool use becomes ``end_turn``, and a continuing hop drops its ``message_start``."""

    def __init__(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> None:
        super().__init__(tool, drop_usage_chunk=drop_usage_chunk, after=after)
        prev = after if isinstance(after, AnthropicStream) else None
        self._events = SSESplitter()
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self._ours: set[int] = set()
        self._index: dict[int, int] = {}
        self.shown_blocks: int = prev.shown_blocks if prev is not None else 0
        self._offset = self.shown_blocks
        self._usage: dict[str, Any] = {}
        self.message_id: str | None = prev.message_id if prev is not None else None

    def _event(self, raw: bytes) -> StreamEvent:
        event, parsed = self._parsed(raw, sse_data(raw), (b'"message_start"', b'"message_delta"'))
        if parsed is None:
            return event
        kind = parsed.get("type")
        index = parsed.get("index")
        if kind == "message_start" and isinstance(parsed.get("message"), dict):
            msg = parsed["message"]
            if self.message_id is None and isinstance(msg.get("id"), str):
                self.message_id = msg["id"]
            if isinstance(msg.get("usage"), dict):
                self._usage.update(msg["usage"])
                self._set_usage()
                event.usage = True
        elif (
            kind == "content_block_start"
            and isinstance(index, int)
            and isinstance(parsed.get("content_block"), dict)
        ):
            block = dict(parsed["content_block"])
            self._blocks[index] = block
            if block.get("type") == "tool_use":
                name = str(block.get("name", ""))
                event.calls = (name,)
                if self.tool is not None and name == self.tool:
                    self._ours.add(index)
                self._json[index] = []
            if index not in self._ours:
                self._index[index] = self._offset + len(self._index)
            if block.get("type") == "text" and block.get("text"):
                event.text = str(block["text"])
        elif (
            kind == "content_block_delta" and isinstance(index, int) and isinstance(parsed.get("delta"), dict)
        ):
            self._delta(index, parsed["delta"], event)
        elif kind == "message_delta":
            event.finishing = True
            delta = parsed.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.finish_reasons.append(delta["stop_reason"])
            if isinstance(parsed.get("usage"), dict):
                self._usage.update({k: v for k, v in parsed["usage"].items() if v is not None})
                self._set_usage()
                event.usage = True
        return event

    def _delta(self, index: int, delta: dict[str, Any], event: StreamEvent) -> None:
        block = self._blocks.setdefault(index, {"type": "text", "text": ""})
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            block["text"] = str(block.get("text", "")) + delta["text"]
            event.text = delta["text"]
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            self._json.setdefault(index, []).append(delta["partial_json"])
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            block["thinking"] = str(block.get("thinking", "")) + delta["thinking"]
        elif kind == "signature_delta" and isinstance(delta.get("signature"), str):
            block["signature"] = str(block.get("signature", "")) + delta["signature"]
        elif kind == "citations_delta" and isinstance(delta.get("citation"), dict):
            block.setdefault("citations", []).append(delta["citation"])

    def _set_usage(self) -> None:
        self.usage_raw = dict(self._usage)
        self.usage = _to_usage(self._usage)

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        return [self._event(raw) for raw in self._events.feed(chunk)]

    def close(self) -> list[StreamEvent]:
        rest = self._events.rest()
        return [self._event(rest)] if rest.strip() else []

    def content(self) -> list[dict[str, Any]]:
        """The answer's blocks as the model gave them (tool inputs parsed)."""
        out = []
        for index in sorted(self._blocks):
            block = dict(self._blocks[index])
            if block.get("type") in ("tool_use", "server_tool_use") and index in self._json:
                raw = "".join(self._json[index])
                try:
                    block["input"] = json.loads(raw) if raw else block.get("input") or {}
                except ValueError:
                    block["input"] = {}
            out.append(block)
        return out

    def calls(self) -> list[Call]:
        return _calls(self.content())

    def text(self) -> str:
        return _text(self.content())

    def turn(self) -> ModelTurn:
        content = self.content()
        return ModelTurn(
            message={"role": "assistant", "content": content}, calls=_calls(content), usage=self.usage_raw
        )

    def render(self, event: StreamEvent, prior: Mapping[str, Any] | None) -> bytes | None:
        parsed = event.data
        if not isinstance(parsed, dict):
            return event.raw
        kind = parsed.get("type")
        if self.continues and kind == "message_start":
            return None
        changed = False
        index = parsed.get("index")
        if isinstance(index, int):
            if index in self._ours:
                return None
            new = self._index.get(index, index)
            if new != index:
                parsed["index"] = new
                changed = True
            if kind == "content_block_stop":
                self.shown_blocks += 1
        if kind == "message_delta":
            delta = parsed.get("delta")
            only_ours = bool(self._ours) and all(
                i in self._ours for i, b in self._blocks.items() if b.get("type") == "tool_use"
            )
            if isinstance(delta, dict) and delta.get("stop_reason") == "tool_use" and only_ours:
                delta["stop_reason"] = "end_turn"
                changed = True
            if prior:
                parsed["usage"] = add_usage(self._usage, prior)
                changed = True
        if kind == "message_start" and prior and isinstance(parsed.get("message"), dict):
            usage = parsed["message"].get("usage")
            if isinstance(usage, dict):
                parsed["message"]["usage"] = add_usage(usage, prior)
                changed = True
        self.emitted += 1
        if not changed:
            return event.raw
        return b"event: " + str(kind).encode() + b"\ndata: " + encode_json(parsed) + b"\n\n"


class AnthropicAdapter(Adapter):
    """Adapter for ``/v1/messages``."""

    protocol: ClassVar[str] = "anthropic"
    upstream_protocol: ClassVar[str] = "anthropic"
    routes: ClassVar[tuple[Route, ...]] = (("POST", "/v1/messages"),)
    caches_at_breakpoints: ClassVar[bool] = True
    turns_key: ClassVar[str] = "messages"
    alternating_turns: ClassVar[bool] = True

    # ----------------------------------------------------------------- requests

    def parse(self, body: bytes, match_info: Mapping[str, str]) -> dict[str, Any]:
        data = decode_json_object(body)
        if not isinstance(data.get("model"), str) or not data["model"]:
            raise BadRequest("model: Field required", param="model")
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise BadRequest("messages: Field required (an array)", param="messages")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
                raise BadRequest(
                    f"messages.{i}.role: Input should be 'user' or 'assistant'", param="messages"
                )
            content = msg.get("content")
            if not isinstance(content, str | list):
                raise BadRequest(
                    f"messages.{i}.content: Input should be a string or an array", param="messages"
                )
            for j, block in enumerate(content if isinstance(content, list) else ()):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise BadRequest(
                        f"messages.{i}.content.{j}: a block needs a string 'type'", param="messages"
                    )
                if block["type"] == "tool_result" and not isinstance(block.get("content", ""), str | list):
                    raise BadRequest(
                        f"messages.{i}.content.{j}.content: Input should be a string or an array",
                        param="messages",
                    )
        system = data.get("system")
        if system is not None and not isinstance(system, str | list):
            raise BadRequest("system: Input should be a string or an array of text blocks", param="system")
        tools = data.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise BadRequest("tools: Input should be an array", param="tools")
        return data

    def session_id(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
        """The header; ``metadata.user_id`` (Claude Code puts its session there); else a hash
        of the system prompt and the first user message."""
        from proxy.sessions import metadata_session, session_from

        meta = body.get("metadata")
        user = meta.get("user_id") if isinstance(meta, Mapping) else None
        first = next(
            (
                m.get("content")
                for m in body.get("messages") or ()
                if isinstance(m, Mapping) and m.get("role") == "user"
            ),
            None,
        )
        system = body.get("system")
        anchor = None if first is None and system is None else [system, first]
        return session_from(headers, [metadata_session(meta), user], anchor)

    def model(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> str:
        return str(body["model"])

    def is_stream(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> bool:
        return body.get("stream") is True

    def summary_message(self, text: str) -> dict[str, Any]:
        return {"role": "user", "content": text}

    def prompt(self, body: Mapping[str, Any], *, turns: bool = True) -> Prompt:
        segs: list[Segment] = []
        system = body.get("system")
        if isinstance(system, str):
            segs.append(Segment(kind="system", index=-1, path=("system",), text=system, role="system"))
        elif isinstance(system, list):
            for j, block in enumerate(system):
                if (
                    isinstance(block, dict)
                    and block.get("type") == "text"
                    and isinstance(block.get("text"), str)
                ):
                    segs.append(
                        Segment(
                            kind="system",
                            index=-1,
                            path=("system", j, "text"),
                            text=block["text"],
                            role="system",
                        )
                    )
        calls: dict[str, tuple[str, str]] = {}
        turn_list: list[Turn] = []
        for i, msg in enumerate(body["messages"]):
            role = str(msg["role"])
            content = msg.get("content")
            blocks = content if isinstance(content, list) else []
            if turns:
                is_result = any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
                turn_list.append(Turn(index=i, role=role, tool_result=is_result, digest=digest(msg)))
            kind: SegmentKind = "assistant" if role == "assistant" else "user"
            if isinstance(content, str):
                segs.append(
                    Segment(kind=kind, index=i, path=("messages", i, "content"), text=content, role=role)
                )
                continue
            for j, block in enumerate(blocks):
                btype = block.get("type") if isinstance(block, dict) else None
                if btype == "text" and isinstance(block.get("text"), str):
                    segs.append(
                        Segment(
                            kind=kind,
                            index=i,
                            path=("messages", i, "content", j, "text"),
                            text=block["text"],
                            role=role,
                        )
                    )
                elif btype == "tool_use":
                    call = _call(block)
                    if call.id:
                        calls[call.id] = (call.name, call.arguments)
                elif btype == "tool_result":
                    name, args = calls.get(str(block.get("tool_use_id")), (None, ""))
                    segs += self._result_segments(
                        block.get("content"), ("messages", i, "content", j, "content"), i, name, args
                    )
        return Prompt(segments=tuple(segs), turns=tuple(turn_list))

    @staticmethod
    def _result_segments(
        content: Any, base: tuple[PathKey, ...], index: int, tool: str | None, args: str
    ) -> list[Segment]:
        parts: list[tuple[tuple[PathKey, ...], str]] = []
        if isinstance(content, str):
            parts.append((base, content))
        elif isinstance(content, list):
            for k, block in enumerate(content):
                if (
                    isinstance(block, dict)
                    and block.get("type") == "text"
                    and isinstance(block.get("text"), str)
                ):
                    parts.append(((*base, k, "text"), block["text"]))
        return [
            Segment(
                kind="tool_output",
                index=index,
                path=path,
                text=text,
                role="user",
                tool_name=tool,
                tool_args=args,
            )
            for path, text in parts
        ]

    def merge_turns(self, prev: dict[str, Any], nxt: dict[str, Any]) -> dict[str, Any]:
        """Blocks joined in order (Messages must alternate), tool results first in a user
        message, as the API requires."""
        blocks = [*_blocks(prev.get("content")), *_blocks(nxt.get("content"))]
        if nxt.get("role") == "user":
            results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
            blocks = [
                *results,
                *(b for b in blocks if not (isinstance(b, dict) and b.get("type") == "tool_result")),
            ]
        return {**prev, "content": blocks}

    def count_prompt(self, body: Mapping[str, Any], model: str) -> int:
        return tokens.count(prefix_text(body, len(body.get("messages") or ())), model)

    def claims(self, path: str, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        return path.startswith("/v1/messages") or "anthropic-version" in headers

    # ----------------------------------------------------------------- responses

    def usage(self, data: bytes) -> Usage:
        parsed = decode(data)
        return _to_usage(parsed.get("usage")) if isinstance(parsed, dict) else Usage()

    def hop_stream(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> HopStream:
        return AnthropicStream(tool, drop_usage_chunk=drop_usage_chunk, after=after)

    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": err.message}}

    def stream_error(self, err: ProxyHTTPError) -> bytes:
        return b"event: error\ndata: " + encode_json(self.error_body(err)) + b"\n\n"

    # ----------------------------------------------------------------- prompt caching

    def auto_cache(self, body: dict[str, Any], model: str, ttl: str) -> int:
        """Add ``cache_control`` breakpoints to a request that has none: the end of the tools,
        the end of the system prompt, and the last message (a moving breakpoint: the next turn
        reads what this one wrote); none whose prefix is below the model's minimum. Returns
        how many were added."""
        if has_cache_control(body):
            return 0
        control: dict[str, Any] = {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}
        minimum = min_cache_tokens(model)
        added = 0
        tools = body.get("tools")
        if (
            isinstance(tools, list)
            and tools
            and isinstance(tools[-1], dict)
            and _at_least(encode_json(tools).decode(), minimum, model)
        ):
            tools[-1] = {**tools[-1], "cache_control": control}
            added += 1
        system = body.get("system")
        if system and _at_least(prefix_text(body, 0), minimum, model):
            blocks = _blocks(system)
            if blocks and isinstance(blocks[-1], dict) and blocks[-1].get("type") == "text":
                blocks[-1] = {**blocks[-1], "cache_control": control}
                body["system"] = blocks
                added += 1
        messages = body.get("messages") or []
        if messages and _at_least(prefix_text(body, len(messages)), minimum, model):
            last = messages[-1]
            blocks = _blocks(last.get("content"))
            cacheable = [
                k
                for k, b in enumerate(blocks)
                if isinstance(b, dict) and b.get("type") not in ("thinking", "redacted_thinking")
            ]
            if cacheable and added < MAX_BREAKPOINTS:
                k = cacheable[-1]
                blocks[k] = {**blocks[k], "cache_control": control}
                messages[-1] = {**last, "content": blocks}
                added += 1
        return added

    # ----------------------------------------------------------------- the tool loop

    def retrieval_blocker(self, body: Mapping[str, Any], tool: str) -> str | None:
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            return "tools is not a list"
        for t in tools or ():
            if isinstance(t, dict) and t.get("name") == tool:
                return f"the client has a tool named {tool}"
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "none":
            return "tool_choice none"
        if isinstance(choice, dict) and choice.get("type") == "tool":
            return "tool_choice forces a tool"
        return None

    def intercepts(self, body: Mapping[str, Any], tool: str) -> bool:
        blocker = self.retrieval_blocker(body, tool)
        return blocker is None or blocker.startswith("tool_choice")

    def add_tool(self, body: dict[str, Any], spec: ToolSpec) -> None:
        props = {name: {"type": "string", "description": desc} for name, desc in spec.parameters}
        tool = {
            "name": spec.name,
            "description": spec.description,
            "input_schema": {"type": "object", "properties": props, "required": list(spec.required)},
        }
        body["tools"] = [*(body.get("tools") or []), tool]

    def remove_tool(self, body: dict[str, Any], tool: str, *, forbid_calls: bool) -> None:
        tools = [t for t in body.get("tools") or () if not (isinstance(t, dict) and t.get("name") == tool)]
        if tools:
            body["tools"] = tools
        else:
            body.pop("tools", None)
            body.pop("tool_choice", None)
        choice = body.get("tool_choice")
        if forbid_calls and tools and not (isinstance(choice, dict) and choice.get("type") == "any"):
            body["tool_choice"] = {"type": "none"}

    @staticmethod
    def _message(data: bytes) -> dict[str, Any] | None:
        parsed = decode(data)
        if (
            isinstance(parsed, dict)
            and parsed.get("type") == "message"
            and isinstance(parsed.get("content"), list)
        ):
            return parsed
        return None

    def model_turn(self, data: bytes) -> ModelTurn | None:
        parsed = self._message(data)
        if parsed is None:
            return None
        usage = parsed.get("usage")
        return ModelTurn(
            message={"role": "assistant", "content": parsed["content"]},
            calls=_calls(parsed["content"]),
            usage=usage if isinstance(usage, dict) else None,
        )

    def client_reply(self, data: bytes, tool: str, prior: Mapping[str, Any] | None) -> bytes:
        parsed = self._message(data)
        if parsed is None:
            return data
        content = parsed["content"]
        kept = [
            b
            for b in content
            if not (isinstance(b, dict) and b.get("type") == "tool_use" and b.get("name") == tool)
        ]
        if len(kept) != len(content):
            parsed["content"] = kept
            if parsed.get("stop_reason") == "tool_use" and not any(
                isinstance(b, dict) and b.get("type") == "tool_use" for b in kept
            ):
                parsed["stop_reason"] = "end_turn"
        if prior and isinstance(parsed.get("usage"), dict):
            parsed["usage"] = add_usage(parsed["usage"], prior)
        return encode_json(parsed)

    def tool_results(self, answers: Sequence[tuple[Call, str]]) -> list[dict[str, Any]]:
        blocks = [
            {"type": "tool_result", "tool_use_id": call.id or "", "content": text} for call, text in answers
        ]
        return [{"role": "user", "content": blocks}] if blocks else []

    def client_view(
        self, turns: Sequence[Mapping[str, Any]], tool: str
    ) -> tuple[str, list[tuple[str, str, str]]]:
        text = "".join(_text(m.get("content")) for m in turns)
        calls = [
            (c.id or "", c.name, c.arguments)
            for m in turns
            for c in _calls(m.get("content"))
            if c.name != tool
        ]
        return text, calls

    def visible_turns(self, text: str, calls: Sequence[Call]) -> list[dict[str, Any]]:
        blocks: list[Any] = [{"type": "text", "text": text}] if text else []
        return [{"role": "assistant", "content": [*blocks, *(dict(c.raw) for c in calls)]}]

    def assistant_spans(self, body: Mapping[str, Any]) -> list[tuple[int, int]]:
        return [(i, i + 1) for i, msg in enumerate(body["messages"]) if msg.get("role") == "assistant"]


def _at_least(text: str, n: int, model: str) -> bool:
    """True when ``text`` has at least ``n`` tokens, counting no more of it than needed."""
    if len(text) < n:  # a token is at least one character
        return False
    step, count = 4 * n, 0
    for start in range(0, len(text), step):
        count += tokens.count(text[start : start + step], model)
        if count >= n:
            return True
    return False


def prefix_text(body: Mapping[str, Any], messages: int) -> str:
    """The text of a request up to message ``messages`` (exclusive), in Anthropic's rendering
    order: tools, system, messages. For estimating prefix sizes (o200k, an approximation)."""
    parts: list[str] = []
    if body.get("tools"):
        parts.append(encode_json(body["tools"]).decode())
    system = body.get("system")
    if system:
        parts.append(system if isinstance(system, str) else _text(system))
    for msg in (body.get("messages") or [])[:messages]:
        content = msg.get("content") if isinstance(msg, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
        else:
            for block in _blocks(content):
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "tool_result":
                    parts.append(_text(block.get("content")))
                elif block.get("type") == "thinking":
                    parts.append(str(block.get("thinking", "")))
                else:
                    parts.append(encode_json(block).decode())
    return "\n".join(parts)
