"""Streamed responses, parsed once per protocol.

A :class:`HopStream` reads one upstream response stream (one "hop": the first call, or a
follow-up after a retrieval round) and is the only parser of it: it splits the bytes into
whole events, and from them keeps the usage, the finish reasons, the answer's text and its
tool calls. It also renders each event as the client gets it: with nocp's own tool calls
taken out, usage summed over earlier hops, and, when it continues a client stream an earlier
hop began, the pieces that would start a second message (a role chunk, a new id) removed.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.protocols._answer import Call, ModelTurn, Usage
from proxy.protocols._codec import decode

__all__ = ["HopStream", "JSONArraySplitter", "SSESplitter", "StreamEvent", "sse_data"]


@dataclass(slots=True)
class StreamEvent:
    """One whole event of a stream: its bytes, its JSON (None: not JSON, or ``[DONE]``), and
    what it says: visible text, the names of the tool calls it begins, whether it carries a
    finish reason or usage."""

    raw: bytes
    data: Any = None
    text: str = ""
    calls: tuple[str, ...] = ()
    finishing: bool = False
    usage: bool = False


class HopStream(abc.ABC):
    """One streamed upstream response of one protocol.

    ``tool`` is nocp's own tool (its calls are what :meth:`ours` returns and what
    :meth:`render` takes out); None when nocp intercepts nothing. ``after`` is the hop this one
    continues in the same client stream (None: this hop begins it). ``drop_usage_chunk``: the
    usage-only event the client did not ask for (nocp asked for it) is not rendered.
    """

    def __init__(self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None):
        self.tool = tool
        self.drop_usage_chunk = drop_usage_chunk
        self.emitted: int = after.emitted if after is not None else 0  # events sent to the client
        self.continues = self.emitted > 0
        self.usage = Usage()
        self.usage_raw: dict[str, Any] | None = None
        self.finish_reasons: list[str] = []
        # the id the client's stream carries (its first hop's), where a protocol has one
        self.client_id: str | None = after.client_id if after is not None else None

    def _parsed(self, raw: bytes, data: bytes | None, wanted: tuple[bytes, ...]) -> tuple[StreamEvent, Any]:
        """An event and its JSON object (None: nothing to read in it). Without a tool to take
        out, only events holding one of ``wanted`` (usage, a finish) are decoded at all."""
        event = StreamEvent(raw)
        if not data or data == b"[DONE]":
            return event, None
        if self.tool is None and not any(w in data for w in wanted):
            return event, None
        parsed = event.data = decode(data)
        return event, parsed if isinstance(parsed, dict) else None

    @property
    def passthrough(self) -> bool:
        """True when the client may get the upstream's bytes exactly as they come."""
        return self.tool is None and not self.drop_usage_chunk

    @abc.abstractmethod
    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """The events ``chunk`` completes, each observed."""

    @abc.abstractmethod
    def close(self) -> list[StreamEvent]:
        """An unterminated last event, at the end of the stream."""

    @abc.abstractmethod
    def turn(self) -> ModelTurn:
        """The whole answer as the model gave it (every call, nocp's included)."""

    @abc.abstractmethod
    def calls(self) -> list[Call]:
        """Every tool call of the answer, in order."""

    @abc.abstractmethod
    def text(self) -> str:
        """The answer's visible text."""

    @abc.abstractmethod
    def render(self, event: StreamEvent, prior: Mapping[str, Any] | None) -> bytes | None:
        """``event`` as the client gets it (None: nothing); ``prior`` is usage to add."""

    def end(self) -> bytes:
        """Framing that closes the client's stream (a JSON array's ``]``)."""
        return b""

    def ours(self) -> list[Call]:
        """nocp's own tool calls in the answer."""
        return [c for c in self.calls() if self.tool is not None and c.name == self.tool]

    def client_calls(self) -> list[Call]:
        """The client's tool calls in the answer."""
        return [c for c in self.calls() if self.tool is None or c.name != self.tool]


class SSESplitter:
    """Splits a byte stream into whole server-sent events (separator ``\\n\\n`` or ``\\r\\n\\r\\n``)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield every event completed by ``chunk``, terminator included."""
        buf = self._buf + chunk
        start = 0
        while True:
            lf = buf.find(b"\n\n", start)
            crlf = buf.find(b"\r\n\r\n", start)
            if lf < 0 and crlf < 0:
                break
            end = crlf + 4 if crlf >= 0 and (lf < 0 or crlf < lf) else lf + 2
            yield buf[start:end]
            start = end
        self._buf = buf[start:]

    def rest(self) -> bytes:
        """Bytes of an unterminated last event."""
        rest, self._buf = self._buf, b""
        return rest


def sse_data(event: bytes) -> bytes | None:
    """The ``data:`` payload of one SSE event (lines joined), or None when it has none."""
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class JSONArraySplitter:
    """Splits a streamed top-level JSON array into its elements' bytes as each completes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # next byte to scan
        self._start: int | None = None  # start of the element being read
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._opened = False

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        buf = self._buf
        i = self._pos
        while i < len(buf):
            c = buf[i]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:  # backslash
                    self._escape = True
                elif c == 0x22:
                    self._in_string = False
            elif not self._opened:
                if c == 0x5B:  # the array's [
                    self._opened = True
            elif c == 0x22:
                self._in_string = True
                if self._start is None:
                    self._start = i
            elif c in (0x7B, 0x5B):  # { [
                if self._start is None:
                    self._start = i
                self._depth += 1
            elif c in (0x7D, 0x5D):  # } ]
                if self._depth == 0:  # the array's closing ]
                    i += 1
                    continue
                self._depth -= 1
                if self._depth == 0 and self._start is not None:
                    yield bytes(buf[self._start : i + 1])
                    self._start = None
            i += 1
        if self._start is None:  # nothing pending: drop what was scanned
            del buf[:i]
            i = 0
        self._pos = i
