"""Where the running proxy's stats come from: the tail of its own TransactionLog.

The proxy already writes every record to its log; :class:`LogStats` reads the last records
back (bounded by a record count and optionally a time window, newest file first across
rotation: :func:`proxy.translog_cli.last_records`) and builds the :func:`snapshot` on a worker
thread. A result is kept for ``ttl_s`` seconds, so a dashboard left open (or several) costs
one read per ``ttl_s`` whatever they poll. Reading the file rather than keeping aggregates in
memory means the figures survive a restart and are, line for line, the ones ``nocp logs stats``
prints for the same records.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from proxy.dashboard._snapshot import snapshot
from proxy.translog_cli import last_records

__all__ = ["DEFAULT_RECORDS", "MAX_RECORDS", "LogStats"]

DEFAULT_RECORDS = 10_000
MAX_RECORDS = 100_000

_log = structlog.get_logger("nocp.dashboard")


def _warn(message: str) -> None:
    _log.warning("stats_line_skipped", detail=message)


class LogStats:
    """The stats JSON of the last records of the log at ``path``, cached ``ttl_s`` seconds per
    ``(limit, since)``."""

    def __init__(
        self, path: Path, *, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.clock = clock
        self.reads = 0  # how many times the log was read (the cache's misses)
        self._cache: dict[tuple[int, str | None], tuple[float, dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    def _build(self, limit: int, since: dt.datetime | None) -> dict[str, Any]:
        records = last_records(self.path, limit, since=since, warn=_warn)
        return snapshot(records, now=dt.datetime.now(dt.UTC), limit=limit, since=since)

    async def get(
        self,
        *,
        limit: int = DEFAULT_RECORDS,
        since: dt.datetime | None = None,
        since_key: str | None = None,
        alerts: Sequence[Any] = (),
    ) -> dict[str, Any]:
        """The stats of the last ``limit`` records (since ``since``) with ``alerts`` (the open
        drift alerts, which are live and never cached). ``since_key`` is what the client asked
        for (``1h``): the cache key, so a relative window is not a new key every second."""
        key = (limit, since_key)
        async with self._lock:  # one read at a time; callers that waited get the fresh result
            hit = self._cache.get(key)
            if hit is None or self.clock() - hit[0] >= self.ttl_s:
                self.reads += 1
                hit = (self.clock(), await asyncio.to_thread(self._build, limit, since))
                self._cache = {k: v for k, v in self._cache.items() if self.clock() - v[0] < self.ttl_s}
                self._cache[key] = hit
        return {**hit[1], "alerts": list(alerts)}
