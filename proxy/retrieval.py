"""Reversible compression: the model can fetch back what a lossy cut removed.

Every lossy cut (a tool output cut by :func:`compressors.compress`, a history roll-up) stores
its original in the session store, content-addressed (``o:<session>:<id>``, the id is the
first hex characters of the original's blake2b, see :func:`compressors._markers.content_id`),
kept ``retrieval.ttl_s`` after its last use. Its markers carry the id:
``[nocp omitted: lines 12-36 (25 lines); id=3f9a1c0b2e]``. Ids come from content alone, so
the markers are the same bytes on every turn and the prompt cache keeps working.

One request, in the server's one path (:func:`proxy.server._rewrite`):

1. :meth:`RetrievalRequest.insert_pending`: before the stages, answers owed from an earlier
   turn (below) are put back into the conversation where the model asked for them.
2. The stages run; they record their cuts here (:meth:`RetrievalRequest.add_cut`) and ask
   which ids the session already retrieved (:meth:`RetrievalRequest.retrieved`): retrieved
   content is never compressed again.
3. :meth:`RetrievalRequest.prepare`: if the request sent upstream carries at least one marker
   of a cut made now, the originals are stored (or their timers restarted) and the tool
   ``nocp_retrieve(id, query?)`` is offered, unless the client forbids tools
   (``tool_choice: none``, Gemini mode ``NONE``) or forces / restricts them (a named function,
   ``allowedFunctionNames``): then no tool is added and the markers say
   ``not retrievable``.
4. The hop loop: when the model calls the tool, nocp answers it (the original, or the part
   matching ``query``) and sends the continued conversation upstream again, at most
   ``retrieval.max_rounds`` times; the client only sees the answer of the last hop, with usage
   summed over the hops. Streams are held back only until the first delta tells whether the
   model is calling the tool (:class:`~proxy.protocols.RetrievalSniffer`).
5. A retrieval call beside a client tool call (or after text already streamed to the client):
   the client gets its own calls, ours taken out, and ours is answered on the next request:
   the call and its result are stored under the assistant message as the client got it
   (its position and a digest of its text and calls) and put back into every later request
   that still holds that message, the same bytes each time.

Fail open: a failure anywhere in here never fails the request. Storing the originals fails:
no tool, markers say ``not retrievable``. Reading one fails: the tool result says so. Anything
else in the loop: the hop's response goes to the client as it came. Each is recorded in the
TransactionLog's ``fail_open`` (stage ``retrieval``) and logged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from typing import Any, Final

import msgspec
import structlog

from compressors import tokens
from compressors._markers import ID_CHARS, marker_ids, unavailable
from proxy.config import RetrievalConfig, Settings
from proxy.protocols import Adapter, Prompt, Usage
from proxy.protocols._base import Call, RetrievalSniffer, ToolSpec, add_usage, anchor_digest
from proxy.sessions import SessionStore
from proxy.translog import FailOpen, HopUsage, RetrievalRecord, TransactionLog

__all__ = ["Original", "Pending", "Retrieval", "RetrievalRequest", "select", "tool_spec"]

_log = structlog.get_logger("nocp.retrieval")

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


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """Retrieval calls owed to the next requests: the calls (each protocol's own objects) and
    their answers, to be put back after the assistant message that made them."""

    calls: list[Any]
    answers: list[str]


_original_decoder = msgspec.json.Decoder(Original)
_pending_decoder = msgspec.json.Decoder(Pending)
_encoder = msgspec.json.Encoder()


# ------------------------------------------------------------------------------ answers


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


def _ref_of(call: Call) -> tuple[str | None, str | None]:
    args = call.args()
    raw = args.get("id")
    found = _ID.search(str(raw).lower()) if raw is not None else None
    query = args.get("query")
    return (found.group(0) if found else None), (query if isinstance(query, str) else None)


# ------------------------------------------------------------------------------ per app


class Retrieval:
    """The retrieval machinery of one application: its config and the session store."""

    def __init__(self, config: RetrievalConfig, store: SessionStore, *, session_ttl_s: float) -> None:
        self.config = config
        self.store = store
        self.session_ttl_s = session_ttl_s
        self.spec = tool_spec(config)

    @classmethod
    def from_settings(cls, settings: Settings, store: SessionStore) -> Retrieval | None:
        """The machinery when ``retrieval.enabled``, else None."""
        if not settings.retrieval.enabled:
            return None
        return cls(
            settings.retrieval, store, session_ttl_s=max(settings.sessions.ttl_s, settings.retrieval.ttl_s)
        )

    def begin(
        self, adapter: Adapter, record: TransactionLog, body: Mapping[str, Any], model: str
    ) -> RetrievalRequest:
        """The state of one request."""
        return RetrievalRequest(self, adapter, record, body, model)


def _scope(session: str | None) -> str:
    return hashlib.blake2b((session or "-").encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class RetrievalRequest:
    """Retrieval for one request: the cuts its stages made, whether the tool is offered, and
    the hop loop's state. Stages see it as ``ctx.retrieval``."""

    marker_ids = True

    def __init__(
        self, app: Retrieval, adapter: Adapter, record: TransactionLog, body: Mapping[str, Any], model: str
    ) -> None:
        self.app = app
        self.config = app.config
        self.tool_name = app.config.tool_name
        self.adapter = adapter
        self.record = record
        self.model = model
        self.scope = _scope(record.session_id)
        self.client_len = len(body.get(adapter.turns_key) or ())  # the client's own message count
        self.cuts: dict[str, Original] = {}
        self.offered = False
        self.rounds = 0
        self.prior: dict[str, Any] | None = None  # raw usage of the rounds so far, summed
        self.hops: list[Usage] = []
        self.body: dict[str, Any] = {}

    # ----------------------------------------------------------------- keys

    def _okey(self, ref: str) -> str:
        return f"o:{self.scope}:{ref}"

    def _rkey(self, ref: str) -> str:
        return f"r:{self.scope}:{ref}"

    def _pkey(self, index: int, anchor: str) -> str:
        return f"p:{self.scope}:{index}:{anchor}"

    def fail_open(self, where: str, exc: BaseException) -> None:
        """Record and log a failure of the retrieval machinery; the request goes on."""
        reason = f"{where}: {type(exc).__name__}: {exc}"[:500]
        self.record.fail_open.append(FailOpen(stage="retrieval", reason=reason))
        _log.warning("retrieval_failed_open", reason=reason)

    # ----------------------------------------------------------------- for the stages

    def add_cut(self, ref: str, text: str, *, tool: str | None, content_type: str, kind: str) -> None:
        """A stage made a lossy cut whose markers carry ``ref``; ``text`` is the original."""
        self.cuts.setdefault(ref, Original(text=text, tool=tool, content_type=content_type, kind=kind))

    async def retrieved(self, refs: Collection[str]) -> set[str]:
        """Which of ``refs`` this session already retrieved (their content is sent whole)."""
        refs = list(dict.fromkeys(refs))
        if not refs:
            return set()
        found = await self.app.store.get_blobs([self._rkey(r) for r in refs], ttl_s=self.app.session_ttl_s)
        return {r for r, v in zip(refs, found, strict=True) if v is not None}

    # ----------------------------------------------------------------- before the stages

    async def insert_pending(self, body: dict[str, Any]) -> bool:
        """Put answers owed from earlier turns back into ``body``; True if any was."""
        try:
            anchors = self.adapter.assistant_anchors(body)
            if not anchors:
                return False
            keys = [self._pkey(i, a) for i, a in anchors]
            values = await self.app.store.get_blobs(keys, ttl_s=self.app.session_ttl_s)
            owed = [(i, _pending_decoder.decode(v)) for (i, _), v in zip(anchors, values, strict=True) if v]
            for index, pending in reversed(owed):  # from the end: earlier indexes stay valid
                self.adapter.insert_answers(body, index, pending.calls, pending.answers)
            return bool(owed)
        except Exception as exc:
            self.fail_open("pending answers", exc)
            return False

    # ----------------------------------------------------------------- after the stages

    async def prepare(self, body: Mapping[str, Any], before: Prompt, after: Prompt) -> Prompt:
        """Store the originals of the cuts sent and decide whether the tool is offered; when
        it is not, the markers say so. Returns the prompt to apply."""
        changed = [
            (i, new.text)
            for i, (old, new) in enumerate(zip(before.segments, after.segments, strict=True))
            if new.text != old.text
        ]
        texts = [t for _, t in changed]
        if after.rollup is not None:
            texts.append(after.rollup.text)
        present = {ref for t in texts for ref in marker_ids(t) if ref in self.cuts}
        if not present:
            agent = body.get("tools") or any(g.kind in ("tool_call", "tool_output") for g in after.segments)
            if (
                self.config.offer_to_agents
                and agent
                and self.adapter.retrieval_blocker(body, self.tool_name) is None
            ):
                self.offered = self.record.retrieval_offered = True
            return after
        blocker = self.adapter.retrieval_blocker(body, self.tool_name)
        if blocker is None:
            try:
                await self._store_originals(sorted(present))
            except Exception as exc:
                self.fail_open("storing originals", exc)
                blocker = "store unavailable"
        if blocker is not None:
            _log.debug("retrieval_not_offered", reason=blocker)
            return _mark_unavailable(after, changed, present)
        self.offered = self.record.retrieval_offered = True
        return after

    async def _store_originals(self, refs: list[str]) -> None:
        store, ttl = self.app.store, self.config.ttl_s
        keys = [self._okey(r) for r in refs]
        live = await store.touch_blobs(keys, ttl_s=ttl)
        missing = {
            k: _encoder.encode(self.cuts[r]) for k, r, ok in zip(keys, refs, live, strict=True) if not ok
        }
        await store.put_blobs(missing, ttl_s=ttl)

    # ----------------------------------------------------------------- the hop loop

    def record_hop(self, usage: Usage) -> None:
        """One upstream call came back with ``usage``."""
        self.hops.append(usage)

    def _next_round(self) -> None:
        self.rounds += 1
        self.record.retrieval_rounds = self.rounds

    def start(self, body: dict[str, Any]) -> None:
        """The first request goes upstream: ``body`` is what was sent (tool included)."""
        self.body = body

    @property
    def allow_round(self) -> bool:
        """True while another retrieval round may follow."""
        return self.rounds < self.config.max_rounds

    def sniffer(self, injected_usage: bool) -> RetrievalSniffer:
        """The sniffer for a streamed hop."""
        return self.adapter.retrieval_sniffer(
            self.tool_name, drop_usage_chunk=injected_usage, prior=self.prior, allow_round=self.allow_round
        )

    async def on_reply(self, data: bytes) -> tuple[bytes, dict[str, Any] | None]:
        """A whole (non-streamed) answer came back: (what the client gets, None), or (the
        answer, the next request) when nocp answers a retrieval call and continues."""
        try:
            turn = self.adapter.model_turn(data)
            ours = [c for c in turn.calls if c.name == self.tool_name] if turn else []
            if turn is None or not ours:
                return (
                    self.adapter.client_reply(data, self.tool_name, self.prior) if self.prior else data
                ), None
            if len(ours) == len(turn.calls) and self.allow_round:
                answers = await self._answer(ours)
                self.prior = add_usage(turn.usage, self.prior)
                self._next_round()
                self.body = self.adapter.follow_up(self.body, turn, answers)
                return data, self.body
            await self._defer(self.adapter.client_message(data, self.tool_name), ours)
            return self.adapter.client_reply(data, self.tool_name, self.prior), None
        except Exception as exc:
            self.fail_open("answer", exc)
            return data, None

    async def before_end(self, sniffer: RetrievalSniffer) -> None:
        """A streamed hop ended upstream, its last events not yet sent: when retrieval calls
        were taken out of what the client gets, store their answers for the next request."""
        try:
            ours = sniffer.ours()
            if ours and sniffer.failed is None and not sniffer.is_round:
                await self._defer(sniffer.client_message(), ours)
        except Exception as exc:
            self.fail_open("deferred answer", exc)

    async def on_round(self, sniffer: RetrievalSniffer) -> dict[str, Any] | None:
        """A streamed hop was a retrieval round (kept whole): the next request, or None when
        the loop cannot go on (fail-open: the caller sends the hop as it came)."""
        try:
            turn = sniffer.turn()
            answers = await self._answer(sniffer.ours())
            self.prior = add_usage(turn.usage, self.prior)
            self._next_round()
            self.body = self.adapter.follow_up(self.body, turn, answers)
            return self.body
        except Exception as exc:
            self.fail_open("answer", exc)
            return None

    def stream_done(self, sniffer: RetrievalSniffer) -> None:
        """The hop that answers the client was relayed."""
        if sniffer.failed is not None:
            self.fail_open("stream", RuntimeError(sniffer.failed))

    def finish(self) -> Usage:
        """Write rounds and per-hop usage into the log record; the usage summed over hops."""
        rec = self.record
        total = Usage()
        for field in ("prompt_tokens", "cached_tokens", "completion_tokens"):
            values = [getattr(u, field) for u in self.hops]
            setattr(
                total,
                field,
                sum(v for v in values if v is not None) if any(v is not None for v in values) else None,
            )
        if len(self.hops) > 1:
            rec.retrieval_hops = [
                HopUsage(
                    prompt_tokens=u.prompt_tokens,
                    cached_tokens=u.cached_tokens,
                    completion_tokens=u.completion_tokens,
                )
                for u in self.hops
            ]
            # What the rounds cost: every prompt after the first, and the completions the
            # client never saw. Subtracted from the savings like a summarizer's tokens.
            rec.compression_overhead_tokens += sum(u.prompt_tokens or 0 for u in self.hops[1:])
            rec.compression_overhead_tokens += sum(u.completion_tokens or 0 for u in self.hops[: self.rounds])
        return total

    # ----------------------------------------------------------------- answering

    async def _answer(self, calls: list[Call], *, deferred: bool = False) -> list[tuple[Call, str]]:
        """The tool result for each call; records each retrieval."""
        refs = [_ref_of(c) for c in calls]
        wanted = list(dict.fromkeys(r for r, _ in refs if r))
        originals: dict[str, Original] = {}
        failed = False
        if wanted:
            try:
                values = await self.app.store.get_blobs(
                    [self._okey(r) for r in wanted], ttl_s=self.config.ttl_s
                )
                originals = {r: _original_decoder.decode(v) for r, v in zip(wanted, values, strict=True) if v}
                if originals and not deferred:  # a deferred answer is resent every turn instead
                    await self.app.store.put_blobs(
                        {self._rkey(r): b"1" for r in originals}, ttl_s=self.app.session_ttl_s
                    )
            except Exception as exc:
                self.fail_open("reading originals", exc)
                failed = True
        last = not deferred and self.rounds + 1 >= self.config.max_rounds
        out: list[tuple[Call, str]] = []
        for call, (ref, query) in zip(calls, refs, strict=True):
            original = originals.get(ref) if ref else None
            if ref is None:
                text = (
                    f"{self.tool_name} needs the id of a [nocp omitted: ...; id=<id>] marker "
                    f"(a {ID_CHARS}-character hex string)."
                )
            elif failed:
                text = (
                    f"The content of id {ref} cannot be fetched right now; answer from what the "
                    "conversation shows."
                )
            elif original is None:
                text = (
                    f"Nothing is stored under id {ref}: it expired (originals are kept "
                    f"{_duration(self.config.ttl_s)} after their last use) or never existed. Answer from "
                    "what the conversation shows, and say what is missing if it matters."
                )
            else:
                text = select(original.text, query, self.config.max_result_chars)
            if last:
                text += LAST_ROUND_NOTE
            n = tokens.count(text, self.model)
            self.record.retrieval_tokens += n
            self.record.retrievals.append(
                RetrievalRecord(
                    id=ref or "",
                    tool=original.tool if original else None,
                    content_type=original.content_type if original else "unknown",
                    found=original is not None,
                    deferred=deferred,
                    tokens=n,
                )
            )
            out.append((call, text))
        return out

    async def _defer(self, client_message: tuple[str, list[tuple[str, str, str]]], ours: list[Call]) -> None:
        """Answer ``ours`` now and store the answers for the next requests, under the assistant
        message as the client got it."""
        answers = await self._answer(ours, deferred=True)
        text, calls = client_message
        key = self._pkey(self.client_len, anchor_digest(text, calls))
        pending = Pending(calls=[c.raw for c, _ in answers], answers=[a for _, a in answers])
        await self.app.store.put_blobs({key: _encoder.encode(pending)}, ttl_s=self.app.session_ttl_s)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _mark_unavailable(after: Prompt, changed: list[tuple[int, str]], present: set[str]) -> Prompt:
    for i, text in changed:
        after = after.with_text(i, unavailable(text, present))
    if after.rollup is not None:
        r = after.rollup
        after = after.with_rollup(r.start, r.end, unavailable(r.text, present))
    return after
