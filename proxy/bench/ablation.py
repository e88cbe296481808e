"""Savings on real agent traffic, and what each feature contributes (ablation rows).

Replays the real traces (SWE-agent function-calling and text-mode trajectories, BFCL multi-turn
base and long-context conversations) through Chat Completions, baseline and through nocp, with
the same fake provider and its prefix cache (:func:`proxy.bench.runner.run_suite`), for:

- ``defaults``: nocp as it ships (observation aging only where cached input costs at least
  half the input price);
- ``all``: every saving feature on (lossless compaction from a small floor, observation aging
  at every price, text-mode observations, cache routing);
- ``all - X``: the same with one of them off, so the difference to ``all`` is what X adds.

Each at three models whose cached input costs 50% (gpt-4o), 25% (gpt-4.1) and 10% (gpt-5) of
the input price. Billed cost includes the retrieval rounds a model would need for what nocp
sent only behind a marker (:meth:`proxy.bench.runner._Replayer._round`: the fake never
retrieves on its own, so one round is billed per request whose answer uses such a value).
Conversations of 30 requests or more get rows of their own.

    nocp bench ablation --out benchmarks/results     # ablation.json, ablation.md
    nocp bench ablation --models gpt-4.1 --variants defaults,all
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from proxy.bench._common import DEFAULT_OUT, shown
from proxy.bench.runner import LONG_TURNS, ScenarioResult, run_suite
from proxy.bench.scenarios import Scenario
from proxy.bench.traces import real_traces
from proxy.config import PricingConfig
from proxy.pricing import PriceTable

__all__ = ["MODELS", "VARIANTS", "main"]

MODELS = ("gpt-4o", "gpt-4.1", "gpt-5")  # cached input at 50%, 25%, 10% of the input price
AGING = {"enabled": True, "keep_last_turns": 3, "step_turns": 3, "min_cached_share": 0.0}  # at every price
ALL: dict[str, Any] = {
    "compression": {"lossless_min_tokens": 10, "text_observations": "auto"},
    "aging": AGING,
    "openai": {"prompt_cache_key": True},
}
# name -> the config's sections (deep-merged over nothing: everything else is the default)
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all": ALL,
    "all - lossless floor": {**ALL, "compression": {**ALL["compression"], "lossless_min_tokens": 500}},
    "all - aging": {**ALL, "aging": {"enabled": False}},
    "all - text observations": {**ALL, "compression": {**ALL["compression"], "text_observations": "never"}},
    "all - cache routing": {**ALL, "openai": {"prompt_cache_key": False}},
}
LONG_ROW = f"{LONG_TURNS}+ turns"


def _row(base: float, nocp: float, rounds_usd: float, rounds: int, recall: float | None) -> dict[str, Any]:
    billed = nocp + rounds_usd
    return {
        "baseline_cost_usd": round(base, 6),
        "nocp_cost_usd": round(nocp, 6),
        "retrieval_rounds": rounds,
        "retrieval_round_cost_usd": round(rounds_usd, 6),
        "cost_ratio": round(billed / base, 4) if base else None,
        "cost_saved": round(1 - billed / base, 4) if base else None,
        "recall_present": recall,
    }


def rows_of(results: Sequence[ScenarioResult]) -> dict[str, dict[str, Any]]:
    """One row per trace scenario (cost with the retrieval rounds billed), and one for the
    conversations of ``LONG_TURNS`` requests or more (rounds are counted per scenario, so this
    row shows none; the scenario rows include them)."""
    rows: dict[str, dict[str, Any]] = {}
    long_base = long_nocp = 0.0
    long_n = 0
    for r in results:
        f = r.fidelity
        rows[r.name] = _row(
            r.base.total_cost_usd, r.nocp.total_cost_usd, f.round_cost_usd, f.rounds, f.recall
        )
        for c in r.conversations:
            if c.turns >= LONG_TURNS:
                long_base += c.base.total_cost_usd
                long_nocp += c.nocp.total_cost_usd
                long_n += 1
    if long_n:
        rows[LONG_ROW] = {**_row(long_base, long_nocp, 0.0, 0, None), "conversations": long_n}
    return rows


async def _measure(
    scenarios: Sequence[Scenario], variant: Mapping[str, Any], model: str, prices: PriceTable
) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="nocp-ablation-") as tmp:
        config = Path(tmp) / "nocp.yaml"
        config.write_text(yaml.safe_dump(dict(variant)), "utf-8")
        suite = await run_suite(
            scenarios,
            model=model,
            prices=prices,
            folder=Path(tmp),
            config=config,
            jobs=[("chat", s) for s in scenarios],
        )
    return rows_of(suite.results)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def markdown(result: Mapping[str, Any]) -> str:
    """The report: per trace family, cost saved against direct for each variant and model."""
    models: list[str] = result["models"]
    lines = [
        "# Savings on real agent traces, and what each feature contributes",
        "",
        f"Chat Completions replays of the real traces, baseline and through nocp, same fake provider "
        f"with its prefix cache; cost saved against direct (negative: nocp cost more), retrieval "
        f"rounds billed. Aging in the `all` variants: {json.dumps(AGING)}. Generated by "
        f"`nocp bench ablation` in {result['duration_s']:.0f} s.",
        "",
    ]
    variants = list(result["runs"])
    families = list(dict.fromkeys(f for v in variants for m in models for f in result["runs"][v].get(m, {})))
    for family in families:
        lines += [
            f"## {family}",
            "",
            "| variant | "
            + " | ".join(f"{m} ({result['cached'][m]:.0%} cached)" for m in models)
            + " | rounds | facts present |",
        ]
        lines.append("|---" * (len(models) + 3) + "|")
        for v in variants:
            cells = [result["runs"][v].get(m, {}).get(family) for m in models]
            saved = [_pct(c["cost_saved"]) if c else "-" for c in cells]
            first = next((c for c in cells if c), None)
            rounds = str(first["retrieval_rounds"]) if first else "-"
            recall = _pct(first["recall_present"]) if first else "-"
            lines.append(f"| {v} | " + " | ".join(saved) + f" | {rounds} | {recall} |")
        lines.append("")
    never = result["never_above_direct"]
    lines += [
        "## Never above direct",
        "",
        *(f"- {v}: {'yes' if ok else 'no'}" for v, ok in never.items()),
        "",
        *(f"- note: {n}" for n in result["notes"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated models (default: %(default)s)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated variants (default: all of them)"
    )
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    prices = PriceTable.from_config(PricingConfig())
    missing = [m for m in models if prices.lookup(m) is None]
    if unknown or missing or not models or not variants:
        print(
            f"{prog or 'ablation'}: unknown variants {unknown} / models without a price {missing}",
            file=sys.stderr,
        )
        return 2
    notes: list[str] = []
    scenarios = real_traces(notes)
    if not scenarios:
        print("no traces found: " + "; ".join(notes), file=sys.stderr)
        return 1
    started = time.perf_counter()
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for v in variants:
        runs[v] = {}
        for m in models:
            print(f"{v} @ {m} ...", file=sys.stderr, flush=True)
            runs[v][m] = asyncio.run(_measure(scenarios, VARIANTS[v], m, prices))
    cached = {}
    for m in models:
        p = prices.lookup(m)
        assert p is not None
        cached[m] = p.cached_input / p.input if p.input else 0.0
    result = {
        "benchmark": "ablation",
        "models": models,
        "cached": cached,
        "variants": {v: VARIANTS[v] for v in variants},
        "long_turns": LONG_TURNS,
        "runs": runs,
        "never_above_direct": {
            v: all((row["cost_ratio"] or 0.0) <= 1.0 for m in models for row in runs[v][m].values())
            for v in variants
        },
        "duration_s": round(time.perf_counter() - started, 1),
        "notes": notes,
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    report = markdown(result)
    (out / "ablation.md").write_text(report, "utf-8")
    print(report)
    print(f"written: {shown(out / 'ablation.json')}, {shown(out / 'ablation.md')}")
    return 0
