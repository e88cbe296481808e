"""The prompt model: the parts of a request body that stages may rewrite.

A request body is parsed into a plain ``dict`` that is kept whole: fields an adapter does not
understand are never touched. The parts stages may change are exposed as a :class:`Prompt`,
an immutable tuple of :class:`Segment` values. A stage returns a new ``Prompt``; the
adapter writes the changed texts back into the body, in place, at each segment's ``path``.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["PathKey", "Prompt", "Rollup", "Segment", "SegmentKind", "Turn"]

SegmentKind = Literal["system", "user", "assistant", "tool_call", "tool_output"]
PathKey = str | int


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of text in a request that a stage may rewrite.

    ``index`` is the message's position in the conversation; ``path`` is where the text
    sits in the body. ``as_json`` marks text that is a JSON rendering of a structured value
    (a Gemini ``functionResponse.response``) and is written back as ``{"output": text}``.
    """

    kind: SegmentKind
    index: int
    path: tuple[PathKey, ...]
    text: str
    role: str = ""
    tool_name: str | None = None
    tool_args: str = ""
    as_json: bool = False


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the conversation (``messages[i]`` / ``contents[i]``), as history
    stages see it: its role, whether it is a tool result that must stay with the tool call
    before it (or, ``attached``, another item of the same answer, such as a function call
    after its reasoning), and a digest of its exact content (to recognise an unchanged
    history)."""

    index: int
    role: str
    tool_result: bool
    digest: bytes
    attached: bool = False  # must stay with the turn before it (one answer's items)


class Rollup(msgspec.Struct, frozen=True):
    """Replace messages ``start`` to ``end - 1`` with one summary message holding ``text``."""

    start: int
    end: int
    text: str


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    """The rewritable view of one request: its segments in conversation order, its turns,
    and at most one roll-up of older turns into a summary."""

    segments: tuple[Segment, ...]
    turns: tuple[Turn, ...] = ()
    rollup: Rollup | None = None

    def with_text(self, position: int, text: str) -> Prompt:
        """A copy with segment number ``position`` holding ``text``."""
        segs = list(self.segments)
        segs[position] = msgspec.structs.replace(segs[position], text=text)
        return msgspec.structs.replace(self, segments=tuple(segs))

    def with_rollup(self, start: int, end: int, text: str) -> Prompt:
        """A copy in which turns ``start`` to ``end - 1`` become one summary message."""
        return msgspec.structs.replace(self, rollup=Rollup(start, end, text))

    def latest_user_text(self) -> str:
        """Text of the last user segment, or ``""``."""
        for seg in reversed(self.segments):
            if seg.kind == "user":
                return seg.text
        return ""
