"""Small helpers shared by the fake upstream's protocol modules: JSON, ids, text splitting."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

import msgspec

# Unix time stamped on every response unless the FakeUpstream is given another (2025-01-01T00:00Z).
FIXED_CREATED: Final = 1735689600
DEFAULT_REPLY_PREFIX: Final = "Fake reply to: "
DEFAULT_REPLY_CHARS: Final = 60

_encoder: Final = msgspec.json.Encoder()
_WORDS: Final = re.compile(r"\s*\S+|\s+")
_JSON_PIECES: Final = re.compile(r"\s*\w+|\s*[^\w\s]+|\s+")


def dumps(value: Any) -> bytes:
    """Compact JSON, keys in insertion order (so equal inputs give equal bytes)."""
    return _encoder.encode(value)


def dumps_str(value: Any) -> str:
    return _encoder.encode(value).decode("utf-8")


def digest(body: bytes, *salt: str) -> bytes:
    """A stable 16-byte digest of a request body (plus optional salt such as a tool-call index)."""
    h = hashlib.blake2b(body, digest_size=16)
    for s in salt:
        h.update(b"\x00" + s.encode("utf-8"))
    return h.digest()


def hex_id(body: bytes, length: int, *salt: str) -> str:
    return digest(body, *salt).hex()[:length]


def b64_id(body: bytes, length: int, *salt: str) -> str:
    return base64.urlsafe_b64encode(digest(body, *salt)).decode("ascii").rstrip("=")[:length]


def default_reply(last_user_text: str) -> str:
    """The reply given when nothing is scripted: derived from the request, so deterministic."""
    return DEFAULT_REPLY_PREFIX + last_user_text[:DEFAULT_REPLY_CHARS]


def split_words(text: str) -> list[str]:
    """Split ``text`` into word pieces (each keeps its leading whitespace); they join back to ``text``."""
    return _WORDS.findall(text) or [text]


def split_json(text: str) -> list[str]:
    """Split JSON text into token-like pieces (words and punctuation runs); they join back to ``text``."""
    return _JSON_PIECES.findall(text) or [text]


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def as_mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def text_parts(content: Any) -> list[str]:
    """Text of an OpenAI message ``content`` (a string or a list of ``text`` parts)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return []
