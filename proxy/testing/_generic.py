"""The fake upstream's non-LLM endpoints: model list, embeddings, and the echo catch-all."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from multidict import CIMultiDictProxy

from compressors import tokens
from proxy.upstream import HOP_BY_HOP

__all__ = ["DEFAULT_MODELS", "echo", "embeddings", "model_list", "model_object"]

DEFAULT_MODELS: Final = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "gemini-2.5-flash",
    "gemini-2.5-pro",
)
DEFAULT_EMBEDDING_DIMENSIONS: Final = 16
MAX_EMBEDDING_DIMENSIONS: Final = 4096

# Not echoed: they describe one hop (RFC 9110 section 7.6.1) or the framing of the body.
_HOP_HEADERS: Final = HOP_BY_HOP | {"content-length"}


def model_object(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "system"}


def model_list(models: Sequence[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": [model_object(m, created) for m in models]}


def _vector(key: str, dims: int) -> list[float]:
    """A deterministic unit vector derived from ``key``."""
    raw = hashlib.shake_256(key.encode("utf-8")).digest(4 * dims)
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dims}I", raw)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    # Round-trip through float32 so the float and base64 encodings give the same numbers.
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in values))))


def embeddings(payload: Mapping[str, Any]) -> dict[str, Any] | str:
    """``POST /v1/embeddings``: one deterministic small vector per input (``float`` or ``base64``
    encoding, ``dimensions`` honoured). Returns an error message when the request is invalid."""
    model = payload.get("model")
    raw = payload.get("input")
    if not isinstance(model, str):
        return "you must provide a model parameter"
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw)):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        inputs = raw
    else:
        return "'input' must be a non-empty string or array"
    dims = payload.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    if not isinstance(dims, int) or not 1 <= dims <= MAX_EMBEDDING_DIMENSIONS:
        return f"'dimensions' must be an integer between 1 and {MAX_EMBEDDING_DIMENSIONS}"
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    n_tokens = 0
    for i, item in enumerate(inputs):
        key = item if isinstance(item, str) else repr(item)
        n_tokens += tokens.count(item, model) if isinstance(item, str) else len(item)
        vec = _vector(f"{model}\x00{key}", dims)
        emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode("ascii") if as_base64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }


def echo(
    method: str, raw_path: str, path: str, query_string: str, headers: CIMultiDictProxy[str], body: bytes
) -> dict[str, Any]:
    """What the catch-all route answers: the request as received. ``headers`` omits hop-by-hop
    and framing headers (lower-case names, repeated headers joined with ``", "``); ``body`` is
    the text when it is UTF-8, else ``null`` with ``body_base64`` set."""
    echoed: dict[str, str] = {}
    for name in headers:
        key = name.lower()
        if key not in _HOP_HEADERS and key not in echoed:
            echoed[key] = ", ".join(headers.getall(name))
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "method": method,
        "path": path,
        "raw_path": raw_path,
        "query_string": query_string,
        "headers": echoed,
        "body": text,
        "body_base64": None if text is not None else base64.b64encode(body).decode("ascii"),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
