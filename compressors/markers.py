"""The one format every lossy cut uses to say what it removed, and the id that gets it back.

A marker is ``[nocp omitted: <what>]``. When the cut is reversible (the proxy stores the
original and offers a retrieval tool), every marker of that cut also carries the original's
content id: ``[nocp omitted: lines 12-36 (25 lines); id=3f9a1c0b2e]``. The id is derived from
the original's bytes alone (:func:`content_id`), so the same content gives the same marker
text on every turn and the provider's prompt cache keeps working.

Compressors call :func:`omitted_marker` and need not know about ids: the dispatcher runs a
lossy compressor inside :func:`marker_id` when the config asks for ids, and every marker made
in that scope carries the id.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import re
from collections.abc import Iterator
from typing import Final

__all__ = [
    "ID_CHARS",
    "MARKER_PREFIX",
    "content_id",
    "marker_id",
    "marker_ids",
    "omitted_marker",
    "unavailable",
]

MARKER_PREFIX: Final = "[nocp omitted: "
ID_CHARS: Final = 10  # hex characters: 40 bits, ample within one session's content
ID_SUFFIX: Final = "; id="
UNAVAILABLE_SUFFIX: Final = "; not retrievable]"
# The id a marker carries (only ever written by omitted_marker inside marker_id()).
MARKER_ID: Final = re.compile(r"; id=([0-9a-f]{" + str(ID_CHARS) + r"})\]")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("nocp_marker_id", default=None)


def content_id(text: str, key: str = "") -> str:
    """The short content-addressed id of ``text``: the first hex characters of its blake2b,
    keyed with ``key`` (a server secret: then nobody without it can compute an id from a
    guessed content)."""
    secret = key.encode("utf-8")[:64]
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=secret).hexdigest()
    return digest[:ID_CHARS]


@contextlib.contextmanager
def marker_id(ref: str | None) -> Iterator[None]:
    """Markers made inside this block carry ``ref`` (None: no id)."""
    token = _current.set(ref)
    try:
        yield
    finally:
        _current.reset(token)


def omitted_marker(description: str) -> str:
    """A short, recognisable line that says what a lossy cut removed, e.g.
    ``[nocp omitted: 37 rows; id 1..412, status {ok: 35, error: 2}]`` (and ``; id=<ref>``
    before the closing bracket inside :func:`marker_id`)."""
    ref = _current.get()
    if ref is None:
        return f"{MARKER_PREFIX}{description}]"
    return f"{MARKER_PREFIX}{description}{ID_SUFFIX}{ref}]"


def marker_ids(text: str) -> list[str]:
    """The ids carried by the markers in ``text``, in order, without repeats."""
    return list(dict.fromkeys(MARKER_ID.findall(text)))


def unavailable(text: str, ids: set[str] | frozenset[str]) -> str:
    """``text`` with the markers of ``ids`` saying that the original cannot be fetched."""
    if not ids or ID_SUFFIX not in text:
        return text
    return MARKER_ID.sub(lambda m: UNAVAILABLE_SUFFIX if m.group(1) in ids else m.group(0), text)
