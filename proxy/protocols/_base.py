"""What every protocol adapter exposes to the rest of the proxy.

A request body is parsed into a plain ``dict`` that is kept whole: fields an adapter does not
understand are never touched. The parts stages may change are exposed as a :class:`Prompt`,
an immutable tuple of :class:`Segment` values. A stage returns a new ``Prompt``; the
adapter writes the changed texts back into the body, in place, at each segment's ``path``.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec

from proxy.exceptions import BadRequest, ProxyHTTPError

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
    before it, and a digest of its exact content (to recognise an unchanged history)."""

    index: int
    role: str
    tool_result: bool
    digest: bytes


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


class Usage(msgspec.Struct, kw_only=True):
    """Token usage as the upstream reported it (``None``: not reported)."""

    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None


class StreamSniffer(abc.ABC):
    """Watches a streamed response go by. ``feed`` returns the bytes to forward now.

    ``holds`` is True for a sniffer that may keep a whole response back (a retrieval round
    the client never sees): the relay then sends the response headers only with the first
    bytes it has to forward."""

    holds: ClassVar[bool] = False

    def __init__(self) -> None:
        self.usage = Usage()
        self.finish_reasons: list[str] = []

    @abc.abstractmethod
    def feed(self, chunk: bytes) -> bytes:
        """Take one chunk from the upstream; return what to send to the client now."""

    def close(self) -> bytes:
        """The stream ended; return anything still held back."""
        return b""


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


class RetrievalSniffer(StreamSniffer):
    """Relays a streamed answer to a request that offers the retrieval tool.

    It holds the stream back until it can tell what the model does (the first delta that
    carries text or a tool call). A retrieval call first (and a round still allowed): the
    whole response is kept (``mode == "consume"``); nothing reaches the client unless the
    model also called a client tool, in which case the kept response is released at the end
    without the retrieval calls. Anything else: relayed as it arrives (``mode == "relay"``),
    with any retrieval call taken out. Tool-call indexes are renumbered, a finish reason
    that no longer has a tool call becomes ``stop``, and usage gets ``prior`` (the earlier
    rounds) added. The events from the finish reason on are held until the upstream ends,
    so that an answer owed to the next request is stored before the client has the end.

    A failure inside the sniffer is not the request's: from then on bytes pass unchanged
    (``failed`` says why; a response still held back is released as received).
    """

    holds: ClassVar[bool] = True

    def __init__(
        self, tool: str, *, drop_usage_chunk: bool, prior: Mapping[str, Any] | None, allow_round: bool
    ):
        super().__init__()
        self.tool = tool
        self.drop_usage_chunk = drop_usage_chunk
        self.prior = dict(prior) if prior else None
        self.allow_round = allow_round
        self.mode: Literal["undecided", "relay", "consume"] = "undecided"
        self.failed: str | None = None
        self.raw = bytearray()  # every byte received, for the fail-open path
        self.usage_raw: dict[str, Any] | None = None
        self.released = False
        self._held: list[tuple[bytes, Any]] = []  # (raw item, parsed or None), kept back
        self._tail = False  # relay mode: from the finish reason on, items wait for close()

    @abc.abstractmethod
    def turn(self) -> ModelTurn:
        """The whole answer as the model gave it (every call, ours included)."""

    @abc.abstractmethod
    def ours(self) -> list[Call]:
        """The retrieval calls in the answer."""

    @abc.abstractmethod
    def client_message(self) -> tuple[str, list[tuple[str, str, str]]]:
        """The answer as the client receives it: text, and tool calls (id, name, arguments)."""

    @abc.abstractmethod
    def client_calls(self) -> int:
        """How many client tool calls the answer holds."""

    # --- what each protocol supplies -------------------------------------------------------

    @abc.abstractmethod
    def _items(self, chunk: bytes) -> Iterator[tuple[bytes, Any]]:
        """The whole items (SSE events, JSON-array elements) ``chunk`` completes, parsed."""

    @abc.abstractmethod
    def _rest(self) -> tuple[bytes, Any] | None:
        """An unterminated last item, at the end of the stream."""

    @abc.abstractmethod
    def _observe(self, parsed: Any) -> None:
        """Take note of one parsed item (text, calls, usage; decides ``mode``)."""

    @abc.abstractmethod
    def _finishing(self, parsed: Any) -> bool:
        """True when the item carries a finish reason."""

    @abc.abstractmethod
    def _release(self, items: list[tuple[bytes, Any]]) -> bytes:
        """The bytes the client gets for ``items`` (rewritten, or dropped)."""

    def _end(self) -> bytes:
        """Framing that closes the client's stream (a JSON array's ``]``)."""
        return b""

    # --- the relay ---------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        self.raw += chunk
        if self.failed is not None:
            return chunk
        try:
            out: list[bytes] = []
            for raw, parsed in self._items(chunk):
                self._observe(parsed)
                if self.mode == "relay" and not self._tail:
                    if self._held:
                        out.append(self._release(self._held))
                        self._held.clear()
                    if self._finishing(parsed):
                        self._tail = True
                        self._held.append((raw, parsed))
                    else:
                        out.append(self._release([(raw, parsed)]))
                else:
                    self._held.append((raw, parsed))
            data = b"".join(out)
            if data:
                self.released = True
            return data
        except Exception as exc:  # fail open: from here on, pass the stream through
            return self._fail(exc, chunk)

    def _fail(self, exc: Exception, chunk: bytes) -> bytes:
        self.failed = f"{type(exc).__name__}: {exc}"[:300]
        if self.released:
            return chunk
        self.released = True
        return bytes(self.raw)

    def close(self) -> bytes:
        if self.failed is not None:
            return b""
        try:
            if (rest := self._rest()) is not None:
                self._observe(rest[1])
                self._held.append(rest)
            if self.mode == "consume" and self.ours() and not self.client_calls() and not self.released:
                return b""  # a retrieval round: the client never sees it
            data = self._release(self._held) + self._end()
            self._held.clear()
            if data:
                self.released = True
            return data
        except Exception as exc:
            return self._fail(exc, b"")

    @property
    def is_round(self) -> bool:
        """True when the answer is a retrieval round: kept whole, with only retrieval calls."""
        return (
            self.failed is None
            and self.mode == "consume"
            and not self.released
            and bool(self.ours())
            and not self.client_calls()
        )


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


_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


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
    """
    try:
        value = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


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


class Adapter(abc.ABC):
    """One wire protocol: parse, expose segments, write back, read usage, shape errors."""

    protocol: ClassVar[Literal["openai", "gemini"]]

    @abc.abstractmethod
    def parse(self, body: bytes, match_info: Mapping[str, str]) -> dict[str, Any]:
        """Decode and validate the body; raise :class:`BadRequest` when it is unusable."""

    @abc.abstractmethod
    def model(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> str:
        """The model the request is for."""

    @abc.abstractmethod
    def is_stream(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> bool:
        """True when the client asked for a streamed response."""

    @abc.abstractmethod
    def prompt(self, body: Mapping[str, Any], *, turns: bool = True) -> Prompt:
        """The rewritable segments of the body, and its turns unless ``turns`` is False
        (turn digests cost a pass over every message; only history stages need them)."""

    def apply(self, body: dict[str, Any], before: Prompt, after: Prompt) -> bool:
        """Write every segment whose text changed back into ``body``, then the roll-up;
        True if anything changed."""
        changed = False
        for old, new in zip(before.segments, after.segments, strict=True):
            if new.text != old.text:
                set_path(body, new.path, {"output": new.text} if new.as_json else new.text)
                changed = True
        if after.rollup is not None:
            r = after.rollup
            body[self.turns_key][r.start : r.end] = [self.summary_message(r.text)]
            changed = True
        return changed

    turns_key: ClassVar[str]

    @abc.abstractmethod
    def summary_message(self, text: str) -> dict[str, Any]:
        """The message that stands for rolled-up turns."""

    def prepare_upstream(self, body: dict[str, Any], stream: bool) -> bool:
        """Adjust the body for the upstream (e.g. ask for usage); True if it changed."""
        return False

    @abc.abstractmethod
    def usage(self, body: bytes) -> Usage:
        """Usage from a whole (non-streamed) response body."""

    @abc.abstractmethod
    def sniffer(self, body: Mapping[str, Any], injected_usage: bool) -> StreamSniffer:
        """A sniffer for a streamed response to this request."""

    @abc.abstractmethod
    def count_prompt(self, body: Mapping[str, Any], model: str) -> int:
        """Prompt tokens of ``body`` as the provider bills them (approximate for Gemini)."""

    @abc.abstractmethod
    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        """Our own error, in this protocol's error shape."""

    # --- retrieval: offer a tool of nocp's own, answer its calls, continue the conversation

    def retrieval_blocker(self, body: Mapping[str, Any], tool: str) -> str | None:
        """Why nocp must not add its tool to this request (the client forbids tools or
        forces one of its own, asks for several answers, ...), or None when it may."""
        return "not supported by this protocol"

    def add_tool(self, body: dict[str, Any], spec: ToolSpec) -> None:
        """Add ``spec`` to the request's tools, after the client's own."""
        raise NotImplementedError

    def model_turn(self, data: bytes) -> ModelTurn | None:
        """The answer in a whole response body, or None when it has no single answer."""
        return None

    def client_reply(self, data: bytes, tool: str, prior: Mapping[str, Any] | None) -> bytes:
        """The response body as the client gets it: ``tool``'s calls taken out (a finish
        reason left without calls becomes ``stop``), usage plus ``prior``."""
        raise NotImplementedError

    def client_message(self, data: bytes, tool: str) -> tuple[str, list[tuple[str, str, str]]]:
        """What :meth:`client_reply` leaves of the answer: its text and tool calls."""
        raise NotImplementedError

    def follow_up(
        self, body: Mapping[str, Any], turn: ModelTurn, answers: Sequence[tuple[Call, str]]
    ) -> dict[str, Any]:
        """A copy of ``body`` continued with ``turn`` and the results of its calls."""
        raise NotImplementedError

    def assistant_anchors(self, body: Mapping[str, Any]) -> list[tuple[int, str]]:
        """(index, :func:`anchor_digest`) of each assistant message of the conversation."""
        return []

    def insert_answers(
        self, body: dict[str, Any], index: int, calls: Sequence[Any], answers: Sequence[str]
    ) -> None:
        """Put retrieval ``calls`` (their raw objects) back into the assistant message at
        ``index`` and their ``answers`` after the tool results that follow it."""
        raise NotImplementedError

    def retrieval_sniffer(
        self, tool: str, *, drop_usage_chunk: bool, prior: Mapping[str, Any] | None, allow_round: bool
    ) -> RetrievalSniffer:
        """A :class:`RetrievalSniffer` for this protocol's streams."""
        raise NotImplementedError

    @staticmethod
    def tools_invoked(prompt: Prompt) -> list[str]:
        """Names of the tools whose outputs are in the request, in order of appearance."""
        seen: dict[str, None] = {}
        for seg in prompt.segments:
            if seg.kind == "tool_output" and seg.tool_name:
                seen.setdefault(seg.tool_name)
        return list(seen)
