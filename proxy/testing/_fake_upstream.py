"""``FakeUpstream``: a fake LLM provider (OpenAI chat completions, Gemini, Anthropic Messages) on 127.0.0.1.

It bills tokens as the provider would, simulates prefix caching, can be scripted, and records
what it received. See ``proxy.testing`` for the public surface and DESIGN.md ("The fake
upstream") for why it exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import msgspec
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.testing import _anthropic as anthropic
from proxy.testing import _gemini as gemini
from proxy.testing import _openai as openai
from proxy.testing._common import FIXED_CREATED, b64_id, default_reply, dumps, hex_id
from proxy.testing._generic import DEFAULT_MODELS, echo, embeddings, model_list, model_object
from proxy.testing._prefix_cache import PrefixCache
from proxy.testing._records import RecordedRequest, UsageRecord
from proxy.testing._responses_routes import ResponsesRoutes, ResponseStore
from proxy.testing._script import Fail, Plan, Step, plan_for, turn_for

__all__ = ["FakeUpstream", "run_fake_upstream"]

log = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_JSON: Final = "application/json"
_POLL_SECONDS: Final = 0.02  # how often a stall checks whether the client went away
_GEMINI_ACTIONS: Final = ("generateContent", "streamGenerateContent")


class _ClientGone(Exception):
    """The client closed the connection while we were answering."""


def _decode(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class FakeUpstream:
    """A fake OpenAI + Gemini provider for tests, demos and benchmarks.

    ``async with FakeUpstream() as fake:`` serves on ``fake.url`` (127.0.0.1, a free port);
    ``fake.app`` is the aiohttp application for use with aiohttp's ``TestServer``.
    Responses are deterministic: the same request against the same state gives the same bytes.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        created: int = FIXED_CREATED,
        models: Iterable[str] = DEFAULT_MODELS,
        record: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.created = created
        self.models = tuple(models)
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.usage_log: list[UsageRecord] = []
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self.prefix_cache = PrefixCache()
        # Anthropic's breakpoint caching; ``clock`` (seconds) times its TTLs.
        self.anthropic_cache = anthropic.BreakpointCache(clock=clock)
        self._anthropic_redacted: set[str] = set()  # redacted_thinking data sent, accepted back
        # How OpenAI streams begin: "role_first" (a role-only chunk, as vLLM-style servers
        # send) or "openai" (OpenAI's: an answer with only tool calls has the role in the
        # first call's delta).
        self.openai_stream_shape = "role_first"
        self._script: deque[Step] = deque()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        # OpenAI Responses: stored responses by id (previous_response_id, GET /v1/responses/{id}).
        self.responses = ResponseStore()
        self._responses_api = ResponsesRoutes(self, self.responses)
        self.app = self._make_app()

    # ----------------------------------------------------------------- public API

    def script(self, *steps: Step) -> FakeUpstream:
        """Queue behaviours, consumed one per LLM request in order (then the default reply)."""
        self._script.extend(steps)
        return self

    @property
    def pending(self) -> tuple[Step, ...]:
        """Scripted behaviours not consumed yet."""
        return tuple(self._script)

    @property
    def last_request(self) -> RecordedRequest:
        if not self.requests:
            raise LookupError("the fake upstream has received no request")
        return self.requests[-1]

    def reset(self) -> None:
        """Forget recorded requests, usage, disconnects, the script, the caches and stored responses."""
        self.requests.clear()
        self.usage_log.clear()
        self._script.clear()
        self.responses.clear()
        self.prefix_cache.clear()
        self.anthropic_cache.clear()
        self.disconnects = 0
        self.disconnected = asyncio.Event()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (a Gemini client's base URL)."""
        if self._url is None:
            raise RuntimeError("FakeUpstream is not started; use 'async with FakeUpstream() as fake'")
        return self._url

    @property
    def openai_base_url(self) -> str:
        """``url + "/v1"``, the base URL an OpenAI client takes."""
        return self.url + "/v1"

    async def start(self) -> str:
        """Start serving; returns ``url``."""
        if self._runner is not None:
            return self.url
        runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        self._url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        return self._url

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner, self._url = self._runner, None, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ the app

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._guard(self._openai_chat))
        app.router.add_post("/{version:v1|v1beta|v1alpha}/models/{target}", self._guard(self._gemini))
        app.router.add_post("/v1/messages", self._guard(self._anthropic_messages))
        app.router.add_post("/v1/messages/count_tokens", self._anthropic_count_tokens)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._responses_api.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    def _guard(self, handler: _Handler) -> _Handler:
        """Wrap an LLM handler so a client that goes away mid-response is counted."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except _ClientGone:
                self._note_disconnect()
                return web.Response(status=499)
            except asyncio.CancelledError:
                if _client_gone(request):
                    self._note_disconnect()
                raise

        return guarded

    def _note_disconnect(self) -> None:
        # Called at most once per request: a guarded handler ends either way, never both.
        self.disconnects += 1
        self.disconnected.set()

    async def _read(self, request: web.Request) -> bytes:
        """Read and record the request; bodies of any size are read as a stream."""
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
        body = bytes(buf)
        if not self.record:
            return body
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.raw_path.partition("?")[0],
                query_string=request.rel_url.raw_query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
            )
        )
        return body

    def _headers(self, body: bytes) -> CIMultiDict[str]:
        return CIMultiDict({"x-request-id": "req_" + hex_id(body, 32, "request")})

    def _json(self, status: int, value: Any, body: bytes) -> web.Response:
        return web.Response(status=status, body=dumps(value), content_type=_JSON, headers=self._headers(body))

    def _log_usage(self, record: UsageRecord) -> None:
        if self.record:
            self.usage_log.append(record)

    def _next_plan(self) -> Plan:
        return plan_for(self._script.popleft() if self._script else None)

    async def _sleep(self, request: web.Request, seconds: float) -> None:
        """Sleep, but notice a client that goes away (even without handler cancellation)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if _client_gone(request):
                raise _ClientGone
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, _POLL_SECONDS))

    def _fail(self, fail: Fail, default: Mapping[str, Any], body: bytes) -> web.Response:
        headers = self._headers(body)
        headers.update(fail.headers or {})
        if fail.body is None or not isinstance(fail.body, str):
            payload = dumps(fail.body if fail.body is not None else default)
            headers.setdefault("Content-Type", _JSON)
        else:
            payload = fail.body.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return web.Response(status=fail.status, body=payload, headers=headers)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection; the response returned is never written."""
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=499)

    def _cached(self, namespace: str, prompt: int, ids: Callable[[], Sequence[int]]) -> int:
        if prompt < self.prefix_cache.min_tokens:
            return 0
        return min(self.prefix_cache.lookup_and_store(namespace, ids()), prompt)

    async def _stream(
        self, request: web.Request, events: Sequence[bytes], plan: Plan, content_type: str, body: bytes
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=self._headers(body))
        resp.content_type = content_type
        resp.headers["Cache-Control"] = "no-cache"
        try:
            await resp.prepare(request)
            for i, event in enumerate(events):
                if i == plan.drop_after:
                    self._drop(request)
                    return resp
                if i == plan.stall_after:
                    await self._sleep(request, plan.stall_seconds)
                await resp.write(event)
            if plan.stall_after is not None and plan.stall_after >= len(events):
                await self._sleep(request, plan.stall_seconds)
            if plan.drop_after is not None:  # after every event: the stream never ends properly
                self._drop(request)
                return resp
            await resp.write_eof()
        except ConnectionError as exc:
            raise _ClientGone from exc
        return resp

    async def _before_answer(self, request: web.Request, plan: Plan, stream: bool) -> None:
        delay = plan.delay + (plan.stall_seconds if not stream and plan.stall_after is not None else 0.0)
        if delay:
            await self._sleep(request, delay)

    # ------------------------------------------------------------- LLM handlers

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        payload = _decode(body)
        invalid = openai.invalid_reason(payload)
        if invalid is not None:
            return self._json(400, openai.error_body(400, invalid[0], invalid[1] or None), body)
        plan = self._next_plan()
        model: str = payload["model"]
        stream = payload.get("stream") is True
        await self._before_answer(request, plan, stream)
        if plan.fail is not None:
            return self._fail(plan.fail, openai.error_body(plan.fail.status), body)
        if plan.drop_after is not None and not stream:
            return self._drop(request)

        turn = turn_for(plan.answer, default_reply(openai.last_user_text(payload["messages"])), body)
        prompt = openai.prompt_tokens(payload, model)
        cached = self._cached(f"openai\x00{model}", prompt, lambda: openai.prompt_ids(payload, model))
        completion = openai.completion_tokens(turn, model)
        self._log_usage(UsageRecord("openai", model, stream, prompt, cached, completion))
        usage = openai.usage(prompt, cached, completion)
        cid = "chatcmpl-" + hex_id(body, 29, "chatcmpl")
        if not stream:
            return self._json(
                200, openai.completion(turn, cid=cid, created=self.created, model=model, usage=usage), body
            )
        options = payload.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        events = openai.stream_events(
            turn,
            cid=cid,
            created=self.created,
            model=model,
            usage=usage,
            include_usage=include_usage,
            shape=self.openai_stream_shape,
        )
        return await self._stream(request, events, plan, "text/event-stream", body)

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["target"].partition(":")
        if action not in _GEMINI_ACTIONS:
            return await self._echo(request)
        body = await self._read(request)
        payload = _decode(body)
        invalid = gemini.invalid_reason(payload)
        if invalid is not None:
            return self._json(400, gemini.error_body(400, invalid), body)
        plan = self._next_plan()
        stream = action == "streamGenerateContent"
        await self._before_answer(request, plan, stream)
        if plan.fail is not None:
            return self._fail(plan.fail, gemini.error_body(plan.fail.status), body)
        if plan.drop_after is not None and not stream:
            return self._drop(request)

        turn = turn_for(plan.answer, default_reply(gemini.last_user_text(payload["contents"])), body)
        parts = gemini.output_parts(turn)
        pieces = gemini.prompt_pieces(payload)
        prompt = gemini.prompt_tokens(pieces, model)
        cached = self._cached(f"gemini\x00{model}", prompt, lambda: gemini.prompt_ids(pieces, model))
        completion = gemini.completion_tokens(parts, model)
        self._log_usage(UsageRecord("gemini", model, stream, prompt, cached, completion))
        rid = b64_id(body, 22, "gemini")
        if not stream:
            answer = gemini.response(
                parts, model=model, rid=rid, prompt=prompt, cached=cached, completion=completion
            )
            return self._json(200, answer, body)
        chunks = gemini.stream_chunks(
            parts, model=model, rid=rid, prompt=prompt, cached=cached, completion=completion
        )
        if request.query.get("alt") == "sse":
            return await self._stream(request, gemini.sse_events(chunks), plan, "text/event-stream", body)
        return await self._stream(request, gemini.array_events(chunks), plan, _JSON, body)

    def _anthropic_refusal(
        self, request: web.Request, payload: Any, body: bytes, *, count_only: bool
    ) -> web.Response | None:
        """The error answer to a Messages request Anthropic would refuse, else ``None``."""
        problem = anthropic.header_error(request.headers)
        if problem is None:
            invalid = anthropic.invalid_reason(payload, count_only=count_only)
            if invalid is None and not count_only:
                invalid = anthropic.rejected_history(payload, self._anthropic_redacted)
            problem = None if invalid is None else (400, invalid)
        if problem is None:
            return None
        error = anthropic.error_body(*problem, request_id="req_" + hex_id(body, 24, "request"))
        return self._json(problem[0], error, body)

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        payload = _decode(body)
        refusal = self._anthropic_refusal(request, payload, body, count_only=False)
        if refusal is not None:
            return refusal
        plan = self._next_plan()
        model: str = payload["model"]
        stream = payload.get("stream") is True
        await self._before_answer(request, plan, stream)
        if plan.fail is not None:
            default = anthropic.error_body(plan.fail.status, request_id="req_" + hex_id(body, 24, "request"))
            return self._fail(plan.fail, default, body)
        if plan.drop_after is not None and not stream:
            return self._drop(request)

        last = anthropic.last_user_text(payload["messages"])
        turn = turn_for(plan.answer, default_reply(last), body, call_prefix="toolu_")
        thinking = anthropic.THINKING_PREFIX + last[:60] if anthropic.thinking_enabled(payload) else None
        blocks = anthropic.answer_blocks(turn, thinking=thinking, issued_redacted=self._anthropic_redacted)
        prompt = anthropic.prompt_blocks(payload, f"anthropic\x00{model}")
        use = self.anthropic_cache.bill(prompt, anthropic.min_cacheable_tokens(model))
        output = anthropic.output_tokens(blocks)
        self._log_usage(
            UsageRecord("anthropic", model, stream, use.prompt, use.read, output, use.created, use.created_1h)
        )
        usage = anthropic.usage(use, output)
        mid = "msg_" + hex_id(body, 24, "msg")
        if not stream:
            return self._json(200, anthropic.message(blocks, mid=mid, model=model, usage=usage), body)
        events = anthropic.stream_events(blocks, mid=mid, model=model, usage=usage)
        return await self._stream(request, events, plan, "text/event-stream", body)

    async def _anthropic_count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        payload = _decode(body)
        refusal = self._anthropic_refusal(request, payload, body, count_only=True)
        if refusal is not None:
            return refusal
        count = anthropic.input_tokens(anthropic.prompt_blocks(payload, "count_tokens"))
        return self._json(200, {"input_tokens": count}, body)

    # --------------------------------------------------------- other endpoints

    async def _models(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        return self._json(200, model_list(self.models, self.created), body)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        model = request.match_info["model"]
        if model not in self.models:
            message = f"The model '{model}' does not exist or you do not have access to it."
            return self._json(404, openai.error_body(404, message, "model"), body)
        return self._json(200, model_object(model, self.created), body)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        result = embeddings(payload) if isinstance(payload := _decode(body), Mapping) else "invalid JSON body"
        if isinstance(result, str):
            return self._json(400, openai.error_body(400, result), body)
        return self._json(200, result, body)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        raw_path = request.raw_path.partition("?")[0]
        query = request.rel_url.raw_query_string
        return self._json(
            200, echo(request.method, raw_path, request.path, query, request.headers, body), body
        )


async def run_fake_upstream(host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve a ``FakeUpstream`` on ``host:port`` until cancelled (``nocp fake-upstream``)."""
    async with FakeUpstream(host=host, port=port, record=False) as fake:
        log.info("fake upstream listening on %s", fake.url)
        await asyncio.Event().wait()
