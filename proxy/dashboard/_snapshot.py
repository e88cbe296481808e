"""The stats JSON behind ``GET /v1/nocp/stats``, the dashboard and ``nocp top``.

:func:`snapshot` turns a list of TransactionLog records into one JSON-ready dict. Every figure
comes from :class:`proxy.translog_cli.GroupStats` (which ``nocp logs stats`` prints) or from
:func:`proxy.translog.figures`: ``total`` is exactly ``nocp logs stats --json``'s ``total`` for
the same records, each time bucket is a ``GroupStats`` summary of its records, and the cohort
groups are ``GroupStats`` summaries too.

Two panels show only when there is something to show:

- ``cohorts``: :func:`cohorts`, with a holdout experiment (records carrying a ``cohort``): the
  cohorts' ``groups`` as a table and ``measured`` (``saving_share``, ``ci_low``, ``ci_high``,
  ``conclusive``, ``note``: :func:`proxy.cohorts.compare`'s billed-cost saving) as a figure.
- ``policy``: :func:`policy`, the learned compression policy: ``{"arms": [rows]}``, one row per
  tenant, (tool, content type) and arm (the page shows every key as a column); the server fills
  it from the policy's state in the session store; None, and no panel, when the policy is off.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.cohorts import compare
from proxy.translog import TransactionLog, figures, saved_share
from proxy.translog_cli import GroupStats

__all__ = ["cohorts", "policy", "request_rate", "snapshot"]

BUCKETS_MAX = 60  # time buckets in the series, at most
BUCKET_SIZES_S = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
TOP_TOOLS = 10
RECENT = 20
RATE_WINDOW_S = 60.0


def _when(rec: TransactionLog) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(rec.timestamp)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- savings and cost over time ---------------------------------------------------------------


def _bucket_size(first: dt.datetime, last: dt.datetime) -> int:
    span = (last - first).total_seconds()
    for size in BUCKET_SIZES_S:
        if span / size < BUCKETS_MAX:
            return size
    return BUCKET_SIZES_S[-1]


def series(records: Sequence[TransactionLog]) -> dict[str, Any]:
    """``GroupStats`` summaries per time bucket (empty buckets included), oldest first; the
    bucket size is the smallest of :data:`BUCKET_SIZES_S` that gives fewer than
    :data:`BUCKETS_MAX` buckets."""
    timed = [(when, rec) for rec in records if (when := _when(rec)) is not None]
    if not timed:
        return {"bucket_s": BUCKET_SIZES_S[0], "buckets": []}
    first, last = min(w for w, _ in timed), max(w for w, _ in timed)
    size = _bucket_size(first, last)
    start = int(first.timestamp()) // size * size
    count = (int(last.timestamp()) - start) // size + 1
    groups = [GroupStats(key=_iso(dt.datetime.fromtimestamp(start + i * size, dt.UTC))) for i in range(count)]
    for when, rec in timed:
        groups[(int(when.timestamp()) - start) // size].add(rec)
    return {"bucket_s": size, "buckets": [g.summary() for g in groups]}


# --- tools ------------------------------------------------------------------------------------


@dataclass
class _Tool:
    tool: str
    outputs: int = 0  # tool outputs seen by compression, counted once per request they were in
    tokens: int = 0  # their tokens before compression
    saved_tokens: int = 0  # what every stage took off them
    retrievals: int = 0  # retrieval calls for content cut from this tool's outputs

    def row(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "outputs": self.outputs,
            "tokens": self.tokens,
            "saved_tokens": self.saved_tokens,
            "saved_share": saved_share(self.saved_tokens, self.tokens) or 0.0,
            "retrievals": self.retrievals,
        }


def tools(records: Iterable[TransactionLog], top: int = TOP_TOOLS) -> dict[str, list[dict[str, Any]]]:
    """Tool outputs by tool name, from the segments the stages logged (successful requests
    only, as ``GroupStats`` counts tokens): the top ``top`` by tokens and by tokens saved. A
    segment that two stages worked on counts its tokens once (the first stage's before) and
    the savings of both."""
    by_name: dict[str, _Tool] = {}
    for rec in records:
        if not figures(rec).counts_for_savings:
            continue
        seen: set[tuple[str, int]] = set()
        for seg in rec.segments:
            if seg.tool is None:
                continue
            entry = by_name.get(seg.tool) or by_name.setdefault(seg.tool, _Tool(seg.tool))
            if (seg.tool, seg.index) not in seen:
                seen.add((seg.tool, seg.index))
                entry.outputs += 1
                entry.tokens += seg.tokens_before
            entry.saved_tokens += seg.tokens_before - seg.tokens_after
        for r in rec.retrievals:
            if r.tool is not None:
                (by_name.get(r.tool) or by_name.setdefault(r.tool, _Tool(r.tool))).retrievals += 1
    rows = [t.row() for t in by_name.values()]
    return {
        "by_tokens": sorted(rows, key=lambda r: (-r["tokens"], r["tool"]))[:top],
        "by_saving": sorted(rows, key=lambda r: (-r["saved_tokens"], r["tool"]))[:top],
    }


# --- the slots for the holdout experiment and the learned policy --------------------------------


def cohorts(records: Sequence[TransactionLog]) -> dict[str, Any] | None:
    """Per-cohort ``GroupStats`` summaries (with their session counts) and the measured saving
    of the holdout experiment (:func:`proxy.cohorts.compare`: billed cost per session, control
    against treated, with its bootstrap interval); None when no record carries a ``cohort``."""
    groups: dict[str, GroupStats] = {}
    sessions: dict[str, set[str | None]] = {}
    for rec in records:
        if rec.cohort is None:
            continue
        groups.setdefault(rec.cohort, GroupStats(key=rec.cohort)).add(rec)
        sessions.setdefault(rec.cohort, set()).add(rec.session_id)
    if not groups:
        return None
    rows = [{**g.summary(), "sessions": len(sessions[k])} for k, g in sorted(groups.items())]
    comparison = compare(records)
    cost = comparison["saving"].get("billed_cost_usd") or {}
    low, high = cost.get("share_ci") or (None, None)
    measured = {
        "saving_share": cost.get("share"),
        "ci_low": low,
        "ci_high": high,
        "conclusive": comparison["conclusive"],
        "note": comparison["reason"],
    }
    return {"groups": rows, "measured": measured, "comparison": comparison}


def policy(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The learned compression policy's arms as table rows, one per tenant, (tool, content
    type) and arm, from :func:`proxy.policy.snapshot`; None (no panel) when the policy is off."""
    if state is None:
        return None
    rows = [
        {
            "tenant": t["tenant"],
            "tool": k["tool"],
            "content type": k["content_type"],
            "arm": a["arm"],
            "best": "yes" if a["arm"] == k["best_arm"] else "",
            "sessions": a["pulls"],
            "observations": a["observations"],
            "mean reward (tokens)": a["mean_reward_tokens"],
        }
        for t in state.get("tenants", ())
        for k in t["keys"]
        for a in k["arms"]
    ]
    return {"arms": rows}


# --- rate and recent requests -------------------------------------------------------------------


def request_rate(
    records: Sequence[TransactionLog], now: dt.datetime, window_s: float = RATE_WINDOW_S
) -> float:
    """Requests per second over the ``window_s`` seconds before ``now`` (by log timestamp)."""
    since = now - dt.timedelta(seconds=window_s)
    count = 0
    for rec in reversed(records):  # the log is in time order: stop at the first older one
        when = _when(rec)
        if when is None:
            continue
        if when < since:
            break
        if when <= now:
            count += 1
    return count / window_s


def recent(records: Sequence[TransactionLog], n: int = RECENT) -> list[dict[str, Any]]:
    """The last ``n`` requests, newest first, with their derived figures."""
    rows = []
    for rec in reversed(records[-n:] if n else []):
        f = figures(rec)
        rows.append(
            {
                "timestamp": rec.timestamp,
                "transaction_id": rec.transaction_id,
                "model": rec.model,
                "session_id": rec.session_id,
                "protocol": rec.protocol,
                "stream": rec.stream,
                "outcome": rec.outcome,
                "status": rec.status,
                "raw_input_tokens": f.raw_input_tokens,
                "sent_input_tokens": f.sent_input_tokens,
                "net_saved_tokens": f.net_saved_tokens if f.counts_for_savings else None,
                "saved_share": f.saved_share if f.counts_for_savings else None,
                "billed_tokens": f.billed_tokens,
                "retrieval_rounds": f.retrieval_rounds,
                "latency_ms": rec.total_latency_ms,
                "cohort": getattr(rec, "cohort", None),
            }
        )
    return rows


# --- everything together ------------------------------------------------------------------------


def snapshot(
    records: Sequence[TransactionLog],
    *,
    now: dt.datetime,
    alerts: Sequence[Any] = (),
    limit: int | None = None,
    since: dt.datetime | None = None,
    rate_window_s: float = RATE_WINDOW_S,
) -> dict[str, Any]:
    """The stats JSON for ``records`` (in log order): see the module docstring. ``alerts`` are
    the open drift alerts (JSON-ready); ``limit`` and ``since`` say how the records were chosen."""
    total = GroupStats(key="total")
    sessions: set[str] = set()
    for rec in records:
        total.add(rec)
        if rec.session_id is not None:
            sessions.add(rec.session_id)
    return {
        "generated_at": _iso(now),
        "window": {
            "records": len(records),
            "limit": limit,
            "truncated": limit is not None and len(records) >= limit,
            "since": _iso(since) if since is not None else None,
            "first": records[0].timestamp if records else None,
            "last": records[-1].timestamp if records else None,
        },
        "total": total.summary(),
        "sessions": len(sessions),
        "rate": {"window_s": rate_window_s, "requests_per_s": request_rate(records, now, rate_window_s)},
        "series": series(records),
        "tools": tools(records),
        "cohorts": cohorts(records),
        "policy": None,  # filled in by the server from the learned policy's state (see policy)
        "alerts": list(alerts),
        "recent": recent(records),
    }
