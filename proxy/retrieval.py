"""Reversible compression, the content side: what a lossy cut stored, and how a retrieval
call is answered.

Every lossy cut (a tool output cut by :func:`compressors.compress`, a history roll-up) stores
its original in the session store under its tenant and session (see :mod:`proxy.toolloop`),
content-addressed (the id is :func:`compressors.markers.content_id`), kept
``retrieval.ttl_s`` after its last use. Its markers carry the id:
``[nocp omitted: lines 12-36 (25 lines); id=3f9a1c0b2e]``. Ids come from content alone, so
the markers are the same bytes on every turn and the prompt cache keeps working.

The model fetches an original with ``nocp_retrieve(id, query?)``; :func:`select` picks the
part ``query`` asks for. The loop that answers those calls inside one client request, and
keeps what was retrieved in later requests, is :mod:`proxy.toolloop`.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from compressors.markers import ID_CHARS
from proxy.config import RetrievalConfig
from proxy.protocols import Call, ToolSpec

__all__ = ["LAST_ROUND_NOTE", "Original", "duration", "ref_of", "select", "tool_spec"]

DESCRIPTION: Final = (
    "Fetch content that nocp, a context-compression proxy, left out of this conversation. "
    "A marker like [nocp omitted: <what was left out>; id=<id>] stands where a tool output or "
    "earlier messages were shortened. Call this tool with that id when the omitted part is needed "
    "to answer correctly (exact lines, values, errors, names); pass query (words to search for, or "
    "'lines 40-80') to get only the matching part. Do not call it when the visible content is enough."
)
ID_DESCRIPTION: Final = "The id from a [nocp omitted: ...; id=<id>] marker."
QUERY_DESCRIPTION: Final = "Optional: text to search for, or a line range such as 'lines 40-80'."
LAST_ROUND_NOTE: Final = (
    "\n\n[nocp: that was the last retrieval allowed for this request; answer now with what you have.]"
)
_ID = re.compile(r"[0-9a-f]{" + str(ID_CHARS) + "}")
_LINES = re.compile(r"^\s*lines?\s+(\d+)(?:\s*(?:-|\u2013|to|\.\.)\s*(\d+))?\s*$", re.IGNORECASE)
_WORD = re.compile(r"[\w./:-]{3,}")
_CONTEXT_LINES: Final = 2


def tool_spec(config: RetrievalConfig) -> ToolSpec:
    """The tool nocp offers."""
    return ToolSpec(
        name=config.tool_name,
        description=DESCRIPTION,
        parameters=(("id", ID_DESCRIPTION), ("query", QUERY_DESCRIPTION)),
        required=("id",),
    )


class Original(msgspec.Struct, frozen=True, kw_only=True):
    """What a lossy cut removed: the whole original, the tool that produced it (None for a
    history roll-up), its content type, and the kind of cut (``tool_output`` / ``history``)."""

    text: str
    tool: str | None = None
    content_type: str = "text"
    kind: str = "tool_output"


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return (
        text[:limit]
        + f"\n[nocp: the content is {len(text)} characters; this is the first {limit}. Call again "
        "with query='lines A-B' or words to search for to get another part.]"
    )


def select(text: str, query: str | None, limit: int) -> str:
    """The part of ``text`` that ``query`` asks for: everything when there is no query;
    ``lines A-B`` (1-based, inclusive); else the lines holding the query (or, failing that,
    any of its words), each with two lines of context. At most ``limit`` characters. Pure."""
    q = (query or "").strip()
    if not q:
        return _cap(text, limit)
    lines = text.splitlines()
    m = _LINES.match(q)
    if m:
        start = max(1, int(m.group(1)))
        end = min(len(lines), int(m.group(2) or m.group(1)))
        if start > end:
            return f"[nocp: the content has {len(lines)} lines; lines {q} are outside it.]"
        return _cap(f"lines {start}-{end} of {len(lines)}:\n" + "\n".join(lines[start - 1 : end]), limit)
    needle = q.lower()
    hits = [i for i, line in enumerate(lines) if needle in line.lower()]
    if not hits:
        words = {w.lower() for w in _WORD.findall(q)}
        hits = [i for i, line in enumerate(lines) if words and any(w in line.lower() for w in words)]
    if not hits:
        return _cap(f"[nocp: no line matches {q!r}; the whole content follows.]\n{text}", limit)
    ranges: list[list[int]] = []
    for i in hits:
        lo, hi = max(0, i - _CONTEXT_LINES), min(len(lines) - 1, i + _CONTEXT_LINES)
        if ranges and lo <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    parts = [
        f"lines {lo + 1}-{hi + 1} of {len(lines)}:\n" + "\n".join(lines[lo : hi + 1]) for lo, hi in ranges
    ]
    return _cap(f"[nocp: {len(hits)} matching lines for {q!r}]\n" + "\n...\n".join(parts), limit)


def ref_of(call: Call) -> tuple[str | None, str | None]:
    """The id (normalised) and the query a retrieval call asks for."""
    args = call.args()
    raw = args.get("id")
    found = _ID.search(str(raw).lower()) if raw is not None else None
    query = args.get("query")
    return (found.group(0) if found else None), (query if isinstance(query, str) else None)


def duration(seconds: float) -> str:
    """``seconds`` for a sentence: ``1 h``, ``5 min`` or ``90 s``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"
