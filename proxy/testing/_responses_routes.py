"""The fake upstream's OpenAI Responses endpoints: HTTP (plain and SSE), the WebSocket mode, and
the stored-response routes; plus the store that keeps responses for ``previous_response_id``.

State follows OpenAI: a response created with ``store`` not false is kept by id with the items
the model saw (the earlier conversation, when chained, then this request's input) and its output.
A request naming ``previous_response_id`` sees that response's items and output before its own
input, and is billed for all of it; an unknown id is a 400 ``previous_response_not_found``.
``instructions`` are not carried over. On a WebSocket the latest response of the connection can
be chained even with ``store: false`` (OpenAI's connection-local cache); a failed turn forgets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.testing import _openai as openai
from proxy.testing import _responses as api
from proxy.testing._common import default_reply, dumps_str, hex_id
from proxy.testing._records import RecordedRequest, UsageRecord
from proxy.testing._script import Fail, Plan, turn_for

if TYPE_CHECKING:
    from proxy.testing._fake_upstream import FakeUpstream

__all__ = ["ResponseStore", "ResponsesRoutes", "StoredResponse"]

_POLL_SECONDS: Final = 0.02
_SUMMARIES: Final = ("auto", "concise", "detailed")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response the fake keeps: the ``response`` object as sent, this request's own input
    items, and the response it continued (so a long chain is kept once, not once per turn)."""

    response: dict[str, Any]
    own_input: tuple[dict[str, Any], ...]
    previous: StoredResponse | None = None

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def output(self) -> list[dict[str, Any]]:
        return list(self.response["output"])

    @property
    def input_items(self) -> list[dict[str, Any]]:
        """The items the model saw: each earlier turn's input and output, then this input."""
        chain: list[StoredResponse] = []
        node: StoredResponse | None = self
        while node is not None:
            chain.append(node)
            node = node.previous
        items: list[dict[str, Any]] = []
        for turn in reversed(chain):
            items += turn.own_input
            if turn is not self:
                items += turn.output
        return items


class ResponseStore:
    """Stored responses by id (``fake.responses``): ``rid in store``, ``store[rid]``, ``len``.
    The oldest are forgotten beyond ``max_responses`` so a long benchmark cannot grow it without
    limit (OpenAI keeps them for 30 days)."""

    def __init__(self, max_responses: int = 10_000) -> None:
        self.max_responses = max_responses
        self._by_id: dict[str, StoredResponse] = {}
        self._created = 0

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_id

    def __getitem__(self, rid: str) -> StoredResponse:
        return self._by_id[rid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, rid: str) -> StoredResponse | None:
        return self._by_id.get(rid)

    def put(self, stored: StoredResponse) -> None:
        self._by_id[stored.id] = stored
        while len(self._by_id) > self.max_responses:
            del self._by_id[next(iter(self._by_id))]

    def delete(self, rid: str) -> bool:
        return self._by_id.pop(rid, None) is not None

    def item(self, item_id: str) -> dict[str, Any] | None:
        """An input or output item of a stored response, by id (for ``item_reference``)."""
        for stored in reversed(self._by_id.values()):
            for item in (*stored.own_input, *stored.output):
                if item.get("id") == item_id:
                    return item
        return None

    def next_number(self) -> int:
        """A counter salted into new ids, so equal requests still get distinct responses."""
        self._created += 1
        return self._created

    def clear(self) -> None:
        self._by_id.clear()
        self._created = 0


def _id_maker(body: bytes, number: int, side: str) -> api.NewId:
    return lambda prefix, i: f"{prefix}_" + hex_id(body, 48, prefix, side, str(number), str(i))


@dataclass(frozen=True, slots=True)
class _Prepared:
    payload: Mapping[str, Any]
    model: str
    body: bytes
    number: int
    conversation: api.Conversation
    own_input: tuple[dict[str, Any], ...]
    previous: StoredResponse | None


def _decode(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def _fail_fields(fail: Fail) -> dict[str, Any]:
    """The ``error`` fields of a scripted ``Fail``, for a WebSocket ``error`` event."""
    body = fail.body
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return dict(body["error"])
    fields = dict(openai.error_body(fail.status)["error"])
    if isinstance(body, str):
        fields["message"] = body
    return fields


class ResponsesRoutes:
    """The Responses endpoints of one ``FakeUpstream`` (uses its script, billing and records)."""

    def __init__(self, fake: FakeUpstream, store: ResponseStore) -> None:
        self._fake = fake
        self.store = store

    def add_routes(self, app: web.Application) -> None:
        guard = self._fake._guard
        app.router.add_post("/v1/responses", guard(self._create))
        app.router.add_get("/v1/responses", guard(self._websocket))
        app.router.add_post("/v1/responses/input_tokens", self._input_tokens)
        app.router.add_get("/v1/responses/{rid}", guard(self._retrieve))
        app.router.add_delete("/v1/responses/{rid}", self._delete)
        app.router.add_get("/v1/responses/{rid}/input_items", self._input_items)
        app.router.add_post("/v1/responses/{rid}/cancel", self._cancel)

    # ------------------------------------------------------------------ answering

    def _prepare(self, payload: Any, body: bytes, local: StoredResponse | None = None) -> _Prepared:
        """Check the request and resolve the conversation it puts before the model."""
        invalid = api.invalid_reason(payload)
        if invalid is not None:
            raise invalid
        previous: StoredResponse | None = None
        pid = payload.get("previous_response_id")
        if pid is not None:
            previous = local if local is not None and local.id == pid else self.store.get(pid)
            if previous is None:
                raise api.previous_not_found(pid)
        history = [*previous.input_items, *previous.output] if previous is not None else []

        def lookup(item_id: str) -> dict[str, Any] | None:
            for item in history:
                if item.get("id") == item_id:
                    return item
            return self.store.item(item_id)

        number = self.store.next_number()
        own = api.normalize_input(payload, _id_maker(body, number, "in"), lookup)
        items = history + own
        api.check_tool_outputs(items)
        conversation = api.Conversation(
            payload.get("tools") or None, payload.get("instructions"), tuple(items)
        )
        return _Prepared(payload, payload["model"], body, number, conversation, tuple(own), previous)

    def _answer(self, prep: _Prepared, plan: Plan, stream: bool) -> StoredResponse:
        """Build, bill, log and (unless ``store: false``) keep the response."""
        fake, payload, model = self._fake, prep.payload, prep.model
        items = prep.conversation.items
        turn = turn_for(plan.answer, default_reply(api.last_user_text(items)), prep.body)
        thought = api.reasoning_text(payload, items) if turn.responses_items is None else None
        reasoning = payload.get("reasoning") or {}
        include = payload.get("include") or []
        output = api.output_items(
            turn,
            _id_maker(prep.body, prep.number, "out"),
            thought=thought,
            summary=reasoning.get("summary") in _SUMMARIES,
            include_encrypted="reasoning.encrypted_content" in include,
        )
        prompt = api.prompt_tokens(prep.conversation, model)
        cached = fake._cached(
            f"responses\x00{model}", prompt, lambda: api.prompt_ids(prep.conversation, model)
        )
        completion, reasoning_tokens = api.output_tokens(output, model, thought)
        fake._log_usage(UsageRecord("responses", model, stream, prompt, cached, completion))
        rid = "resp_" + hex_id(prep.body, 48, "resp", str(prep.number))
        usage = api.usage(prompt, cached, completion, reasoning_tokens)
        final = api.response_object(payload, rid=rid, created=fake.created, output=output, usage=usage)
        stored = StoredResponse(final, prep.own_input, prep.previous)
        if payload.get("store") is not False:
            self.store.put(stored)
        return stored

    # --------------------------------------------------------------------- HTTP

    def _error(self, exc: api.ApiError, body: bytes) -> web.Response:
        return self._fake._json(exc.status, exc.body(), body)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        fake = self._fake
        body = await fake._read(request)
        payload = _decode(body)
        try:
            prep = self._prepare(payload, body)
        except api.ApiError as exc:
            return self._error(exc, body)
        plan = fake._next_plan()
        stream = payload.get("stream") is True
        await fake._before_answer(request, plan, stream)
        if plan.fail is not None:
            return fake._fail(plan.fail, openai.error_body(plan.fail.status), body)
        if plan.drop_after is not None and not stream:
            return fake._drop(request)
        stored = self._answer(prep, plan, stream)
        if not stream:
            return fake._json(200, stored.response, body)
        events = [api.sse(e) for e in api.stream_events(stored.response)]
        return await fake._stream(request, events, plan, "text/event-stream", body)

    async def _input_tokens(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/responses/input_tokens``: what a create request would bill, nothing kept."""
        fake = self._fake
        body = await fake._read(request)
        payload = _decode(body)
        if isinstance(payload, Mapping) and "model" not in payload:
            payload = {**payload, "model": "gpt-4o"}
        try:
            prep = self._prepare(payload, body)
        except api.ApiError as exc:
            return self._error(exc, body)
        count = api.prompt_tokens(prep.conversation, prep.model)
        return fake._json(200, {"object": "response.input_tokens", "input_tokens": count}, body)

    async def _stored(self, request: web.Request) -> tuple[bytes, StoredResponse | web.Response]:
        body = await self._fake._read(request)
        rid = request.match_info["rid"]
        stored = self.store.get(rid)
        return body, stored if stored is not None else self._error(api.not_found(rid), body)

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        body, stored = await self._stored(request)
        if not isinstance(stored, StoredResponse):
            return stored
        if request.query.get("stream") == "true":  # replay the stored response's events
            events = [api.sse(e) for e in api.stream_events(stored.response)]
            return await self._fake._stream(request, events, Plan(), "text/event-stream", body)
        return self._fake._json(200, stored.response, body)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        body, stored = await self._stored(request)
        if not isinstance(stored, StoredResponse):
            return stored
        self.store.delete(stored.id)
        return self._fake._json(200, {"id": stored.id, "object": "response", "deleted": True}, body)

    async def _input_items(self, request: web.Request) -> web.StreamResponse:
        body, stored = await self._stored(request)
        if not isinstance(stored, StoredResponse):
            return stored
        try:
            page = api.input_items_page(stored.input_items, request.query)
        except api.ApiError as exc:
            return self._error(exc, body)
        return self._fake._json(200, page, body)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        """Only background responses can be cancelled; the fake's are already complete, so
        cancelling one returns it unchanged."""
        body, stored = await self._stored(request)
        if not isinstance(stored, StoredResponse):
            return stored
        if stored.response.get("background") is not True:
            message = "Only responses created with background=true can be cancelled."
            return self._error(api.ApiError(400, message), body)
        return self._fake._json(200, stored.response, body)

    # ---------------------------------------------------------------- WebSocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/responses`` upgraded: each ``response.create`` text frame gets the events of
        a streamed response as text frames, one response at a time; errors are ``error`` events."""
        fake = self._fake
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            body = await fake._read(request)
            error = api.ApiError(
                426, "This endpoint requires a WebSocket upgrade (or POST to create a response)."
            )
            return self._error(error, body)
        await fake._read(request)
        await ws.prepare(request)
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        local: StoredResponse | None = None
        try:
            async for msg in ws:
                if msg.type is WSMsgType.ERROR:
                    break
                if msg.type is not WSMsgType.TEXT:
                    await ws.send_str(
                        dumps_str(api.ws_error(400, api.ApiError(400, "Expected a text frame.").fields()))
                    )
                    continue
                body = msg.data.encode("utf-8")
                if fake.record:
                    fake.requests.append(
                        RecordedRequest("WS", request.raw_path.partition("?")[0], "", headers, body)
                    )
                alive, local = await self._ws_turn(request, ws, _decode(body), body, local)
                if not alive:
                    return ws
        except ConnectionError:
            fake._note_disconnect()
        return ws

    async def _ws_turn(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        frame: Any,
        body: bytes,
        local: StoredResponse | None,
    ) -> tuple[bool, StoredResponse | None]:
        """Answer one frame: (whether the connection is still open, its latest response)."""
        fake = self._fake
        if not isinstance(frame, Mapping) or frame.get("type") != "response.create":
            kind = frame.get("type") if isinstance(frame, Mapping) else None
            error = api.ApiError(
                400, f"Invalid value: '{kind}'. Supported values are: 'response.create'.", "type"
            )
            await ws.send_str(dumps_str(api.ws_error(400, error.fields())))
            return True, local
        payload = {k: v for k, v in frame.items() if k not in ("type", "stream", "stream_options")}
        try:
            prep = self._prepare(payload, body, local)
        except api.ApiError as exc:
            await ws.send_str(dumps_str(api.ws_error(exc.status, exc.fields())))
            return True, None
        plan = fake._next_plan()
        if not await self._pause(request, plan.delay):
            return self._gone()
        if plan.fail is not None:
            await ws.send_str(dumps_str(api.ws_error(plan.fail.status, _fail_fields(plan.fail))))
            return True, None
        stored = self._answer(prep, plan, stream=True)
        events = api.stream_events(stored.response)
        for i, event in enumerate(events):
            if i == plan.drop_after:
                fake._drop(request)
                return False, None
            if i == plan.stall_after and not await self._pause(request, plan.stall_seconds):
                return self._gone()
            await ws.send_str(dumps_str(event))
        stall_at_end = plan.stall_after is not None and plan.stall_after >= len(events)
        if stall_at_end and not await self._pause(request, plan.stall_seconds):
            return self._gone()
        if plan.drop_after is not None:
            fake._drop(request)
            return False, None
        return True, stored

    def _gone(self) -> tuple[bool, None]:
        self._fake._note_disconnect()
        return False, None

    @staticmethod
    async def _pause(request: web.Request, seconds: float) -> bool:
        """Wait ``seconds``; False as soon as the client has gone away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            if request.transport is None or request.transport.is_closing():
                return False
            await asyncio.sleep(min(remaining, _POLL_SECONDS))
        return True
