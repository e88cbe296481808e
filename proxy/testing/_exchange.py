"""Driving :class:`proxy.exchange.Exchange` without a socket, like httpx's ``MockTransport``.

``MockSend(handler)`` is an exchange's ``send``: each upstream call goes to ``handler``, which
returns a :class:`MockResponse` (whole, or a list of chunks for a stream). ``RecordingClient``
is the client side (what the client received), ``MemoryWriter`` keeps the log records.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from proxy.exchange import UpstreamRequest
from proxy.translog import Finalizer, TransactionLog

__all__ = ["MemoryWriter", "MockResponse", "MockSend", "RecordingClient"]


@dataclass(frozen=True)
class MockResponse:
    """What the upstream answers: a status, headers, and a body (bytes, a JSON value, or a list
    of chunks delivered one by one)."""

    status: int = 200
    body: bytes | list[bytes] | Mapping[str, Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None


class _Upstream:
    def __init__(self, resp: MockResponse) -> None:
        self.status = resp.status
        self.reason = resp.reason
        self.headers: CIMultiDict[str] = CIMultiDict(resp.headers)
        body = resp.body
        if isinstance(body, Mapping):
            self.headers.setdefault("Content-Type", "application/json")
            body = json.dumps(body).encode()
        self._chunks = body if isinstance(body, list) else [body]

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


Handler = Callable[[UpstreamRequest], MockResponse | Awaitable[MockResponse]]


class MockSend:
    """An exchange's ``send`` answered by ``handler``; keeps every request (``requests``)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[UpstreamRequest] = []

    @asynccontextmanager
    async def __call__(self, req: UpstreamRequest) -> AsyncIterator[_Upstream]:
        self.requests.append(req)
        resp = self.handler(req)
        if not isinstance(resp, MockResponse):
            resp = await resp
        yield _Upstream(resp)

    def bodies(self) -> list[Any]:
        """The JSON bodies sent upstream, in order."""
        return [json.loads(r.body) for r in self.requests]


class RecordingClient:
    """The client side of an exchange: its status, headers and every write, in order."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.writes: list[bytes] = []
        self.ended = False
        self.aborted = False
        self.is_gone = False

    @property
    def started(self) -> bool:
        return self.status is not None

    async def start(
        self, status: int, reason: str | None, headers: CIMultiDict[str], *, length: int | None
    ) -> None:
        self.status, self.headers = status, headers

    async def write(self, data: bytes) -> None:
        if self.is_gone:
            raise ConnectionResetError("client gone")
        self.writes.append(data)

    async def end(self) -> None:
        self.ended = True

    def abort(self) -> None:
        self.aborted = True

    def gone(self) -> bool:
        return self.is_gone

    @property
    def body(self) -> bytes:
        """Everything written."""
        return b"".join(self.writes)

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class MemoryWriter:
    """An exchange's record writer that keeps the records (finalized at once)."""

    def __init__(self) -> None:
        self.records: list[TransactionLog] = []

    def submit(
        self, record: TransactionLog, finalize: Finalizer | None = None, *, offload: bool = False
    ) -> None:
        if finalize is not None:
            finalize()
        self.records.append(record)
