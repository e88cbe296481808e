"""Gemini generateContent / streamGenerateContent as the fake upstream speaks them.

Token counts are a documented approximation (Gemini's tokenizer is not public): the sum of
``compressors.tokens.count`` over the prompt's text parts, plus the compact JSON of
``functionCall`` / ``functionResponse`` parts and of the tool declarations; no per-turn framing.
Inline data (images, audio, files) is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from compressors import tokens
from proxy.testing._common import as_mapping, dumps, dumps_str, reason, split_words
from proxy.testing._script import FakeTurn

__all__ = [
    "array_events",
    "completion_tokens",
    "error_body",
    "invalid_reason",
    "last_user_text",
    "output_parts",
    "prompt_ids",
    "prompt_pieces",
    "prompt_tokens",
    "response",
    "sse_events",
    "stream_chunks",
    "usage_metadata",
]

_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES: Final = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
_STRUCTURED_PARTS: Final = ("functionCall", "function_call", "functionResponse", "function_response")


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """``{"error": {"code", "message", "status"}}`` as Gemini sends for ``status``."""
    return {
        "error": {
            "code": status,
            "message": message or _MESSAGES.get(status, reason(status) + "."),
            "status": _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
        }
    }


def invalid_reason(payload: Any) -> str | None:
    if not isinstance(payload, Mapping):
        return "Invalid JSON payload received. The request body must be a JSON object."
    contents = payload.get("contents")
    if not isinstance(contents, list) or not all(isinstance(c, Mapping) for c in contents):
        return "Invalid JSON payload received. 'contents' must be a list of Content objects."
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    return None


def _parts(content: Any) -> list[Mapping[str, Any]]:
    c = as_mapping(content)
    parts = c.get("parts") if c is not None else None
    return [p for p in parts if isinstance(p, Mapping)] if isinstance(parts, list) else []


def _part_text(part: Mapping[str, Any]) -> str | None:
    """The billed text of one part: its text, or the JSON of a function call / response."""
    text = part.get("text")
    if isinstance(text, str):
        return text
    for key in _STRUCTURED_PARTS:
        if key in part:
            return dumps_str(part[key])
    return None


def last_user_text(contents: Sequence[Mapping[str, Any]]) -> str:
    for content in reversed(contents):
        if content.get("role", "user") == "user":
            texts = [p["text"] for p in _parts(content) if isinstance(p.get("text"), str)]
            if texts:
                return " ".join(texts)
    return ""


def prompt_pieces(payload: Mapping[str, Any]) -> list[str]:
    """The billed texts of a request, in prompt order: system instruction, tools, contents."""
    system = payload.get("systemInstruction", payload.get("system_instruction"))
    pieces = [system] if isinstance(system, str) else [t for p in _parts(system) if (t := _part_text(p))]
    tools = payload.get("tools")
    if tools:
        pieces.append(dumps_str(tools))
    for content in payload["contents"]:
        pieces += [t for p in _parts(content) if (t := _part_text(p))]
    return pieces


def prompt_tokens(pieces: Sequence[str], model: str) -> int:
    return sum(tokens.count(p, model) for p in pieces)


def prompt_ids(pieces: Sequence[str], model: str) -> list[int]:
    """The prompt's token ids (length = the sum of ``tokens.count`` over ``pieces``)."""
    enc = tokens.get_encoding(tokens.encoding_for_model(model))
    ids: list[int] = []
    for piece in pieces:
        ids += enc.encode_ordinary(piece)
    return ids


def output_parts(turn: FakeTurn) -> list[Mapping[str, Any]]:
    """The model's ``parts``: a replayed Gemini message verbatim, else text then function calls."""
    if turn.gemini_parts is not None:
        return list(turn.gemini_parts)
    parts: list[Mapping[str, Any]] = [{"text": turn.text}] if turn.text else []
    parts += [{"functionCall": {"name": c.name, "args": c.args_object()}} for c in turn.calls]
    return parts or [{"text": ""}]


def completion_tokens(parts: Sequence[Mapping[str, Any]], model: str) -> int:
    return sum(tokens.count(t, model) for p in parts if (t := _part_text(p)))


def usage_metadata(prompt: int, cached: int, completion: int | None) -> dict[str, Any]:
    """``usageMetadata``; ``completion=None`` gives the partial form of intermediate stream chunks."""
    meta: dict[str, Any] = {"promptTokenCount": prompt}
    if completion is not None:
        meta["candidatesTokenCount"] = completion
    meta["totalTokenCount"] = prompt + (completion or 0)
    if cached:
        meta["cachedContentTokenCount"] = cached
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if cached:
        meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    return meta


def _response(
    parts: Sequence[Mapping[str, Any]], finished: bool, meta: Mapping[str, Any], model: str, rid: str
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}}
    if finished:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": dict(meta), "modelVersion": model, "responseId": rid}


def response(
    parts: Sequence[Mapping[str, Any]], *, model: str, rid: str, prompt: int, cached: int, completion: int
) -> dict[str, Any]:
    """A ``GenerateContentResponse``."""
    return _response(parts, True, usage_metadata(prompt, cached, completion), model, rid)


def stream_chunks(
    parts: Sequence[Mapping[str, Any]], *, model: str, rid: str, prompt: int, cached: int, completion: int
) -> list[dict[str, Any]]:
    """Streamed ``GenerateContentResponse`` chunks: plain text parts one word per chunk, other
    parts whole; the last chunk carries ``finishReason`` and the full ``usageMetadata``."""
    pieces: list[Mapping[str, Any]] = []
    for part in parts:
        text = part.get("text")
        if isinstance(text, str) and text and part.keys() == {"text"}:
            pieces += [{"text": w} for w in split_words(text)]
        else:
            pieces.append(part)
    partial = usage_metadata(prompt, cached, None)
    last = len(pieces) - 1
    return [
        _response(
            [piece],
            i == last,
            usage_metadata(prompt, cached, completion) if i == last else partial,
            model,
            rid,
        )
        for i, piece in enumerate(pieces)
    ]


def sse_events(chunks: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """``alt=sse``: one ``data: {json}`` event per chunk, CRLF-terminated as Google sends them."""
    return [b"data: " + dumps(c) + b"\r\n\r\n" for c in chunks]


def array_events(chunks: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """No ``alt=sse``: one JSON array, written a chunk at a time (``[``, ``,\\r\\n`` separators, ``]``)."""
    out = [(b"[" if i == 0 else b",\r\n") + dumps(c) for i, c in enumerate(chunks)] or [b"["]
    out[-1] += b"]"
    return out
