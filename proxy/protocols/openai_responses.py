"""OpenAI Responses (``POST /v1/responses``): input as a string or a list of items.

Segments: ``instructions`` (system), message items (by role; string content or text parts),
``function_call`` arguments (tool calls), and the outputs nocp compresses like chat tool
outputs: ``function_call_output`` and ``custom_tool_call_output`` (a string, or a list of
``input_text`` parts). Everything else (``reasoning`` items and their ``encrypted_content``,
built-in tool items, item references, fields nocp does not know) is kept as it came, in its
place. With ``previous_response_id`` or ``conversation`` the provider holds the earlier items:
only the items of this request are seen (and compressed).

The answer is a run of output items (reasoning, message, function calls). The retrieval tool
loop continues a round with ``previous_response_id`` when the provider stores responses
(``store`` not false), else by resending the items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._adapter import Adapter, Route
from proxy.protocols._answer import Call, ModelTurn, ToolSpec, Usage, add_usage
from proxy.protocols._codec import decode, decode_json_object, digest, encode_json
from proxy.protocols._prompt import PathKey, Prompt, Segment, SegmentKind, Turn
from proxy.protocols._stream import HopStream, SSESplitter, StreamEvent, sse_data

__all__ = ["OpenAIResponsesAdapter", "ResponsesStream"]

_ROLE_KIND: Mapping[str, SegmentKind] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
# Items the model produces (an answer is a run of these); the client's own are the others.
_MODEL_ITEMS = frozenset(
    {
        "reasoning",
        "function_call",
        "custom_tool_call",
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "computer_call",
        "image_generation_call",
        "local_shell_call",
        "shell_call",
        "apply_patch_call",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
    }
)
_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output")
_FINISH_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _item_type(item: Mapping[str, Any]) -> str:
    """An item's type (a message may leave it out)."""
    kind = item.get("type")
    return kind if isinstance(kind, str) else ("message" if "role" in item else "")


def _is_model_item(item: Any) -> bool:
    if not isinstance(item, Mapping):
        return False
    kind = _item_type(item)
    return kind in _MODEL_ITEMS or (kind == "message" and item.get("role") == "assistant")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _call_of(item: Mapping[str, Any]) -> Call:
    args = item.get("arguments", item.get("input", ""))
    return Call(
        name=str(item.get("name", "")),
        arguments=args if isinstance(args, str) else encode_json(args).decode(),
        id=item.get("call_id") if isinstance(item.get("call_id"), str) else None,
        raw=dict(item),
    )


def _calls(items: Sequence[Any]) -> list[Call]:
    return [
        _call_of(i)
        for i in items
        if isinstance(i, Mapping) and _item_type(i) in ("function_call", "custom_tool_call")
    ]


def _to_usage(raw: Any) -> Usage:
    if not isinstance(raw, Mapping):
        return Usage()
    details = raw.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    prompt, completion = raw.get("input_tokens"), raw.get("output_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
        cached_tokens=cached if isinstance(cached, int) else None,
    )


def _items(body: Mapping[str, Any]) -> list[Any]:
    inp = body.get("input")
    if isinstance(inp, list):
        return inp
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    return []


def _strip_tool(response: dict[str, Any], tool: str) -> None:
    """Take ``tool`` out of a response object's echo of the request's tools."""
    tools = response.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and t.get("name") == tool for t in tools):
        response["tools"] = [t for t in tools if not (isinstance(t, dict) and t.get("name") == tool)]


class ResponsesStream(HopStream):
    """A Responses SSE stream: ``event: <type>`` / ``data: {...}`` events, each with a
    ``sequence_number``; item events carry ``output_index``.

    nocp's own ``function_call`` items are taken out (every event of their output index), the
    client's ``output_index`` and ``sequence_number`` are renumbered so its stream stays
    consistent, and a continuing hop drops its ``response.created`` / ``in_progress`` and ends
    with a ``response.completed`` whose ``output`` holds every item the client got."""

    def __init__(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> None:
        super().__init__(tool, drop_usage_chunk=drop_usage_chunk, after=after)
        prev = after if isinstance(after, ResponsesStream) else None
        self._events = SSESplitter()
        self._ours: set[int] = set()  # output indexes of nocp's calls
        self._index: dict[int, int] = {}  # this hop's output index -> the client's
        self._items: dict[int, dict[str, Any]] = {}  # output index -> item (as done)
        self._text: list[str] = []
        self.response: dict[str, Any] | None = None  # the final response object
        self.next_seq: int = prev.next_seq if prev is not None else 0
        self.shown_items: list[dict[str, Any]] = list(prev.shown_items) if prev is not None else []
        self._offset = len(self.shown_items)

    def _event(self, raw: bytes) -> StreamEvent:
        event, parsed = self._parsed(raw, sse_data(raw), (b"response.completed", b"response.incomplete"))
        if parsed is None:
            return event
        kind = parsed.get("type")
        if kind == "response.output_text.delta" and isinstance(parsed.get("delta"), str):
            event.text = parsed["delta"]
            self._text.append(parsed["delta"])
        elif kind == "response.output_item.added":
            item = parsed.get("item")
            index = parsed.get("output_index")
            if isinstance(item, dict) and isinstance(index, int):
                if _item_type(item) in ("function_call", "custom_tool_call"):
                    name = str(item.get("name", ""))
                    event.calls = (name,)
                    if self.tool is not None and name == self.tool:
                        self._ours.add(index)
                if index not in self._ours:
                    self._index[index] = self._offset + len(self._index)
        elif kind == "response.output_item.done":
            item, index = parsed.get("item"), parsed.get("output_index")
            if isinstance(item, dict) and isinstance(index, int):
                self._items[index] = item
        if isinstance(parsed.get("response"), dict) and self.client_id is None:
            rid = parsed["response"].get("id")
            self.client_id = rid if isinstance(rid, str) else None
        if kind in _FINISH_EVENTS:
            event.finishing = True
            response = parsed.get("response")
            if isinstance(response, dict):
                self.response = response
                self.finish_reasons.append(str(response.get("status", kind.rsplit(".", 1)[-1])))
                if isinstance(response.get("usage"), dict):
                    event.usage = True
                    self.usage_raw = response["usage"]
                    self.usage = _to_usage(response["usage"])
        return event

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        return [self._event(raw) for raw in self._events.feed(chunk)]

    def close(self) -> list[StreamEvent]:
        rest = self._events.rest()
        return [self._event(rest)] if rest.strip() else []

    def output(self) -> list[dict[str, Any]]:
        """The answer's items, in order (from the final response, else as each was done)."""
        if self.response is not None and isinstance(self.response.get("output"), list):
            return [i for i in self.response["output"] if isinstance(i, dict)]
        return [self._items[i] for i in sorted(self._items)]

    def calls(self) -> list[Call]:
        return _calls(self.output())

    def text(self) -> str:
        return "".join(self._text)

    def turn(self) -> ModelTurn:
        items = self.output()
        rid = self.response.get("id") if self.response is not None else None
        return ModelTurn(
            message={"role": "assistant", "content": self.text() or None},
            calls=_calls(items),
            usage=self.usage_raw,
            items=items,
            id=rid if isinstance(rid, str) else None,
        )

    def render(self, event: StreamEvent, prior: Mapping[str, Any] | None) -> bytes | None:
        parsed = event.data
        if not isinstance(parsed, dict):
            return event.raw
        kind = parsed.get("type")
        if self.continues and kind in ("response.created", "response.in_progress", "response.queued"):
            return None
        index = parsed.get("output_index")
        if isinstance(index, int):
            if index in self._ours:
                return None
            parsed["output_index"] = self._index.get(index, index)
            if kind == "response.output_item.done" and isinstance(parsed.get("item"), dict):
                self.shown_items.append(parsed["item"])
        if isinstance(parsed.get("response"), dict):
            response = parsed["response"]
            if self.client_id and response.get("id") != self.client_id:
                response["id"] = self.client_id  # one response, as the client's stream began it
            if self.tool is not None:
                _strip_tool(response, self.tool)
        if kind in _FINISH_EVENTS and isinstance(parsed.get("response"), dict):
            response = parsed["response"]
            if self.tool is not None and isinstance(response.get("output"), list):
                kept = [
                    i for i in response["output"] if not (isinstance(i, dict) and i.get("name") == self.tool)
                ]
                response["output"] = [*self.shown_items[: self._offset], *kept]
            if prior and isinstance(response.get("usage"), dict):
                response["usage"] = add_usage(response["usage"], prior)
        if "sequence_number" in parsed:
            parsed["sequence_number"] = self.next_seq
        self.next_seq += 1
        self.emitted += 1
        event_name = kind if isinstance(kind, str) else "message"
        return b"event: " + event_name.encode() + b"\ndata: " + encode_json(parsed) + b"\n\n"


class OpenAIResponsesAdapter(Adapter):
    """Adapter for ``/v1/responses``."""

    protocol: ClassVar[str] = "openai-responses"
    upstream_protocol: ClassVar[str] = "openai"
    routes: ClassVar[tuple[Route, ...]] = (("POST", "/v1/responses"),)
    websocket_paths: ClassVar[tuple[str, ...]] = ("/v1/responses",)
    echoes_tools: ClassVar[bool] = True
    cache_key_field: ClassVar[str | None] = "prompt_cache_key"
    turns_key: ClassVar[str] = "input"

    # ----------------------------------------------------------------- requests

    def parse(self, body: bytes, match_info: Mapping[str, str]) -> dict[str, Any]:
        data = decode_json_object(body)
        model = data.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise BadRequest("'model' must be a string", param="model")
        if not isinstance(model, str) and not data.get("prompt"):
            raise BadRequest("'model' is required", param="model")
        inp = data.get("input")
        if inp is not None and not isinstance(inp, str | list):
            raise BadRequest("'input' must be a string or an array of items", param="input")
        if isinstance(data.get("instructions"), dict | list):
            raise BadRequest("'instructions' must be a string", param="instructions")
        for i, item in enumerate(inp if isinstance(inp, list) else ()):
            if not isinstance(item, dict):
                raise BadRequest(f"input[{i}] must be an object", param=f"input[{i}]")
            kind = _item_type(item)
            if kind == "message":
                content = item.get("content")
                if not isinstance(item.get("role"), str) or not isinstance(content, str | list):
                    raise BadRequest(
                        f"input[{i}] must have a string 'role' and 'content' as a string or an array",
                        param=f"input[{i}]",
                    )
            elif kind in _OUTPUT_ITEMS:
                if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str | list):
                    raise BadRequest(
                        f"input[{i}] must have a string 'call_id' and 'output' as a string or an array",
                        param=f"input[{i}]",
                    )
            elif kind == "function_call" and not (
                isinstance(item.get("name"), str) and isinstance(item.get("arguments"), str)
            ):
                raise BadRequest(f"input[{i}] must have a string 'name' and 'arguments'", param=f"input[{i}]")
        tools = data.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise BadRequest("'tools' must be an array", param="tools")
        return data

    def session_id(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
        """The header; a session key of ``metadata``, ``conversation``, ``prompt_cache_key``
        (Codex sends its conversation id there) or ``user``; else a hash of the instructions
        and the first user input."""
        from proxy.sessions import metadata_session, session_from

        conv = body.get("conversation")
        conv_id = conv.get("id") if isinstance(conv, Mapping) else conv
        explicit = [
            metadata_session(body.get("metadata")),
            conv_id,
            body.get("prompt_cache_key"),
            body.get("user"),
        ]
        first = next(
            (
                i.get("content")
                for i in _items(body)
                if isinstance(i, Mapping) and _item_type(i) == "message" and i.get("role") == "user"
            ),
            None,
        )
        instructions = body.get("instructions")
        anchor = None if first is None and instructions is None else [instructions, first]
        return session_from(headers, explicit, anchor)

    def model(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> str:
        model = body.get("model")
        return model if isinstance(model, str) else ""

    def is_stream(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> bool:
        return body.get("stream") is True

    def summary_message(self, text: str) -> dict[str, Any]:
        return {"role": "user", "content": text}

    def prompt(self, body: Mapping[str, Any], *, turns: bool = True) -> Prompt:
        segs: list[Segment] = []
        turn_list: list[Turn] = []
        if isinstance(body.get("instructions"), str):
            segs.append(
                Segment(
                    kind="system", index=-1, path=("instructions",), text=body["instructions"], role="system"
                )
            )
        inp = body.get("input")
        if isinstance(inp, str):
            segs.append(Segment(kind="user", index=0, path=("input",), text=inp, role="user"))
            if turns:
                turn_list.append(Turn(index=0, role="user", tool_result=False, digest=digest(inp)))
            return Prompt(segments=tuple(segs), turns=tuple(turn_list))
        calls: dict[str, tuple[str, str]] = {}
        previous_model = False
        for i, item in enumerate(inp if isinstance(inp, list) else ()):
            kind = _item_type(item)
            model_item = _is_model_item(item)
            if turns:
                role = str(item.get("role", "assistant" if model_item else "user"))
                turn_list.append(
                    Turn(
                        index=i,
                        role="tool" if kind in _OUTPUT_ITEMS else role,
                        tool_result=kind in _OUTPUT_ITEMS,
                        digest=digest(item),
                        attached=model_item and previous_model,
                    )
                )
            previous_model = model_item
            if kind == "message":
                seg_kind = _ROLE_KIND.get(str(item.get("role")))
                if seg_kind is not None:
                    segs += self._texts(
                        item.get("content"), ("input", i, "content"), seg_kind, i, str(item["role"])
                    )
            elif kind in ("function_call", "custom_tool_call"):
                call = _call_of(item)
                if call.id:
                    calls[call.id] = (call.name, call.arguments)
                field = "arguments" if kind == "function_call" else "input"
                if isinstance(item.get(field), str):
                    segs.append(
                        Segment(
                            kind="tool_call",
                            index=i,
                            path=("input", i, field),
                            text=item[field],
                            role="assistant",
                            tool_name=call.name,
                        )
                    )
            elif kind in _OUTPUT_ITEMS:
                name, args = calls.get(str(item.get("call_id")), (None, ""))
                segs += self._texts(
                    item.get("output"), ("input", i, "output"), "tool_output", i, "tool", name, args
                )
        return Prompt(segments=tuple(segs), turns=tuple(turn_list))

    @staticmethod
    def _texts(
        content: Any,
        base: tuple[PathKey, ...],
        kind: SegmentKind,
        index: int,
        role: str,
        tool: str | None = None,
        args: str = "",
    ) -> list[Segment]:
        parts: list[tuple[tuple[PathKey, ...], str]] = []
        if isinstance(content, str):
            parts.append((base, content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(((*base, j, "text"), part["text"]))
        return [
            Segment(kind=kind, index=index, path=path, text=text, role=role, tool_name=tool, tool_args=args)
            for path, text in parts
        ]

    def apply(self, body: dict[str, Any], before: Prompt, after: Prompt) -> bool:
        if isinstance(body.get("input"), str) and after.rollup is None:
            return super().apply(body, before, after)
        if isinstance(body.get("input"), str):  # a roll-up needs the list form
            body["input"] = [{"role": "user", "content": body["input"]}]
        return super().apply(body, before, after)

    def count_prompt(self, body: Mapping[str, Any], model: str) -> int:
        parts: list[str] = []
        if isinstance(body.get("instructions"), str):
            parts.append(body["instructions"])
        if body.get("tools"):
            parts.append(encode_json(body["tools"]).decode())
        for item in _items(body):
            if isinstance(item, Mapping):
                kind = _item_type(item)
                if kind == "message":
                    parts.append(_text(item.get("content")))
                elif kind in _OUTPUT_ITEMS:
                    parts.append(_text(item.get("output")))
                elif kind in ("function_call", "custom_tool_call"):
                    parts.append(f"{item.get('name', '')} {item.get('arguments', item.get('input', ''))}")
                else:
                    parts.append(encode_json(item).decode())
        return sum(tokens.count(p, model) + 4 for p in parts)

    # ----------------------------------------------------------------- responses

    def usage(self, data: bytes) -> Usage:
        parsed = decode(data)
        return _to_usage(parsed.get("usage")) if isinstance(parsed, dict) else Usage()

    def hop_stream(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> HopStream:
        return ResponsesStream(tool, drop_usage_chunk=drop_usage_chunk, after=after)

    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        return {
            "error": {"message": err.message, "type": err.error_type, "param": err.param, "code": err.code}
        }

    def stream_error(self, err: ProxyHTTPError) -> bytes:
        event = {"type": "error", "code": err.code, "message": err.message, "param": err.param}
        return b"event: error\ndata: " + encode_json(event) + b"\n\n"

    # ----------------------------------------------------------------- WebSocket mode

    def ws_request(self, frame: str) -> bytes | None:
        """A ``response.create`` frame: its fields as a streamed request body."""
        event = decode(frame.encode("utf-8", "surrogatepass"))
        if not isinstance(event, dict) or event.get("type") != "response.create":
            return None
        body = {k: v for k, v in event.items() if k != "type"}
        body["stream"] = True
        return encode_json(body)

    def ws_frame(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "response.create", **{k: v for k, v in body.items() if k != "stream"}}

    def ws_terminal(self, event: Mapping[str, Any]) -> bool:
        return event.get("type") in (*_FINISH_EVENTS, "error")

    # ----------------------------------------------------------------- the tool loop

    def retrieval_blocker(self, body: Mapping[str, Any], tool: str) -> str | None:
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            return "tools is not a list"
        for t in tools or ():
            if isinstance(t, dict) and t.get("name") == tool:
                return f"the client has a tool named {tool}"
        choice = body.get("tool_choice")
        if choice == "none":
            return "tool_choice none"
        if isinstance(choice, dict):
            return "tool_choice forces or restricts tools"
        if body.get("background") is True:
            return "background responses"
        return None

    def intercepts(self, body: Mapping[str, Any], tool: str) -> bool:
        blocker = self.retrieval_blocker(body, tool)
        return blocker is None or blocker.startswith("tool_choice")

    def add_tool(self, body: dict[str, Any], spec: ToolSpec) -> None:
        props = {name: {"type": "string", "description": desc} for name, desc in spec.parameters}
        tool = {
            "type": "function",
            "name": spec.name,
            "description": spec.description,
            "parameters": {
                "type": "object",
                "properties": props,
                "required": list(spec.required),
                "additionalProperties": False,
            },
            "strict": False,
        }
        body["tools"] = [*(body.get("tools") or []), tool]

    def remove_tool(self, body: dict[str, Any], tool: str, *, forbid_calls: bool) -> None:
        tools = [t for t in body.get("tools") or () if not (isinstance(t, dict) and t.get("name") == tool)]
        if tools:
            body["tools"] = tools
        else:
            body.pop("tools", None)
            body.pop("tool_choice", None)
        if forbid_calls and tools and body.get("tool_choice") != "required":
            body["tool_choice"] = "none"

    @staticmethod
    def _response(data: bytes) -> dict[str, Any] | None:
        parsed = decode(data)
        if isinstance(parsed, dict) and isinstance(parsed.get("output"), list):
            return parsed
        return None

    def model_turn(self, data: bytes) -> ModelTurn | None:
        parsed = self._response(data)
        if parsed is None:
            return None
        items = [i for i in parsed["output"] if isinstance(i, dict)]
        usage = parsed.get("usage")
        rid = parsed.get("id")
        return ModelTurn(
            message={"role": "assistant", "content": None},
            calls=_calls(items),
            usage=usage if isinstance(usage, dict) else None,
            items=items,
            id=rid if isinstance(rid, str) else None,
        )

    def client_reply(self, data: bytes, tool: str, prior: Mapping[str, Any] | None) -> bytes:
        parsed = self._response(data)
        if parsed is None:
            return data
        parsed["output"] = [
            i for i in parsed["output"] if not (isinstance(i, dict) and i.get("name") == tool)
        ]
        _strip_tool(parsed, tool)
        if prior and isinstance(parsed.get("usage"), dict):
            parsed["usage"] = add_usage(parsed["usage"], prior)
        return encode_json(parsed)

    def tool_results(self, answers: Sequence[tuple[Call, str]]) -> list[dict[str, Any]]:
        return [
            {"type": "function_call_output", "call_id": call.id or "", "output": text}
            for call, text in answers
        ]

    def follow_up(
        self, body: Mapping[str, Any], turn: ModelTurn, answers: Sequence[tuple[Call, str]]
    ) -> dict[str, Any]:
        results = self.tool_results(answers)
        if body.get("store") is not False and turn.id:
            out = {**body, "previous_response_id": turn.id, "input": results}
            out.pop("conversation", None)
            return out
        items = [
            i
            for i in turn.turns()
            if not (_item_type(i) == "reasoning" and not i.get("encrypted_content"))  # not replayable
        ]
        return {**body, "input": [*_items(body), *items, *results]}

    def chained_from(self, body: Mapping[str, Any]) -> str | None:
        prev = body.get("previous_response_id")
        return prev if isinstance(prev, str) and prev else None

    def chain_to(self, body: dict[str, Any], response_id: str) -> None:
        body["previous_response_id"] = response_id

    def client_view(
        self, turns: Sequence[Mapping[str, Any]], tool: str
    ) -> tuple[str, list[tuple[str, str, str]]]:
        text = "".join(
            _text(i.get("content"))
            for i in turns
            if _item_type(i) == "message" and i.get("role") == "assistant"
        )
        calls = [(c.id or "", c.name, c.arguments) for c in _calls(turns) if c.name != tool]
        return text, calls

    def visible_turns(self, text: str, calls: Sequence[Call]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if text:
            items.append(
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
            )
        return [*items, *(dict(c.raw) for c in calls)]

    def assistant_spans(self, body: Mapping[str, Any]) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        start: int | None = None
        items = _items(body) if isinstance(body.get("input"), list) else []
        for i, item in enumerate(items):
            if _is_model_item(item):
                if start is None:
                    start = i
            elif start is not None:
                spans.append((start, i))
                start = None
        if start is not None:
            spans.append((start, len(items)))
        return spans
