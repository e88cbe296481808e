"""The aiohttp application: HTTP only.

Routes, body limits and passthrough live here; a request on a rewriting endpoint (every
route of every adapter in :data:`proxy.protocols.ADAPTERS`) is read and handed to an
:class:`~proxy.exchange.Exchange`, which owns it from the parsed body to the response and
writes the response through :class:`_Client`. Passthrough routes are relayed unchanged, with
no parsing, no stages and no log line.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy import protocols
from proxy.auth import Authenticator, Principal, RedisLimiter, strip_credentials
from proxy.config import Settings
from proxy.dashboard import DEFAULT_RECORDS, MAX_RECORDS, LogStats, page
from proxy.dashboard import policy as policy_rows
from proxy.drift import DriftMonitor
from proxy.exceptions import BadRequest, PayloadTooLarge, ProxyHTTPError
from proxy.exchange import ClientRequest, Exchange, Services, UpstreamRequest
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import Metrics
from proxy.output import OutputFormat
from proxy.pipeline import Pipeline, Stage, stage_name
from proxy.policy import LearnedPolicy
from proxy.policy import snapshot as policy_snapshot
from proxy.pricing import CostModel
from proxy.promptcache import PromptCache
from proxy.protocols import Adapter
from proxy.sessions import RedisSessionStore, SessionStore, open_store
from proxy.toolloop import ToolLoop
from proxy.translog import TransactionLogWriter, redact
from proxy.translog_cli import parse_since
from proxy.upstream import UpstreamClient, apply_api_key, forward_headers, upstream_url
from proxy.websocket import serve_websocket
from proxy.workers import CompressPool, release_memory_soon

_log = structlog.get_logger("nocp.server")
_LARGE_BODY = 4 * 1024 * 1024
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class ProxyState:
    """Everything the handlers share; one per application."""

    settings: Settings
    upstream: UpstreamClient
    writer: TransactionLogWriter
    pipeline: Pipeline
    metrics: Metrics
    drift: DriftMonitor
    services: Services
    cost: CostModel | None = None  # None: pricing switched off, cost fields stay null
    retrieval: ToolLoop | None = None  # None: reversible compression switched off
    adapters: tuple[Adapter, ...] = ()  # the protocols served (proxy.protocols.ADAPTERS)
    auth: Authenticator | None = None  # None: no client keys, no limits, admin paths open
    compress_pool: CompressPool | None = None  # worker processes for large compression jobs
    stats: LogStats | None = None  # /v1/nocp/stats and /dashboard: the log's tail, cached
    policy: LearnedPolicy | None = None  # the learned compression policy (proxy.policy.snapshot)


STATE = web.AppKey("nocp_state", ProxyState)


def _error(adapter: Adapter, err: ProxyHTTPError) -> web.Response:
    retry_after = getattr(err, "retry_after", None)  # a rate limit's
    return web.Response(
        body=_encoder.encode(adapter.error_body(err)),
        status=err.status,
        content_type="application/json",
        headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
    )


def _authenticate(request: web.Request) -> Principal | None:
    """The client key's principal (None: client auth is off); raises 401."""
    auth = request.app[STATE].auth
    return auth.authenticate(request.headers, request.query) if auth is not None else None


async def _admit(request: web.Request, principal: Principal | None, body_bytes: int) -> None:
    """Take the request from its key's rate limits; raises 429."""
    auth = request.app[STATE].auth
    if auth is not None:
        await auth.admit(principal, body_bytes)


def _as_sent(request: web.Request, principal: Principal | None) -> tuple[Any, Any, str]:
    """Headers, query and raw path to forward: without the client's key when it is nocp's."""
    if principal is None:
        return request.headers, request.query, request.raw_path
    return strip_credentials(request.headers, request.query, request.raw_path)


@dataclass(frozen=True, slots=True)
class _Forward:
    """Where a request forwarded as it came goes: the upstream URL, the headers for it (the
    upstream's key applied), the client's headers as sent on, and the client's tenant."""

    url: URL
    headers: CIMultiDict[str]
    client_headers: Any
    tenant: str | None


async def _forward(request: web.Request, adapter: Adapter, body_bytes: int) -> _Forward:
    """Authenticate and admit a request forwarded as it came (passthrough, WebSocket) and say
    where it goes: the adapter's upstream; raises 401 / 429."""
    principal = _authenticate(request)
    await _admit(request, principal, body_bytes)
    sent_headers, _, raw_path = _as_sent(request, principal)
    settings = request.app[STATE].settings
    up = settings.upstream_for(adapter.upstream_protocol, None) or settings.upstreams[0]
    headers = forward_headers(sent_headers)
    apply_api_key(headers, up)
    tenant = principal.tenant if principal is not None else None
    return _Forward(upstream_url(up, raw_path), headers, sent_headers, tenant)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes exceeds the {limit}-byte limit"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decoded(request: web.Request) -> bool:
    """True when aiohttp decompressed the request body (``Content-Encoding`` gzip, deflate, br
    or zstd): nocp forwards the decoded body, so that header (and the compressed length) must
    not go with it."""
    return request._message.compression is not None


def _adapter_of(request: web.Request) -> Adapter:
    """The adapter whose error shape a request gets: its route's, else the one that claims it."""
    handler = request.match_info.handler
    adapters = request.app[STATE].adapters
    routed = [a for a in getattr(handler, "args", ()) if isinstance(a, Adapter)]
    claims = (a for a in adapters if a.claims(request.path, request.headers, request.query))
    return routed[0] if routed else next(claims, adapters[0])


@web.middleware
async def _origin_form_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """400 for a request line whose target is not a path (``GET http://host/path``, ``*``):
    nocp is a reverse proxy, and such a target would otherwise be glued onto the upstream URL."""
    if request.raw_path.startswith("/"):
        response: web.StreamResponse = await handler(request)
        return response
    return _error(_adapter_of(request), BadRequest("the request target must be a path starting with '/'"))


class _Client:
    """The exchange's :class:`~proxy.exchange.ClientSide` over an aiohttp response."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    async def start(
        self, status: int, reason: str | None, headers: CIMultiDict[str], *, length: int | None
    ) -> None:
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if length is not None:
            response.content_length = length
        self.response = response
        await response.prepare(self.request)

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)  # raises ConnectionResetError when our client is gone

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()

    def gone(self) -> bool:
        return self.request.transport is None or self.request.transport.is_closing()


class _Upstream:
    """An aiohttp upstream response as the exchange's :class:`~proxy.exchange.UpstreamResponse`."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.status = resp.status
        self.reason = resp.reason
        self.headers = resp.headers
        self._resp = resp

    async def read(self) -> bytes:
        return await self._resp.read()

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return self._resp.content.iter_any()


def _sender(upstream: UpstreamClient) -> Any:
    @asynccontextmanager
    async def send(req: UpstreamRequest) -> AsyncIterator[_Upstream]:
        async with upstream.request(req.method, req.url, req.headers, req.body) as resp:
            yield _Upstream(resp)

    return send


async def _rewrite(adapter: Adapter, request: web.Request) -> web.StreamResponse:
    """A request nocp may rewrite: read it and hand it to an exchange."""
    state = request.app[STATE]
    try:
        principal = _authenticate(request)
        body = await _read_body(request, state.settings.server.max_body_bytes)
        await _admit(request, principal, len(body))
    except ProxyHTTPError as err:
        return _error(adapter, err)
    headers, query, raw_path = _as_sent(request, principal)
    if _decoded(request):  # the exchange sends the decoded body (or a re-encoding of it)
        headers = CIMultiDict(headers)
        headers.popall("Content-Encoding", None)
    client = _Client(request)
    exchange = Exchange(
        services=state.services,
        adapter=adapter,
        request=ClientRequest(
            path=request.path,
            raw_path=raw_path,
            headers=headers,
            query=query,
            match_info=request.match_info,
            body=body,
            tenant=principal.tenant if principal is not None else None,
        ),
        send=_sender(state.upstream),
        client=client,
    )
    await exchange.run()
    if len(body) >= _LARGE_BODY:  # its memory is freed now: give it back to the OS
        release_memory_soon()
    if client.response is None:  # the exchange always answers; this only guards the contract
        return _error(adapter, ProxyHTTPError("internal proxy error"))
    return client.response


async def _websocket(adapter: Adapter, request: web.Request) -> web.StreamResponse:
    """A WebSocket upgrade on one of an adapter's paths (anything else there: passthrough)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return await passthrough(request)
    state = request.app[STATE]
    try:
        to = await _forward(request, adapter, 0)
    except ProxyHTTPError as err:
        return _error(adapter, err)
    return await serve_websocket(
        request,
        adapter,
        state.services,
        state.upstream,
        to.url,
        to.headers,
        tenant=to.tenant,
        client_headers=to.client_headers,
    )


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Any other path: method, query, headers and body forwarded unchanged, streamed both ways.

    It goes to the upstream of the first adapter that claims it (Gemini: a ``/v1beta/`` or
    ``/upload/`` path, an ``x-goog-api-key`` header or a ``key`` query parameter), else to the
    first adapter's (OpenAI's).
    """
    state = request.app[STATE]
    adapters = state.adapters
    claims = (a for a in adapters if a.claims(request.path, request.headers, request.query))
    adapter = next(claims, adapters[0])
    try:
        to = await _forward(request, adapter, request.content_length or 0)
    except ProxyHTTPError as err:
        return _error(adapter, err)
    headers = to.headers
    if _decoded(request):  # the body streamed on is the decoded one, of unknown length
        headers.popall("Content-Encoding", None)
        headers.popall("Content-Length", None)
    data = request.content.iter_any() if request.body_exists else None
    try:
        async with state.upstream.request(request.method, to.url, headers, data) as resp:
            out = web.StreamResponse(
                status=resp.status, reason=resp.reason, headers=forward_headers(resp.headers)
            )
            if resp.content_length is not None:
                out.content_length = resp.content_length
            await out.prepare(request)
            try:
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                _log.warning("upstream_stream_broken", error=type(exc).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return out
            await out.write_eof()
            return out
    except ProxyHTTPError as err:
        return _error(adapter, err)


async def healthz(request: web.Request) -> web.Response:
    """Process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Config loaded and the log writer running; 503 with the reasons while it (or the drift
    alerts file) is losing lines."""
    state = request.app[STATE]
    reasons = [] if state.writer.running else ["transaction log writer stopped"]
    reasons += [f"degraded: {why}" for f in (state.writer, state.drift.alerts_file) if (why := f.degraded())]
    ready = not reasons
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "log_writer": ready}
    if reasons:
        body["reasons"] = reasons
    return web.json_response(body, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus exposition format, rendered on a worker thread."""
    body = await asyncio.to_thread(request.app[STATE].metrics.render)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def alerts_endpoint(request: web.Request) -> web.Response:
    """``GET /v1/nocp/alerts``: open drift episodes and the latest alerts, oldest first."""
    snapshot = request.app[STATE].drift.snapshot()
    return web.Response(body=_encoder.encode(snapshot), content_type="application/json")


async def stats_endpoint(request: web.Request) -> web.Response:
    """``GET /v1/nocp/stats[?limit=N][&since=1h]``: the dashboard's figures over the last
    ``limit`` records of the TransactionLog (default 10,000), and the open drift alerts."""
    state = request.app[STATE]
    try:
        limit = int(request.query.get("limit", DEFAULT_RECORDS))
        if not 1 <= limit <= MAX_RECORDS:
            raise ValueError(f"limit: must be between 1 and {MAX_RECORDS}")
        since_key = request.query.get("since")
        if since_key is not None and len(since_key) > 64:
            raise ValueError("since: too long")
        since = parse_since(since_key) if since_key else None
    except ValueError as exc:
        message = f"nocp stats: {exc}"
        return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)
    if state.stats is None:  # a ProxyState built without create_app
        state.stats = LogStats(state.settings.log.path)
    alerts = msgspec.to_builtins(state.drift.snapshot()["active"])
    body = await state.stats.get(limit=limit, since=since, since_key=since_key, alerts=alerts)
    if state.policy is not None:  # the learned policy's arms, from the session store
        try:
            body = {
                **body,
                "policy": policy_rows(await policy_snapshot(state.policy.store, state.policy.config)),
            }
        except Exception as exc:  # the page still shows everything else
            _log.warning("policy_snapshot_failed", error=type(exc).__name__)
    return web.Response(
        body=_encoder.encode(body), content_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def dashboard_endpoint(request: web.Request) -> web.Response:
    """``GET /dashboard``: the built-in dashboard page, which polls ``/v1/nocp/stats``."""
    dashboard = page()
    return web.Response(body=dashboard.body, headers=dashboard.headers)


_ADMIN_ROUTES = (
    ("/metrics", metrics_endpoint),
    ("/v1/nocp/alerts", alerts_endpoint),
    ("/v1/nocp/stats", stats_endpoint),
    ("/dashboard", dashboard_endpoint),
)


def _admin_only(handler: Any) -> Any:
    """An admin endpoint on the proxy's port: with ``auth.admin_key_sha256`` it needs that key;
    without one it is open while client auth is off, and closed once client keys exist."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        auth = request.app[STATE].auth
        if auth is not None and not auth.admin_allowed(request.headers, request.query):
            message = "nocp admin endpoint: needs the admin key (auth.admin_key_sha256) or server.admin_port"
            return web.json_response(
                {"error": {"message": message, "type": "authentication_error"}}, status=401
            )
        return await handler(request)  # type: ignore[no-any-return]

    return guarded


async def _not_here(request: web.Request) -> web.Response:
    """nocp's own paths that are not (or not on this port) served."""
    message = f"nocp: {request.path} is not served here (admin endpoints: server.admin_port)"
    return web.json_response({"error": {"message": message, "type": "not_found"}}, status=404)


async def _start_admin(state: ProxyState, host: str, port: int) -> web.AppRunner:
    """The admin listener (``server.admin_host:admin_port``): probes, /metrics, /v1/nocp/*."""
    admin = web.Application()
    admin[STATE] = state
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    for path, handler in _ADMIN_ROUTES:
        admin.router.add_get(path, handler)
    runner = web.AppRunner(admin, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def default_stages(
    settings: Settings,
    store: SessionStore | None = None,
    upstream: UpstreamClient | None = None,
    pool: CompressPool | None = None,
) -> list[Stage]:
    """The stages ``settings`` switch on, in pipeline order.

    History roll-up runs first: it decides which old turns are replaced by a summary, and it
    summarizes the original tool outputs (not their compressed form), so the facts pass sees
    every fact. Tool-output compression then works only on what is still sent, and since it
    is deterministic the kept turns' outputs compress to the same bytes on every request.
    """
    from proxy.stages import HistoryStage, ToolOutputStage

    stages: list[Stage] = []
    if settings.history.enabled:
        stages.append(HistoryStage.from_settings(settings, store, upstream=upstream))
    if settings.stages.tool_output:
        limit = settings.pipeline.max_analysis_chars
        stages.append(ToolOutputStage(settings.compression, pool=pool, max_analysis_chars=limit))
    if settings.aging.any_enabled and settings.retrieval.enabled:  # on what compression left
        from proxy.pricing import PriceTable
        from proxy.stages.aging import AgingStage

        prices = PriceTable.from_config(settings.pricing)
        text = settings.compression.text_observations == "auto"
        stages.append(
            AgingStage(settings.aging, store or open_store(settings), prices, text_observations=text)
        )
    return stages


def create_app(settings: Settings, *, stages: Sequence[Stage] | None = None) -> web.Application:
    """Build the proxy application for ``settings``; ``stages`` replaces the configured ones."""
    app = web.Application(client_max_size=settings.server.max_body_bytes + 1, middlewares=[_origin_form_only])
    log = settings.log
    # One session store (connected on first use) for the history stage and retrieval.
    store = open_store(settings) if settings.retrieval.enabled else None
    pool = CompressPool(settings.pipeline.workers) if settings.pipeline.workers > 0 else None
    upstream = UpstreamClient(settings)
    writer = TransactionLogWriter(
        log.path, max_bytes=log.max_bytes, backups=log.backups, queue_size=log.queue_size
    )
    pipeline = Pipeline(
        default_stages(settings, store, upstream, pool) if stages is None else stages,
        stage_timeout_s=settings.pipeline.stage_timeout_ms / 1000,
    )
    metrics = Metrics(max_models=settings.metrics.max_models)
    cost = CostModel.from_settings(settings)
    loop = ToolLoop.from_settings(settings, store) if store is not None else None
    policy = LearnedPolicy.from_settings(settings, store) if store is not None else None
    rate_store: SessionStore | None = None  # rate limits shared by replicas
    if settings.auth.keys and settings.sessions.backend == "redis":
        rate_store = store if isinstance(store, RedisSessionStore) else open_store(settings)
    state = ProxyState(
        settings=settings,
        upstream=upstream,
        writer=writer,
        pipeline=pipeline,
        metrics=metrics,
        drift=DriftMonitor(settings.drift, Path(log.dir) / settings.drift.alerts_file),
        services=Services(
            settings=settings,
            pipeline=pipeline,
            writer=writer,
            cost=cost,
            features=[
                PromptCache(settings.anthropic, settings.openai),
                *([loop] if loop is not None else []),
                *([output] if (output := OutputFormat.from_settings(settings)) is not None else []),
                *([policy] if policy is not None else []),  # after the loop: sees what it undid
            ],
            streams_in_flight=metrics.streams_in_flight,
        ),
        cost=cost,
        retrieval=loop,
        adapters=protocols.ADAPTERS,
        auth=Authenticator(settings.auth, RedisLimiter(rate_store) if rate_store is not None else None),
        compress_pool=pool,
        stats=LogStats(log.path),
        policy=policy,
    )
    state.metrics.track_writer(state.writer, state.drift.alerts_file)
    state.metrics.track_alerts(state.drift.detector.active)
    state.drift.sinks.append(state.metrics.alert)
    state.writer.observers.extend([state.metrics.observe, state.drift.observe])
    app[STATE] = state

    async def lifecycle(app: web.Application) -> Any:
        await state.upstream.start()
        state.drift.start()
        await state.writer.start()
        admin_port = settings.server.admin_port
        admin = (
            None if admin_port is None else await _start_admin(state, settings.server.admin_host, admin_port)
        )
        yield
        if admin is not None:
            await admin.cleanup()
        if policy is not None:  # its last posterior updates, before the store closes
            await policy.aclose()
        if rate_store is not None and rate_store is not store:
            await rate_store.aclose()
        for stage in state.pipeline.stages:  # stages holding connections (session store)
            close = getattr(stage, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    _log.exception("stage_close_failed", stage=stage_name(stage))
        if store is not None:  # closing twice (a stage closed it) does nothing
            try:
                await store.aclose()
            except Exception:
                _log.exception("session_store_close_failed")
        await state.writer.close()
        await state.drift.close()  # after the writer: its last records may raise alerts
        await state.upstream.close()
        if pool is not None:
            await pool.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for path, handler in _ADMIN_ROUTES:
        app.router.add_get(
            path, _not_here if settings.server.admin_port is not None else _admin_only(handler)
        )
    app.router.add_route("*", "/v1/nocp/{tail:.*}", _not_here)
    for adapter in state.adapters:
        for method, path in adapter.routes:
            app.router.add_route(method, path, functools.partial(_rewrite, adapter))
        for path in adapter.websocket_paths:
            app.router.add_get(path, functools.partial(_websocket, adapter))
    app.router.add_route("*", "/{tail:.*}", passthrough)
    return app


__all__ = ["ProxyState", "create_app", "redact"]
