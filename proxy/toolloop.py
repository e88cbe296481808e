"""The retrieval tool loop: nocp answers ``nocp_retrieve`` itself, inside the client's request.

A feature of the exchange (:mod:`proxy.exchange`), written once for every protocol against
the adapter's tool-loop pieces. In one request:

- **before stages**: retrieval rounds of earlier requests are put back where they happened.
  After a round, the client holds only the answer; the model saw its call, nocp's answer and
  its own continuation. Those messages are stored under the answer as the client got it (its
  position and a digest of its text and calls) and replace that answer in every later
  request that still holds it, the same bytes each time: the prompt cache keeps hitting and
  what the model retrieved stays in front of it, while the cut output keeps its compressed
  bytes (a retrieval never un-compresses it).
- **after stages**: the originals of the cuts sent are stored (timers restarted), and the
  tool is offered when the request carries a marker of one (unless the client forbids or
  forces tools: then the markers say ``not retrievable``). The marker ids of the request are
  the only ids answered: an id from another conversation gets "nothing stored".
- **on response**: the name is reserved: a call to it is nocp's to answer whether or not the
  tool was offered in this request (a model may call it on a later turn or a retry). A
  response whose only calls are nocp's is a round: answered, and the conversation continued
  upstream, at most ``retrieval.max_rounds`` times; the request after the last round no
  longer offers the tool, so the model answers with what it has. Streams are relayed as they
  arrive: text streamed before a call (a preamble) is followed, in the same client stream, by
  the answer after the round (one assistant message; the continuation's role chunk and id are
  the first hop's). nocp's calls beside the client's own are taken out of what the client
  gets and answered in the stored messages, which later requests put back.

Every stored key is scoped by tenant (a hash of the client's credential) and session id.
Fail open: a failure in here never fails the request; it is recorded in the TransactionLog's
``fail_open`` (stage ``retrieval``) and logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final, Literal

import msgspec
import structlog

from compressors import tokens
from compressors.markers import ID_CHARS, ID_SUFFIX, marker_ids, unavailable
from proxy.cacheecon import BREAKPOINT_WRITE, cached_ratio, decide_miss
from proxy.config import RetrievalConfig, Settings
from proxy.exchange import Exchange, FeatureRequest
from proxy.pricing import PriceTable
from proxy.protocols import Call, HopStream, ModelTurn, Prompt, StreamEvent, add_usage, anchor_digest
from proxy.retrieval import LAST_ROUND_NOTE, Original, duration, ref_of, select, tool_spec
from proxy.secret import server_secret
from proxy.sessions import SessionStore
from proxy.translog import FailOpen, HopUsage, RetrievalRecord, retrieval_overhead_tokens

__all__ = ["Hidden", "ToolLoop"]

_log = structlog.get_logger("nocp.toolloop")


class Hidden(msgspec.Struct, frozen=True):
    """The messages that stand, for the model, where the client holds one assistant answer:
    the model's own messages of the rounds (nocp's calls included) and nocp's answers."""

    messages: list[Any]


_original_decoder = msgspec.json.Decoder(Original)
_hidden_decoder = msgspec.json.Decoder(Hidden)
_encoder = msgspec.json.Encoder()
_UNDECIDED: Final = "undecided"


def scope(tenant: str, session: str | None) -> str:
    """The key prefix of everything stored for ``session`` of ``tenant``."""
    raw = f"{tenant}\0{session or '-'}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


class ToolLoop:
    """The feature: retrieval config, the session store and the tool nocp offers."""

    def __init__(
        self,
        config: RetrievalConfig,
        store: SessionStore,
        *,
        session_ttl_s: float,
        secret: str = "",
        prices: PriceTable | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.session_ttl_s = session_ttl_s
        self.secret = secret
        self.prices = prices
        self.spec = tool_spec(config)

    @classmethod
    def from_settings(cls, settings: Settings, store: SessionStore) -> ToolLoop | None:
        """The feature when ``retrieval.enabled``, else None."""
        if not settings.retrieval.enabled:
            return None
        return cls(
            settings.retrieval,
            store,
            session_ttl_s=max(settings.sessions.ttl_s, settings.retrieval.ttl_s),
            secret=server_secret(settings),
            prices=PriceTable.from_config(settings.pricing),
        )

    def begin(self, x: Exchange) -> LoopRequest | None:
        """The loop's state for one request (None when no stage runs or none may cut: nothing is
        ever cut)."""
        return LoopRequest(self, x) if x.services.pipeline and x.treatment.policy == "auto" else None


class LoopRequest(FeatureRequest):
    """The tool loop in one request (see the module docstring)."""

    def __init__(self, app: ToolLoop, x: Exchange) -> None:
        self.app = app
        self.config = app.config
        self.tool_name = app.config.tool_name
        self.marker_key = app.secret
        self.intercept = x.adapter.intercepts(x.body, self.tool_name)
        self.owns_response = self.intercept
        self.tool = self.tool_name if self.intercept else None
        self.scope = scope(x.tenant, x.record.session_id)
        self.record = x.record
        self.model = x.model
        self.cut_originals: dict[str, Original] = {}
        self.conversation: set[str] = set()  # marker ids of the request sent: the ids answered
        self.offered = False
        self.rounds = 0
        self.prior: dict[str, Any] | None = None  # raw usage of the rounds so far, summed
        self.sent: dict[str, Any] | None = None  # the last request sent, for a follow-up
        self.hidden: list[Any] = []  # the rounds' messages, as the model saw them
        self.shown: list[str] = []  # text the client received (every hop of a stream)
        # per streamed hop
        self.mode: Literal["undecided", "relay", "consume"] = _UNDECIDED
        self.held: list[StreamEvent] = []
        self.tail = False
        self.failed: str | None = None
        self.raw = bytearray()  # the hop as received, until something reaches the client
        self.released = False

    # ----------------------------------------------------------------- keys, failures

    def _okey(self, ref: str) -> str:
        return f"o:{self.scope}:{ref}"

    def _hkey(self, index: int, anchor: str) -> str:
        return f"h:{self.scope}:{index}:{anchor}"

    def _akey(self, response_id: str) -> str:
        return f"a:{self.scope}:{response_id}"

    def fail_open(self, where: str, exc: BaseException) -> None:
        """Record and log a failure of the loop; the request goes on."""
        reason = f"{where}: {type(exc).__name__}: {exc}"[:500]
        self.record.fail_open.append(FailOpen(stage="retrieval", reason=reason))
        _log.warning("retrieval_failed_open", reason=reason)

    # ----------------------------------------------------------------- for the stages

    @property
    def cuts(self) -> LoopRequest:
        return self

    def add_cut(self, ref: str, text: str, *, tool: str | None, content_type: str, kind: str) -> None:
        """A stage made a lossy cut whose markers carry ``ref``; ``text`` is the original."""
        self.cut_originals.setdefault(
            ref, Original(text=text, tool=tool, content_type=content_type, kind=kind)
        )

    def original_of(self, text: str) -> str | None:
        """The original of a cut this request made, whose marker ``text`` carries (else None)."""
        if ID_SUFFIX not in text:
            return None
        return next((self.cut_originals[r].text for r in marker_ids(text) if r in self.cut_originals), None)

    # ----------------------------------------------------------------- before the stages

    def _anchor(self, x: Exchange, turns: list[Any]) -> str:
        return anchor_digest(*x.adapter.client_view(turns, self.tool_name))

    async def before_stages(self, x: Exchange) -> bool:
        """Put back the rounds of earlier requests; True if any was."""
        if not self.intercept:
            return False
        chained = await self._rechain(x)
        return await self._put_back(x) or chained

    async def _rechain(self, x: Exchange) -> bool:
        """A request that continues a streamed response nocp answered in several upstream
        responses (the client holds the first one's id) continues the last of them."""
        prev = x.adapter.chained_from(x.body)
        if prev is None:
            return False
        try:
            (final,) = await self.app.store.get_blobs([self._akey(prev)], ttl_s=self.app.session_ttl_s)
        except Exception as exc:
            self.fail_open("response chain", exc)
            return False
        if not final:
            return False
        x.adapter.chain_to(x.body, final.decode())
        return True

    async def _put_back(self, x: Exchange) -> bool:
        try:
            turns = x.body[x.adapter.turns_key]
            spans = x.adapter.assistant_spans(x.body)
            if not spans:
                return False
            keys = [self._hkey(start, self._anchor(x, turns[start:end])) for start, end in spans]
            values = await self.app.store.get_blobs(keys, ttl_s=self.app.session_ttl_s)
            found = [(span, _hidden_decoder.decode(v)) for span, v in zip(spans, values, strict=True) if v]
            for (start, end), hidden in reversed(found):  # from the end: earlier spans stay valid
                turns[start:end] = hidden.messages
            return bool(found)
        except Exception as exc:
            self.fail_open("putting back earlier rounds", exc)
            return False

    # ----------------------------------------------------------------- after the stages

    async def after_stages(self, x: Exchange, before: Prompt, after: Prompt) -> Prompt:
        """Store the originals of the cuts sent and decide whether the tool is offered; when
        it is not, the markers say so."""
        texts = [s.text for s in after.segments if ID_SUFFIX in s.text]
        if after.rollup is not None:
            texts.append(after.rollup.text)
        self.conversation = {ref for t in texts for ref in marker_ids(t)}
        present = sorted(ref for ref in self.conversation if ref in self.cut_originals)
        blocker = x.adapter.retrieval_blocker(x.body, self.tool_name)
        if not present:
            agent = x.body.get("tools") or any(g.kind in ("tool_call", "tool_output") for g in after.segments)
            if self.config.offer_to_agents and agent and blocker is None:
                self.offered = self.record.retrieval_offered = True
            return after
        if blocker is None and await self._tools_fixed(x) and not self._worth_a_new_tool(x, before, after):
            # The session's tool list so far had no nocp tool: adding one would cost the whole
            # cached prompt one miss, more than the cuts save. New cuts are undone instead.
            _log.debug("retrieval_not_offered", reason="tool list fixed, cuts not worth a cache miss")
            self.conversation -= set(present)
            return _undo(before, after, set(present))
        if blocker is None:
            try:
                await self._store_originals(present)
            except Exception as exc:
                self.fail_open("storing originals", exc)
                blocker = "store unavailable"
        if blocker is not None:
            _log.debug("retrieval_not_offered", reason=blocker)
            self.conversation -= set(present)
            return _mark_unavailable(before, after, set(present))
        self.offered = self.record.retrieval_offered = True
        await self._note_offered(x)
        return after

    def _tkey(self) -> str:
        return f"t:{self.scope}"

    async def _tools_fixed(self, x: Exchange) -> bool:
        """True when this is a later request of its session and nocp's tool was not offered in
        it before: offering it now would change the tool list, which comes first in the prompt
        the provider has cached (implicitly, or at breakpoints)."""
        if not x.adapter.assistant_spans(x.body):
            return False
        try:
            (seen,) = await self.app.store.get_blobs([self._tkey()], ttl_s=self.app.session_ttl_s)
        except Exception as exc:
            self.fail_open("tool list state", exc)
            return False
        return not seen

    def _worth_a_new_tool(self, x: Exchange, before: Prompt, after: Prompt) -> bool:
        """Whether the cuts of this request pay for the cache miss a new tool causes: the whole
        prompt billed uncached once (or, where the provider caches at breakpoints, written again
        at 1.25x) instead of read at the cached price, against the tokens the cuts remove now
        and on the next ``retrieval.cache_horizon_turns`` turns (at the cached price;
        :mod:`proxy.cacheecon`). A fixed horizon here, measured: weighing the tool over the
        turns the session has had (as aging does) only delays it to a later turn, where the
        same miss costs more (SWE-agent text-mode replays 1.2% -> -0.2% cost saved). Prices
        are the model's (``proxy.pricing``); unknown: cached at half the input price."""
        cut = sum(
            tokens.count(old.text, self.model) - tokens.count(new.text, self.model)
            for old, new in zip(before.segments, after.segments, strict=True)
            if new.text != old.text
        )
        cached = cached_ratio(self.app.prices, self.model)
        write = BREAKPOINT_WRITE if x.adapter.caches_at_breakpoints else 1.0
        r = after.rollup
        fresh_rollup = r is not None and any(
            s.kind == "history" and s.method.startswith("history_rollup") for s in self.record.segments
        )
        if fresh_rollup and r is not None:  # the prompt from the roll-up on misses anyway
            prompt = sum(tokens.count(s.text, self.model) for s in before.segments if s.index < r.start)
            rolled = sum(
                tokens.count(s.text, self.model) for s in before.segments if r.start <= s.index < r.end
            )
            cut += max(0, rolled - tokens.count(r.text, self.model))
        else:
            prompt = x.adapter.count_prompt(x.body, self.model)
        horizon = self.config.cache_horizon_turns
        decision = decide_miss(removed=cut, miss_tokens=prompt, cached=cached, write=write, horizon=horizon)
        worth = decision.pays
        _log.info(
            "new_tool_decision",
            cut_tokens=cut,
            prompt_tokens=prompt,
            cached_price=round(cached, 3),
            horizon_turns=horizon,
            offer=worth,
        )
        return worth

    async def _note_offered(self, x: Exchange) -> None:
        try:
            await self.app.store.put_blobs({self._tkey(): b"1"}, ttl_s=self.app.session_ttl_s)
        except Exception as exc:
            self.fail_open("tool list state", exc)

    async def _store_originals(self, refs: list[str]) -> None:
        store, ttl = self.app.store, self.config.ttl_s
        keys = [self._okey(r) for r in refs]
        live = await store.touch_blobs(keys, ttl_s=ttl)
        missing = {
            k: _encoder.encode(self.cut_originals[r])
            for k, r, ok in zip(keys, refs, live, strict=True)
            if not ok
        }
        await store.put_blobs(missing, ttl_s=ttl)

    def before_send(self, x: Exchange) -> bool:
        if self.offered:
            x.adapter.add_tool(x.body, self.app.spec)
            return True
        return False

    # ----------------------------------------------------------------- answering

    @property
    def allow_round(self) -> bool:
        """True while another round may follow: ``max_rounds`` with the tool offered, and one
        more for a model that calls it after it was withdrawn."""
        return self.rounds <= self.config.max_rounds

    async def _round(self, x: Exchange, turn: ModelTurn, ours: list[Call]) -> dict[str, Any]:
        """Answer a round's calls; the request that continues the conversation."""
        answers = await self._answer(ours)
        self.prior = add_usage(turn.usage, self.prior)
        self.rounds += 1
        self.record.retrieval_rounds = self.rounds
        self.hidden += [*turn.turns(), *x.adapter.tool_results(answers)]
        body = x.adapter.follow_up(self.sent or x.body, turn, answers)
        if self.rounds >= self.config.max_rounds:
            x.adapter.remove_tool(body, self.tool_name, forbid_calls=self.rounds > self.config.max_rounds)
        self.sent = body
        return body

    async def _answer(self, calls: list[Call]) -> list[tuple[Call, str]]:
        """The tool result for each call; records each retrieval."""
        refs = [ref_of(c) for c in calls]
        wanted = list(dict.fromkeys(r for r, _ in refs if r and r in self.conversation))
        originals: dict[str, Original] = {}
        failed = False
        if wanted:
            try:
                values = await self.app.store.get_blobs(
                    [self._okey(r) for r in wanted], ttl_s=self.config.ttl_s
                )
                originals = {r: _original_decoder.decode(v) for r, v in zip(wanted, values, strict=True) if v}
            except Exception as exc:
                self.fail_open("reading originals", exc)
                failed = True
        last = self.rounds + 1 >= self.config.max_rounds
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
                    f"{duration(self.config.ttl_s)} after their last use) or never existed. Answer from "
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
                    deferred=False,
                    tokens=n,
                )
            )
            out.append((call, text))
        return out

    async def _remember(
        self, x: Exchange, turn: ModelTurn, answers: list[tuple[Call, str]], visible: list[Any]
    ) -> None:
        """Store the rounds (and answers to calls the client did not get) under the answer
        the client got, ``visible``, for the next requests to put back."""
        if not self.hidden and not answers:
            return
        messages = [*self.hidden, *turn.turns(), *x.adapter.tool_results(answers)]
        key = self._hkey(x.client_len, self._anchor(x, visible))
        try:
            await self.app.store.put_blobs(
                {key: _encoder.encode(Hidden(messages=messages))}, ttl_s=self.app.session_ttl_s
            )
        except Exception as exc:
            self.fail_open("storing the rounds", exc)

    async def _alias(self, client_id: str, final_id: str) -> None:
        try:
            await self.app.store.put_blobs(
                {self._akey(client_id): final_id.encode()}, ttl_s=self.app.session_ttl_s
            )
        except Exception as exc:
            self.fail_open("storing the response chain", exc)

    def _defer(self, ours: list[Call]) -> None:
        """The answers to ``ours`` reach the model only in the next requests."""
        for rec in self.record.retrievals[len(self.record.retrievals) - len(ours) :]:
            rec.deferred = True

    # ----------------------------------------------------------------- whole answers

    async def on_reply(self, x: Exchange, data: bytes) -> tuple[bytes, dict[str, Any] | None]:
        try:
            turn = x.adapter.model_turn(data)
            if turn is None:
                return (
                    x.adapter.client_reply(data, self.tool_name, self.prior) if self.prior else data
                ), None
            ours = [c for c in turn.calls if c.name == self.tool_name]
            if ours and len(ours) == len(turn.calls) and self.allow_round:
                return data, await self._round(x, turn, ours)
            answers = await self._answer(ours) if ours else []
            self._defer(ours)
            await self._remember(x, turn, answers, turn.turns())
            if ours or self.prior or (self.offered and x.adapter.echoes_tools):
                data = x.adapter.client_reply(data, self.tool_name, self.prior)
            return data, None
        except Exception as exc:
            self.fail_open("answer", exc)
            return data, None

    # ----------------------------------------------------------------- streamed answers

    def _decide(self, event: StreamEvent) -> None:
        if self.mode != _UNDECIDED:
            return
        # Held only when the answer begins with nocp's call: anything else (a role chunk
        # included) goes out at once; a round found later continues the same client stream.
        ours = bool(event.calls) and event.calls[0] == self.tool_name and self.allow_round
        self.mode = "consume" if ours else "relay"

    def _render(self, hop: HopStream, events: Iterable[StreamEvent]) -> bytes:
        out = []
        for event in events:
            data = hop.render(event, self.prior)
            if data:
                out.append(data)
                if event.text:
                    self.shown.append(event.text)
        return b"".join(out)

    def on_chunk(self, x: Exchange, hop: HopStream, chunk: bytes) -> bytes:
        if self.failed is not None:
            return chunk
        if not self.released:
            self.raw += chunk
        try:
            out: list[bytes] = []
            for event in hop.feed(chunk):
                self._decide(event)
                if self.mode == "relay" and not self.tail:
                    if self.held:
                        out.append(self._render(hop, self.held))
                        self.held.clear()
                    if event.finishing:
                        self.tail = True  # from the finish on, events wait for the hop's end
                        self.held.append(event)
                    else:
                        out.append(self._render(hop, (event,)))
                else:
                    self.held.append(event)
            data = b"".join(out)
            if data:
                self.released = True
                self.raw = bytearray()
            return data
        except Exception as exc:  # fail open: from here on, pass the stream through
            return self._fail(exc, chunk)

    def _fail(self, exc: Exception, chunk: bytes) -> bytes:
        self.failed = f"{type(exc).__name__}: {exc}"[:300]
        self.fail_open("stream", exc)
        if self.released:
            return chunk
        self.released = True
        data, self.raw = bytes(self.raw), bytearray()
        return data

    def _next_hop(self) -> None:
        self.mode, self.held, self.tail, self.raw = _UNDECIDED, [], False, bytearray()

    async def on_stream_end(self, x: Exchange, hop: HopStream) -> tuple[bytes, dict[str, Any] | None]:
        if self.failed is not None:
            return b"", None
        try:
            for event in hop.close():
                self._decide(event)
                self.held.append(event)
            ours, client = hop.ours(), hop.client_calls()
            turn = hop.turn()
            if ours and not client and self.allow_round:
                follow = await self._round(x, turn, ours)  # what is held never reaches the client
                self._next_hop()
                return b"", follow
            answers = await self._answer(ours) if ours else []
            self._defer(ours)
            data = self._render(hop, self.held) + hop.end()  # the client gets it after _remember
            self.held.clear()
            await self._remember(x, turn, answers, x.adapter.visible_turns("".join(self.shown), client))
            if self.rounds and turn.id and hop.client_id and turn.id != hop.client_id:
                await self._alias(hop.client_id, turn.id)
            return data, None
        except Exception as exc:  # fail open: what came, as far as the client has not had it
            self.fail_open("stream end", exc)
            self.failed = f"{type(exc).__name__}: {exc}"[:300]
            if not self.released:
                return bytes(self.raw), None
            try:
                return self._render(hop, self.held) + hop.end(), None
            except Exception:
                return b"", None

    # ----------------------------------------------------------------- finish

    def finish(self, x: Exchange) -> None:
        """Per-hop usage, and what the rounds cost, into the record."""
        hops = x.hops
        if len(hops) <= 1 or not self.rounds:  # more calls without a round: not the loop's (a retry)
            return
        rec = self.record
        rec.retrieval_hops = [
            HopUsage(
                prompt_tokens=u.prompt_tokens,
                cached_tokens=u.cached_tokens,
                completion_tokens=u.completion_tokens,
            )
            for u in hops
        ]
        # What the rounds cost, subtracted from the savings like a summarizer's tokens.
        rec.compression_overhead_tokens += retrieval_overhead_tokens(hops, self.rounds)


def _undo(before: Prompt, after: Prompt, present: set[str]) -> Prompt:
    """``after`` with the segments cut under ``present`` back as they were (a roll-up stays:
    its markers say not retrievable)."""
    for i, (old, new) in enumerate(zip(before.segments, after.segments, strict=True)):
        if new.text != old.text and any(ref in present for ref in marker_ids(new.text)):
            after = after.with_text(i, old.text)
    if after.rollup is not None:
        r = after.rollup
        after = after.with_rollup(r.start, r.end, unavailable(r.text, present))
    return after


def _mark_unavailable(before: Prompt, after: Prompt, present: set[str]) -> Prompt:
    for i, (old, new) in enumerate(zip(before.segments, after.segments, strict=True)):
        if new.text != old.text:
            after = after.with_text(i, unavailable(new.text, present))
    if after.rollup is not None:
        r = after.rollup
        after = after.with_rollup(r.start, r.end, unavailable(r.text, present))
    return after
