"""The benchmark's outputs: one JSON file with every number, a Markdown report with tables and
PNG charts (matplotlib, when installed), the README's headline table, and a console summary."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from proxy.bench.criteria import CRITERIA, Criterion, Totals, evaluate, reduction, suite_verdict
from proxy.bench.protocols import PROTOCOLS
from proxy.bench.runner import LONG_TURNS, ScenarioResult, SuiteRun, percentile
from proxy.pricing import PRICES_AS_OF

__all__ = [
    "README_END",
    "README_START",
    "build_result",
    "console_summary",
    "estimate_table",
    "headline_table",
    "markdown_report",
    "policy_lines",
    "update_readme",
    "write_charts",
]

README_START = "<!-- bench:start (written by `nocp bench`; edits here are overwritten) -->"
README_END = "<!-- bench:end -->"
_CRITERIA_KEYS = tuple(CRITERIA)
# Issue 16: billed cost with nocp (auto_cache + compression) over direct without breakpoints, on
# an agent replay of LONG_TURNS turns or more.
LONG_TARGET = 0.35


# ------------------------------------------------------------------------------ numbers


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _side(t: Totals, latencies: Sequence[float]) -> dict[str, Any]:
    out = t.as_dict()
    out["latency_ms_p50"] = _ms(percentile(latencies, 50))
    out["latency_ms_p95"] = _ms(percentile(latencies, 95))
    out["latency_ms_mean"] = _ms(t.latency_s / t.requests) if t.requests else None
    return out


def _figures(
    base: Totals, nocp: Totals, base_lat: Sequence[float], nocp_lat: Sequence[float]
) -> dict[str, Any]:
    added = [n - b for n, b in zip(nocp_lat, base_lat, strict=False)]
    b_mean = base.latency_s / base.requests if base.requests else 0.0
    n_mean = nocp.latency_s / nocp.requests if nocp.requests else 0.0
    return {
        "input_reduction": _r(reduction(base.prompt_tokens, nocp.prompt_tokens)),
        "uncached_input_reduction": _r(
            reduction(base.prompt_tokens - base.cached_tokens, nocp.prompt_tokens - nocp.cached_tokens)
        ),
        "output_reduction": _r(reduction(base.completion_tokens, nocp.completion_tokens)),
        "cost_reduction": _r(reduction(base.total_cost_usd, nocp.total_cost_usd)),
        "cost_reduction_without_cache": _r(reduction(base.cost_uncached_usd, nocp.cost_uncached_usd)),
        "latency_ratio": _r(nocp.latency_s / base.latency_s) if base.latency_s > 0 else None,
        "added_latency_ms_p50": _ms(percentile(added, 50)),
        "added_latency_ms_mean": _ms(n_mean - b_mean) if base.requests and nocp.requests else None,
        # The provider time per request above which nocp stays under 2x: (T + n) < 2 (T + b).
        "break_even_provider_ms": _ms(max(0.0, n_mean - 2 * b_mean)) if base.requests else None,
    }


def _ratio(base: float, nocp: float) -> float | None:
    return _r(nocp / base) if base > 0 else None


def _long_conversations(r: ScenarioResult) -> list[dict[str, Any]]:
    """The conversations of ``LONG_TURNS`` requests or more, each with its billed cost."""
    return [
        {
            "id": c.id,
            "turns": c.turns,
            "baseline_cost_usd": _r(c.base.total_cost_usd, 8),
            "nocp_cost_usd": _r(c.nocp.total_cost_usd, 8),
            "cost_ratio": _ratio(c.base.total_cost_usd, c.nocp.total_cost_usd),
            "baseline_prompt_tokens": c.base.prompt_tokens,
            "nocp_prompt_tokens": c.nocp.prompt_tokens,
            "nocp_cached_tokens": c.nocp.cached_tokens,
            "nocp_cache_write_tokens": c.nocp.cache_write_tokens,
            "errors": c.base.errors + c.nocp.errors,
        }
        for c in r.conversations
        if c.turns >= LONG_TURNS
    ]


def _scenario_json(r: ScenarioResult) -> dict[str, Any]:
    sc = r.scenario
    fid = r.fidelity
    return {
        "name": r.name,
        "scenario": sc.name,
        "protocol": r.protocol,
        "model": r.model,
        "title": sc.title,
        "kind": sc.kind,
        "family": sc.family,
        "size": sc.size,
        "params": dict(sc.params),
        "structured_output": sc.structured_output,
        "notes": list(sc.notes),
        "conversations": len(sc.conversations),
        "requests": sc.requests,
        "seconds": round(r.seconds, 3),
        "baseline": _side(r.base, r.base_latencies),
        "nocp": _side(r.nocp, r.nocp_latencies),
        **_figures(r.base, r.nocp, r.base_latencies, r.nocp_latencies),
        "fidelity": {
            "recall": _r(fid.recall),
            "needed": fid.needed,
            "kept": fid.kept,
            "requests": fid.requests,
            "requests_with_full_recall": fid.requests_full,
            "missed_examples": list(dict.fromkeys(fid.missed_examples)),
            "retrieval_rounds_needed": fid.rounds,
            "retrieval_round_cost_usd": round(fid.round_cost_usd, 6),
        },
        "nocp_log": r.log,
        "prefix_stability": r.stability,
        "criteria": [c.as_dict() for c in r.criteria],
        "turns_per_conversation": sorted((c.turns for c in r.conversations), reverse=True),
        "long_conversations": _long_conversations(r),
    }


def _aggregate(
    name: str, title: str, results: Sequence[ScenarioResult], protocol: str = "chat"
) -> dict[str, Any]:
    base, nocp, s_base, s_nocp = Totals(), Totals(), Totals(), Totals()
    base_lat: list[float] = []
    nocp_lat: list[float] = []
    needed = kept = 0
    for r in results:
        base.add(r.base)
        nocp.add(r.nocp)
        if r.scenario.structured_output and PROTOCOLS[r.protocol].family == "openai":
            s_base.add(r.base)
            s_nocp.add(r.nocp)
        base_lat += r.base_latencies
        nocp_lat += r.nocp_latencies
        needed += r.fidelity.needed
        kept += r.fidelity.kept
    criteria = evaluate(base, nocp, structured_output=False)
    if s_base.requests:  # output reduction over the scenarios with structured output only
        out = next(c for c in evaluate(s_base, s_nocp, structured_output=True) if c.key == "output_reduction")
        criteria = [out if c.key == "output_reduction" else c for c in criteria]
    return {
        "name": name,
        "title": title,
        "protocol": protocol,
        "scenarios": [r.name for r in results],
        "requests": base.requests,
        "baseline": _side(base, base_lat),
        "nocp": _side(nocp, nocp_lat),
        **_figures(base, nocp, base_lat, nocp_lat),
        "fidelity": {"recall": _r(kept / needed) if needed else None, "needed": needed, "kept": kept},
        "criteria": [c.as_dict() for c in criteria],
    }


def _log_estimate(proto: str, results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """nocp's own estimate of the saving (its TransactionLog, summed) beside the saving the bench
    measured (baseline billed - nocp billed, summarizer included): the cache-aware estimate
    (``cost_savings_usd``) and the earlier same-share one, each with its gap to the measurement."""
    own = [r for r in results if r.protocol == proto]
    measured = sum(r.base.total_cost_usd - r.nocp.total_cost_usd for r in own)
    logged = sum(float(r.log.get("cost_savings_usd") or 0) for r in own)
    same = sum(float(r.log.get("cost_savings_same_share_usd") or 0) for r in own)

    def gap(estimate: float) -> dict[str, float | None]:
        return {
            "gap_usd": _r(estimate - measured, 8),
            "gap_share": _r((estimate - measured) / abs(measured)) if measured else None,
        }

    return {
        "protocol": proto,
        "scenarios": len(own),
        "measured_savings_usd": _r(measured, 8),
        "log_savings_usd": _r(logged, 8),
        **gap(logged),
        "same_share_savings_usd": _r(same, 8),
        "same_share": gap(same),
    }


def estimate_table(result: Mapping[str, Any]) -> str:
    """Per protocol: the measured saving, nocp's logged estimate and its gap, the old estimate."""
    lines = [
        "| protocol | measured saving | logged estimate (cache-aware) | gap | same-share estimate (old) "
        "| gap |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in result.get("log_estimate") or ():
        old = e["same_share"]
        lines.append(
            f"| {e['protocol']} | {_usd(e['measured_savings_usd'])} | {_usd(e['log_savings_usd'])} "
            f"| {_usd(e['gap_usd'])} ({_pct(e['gap_share'])}) | {_usd(e['same_share_savings_usd'])} "
            f"| {_usd(old['gap_usd'])} ({_pct(old['gap_share'])}) |"
        )
    return "\n".join(lines)


def _protocol_summary(
    proto: str, results: Sequence[ScenarioResult], models: Mapping[str, Any]
) -> dict[str, Any]:
    """One protocol's run in a few numbers: requests, tokens, billed cost on both paths."""
    own = [r for r in results if r.protocol == proto]
    base, nocp = Totals(), Totals()
    for r in own:
        base.add(r.base)
        nocp.add(r.nocp)
    higher = [r.name for r in own for c in r.criteria if c.key == "cost_not_higher" and c.status == "FAIL"]
    reasons: dict[str, int] = {}
    for r in own:
        if r.name in higher:
            for why, n in r.stability["reasons"].items():
                reasons[why] = reasons.get(why, 0) + n
    return {
        "protocol": proto,
        "title": PROTOCOLS[proto].title,
        "path": PROTOCOLS[proto].path,
        "model": models[proto][0],
        "scenarios": len(own),
        "requests": base.requests,
        "baseline": base.as_dict(),
        "nocp": nocp.as_dict(),
        "input_reduction": _r(reduction(base.prompt_tokens, nocp.prompt_tokens)),
        "cost_ratio": _ratio(base.total_cost_usd, nocp.total_cost_usd),
        "cost_higher_in": higher,
        "cost_higher_prefix_breaks": reasons,
        "errors": base.errors + nocp.errors,
    }


def _long_summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Issue 16's target: on agent replays of ``LONG_TURNS`` turns or more through Messages
    (client without breakpoints), nocp's billed cost at most ``LONG_TARGET`` of direct; and how
    many SWE-agent traces are that long."""
    swe: dict[str, int] = {}
    for r in results:
        if r.scenario.family == "swe-agent":
            for c in r.scenario.conversations:
                swe[c.id] = len(c.turns())
    rows: list[dict[str, Any]] = []
    for r in results:
        if r.protocol == "messages":
            rows += [{"scenario": r.scenario.name, **c} for c in _long_conversations(r)]
    base = sum(float(x["baseline_cost_usd"] or 0) for x in rows)
    nocp = sum(float(x["nocp_cost_usd"] or 0) for x in rows)
    met = [
        x for x in rows if x["cost_ratio"] is not None and x["cost_ratio"] <= LONG_TARGET and not x["errors"]
    ]
    status = "N/A" if not rows else "PASS" if len(met) == len(rows) else "FAIL"
    longest = sorted(swe.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    # For context when no SWE-agent trace is long enough: the longest ones' Messages cost ratio.
    swe_ratio = {
        c.id: _ratio(c.base.total_cost_usd, c.nocp.total_cost_usd)
        for r in results
        if r.protocol == "messages" and r.scenario.family == "swe-agent"
        for c in r.conversations
    }
    return {
        "min_turns": LONG_TURNS,
        "target_cost_ratio": LONG_TARGET,
        "protocol": "messages",
        "swe_agent_traces": len(swe),
        "swe_agent_traces_long": sum(1 for t in swe.values() if t >= LONG_TURNS),
        "swe_agent_longest": [{"id": k, "turns": t, "cost_ratio": swe_ratio.get(k)} for k, t in longest],
        "conversations": rows,
        "met": len(met),
        "cost_ratio": _ratio(base, nocp),
        "status": status,
    }


def build_result(
    run: SuiteRun,
    *,
    quick: bool,
    seed: int,
    duration_s: float,
    overhead: Mapping[str, Any] | None,
    notes: Sequence[str],
    git: Mapping[str, Any],
    output: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything of one ``nocp bench`` run as a JSON-ready dict (``output``: the result of
    :func:`proxy.bench.output.measure`)."""
    results = run.results
    groups: list[tuple[str, str, list[ScenarioResult], str]] = []
    for proto in dict.fromkeys(r.protocol for r in results):
        own = [r for r in results if r.protocol == proto]
        suffix = PROTOCOLS[proto].suffix
        tail = f" {suffix}" if suffix else ""
        groups += [
            (
                f"seed{suffix}",
                f"all seed scenarios{tail}",
                [r for r in own if r.scenario.kind == "seed"],
                proto,
            ),
            (
                f"traces{suffix}",
                f"all real traces{tail}",
                [r for r in own if r.scenario.kind == "trace"],
                proto,
            ),
            (f"all{suffix}", f"everything{tail}", own, proto),
        ]
    verdict = suite_verdict((r.name, r.criteria) for r in results)
    models = run.protocols or {"chat": (run.model, run.price)}
    return {
        "benchmark": "nocp-bench",
        "schema": 1,
        "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "seed": seed,
        "duration_s": round(duration_s, 1),
        "model": run.model,
        "price_usd_per_1m_tokens": {
            "input": run.price.input,
            "cached_input": run.price.cached_input,
            "output": run.price.output,
            "as_of": PRICES_AS_OF,
        },
        "protocol_models": {
            proto: {
                "model": model,
                "path": PROTOCOLS[proto].path,
                "title": PROTOCOLS[proto].title,
                "input": price.input,
                "cached_input": price.cached_input,
                "output": price.output,
                "cache_write_5m": price.write_5m,
                "cache_write_1h": price.write_1h,
            }
            for proto, (model, price) in models.items()
        },
        "anthropic_auto_cache": {"enabled": run.auto_cache, "ttl": run.cache_ttl},
        "nocp_stages": run.stages,
        "history_threshold_tokens": run.history_threshold,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "git": dict(git),
        "criteria_definitions": {
            k: {"label": v[0], "threshold": v[1], "meaning": v[2]} for k, v in CRITERIA.items()
        },
        "scenarios": [_scenario_json(r) for r in results],
        "aggregates": [_aggregate(n, t, rs, proto) for n, t, rs, proto in groups if rs],
        "protocols": [_protocol_summary(proto, results, models) for proto in models],
        "log_estimate": [
            _log_estimate(proto, results) for proto in dict.fromkeys(r.protocol for r in results)
        ],
        "long_conversations": _long_summary(results),
        "suite_criteria": [verdict.as_dict()],
        "overhead": dict(overhead) if overhead is not None else None,
        "output_side": dict(output) if output is not None else None,
        "notes": list(notes),
    }


# ------------------------------------------------------------------------------ formatting


def _output_section(output: Mapping[str, Any] | None) -> list[str]:
    """The output side (``nocp bench output``): TOON answers, exact decodes, the retry cost."""
    lines = ["## Output side (structured answers in TOON)", ""]
    if not output:
        return [*lines, "Not run.", ""]
    lines += [
        "| run | scenarios | answers | exactly the recorded JSON | output tokens (baseline -> nocp) "
        "| reduction | retries | retry cost (tokens) | instruction (input tokens) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in output["runs"].values():
        label = "all TOON valid" if not run["broken_share"] else f"{run['broken_share']:.0%} broken TOON"
        for kind, t in run["by_kind"].items():
            red = f"{t['reduction']:.1%}" if t["reduction"] is not None else "-"
            lines.append(
                f"| {label} | {kind} | {t['answers']} | {t['exact']} | {t['baseline_output_tokens']:,} -> "
                f"{t['nocp_output_tokens']:,} | {red} | {t['retries']} | {t['retry_overhead_tokens']:,} "
                f"| +{t['instruction_input_tokens']:,} |"
            )
    lines += [
        "",
        f"From `nocp bench output` (`proxy/bench/output.py`): every JSON answer of the api and db seed "
        f"scenarios ({', '.join(output['sizes'])}; {', '.join(output['protocols'])}), asked directly "
        "(baseline) and through nocp with `output.toon_models`, stages off. nocp output tokens count "
        "every upstream call, failed attempts included; the retry cost is the failed attempts' prompt "
        "and completion (billed uncached here; a real provider would mostly read the prompt from its "
        "cache). The instruction is what nocp appends; the fake does not bill the `response_format` "
        "schema it replaces. " + str(output.get("note", "")) + ".",
        "",
    ]
    return lines


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    sign = "-" if x < 0 else ""
    return f"{sign}${abs(x):.4f}" if abs(x) < 10 else f"{sign}${abs(x):.2f}"


def _int(x: int | float | None) -> str:
    return "-" if x is None else f"{int(x):,}"


def _status(row: Mapping[str, Any], key: str) -> str:
    for c in row["criteria"]:
        if c["key"] == key:
            return str(c["status"])
    return "-"


def _rows(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*result["scenarios"], *result["aggregates"]]


def _chat_only(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in _rows(result) if r.get("protocol", "chat") == "chat"]


def headline_table(result: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The Markdown headline table: one row per scenario and per group (or ``rows``)."""
    head = [
        "scenario",
        "requests",
        "billed input tokens (baseline -> nocp)",
        "input saved",
        "cost, cached prices (baseline -> nocp)",
        "cost saved",
        "latency x",
        "fidelity",
        *(CRITERIA[k][0] for k in _CRITERIA_KEYS),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in _rows(result) if rows is None else rows:
        b, n = row["baseline"], row["nocp"]
        name = row["name"] if "kind" in row else f"**{row['title']}**"
        cells = [
            name,
            _int(row["requests"]),
            f"{_int(b['prompt_tokens'])} -> {_int(n['prompt_tokens'])}",
            _pct(row["input_reduction"]),
            f"{_usd(b['total_cost_usd'])} -> {_usd(n['total_cost_usd'])}",
            _pct(row["cost_reduction"]),
            "-" if row["latency_ratio"] is None else f"{row['latency_ratio']:.2f}",
            _pct(row["fidelity"]["recall"]),
            *(_status(row, k) for k in _CRITERIA_KEYS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def protocol_table(result: Mapping[str, Any], *, compact: bool = False) -> str:
    """One row per protocol: requests, billed tokens and cost on both paths, the cost ratio
    (``compact``: only the protocol, billed cost, the ratio and whether it was ever higher)."""
    if compact:
        rows = [
            "| protocol | billed cost (baseline -> nocp) | nocp / baseline | cost <= baseline |",
            "|---|---:|---:|---:|",
        ]
        for p in result.get("protocols") or ():
            b, n, higher = p["baseline"], p["nocp"], p["cost_higher_in"]
            cost = f"{_usd(b['total_cost_usd'])} -> {_usd(n['total_cost_usd'])}"
            rows.append(
                f"| {p['protocol']} (`{p['model']}`) | {cost} | {_ratio_text(p['cost_ratio'])} | "
                + ("PASS" if not higher else f"FAIL ({len(higher)} of {p['scenarios']})")
                + " |"
            )
        return "\n".join(rows)
    head = [
        "protocol",
        "model",
        "scenarios",
        "requests",
        "billed input tokens (baseline -> nocp)",
        "cached / cache-write tokens (baseline -> nocp)",
        "billed cost (baseline -> nocp)",
        "nocp / baseline",
        "cost <= baseline",
        "errors",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for p in result.get("protocols") or ():
        b, n = p["baseline"], p["nocp"]
        higher = p["cost_higher_in"]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{p['protocol']} (`{p['path']}`)",
                    f"`{p['model']}`",
                    str(p["scenarios"]),
                    _int(p["requests"]),
                    f"{_int(b['prompt_tokens'])} -> {_int(n['prompt_tokens'])}",
                    f"{_int(b['cached_tokens'])} / {_int(b['cache_write_tokens'])} -> "
                    f"{_int(n['cached_tokens'])} / {_int(n['cache_write_tokens'])}",
                    f"{_usd(b['total_cost_usd'])} -> {_usd(n['total_cost_usd'])}",
                    _ratio_text(p["cost_ratio"]),
                    "PASS" if not higher else f"FAIL ({len(higher)} of {p['scenarios']})",
                    _int(p["errors"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def long_lines(result: Mapping[str, Any]) -> list[str]:
    """Issue 16's target on long agent replays (Markdown lines; none when Messages was not run)."""
    long = result.get("long_conversations")
    if not long or not any(p["protocol"] == "messages" for p in result.get("protocols") or ()):
        return []
    n, target = long["min_turns"], long["target_cost_ratio"]
    swe = long["swe_agent_traces"]
    longest = ", ".join(
        f"{x['id'].split('/')[-1]} {x['turns']}"
        + (f" turns at {_ratio_text(x['cost_ratio'])}" if x.get("cost_ratio") is not None else "")
        for x in long["swe_agent_longest"]
    )
    lines = [
        f"Target (Messages, client without breakpoints): billed cost with nocp at most {target:.2f}x of "
        f"direct on an agent replay of {n} turns or more. "
        + (
            f"SWE-agent traces in this run: {long['swe_agent_traces_long']} of {swe} have {n} turns or more"
            + (f" (longest: {longest})" if longest else "")
            + "."
            if swe
            else "No SWE-agent trace in this run."
        ),
        "",
    ]
    rows = long["conversations"]
    if not rows:
        lines += [f"No replay of {n} turns or more in this run: the target is not judged (N/A).", ""]
        return lines
    lines += [
        "| replay | turns | billed cost (direct -> nocp) | nocp / direct | nocp cached / written tokens "
        f"| <= {target:.2f}x |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for x in rows:
        ok = x["cost_ratio"] is not None and x["cost_ratio"] <= target and not x["errors"]
        lines.append(
            f"| {x['scenario']}: {x['id']} | {x['turns']} | {_usd(x['baseline_cost_usd'])} -> "
            f"{_usd(x['nocp_cost_usd'])} | {_ratio_text(x['cost_ratio'])} | "
            f"{_int(x['nocp_cached_tokens'])} / {_int(x['nocp_cache_write_tokens'])} | "
            f"{'PASS' if ok else 'FAIL'} |"
        )
    lines += [
        "",
        f"**{n}-turn target: {long['status']}** ({long['met']} of {len(rows)} replays at or under "
        f"{target:.2f}x; all of them together {_ratio_text(long['cost_ratio'])}).",
        "",
    ]
    return lines


def own_cache_line(result: Mapping[str, Any]) -> str:
    """Whether nocp cost more than direct when the client set its own breakpoints."""
    for p in result.get("protocols") or ():
        if p["protocol"] == "messages-own-cache":
            higher = p["cost_higher_in"]
            verdict = (
                f"never above direct (in all {p['scenarios']} scenarios; {_ratio_text(p['cost_ratio'])} "
                "over all)"
                if not higher
                else f"above direct in {len(higher)} of {p['scenarios']} scenarios: {', '.join(higher)}"
                + (
                    " (there what nocp sent changed an earlier part of the prompt, "
                    + ", ".join(f"{why}: {n}x" for why, n in p.get("cost_higher_prefix_breaks", {}).items())
                    + ", so the provider wrote its cache again)"
                    if p.get("cost_higher_prefix_breaks")
                    else ""
                )
            )
            return (
                "Messages with the client's own breakpoints (system and last message marked, nocp adds "
                f"none): nocp {verdict}."
            )
    return ""


def _overhead_rows(overhead: Mapping[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    labels = {t["key"]: t["label"] for t in overhead.get("targets", [])}
    mem = overhead.get("memory", {})
    for sc in overhead.get("scenarios", []):
        for key, r in sc["targets"].items():
            peak = (mem.get(key) or {}).get("VmHWM")
            rows.append(
                [
                    f"{sc['mode']} c={sc['concurrency']}",
                    labels.get(key, key),
                    f"{r['p50_ms']:.2f}" if r.get("p50_ms") is not None else "-",
                    f"{r['added_p50_ms']:+.2f}" if r.get("added_p50_ms") is not None else "-",
                    f"{r['added_p99_ms']:+.2f}" if r.get("added_p99_ms") is not None else "-",
                    f"{r['requests_per_s']:.0f}" if r.get("requests_per_s") is not None else "-",
                    f"{r['ttfc_p50_ms']:.2f}" if r.get("ttfc_p50_ms") is not None else "-",
                    f"{peak / 1e6:.0f}" if peak else "-",
                ]
            )
    return rows


def overhead_table(overhead: Mapping[str, Any]) -> str:
    head = ["load", "target", "p50 ms", "added p50 ms", "added p99 ms", "req/s", "TTFC p50 ms", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    lines += ["| " + " | ".join(r) + " |" for r in _overhead_rows(overhead)]
    return "\n".join(lines)


def _overhead_summary(overhead: Mapping[str, Any]) -> str:
    """One sentence: added p50 at c=1 non-streaming for nocp (with stages) and the peer."""
    by = {(s["mode"], s["concurrency"]): s["targets"] for s in overhead.get("scenarios", [])}
    c1 = by.get(("non-streaming", 1), {})
    c32 = by.get(("non-streaming", 32), {})
    parts: list[str] = []
    for key, label in (
        ("nocp_stages", "nocp (default stages)"),
        ("nocp", "nocp passthrough"),
        ("litellm", "LiteLLM"),
    ):
        if key in c1 and c1[key].get("added_p50_ms") is not None:
            rps = c32.get(key, {}).get("requests_per_s")
            peak = (overhead.get("memory", {}).get(key) or {}).get("VmHWM")
            extra = f", {rps:.0f} req/s at c=32" if rps else ""
            extra += f", {peak / 1e6:.0f} MB peak RSS" if peak else ""
            parts.append(f"{label} +{c1[key]['added_p50_ms']:.2f} ms p50{extra}")
    peer = overhead.get("peer") or {}
    tail = "" if peer.get("status") == "measured" else f" (LiteLLM not measured: {peer.get('reason', 'n/a')})"
    return (
        ("Overhead per request on loopback, non-streaming, concurrency 1: " + "; ".join(parts) + "." + tail)
        if parts
        else ""
    )


def _findings(result: Mapping[str, Any]) -> list[str]:
    """Plain statements read off the numbers (nothing here is assumed)."""
    out: list[str] = []
    scen = result["scenarios"]
    for key in _CRITERIA_KEYS:
        statuses = [_status(s, key) for s in scen]
        judged = [x for x in statuses if x != "N/A"]
        if not judged:
            continue
        failed = [s["name"] for s in scen if _status(s, key) == "FAIL"]
        label = CRITERIA[key][2]
        if failed:
            out.append(
                f"{label}: met in {len(judged) - len(failed)} of {len(judged)} scenarios; "
                f"missed in {', '.join(failed)}."
            )
        else:
            out.append(f"{label}: met in all {len(judged)} scenarios where it applies.")
    low = [s for s in scen if s["fidelity"]["recall"] is not None and s["fidelity"]["recall"] < 0.99]
    if low:
        worst = min(low, key=lambda s: s["fidelity"]["recall"])
        out.append(
            f"Fidelity below 99% in {len(low)} scenarios ({', '.join(s['name'] for s in low)}); lowest "
            f"{_pct(worst['fidelity']['recall'])} in {worst['name']}: lossy tool-output compression dropped "
            "values that later turns quote (e.g. "
            + ", ".join(worst["fidelity"]["missed_examples"][:5])
            + ")."
        )
    broken = [s for s in scen if s["prefix_stability"]["breaks"]]
    if broken:
        reasons: dict[str, int] = {}
        for s in broken:
            for why, n in s["prefix_stability"]["reasons"].items():
                reasons[why] = reasons.get(why, 0) + n
        out.append(
            "What nocp sent did not start with what it sent for the previous request in "
            + ", ".join(
                f"{s['name']} ({s['prefix_stability']['breaks']} of {s['prefix_stability']['checked']})"
                for s in broken
            )
            + ": "
            + "; ".join(f"{why}: {n}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
            + ". The provider's prefix cache misses from the first changed byte on, so those requests "
            "are billed mostly at the uncached price."
        )
    same_out = [s["name"] for s in scen if s["structured_output"] and (s["output_reduction"] or 0) == 0]
    if same_out:
        out.append(
            f"Output tokens are unchanged in {', '.join(same_out)}: nocp did not ask for TOON there "
            "(no `output.toon_models` for the model, or a protocol without structured output)."
        )
    slow = [s for s in scen if (s["latency_ratio"] or 0) >= 2]
    if slow:
        worst_be = max(s["break_even_provider_ms"] or 0 for s in slow)
        out.append(
            "Latency is measured against a fake provider that answers in about a millisecond, so the "
            f"ratio is the proxy's own cost; in {len(slow)} scenarios it is 2x or more, but a provider "
            f"taking longer than {worst_be:.1f} ms per request (any real LLM) brings every scenario under 2x."
        )
    return out


def _method(result: Mapping[str, Any]) -> list[str]:
    largest = max(
        (s["baseline"]["prompt_tokens"] / max(1, s["requests"]) for s in result["scenarios"]), default=0
    )
    rollups = sum(s["nocp_log"].get("history_rollups", 0) for s in result["scenarios"])
    threshold = result.get("history_threshold_tokens")
    lines = [
        "## Method and caveats",
        "",
        "- nocp under test: `nocp serve` as a subprocess, the way it is deployed (its own event loop and "
        "core), with the stages `proxy.server.default_stages` builds from its settings: "
        f"{', '.join(result['nocp_stages']) or 'none'}. The two fake providers run in the benchmark's "
        "process, which reads their billing records directly; nocp's TransactionLog is read after it "
        "stops (SIGTERM flushes it).",
        f"- Model `{result['model']}`: the large scenarios' prompts exceed a 128k-token context window "
        f"(largest mean prompt here {largest:,.0f} tokens per request), so the baseline needs a "
        "long-context model.",
    ]
    if threshold is not None:
        lines.append(
            f"- History roll-up acts above {threshold:,} prompt tokens for this model (default: 60% of its "
            f"context window); it rolled up {rollups} time(s) in this run. `make bench-history` measures "
            "it with a low threshold."
        )
    if set(result.get("protocol_models") or {}) - {"chat"}:
        cache = result.get("anthropic_auto_cache") or {}
        lines += [
            "- Protocols (`proxy/bench/protocols.py`): each request is recorded in chat form and converted, "
            "the same way every time. Responses: leading system messages become `instructions`, messages "
            "become `message` items (`input_text` / `output_text` parts), tool calls `function_call` items, "
            "tool messages `function_call_output` items, tools `{type: function, name, parameters, strict: "
            "false}`, `response_format` becomes `text.format`, `store: false` (the whole conversation is "
            "resent, no `previous_response_id`). Messages: `system` from the leading system messages, "
            "content blocks, tool calls as `tool_use` and tool messages as `tool_result` blocks, "
            "consecutive messages of one role merged (one user message holds a turn's tool results), "
            "tools with `input_schema`, `max_tokens` 4096; `response_format` has no Messages equivalent "
            "and is left out (so no output criterion there); traces that recorded no tool definitions "
            "get a minimal one per called tool. The fake answers each protocol with the recorded turn "
            "converted to that protocol. Each protocol runs in a fresh `nocp serve` process, so none "
            "finds another's tool outputs in nocp's caches.",
            f"- Anthropic prompt caching: nocp's `anthropic.auto_cache` is "
            f"{'on' if cache.get('enabled', True) else 'off'} (TTL {cache.get('ttl', '5m')}): on a "
            "request without breakpoints it marks the end of the tools, of the system prompt and the "
            "last message (each when its prefix reaches the model's cacheable minimum). The baseline "
            "of `messages` rows sends no breakpoint, so the provider caches nothing and every input "
            "token is billed at the input price; that is what a client without nocp pays.",
        ]
    lines += [
        "- Output tokens: the fake provider answers every request with the recorded assistant turn; "
        "in the scenarios that ask for JSON (`response_format`), a JSON answer is sent as its value: "
        "the recorded JSON on the baseline, its TOON where nocp asks for TOON (`output.toon_models`, "
        "set to every model here unless `--config` sets `output`). The fake follows the instruction "
        "perfectly: real models' TOON compliance is not measured here.",
        "- Latency: the fake answers in about a millisecond, so the ratio shows the proxy's own cost "
        "in the worst case; real providers take hundreds of milliseconds or more per request.",
        "- nocp's own per-request estimate of the saving (in its TransactionLog) prices the "
        "uncompressed prompt with the cache the provider would have given it: the longest prefix "
        "shared with the session's previous raw prompt, in the provider's steps (Anthropic: at the "
        "client's breakpoints). The measured saving uses the baseline's real cache hits, across "
        "sessions too; the table above gives the gap, and that of the earlier same-share estimate.",
        "",
    ]
    return lines


def markdown_report(result: Mapping[str, Any], charts: Mapping[str, str]) -> str:
    """The full report: run facts, tables, charts, findings and method."""
    price = result["price_usd_per_1m_tokens"]
    lines = [
        "# nocp benchmark" + (" (quick)" if result["quick"] else ""),
        "",
        f"Run {result['timestamp']}, {result['duration_s']} s, seed {result['seed']}, "
        f"model `{result['model']}` "
        f"(USD per 1M tokens: input {price['input']}, cached input {price['cached_input']}, output "
        f"{price['output']}; list prices as of {price['as_of']}). nocp stages: "
        f"{', '.join(result['nocp_stages']) or 'none'} (default settings). Machine: "
        f"{result['machine']['cpus']} CPUs, Python {result['machine']['python']}.",
        "",
    ]
    models = result.get("protocol_models") or {}
    if set(models) - {"chat"}:
        lines += [
            "Protocols: "
            + "; ".join(
                f"{proto} (`{m['path']}`, model `{m['model']}`: input {m['input']}, "
                f"cached {m['cached_input']}"
                + (
                    f", cache writes {m['cache_write_5m']:g} (5 min) / {m['cache_write_1h']:g} (1 h)"
                    if proto.startswith("messages")
                    else ""
                )
                + f", output {m['output']})"
                for proto, m in models.items()
            )
            + ". Rows of a protocol other than chat are named `scenario@protocol`.",
            "",
        ]
    lines += [
        "Every request is sent twice through real HTTP on loopback: straight to a fake provider "
        "(baseline) and through `nocp serve` to a second one. Chat Completions and Responses are "
        "billed like OpenAI: prompt tokens, cached tokens from a prefix-cache simulation "
        "(1024-token minimum, 128-token steps), completion tokens. Anthropic Messages are billed like "
        "Anthropic: the prompt is cached only at `cache_control` breakpoints (minimum prefix per model, "
        "20-block lookback), cache writes cost 1.25x the input price (2x for a 1-hour TTL) and reads "
        "the cached price. Cost adds the summarizer's tokens (compression overhead) to nocp's side.",
        "",
        "## Headline",
        "",
        headline_table(result),
        "",
    ]
    for c in result["suite_criteria"]:
        lines += [f"**{c['label']}: {c['status']}** ({c['detail']}).", ""]
    if result.get("protocols") and set(models) - {"chat"}:
        lines += [
            "## Per protocol",
            "",
            "The same scenarios replayed through each protocol (each converted from its chat form, "
            "see Method). Messages baseline = the request as a client without nocp sends it, with no "
            "cache breakpoints, so nothing is cached; nocp adds breakpoints (`anthropic.auto_cache`) "
            "and compresses. `messages-own-cache`: the client marks the system prompt and the last "
            "message itself (the Claude Code pattern); nocp then adds none.",
            "",
            protocol_table(result, compact=True),
            "",
        ]
        own = own_cache_line(result)
        if own:
            lines += [own, ""]
        lines += long_lines(result)
        if "protocols" in charts:
            lines += [f"![billed cost per protocol]({charts['protocols']})", ""]
    findings = _findings(result)
    if findings:
        lines += ["## Findings", ""] + [f"- {f}" for f in findings] + [""]
    if "savings" in charts:
        lines += [f"![savings per scenario]({charts['savings']})", ""]
    lines += [
        "## Tokens and cost per scenario",
        "",
        "| scenario | cached share (baseline / nocp) | cache writes (baseline / nocp) | uncached input saved "
        "| cost without caching (baseline -> nocp) | saved | cost with caching (baseline -> nocp) | saved "
        "| output tokens (baseline -> nocp) | summarizer tokens | nocp's own estimate of the saving |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["scenarios"]:
        b, n, log = s["baseline"], s["nocp"], s["nocp_log"]
        measured = b["total_cost_usd"] - n["total_cost_usd"]
        cells = [
            s["name"],
            f"{_pct(b['cached_share'], 0)} / {_pct(n['cached_share'], 0)}",
            f"{_int(b.get('cache_write_tokens'))} / {_int(n.get('cache_write_tokens'))}",
            _pct(s["uncached_input_reduction"]),
            f"{_usd(b['cost_uncached_usd'])} -> {_usd(n['cost_uncached_usd'])}",
            _pct(s["cost_reduction_without_cache"]),
            f"{_usd(b['total_cost_usd'])} -> {_usd(n['total_cost_usd'])}",
            _pct(s["cost_reduction"]),
            f"{_int(b['completion_tokens'])} -> {_int(n['completion_tokens'])}",
            _int(n["overhead_tokens"]),
            f"{_usd(log.get('cost_savings_usd'))} (same-share "
            f"{_usd(log.get('cost_savings_same_share_usd'))}; measured {_usd(measured)})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if result.get("log_estimate"):
        lines += [
            "### nocp's own estimate vs the measured saving",
            "",
            "The TransactionLog's `cost_savings_usd` (baseline cached as the provider would have "
            "cached the raw prompts, estimated per session) and the earlier same-share estimate, "
            "summed per protocol, against the saving the fake provider billed; gap = estimate - "
            "measured (share of the measured saving).",
            "",
            estimate_table(result),
            "",
        ]
    if "cost" in charts:
        lines += [f"![cost per scenario]({charts['cost']})", ""]
    lines += [
        "## Latency and fidelity",
        "",
        "| scenario | latency p50 ms (baseline / nocp) | added p50 ms | ratio | break-even provider ms "
        "| fidelity | facts kept / needed | nocp compression p50 ms | methods | fail-open |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in result["scenarios"]:
        b, n, log, fid = s["baseline"], s["nocp"], s["nocp_log"], s["fidelity"]
        methods = ", ".join(f"{k} {v}" for k, v in (log.get("segment_methods") or {}).items() if k != "none")
        fail = ", ".join(f"{k} {v}" for k, v in (log.get("fail_open") or {}).items()) or "-"
        comp = log.get("compression_latency_ms_p50")
        cells = [
            s["name"],
            f"{b['latency_ms_p50'] or 0:.2f} / {n['latency_ms_p50'] or 0:.2f}",
            f"{s['added_latency_ms_p50'] or 0:+.2f}",
            f"{s['latency_ratio'] or 0:.2f}",
            f"{s['break_even_provider_ms'] or 0:.1f}",
            _pct(fid["recall"]),
            f"{fid['kept']} / {fid['needed']}",
            "-" if comp is None else f"{comp:.2f}",
            methods or "-",
            fail,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Fidelity: of the hard tokens (ids, numbers, paths, codes, identifiers) in a request's tool outputs "
        "that a later assistant turn uses, the share still present in what nocp sent; summed over requests. "
        "Break-even provider ms: the time a provider would need per request for nocp to stay under 2x the "
        "baseline's latency.",
        "",
    ]
    overhead = result.get("overhead")
    lines += ["## Overhead vs a peer (LiteLLM)", ""]
    if overhead:
        summary = _overhead_summary(overhead)
        if summary:
            lines += [summary, ""]
        lines += [overhead_table(overhead), ""]
        if "overhead" in charts:
            lines += [f"![overhead vs peer]({charts['overhead']})", ""]
        lines += [
            "From `nocp bench overhead` (`proxy/bench/overhead.py`): a minimal request (system + "
            "user message) through each target, blocks interleaved in rotating order; added = target "
            "minus direct.",
            "",
        ]
    else:
        lines += ["Not run (`--no-overhead`, or the overhead benchmark failed: see the notes).", ""]
    lines += _output_section(result.get("output_side"))
    lines += policy_lines(result.get("learned_policy"))
    lines += _method(result)
    lines += ["## Scenarios", ""]
    for s in result["scenarios"]:
        params = ", ".join(f"{k} {v}" for k, v in s["params"].items())
        note = f" {' '.join(s['notes'])}." if s["notes"] else ""
        lines.append(
            f"- **{s['name']}**: {s['title']}; {s['conversations']} conversation(s), {s['requests']} requests"
            f"{'; structured output (response_format)' if s['structured_output'] else ''}; {params}.{note}"
        )
    lines.append("")
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(lines)


def policy_lines(policy: Mapping[str, Any] | None) -> list[str]:
    """The learned compression policy's section, from ``nocp bench policy``'s ``policy.json``
    (none when it was not run into the same folder)."""
    if not policy:
        return []
    p = policy["policy"]
    fixed = policy["fixed"]
    arms = ", ".join(
        f"`{a['name']}`" + (f" ({a['budget_tokens']} tokens)" if a["budget_tokens"] else " (lossless only)")
        for a in policy["arms"]
    )
    lines = [
        "## Learned compression policy (simulation)",
        "",
        f"From `nocp bench policy` (`proxy/bench/policy.py`): {p['sessions']} sessions ({policy['epochs']} "
        f"passes over the SWE-agent traces, {p['requests']} requests per policy, seed {policy['seed']}) "
        f"through the proxy's request path, arms {arms}. The simulated model retrieves a cut with "
        f"probability `{policy['retrieval_model']['probability']}` (need "
        + ", ".join(f"{k} {v}" for k, v in policy["retrieval_model"]["need"].items())
        + f", other {policy['retrieval_model']['other_need']}). Net saved = raw - sent prompt tokens - the "
        f"retrieval rounds' tokens - {policy['retrieval_penalty_tokens']} per retrieval.",
        "",
        "| policy | net saved tokens | gross saved | retrievals | round tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in [*((f"fixed `{n}`", r) for n, r in fixed.items()), ("**learned**", p)]:
        lines.append(
            f"| {name} | {r['net_saved_tokens']:,} | {r['gross_saved_tokens']:,} | {r['retrievals']} "
            f"| {r['round_tokens']:,} |"
        )
    verdict = "beats" if p["beats_every_fixed_arm"] else "does not beat"
    lines += [
        "",
        f"The learned policy {verdict} every fixed arm: {p['margin_over_best_fixed_tokens']:+,} tokens over "
        f"the best one (`{p['best_fixed_arm']}`). It converged (most sessions in the last third of the run) "
        f"to the best fixed arm on {p['converged_on_decisive_keys']} of {p['decisive_keys']} tool / content "
        "types where the arms differ by more than 5 %:",
        "",
        "| tool / content type | sessions | best fixed arm (reward tokens) | learned, last third |",
        "|---|---:|---|---|",
    ]
    for k in policy["keys"]:
        rewards = k["fixed_reward_tokens"]
        if len(set(rewards.values())) <= 1:
            continue  # the arms never differ on it
        shares = ", ".join(f"`{a}` {v:.0%}" for a, v in k["last_third_share"].items())
        lines.append(
            f"| `{k['key']}` | {k['sessions']} | `{k['best_fixed_arm']}` ({rewards[k['best_fixed_arm']]:,}) "
            f"| {shares} |"
        )
    return [*lines, ""]


def console_summary(result: Mapping[str, Any], *, rich: bool) -> None:
    """The headline as a table on the terminal (``rich``) or plain text."""
    short = {
        "input_reduction": "in>50%",
        "output_reduction": "out>30%",
        "latency": "lat<2x",
        "cost_reduction": "cost>40%",
        "cost_not_higher": "cost<=base",
    }
    head = ["scenario", "req", "input -", "cost -", "lat x", "fidelity", *(short[k] for k in _CRITERIA_KEYS)]
    rows = [
        [
            str(r["name"]),
            _int(r["requests"]),
            _pct(r["input_reduction"]),
            _pct(r["cost_reduction"]),
            "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}",
            _pct(r["fidelity"]["recall"]),
            *(_status(r, k) for k in _CRITERIA_KEYS),
        ]
        for r in _rows(result)
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    console = None
    if rich:
        from rich.console import Console

        console = Console()
    # A table wider than the terminal is printed as plain text (wrapped, never cut).
    if console is not None and console.width >= sum(widths) + 3 * len(widths) + 1:
        from rich.table import Table

        table = Table(title="nocp bench: baseline vs nocp", title_justify="left")
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        colour = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]"}
        for row in rows:
            table.add_row(*(colour.get(c, c) for c in row))
        console.print(table)
    else:
        print(
            "  ".join(
                h.ljust(w) if i == 0 else h.rjust(w)
                for i, (h, w) in enumerate(zip(head, widths, strict=True))
            )
        )
        for row in rows:
            print(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    protocols = result.get("protocols") or []
    if len(protocols) > 1 or any(p["protocol"] != "chat" for p in protocols):
        table_rows = [
            [
                str(p["protocol"]),
                str(p["model"]),
                _int(p["requests"]),
                f"{_int(p['baseline']['prompt_tokens'])} -> {_int(p['nocp']['prompt_tokens'])}",
                f"{_usd(p['baseline']['total_cost_usd'])} -> {_usd(p['nocp']['total_cost_usd'])}",
                _ratio_text(p["cost_ratio"]),
                "PASS" if not p["cost_higher_in"] else f"FAIL {len(p['cost_higher_in'])}",
            ]
            for p in protocols
        ]
        phead = ["protocol", "model", "req", "input tokens", "billed cost", "nocp/base", "cost<=base"]
        pw = [max(len(h), *(len(r[i]) for r in table_rows)) for i, h in enumerate(phead)]
        print()
        for row in [phead, *table_rows]:
            print(
                "  ".join(
                    c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, pw, strict=True))
                )
            )
        own = own_cache_line(result)
        if own:
            print(own)
        long = result.get("long_conversations") or {}
        if long and any(p["protocol"] == "messages" for p in protocols):
            print(
                f"Messages replays of {long['min_turns']}+ turns: {long['status']} "
                f"({long['met']} of {len(long['conversations'])} at or under "
                f"{long['target_cost_ratio']:.2f}x; together {_ratio_text(long['cost_ratio'])}); "
                f"SWE-agent traces of {long['min_turns']}+ turns: "
                f"{long['swe_agent_traces_long']} of {long['swe_agent_traces']}"
            )
    for c in result["suite_criteria"]:
        print(f"{c['label']}: {c['status']} ({c['detail']})")


# ------------------------------------------------------------------------------ charts


def write_charts(
    result: Mapping[str, Any], out: Path, prefix: str = "bench"
) -> tuple[dict[str, str], str | None]:
    """PNG charts next to the report; (name -> file name, None) or ({}, why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}, "matplotlib is not installed (pip install 'nocp[dev]'): no charts"
    files: dict[str, str] = {}
    # Per-scenario charts show the chat rows (the other protocols are summed in the third chart).
    scen = [s for s in result["scenarios"] if s.get("protocol", "chat") == "chat"] or result["scenarios"]
    names = [s["name"] for s in scen]
    y = list(range(len(scen)))

    # 1. savings per scenario
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(scen) + 1.8), dpi=110)
    h = 0.27
    series = (
        ("billed input tokens saved", [s["input_reduction"] or 0 for s in scen], "#2b6cb0", -h),
        ("cost saved (cached prices)", [s["cost_reduction"] or 0 for s in scen], "#38a169", 0.0),
        (
            "fidelity (facts kept)",
            [s["fidelity"]["recall"] if s["fidelity"]["recall"] is not None else math.nan for s in scen],
            "#d69e2e",
            h,
        ),
    )
    for label, values, colour, off in series:
        ys = [i + off for i in y]
        ax.barh(ys, [v * 100 for v in values], height=h, label=label, color=colour)
        for yy, val in zip(ys, values, strict=True):
            if not math.isnan(val):
                text = f"{val * 100:.0f}" if abs(val) >= 0.01 or val == 0 else f"{val * 100:.1f}"
                ax.annotate(text, (max(val * 100, 0) + 0.8, yy), va="center", fontsize=6.5)
    ax.axvline(50, color="#2b6cb0", linestyle=":", linewidth=1)
    ax.axvline(40, color="#38a169", linestyle=":", linewidth=1)
    ax.annotate("input 50%", (50, -0.6), color="#2b6cb0", fontsize=7, ha="left")
    ax.annotate("cost 40%", (40, -0.6), color="#38a169", fontsize=7, ha="right")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, names)
    ax.set_ylim(len(scen) - 0.5, -0.9)
    ax.set_xlabel("% of the baseline (dotted lines: the criteria)")
    ax.set_xlim(
        min(-10.0, min(min(v for _, vals, _, _ in series for v in vals if not math.isnan(v)) * 100 - 5, 0)),
        105,
    )
    ax.set_title(f"nocp vs baseline per scenario ({result['model']})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    files["savings"] = f"{prefix}-savings.png"
    fig.savefig(out / files["savings"], bbox_inches="tight")
    plt.close(fig)

    # 2. cost per scenario: baseline vs nocp, with and without prompt caching
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=110)
    w = 0.2
    bars = (
        ("baseline, no caching", [s["baseline"]["cost_uncached_usd"] for s in scen], "#cbd5e0", -1.5),
        ("baseline, cached prices", [s["baseline"]["total_cost_usd"] for s in scen], "#718096", -0.5),
        (
            "nocp, no caching",
            [s["nocp"]["cost_uncached_usd"] + s["nocp"]["overhead_cost_usd"] for s in scen],
            "#9ae6b4",
            0.5,
        ),
        ("nocp, cached prices", [s["nocp"]["total_cost_usd"] for s in scen], "#2f855a", 1.5),
    )
    for label, values, colour, off in bars:
        ax.bar([i + off * w for i in y], [max(v, 1e-6) for v in values], width=w, label=label, color=colour)
    ax.set_yscale("log")
    ax.set_xticks(y, names, rotation=35, ha="right")
    ax.set_ylabel("USD per scenario (log scale)")
    ax.set_title(f"Cost per scenario, {result['model']} list prices")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    files["cost"] = f"{prefix}-cost.png"
    fig.savefig(out / files["cost"])
    plt.close(fig)

    # 3. billed cost per protocol: baseline vs nocp
    protocols = result.get("protocols") or []
    if len(protocols) > 1:
        fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
        px = list(range(len(protocols)))
        top = max(max(p["baseline"]["total_cost_usd"], p["nocp"]["total_cost_usd"]) for p in protocols) or 1.0
        for off, key, label, colour in (
            (-0.2, "baseline", "baseline (direct)", "#718096"),
            (0.2, "nocp", "through nocp", "#2f855a"),
        ):
            vals = [p[key]["total_cost_usd"] for p in protocols]
            ax.bar([x + off for x in px], vals, width=0.4, label=label, color=colour)
            for pos, val in zip(px, vals, strict=True):
                ax.annotate(_usd(val), (pos + off, val), ha="center", va="bottom", fontsize=7)
        for pos, p in zip(px, protocols, strict=True):
            if p["cost_ratio"] is not None:
                high = max(p["baseline"]["total_cost_usd"], p["nocp"]["total_cost_usd"])
                ax.annotate(
                    f"nocp {p['cost_ratio']:.2f}x",
                    (pos, high + top * 0.07),
                    ha="center",
                    fontsize=8,
                    weight="bold",
                )
        ax.set_ylim(0, top * 1.22)
        ax.set_xticks(px, [f"{p['protocol']}\n{p['model']}" for p in protocols], fontsize=8)
        ax.set_ylabel("USD billed, all scenarios")
        ax.set_title("Billed cost per protocol, baseline vs through nocp")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        files["protocols"] = f"{prefix}-protocols.png"
        fig.savefig(out / files["protocols"])
        plt.close(fig)

    # 4. overhead vs peer
    overhead = result.get("overhead")
    if overhead and overhead.get("scenarios"):
        labels = {t["key"]: t["label"] for t in overhead.get("targets", [])}
        keys = [k for k in ("floor", "nocp", "nocp_stages", "litellm") if k in labels]
        loads = [f"{s['mode']}\nc={s['concurrency']}" for s in overhead["scenarios"]]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, gridspec_kw={"width_ratios": [3, 1]})
        colours = {"floor": "#a0aec0", "nocp": "#63b3ed", "nocp_stages": "#2b6cb0", "litellm": "#dd6b20"}
        w = 0.8 / max(1, len(keys))
        for j, key in enumerate(keys):
            vals = [
                max(s["targets"].get(key, {}).get("added_p50_ms") or 0.0, 0.01) for s in overhead["scenarios"]
            ]
            xs = [i - 0.4 + w * (j + 0.5) for i in range(len(loads))]
            ax1.bar(xs, vals, width=w, label=labels[key], color=colours.get(key))
            for x, val in zip(xs, vals, strict=True):
                ax1.annotate(f"{val:.1f}", (x, val), ha="center", va="bottom", fontsize=7)
        ax1.set_yscale("log")
        ax1.set_xticks(range(len(loads)), loads)
        ax1.set_ylabel("added latency p50, ms (log scale)")
        ax1.set_title("Latency added over a direct call")
        ax1.legend(fontsize=8)
        ax1.grid(axis="y", alpha=0.3, which="both")
        mem = overhead.get("memory", {})
        peaks = [((mem.get(k) or {}).get("VmHWM") or 0) / 1e6 for k in keys]
        ax2.bar(range(len(keys)), peaks, color=[colours.get(k) for k in keys])
        for i, val in enumerate(peaks):
            ax2.annotate(f"{val:.0f}", (i, val), ha="center", va="bottom", fontsize=8)
        ax2.set_xticks(range(len(keys)), [labels[k] for k in keys], rotation=30, ha="right")
        ax2.set_ylabel("peak RSS, MB")
        ax2.set_title("Memory")
        fig.tight_layout()
        files["overhead"] = f"{prefix}-overhead.png"
        fig.savefig(out / files["overhead"])
        plt.close(fig)
    return files, None


# ------------------------------------------------------------------------------ README


def readme_block(result: Mapping[str, Any], report_link: str) -> str:
    """What goes between the README markers."""
    parts = [
        README_START,
        "",
        f"Latest `nocp bench` ({result['timestamp'][:10]}, model `{result['model']}`, cached-input "
        f"prices, default stages: {', '.join(result['nocp_stages'])}). Baseline = client -> provider; "
        "nocp = client -> nocp -> provider; both billed by the fake provider's prefix-cache simulation. "
        f"Full report, charts and method: [{report_link}]({report_link}).",
        "",
    ]
    others = set(result.get("protocol_models") or {}) - {"chat"}
    if others:
        parts += [
            "Every protocol (the same scenarios converted to Responses and Anthropic Messages; "
            "Messages billed with cache writes and reads, baseline without breakpoints; rows per "
            f"scenario in the [report]({report_link})):",
            "",
            protocol_table(result, compact=True),
            "",
        ]
        own = own_cache_line(result)
        if own:
            parts += [own, ""]
        long = result.get("long_conversations") or {}
        if "messages" in others and long:
            rows = long["conversations"]
            top = long["swe_agent_longest"][:1]
            swe = (
                f"{long['swe_agent_traces_long']} of the {long['swe_agent_traces']} SWE-agent traces reach "
                f"{long['min_turns']} turns"
                + (
                    f" (the longest, {top[0]['id'].split('/')[-1]}, has {top[0]['turns']}: "
                    f"{_ratio_text(top[0]['cost_ratio'])} of direct)"
                    if top and top[0].get("cost_ratio") is not None
                    else ""
                )
                if long["swe_agent_traces"]
                else "no SWE-agent trace in this run"
            )
            judged = (
                f"**{long['status']}**: {long['met']} of {len(rows)} replays of "
                f"{long['min_turns']}+ turns at or under {long['target_cost_ratio']:.2f}x of direct "
                f"(together {_ratio_text(long['cost_ratio'])}; "
                + ", ".join(f"{x['id']} {x['turns']} turns {_ratio_text(x['cost_ratio'])}" for x in rows)
                + ")"
                if rows
                else f"**N/A**: no replay of {long['min_turns']}+ turns in this run"
            )
            parts += [f"Messages on long agent replays: {judged}; {swe}.", ""]
    else:
        parts += [headline_table(result), ""]
    for c in result["suite_criteria"]:
        parts += [f"{c['label']}: **{c['status']}** ({c['detail']}).", ""]
    overhead = result.get("overhead")
    if overhead:
        summary = _overhead_summary(overhead)
        if summary:
            parts += [summary, ""]
    parts.append(README_END)
    return "\n".join(parts)


_PLACEHOLDER = re.compile(
    r"<!-- overhead-table -->\n\(filled in from the latest `make bench-overhead` run\)\n?"
)


def update_readme(readme: Path, block: str) -> bool:
    """Put ``block`` between the markers (or in place of the old placeholder); True if written."""
    text = readme.read_text("utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start != -1 and end > start:
        new = text[:start] + block + text[end + len(README_END) :]
    elif _PLACEHOLDER.search(text):
        new = _PLACEHOLDER.sub(lambda _: block + "\n", text, count=1)
    elif "## Benchmarks" in text:
        head, _, tail = text.partition("## Benchmarks")
        new = head + "## Benchmarks\n\n" + block + "\n" + tail.lstrip("\n")
    else:
        new = text.rstrip("\n") + "\n\n## Benchmarks\n\n" + block + "\n"
    if new == text:
        return False
    readme.write_text(new, "utf-8")
    return True


def criteria_lines(criteria: Iterable[Criterion]) -> list[str]:
    return [f"{c.status:4}  {c.label}: {c.detail}" for c in criteria]
