"""The measured saving: the holdout experiment's cohorts compared per session, with bootstrap
confidence intervals (``nocp logs stats --by cohort``, the dashboard).

The unit is the session (the cohort is drawn per session, see :mod:`proxy.treatment`), so
every figure is a mean per session, and its interval comes from resampling sessions with
replacement (a percentile bootstrap, a fixed seed: the same log always gives the same
numbers). The saving is the control cohort's mean against the treated one's, its interval
from resampling both cohorts independently. The per-request estimate of the TransactionLog
(``cost_savings_usd``: the request priced as sent against as received) is reported beside it,
labelled as an estimate.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.table import Table

from proxy.stats import percentile
from proxy.translog import TransactionLog, figures

__all__ = ["METRICS", "SessionFigures", "compare", "print_comparison", "session_figures"]

METRICS: Final = (
    "billed_cost_usd",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "turns",
    "retrieval_rounds",
)
"""The per-session figures compared: the cost the upstream's usage comes to (priced, every
call of every request), prompt / cached / completion tokens as the upstream reported them,
turns (the client's requests), retrieval rounds nocp answered."""
PER_REQUEST: Final = "billed_cost_usd_per_request"
SAVINGS: Final = ("billed_cost_usd", "prompt_tokens", PER_REQUEST)
"""What the measured saving is given for: billed cost and prompt tokens per session (the
verdict is on billed cost per session), and billed cost per request (the cohort's cost over its
requests, resampled by session): less noisy when sessions differ much in length, but blind to
a change in the number of turns."""
RESAMPLES: Final = 1000
MIN_SESSIONS: Final = 20
LEVEL: Final = 0.95


@dataclass(slots=True)
class SessionFigures:
    """One session's totals over its log lines."""

    session: str
    cohort: str
    requests: int = 0
    errors: int = 0
    priced: bool = True  # every successful request had a cost
    estimated_saving_usd: float = 0.0  # the per-request estimates, summed
    baseline_usd: float = 0.0  # what they are estimated against (the requests as received)
    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRICS, 0.0))

    def add(self, rec: TransactionLog) -> None:
        """Account for one line of the session."""
        f = figures(rec)
        self.requests += 1
        self.errors += f.error
        v = self.values
        v["turns"] += 1
        v["retrieval_rounds"] += f.retrieval_rounds
        v["prompt_tokens"] += rec.prompt_tokens or 0
        v["cached_tokens"] += rec.cached_tokens or 0
        v["completion_tokens"] += rec.completion_tokens or 0
        if rec.estimated_cost_usd is not None:
            v["billed_cost_usd"] += rec.estimated_cost_usd
        elif f.counts_for_savings:
            self.priced = False
        self.estimated_saving_usd += f.cost_savings_usd or 0.0
        self.baseline_usd += rec.baseline_cost_usd or 0.0


def session_figures(
    records: Iterable[TransactionLog], experiment: str | None = None
) -> tuple[str | None, list[str], list[SessionFigures]]:
    """(the experiment compared, every experiment seen, its sessions): the lines with a cohort,
    of ``experiment`` (default: the one of the last such line), grouped by session (a line
    without a session id is a session of its own)."""
    sessions: dict[tuple[str, str], SessionFigures] = {}
    seen: dict[str, None] = {}
    last: str | None = None
    lines: list[TransactionLog] = []
    for rec in records:
        if rec.cohort is None or rec.experiment is None:
            continue
        seen[rec.experiment] = None
        last = rec.experiment
        lines.append(rec)
    chosen = experiment if experiment is not None else last
    for rec in lines:
        if rec.experiment != chosen or rec.cohort is None:
            continue
        sid = rec.session_id or f"request-{rec.transaction_id}"
        key = (rec.cohort, sid)
        found = sessions.get(key)
        if found is None:
            found = sessions[key] = SessionFigures(sid, rec.cohort)
        found.add(rec)
    return chosen, list(seen), list(sessions.values())


def _interval(draws: list[float], level: float) -> list[float | None]:
    tail = (1 - level) / 2 * 100
    return [percentile(draws, tail), percentile(draws, 100 - tail)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _resampler(n: int, rng: random.Random) -> Callable[[], list[int]]:
    population = range(n)
    return lambda: rng.choices(population, k=n)


def compare(
    records: Iterable[TransactionLog],
    *,
    experiment: str | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    min_sessions: int = MIN_SESSIONS,
) -> dict[str, Any]:
    """The cohorts of a holdout experiment compared per session: plain JSON-able data.

    ``records``: TransactionLog lines (those without a cohort are ignored); ``experiment``:
    which one (default: the experiment of the last line that has one). Shape::

        {
          "experiment": "holdout" | None, "experiments": [names seen],
          "level": 0.95, "resamples": 1000, "seed": 0, "min_sessions": 20,
          "cohorts": {
            "control" | "treated": {
              "sessions": int, "requests": int, "errors": int,
              "priced": bool,                       # every ok request had a cost
              "per_session": {METRIC: {"mean": float, "ci": [low, high]}},
              "error_rate": {"value": float, "ci": [low, high]},   # errors / requests
              "estimated_saving_usd_per_session": float,   # per-request estimate, summed
            }
          },
          "saving": {                              # control vs treated, per session
            "billed_cost_usd" | "prompt_tokens" | "billed_cost_usd_per_request": {
              "control": float, "treated": float,    # means per session (per request)
              "difference": float, "difference_ci": [low, high],   # control - treated
              "share": float | None, "share_ci": [low, high],     # 1 - treated / control
            }
          },
          "estimated_saving_share": float | None,  # treated: per-request estimate / its baseline
          "conclusive": bool, "reason": str | None,
        }

    METRIC is each of :data:`METRICS`. Intervals are percentile bootstrap intervals at
    ``level`` over ``resamples`` resamples of the sessions (seeded with ``seed``); a value
    that cannot be computed (an empty cohort) is None. ``conclusive`` is False, with the
    reason, when a cohort has fewer than ``min_sessions`` sessions, when costs are missing
    (pricing off), or when the interval of the billed-cost saving includes 0.
    """
    chosen, seen, sessions = session_figures(records, experiment)
    rng = random.Random(seed)
    by_cohort = {c: [s for s in sessions if s.cohort == c] for c in ("control", "treated")}
    out: dict[str, Any] = {
        "experiment": chosen,
        "experiments": seen,
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "min_sessions": min_sessions,
        "cohorts": {},
        "saving": {},
    }
    points: dict[str, dict[str, float | None]] = {}  # cohort -> figure -> its value
    draws: dict[str, dict[str, list[float]]] = {}  # cohort -> figure -> its resampled values
    for cohort, group in by_cohort.items():
        n = len(group)
        columns = {m: [s.values[m] for s in group] for m in METRICS}
        requests = [float(s.requests) for s in group]
        errors = [float(s.errors) for s in group]
        cost = columns["billed_cost_usd"]
        own: dict[str, list[float]] = {m: [] for m in (*METRICS, PER_REQUEST, "error_rate")}
        if n:
            draw = _resampler(n, rng)
            for _ in range(resamples):
                idx = draw()
                for m in METRICS:
                    col = columns[m]
                    own[m].append(sum(col[i] for i in idx) / n)
                asked = sum(requests[i] for i in idx)  # at least one per session
                own[PER_REQUEST].append(sum(cost[i] for i in idx) / asked)
                own["error_rate"].append(sum(errors[i] for i in idx) / asked)
        draws[cohort] = own
        total_requests = int(sum(requests))
        points[cohort] = {m: _mean(columns[m]) if n else None for m in METRICS}
        points[cohort][PER_REQUEST] = sum(cost) / total_requests if total_requests else None
        out["cohorts"][cohort] = {
            "sessions": n,
            "requests": total_requests,
            "errors": int(sum(errors)),
            "priced": all(s.priced for s in group),
            "per_session": {
                m: {
                    "mean": _mean(columns[m]) if n else None,
                    "ci": _interval(own[m], level) if n else [None, None],
                }
                for m in METRICS
            },
            "error_rate": {
                "value": sum(errors) / total_requests if total_requests else None,
                "ci": _interval(own["error_rate"], level) if n else [None, None],
            },
            "estimated_saving_usd_per_session": _mean([s.estimated_saving_usd for s in group]) if n else None,
        }
    treated = by_cohort["treated"]
    for m in SAVINGS:
        c_mean, t_mean = points["control"][m], points["treated"][m]
        entry: dict[str, Any] = {
            "control": c_mean,
            "treated": t_mean,
            "difference": None,
            "difference_ci": [None, None],
            "share": None,
            "share_ci": [None, None],
        }
        if c_mean is not None and t_mean is not None:
            c_draws, t_draws = draws["control"][m], draws["treated"][m]
            entry["difference"] = c_mean - t_mean
            entry["difference_ci"] = _interval([c - t for c, t in zip(c_draws, t_draws, strict=True)], level)
            if c_mean:
                entry["share"] = 1 - t_mean / c_mean
                shares = [1 - t / c for c, t in zip(c_draws, t_draws, strict=True) if c]
                entry["share_ci"] = _interval(shares, level)
        out["saving"][m] = entry
    baseline = sum(s.baseline_usd for s in treated)
    estimated = sum(s.estimated_saving_usd for s in treated)
    out["estimated_saving_share"] = estimated / baseline if baseline else None
    out["conclusive"], out["reason"] = _verdict(out, min_sessions)
    return out


def _verdict(out: dict[str, Any], min_sessions: int) -> tuple[bool, str | None]:
    cohorts = out["cohorts"]
    small = [f"{c} has {v['sessions']}" for c, v in cohorts.items() if v["sessions"] < min_sessions]
    if out["experiment"] is None:
        return False, "no line has a cohort: run with experiment.holdout > 0"
    if small:
        return False, f"too few sessions to conclude ({', '.join(small)}; need {min_sessions} each)"
    if not all(v["priced"] for v in cohorts.values()):
        return False, "some requests have no cost (pricing off or the model has no price)"
    low, high = out["saving"]["billed_cost_usd"]["difference_ci"]
    if low is None or high is None or low <= 0 <= high:
        return False, "the interval of the billed-cost saving includes 0: more sessions needed to tell"
    return True, None


_LABELS: Final = {
    "billed_cost_usd": "billed cost $",
    "prompt_tokens": "prompt tokens",
    "cached_tokens": "cached tokens",
    "completion_tokens": "completion tokens",
    "turns": "turns",
    "retrieval_rounds": "retrieval rounds",
}
_SAVING_LABELS: Final = {
    "billed_cost_usd": "billed cost per session",
    "prompt_tokens": "prompt tokens per session",
    PER_REQUEST: "billed cost per request",
}


def _num(x: float | None, metric: str) -> str:
    if x is None:
        return "-"
    return f"{x:,.5f}" if metric.startswith("billed_cost_usd") else f"{x:,.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _range(ci: Sequence[float | None], fmt: Callable[[float | None], str]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def print_comparison(console: Console, data: dict[str, Any]) -> None:
    """Print :func:`compare`'s result: one row per figure (mean per session and its interval
    for each cohort), then the measured saving, the per-request estimate and the verdict."""
    if data["experiment"] is None:
        console.print(f"no cohort comparison: {data['reason']}")
        return
    cohorts = data["cohorts"]
    level = f"{data['level']:.0%}"
    table = Table(
        title=f"experiment {data['experiment']!r}: mean per session [{level} interval]",
        box=box.SIMPLE_HEAD if console.is_terminal else None,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("")
    for cohort in ("control", "treated"):
        table.add_column(f"{cohort} ({cohorts[cohort]['sessions']} sessions)", justify="right")
    for m in METRICS:
        cells = []
        for cohort in ("control", "treated"):
            f = cohorts[cohort]["per_session"][m]
            cells.append(f"{_num(f['mean'], m)} {_range(f['ci'], functools.partial(_num, metric=m))}")
        table.add_row(_LABELS[m], *cells)
    table.add_row(
        "error rate",
        *(
            f"{_pct(cohorts[c]['error_rate']['value'])} {_range(cohorts[c]['error_rate']['ci'], _pct)}"
            for c in ("control", "treated")
        ),
    )
    console.print(table)
    for m in SAVINGS:
        s = data["saving"][m]
        console.print(
            f"measured saving, {_SAVING_LABELS[m]}: {_pct(s['share'])} "
            f"{_range(s['share_ci'], _pct)} (control - treated: {_num(s['difference'], m)} "
            f"{_range(s['difference_ci'], functools.partial(_num, metric=m))})"
        )
    console.print(
        f"per-request estimate (an estimate, not measured): {_pct(data['estimated_saving_share'])} "
        "of the treated requests' estimated baseline cost"
    )
    console.print("conclusive" if data["conclusive"] else f"not conclusive: {data['reason']}")
