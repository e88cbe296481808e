"""The adapter interface: what the exchange and its features need from one wire protocol."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, ClassVar

from proxy.exceptions import ProxyHTTPError
from proxy.protocols._answer import Call, ModelTurn, ToolSpec, Usage
from proxy.protocols._codec import encode_json, set_path
from proxy.protocols._prompt import Prompt
from proxy.protocols._stream import HopStream

__all__ = ["Adapter", "Route"]

Route = tuple[str, str]  # (HTTP method, aiohttp path pattern)


class Adapter(abc.ABC):
    """One wire protocol: its routes, parsing into segments and writing back, its streams,
    its errors, and the pieces of the retrieval tool loop in its own message format.

    Adding a protocol is adding an adapter (and registering it in :mod:`proxy.protocols`):
    the server serves every adapter's ``routes`` and the exchange drives it through this
    interface only.
    """

    protocol: ClassVar[str]  # the TransactionLog's ``protocol``
    websocket_paths: ClassVar[tuple[str, ...]] = ()  # GET paths upgraded to a WebSocket
    echoes_tools: ClassVar[bool] = False  # responses repeat the request's tools (nocp's too)
    caches_at_breakpoints: ClassVar[bool] = False  # the provider caches only where marked
    cache_key_field: ClassVar[str | None] = None  # the body field that routes to a prompt cache
    upstream_protocol: ClassVar[str]  # which configured upstreams serve it
    routes: ClassVar[tuple[Route, ...]]
    turns_key: ClassVar[str]  # the body's list of messages
    alternating_turns: ClassVar[bool] = False  # the provider rejects two same-role turns in a row

    # --- requests -----------------------------------------------------------------------

    @abc.abstractmethod
    def parse(self, body: bytes, match_info: Mapping[str, str]) -> dict[str, Any]:
        """Decode and validate the body; raise :class:`BadRequest` when it is unusable."""

    def session_id(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
        """Which session the request belongs to (see :func:`proxy.sessions.derive_session_id`)."""
        from proxy.sessions import derive_session_id

        return derive_session_id(self.protocol, headers, body)

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

    @abc.abstractmethod
    def summary_message(self, text: str) -> dict[str, Any]:
        """The message that stands for rolled-up turns."""

    def enforce_turns(self, body: dict[str, Any], client_turns: AbstractSet[int]) -> bool:
        """Make what the stages and features produced obey the protocol's turn rules (the
        exchange's last step before sending); True if the body changed. Where turns must
        alternate, consecutive turns of one role, one of them nocp's (a summary, a retrieval
        round), become one by :meth:`merge_turns`. ``client_turns`` holds the ``id()`` of
        each message object the client sent: those it sent as they are, in a row, are the
        client's business and stay as they are."""
        if not self.alternating_turns:
            return False
        turns = body[self.turns_key]
        merged: list[Any] = []
        for msg in turns:
            prev = merged[-1] if merged else None
            if (
                isinstance(prev, dict)
                and isinstance(msg, dict)
                and prev.get("role", "user") == msg.get("role", "user")
                and not (id(prev) in client_turns and id(msg) in client_turns)
            ):
                merged[-1] = self.merge_turns(prev, msg)
            else:
                merged.append(msg)
        if len(merged) == len(turns):
            return False
        body[self.turns_key] = merged
        return True

    def merge_turns(self, prev: dict[str, Any], nxt: dict[str, Any]) -> dict[str, Any]:
        """The one turn standing for two consecutive turns of one role (protocols whose
        turns must alternate)."""
        raise NotImplementedError

    def auto_cache(self, body: dict[str, Any], model: str, ttl: str) -> int:
        """Add prompt-cache breakpoints to a request that has none (protocols that cache only
        at explicit breakpoints); how many were added."""
        return 0

    def prepare_upstream(self, body: dict[str, Any], stream: bool) -> bool:
        """Adjust the body for the upstream (e.g. ask for usage); True if it changed."""
        return False

    @abc.abstractmethod
    def count_prompt(self, body: Mapping[str, Any], model: str) -> int:
        """Prompt tokens of ``body`` as the provider bills them (approximate for Gemini)."""

    def claims(self, path: str, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """True when a passthrough request (a path nocp does not rewrite) is this protocol's."""
        return False

    # --- WebSocket mode (for adapters with ``websocket_paths``) -------------------------

    def ws_request(self, frame: str) -> bytes | None:
        """The request body a client frame stands for (streamed), or None to pass it on."""
        return None

    def ws_frame(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The frame that sends request ``body`` upstream."""
        raise NotImplementedError

    def ws_terminal(self, event: Mapping[str, Any]) -> bool:
        """True when a server event frame ends a response."""
        raise NotImplementedError

    # --- responses ----------------------------------------------------------------------

    @abc.abstractmethod
    def usage(self, data: bytes) -> Usage:
        """Usage from a whole (non-streamed) response body."""

    @abc.abstractmethod
    def hop_stream(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> HopStream:
        """The parser of one streamed response to this request (see :class:`HopStream`)."""

    @abc.abstractmethod
    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        """Our own error, in this protocol's error shape."""

    def stream_error(self, err: ProxyHTTPError) -> bytes:
        """Our own error as a stream event, for a stream that already began."""
        return b"data: " + encode_json(self.error_body(err)) + b"\n\n"

    @staticmethod
    def tools_invoked(prompt: Prompt) -> list[str]:
        """Names of the tools whose outputs are in the request, in order of appearance."""
        seen: dict[str, None] = {}
        for seg in prompt.segments:
            if seg.kind == "tool_output" and seg.tool_name:
                seen.setdefault(seg.tool_name)
        return list(seen)

    # --- the retrieval tool loop in this protocol's format -----------------------------

    def retrieval_blocker(self, body: Mapping[str, Any], tool: str) -> str | None:
        """Why nocp must not add its tool to this request (the client forbids tools or
        forces one of its own, asks for several answers, ...), or None when it may."""
        return "not supported by this protocol"

    def intercepts(self, body: Mapping[str, Any], tool: str) -> bool:
        """True when calls of ``tool`` in answers to this request are nocp's to answer (the
        name is reserved: False only when the client defines a tool of that name, or the
        answers cannot be read one by one)."""
        return False

    def add_tool(self, body: dict[str, Any], spec: ToolSpec) -> None:
        """Add ``spec`` to the request's tools, after the client's own."""
        raise NotImplementedError

    def remove_tool(self, body: dict[str, Any], tool: str, *, forbid_calls: bool) -> None:
        """Take ``tool`` out of the request's tools; ``forbid_calls``: and ask for no tool
        call at all unless the client requires one."""
        raise NotImplementedError

    def model_turn(self, data: bytes) -> ModelTurn | None:
        """The answer in a whole response body, or None when it has no single answer."""
        return None

    def client_reply(self, data: bytes, tool: str, prior: Mapping[str, Any] | None) -> bytes:
        """The response body as the client gets it: ``tool``'s calls taken out (a finish
        reason left without calls becomes ``stop``), usage plus ``prior``."""
        raise NotImplementedError

    def tool_results(self, answers: Sequence[tuple[Call, str]]) -> list[dict[str, Any]]:
        """The messages that answer ``answers``' calls with their texts."""
        raise NotImplementedError

    def follow_up(
        self, body: Mapping[str, Any], turn: ModelTurn, answers: Sequence[tuple[Call, str]]
    ) -> dict[str, Any]:
        """A copy of ``body`` continued with ``turn`` and the results of its calls."""
        messages = [*body[self.turns_key], *turn.turns(), *self.tool_results(answers)]
        return {**body, self.turns_key: messages}

    def chained_from(self, body: Mapping[str, Any]) -> str | None:
        """The earlier response a request continues, where the provider keeps conversations
        (Responses' ``previous_response_id``)."""
        return None

    def chain_to(self, body: dict[str, Any], response_id: str) -> None:
        """Make ``body`` continue ``response_id`` instead."""
        raise NotImplementedError

    def client_view(
        self, turns: Sequence[Mapping[str, Any]], tool: str
    ) -> tuple[str, list[tuple[str, str, str]]]:
        """An answer as the client holds it (the messages of one span): its visible text and
        its tool calls (id, name, arguments in a normal form), ``tool``'s calls left out."""
        raise NotImplementedError

    def visible_turns(self, text: str, calls: Sequence[Call]) -> list[dict[str, Any]]:
        """The messages of an answer holding ``text`` and ``calls`` (what a client received)."""
        raise NotImplementedError

    def assistant_spans(self, body: Mapping[str, Any]) -> list[tuple[int, int]]:
        """(start, end) of each answer of the model in the body's turns: one message each,
        or a run of items (Responses)."""
        return []
