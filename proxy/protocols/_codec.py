"""The JSON codec of request and response bodies: strict decoding, encoding, digests."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any

import msgspec

from proxy.exceptions import BadRequest
from proxy.protocols._prompt import PathKey

__all__ = ["decode", "decode_json_object", "digest", "encode_json", "set_path"]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

MAX_DEPTH = 200
"""Request bodies nesting arrays/objects deeper than this are refused (400): deeper values
overflow the recursion of the decoder, the encoder and every walk over the body."""
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def _depth(body: bytes) -> int:
    """How deep arrays and objects nest in the JSON text ``body`` (strings skipped), in one
    pass over its brackets with no recursion; cheap when there are few brackets."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return 0  # cannot nest deeper than the bound
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def digest(value: Any) -> bytes:
    """A short, stable digest of a JSON value (a message as the client sent it)."""
    try:
        raw = _encoder.encode(value)
    except (msgspec.EncodeError, UnicodeEncodeError):
        raw = json.dumps(value).encode()
    return hashlib.blake2b(raw, digest_size=16).digest()


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object or raise :class:`BadRequest`.

    msgspec is tried first (fast); what it refuses but the standard library accepts (lone
    surrogate escapes such as ``"\\ud800"``, which clients do send) is still accepted.
    Arrays and objects nested deeper than :data:`MAX_DEPTH` are refused before decoding.
    """
    if _depth(body) > MAX_DEPTH:
        raise BadRequest(f"request body nests arrays/objects deeper than {MAX_DEPTH} levels")
    try:
        value = _decoder.decode(body)
    except RecursionError:  # the bound is counted on the bytes; this guards what slips past
        raise BadRequest(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except msgspec.DecodeError as exc:
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def decode(data: bytes) -> Any:
    """A JSON value, or None when ``data`` is not JSON."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None


def encode_json(body: Any) -> bytes:
    """Encode a (rewritten) body; text msgspec cannot encode (lone surrogates) is escaped."""
    try:
        return _encoder.encode(body)
    except (msgspec.EncodeError, UnicodeEncodeError):
        return json.dumps(body, separators=(",", ":")).encode()


def set_path(body: Any, path: tuple[PathKey, ...], value: Any) -> None:
    """Set ``value`` at ``path`` inside nested dicts/lists."""
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
