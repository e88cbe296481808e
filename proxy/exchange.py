"""One request's lifecycle, transport-free: parsed body in, client response out.

The server hands an :class:`Exchange` the client's request (:class:`ClientRequest`), the
upstream as an injected ``send`` callable (like an httpx transport) and the client side as a
:class:`ClientSide`; everything between is here, so the whole lifecycle runs in tests and
benchmarks without a socket. The phases, in order:

1. parse (the protocol's adapter), session, model, upstream;
2. **before stages**: features put back what earlier requests owe (the tool loop's hidden
   retrieval rounds);
3. **stages**: the pipeline rewrites the prompt;
4. **after stages**: features look at what the stages produced (originals of cuts stored,
   the retrieval tool offered or markers marked not retrievable); the adapter writes the
   prompt back, features make their last edits, the adapter enforces its turn rules;
5. **send**, and **on response / on stream event**: the upstream's answer goes to the client
   as it arrives, through the feature that owns responses (the tool loop), which may answer a
   call itself and ask for another upstream call (a follow-up) in the same client response;
6. **finish**: the TransactionLog record goes to the writer (metrics and drift follow it).

A feature is anything with a ``begin(exchange)`` that returns a :class:`FeatureRequest` (or
None to stay out of this request). Features never talk HTTP; adapters never hold features.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import Settings
from proxy.exceptions import ModelNotFound, ProxyHTTPError, UpstreamUnavailable
from proxy.pipeline import ArmChooser, CutRecorder, Pipeline, StageContext
from proxy.pricing import CostModel
from proxy.protocols import Adapter, HopStream, Prompt, Usage, decode_json_object, encode_json
from proxy.translog import FailOpen, Finalizer, TransactionLog, redact
from proxy.treatment import ShadowCuts, Treatment, treatment_of
from proxy.upstream import apply_api_key, forward_headers, upstream_url

__all__ = [
    "ClientRequest",
    "ClientSide",
    "Exchange",
    "Feature",
    "FeatureRequest",
    "RecordWriter",
    "Send",
    "Services",
    "UpstreamRequest",
    "UpstreamResponse",
    "client_key",
    "tenant_of",
]

_log = structlog.get_logger("nocp.exchange")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_OFFLOAD_BYTES = 64 * 1024


# ------------------------------------------------------------------------------ the seams


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One call to the upstream."""

    method: str
    url: URL
    headers: CIMultiDict[str]
    body: bytes


class UpstreamResponse(Protocol):
    """What ``send`` yields: the upstream's status, headers and body (whole or in chunks)."""

    status: int
    reason: str | None

    @property
    def headers(self) -> CIMultiDictProxy[str] | CIMultiDict[str]:
        """The response headers."""

    async def read(self) -> bytes:
        """The whole body."""

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""


Send = Callable[[UpstreamRequest], AbstractAsyncContextManager[UpstreamResponse, Any]]


class ClientSide(Protocol):
    """Where the client's response goes: a head, then body bytes, then the end."""

    @property
    def started(self) -> bool:
        """True once the head was sent."""

    async def start(
        self, status: int, reason: str | None, headers: CIMultiDict[str], *, length: int | None
    ) -> None:
        """Send the status line and headers (``length``: a whole body of that size follows)."""

    async def write(self, data: bytes) -> None:
        """Send body bytes; raises ``ConnectionResetError`` when the client is gone."""

    async def end(self) -> None:
        """The body is complete."""

    def abort(self) -> None:
        """Cut the connection: the client must see an error, not a clean end."""

    def gone(self) -> bool:
        """True when the client closed its connection."""


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """The client's request as the server read it."""

    path: str
    raw_path: str
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    query: Mapping[str, str]
    match_info: Mapping[str, str]
    body: bytes
    tenant: str | None = None  # the tenant an auth key maps to (None: from the credential)


class RecordWriter(Protocol):
    """Where finished TransactionLog records go (:class:`~proxy.translog.TransactionLogWriter`)."""

    def submit(
        self, record: TransactionLog, finalize: Finalizer | None = None, *, offload: bool = False
    ) -> None:
        """Take one record; ``finalize`` fills in what is costly to compute, off the request path."""


class FeatureRequest:
    """A feature's part in one exchange: a method per phase, each doing nothing by default.

    ``owns_response``: this feature sees every upstream answer before the client does (a
    stream: only the first that asks; a whole answer: each in turn, until one continues).
    A feature may set ``x.stream`` False in ``before_send`` to ask the upstream for a whole
    answer; the client then gets it as one stream (``on_reply`` returns the stream's bytes)."""

    owns_response: bool = False
    tool: str | None = None  # a tool whose calls the owner takes out of what the client gets

    @property
    def cuts(self) -> CutRecorder | None:
        """Where lossy stages record reversible cuts, if this feature keeps them."""
        return None

    @property
    def arms(self) -> ArmChooser | None:
        """Where the tool-output stage gets per-output arms, if this feature chooses them."""
        return None

    async def before_stages(self, x: Exchange) -> bool:
        """Before the stages; True if the body changed."""
        return False

    async def after_stages(self, x: Exchange, before: Prompt, after: Prompt) -> Prompt:
        """After the stages, before the prompt is written back: the prompt to apply."""
        return after

    def before_send(self, x: Exchange) -> bool:
        """Last edits of the body; True if it changed."""
        return False

    def on_chunk(self, x: Exchange, hop: HopStream, chunk: bytes) -> bytes:
        """A streamed chunk arrived: the bytes the client gets now."""
        return chunk

    async def on_stream_end(self, x: Exchange, hop: HopStream) -> tuple[bytes, dict[str, Any] | None]:
        """A streamed answer ended: (the last bytes for the client, None), or (b"", the next
        request) to continue the same client stream with another upstream call."""
        return b"", None

    async def on_reply(self, x: Exchange, data: bytes) -> tuple[bytes, dict[str, Any] | None]:
        """A whole answer arrived: (what the client gets, None), or (_, the next request)."""
        return data, None

    def finish(self, x: Exchange) -> None:
        """The exchange is over (also after an error); the record is not written yet."""


class Feature(Protocol):
    """A feature of the application (e.g. the retrieval tool loop)."""

    def begin(self, x: Exchange) -> FeatureRequest | None:
        """Its part in ``x`` (None: nothing to do in this request)."""


@dataclass(slots=True)
class Services:
    """What every exchange of one application shares."""

    settings: Settings
    pipeline: Pipeline
    writer: RecordWriter
    cost: CostModel | None = None
    features: Sequence[Feature] = ()
    streams_in_flight: Any = None  # a gauge with inc() / dec(), or None


# ------------------------------------------------------------------------------ helpers


def client_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The client's own API key, if it sent one."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or query.get("key") or None


def tenant_of(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """Who sent a request: a hash of the client's credential (``-`` when it sent none).
    Everything nocp stores for a request is scoped by this and the session id."""
    key = client_key(headers, query)
    if not key:
        return "-"
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _finalizer(
    x: Exchange, original: bytes, body: dict[str, Any], changed: bool, cost: CostModel | None
) -> Finalizer:
    """Previews and token counts, filled in by the log writer after the response is sent.

    When nocp changed nothing, raw and sent tokens are the upstream's own ``prompt_tokens``
    (what was billed) and no tokenizer runs; otherwise both versions are counted locally.
    The cost fields come last: they need both the upstream's usage and the token counts (and
    the raw prompt's fingerprint, compared with the session's previous one).
    """
    adapter, record, model = x.adapter, x.record, x.model
    query_chars = x.services.settings.log.user_query_chars

    def finalize() -> None:
        received = decode_json_object(original) if changed else body
        prompt = adapter.prompt(received, turns=False)
        if query_chars and (query := prompt.latest_user_text()):
            record.user_query = query[:query_chars]
        record.tools_invoked = adapter.tools_invoked(prompt)
        if x.shadow_body is not None:  # shadow: the original was sent; what would have been, counted
            raw = adapter.count_prompt(received, model)
            record.set_input_tokens(raw, raw)
            record.shadow_input_tokens = adapter.count_prompt(x.shadow_body, model)
        elif not changed and record.prompt_tokens is not None and len(x.hops) <= 1:
            record.set_input_tokens(record.prompt_tokens, record.prompt_tokens)
        else:
            raw = adapter.count_prompt(received, model)
            record.set_input_tokens(raw, adapter.count_prompt(body, model) if changed else raw)
        if x.shadowed and record.shadow_input_tokens is None:  # the stages changed nothing
            record.shadow_input_tokens = record.raw_input_tokens
        if cost is not None:  # the raw prompt's cache use, per session (ok answers only)
            cache = cost.observe(
                x.tenant, record.session_id, adapter, received, model, record, changed=changed
            )
            cost.apply(record, cache)

    return finalize


def _sum(values: Sequence[int | None]) -> int | None:
    return sum(v for v in values if v is not None) if any(v is not None for v in values) else None


class _ShadowRequest(FeatureRequest):
    """Shadow mode's only feature: lossy stages record their cuts in a :class:`ShadowCuts`."""

    def __init__(self, cuts: ShadowCuts | None) -> None:
        self._cuts = cuts

    @property
    def cuts(self) -> CutRecorder | None:
        return self._cuts


# ------------------------------------------------------------------------------ the exchange


@dataclass(eq=False)
class Exchange:
    """The lifecycle of one request on a rewriting endpoint (see the module docstring)."""

    services: Services
    adapter: Adapter
    request: ClientRequest
    send: Send
    client: ClientSide
    record: TransactionLog = field(init=False)
    body: dict[str, Any] = field(init=False, default_factory=dict)
    model: str = field(init=False, default="")
    stream: bool = field(init=False, default=False)
    injected_usage: bool = field(init=False, default=False)  # nocp asked for stream usage
    tenant: str = field(init=False, default="-")
    client_len: int = field(init=False, default=0)  # messages the client itself sent
    client_turns: set[int] = field(init=False, default_factory=set)  # their id()s
    hops: list[Usage] = field(init=False, default_factory=list)  # usage of each upstream call
    features: list[FeatureRequest] = field(init=False, default_factory=list)
    treatment: Treatment = field(init=False, default_factory=Treatment)  # see proxy.treatment
    shadowed: bool = field(init=False, default=False)  # shadow mode: the stages ran on a copy
    shadow_body: dict[str, Any] | None = field(init=False, default=None)  # what they made of it

    def __post_init__(self) -> None:
        self.record = TransactionLog(
            endpoint=self.request.path,
            protocol=self.adapter.protocol,
            session_id=self.request.headers.get("X-Session-Id"),
        )
        self.tenant = self.request.tenant or tenant_of(self.request.headers, self.request.query)

    async def run(self) -> None:
        """Serve the request: the client gets a response (or, once a stream has begun, an
        error event or a cut connection), and one TransactionLog record is written."""
        started = time.perf_counter()
        record, adapter, settings = self.record, self.adapter, self.services.settings
        log_context = structlog.contextvars.bind_contextvars(request_id=record.transaction_id)
        finalize: Finalizer | None = None
        changed = False
        try:
            req = self.request
            if len(req.body) > _OFFLOAD_BYTES * 16:  # a large body is decoded off the event loop
                body = await asyncio.to_thread(adapter.parse, req.body, req.match_info)
            else:
                body = adapter.parse(req.body, req.match_info)
            self.body = body
            record.session_id = adapter.session_id(req.headers, body)
            self.treatment = treatment_of(settings, req.headers, self.tenant, record)
            model = self.model = record.model = adapter.model(body, req.match_info)
            self.stream = record.stream = adapter.is_stream(body, req.match_info)
            up = settings.upstream_for(adapter.upstream_protocol, model)
            if up is None:
                raise ModelNotFound(
                    f"The model '{model}' is not served by any configured upstream",
                    param="model",
                    code="model_not_found",
                )
            record.upstream = up.name
            turns = body.get(adapter.turns_key)
            turns = turns if isinstance(turns, list) else []
            self.client_len = len(turns)
            self.client_turns = {id(m) for m in turns}
            if self.treatment.applies:
                self.features = [r for f in self.services.features if (r := f.begin(self)) is not None]
                if self.services.pipeline or self.features:
                    changed = await self._rewrite()
            elif self.treatment.runs_stages and self.services.pipeline:  # shadow mode
                body = await self._shadow()
            self.injected_usage = adapter.prepare_upstream(body, self.stream)  # a feature may unstream
            payload = encode_json(body) if changed or self.injected_usage else req.body
            finalize = _finalizer(self, req.body, body, changed, self.services.cost)
            headers = forward_headers(req.headers, drop=("Content-Length", "Accept-Encoding"))
            apply_api_key(headers, up)
            await self._upstream(upstream_url(up, req.raw_path), headers, payload)
        except ProxyHTTPError as err:
            record.status = err.status
            record.outcome = "client_error" if err.status < 500 else "upstream_error"
            record.error_message = redact(err.message)
            await self._error(err)
        except (asyncio.CancelledError, ConnectionResetError):
            record.outcome = "cancelled"
            raise
        except Exception as exc:
            _log.exception("proxy_error", path=self.request.path)
            record.status = 500
            record.outcome = "proxy_error"
            record.error_message = type(exc).__name__
            await self._error(ProxyHTTPError("internal proxy error"))
        finally:
            for f in self.features:
                try:
                    f.finish(self)
                except Exception:
                    _log.exception("feature_finish_failed")
            if self.hops:
                record.prompt_tokens = _sum([u.prompt_tokens for u in self.hops])
                record.cached_tokens = _sum([u.cached_tokens for u in self.hops])
                record.completion_tokens = _sum([u.completion_tokens for u in self.hops])
                record.cache_creation_input_tokens = _sum([u.cache_write_tokens for u in self.hops])
                record.cache_creation_1h_input_tokens = _sum([u.cache_write_1h_tokens for u in self.hops])
            record.total_latency_ms = _elapsed_ms(started)
            record.proxy_overhead_ms = round(record.total_latency_ms - (record.llm_latency_ms or 0.0), 3)
            cost = self.services.cost
            offload = finalize is not None and (
                changed
                or record.prompt_tokens is None
                or len(self.request.body) > _OFFLOAD_BYTES
                or (cost is not None and cost.baselines is not None)  # it fingerprints the prompt
                or self.shadow_body is not None
            )
            self.services.writer.submit(record, finalize, offload=offload)
            structlog.contextvars.reset_contextvars(**log_context)

    # ----------------------------------------------------------------- stages

    async def _rewrite(self) -> bool:
        """Phases 2-4: features before, the stages, features after; True if the body changed."""
        t = time.perf_counter()
        adapter, body, record = self.adapter, self.body, self.record
        changed = False
        for f in self.features:
            changed = await f.before_stages(self) or changed
        before = adapter.prompt(body)
        ctx = StageContext(
            model=self.model,
            protocol=adapter.protocol,
            record=record,
            query=before.latest_user_text(),
            extras={"api_key": client_key(self.request.headers, self.request.query)},
            retrieval=next((c for f in self.features if (c := f.cuts) is not None), None),
            arms=next((a for f in self.features if (a := f.arms) is not None), None),
            tenant=self.tenant,
            policy=self.treatment.policy,
        )
        after = await self.services.pipeline.run(before, ctx)
        for f in self.features:
            after = await f.after_stages(self, before, after)
        changed = adapter.apply(body, before, after) or changed
        for f in self.features:
            changed = f.before_send(self) or changed
        changed = adapter.enforce_turns(body, self.client_turns) or changed
        record.compression_latency_ms = _elapsed_ms(t)
        return changed

    async def _shadow(self) -> dict[str, Any]:
        """Shadow mode: the stages (no feature) rewrite the parsed body, which is kept as
        ``shadow_body`` when they changed it; the body to send, a fresh parse of the client's
        bytes, is returned. Whatever goes wrong here, the original is sent (fail open)."""
        req, settings = self.request, self.services.settings
        if len(req.body) > _OFFLOAD_BYTES * 16:
            original = await asyncio.to_thread(self.adapter.parse, req.body, req.match_info)
        else:
            original = self.adapter.parse(req.body, req.match_info)
        cuts = ShadowCuts(settings.retrieval.tool_name) if settings.retrieval.enabled else None
        self.features = [_ShadowRequest(cuts)]
        self.shadowed = True
        try:
            if await self._rewrite():
                self.shadow_body = self.body
        except Exception as exc:
            _log.exception("shadow_failed")
            self.record.fail_open.append(FailOpen(stage="shadow", reason=type(exc).__name__))
        finally:
            self.features = []
        self.body = original
        return original

    # ----------------------------------------------------------------- upstream and client

    async def _error(self, err: ProxyHTTPError) -> None:
        if not self.client.started:
            data = encode_json(self.adapter.error_body(err))
            headers = CIMultiDict({"Content-Type": "application/json"})
            await self.client.start(err.status, None, headers, length=len(data))
            await self.client.write(data)
            await self.client.end()
        else:  # a stream already began: an error event, then the end
            await self.client.write(self.adapter.stream_error(err))
            await self.client.end()

    async def _whole(self, status: int, reason: str | None, upstream_headers: Any, data: bytes) -> None:
        headers = forward_headers(upstream_headers, drop=("Content-Length",))
        if self.record.stream and not self.stream and status < 400:  # a stream made of a whole answer
            headers["Content-Type"] = "text/event-stream; charset=utf-8"
            headers.update(STREAM_HEADERS)
        await self.client.start(status, reason, headers, length=len(data))
        await self.client.write(data)
        await self.client.end()

    async def _upstream(self, url: URL, headers: CIMultiDict[str], payload: bytes) -> None:
        """Phase 5: one upstream call, or more when the response owner continues."""
        owner = next((f for f in self.features if f.owns_response), None)
        record = self.record
        sent_at = time.perf_counter()
        prev: HopStream | None = None
        try:
            while True:
                if self.hops and self.client.gone():
                    raise ConnectionResetError("client went away between upstream calls")
                async with self.send(UpstreamRequest("POST", url, headers, payload)) as resp:
                    record.status = resp.status
                    if resp.status >= 400:
                        data = await resp.read()
                        record.outcome = "upstream_error"
                        record.error_message = redact(data[:300].decode("utf-8", "replace"))
                        self.hops.append(Usage())
                        if self.client.started:  # a follow-up failed after the stream began
                            await self._error(UpstreamUnavailable(f"upstream answered {resp.status}"))
                        else:
                            await self._whole(resp.status, resp.reason, resp.headers, data)
                        return
                    if self.stream:
                        hop = self.adapter.hop_stream(
                            owner.tool if owner else None, drop_usage_chunk=self.injected_usage, after=prev
                        )
                        follow = await self._relay(resp, hop, owner, sent_at)
                        prev = hop
                    else:
                        data = await resp.read()
                        if record.ttft_ms is None:
                            record.ttft_ms = _elapsed_ms(sent_at)
                        self.hops.append(self.adapter.usage(data))
                        follow = None
                        for own in (f for f in self.features if f.owns_response):  # in order
                            data, follow = await own.on_reply(self, data)
                            if follow is not None:
                                break
                        if follow is None:
                            await self._whole(resp.status, resp.reason, resp.headers, data)
                if follow is None:
                    return
                payload = encode_json(follow)
        finally:
            record.llm_latency_ms = _elapsed_ms(sent_at)

    async def _relay(
        self, resp: UpstreamResponse, hop: HopStream, owner: FeatureRequest | None, sent_at: float
    ) -> dict[str, Any] | None:
        """Relay one streamed answer as it arrives; the next request when the owner continues."""
        gauge = self.services.streams_in_flight
        if gauge is not None:
            gauge.inc()
        try:
            try:
                async for chunk in resp.iter_chunks():
                    if owner is not None:
                        data = owner.on_chunk(self, hop, chunk)
                    elif hop.passthrough:
                        hop.feed(chunk)
                        data = chunk
                    else:
                        data = b"".join(r for e in hop.feed(chunk) if (r := hop.render(e, None)))
                    if data:
                        await self._stream_bytes(resp, data, sent_at)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                self.record.outcome = "upstream_error"
                self.record.error_message = f"upstream stream broke: {type(exc).__name__}"
                _log.warning("upstream_stream_broken", error=type(exc).__name__)
                self.hops.append(hop.usage)
                if not self.client.started:
                    raise UpstreamUnavailable("upstream stream broke before the answer began") from None
                self.client.abort()
                return None
            if owner is not None:
                tail, follow = await owner.on_stream_end(self, hop)
            else:
                events = hop.close()
                tail = b"" if hop.passthrough else b"".join(r for e in events if (r := hop.render(e, None)))
                tail += b"" if hop.passthrough else hop.end()
                follow = None
            self.hops.append(hop.usage)
            if follow is not None:
                return follow
            if tail or not self.client.started:
                await self._stream_bytes(resp, tail, sent_at)
            await self.client.end()
            return None
        finally:
            if gauge is not None:
                gauge.dec()

    async def _stream_bytes(self, resp: UpstreamResponse, data: bytes, sent_at: float) -> None:
        if not self.client.started:
            headers = forward_headers(resp.headers, drop=("Content-Length",))
            headers.update(STREAM_HEADERS)
            await self.client.start(resp.status, resp.reason, headers, length=None)
        if data:
            if self.record.ttft_ms is None:
                self.record.ttft_ms = _elapsed_ms(sent_at)
            await self.client.write(data)
