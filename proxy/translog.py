"""The TransactionLog record (schema_version 1) and its asynchronous JSONL writer.

One record per proxied request on the rewriting endpoints. The request path only puts a
record on a bounded queue; one background task drains it and writes each line with a single
``write`` to an unbuffered file from a worker thread, so the event loop never waits on disk
and a crash cannot leave half a line behind a whole one. Rotation is size-based
(``transactions.jsonl`` -> ``.1`` -> ``.2`` ...). ``close()`` drains and flushes everything
still queued; it runs on shutdown (SIGTERM/SIGINT).

Token counts that would slow the request path are filled in by the writer: a queued item
may carry a ``finalize`` callable that runs on the writer's thread before encoding. After a
batch is written, each record is handed to the ``observers`` (metrics, drift detection) on
the event loop, complete with its token counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import msgspec
import structlog

__all__ = [
    "ERROR_OUTCOMES",
    "FailOpen",
    "Figures",
    "HopUsage",
    "RetrievalRecord",
    "SegmentRecord",
    "TransactionLog",
    "TransactionLogWriter",
    "billed_tokens",
    "figures",
    "net_saved_tokens",
    "retrieval_overhead_tokens",
    "saved_share",
]

SCHEMA_VERSION = 1
Outcome = Literal["ok", "upstream_error", "client_error", "cancelled", "proxy_error"]

_log = structlog.get_logger("nocp.translog")


class SegmentRecord(msgspec.Struct, kw_only=True):
    """What one stage did to one segment."""

    kind: str
    index: int
    tool: str | None = None
    method: str = "none"
    tokens_before: int = 0
    tokens_after: int = 0
    lossless: bool = True


class FailOpen(msgspec.Struct, kw_only=True):
    """A stage that failed and whose changes were discarded."""

    stage: str
    reason: str


class RetrievalRecord(msgspec.Struct, kw_only=True):
    """One call of the retrieval tool that nocp answered: the content id asked for, what the
    original was (the tool whose output was cut, None for a history summary; its content
    type), whether it was still stored, and the tokens of the tool result nocp added.
    ``deferred``: the model called it beside a client tool, so the answer goes into the
    client's next request instead of a new round."""

    id: str
    tool: str | None = None
    content_type: str = "unknown"
    found: bool = False
    deferred: bool = False
    tokens: int = 0


class HopUsage(msgspec.Struct, kw_only=True):
    """One upstream call of a request that took retrieval rounds, as the upstream reported it."""

    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None


_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{10,}|Bearer\s+\S+|key=[A-Za-z0-9_\-]{10,})")


def redact(text: str) -> str:
    """``text`` with anything shaped like an API key or bearer token replaced."""
    return _SECRET.sub("[redacted]", text)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TransactionLog(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One line of the transaction log. Field groups follow DESIGN.md."""

    # identity
    schema_version: int = SCHEMA_VERSION
    transaction_id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: str = msgspec.field(default_factory=_now)
    session_id: str | None = None
    endpoint: str = ""
    protocol: str = ""
    model: str | None = None
    upstream: str | None = None
    stream: bool = False
    status: int = 0
    outcome: Outcome = "ok"
    error_message: str | None = None
    # request
    user_query: str | None = None
    tools_invoked: list[str] = msgspec.field(default_factory=list)
    # input compression
    raw_input_tokens: int = 0
    optimized_input_tokens: int = 0
    input_compression_ratio: float = 1.0
    input_compression_methods: list[str] = msgspec.field(default_factory=list)
    compression_justified: bool = False
    segments: list[SegmentRecord] = msgspec.field(default_factory=list)
    fail_open: list[FailOpen] = msgspec.field(default_factory=list)
    # LLM, as the upstream reported it
    prompt_tokens: int | None = None  # all input tokens (cache reads and writes included)
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    # Anthropic: input tokens written to the prompt cache (of which with the 1-hour TTL),
    # billed above the input price; and the cache breakpoints nocp added (auto_cache)
    cache_creation_input_tokens: int | None = None
    cache_creation_1h_input_tokens: int | None = None
    cache_breakpoints_added: int = 0
    llm_latency_ms: float | None = None
    ttft_ms: float | None = None
    # output
    raw_output_tokens: int | None = None
    optimized_output_tokens: int | None = None
    output_compression_ratio: float | None = None
    serialization_format: str | None = None
    # latency
    total_latency_ms: float = 0.0
    compression_latency_ms: float = 0.0
    serialization_latency_ms: float = 0.0
    proxy_overhead_ms: float = 0.0
    # cost
    estimated_cost_usd: float | None = None
    baseline_cost_usd: float | None = None
    cost_savings_usd: float | None = None
    # efficiency
    total_token_savings: int = 0
    compression_overhead_tokens: int = 0
    efficiency_delta: float = 0.0
    # retrieval (reversible compression): whether the retrieval tool was offered, how many
    # rounds nocp answered itself, each retrieval, the tokens of the tool results it added, and
    # the upstream's usage per call when there was more than one (prompt_tokens etc. above are
    # the sums over the calls, as the client sees them)
    retrieval_offered: bool = False
    retrieval_rounds: int = 0
    retrievals: list[RetrievalRecord] = msgspec.field(default_factory=list)
    retrieval_tokens: int = 0
    retrieval_hops: list[HopUsage] = msgspec.field(default_factory=list)

    def set_input_tokens(self, raw: int, optimized: int) -> None:
        """Record raw and sent input tokens and everything derived from them."""
        self.raw_input_tokens = raw
        self.optimized_input_tokens = optimized
        self.input_compression_ratio = round(optimized / raw, 4) if raw else 1.0
        self.total_token_savings = net_saved_tokens(raw, optimized, self.compression_overhead_tokens)
        self.efficiency_delta = round(saved_share(self.total_token_savings, raw) or 0.0, 4)


# --- the figures derived from one line --------------------------------------------------------
# One definition, used by ``set_input_tokens`` above, ``nocp logs tail`` / ``stats``, drift
# detection and ``/metrics``.

ERROR_OUTCOMES: frozenset[str] = frozenset({"upstream_error", "proxy_error"})
"""Outcomes that count as errors (error rates, drift). ``client_error`` and ``cancelled`` are
the client's doing."""


class _Usage(Protocol):
    @property
    def prompt_tokens(self) -> int | None: ...
    @property
    def completion_tokens(self) -> int | None: ...


def net_saved_tokens(raw: int, sent: int, overhead: int) -> int:
    """Input tokens saved net of overhead: ``raw - sent - overhead``."""
    return raw - sent - overhead


def saved_share(net: int, raw: int) -> float | None:
    """Net tokens saved as a share of the raw prompt; None without a raw prompt."""
    return net / raw if raw else None


def retrieval_overhead_tokens(hops: Sequence[_Usage], rounds: int) -> int:
    """What retrieval rounds cost beyond the request itself: the prompt of every upstream call
    after the first and the completions of the ``rounds`` calls nocp answered (the client never
    saw them). 0 with a single call."""
    if len(hops) < 2:
        return 0
    return sum(h.prompt_tokens or 0 for h in hops[1:]) + sum(h.completion_tokens or 0 for h in hops[:rounds])


def billed_tokens(prompt: int | None, completion: int | None) -> int | None:
    """Tokens the upstream billed: prompt + completion, summed over all calls of the request
    (retrieval rounds included); None when it reported neither."""
    if prompt is None and completion is None:
        return None
    return (prompt or 0) + (completion or 0)


@dataclass(frozen=True, slots=True)
class Figures:
    """The figures derived from one TransactionLog line.

    Token figures are per record; totals over many records add up only those with
    ``counts_for_savings`` (a request that did not complete saved and spent nothing to
    compare)."""

    error: bool  # outcome is upstream_error or proxy_error
    counts_for_savings: bool  # outcome is ok
    raw_input_tokens: int  # the prompt as the client sent it
    sent_input_tokens: int  # the prompt nocp sent (first upstream call)
    gross_saved_tokens: int  # raw - sent
    overhead_tokens: int  # compression_overhead_tokens: summarizer calls + retrieval rounds
    retrieval_overhead_tokens: int  # the part of the overhead the retrieval rounds cost
    net_saved_tokens: int  # gross - overhead (negative when the overhead cost more)
    saved_share: float | None  # net / raw
    billed_tokens: int | None  # prompt + completion over every upstream call
    retrieval_rounds: int


def figures(rec: TransactionLog) -> Figures:
    """The derived figures of ``rec`` (see :class:`Figures`)."""
    raw, sent, overhead = rec.raw_input_tokens, rec.optimized_input_tokens, rec.compression_overhead_tokens
    net = net_saved_tokens(raw, sent, overhead)
    return Figures(
        error=rec.outcome in ERROR_OUTCOMES,
        counts_for_savings=rec.outcome == "ok",
        raw_input_tokens=raw,
        sent_input_tokens=sent,
        gross_saved_tokens=raw - sent,
        overhead_tokens=overhead,
        retrieval_overhead_tokens=retrieval_overhead_tokens(rec.retrieval_hops, rec.retrieval_rounds),
        net_saved_tokens=net,
        saved_share=saved_share(net, raw),
        billed_tokens=billed_tokens(rec.prompt_tokens, rec.completion_tokens),
        retrieval_rounds=rec.retrieval_rounds,
    )


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


Finalizer = Callable[[], None]
Observer = Callable[[TransactionLog], None]
_Item = tuple[TransactionLog, Finalizer | None, bool]


def _scrub(record: TransactionLog) -> None:
    """The last guard before disk: free text that may quote a key (upstream and SDK error
    messages, fail-open reasons, the user's own words) is redacted."""
    if record.error_message:
        record.error_message = redact(record.error_message)
    if record.user_query:
        record.user_query = redact(record.user_query)
    for failure in record.fail_open:
        failure.reason = redact(failure.reason)


class TransactionLogWriter:
    """Bounded queue + one background task + size-based rotation. Never blocks a request."""

    def __init__(self, path: str | Path, *, max_bytes: int, backups: int, queue_size: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_size)
        self._encoder = msgspec.json.Encoder()
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._size = 0
        self.dropped = 0
        self.written = 0
        self.observers: list[Observer] = []

    @property
    def running(self) -> bool:
        """True while the background task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Open the file and start the background task."""
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._run(), name="nocp-translog-writer")

    def submit(
        self, record: TransactionLog, finalize: Finalizer | None = None, *, offload: bool = False
    ) -> None:
        """Queue a record. ``offload`` says its finalizer is expensive (token counting) and
        must run on a worker thread; otherwise the line is written on the event loop, which
        for one append-only ``write`` is cheaper than the thread hop. If the queue is full the
        record is dropped and counted."""
        try:
            self._queue.put_nowait((record, finalize, offload))
        except asyncio.QueueFull:
            self.dropped += 1
            _log.warning("translog_queue_full", dropped=self.dropped)

    async def close(self) -> None:
        """Write everything queued, then stop and close the file."""
        if self._task is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            batch: list[_Item] = []
            stop = item is None
            if item is not None:
                batch.append(item)
            while not stop and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                try:
                    if any(offload for _, _, offload in batch):
                        await asyncio.to_thread(self._write_batch, batch)
                    else:
                        self._write_batch(batch)
                except Exception:  # a full disk must not kill the writer
                    _log.exception("translog_write_failed", lines=len(batch))
                self._notify(batch)
            if stop:
                return

    def _notify(self, batch: list[_Item]) -> None:
        """Hand each finished record to the observers (metrics, drift), on the event loop."""
        for observer in self.observers:
            for record, _, _ in batch:
                try:
                    observer(record)
                except Exception:  # an observer must not stop the log
                    _log.exception("translog_observer_failed", observer=repr(observer))

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
        if self._size and _last_byte(self.path) != b"\n":  # a line cut off by a crash: end it,
            self._size += os.write(self._fd, b"\n")  # so readers skip it and keep the next one

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def _write_batch(self, batch: list[_Item]) -> None:
        for record, finalize, _ in batch:
            if finalize is not None:
                try:
                    finalize()
                except Exception as exc:  # counting must never lose the line
                    record.fail_open.append(FailOpen(stage="translog.finalize", reason=repr(exc)))
            _scrub(record)
            try:
                line = self._encoder.encode(record) + b"\n"
            except (msgspec.EncodeError, UnicodeEncodeError):  # lone surrogates: escape them
                line = json.dumps(msgspec.to_builtins(record), separators=(",", ":")).encode() + b"\n"
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            assert self._fd is not None
            os.write(self._fd, line)
            self._size += len(line)
            self.written += 1
