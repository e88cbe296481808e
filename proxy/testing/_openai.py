"""OpenAI chat completions as the fake upstream speaks them: request reading, token billing,
and response / stream-chunk / error objects shaped exactly like OpenAI's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from compressors import tokens
from compressors.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, TOKENS_PER_NAME, _content_text
from proxy.testing._common import as_mapping, dumps, dumps_str, reason, split_json, split_words, text_parts
from proxy.testing._script import FakeTurn

__all__ = [
    "completion",
    "completion_tokens",
    "error_body",
    "invalid_reason",
    "last_user_text",
    "prompt_ids",
    "prompt_tokens",
    "stream_events",
    "usage",
]

SYSTEM_FINGERPRINT: Final = "fp_nocpfake"
SERVICE_TIER: Final = "default"
DONE: Final = b"data: [DONE]\n\n"

# Ids that no real token has, standing for the framing tokens count_messages bills.
_FRAME: Final = -1
_NAME: Final = -2
_PRIMING: Final = -3
_CALL: Final = -4

_ERRORS: Final[dict[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Request not allowed."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_body(status: int, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends for ``status``."""
    kind, code, default = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, reason(status) + ".")
    )
    return {"error": {"message": message or default, "type": kind, "param": param, "code": code}}


def invalid_reason(payload: Any) -> tuple[str, str] | None:
    """(message, param) when ``payload`` is not a chat completion request we can answer."""
    if not isinstance(payload, Mapping):
        return "The request body must be a JSON object.", ""
    if not isinstance(payload.get("model"), str):
        return "you must provide a model parameter", "model"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        return "'messages' must be an array of message objects.", "messages"
    if not messages:
        return "[] is too short - 'messages'", "messages"
    return None


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            texts = text_parts(msg.get("content"))
            if texts:
                return " ".join(texts)
    return ""


def _tools_json(payload: Mapping[str, Any]) -> str | None:
    tools = payload.get("tools")
    return dumps_str(tools) if tools else None


def prompt_tokens(payload: Mapping[str, Any], model: str) -> int:
    """Billed prompt tokens: ``count_messages`` plus the tool definitions' JSON."""
    total = tokens.count_messages(payload["messages"], model)
    tools = _tools_json(payload)
    return total + tokens.count(tools, model) if tools else total


def prompt_ids(payload: Mapping[str, Any], model: str) -> list[int]:
    """The prompt as the token sequence the provider would cache: tool definitions first, then
    each message framed as ``count_messages`` bills it (framing tokens as sentinel ids), then the
    reply priming. Its length equals ``prompt_tokens(payload, model)``."""
    enc = tokens.get_encoding(tokens.encoding_for_model(model))
    ids: list[int] = []
    tools = _tools_json(payload)
    if tools:
        ids += enc.encode_ordinary(tools)
    for msg in payload["messages"]:
        ids += [_FRAME] * TOKENS_PER_MESSAGE
        role = msg.get("role")
        if isinstance(role, str):
            ids += enc.encode_ordinary(role)
        for text in _content_text(msg.get("content")):
            ids += enc.encode_ordinary(text)
        name = msg.get("name")
        if isinstance(name, str):
            ids += [_NAME] * TOKENS_PER_NAME + enc.encode_ordinary(name)
        tool_call_id = msg.get("tool_call_id")
        if isinstance(tool_call_id, str):
            ids += enc.encode_ordinary(tool_call_id)
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = as_mapping(call.get("function")) if isinstance(call, Mapping) else None
                if fn is not None:
                    ids += [_CALL] * TOKENS_PER_MESSAGE
                    ids += enc.encode_ordinary(str(fn.get("name", "")))
                    ids += enc.encode_ordinary(str(fn.get("arguments", "")))
    return ids + [_PRIMING] * REPLY_PRIMING


def completion_tokens(turn: FakeTurn, model: str) -> int:
    """Reply text tokens plus each tool call's name and arguments."""
    n = tokens.count(turn.text, model) if turn.text else 0
    return n + sum(tokens.count(c.name, model) + tokens.count(c.arguments, model) for c in turn.calls)


def usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(turn: FakeTurn) -> str:
    return "tool_calls" if turn.calls else "stop"


def _message(turn: FakeTurn) -> dict[str, Any]:
    if turn.openai_message is not None:
        msg: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        msg.update(turn.openai_message)
        if isinstance(msg["content"], list):  # an input-style parts list: responses carry a string
            msg["content"] = turn.text
        return msg
    msg = {"role": "assistant", "content": turn.text}
    if turn.calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.calls
        ]
    msg["refusal"] = None
    msg["annotations"] = []
    return msg


def completion(
    turn: FakeTurn, *, cid: str, created: int, model: str, usage: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": _message(turn), "logprobs": None, "finish_reason": _finish_reason(turn)}
        ],
        "usage": dict(usage),
        "service_tier": SERVICE_TIER,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def stream_events(
    turn: FakeTurn,
    *,
    cid: str,
    created: int,
    model: str,
    usage: Mapping[str, Any],
    include_usage: bool,
    shape: str = "role_first",
) -> list[bytes]:
    """The SSE events of a streamed completion: a role chunk, content pieces (one per word),
    tool-call deltas (header then argument pieces), a finish chunk, the usage chunk when
    ``include_usage`` (every other chunk then carries ``"usage": null``), and ``[DONE]``.

    ``shape`` ``"role_first"`` (vLLM-style servers) always sends the role alone first;
    ``"openai"`` (OpenAI's own) puts the role into the first tool-call delta of an answer that
    has no text, as OpenAI does."""

    def event(choices: list[dict[str, Any]], final_usage: Mapping[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": SERVICE_TIER,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            chunk["usage"] = dict(final_usage) if final_usage is not None else None
        return b"data: " + dumps(chunk) + b"\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
        return event([{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}])

    role = {"role": "assistant", "content": "" if turn.text is not None else None, "refusal": None}
    merge_role = shape == "openai" and not turn.text and bool(turn.calls)
    events = [] if merge_role else [delta(role)]
    if turn.text:
        events += [delta({"content": piece}) for piece in split_words(turn.text)]
    for i, c in enumerate(turn.calls):
        head = {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}
        events.append(
            delta({**role, "tool_calls": [head]} if merge_role and i == 0 else {"tool_calls": [head]})
        )
        if c.arguments:
            events += [
                delta({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                for piece in split_json(c.arguments)
            ]
    events.append(delta({}, _finish_reason(turn)))
    if include_usage:
        events.append(event([], usage))
    events.append(DONE)
    return events
