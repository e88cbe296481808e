"""The aiohttp application: routes, and the one path every request takes.

``client -> parse (adapter) -> pipeline -> upstream -> relay -> client``, with a
TransactionLog record built along the way. Passthrough routes take the same upstream and
relay steps with no parsing, no stages and no log line.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

from proxy.config import Settings
from proxy.drift import DriftMonitor
from proxy.exceptions import ModelNotFound, PayloadTooLarge, ProxyHTTPError, UpstreamUnavailable
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline, Stage, StageContext, stage_name
from proxy.pricing import CostModel
from proxy.protocols import Adapter, GeminiAdapter, OpenAIChatAdapter, StreamSniffer, Usage
from proxy.protocols._base import RetrievalSniffer, decode_json_object, encode_json
from proxy.retrieval import Retrieval, RetrievalRequest
from proxy.sessions import SessionStore, derive_session_id, open_store
from proxy.translog import Finalizer, TransactionLog, TransactionLogWriter, redact
from proxy.upstream import UpstreamClient, apply_api_key, forward_headers, upstream_url

_log = structlog.get_logger("nocp.server")
_encoder = msgspec.json.Encoder()
_GEMINI_PREFIXES = ("/v1beta/", "/v1alpha/", "/upload/")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class ProxyState:
    """Everything the handlers share; one per application."""

    settings: Settings
    upstream: UpstreamClient
    writer: TransactionLogWriter
    pipeline: Pipeline
    metrics: Metrics
    drift: DriftMonitor
    cost: CostModel | None = None  # None: pricing switched off, cost fields stay null
    retrieval: Retrieval | None = None  # None: reversible compression switched off


STATE = web.AppKey("nocp_state", ProxyState)
OPENAI = OpenAIChatAdapter()
GEMINI = GeminiAdapter()


def _error(adapter: Adapter, err: ProxyHTTPError) -> web.Response:
    return web.Response(
        body=_encoder.encode(adapter.error_body(err)), status=err.status, content_type="application/json"
    )


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


def _response_headers(resp: aiohttp.ClientResponse, *, stream: bool) -> dict[str, str] | Any:
    headers = forward_headers(resp.headers, drop=() if stream else ("Content-Length",))
    if stream:
        headers.update(STREAM_HEADERS)
    return headers


async def _send_raw(request: web.Request, resp: aiohttp.ClientResponse, data: bytes) -> web.StreamResponse:
    """A streamed response that nocp held back whole, sent as it came (fail-open)."""
    out = web.StreamResponse(
        status=resp.status, reason=resp.reason, headers=_response_headers(resp, stream=True)
    )
    await out.prepare(request)
    if data:
        await out.write(data)
    await out.write_eof()
    return out


async def _relay(
    request: web.Request,
    resp: aiohttp.ClientResponse,
    sniffer: StreamSniffer | None,
    record: TransactionLog | None,
    started: float,
    *,
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> web.StreamResponse | None:
    """Relay a streamed upstream response chunk by chunk as it arrives.

    A sniffer that ``holds`` (a retrieval round may be kept from the client) gets the response
    headers sent only with the first bytes it releases; if it releases none, nothing is sent
    and None is returned. ``before_end`` runs when the upstream stream has ended, before the
    sniffer's last held bytes go out."""
    out = web.StreamResponse(
        status=resp.status, reason=resp.reason, headers=_response_headers(resp, stream=sniffer is not None)
    )
    if sniffer is None and resp.content_length is not None:
        out.content_length = resp.content_length
    lazy = sniffer is not None and sniffer.holds
    if not lazy:
        await out.prepare(request)
    chunks = resp.content.iter_any().__aiter__()
    while True:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            if record is not None:
                record.outcome = "upstream_error"
                record.error_message = f"upstream stream broke: {type(exc).__name__}"
            _log.warning("upstream_stream_broken", error=type(exc).__name__)
            return out if out.prepared else None
        if record is not None and record.ttft_ms is None and not lazy:
            record.ttft_ms = round((time.perf_counter() - started) * 1000, 3)
        data = sniffer.feed(chunk) if sniffer is not None else chunk
        if data:
            if not out.prepared:
                await out.prepare(request)
                if record is not None and record.ttft_ms is None:
                    record.ttft_ms = round((time.perf_counter() - started) * 1000, 3)
            await out.write(data)  # raises ConnectionResetError when our client is gone
    if before_end is not None:
        await before_end()
    if sniffer is not None and (tail := sniffer.close()):
        if not out.prepared:
            await out.prepare(request)
            if record is not None and record.ttft_ms is None:
                record.ttft_ms = round((time.perf_counter() - started) * 1000, 3)
        await out.write(tail)
    if not out.prepared:
        return None
    await out.write_eof()
    return out


_OFFLOAD_BYTES = 64 * 1024


def _finalizer(
    adapter: Adapter,
    record: TransactionLog,
    original: bytes,
    body: dict[str, Any],
    changed: bool,
    model: str,
    query_chars: int,
    cost: CostModel | None = None,
) -> Finalizer:
    """Previews and token counts, filled in by the log writer after the response is sent.

    When nocp changed nothing, raw and sent tokens are the upstream's own ``prompt_tokens``
    (what was billed) and no tokenizer runs; otherwise both versions are counted locally.
    The cost fields come last: they need both the upstream's usage and the token counts.
    """

    def finalize() -> None:
        sent = body
        received = decode_json_object(original) if changed else body
        prompt = adapter.prompt(received, turns=False)
        if query_chars and (query := prompt.latest_user_text()):
            record.user_query = query[:query_chars]
        record.tools_invoked = adapter.tools_invoked(prompt)
        if not changed and record.prompt_tokens is not None:
            record.set_input_tokens(record.prompt_tokens, record.prompt_tokens)
        else:
            raw = adapter.count_prompt(received, model)
            record.set_input_tokens(raw, adapter.count_prompt(sent, model) if changed else raw)
        if cost is not None:
            cost.apply(record)

    return finalize


def _needs_thread(record: TransactionLog, original: bytes, changed: bool) -> bool:
    return changed or record.prompt_tokens is None or len(original) > _OFFLOAD_BYTES


async def _rewrite(request: web.Request, adapter: Adapter) -> web.StreamResponse:
    """The path of a request nocp may rewrite: parse, run the stages, forward, relay, log."""
    started = time.perf_counter()
    state = request.app[STATE]
    settings = state.settings
    record = TransactionLog(
        endpoint=request.path, protocol=adapter.protocol, session_id=request.headers.get("X-Session-Id")
    )
    log_context = structlog.contextvars.bind_contextvars(request_id=record.transaction_id)
    finalize: Finalizer | None = None
    original = b""
    changed = False
    retr: RetrievalRequest | None = None
    hops: RetrievalRequest | None = None  # set when the retrieval tool is offered
    try:
        original = await _read_body(request, settings.server.max_body_bytes)
        body = adapter.parse(original, request.match_info)
        record.session_id = derive_session_id(adapter.protocol, request.headers, body)
        model = record.model = adapter.model(body, request.match_info)
        stream = record.stream = adapter.is_stream(body, request.match_info)
        up = settings.upstream_for(adapter.protocol, model)
        if up is None:
            raise ModelNotFound(
                f"The model '{model}' is not served by any configured upstream",
                param="model",
                code="model_not_found",
            )
        record.upstream = up.name
        if state.pipeline:
            t = time.perf_counter()
            if state.retrieval is not None:
                retr = state.retrieval.begin(adapter, record, body, model)
                changed = await retr.insert_pending(body)  # answers owed from earlier turns
            before = adapter.prompt(body)
            ctx = StageContext(
                model=model,
                protocol=adapter.protocol,
                record=record,
                query=before.latest_user_text(),
                extras={"api_key": _client_key(request)},
                retrieval=retr,
            )
            after = await state.pipeline.run(before, ctx)
            if retr is not None:
                after = await retr.prepare(body, before, after)
            changed = adapter.apply(body, before, after) or changed
            if retr is not None and retr.offered:
                adapter.add_tool(body, retr.app.spec)
                hops, changed = retr, True
            record.compression_latency_ms = round((time.perf_counter() - t) * 1000, 3)
        injected = adapter.prepare_upstream(body, stream)
        payload = encode_json(body) if changed or injected else original
        finalize = _finalizer(
            adapter, record, original, body, changed, model, settings.log.user_query_chars, state.cost
        )
        headers = forward_headers(request.headers, drop=("Content-Length", "Accept-Encoding"))
        apply_api_key(headers, up)
        url = upstream_url(up, request.raw_path)
        if hops is not None:
            hops.start(body)
        sent_at = time.perf_counter()
        result: web.StreamResponse | None = None
        # One upstream call, or more when the model calls the retrieval tool: nocp answers
        # it and continues the conversation (``hops``); the client sees only the last answer.
        while result is None:
            if (
                hops is not None
                and hops.rounds
                and (request.transport is None or request.transport.is_closing())
            ):
                raise ConnectionResetError("client went away during a retrieval round")
            async with state.upstream.request("POST", url, headers, payload) as resp:
                record.status = resp.status
                if resp.status >= 400:
                    record.outcome = "upstream_error"
                if stream and resp.status < 300:
                    sniffer = hops.sniffer(injected) if hops is not None else adapter.sniffer(body, injected)
                    end = None
                    if hops is not None and isinstance(sniffer, RetrievalSniffer):
                        end = functools.partial(hops.before_end, sniffer)
                    state.metrics.streams_in_flight.inc()
                    try:
                        result = await _relay(request, resp, sniffer, record, sent_at, before_end=end)
                    finally:
                        state.metrics.streams_in_flight.dec()
                    usage = sniffer.usage
                    if hops is not None and isinstance(sniffer, RetrievalSniffer):
                        hops.record_hop(usage)
                        if result is None and record.outcome == "upstream_error":
                            raise UpstreamUnavailable("upstream stream broke before the answer began")
                        if result is None and sniffer.is_round:
                            follow = await hops.on_round(sniffer)
                            if follow is not None:
                                payload = encode_json(follow)
                                continue
                        if result is None:  # fail-open, or an empty stream: send what came
                            result = await _send_raw(request, resp, bytes(sniffer.raw))
                        hops.stream_done(sniffer)
                else:
                    data = await resp.read()
                    record.ttft_ms = round((time.perf_counter() - sent_at) * 1000, 3)
                    if resp.status >= 400:
                        record.error_message = redact(data[:300].decode("utf-8", "replace"))
                    usage = adapter.usage(data) if resp.status < 300 else Usage()
                    if hops is not None:
                        hops.record_hop(usage)
                        if resp.status < 300:
                            data, follow = await hops.on_reply(data)
                            if follow is not None:
                                payload = encode_json(follow)
                                continue
                    result = web.Response(
                        body=data,
                        status=resp.status,
                        reason=resp.reason,
                        headers=_response_headers(resp, stream=False),
                    )
        if hops is not None:
            usage = hops.finish()
        record.llm_latency_ms = round((time.perf_counter() - sent_at) * 1000, 3)
        record.prompt_tokens = usage.prompt_tokens
        record.cached_tokens = usage.cached_tokens
        record.completion_tokens = usage.completion_tokens
        return result
    except ProxyHTTPError as err:
        record.status = err.status
        record.outcome = "client_error" if err.status < 500 else "upstream_error"
        record.error_message = redact(err.message)
        return _error(adapter, err)
    except (asyncio.CancelledError, ConnectionResetError):
        record.outcome = "cancelled"
        raise
    except Exception as exc:
        _log.exception("proxy_error", path=request.path)
        record.status = 500
        record.outcome = "proxy_error"
        record.error_message = type(exc).__name__
        return _error(adapter, ProxyHTTPError("internal proxy error"))
    finally:
        record.total_latency_ms = round((time.perf_counter() - started) * 1000, 3)
        record.proxy_overhead_ms = round(record.total_latency_ms - (record.llm_latency_ms or 0.0), 3)
        state.writer.submit(
            record, finalize, offload=finalize is not None and _needs_thread(record, original, changed)
        )
        structlog.contextvars.reset_contextvars(**log_context)


async def openai_chat(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    return await _rewrite(request, OPENAI)


async def gemini_generate(request: web.Request) -> web.StreamResponse:
    """``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``."""
    return await _rewrite(request, GEMINI)


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Any other path: method, query, headers and body forwarded unchanged, streamed both ways.

    It goes to the first Gemini upstream when it looks like Gemini's API (a ``/v1beta/`` or
    ``/upload/`` path, an ``x-goog-api-key`` header or a ``key`` query parameter), else to the
    first OpenAI upstream.
    """
    state = request.app[STATE]
    gemini = (
        request.path.startswith(_GEMINI_PREFIXES)
        or "x-goog-api-key" in request.headers
        or "key" in request.query
    )
    adapter: Adapter = GEMINI if gemini else OPENAI
    up = state.settings.upstream_for(adapter.protocol, None) or state.settings.upstreams[0]
    headers = forward_headers(request.headers)
    apply_api_key(headers, up)
    data = request.content.iter_any() if request.body_exists else None
    try:
        async with state.upstream.request(
            request.method, upstream_url(up, request.raw_path), headers, data
        ) as resp:
            out = await _relay(request, resp, None, None, time.perf_counter())
            assert out is not None  # without a holding sniffer the response is always sent
            return out
    except ProxyHTTPError as err:
        return _error(adapter, err)


async def healthz(request: web.Request) -> web.Response:
    """Process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Config loaded and the log writer running."""
    state = request.app[STATE]
    ready = state.writer.running
    return web.json_response(
        {"status": "ready" if ready else "not ready", "log_writer": ready}, status=200 if ready else 503
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus exposition format."""
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def alerts_endpoint(request: web.Request) -> web.Response:
    """``GET /v1/nocp/alerts``: open drift episodes and the latest alerts, oldest first."""
    snapshot = request.app[STATE].drift.snapshot()
    return web.Response(body=_encoder.encode(snapshot), content_type="application/json")


def _client_key(request: web.Request) -> str | None:
    """The client's own API key (for a summarizer call made on its behalf), if it sent one."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-goog-api-key") or request.query.get("key") or None


def default_stages(settings: Settings, store: SessionStore | None = None) -> list[Stage]:
    """The stages ``settings`` switch on, in pipeline order.

    History roll-up runs first: it decides which old turns are replaced by a summary, and it
    summarizes the original tool outputs (not their compressed form), so the facts pass sees
    every fact. Tool-output compression then works only on what is still sent, and since it
    is deterministic the kept turns' outputs compress to the same bytes on every request.
    """
    from proxy.stages import HistoryStage, ToolOutputStage

    stages: list[Stage] = []
    if settings.history.enabled:
        stages.append(HistoryStage.from_settings(settings, store))
    if settings.stages.tool_output:
        stages.append(ToolOutputStage(settings.compression))
    return stages


def create_app(settings: Settings, *, stages: Sequence[Stage] | None = None) -> web.Application:
    """Build the proxy application for ``settings``; ``stages`` replaces the configured ones."""
    app = web.Application(client_max_size=settings.server.max_body_bytes + 1)
    log = settings.log
    # One session store (connected on first use) for the history stage and retrieval.
    store = open_store(settings) if settings.retrieval.enabled else None
    state = ProxyState(
        settings=settings,
        upstream=UpstreamClient(settings),
        writer=TransactionLogWriter(
            log.path, max_bytes=log.max_bytes, backups=log.backups, queue_size=log.queue_size
        ),
        pipeline=Pipeline(
            default_stages(settings, store) if stages is None else stages,
            stage_timeout_s=settings.pipeline.stage_timeout_ms / 1000,
        ),
        metrics=Metrics(max_models=settings.metrics.max_models),
        drift=DriftMonitor(settings.drift, Path(log.dir) / settings.drift.alerts_file),
        cost=CostModel.from_settings(settings),
        retrieval=Retrieval.from_settings(settings, store) if store is not None else None,
    )
    state.metrics.track_writer(state.writer)
    state.metrics.track_alerts(state.drift.detector.active)
    state.drift.sinks.append(state.metrics.alert)
    state.writer.observers.extend([state.metrics.observe, state.drift.observe])
    app[STATE] = state

    async def lifecycle(app: web.Application) -> Any:
        await state.upstream.start()
        state.drift.start()
        await state.writer.start()
        yield
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

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/v1/nocp/alerts", alerts_endpoint)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post(
        r"/{version:v1beta|v1alpha|v1}/models/{model:[^/:]+}:{method:generateContent|"
        r"streamGenerateContent}",
        gemini_generate,
    )
    app.router.add_route("*", "/{tail:.*}", passthrough)
    return app


__all__ = ["ProxyState", "create_app", "redact"]
