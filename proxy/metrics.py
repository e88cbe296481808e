"""Prometheus metrics for ``GET /metrics``, one registry per application.

Everything per request is recorded by a TransactionLog observer, after the line is written
and off the request path; the request path itself only moves the streams-in-flight gauge.
Names follow Prometheus conventions: ``nocp_`` prefix, base units (seconds, tokens, USD),
``_total`` counters, ``_seconds`` histograms. Savings that can be negative are exported as
two counters (``nocp_baseline_cost_usd_total`` - ``nocp_cost_usd_total``;
``nocp_tokens_saved_total`` - ``nocp_compression_overhead_tokens_total``) because a counter
only goes up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.drift import KINDS, Alert
from proxy.translog import AppendFile, TransactionLog, TransactionLogWriter, figures

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "other"

# Counters' ``_created`` series double the output for nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_GEMINI_MODEL = re.compile(r"/models/[^/:]+:")
LABEL_CHARS = 128
"""A label value the client chose (model, tool) longer than this, or with a control
character, is counted under ``other``: a label is repeated on every series line of its
metrics, and distinct long names would each add a hundred lines."""
_MAX_SMALL = 64  # distinct values of labels nocp itself names (endpoint, stage, content type)


def endpoint_label(path: str) -> str:
    """The route of ``path``, with Gemini's model name taken out (it is the ``model`` label)."""
    return _GEMINI_MODEL.sub("/models/{model}:", path)


class _WriterCollector(Collector):
    """Lines the TransactionLog writer (and the drift alerts file) wrote and dropped, and
    whether their writes fail now, read at scrape time."""

    def __init__(self, writer: TransactionLogWriter, alerts: AppendFile | None) -> None:
        self.writer = writer
        self.alerts = alerts

    def collect(self) -> Iterator[Metric]:
        w = self.writer
        yield CounterMetricFamily(
            "nocp_translog_written_records", "TransactionLog lines written.", value=w.written
        )
        dropped = CounterMetricFamily(
            "nocp_translog_dropped_records",
            "TransactionLog records lost: the writer queue was full, or the write failed (disk full).",
            labels=["reason"],
        )
        dropped.add_metric(["queue_full"], w.queue_dropped)
        dropped.add_metric(["write_failed"], w.file.dropped)
        yield dropped
        degraded = GaugeMetricFamily(
            "nocp_log_file_degraded",
            "1 while writes to the file fail (records are being lost).",
            labels=["file"],
        )
        degraded.add_metric(["transactions"], float(w.degraded() is not None))
        if self.alerts is not None:
            degraded.add_metric(["alerts"], float(self.alerts.degraded() is not None))
            yield CounterMetricFamily(
                "nocp_alerts_dropped_records",
                "Drift alerts that could not be written to alerts.jsonl.",
                value=self.alerts.dropped,
            )
        yield degraded


class _ActiveAlertsCollector(Collector):
    """Drift episodes open now, by kind and severity, read at scrape time."""

    def __init__(self, active: Callable[[], Iterable[Alert]]) -> None:
        self.active = active

    def collect(self) -> Iterator[Metric]:
        counts = {(kind, sev): 0 for kind in KINDS for sev in ("warning", "critical")}
        for alert in self.active():
            counts[alert.kind, alert.severity] = counts.get((alert.kind, alert.severity), 0) + 1
        family = GaugeMetricFamily(
            "nocp_alerts_active", "Drift episodes open now (all scopes).", labels=["kind", "severity"]
        )
        for (kind, sev), n in counts.items():
            family.add_metric([kind, sev], n)
        yield family


def _bounded(value: str, seen: set[str], limit: int) -> str:
    """``value`` as a label: itself if it is already a label or fits (at most ``limit``
    distinct values, each at most :data:`LABEL_CHARS` printable characters), else ``other``."""
    if value in seen:
        return value
    if len(seen) < limit and 0 < len(value) <= LABEL_CHARS and value.isprintable():
        seen.add(value)
        return value
    return OTHER


class _ModelSeries(NamedTuple):
    """The children of the per-model metrics for one ``model`` label, looked up once."""

    input_raw: Counter
    input_sent: Counter
    tokens_saved: Counter
    overhead_tokens: Counter
    prompt_tokens: Counter
    cached_tokens: Counter
    completion_tokens: Counter
    cost: Counter
    baseline_cost: Counter
    duration: Histogram
    upstream_duration: Histogram
    first_chunk: Histogram
    compression_duration: Histogram
    proxy_overhead: Histogram


class Metrics:
    """The proxy's metrics; :meth:`observe` is a TransactionLog observer."""

    def __init__(self, *, max_models: int = 100) -> None:
        self.registry = CollectorRegistry()
        self.max_models = max_models
        self._models: set[str] = set()
        r = self.registry
        by_model = ["model"]
        self.requests = Counter(
            "nocp_requests",
            "Requests on the rewriting endpoints.",
            ["endpoint", "protocol", "model", "status", "outcome"],
            registry=r,
        )
        self.input_raw = Counter(
            "nocp_input_tokens_raw", "Input tokens as the client sent them.", by_model, registry=r
        )
        self.input_sent = Counter(
            "nocp_input_tokens_sent", "Input tokens sent upstream after compression.", by_model, registry=r
        )
        self.tokens_saved = Counter(
            "nocp_tokens_saved", "Input tokens removed by compression (raw - sent).", by_model, registry=r
        )
        self.overhead_tokens = Counter(
            "nocp_compression_overhead_tokens",
            "Tokens spent by compression itself (summarizer calls); subtract from tokens saved.",
            by_model,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "nocp_upstream_prompt_tokens", "Prompt tokens the upstream reported.", by_model, registry=r
        )
        self.cached_tokens = Counter(
            "nocp_upstream_cached_tokens", "Cached prompt tokens the upstream reported.", by_model, registry=r
        )
        self.completion_tokens = Counter(
            "nocp_upstream_completion_tokens",
            "Completion tokens the upstream reported.",
            by_model,
            registry=r,
        )
        self.cost = Counter(
            "nocp_cost_usd",
            "Estimated cost of the requests sent, summarizer calls included.",
            by_model,
            registry=r,
        )
        self.baseline_cost = Counter(
            "nocp_baseline_cost_usd",
            "Estimated cost had the requests been sent uncompressed; savings = baseline - cost.",
            by_model,
            registry=r,
        )
        self.duration = Histogram(
            "nocp_request_duration_seconds",
            "Total time from request received to response finished.",
            by_model,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "nocp_upstream_duration_seconds",
            "Time from request sent upstream to its response finished.",
            by_model,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_chunk = Histogram(
            "nocp_time_to_first_chunk_seconds",
            "Streamed requests: time from request sent upstream to its first chunk.",
            by_model,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compression_duration = Histogram(
            "nocp_compression_duration_seconds",
            "Time spent in the pipeline stages.",
            by_model,
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.proxy_overhead = Histogram(
            "nocp_proxy_overhead_seconds",
            "Total time minus upstream time: what the proxy adds.",
            by_model,
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self._model_metrics: tuple[Any, ...] = (
            self.input_raw,
            self.input_sent,
            self.tokens_saved,
            self.overhead_tokens,
            self.prompt_tokens,
            self.cached_tokens,
            self.completion_tokens,
            self.cost,
            self.baseline_cost,
            self.duration,
            self.upstream_duration,
            self.first_chunk,
            self.compression_duration,
            self.proxy_overhead,
        )
        self._by_model: dict[str, _ModelSeries] = {}
        self.fail_opens = Counter(
            "nocp_fail_open", "Stages that failed open (the original was forwarded).", ["stage"], registry=r
        )
        self.streams_in_flight = Gauge(
            "nocp_streams_in_flight", "Streamed LLM responses being relayed right now.", registry=r
        )
        self.alerts = Counter("nocp_alerts", "Drift alerts raised.", ["kind", "severity"], registry=r)
        self.retrievals = Counter(
            "nocp_retrievals",
            "Retrieval-tool calls nocp answered, by the tool whose output was cut ('history': a "
            "roll-up; 'unknown': the id was not stored) and its content type. A high rate for a tool "
            "means its outputs are compressed too aggressively.",
            ["tool", "content_type"],
            registry=r,
        )
        self.retrieval_misses = Counter(
            "nocp_retrieval_misses",
            "Retrieval-tool calls for an id that was not (or no longer) stored.",
            registry=r,
        )
        self.retrieval_rounds = Counter(
            "nocp_retrieval_rounds",
            "Extra upstream calls nocp made to answer retrieval-tool calls.",
            by_model,
            registry=r,
        )
        self.retrieval_offered = Counter(
            "nocp_retrieval_offered",
            "Requests sent upstream with the retrieval tool (they carried a lossy marker).",
            by_model,
            registry=r,
        )
        self._tools: set[str] = set()
        self._small_labels: dict[str, set[str]] = {}
        for kind in KINDS:  # export zeros, so increase() works from the first alert on
            for severity in ("warning", "critical"):
                self.alerts.labels(kind, severity)

    def track_writer(self, writer: TransactionLogWriter, alerts: AppendFile | None = None) -> None:
        """Export the writer's (and the alerts file's) written/dropped line counts."""
        self.registry.register(_WriterCollector(writer, alerts))

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)

    def _model(self, model: str | None) -> str:
        if model is None:
            return "none"
        return _bounded(model, self._models, self.max_models)

    def _tool(self, tool: str) -> str:
        return _bounded(tool, self._tools, self.max_models)

    def _small(self, kind: str, value: str) -> str:
        return _bounded(value, self._small_labels.setdefault(kind, set()), _MAX_SMALL)

    def _observe_retrieval(self, rec: TransactionLog, model: str) -> None:
        if rec.retrieval_offered:
            self.retrieval_offered.labels(model).inc()
        if rec.retrieval_rounds:
            self.retrieval_rounds.labels(model).inc(rec.retrieval_rounds)
        for r in rec.retrievals:
            if not r.found:
                self.retrieval_misses.inc()
            tool = r.tool or ("history" if r.content_type == "history" else "unknown")
            self.retrievals.labels(self._tool(tool), self._small("content_type", r.content_type)).inc()

    def _series(self, model: str) -> _ModelSeries:
        series = self._by_model.get(model)
        if series is None:
            series = self._by_model[model] = _ModelSeries(
                *(metric.labels(model) for metric in self._model_metrics)
            )
        return series

    def observe(self, rec: TransactionLog) -> None:
        """TransactionLog observer: account for one finished request."""
        model = self._model(rec.model)
        m = self._series(model)
        endpoint = self._small("endpoint", endpoint_label(rec.endpoint))
        self.requests.labels(
            endpoint, self._small("protocol", rec.protocol), model, str(rec.status), rec.outcome
        ).inc()
        for stage in {f.stage for f in rec.fail_open}:
            self.fail_opens.labels(self._small("stage", stage)).inc()
        if rec.retrieval_offered or rec.retrievals:
            self._observe_retrieval(rec, model)
        if rec.total_latency_ms:
            m.duration.observe(rec.total_latency_ms / 1000)
        f = figures(rec)
        if not f.counts_for_savings:
            return
        m.input_raw.inc(f.raw_input_tokens)
        m.input_sent.inc(f.sent_input_tokens)
        # net saved = tokens_saved - overhead_tokens; a counter only goes up
        m.tokens_saved.inc(max(0, f.gross_saved_tokens))
        m.overhead_tokens.inc(max(0, f.overhead_tokens))
        m.prompt_tokens.inc(rec.prompt_tokens or 0)
        m.cached_tokens.inc(rec.cached_tokens or 0)
        m.completion_tokens.inc(rec.completion_tokens or 0)
        if rec.baseline_cost_usd is not None and rec.cost_savings_usd is not None:
            # what was spent, summarizer calls included, so baseline - cost is the saving
            m.cost.inc(max(0.0, rec.baseline_cost_usd - rec.cost_savings_usd))
        elif rec.estimated_cost_usd is not None:
            m.cost.inc(max(0.0, rec.estimated_cost_usd))
        if rec.baseline_cost_usd is not None:
            m.baseline_cost.inc(max(0.0, rec.baseline_cost_usd))
        if rec.llm_latency_ms is not None:
            m.upstream_duration.observe(rec.llm_latency_ms / 1000)
        if rec.stream and rec.ttft_ms is not None:
            m.first_chunk.observe(rec.ttft_ms / 1000)
        m.compression_duration.observe(rec.compression_latency_ms / 1000)
        m.proxy_overhead.observe(max(0.0, rec.proxy_overhead_ms) / 1000)

    def alert(self, alert: Alert) -> None:
        """Drift alert sink: count firing alerts (escalations to critical included)."""
        if alert.state == "firing":
            self.alerts.labels(alert.kind, alert.severity).inc()

    def track_alerts(self, active: Callable[[], Iterable[Alert]]) -> None:
        """Export ``nocp_alerts_active{kind,severity}`` from ``active()`` at scrape time."""
        self.registry.register(_ActiveAlertsCollector(active))
