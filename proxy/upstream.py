"""Talking to upstream providers: one shared client session, URL and header rules, error mapping.

Header rules: hop-by-hop headers (RFC 9110 section 7.6.1, plus those a ``Connection`` header
names) and nocp's own control headers (:mod:`proxy.treatment`) are dropped both ways; every
other header is forwarded unchanged. Responses are not decompressed on the way through, so
bytes reach the client exactly as the upstream sent them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import Settings, UpstreamConfig
from proxy.exceptions import UpstreamTimeout, UpstreamUnavailable
from proxy.treatment import NOCP_HEADERS

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


def forward_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop headers, nocp's own request headers
    (``X-Nocp-Bypass``, ``X-Nocp-Policy``) and ``drop``."""
    skip = set(HOP_BY_HOP) | NOCP_HEADERS
    skip.update(h.lower() for h in drop)
    for value in headers.getall("Connection", ()):
        skip.update(token.strip().lower() for token in value.split(","))
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in skip:
            out.add(key, value)
    return out


def upstream_url(up: UpstreamConfig, raw_path: str) -> URL:
    """Where a client request for ``raw_path`` (path and query, as sent) goes on ``up``.

    The client's path is appended whole to the upstream's base URL; for OpenAI upstreams a
    base URL ending in ``/v1`` stands for the client's own ``/v1`` prefix, as in the SDK.
    """
    base = up.base_url.rstrip("/")
    if up.protocol in ("openai", "anthropic") and base.endswith("/v1"):
        base = base[:-3]
    return URL(base + raw_path, encoded=True)


def apply_api_key(headers: CIMultiDict[str], up: UpstreamConfig) -> None:
    """Replace the client's key with the upstream's own, when it has one configured."""
    if up.api_key_env is None:
        return
    key = os.environ.get(up.api_key_env, "")
    if up.protocol == "gemini":
        headers["x-goog-api-key"] = key
        headers.popall("Authorization", None)
    elif up.protocol == "anthropic":
        headers["x-api-key"] = key
        headers.popall("Authorization", None)
    else:
        headers["Authorization"] = f"Bearer {key}"


_LARGE_BODY = 1 << 20


async def _chunks(data: bytes) -> AsyncIterator[memoryview]:
    """A large body in 1 MiB slices, so sending it never blocks the event loop."""
    view = memoryview(data)
    for start in range(0, len(view), _LARGE_BODY):
        yield view[start : start + _LARGE_BODY]


class UpstreamClient:
    """The one ``aiohttp.ClientSession`` every upstream request goes through."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the session (inside the running loop)."""
        t = self._settings.timeouts
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=t.connect, sock_connect=t.connect, sock_read=t.read
            ),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ws_connect(
        self, url: URL, headers: CIMultiDict[str], *, max_msg_size: int
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket upstream (``http(s)`` in ``url`` becomes ``ws(s)``)."""
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        scheme = {"http": "ws", "https": "wss"}.get(url.scheme, url.scheme)
        return await self._session.ws_connect(
            url.with_scheme(scheme), headers=headers, max_msg_size=max_msg_size, autoping=True
        )

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: URL, headers: CIMultiDict[str], data: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request; connection failures become 502, timeouts before the response 504."""
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        if isinstance(data, bytes) and len(data) > _LARGE_BODY:
            headers["Content-Length"] = str(len(data))
            data = _chunks(data)
        try:
            resp = await self._session.request(
                method, url, headers=headers, data=data, allow_redirects=False, compress=None
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream {url.host} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream {url.host} unreachable: {type(exc).__name__}") from exc
        try:
            yield resp
        finally:
            resp.release() if resp.content.at_eof() else resp.close()
