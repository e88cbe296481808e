"""The OpenAI Responses API as the fake upstream speaks it: request checking, the conversation
items a request puts before the model, token billing, and Response / stream-event / error
objects shaped like OpenAI's.

Billing is a documented approximation (OpenAI does not publish how it renders Responses items).
The prompt is the tool definitions' compact JSON, then ``instructions``, then every item of the
conversation (with ``previous_response_id``: the earlier response's whole input and output
first), each item framed like a chat message (``TOKENS_PER_MESSAGE`` framing tokens), counted
with ``compressors.tokens`` (o200k for current models), plus ``REPLY_PRIMING`` tokens:

* ``message``: its role and the text of its text / refusal parts (images, files and audio are
  not counted; providers bill them by size);
* ``function_call`` / ``custom_tool_call``: the name and the arguments / input;
* ``function_call_output`` / ``custom_tool_call_output``: the output text;
* ``reasoning``: the summary and reasoning texts (``encrypted_content`` is not billed);
* any other item (built-in tool calls and their outputs): its compact JSON without ``id`` and
  ``status``.

Output tokens are the reply text, each call's name and arguments (or input), and the reasoning
tokens: the fake reasoning text's tokens, or a replayed reasoning item's texts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from compressors import tokens
from compressors.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE
from proxy.testing._common import as_mapping, dumps, dumps_str, split_json, split_words
from proxy.testing._script import FakeTurn

__all__ = [
    "ApiError",
    "Conversation",
    "input_items_page",
    "invalid_reason",
    "last_user_text",
    "normalize_input",
    "output_items",
    "output_tokens",
    "prompt_ids",
    "prompt_tokens",
    "response_object",
    "sse",
    "stream_events",
    "usage",
    "ws_error",
]

ROLES: Final = ("user", "system", "developer", "assistant")
PART_TYPES: Final = ("input_text", "output_text", "input_image", "input_file", "input_audio", "refusal")
TRUNCATIONS: Final = ("auto", "disabled")
ENCRYPTED_PREFIX: Final = "gAAAAA"  # what OpenAI's Fernet-style encrypted_content starts with

# Ids that no real token has, standing for the framing tokens of items and the reply priming.
_FRAME: Final = -1
_PRIMING: Final = -3
# Id prefixes of items sent without an id (OpenAI assigns one; the fake invents these).
_ID_PREFIX: Final = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "reasoning": "rs",
}

NewId = Callable[[str, int], str]
"""``new_id(prefix, index)`` -> a fresh item id such as ``msg_...``."""


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """A request the Responses API refuses: HTTP ``status`` and OpenAI's error fields."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def fields(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"message": self.message, "type": kind, "param": self.param, "code": self.code}

    def body(self) -> dict[str, Any]:
        """``{"error": {message, type, param, code}}`` as the HTTP endpoints send it."""
        return {"error": self.fields()}


def ws_error(status: int, error: Mapping[str, Any]) -> dict[str, Any]:
    """The ``error`` event a Responses WebSocket sends instead of an HTTP error response."""
    return {"type": "error", "status": status, "error": dict(error)}


def not_found(rid: str) -> ApiError:
    return ApiError(404, f"Response with id '{rid}' not found.")


def previous_not_found(rid: str) -> ApiError:
    return ApiError(
        400,
        f"Previous response with id '{rid}' not found.",
        "previous_response_id",
        "previous_response_not_found",
    )


# ----------------------------------------------------------------------------- request checks


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _bad_type(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        400, f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.", param
    )


def _missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param)


def _bad_value(param: str, value: Any, allowed: Sequence[str]) -> ApiError:
    quoted = [f"'{a}'" for a in allowed]
    listing = ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    return ApiError(400, f"Invalid value: '{value}'. Supported values are: {listing}.", param)


def _check_str(item: Mapping[str, Any], key: str, path: str) -> None:
    if key not in item:
        raise _missing(f"{path}.{key}")
    if not isinstance(item[key], str):
        raise _bad_type(f"{path}.{key}", "a string", item[key])


def _check_parts(content: Any, path: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad_type(path, "one of a string or array of objects", content)
    for j, part in enumerate(content):
        ppath = f"{path}[{j}]"
        if not isinstance(part, Mapping):
            raise _bad_type(ppath, "an object", part)
        ptype = part.get("type")
        if ptype not in PART_TYPES:
            raise _bad_value(f"{ppath}.type", ptype, PART_TYPES)
        if ptype in ("input_text", "output_text"):
            _check_str(part, "text", ppath)


def _check_item(item: Any, path: str) -> None:
    if not isinstance(item, Mapping):
        raise _bad_type(path, "an object", item)
    kind = item.get("type", "message" if "role" in item else None)
    if not isinstance(kind, str):
        raise _missing(f"{path}.type") if kind is None else _bad_type(f"{path}.type", "a string", kind)
    if kind == "message":
        if item.get("role") not in ROLES:
            raise _bad_value(f"{path}.role", item.get("role"), ROLES)
        if "content" not in item:
            raise _missing(f"{path}.content")
        _check_parts(item["content"], f"{path}.content")
    elif kind in ("function_call", "custom_tool_call"):
        for key in ("call_id", "name", "arguments" if kind == "function_call" else "input"):
            _check_str(item, key, path)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        _check_str(item, "call_id", path)
        if "output" not in item:
            raise _missing(f"{path}.output")
        _check_parts(item["output"], f"{path}.output")
    elif kind == "reasoning":
        if not isinstance(item.get("summary"), list):
            raise (
                _missing(f"{path}.summary")
                if "summary" not in item
                else _bad_type(f"{path}.summary", "an array", item["summary"])
            )
    elif kind == "item_reference":
        _check_str(item, "id", path)


_OPTIONAL: Final[tuple[tuple[str, type | tuple[type, ...], str], ...]] = (
    ("instructions", str, "a string"),
    ("previous_response_id", str, "a string"),
    ("store", bool, "a boolean"),
    ("stream", bool, "a boolean"),
    ("background", bool, "a boolean"),
    ("parallel_tool_calls", bool, "a boolean"),
    ("include", list, "an array"),
    ("metadata", Mapping, "an object"),
    ("reasoning", Mapping, "an object"),
    ("text", Mapping, "an object"),
    ("prompt_cache_key", str, "a string"),
    ("tool_choice", (str, Mapping), "one of a string or object"),
)


def invalid_reason(payload: Any) -> ApiError | None:
    """Why ``payload`` is not a Responses create request we can answer (``None`` if it is)."""
    if not isinstance(payload, Mapping):
        return ApiError(400, "The request body must be a JSON object.")
    try:
        if not isinstance(payload.get("model"), str):
            raise (
                _missing("model")
                if "model" not in payload
                else _bad_type("model", "a string", payload["model"])
            )
        for key, types, expected in _OPTIONAL:
            value = payload.get(key)
            if value is not None and not isinstance(value, types):
                raise _bad_type(key, expected, value)
        if payload.get("truncation") not in (None, *TRUNCATIONS):
            raise _bad_value("truncation", payload["truncation"], TRUNCATIONS)
        tools = payload.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise _bad_type("tools", "an array", tools)
            for i, tool in enumerate(tools):
                if not isinstance(tool, Mapping) or not isinstance(tool.get("type"), str):
                    raise _missing(f"tools[{i}].type")
                if tool["type"] == "function":
                    _check_str(tool, "name", f"tools[{i}]")
        items = payload.get("input")
        if items is None:
            if payload.get("previous_response_id") is None:
                raise _missing("input")
        elif isinstance(items, list):
            for i, item in enumerate(items):
                _check_item(item, f"input[{i}]")
        elif not isinstance(items, str):
            raise _bad_type("input", "one of a string or array of input items", items)
    except ApiError as exc:
        return exc
    return None


# ------------------------------------------------------------------------ conversation items


def _text_parts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            p = as_mapping(part)
            if p is None:
                continue
            text = p.get("text", p.get("refusal"))
            if isinstance(text, str):
                out.append(text)
    return out


def _item_type(item: Mapping[str, Any]) -> str:
    return str(item.get("type", "message"))


def normalize_input(
    payload: Mapping[str, Any], new_id: NewId, lookup: Callable[[str], Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """This request's own input as stored items: a string input becomes a user message, string
    contents become ``input_text`` (``output_text`` for assistant) parts, items sent without an id
    get one, and ``item_reference`` items are replaced by the item they name (``lookup``)."""
    raw = payload.get("input")
    items: list[Any] = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or ())
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = _item_type(item)
        if kind == "item_reference":
            found = lookup(item["id"])
            if found is None:
                raise ApiError(400, f"Item with id '{item['id']}' not found.", "input")
            out.append(dict(found))
            continue
        norm = {"id": item.get("id") or new_id(_ID_PREFIX.get(kind, "item"), i), "type": kind}
        norm.update((k, v) for k, v in item.items() if k not in ("id", "type"))
        if kind == "message" and isinstance(norm.get("content"), str):
            part = "output_text" if norm.get("role") == "assistant" else "input_text"
            norm["content"] = [{"type": part, "text": norm["content"]}]
        out.append(norm)
    return out


def check_tool_outputs(items: Sequence[Mapping[str, Any]]) -> None:
    """Every tool output must answer a call earlier in the conversation, as OpenAI checks."""
    calls: set[str] = set()
    for item in items:
        kind = _item_type(item)
        if kind in ("function_call", "custom_tool_call"):
            calls.add(str(item.get("call_id")))
        elif kind in ("function_call_output", "custom_tool_call_output") and item.get("call_id") not in calls:
            what = "function call" if kind == "function_call_output" else "custom tool call"
            raise ApiError(
                400, f"No tool call found for {what} output with call_id {item.get('call_id')}.", "input"
            )


def last_user_text(items: Sequence[Mapping[str, Any]]) -> str:
    for item in reversed(items):
        if _item_type(item) == "message" and item.get("role") == "user":
            texts = _text_parts(item.get("content"))
            if texts:
                return " ".join(texts)
    return ""


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the model sees for one request: tool definitions, instructions and all items."""

    tools: Any
    instructions: str | None
    items: tuple[Mapping[str, Any], ...]


def _billed_texts(item: Mapping[str, Any]) -> list[str]:
    kind = _item_type(item)
    if kind == "message":
        role = item.get("role")
        return ([role] if isinstance(role, str) else []) + _text_parts(item.get("content"))
    if kind in ("function_call", "custom_tool_call"):
        rest = item.get("arguments" if kind == "function_call" else "input")
        return [str(item.get("name", "")), rest if isinstance(rest, str) else dumps_str(rest)]
    if kind in ("function_call_output", "custom_tool_call_output"):
        return _text_parts(item.get("output"))
    if kind == "reasoning":
        return _text_parts(item.get("summary")) + _text_parts(item.get("content"))
    return [dumps_str({k: v for k, v in item.items() if k not in ("id", "status")})]


def _segments(conv: Conversation) -> Iterable[str | int]:
    """The prompt in order: texts, and ints standing for that many framing tokens."""
    if conv.tools:
        yield dumps_str(conv.tools)
    if conv.instructions is not None:
        yield TOKENS_PER_MESSAGE
        yield conv.instructions
    for item in conv.items:
        yield TOKENS_PER_MESSAGE
        yield from _billed_texts(item)


def prompt_tokens(conv: Conversation, model: str) -> int:
    total = REPLY_PRIMING
    for seg in _segments(conv):
        total += seg if isinstance(seg, int) else tokens.count(seg, model)
    return total


def prompt_ids(conv: Conversation, model: str) -> list[int]:
    """The prompt as the token sequence the provider would cache (length = ``prompt_tokens``)."""
    enc = tokens.get_encoding(tokens.encoding_for_model(model))
    ids: list[int] = []
    for seg in _segments(conv):
        ids += [_FRAME] * seg if isinstance(seg, int) else enc.encode_ordinary(seg)
    return ids + [_PRIMING] * REPLY_PRIMING


# ------------------------------------------------------------------------------- the answer


def reasoning_text(payload: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> str | None:
    """The fake model's hidden reasoning, when the request asks for reasoning (effort not "none")."""
    reasoning = as_mapping(payload.get("reasoning"))
    if reasoning is None or reasoning.get("effort") == "none":
        return None
    return "Considering the request: " + last_user_text(items)[:60]


def encrypted(text: str) -> str:
    """A fake ``encrypted_content``: opaque-looking, deterministic, never billed."""
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def output_items(
    turn: FakeTurn, new_id: NewId, *, thought: str | None, summary: bool, include_encrypted: bool
) -> list[dict[str, Any]]:
    """The response's ``output``: replayed Responses items verbatim (ids filled in), else an
    optional reasoning item, the message (when there is text) and one ``function_call`` per call."""
    if turn.responses_items is not None:
        out = []
        for i, raw in enumerate(turn.responses_items):
            item = dict(raw)
            kind = _item_type(item)
            item.setdefault("id", new_id(_ID_PREFIX.get(kind, "item"), i))
            item.setdefault("type", kind)
            if kind in ("message", "function_call", "custom_tool_call"):
                item.setdefault("status", "completed")
            out.append(item)
        return out
    items: list[dict[str, Any]] = []
    if thought is not None:
        rs: dict[str, Any] = {"id": new_id("rs", 0), "type": "reasoning", "summary": []}
        if summary:
            rs["summary"] = [{"type": "summary_text", "text": thought}]
        if include_encrypted:
            rs["encrypted_content"] = encrypted(thought)
        items.append(rs)
    if turn.text is not None:
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": turn.text}
        items.append(
            {
                "id": new_id("msg", 0),
                "type": "message",
                "status": "completed",
                "content": [part],
                "role": "assistant",
            }
        )
    for i, c in enumerate(turn.calls):
        items.append(
            {
                "id": new_id("fc", i),
                "type": "function_call",
                "status": "completed",
                "arguments": c.arguments,
                "call_id": c.id,
                "name": c.name,
            }
        )
    return items


def output_tokens(items: Sequence[Mapping[str, Any]], model: str, thought: str | None) -> tuple[int, int]:
    """(output tokens, of which reasoning tokens) of ``items``."""
    visible = reasoning = 0
    for item in items:
        kind = _item_type(item)
        if kind == "reasoning":
            texts = [thought] if thought is not None else _billed_texts(item)
            reasoning += sum(tokens.count(t, model) for t in texts)
        else:
            texts = _billed_texts(item)[1:] if kind == "message" else _billed_texts(item)
            visible += sum(tokens.count(t, model) for t in texts)
    return visible + reasoning, reasoning


def usage(prompt: int, cached: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def response_object(
    payload: Mapping[str, Any],
    *,
    rid: str,
    created: int,
    output: list[dict[str, Any]],
    usage: Mapping[str, Any] | None,
    status: str = "completed",
) -> dict[str, Any]:
    """A ``response`` object echoing the request's settings, with OpenAI's defaults."""

    def get(key: str, default: Any = None) -> Any:
        value = payload.get(key)
        return default if value is None else value

    reasoning = {"effort": None, "summary": None}
    reasoning.update(as_mapping(payload.get("reasoning")) or {})
    text: dict[str, Any] = {"format": {"type": "text"}, "verbosity": "medium"}
    text.update(as_mapping(payload.get("text")) or {})
    done = status == "completed"
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": get("background", False),
        "completed_at": created if done else None,
        "error": None,
        "incomplete_details": None,
        "instructions": get("instructions"),
        "max_output_tokens": get("max_output_tokens"),
        "max_tool_calls": get("max_tool_calls"),
        "model": payload["model"],
        "output": output,
        "parallel_tool_calls": get("parallel_tool_calls", True),
        "previous_response_id": get("previous_response_id"),
        "prompt_cache_key": get("prompt_cache_key"),
        "prompt_cache_retention": get("prompt_cache_retention"),
        "reasoning": reasoning,
        "safety_identifier": get("safety_identifier"),
        "service_tier": "default",
        "store": get("store", True),
        "temperature": get("temperature", 1.0),
        "text": text,
        "tool_choice": get("tool_choice", "auto"),
        "tools": get("tools", []),
        "top_logprobs": get("top_logprobs", 0),
        "top_p": get("top_p", 1.0),
        "truncation": get("truncation", "disabled"),
        "usage": dict(usage) if usage is not None else None,
        "user": get("user"),
        "metadata": get("metadata", {}),
    }


# ---------------------------------------------------------------------------------- streaming

_Event = tuple[str, dict[str, Any]]


def _message_events(item: Mapping[str, Any], idx: int) -> list[_Event]:
    evs: list[_Event] = []
    for ci, raw in enumerate(item.get("content") or ()):
        part = as_mapping(raw) or {}
        at = {"item_id": item.get("id", ""), "output_index": idx, "content_index": ci}
        kind = part.get("type")
        if kind == "output_text":
            text = str(part.get("text", ""))
            evs.append(("response.content_part.added", {**at, "part": {**part, "text": ""}}))
            evs += [
                ("response.output_text.delta", {**at, "delta": p, "logprobs": []}) for p in split_words(text)
            ]
            evs.append(("response.output_text.done", {**at, "text": text, "logprobs": []}))
        elif kind == "refusal":
            refusal = str(part.get("refusal", ""))
            evs.append(("response.content_part.added", {**at, "part": {**part, "refusal": ""}}))
            evs += [("response.refusal.delta", {**at, "delta": p}) for p in split_words(refusal)]
            evs.append(("response.refusal.done", {**at, "refusal": refusal}))
        else:
            evs.append(("response.content_part.added", {**at, "part": dict(part)}))
        evs.append(("response.content_part.done", {**at, "part": dict(part)}))
    return evs


def _reasoning_events(item: Mapping[str, Any], idx: int) -> list[_Event]:
    evs: list[_Event] = []
    for si, raw in enumerate(item.get("summary") or ()):
        part = as_mapping(raw) or {}
        text = str(part.get("text", ""))
        at = {"item_id": item.get("id", ""), "output_index": idx, "summary_index": si}
        evs.append(("response.reasoning_summary_part.added", {**at, "part": {**part, "text": ""}}))
        evs += [("response.reasoning_summary_text.delta", {**at, "delta": p}) for p in split_words(text)]
        evs.append(("response.reasoning_summary_text.done", {**at, "text": text}))
        evs.append(("response.reasoning_summary_part.done", {**at, "part": dict(part)}))
    return evs


def _pieces_events(item: Mapping[str, Any], idx: int, key: str, event: str) -> list[_Event]:
    value = item.get(key)
    text = value if isinstance(value, str) else dumps_str(value)
    at = {"item_id": item.get("id", ""), "output_index": idx}
    evs: list[_Event] = [(f"{event}.delta", {**at, "delta": p}) for p in split_json(text)] if text else []
    evs.append((f"{event}.done", {**at, key: text}))
    return evs


def _item_events(item: Mapping[str, Any], idx: int) -> list[_Event]:
    kind = _item_type(item)
    added = dict(item)
    if "status" in added:
        added["status"] = "in_progress"
    if kind == "message":
        added["content"] = []
        inner = _message_events(item, idx)
    elif kind == "function_call":
        added["arguments"] = ""
        inner = _pieces_events(item, idx, "arguments", "response.function_call_arguments")
    elif kind == "custom_tool_call":
        added["input"] = ""
        inner = _pieces_events(item, idx, "input", "response.custom_tool_call_input")
    elif kind == "reasoning":
        added = {"id": item.get("id"), "type": "reasoning", "summary": []}
        inner = _reasoning_events(item, idx)
    else:
        inner = []
    return [
        ("response.output_item.added", {"output_index": idx, "item": added}),
        *inner,
        ("response.output_item.done", {"output_index": idx, "item": dict(item)}),
    ]


def stream_events(final: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, in OpenAI's order: ``response.created``,
    ``response.in_progress``, each output item's events (added, content parts with one text delta
    per word, argument pieces, done), ``response.completed``; ``sequence_number`` counts from 0."""
    pending = {**final, "status": "in_progress", "completed_at": None, "output": [], "usage": None}
    events: list[_Event] = [
        ("response.created", {"response": pending}),
        ("response.in_progress", {"response": pending}),
    ]
    for idx, item in enumerate(final["output"]):
        events += _item_events(item, idx)
    events.append(("response.completed", {"response": dict(final)}))
    return [{"type": kind, **fields, "sequence_number": n} for n, (kind, fields) in enumerate(events)]


def sse(event: Mapping[str, Any]) -> bytes:
    """``event: <type>\\ndata: <json>\\n\\n``"""
    return b"event: " + str(event["type"]).encode("utf-8") + b"\ndata: " + dumps(event) + b"\n\n"


# ------------------------------------------------------------------------------ listing


def input_items_page(items: Sequence[Mapping[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /v1/responses/{id}/input_items``: a cursor page (``order`` desc by default, ``limit``
    1-100 default 20, ``after`` / ``before`` an item id)."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _bad_value("order", order, ("asc", "desc"))
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise _bad_type("limit", "an integer", query.get("limit")) from None
    if not 1 <= limit <= 100:
        raise ApiError(
            400, f"Invalid 'limit': integer below minimum value or above maximum value ({limit}).", "limit"
        )
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [str(i.get("id")) for i in ordered]
    start, stop = 0, len(ordered)
    if "after" in query:
        start = ids.index(query["after"]) + 1 if query["after"] in ids else len(ordered)
    if "before" in query:
        stop = ids.index(query["before"]) if query["before"] in ids else 0
    window = ordered[start:stop]
    page = [dict(i) for i in window[:limit]]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(window) > limit,
    }
