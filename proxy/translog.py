"""The TransactionLog record (schema_version 1) and its asynchronous JSONL writer.

One record per proxied request on the rewriting endpoints. The request path only puts a
record on a bounded queue; one background task drains it and appends each line to an
unbuffered file (:class:`AppendFile`): a line is written whole or not at all (a short write
is continued; a failed one is cut back off the file, and if even that fails the next line
starts on a fresh line), and every record that does not reach the file is counted. While
writes fail the writer reports itself degraded (``/readyz``) and says so once in the process
log. Rotation is size-based (``transactions.jsonl`` -> ``.1`` -> ``.2`` ...). ``close()``
drains and flushes everything still queued; it runs on shutdown (SIGTERM/SIGINT).

Before a record reaches disk, :func:`_scrub` makes what the client sent safe to keep: names
(model, tools, endpoint) capped in length and printable, free text redacted (:func:`redact`),
session ids the client chose hashed (:func:`log_session_id`).

Token counts that would slow the request path are filled in by the writer: a queued item
may carry a ``finalize`` callable that runs on the writer's thread before encoding. After a
batch is written, each record is handed to the ``observers`` (metrics, drift detection) on
the event loop, complete with its token counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import msgspec
import structlog

__all__ = [
    "ERROR_OUTCOMES",
    "AppendFile",
    "FailOpen",
    "Figures",
    "HopUsage",
    "RetrievalRecord",
    "SegmentRecord",
    "TransactionLog",
    "TransactionLogWriter",
    "billed_tokens",
    "clip",
    "figures",
    "log_session_id",
    "net_saved_tokens",
    "redact",
    "retrieval_overhead_tokens",
    "same_share_savings_usd",
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


_SECRET = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)"  # PEM blocks
    r"|\bsk-(?:ant-)?[A-Za-z0-9_\-*]{6,}"  # OpenAI, Anthropic
    r"|\bAIza[0-9A-Za-z_\-]{10,}"  # Google
    r"|\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{12,}"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{16,}|\bgithub_pat_[A-Za-z0-9_]{16,}"  # GitHub
    r"|\bxox[abposre]-[A-Za-z0-9-]{8,}"  # Slack
    r"|\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|\b(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{6,}"
    r"|key=[A-Za-z0-9_\-]{10,}",
    re.DOTALL,
)
# ``password=...``, ``"api_key": "..."``, ``AWS_SECRET_ACCESS_KEY=...``: the value goes
_PAIR = re.compile(
    r"""(?i)((?:\b|_)(?:passw(?:or)?d|pwd|secret|token(?!s)|api[_-]?key|access[_-]?key|private[_-]?key)"""
    r"""[\w.-]*["']?\s*[=:]\s*)(?!\[redacted\])("[^"\n]*"|'[^'\n]*'|[^\s,;&"'})\]]+)"""
)


def redact(text: str) -> str:
    """``text`` with anything shaped like a credential replaced by ``[redacted]``: API keys
    (OpenAI, Anthropic, Google, AWS access key ids, GitHub, Slack), bearer and basic tokens,
    JWTs, PEM private-key blocks, and the values of ``password`` / ``secret`` / ``token`` /
    ``api_key``-like ``name=value`` or ``"name": value`` pairs."""
    return _PAIR.sub(r"\1[redacted]", _SECRET.sub("[redacted]", text))


NAME_CHARS = 256
"""Names the client chose (model, tool names, content ids) are cut to this many characters
in the log; longer ones end with ``~`` and a hash of the whole (see :func:`clip`)."""
TEXT_CHARS = 2000  # error messages and fail-open reasons
PATH_CHARS = 512  # the request path (Gemini's carries the model name)
MAX_TOOLS = 100  # ``tools_invoked`` entries kept


def clip(text: str, limit: int) -> str:
    """``text`` made safe to keep as a name: control characters (and lone surrogates) become
    ``?``, and a text longer than ``limit`` is cut, ending with ``~`` and 8 hex digits of a
    hash of the whole, so different long names stay different."""
    if len(text) <= limit and text.isprintable():
        return text
    head = "".join(c if c.isprintable() else "?" for c in text[:limit])
    if len(text) <= limit:
        return head
    mark = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return head[: max(0, limit - 9)] + "~" + mark


_LOGGED_SESSION = re.compile(r"[hs]-[0-9a-f]{16,24}")


def log_session_id(session_id: str | None) -> str | None:
    """The session id as the log keeps it: ids nocp derived (``h-`` + a hash of the
    conversation's start) as they are, ids the client sent (``X-Session-Id``, ``user``,
    metadata: possibly a key or an e-mail address) as ``s-`` + 16 hex digits of their
    BLAKE2b hash. The same id always gives the same value, so lines still group by session."""
    if session_id is None or _LOGGED_SESSION.fullmatch(session_id):
        return session_id
    return "s-" + hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


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
    # the baseline's prompt cache: what the provider would have cached (and, Anthropic, written)
    # for the raw prompt, estimated per session; and the earlier same-share baseline
    baseline_cached_tokens: int | None = None
    baseline_cache_write_tokens: int | None = None
    baseline_same_share_cost_usd: float | None = None
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
    # measurement and control (see proxy.treatment): the holdout experiment's name and this
    # session's cohort (``control``: sent unchanged; None without an experiment); the proxy's
    # mode (``shadow``: the original was sent and billed, and ``shadow_input_tokens`` is the
    # prompt the stages would have sent; None when they did not run); ``X-Nocp-Bypass``, and
    # the ``X-Nocp-Policy`` the client asked for (None: none, ``auto`` applies)
    experiment: str | None = None
    cohort: Literal["control", "treated"] | None = None
    mode: Literal["normal", "shadow"] = "normal"
    bypass: bool = False
    policy: str | None = None
    shadow_input_tokens: int | None = None
    # the learned compression policy (when on): the arm of each "tool/content type" it decided
    policy_arms: dict[str, str] | None = None

    def set_input_tokens(self, raw: int, optimized: int) -> None:
        """Record raw and sent input tokens and everything derived from them."""
        self.raw_input_tokens = raw
        self.optimized_input_tokens = optimized
        self.input_compression_ratio = round(optimized / raw, 4) if raw else 1.0
        self.total_token_savings = net_saved_tokens(raw, optimized, self.compression_overhead_tokens)
        self.efficiency_delta = round(saved_share(self.total_token_savings, raw) or 0.0, 4)

    def set_output_tokens(self, raw: int, optimized: int, fmt: str) -> None:
        """Record the answer's tokens as JSON (raw) and as the model wrote it (optimized), and
        the format it was asked in (see :mod:`proxy.output`)."""
        self.raw_output_tokens = raw
        self.optimized_output_tokens = optimized
        self.output_compression_ratio = round(optimized / raw, 4) if raw else None
        self.serialization_format = fmt


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
    baseline_cached_tokens: int | None  # what the raw prompt would have had cached (estimate)
    cost_savings_usd: float | None  # baseline (cache-aware) - estimated - overhead
    same_share_savings_usd: float | None  # the same with the earlier same-share baseline
    shadow_saved_tokens: int | None  # shadow mode: raw - what the stages would have sent


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
        baseline_cached_tokens=rec.baseline_cached_tokens,
        cost_savings_usd=rec.cost_savings_usd,
        same_share_savings_usd=same_share_savings_usd(rec),
        shadow_saved_tokens=None if rec.shadow_input_tokens is None else raw - rec.shadow_input_tokens,
    )


def same_share_savings_usd(rec: TransactionLog) -> float | None:
    """``cost_savings_usd`` had the baseline been the same-share one (the earlier estimate):
    ``cost_savings_usd - baseline_cost_usd + baseline_same_share_cost_usd``."""
    saved, base, same = rec.cost_savings_usd, rec.baseline_cost_usd, rec.baseline_same_share_cost_usd
    if saved is None or base is None:
        return None
    return round(saved - base + (same if same is not None else base), 10)


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_ROOM_BYTES = 64 * 1024  # free space that ends a full-disk episode for /readyz
_RETRY_S = 30.0  # after another write error, /readyz says degraded this long


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class AppendFile:
    """An append-only file of lines, each :meth:`append` written whole or not at all.

    Created with mode ``0600`` (and its folder ``0700`` when this creates it). A short write
    is continued; when a write fails part-way, what it wrote is cut back off the file
    (``ftruncate``), and if even that fails the next line starts with a newline, so a reader
    skips only the fragment. Lines that fail are counted in ``dropped``; while writes fail,
    :meth:`degraded` says why, and the process log gets one ``<name>_write_failed`` per
    episode, then one ``<name>_write_recovered`` (with the lines lost) when a write succeeds.
    """

    def __init__(self, path: Path, *, name: str) -> None:
        self.path = path
        self.name = name
        self.fd: int | None = None
        self.size = 0
        self.written = 0
        self.dropped = 0
        self.error: OSError | None = None  # the latest failure; None while writes succeed
        self._failed_at = 0.0
        self._lost = 0  # lines dropped in the current episode
        self._fresh_line = False  # the file may end in a fragment: start the next line anew

    def open(self) -> None:
        """Open (create) the file for appending."""
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        # a line cut off by a crash (or a failed cut): the next line starts on a fresh line,
        # so readers skip the fragment and keep the line after it
        self._fresh_line = bool(self.size) and _last_byte(self.path) != b"\n"

    def close(self) -> None:
        """Close the file (a later :meth:`append` opens it again)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def append(self, data: bytes, lines: int = 1) -> bool:
        """Append ``data`` (``lines`` whole lines); False when it failed (they are dropped)."""
        try:
            if self.fd is None:
                self.open()
            self._write(data)
        except OSError as exc:
            self.fail(exc, lines)
            return False
        self.written += lines
        if self.error is not None:
            _log.warning(f"{self.name}_write_recovered", path=str(self.path), lines_lost=self._lost)
            self.error, self._lost = None, 0
        return True

    def fail(self, exc: OSError, lines: int = 1) -> None:
        """Count ``lines`` dropped because of ``exc``; log it once per episode."""
        self.dropped += lines
        self._lost += lines
        self._failed_at = time.monotonic()
        if self.error is None:
            _log.error(f"{self.name}_write_failed", path=str(self.path), error=str(exc))
        self.error = exc

    def degraded(self) -> str | None:
        """Why lines are being lost, or None. After a full disk this holds until the file
        system has room again; after another error, for 30 s after the latest failure (then
        the next line tries again)."""
        exc = self.error
        if exc is None:
            return None
        if exc.errno in _FULL:
            if _free_bytes(self.path.parent) >= _ROOM_BYTES:
                return None
        elif time.monotonic() - self._failed_at > _RETRY_S:
            return None
        return f"{self.path}: {exc.strerror or exc} ({self._lost} lines lost)"

    def _write(self, data: bytes) -> None:
        if self.fd is None:
            raise OSError(errno.EBADF, "file not open")
        fd = self.fd
        if self._fresh_line:
            data = b"\n" + data
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                n = os.write(fd, view[done:])
                if n <= 0:
                    raise OSError(errno.EIO, "write made no progress")
                done += n
        except OSError:
            if done:
                try:  # take the fragment back off; with O_APPEND it is at the end
                    os.ftruncate(fd, os.fstat(fd).st_size - done)
                except OSError:
                    self._fresh_line = True
            raise
        self.size += done
        self._fresh_line = False


Finalizer = Callable[[], None]
Observer = Callable[[TransactionLog], None]
_Item = tuple[TransactionLog, Finalizer | None, bool]


def _scrub(record: TransactionLog) -> None:
    """The last guard before disk (and before the observers: metrics, drift): free text that
    may quote a key (upstream and SDK error messages, fail-open reasons, the user's own words)
    is redacted, names the client chose are capped (:func:`clip`), a session id the client
    chose is hashed (:func:`log_session_id`)."""
    if record.error_message:
        record.error_message = clip(redact(record.error_message), TEXT_CHARS)
    if record.user_query:
        record.user_query = redact(record.user_query)
    for failure in record.fail_open:
        failure.reason = clip(redact(failure.reason), TEXT_CHARS)
        failure.stage = clip(failure.stage, NAME_CHARS)
    record.session_id = log_session_id(record.session_id)
    record.endpoint = clip(record.endpoint, PATH_CHARS)
    if record.model is not None:
        record.model = clip(record.model, NAME_CHARS)
    record.tools_invoked = [clip(t, NAME_CHARS) for t in record.tools_invoked[:MAX_TOOLS]]
    for seg in record.segments:
        if seg.tool is not None:
            seg.tool = clip(seg.tool, NAME_CHARS)
    for r in record.retrievals:
        r.id = clip(r.id, NAME_CHARS)
        r.content_type = clip(r.content_type, NAME_CHARS)
        if r.tool is not None:
            r.tool = clip(r.tool, NAME_CHARS)


class TransactionLogWriter:
    """Bounded queue + one background task + size-based rotation. Never blocks a request.

    ``dropped`` counts every record that did not reach the file: ``queue_dropped`` (the queue
    was full) plus ``file.dropped`` (the write failed)."""

    def __init__(self, path: str | Path, *, max_bytes: int, backups: int, queue_size: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.file = AppendFile(self.path, name="translog")
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_size)
        self._encoder = msgspec.json.Encoder()
        self._task: asyncio.Task[None] | None = None
        self.queue_dropped = 0
        self.observers: list[Observer] = []

    @property
    def running(self) -> bool:
        """True while the background task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def written(self) -> int:
        """Lines written."""
        return self.file.written

    @property
    def dropped(self) -> int:
        """Records lost: queue full or write failed."""
        return self.queue_dropped + self.file.dropped

    def degraded(self) -> str | None:
        """Why records are being lost right now (writes fail), or None."""
        return self.file.degraded()

    async def start(self) -> None:
        """Open the file and start the background task."""
        await asyncio.to_thread(self.file.open)
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
            self.queue_dropped += 1
            _log.warning("translog_queue_full", dropped=self.queue_dropped)

    async def close(self) -> None:
        """Write everything queued, then stop and close the file."""
        if self._task is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.file.close()

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
                except Exception:  # _write_batch accounts for each line; this is a last guard
                    _log.exception("translog_batch_failed", lines=len(batch))
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

    def _rotate(self) -> None:
        self.file.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.file.open()

    def _line(self, record: TransactionLog, finalize: Finalizer | None) -> bytes:
        if finalize is not None:
            try:
                finalize()
            except Exception as exc:  # counting must never lose the line
                record.fail_open.append(FailOpen(stage="translog.finalize", reason=repr(exc)))
        _scrub(record)
        try:
            return self._encoder.encode(record) + b"\n"
        except (msgspec.EncodeError, UnicodeEncodeError):  # lone surrogates: escape them
            return json.dumps(msgspec.to_builtins(record), separators=(",", ":")).encode() + b"\n"

    def _write_batch(self, batch: list[_Item]) -> None:
        for record, finalize, _ in batch:
            try:
                line = self._line(record, finalize)
            except Exception:  # a record that cannot be encoded is lost, and counted
                _log.exception("translog_encode_failed")
                self.file.dropped += 1
                continue
            if self.file.size and self.file.size + len(line) > self.max_bytes:
                try:
                    self._rotate()
                except OSError as exc:
                    self.file.fail(exc)
                    continue
            self.file.append(line)
