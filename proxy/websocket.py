"""WebSocket mode: a client's WebSocket relayed to the upstream's, one exchange per request.

For a protocol whose adapter has ``websocket_paths`` (the Responses API's ``GET /v1/responses``
upgraded to a WebSocket): nocp opens the same WebSocket upstream (the client's headers, the
upstream's key rules) and relays frames both ways. A client frame the adapter reads as a
request (``response.create``) goes through an :class:`~proxy.exchange.Exchange` like an HTTP
request, streamed: the stages rewrite its items, the tool loop may answer nocp's own calls
with further frames upstream, and one TransactionLog line is written per response. The
exchange's ``send`` writes the request frame upstream and reads the server's event frames as
a stream until the response ends; its client side turns the events it relays back into
frames. Other frames pass through unchanged in both directions (upstream frames that arrive
between responses go straight to the client). Either side closing closes the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.exceptions import UpstreamUnavailable
from proxy.exchange import ClientRequest, Exchange, Services, UpstreamRequest
from proxy.protocols import Adapter, SSESplitter, sse_data
from proxy.upstream import UpstreamClient

__all__ = ["serve_websocket"]

_log = structlog.get_logger("nocp.websocket")
_HANDSHAKE = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Accept",
    "Content-Length",
)
_CLOSED = object()


class _Session:
    """One relayed connection: the upstream socket, its reader, and where its frames go."""

    def __init__(
        self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, adapter: Adapter
    ):
        self.client = client
        self.upstream = upstream
        self.adapter = adapter
        self.current: asyncio.Queue[Any] | None = None  # frames of the response in flight
        self.closed = asyncio.Event()

    async def read_upstream(self) -> None:
        """Every upstream frame: to the exchange in flight, else straight to the client."""
        try:
            async for msg in self.upstream:
                if msg.type == aiohttp.WSMsgType.TEXT and self.current is not None:
                    await self.current.put(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    await self.client.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await self.client.send_bytes(msg.data)
                else:
                    break
        except (aiohttp.ClientError, ConnectionResetError, RuntimeError) as exc:
            _log.info("upstream_websocket_ended", error=type(exc).__name__)
        finally:
            self.closed.set()
            if self.current is not None:
                await self.current.put(_CLOSED)

    @asynccontextmanager
    async def send(self, req: UpstreamRequest) -> AsyncIterator[_Response]:
        """The exchange's ``send``: the request as a frame, the response as its event frames."""
        if self.closed.is_set():
            raise UpstreamUnavailable("the upstream WebSocket is closed")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.current = queue
        try:
            frame = self.adapter.ws_frame(json.loads(req.body))
            await self.upstream.send_str(json.dumps(frame, separators=(",", ":")))
            yield _Response(queue, self.adapter)
        finally:
            self.current = None


class _Response:
    """The upstream's event frames of one response, as the stream an exchange relays."""

    status: int = 200
    reason: str | None = "OK"

    def __init__(self, queue: asyncio.Queue[Any], adapter: Adapter) -> None:
        self.headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "text/event-stream"})
        self._queue = queue
        self._adapter = adapter

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            frame = await self._queue.get()
            if frame is _CLOSED:
                raise aiohttp.ClientConnectionError("the upstream WebSocket closed mid-response")
            try:
                event = json.loads(frame)
            except ValueError:
                event = None
            name = event.get("type") if isinstance(event, dict) else None
            yield b"event: " + str(name or "message").encode() + b"\ndata: " + frame.encode() + b"\n\n"
            if isinstance(event, dict) and self._adapter.ws_terminal(event):
                return


class _Client:
    """The exchange's client side: relayed events go back as frames; the socket stays open."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.started = False
        self.status = 200
        self._events = SSESplitter()
        self._error = b""

    async def start(
        self, status: int, reason: str | None, headers: CIMultiDict[str], *, length: int | None
    ) -> None:
        self.started, self.status = True, status

    async def write(self, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the client WebSocket closed")
        if self.status >= 400:  # an error body (nocp's, or the upstream's): one error event
            self._error += data
            return
        for event in self._events.feed(data):
            payload = sse_data(event)
            if payload is not None:
                await self.ws.send_str(payload.decode("utf-8", "replace"))

    async def end(self) -> None:
        if self.status >= 400:
            try:
                body = json.loads(self._error)
            except ValueError:
                body = {"message": self._error.decode("utf-8", "replace")}
            error = body.get("error", body) if isinstance(body, dict) else body
            await self.ws.send_str(json.dumps({"type": "error", "status": self.status, "error": error}))
            return
        rest = self._events.rest()
        if rest.strip():
            await self.write(rest + b"\n\n")

    def abort(self) -> None:
        asyncio.get_running_loop().create_task(self.ws.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR))

    def gone(self) -> bool:
        return self.ws.closed


async def serve_websocket(
    request: web.Request,
    adapter: Adapter,
    services: Services,
    upstream: UpstreamClient,
    url: Any,
    headers: CIMultiDict[str],
    *,
    tenant: str | None = None,
    client_headers: Any = None,
) -> web.WebSocketResponse:
    """Relay one client WebSocket to ``url`` (see the module docstring). With client auth,
    ``tenant`` is the one the client's nocp key maps to and ``client_headers`` the request's
    headers without that key (each request carries both)."""
    limit = services.settings.server.max_body_bytes
    for name in _HANDSHAKE:
        headers.popall(name, None)
    try:
        upstream_ws = await upstream.ws_connect(url, headers, max_msg_size=limit)
    except aiohttp.WSServerHandshakeError as exc:
        return web.Response(status=exc.status or 502, text=exc.message)  # type: ignore[return-value]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.Response(status=502, text=f"upstream WebSocket unreachable: {type(exc).__name__}")  # type: ignore[return-value]
    ws = web.WebSocketResponse(max_msg_size=limit, autoping=True)
    await ws.prepare(request)
    session = _Session(ws, upstream_ws, adapter)
    reader = asyncio.create_task(session.read_upstream())
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                body = adapter.ws_request(msg.data)
                if body is None:
                    await upstream_ws.send_str(msg.data)
                    continue
                exchange = Exchange(
                    services=services,
                    adapter=adapter,
                    request=ClientRequest(
                        path=request.path,
                        raw_path=request.raw_path,
                        headers=request.headers if client_headers is None else client_headers,
                        query=request.query,
                        match_info=request.match_info,
                        body=body,
                        tenant=tenant,
                    ),
                    send=session.send,
                    client=_Client(ws),
                )
                await exchange.run()
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await upstream_ws.send_bytes(msg.data)
            else:
                break
            if session.closed.is_set() and session.current is None:
                break
    finally:
        await upstream_ws.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()
    return ws
