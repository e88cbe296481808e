"""What a model answered, in protocol-neutral form: usage, tool calls, the turn, and the
tool nocp itself offers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["Call", "ModelTurn", "ToolSpec", "Usage", "add_usage", "anchor_digest"]


class Usage(msgspec.Struct, kw_only=True):
    """Token usage as the upstream reported it (``None``: not reported)."""

    prompt_tokens: int | None = None  # every input token, cached and cache-written ones too
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    cache_write_tokens: int | None = None  # Anthropic: cache_creation_input_tokens
    cache_write_1h_tokens: int | None = None  # of which written with the 1-hour TTL


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A function tool nocp adds to a request: its name, what it is for, and its string
    parameters (name -> description; ``required`` ones first)."""

    name: str
    description: str
    parameters: tuple[tuple[str, str], ...]
    required: tuple[str, ...]


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call in a model's answer. ``arguments`` is JSON text; ``raw`` is the
    protocol's own object (an OpenAI ``tool_calls`` item, a Gemini part)."""

    name: str
    arguments: str
    id: str | None = None
    raw: Any = None

    def args(self) -> dict[str, Any]:
        """The arguments as an object (``{}`` when they are not a JSON object)."""
        try:
            value = json.loads(self.arguments) if self.arguments else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class ModelTurn(msgspec.Struct, kw_only=True):
    """What the model answered (its one choice / candidate): the message as it goes into a
    follow-up request, its tool calls in order, and the raw usage object of the response."""

    message: dict[str, Any]
    calls: list[Call]
    usage: dict[str, Any] | None = None
    items: list[dict[str, Any]] | None = None  # an answer of several items (Responses' output)
    id: str | None = None  # the response's id, when a follow-up can continue from it

    def turns(self) -> list[dict[str, Any]]:
        """The answer as it goes into the conversation: its items, or its one message."""
        return list(self.items) if self.items is not None else [self.message]


def add_usage(usage: Mapping[str, Any] | None, prior: Mapping[str, Any] | None) -> dict[str, Any]:
    """``usage`` plus ``prior``, field by field: integers are summed (nested objects too, and
    lists of ``{"modality", "tokenCount"}`` per modality); other values are ``usage``'s."""
    out: dict[str, Any] = dict(usage or {})
    for key, old in (prior or {}).items():
        new = out.get(key)
        if key not in out or new is None:
            out[key] = old
        elif isinstance(new, int) and not isinstance(new, bool) and isinstance(old, int):
            out[key] = new + old
        elif isinstance(new, Mapping) and isinstance(old, Mapping):
            out[key] = add_usage(new, old)
        elif isinstance(new, list) and isinstance(old, list):
            out[key] = _add_modalities(new, old)
    return out


def _add_modalities(new: list[Any], old: list[Any]) -> list[Any]:
    if not all(isinstance(x, Mapping) and "modality" in x for x in (*new, *old)):
        return new
    merged: dict[Any, dict[str, Any]] = {}
    for item in (*new, *old):
        key = item["modality"]
        merged[key] = add_usage(item, merged.get(key)) if key in merged else dict(item)
        merged[key]["modality"] = key
    return list(merged.values())


def anchor_digest(text: str, calls: list[tuple[str, str, str]]) -> str:
    """A digest of an assistant message as the client holds it: its text and its tool calls
    (id, name, arguments), in a normal form so the client's re-serialisation does not matter."""
    h = hashlib.blake2b(digest_size=16)
    h.update(text.encode("utf-8", "surrogatepass"))
    for call in calls:
        for field in call:
            h.update(b"\0" + field.encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    return h.hexdigest()
