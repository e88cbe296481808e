"""Which session a request belongs to.

In order: the ``X-Session-Id`` header; for OpenAI chat, a session-like key of ``metadata``
(``session_id``, ``conversation_id``, ``thread_id``, ...) or else the ``user`` field; else a
hash of the system prompt and the first user message, which stay the same for every request
of one conversation (the same for Gemini, from ``systemInstruction`` and ``contents``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from proxy.protocols import encode_json

__all__ = ["HEADER", "METADATA_KEYS", "derive_session_id", "metadata_session", "session_from"]

HEADER = "X-Session-Id"
METADATA_KEYS = (
    "session_id",
    "sessionId",
    "session",
    "conversation_id",
    "conversationId",
    "thread_id",
    "chat_id",
)
_MAX_CHARS = 200


def _clean(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value).strip()
        if text:
            return text[:_MAX_CHARS]
    return None


def _hashed(parts: list[Any]) -> str:
    return "h-" + hashlib.blake2b(encode_json(parts), digest_size=12).hexdigest()


def _openai_anchor(body: Mapping[str, Any]) -> list[Any] | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    system: list[Any] = []
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        role = msg.get("role")
        if role in ("system", "developer"):
            system.append(msg.get("content"))
        elif role == "user":
            return [system, msg.get("content")]
    return [system, None] if system else None


def _gemini_anchor(body: Mapping[str, Any]) -> list[Any] | None:
    system = body.get("systemInstruction", body.get("system_instruction"))
    contents = body.get("contents")
    first = None
    if isinstance(contents, list):
        for block in contents:
            if isinstance(block, Mapping) and block.get("role", "user") == "user":
                first = block.get("parts")
                break
    if system is None and first is None:
        return None
    return [system, first]


def session_from(headers: Mapping[str, str], explicit: list[Any], anchor: list[Any] | None) -> str | None:
    """The session id: the header, else the first usable ``explicit`` value (a client's own
    session-like field), else a hash of ``anchor`` (the conversation's start); None if none."""
    for value in (headers.get(HEADER), *explicit):
        found = _clean(value)
        if found:
            return found
    return _hashed(anchor) if anchor is not None else None


def metadata_session(meta: Any) -> str | None:
    """A session-like key of a ``metadata`` object (``session_id``, ``thread_id``, ...)."""
    if isinstance(meta, Mapping):
        for key in METADATA_KEYS:
            found = _clean(meta.get(key))
            if found:
                return found
    return None


def derive_session_id(protocol: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The session id of a request (see the module docstring); None for an empty conversation."""
    explicit = _clean(headers.get(HEADER))
    if explicit:
        return explicit
    if protocol == "openai":
        meta = body.get("metadata")
        if isinstance(meta, Mapping):
            for key in METADATA_KEYS:
                found = _clean(meta.get(key))
                if found:
                    return found
        user = _clean(body.get("user"))
        if user:
            return user
        anchor = _openai_anchor(body)
    else:
        anchor = _gemini_anchor(body)
    return _hashed(anchor) if anchor is not None else None
