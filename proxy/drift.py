"""Drift detection over TransactionLog records, live in the proxy and offline over log files.

For each scope (every model, and all models together) the detector keeps the latest
``window`` records and the ``window`` records before them, and after each record compares
the two windows on seven figures:

========================  =====================================================  ==========
kind                      figure                                                 worse when
========================  =====================================================  ==========
``compression_ratio``     sent / raw input tokens (token-weighted)               up (abs.)
``token_savings``         mean net tokens saved per request                      down (rel.)
``cache_hit_share``       cached / prompt tokens, as the upstream reported them  down (abs.)
``proxy_overhead``        p50 ``proxy_overhead_ms``                              up (rel.)
``upstream_latency``      p50 ``llm_latency_ms``                                 up (rel.)
``error_rate``            share of ``upstream_error`` / ``proxy_error``          up (abs.)
``fail_open_rate``        share of requests with a fail-open stage               up (abs.)
========================  =====================================================  ==========

Ratio, savings, cache and latency figures use successful requests only; a window needs at
least a fifth of its records to carry a figure before it is compared. An alert fires once
when a figure crosses its warning (or critical) threshold, once more if it escalates from
warning to critical, and a ``resolved`` event follows when the change has stayed below
``clear_fraction`` of the warning threshold for ``quiet_s`` seconds (a noisy figure that swings
across the threshold meanwhile stays one episode). The detector is pure (records in, alerts out);
:class:`DriftMonitor` wires it into the running proxy: structured log, ``alerts.jsonl``
beside the transaction log, ``GET /v1/nocp/alerts`` and the metrics.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from proxy.config import DriftConfig
from proxy.translog import AppendFile, TransactionLog, figures

__all__ = ["KINDS", "Alert", "DriftDetector", "DriftMonitor"]

Severity = Literal["warning", "critical"]
State = Literal["firing", "resolved"]
KINDS = (
    "compression_ratio",
    "token_savings",
    "cache_hit_share",
    "proxy_overhead",
    "upstream_latency",
    "error_rate",
    "fail_open_rate",
)
_MIN_SHARE = 5  # a window needs 1/5 of its records to carry a figure before it is compared

_log = structlog.get_logger("nocp.drift")


class Alert(msgspec.Struct, kw_only=True):
    """One drift alert (``state="firing"``) or the end of its episode (``state="resolved"``)."""

    kind: str
    severity: Severity
    state: State = "firing"
    model: str | None  # None: all models together
    previous: float
    recent: float
    change: float
    threshold: float
    window: int
    message: str
    timestamp: str  # of the record that raised it, so offline runs show log time
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    label: str
    unit: str
    worse: Literal[1, -1]  # +1: a rise is worse, -1: a drop is worse
    relative: bool
    warning: float
    critical: float
    min_delta: float = 0.0


def _rules(cfg: DriftConfig) -> tuple[_Rule, ...]:
    return (
        _Rule("compression_ratio", "input compression ratio", "", 1, False,
              cfg.compression_ratio_warning, cfg.compression_ratio_critical),
        _Rule("token_savings", "net tokens saved per request", " tokens", -1, True,
              cfg.token_savings_warning, cfg.token_savings_critical, cfg.token_savings_min_delta),
        _Rule("cache_hit_share", "cache hit share", "", -1, False,
              cfg.cache_hit_share_warning, cfg.cache_hit_share_critical),
        _Rule("proxy_overhead", "p50 proxy overhead", " ms", 1, True,
              cfg.latency_warning, cfg.latency_critical, cfg.latency_min_delta_ms),
        _Rule("upstream_latency", "p50 upstream latency", " ms", 1, True,
              cfg.latency_warning, cfg.latency_critical, cfg.latency_min_delta_ms),
        _Rule("error_rate", "error rate", "", 1, False, cfg.error_rate_warning, cfg.error_rate_critical),
        _Rule("fail_open_rate", "fail-open rate", "", 1, False,
              cfg.fail_open_rate_warning, cfg.fail_open_rate_critical),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Sample:
    """The figures one record contributes."""

    ok: bool
    raw: int
    sent: int
    savings: int
    prompt: int
    cached: int
    overhead: float | None
    upstream: float | None
    error: bool
    fail_open: bool

    @classmethod
    def of(cls, r: TransactionLog) -> _Sample:
        f = figures(r)
        ok = f.counts_for_savings
        has_prompt = ok and r.prompt_tokens is not None
        return cls(
            ok=ok,
            raw=f.raw_input_tokens if ok else 0,
            sent=f.sent_input_tokens if ok else 0,
            savings=f.net_saved_tokens if ok else 0,
            prompt=(r.prompt_tokens or 0) if has_prompt else 0,
            cached=(r.cached_tokens or 0) if has_prompt else 0,
            overhead=r.proxy_overhead_ms if ok else None,
            upstream=r.llm_latency_ms if ok else None,
            error=f.error,
            fail_open=bool(r.fail_open),
        )


def _median(values: list[float]) -> float:
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2


@dataclass(slots=True)
class _Window:
    """Running sums over a sequence of samples, updated in O(log n) per sample."""

    samples: deque[_Sample] = field(default_factory=deque)
    ok: int = 0
    raw: int = 0
    sent: int = 0
    savings: int = 0
    prompt: int = 0
    cached: int = 0
    errors: int = 0
    fail_opens: int = 0
    overheads: list[float] = field(default_factory=list)  # kept sorted
    upstreams: list[float] = field(default_factory=list)  # kept sorted

    def __len__(self) -> int:
        return len(self.samples)

    def push(self, s: _Sample) -> None:
        self.samples.append(s)
        self._account(s, 1)
        if s.overhead is not None:
            bisect.insort(self.overheads, s.overhead)
        if s.upstream is not None:
            bisect.insort(self.upstreams, s.upstream)

    def pop(self) -> _Sample:
        s = self.samples.popleft()
        self._account(s, -1)
        if s.overhead is not None:
            del self.overheads[bisect.bisect_left(self.overheads, s.overhead)]
        if s.upstream is not None:
            del self.upstreams[bisect.bisect_left(self.upstreams, s.upstream)]
        return s

    def _account(self, s: _Sample, sign: int) -> None:
        self.ok += sign * s.ok
        self.raw += sign * s.raw
        self.sent += sign * s.sent
        self.savings += sign * s.savings
        self.prompt += sign * s.prompt
        self.cached += sign * s.cached
        self.errors += sign * s.error
        self.fail_opens += sign * s.fail_open

    def value(self, kind: str, min_samples: int) -> float | None:
        """The window's figure for ``kind``; None when too few records carry it."""
        n = len(self.samples)
        if not n:
            return None
        if kind == "error_rate":
            return self.errors / n
        if kind == "fail_open_rate":
            return self.fail_opens / n
        if kind == "proxy_overhead":
            return _median(self.overheads) if len(self.overheads) >= min_samples else None
        if kind == "upstream_latency":
            return _median(self.upstreams) if len(self.upstreams) >= min_samples else None
        if self.ok < min_samples:
            return None
        if kind == "compression_ratio":
            return self.sent / self.raw if self.raw else None
        if kind == "token_savings":
            return self.savings / self.ok
        if kind == "cache_hit_share":
            return self.cached / self.prompt if self.prompt else None
        raise ValueError(f"unknown drift kind {kind!r}")


@dataclass(slots=True)
class _Scope:
    model: str | None
    recent: _Window = field(default_factory=_Window)
    previous: _Window = field(default_factory=_Window)
    active: dict[str, Alert] = field(default_factory=dict)
    clear_since: dict[str, float] = field(default_factory=dict)  # open episodes gone clear: since when


def _when(record: TransactionLog) -> float:
    """The record's timestamp in seconds (now, if it has none readable)."""
    try:
        return dt.datetime.fromisoformat(record.timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _fmt(value: float, rule: _Rule) -> str:
    if rule.unit:
        return f"{value:.1f}{rule.unit}"
    return f"{value:.1%}" if rule.kind != "compression_ratio" else f"{value:.3f}"


class DriftDetector:
    """Rolling-window drift detection; feed it records in log order with :meth:`observe`."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self.window = self.config.window
        self._min_samples = max(1, self.window // _MIN_SHARE)
        self._rules = _rules(self.config)
        self._overall = _Scope(model=None)
        self._models: dict[str, _Scope] = {}
        self.records = 0

    def observe(self, record: TransactionLog) -> list[Alert]:
        """Account for one record; return the alerts (and resolutions) it causes."""
        self.records += 1
        sample = _Sample.of(record)
        alerts: list[Alert] = []
        scopes = [self._overall]
        if record.model is not None:
            scope = self._models.get(record.model)
            if scope is None and len(self._models) < self.config.max_models:
                scope = self._models[record.model] = _Scope(model=record.model)
            if scope is not None:
                scopes.append(scope)
        for scope in scopes:
            self._push(scope, sample)
            if len(scope.previous) == self.window:
                alerts.extend(self._evaluate(scope, record))
        return alerts

    def active(self) -> list[Alert]:
        """The alerts whose episode is still open (the latest alert of each). Safe to call
        from another thread (``/metrics`` renders on one): each dict is copied in one step."""
        scopes = [self._overall, *self._models.values()]
        return [alert for scope in scopes for alert in list(scope.active.values())]

    def _push(self, scope: _Scope, sample: _Sample) -> None:
        scope.recent.push(sample)
        if len(scope.recent) > self.window:
            scope.previous.push(scope.recent.pop())
            if len(scope.previous) > self.window:
                scope.previous.pop()

    def _evaluate(self, scope: _Scope, record: TransactionLog) -> Iterable[Alert]:
        for rule in self._rules:
            prev = scope.previous.value(rule.kind, self._min_samples)
            recent = scope.recent.value(rule.kind, self._min_samples)
            if prev is None or recent is None:
                continue  # not enough data: an open episode stays open
            if rule.relative:
                if prev <= 0:
                    continue
                change = (recent - prev) / prev
            else:
                change = recent - prev
            worse = change * rule.worse
            big_enough = abs(recent - prev) >= rule.min_delta
            severity: Severity | None = None
            if big_enough and worse >= rule.critical:
                severity = "critical"
            elif big_enough and worse >= rule.warning:
                severity = "warning"
            current = scope.active.get(rule.kind)
            if severity is not None and (
                current is None or (current.severity == "warning" and severity == "critical")
            ):
                alert = self._alert(rule, scope, record, severity, "firing", prev, recent, change)
                scope.active[rule.kind] = alert
                scope.clear_since.pop(rule.kind, None)
                yield alert
            elif current is not None and worse < rule.warning * self.config.clear_fraction:
                # clear: the episode ends once it has stayed clear for quiet_s
                now = _when(record)
                since = scope.clear_since.setdefault(rule.kind, now)
                if now - since >= self.config.quiet_s:
                    del scope.active[rule.kind]
                    del scope.clear_since[rule.kind]
                    yield self._alert(rule, scope, record, current.severity, "resolved", prev, recent, change)
            elif current is not None:  # not clear (again): the episode goes on
                scope.clear_since.pop(rule.kind, None)

    def _alert(
        self,
        rule: _Rule,
        scope: _Scope,
        record: TransactionLog,
        severity: Severity,
        state: State,
        prev: float,
        recent: float,
        change: float,
    ) -> Alert:
        where = f"model {scope.model}" if scope.model is not None else "all models"
        shown = f"{change:+.0%}" if rule.relative else f"{change:+.3f}"
        threshold = rule.critical if severity == "critical" else rule.warning
        if state == "firing":
            message = (
                f"{rule.label} for {where} went from {_fmt(prev, rule)} to {_fmt(recent, rule)} "
                f"({shown}) over the last {self.window} requests"
            )
        else:
            message = (
                f"{rule.label} for {where} is back to normal: {_fmt(prev, rule)} -> {_fmt(recent, rule)}"
            )
        return Alert(
            kind=rule.kind,
            severity=severity,
            state=state,
            model=scope.model,
            previous=round(prev, 6),
            recent=round(recent, 6),
            change=round(change, 6),
            threshold=threshold,
            window=self.window,
            message=message,
            timestamp=record.timestamp,
            transaction_id=record.transaction_id,
        )


class _AlertFile:
    """Appends alerts to a JSONL file from a worker thread, in order; alerts are rare. Each
    line is written whole or not at all, lost lines are counted (see
    :class:`~proxy.translog.AppendFile`)."""

    def __init__(self, path: Path) -> None:
        self.file = AppendFile(path, name="alerts")
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self.file.path

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="nocp-alerts-writer")

    def submit(self, line: bytes) -> None:
        if self._task is None:  # not started (offline use): nothing to write to
            return
        self._queue.put_nowait(line)

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.file.close()

    async def _run(self) -> None:
        while True:
            lines: list[bytes] = []
            item = await self._queue.get()
            stop = item is None
            if item is not None:
                lines.append(item)
            while not stop and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                else:
                    lines.append(nxt)
            if lines:
                await asyncio.to_thread(self._append, lines)
            if stop:
                return

    def _append(self, lines: list[bytes]) -> None:
        for line in lines:
            self.file.append(line)


AlertSink = Callable[[Alert], None]


class DriftMonitor:
    """The detector inside the running proxy: a TransactionLog observer whose alerts go to the
    structured log, ``alerts.jsonl``, the recent list behind ``/v1/nocp/alerts`` and ``sinks``
    (the metrics)."""

    def __init__(self, config: DriftConfig, alerts_path: Path, *, keep: int = 200) -> None:
        self.config = config
        self.detector = DriftDetector(config)
        self.recent: deque[Alert] = deque(maxlen=keep)
        self.sinks: list[AlertSink] = []
        self._file = _AlertFile(alerts_path)
        self._encoder = msgspec.json.Encoder()

    @property
    def alerts_path(self) -> Path:
        """Where alerts are appended."""
        return self._file.path

    @property
    def alerts_file(self) -> AppendFile:
        """The alerts file (lines written and dropped, whether writes fail now)."""
        return self._file.file

    def start(self) -> None:
        """Start the alerts file writer (call on the event loop)."""
        self._file.start()

    async def close(self) -> None:
        """Write every pending alert and stop."""
        await self._file.close()

    def observe(self, record: TransactionLog) -> None:
        """TransactionLog observer: feed the detector, publish what it raises."""
        if not self.config.enabled:
            return
        for alert in self.detector.observe(record):
            self.recent.append(alert)
            log = _log.warning if alert.state == "firing" else _log.info
            log(
                "drift_alert" if alert.state == "firing" else "drift_resolved",
                request_id=alert.transaction_id,
                **msgspec.structs.asdict(alert),
            )
            self._file.submit(self._encoder.encode(alert) + b"\n")
            for sink in self.sinks:
                sink(alert)

    def snapshot(self) -> dict[str, list[Alert]]:
        """What ``GET /v1/nocp/alerts`` returns: open episodes and the latest alerts."""
        return {"active": self.detector.active(), "recent": list(self.recent)}
