"""A holdout run on the real traces: both cohorts of an A/B experiment and the measured saving.

Run: ``nocp bench holdout`` (or ``python -m proxy.bench.holdout``). Options: ``--holdout``
(share of sessions in the control cohort, default 0.5 so both cohorts are sizable),
``--quick`` (a few traces), ``--model``, ``--config`` (nocp's config; its ``experiment`` is
replaced), ``--out DIR`` (``holdout.json`` and ``holdout.md``; ``holdout-quick.*`` with ``--quick``).

Unlike the suite (``nocp bench``), which sends every request twice (directly and through
nocp) and compares the pairs, this replays every conversation **once**, through one ``nocp
serve`` process with ``experiment.holdout`` set, as its own session: nocp draws each session's
cohort by its hash (:mod:`proxy.treatment`), sends the control sessions unchanged and the
treated ones through its stages, and logs both. The fake provider answers with the trace's
recorded assistant turns and bills with its prefix-cache simulation; nocp prices each request
(the default price table). The comparison is nocp's own, from its TransactionLog, exactly as a
user gets it: :func:`proxy.cohorts.compare` (``nocp logs stats --by cohort``), per session, with
bootstrap intervals; overall and per scenario. The conversations alternate between two client
keys (two tenants).

Data: the SWE-agent trajectories (``$NOCP_EVAL_DATA/swe-agent``) and the BFCL multi-turn sets
(the ``bfcl-eval`` package), as in :mod:`proxy.bench.traces`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog

from proxy.bench._common import DEFAULT_OUT, shown
from proxy.bench.protocols import PROTOCOLS
from proxy.bench.runner import NocpProcess
from proxy.bench.scenarios import Scenario
from proxy.bench.traces import real_traces
from proxy.cohorts import compare
from proxy.translog import TransactionLog, log_session_id

__all__ = ["main", "markdown", "run_holdout"]

MODEL = "gpt-4.1"
EXPERIMENT = "bench-holdout"
KEYS = ("sk-bench-tenant-a-000000000000000000", "sk-bench-tenant-b-000000000000000000")


def _config(folder: Path, holdout: float, base: Path | None) -> Path:
    """nocp's config: ``base`` (if any) with the holdout experiment."""
    raw: dict[str, Any] = {}
    if base is not None:
        loaded = msgspec.yaml.decode(base.read_bytes())
        raw = dict(loaded) if isinstance(loaded, dict) else {}
    raw["experiment"] = {"name": EXPERIMENT, "holdout": holdout}
    path = folder / "holdout-config.yaml"
    path.write_text(json.dumps(raw), "utf-8")  # JSON is YAML
    return path


async def run_holdout(
    scenarios: Sequence[Scenario],
    *,
    holdout: float,
    folder: Path,
    model: str = MODEL,
    config: Path | None = None,
) -> dict[str, Any]:
    """Replay every conversation of ``scenarios`` once through nocp with ``holdout``; the
    comparison of its cohorts, overall and per scenario, and the run's counts."""
    from proxy.testing import FakeUpstream, Replay

    proto = PROTOCOLS["chat"]
    started = time.perf_counter()
    session_of: dict[str, str] = {}  # logged session id -> scenario
    http_errors = 0
    async with (
        FakeUpstream(models=(model,)) as fake,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
    ):
        nocp = NocpProcess(
            fake.openai_base_url, folder, _config(folder, holdout, config), anthropic_upstream=fake.url
        )
        await nocp.start(http)
        try:
            n = 0
            for sc in scenarios:
                for i, conv in enumerate(sc.conversations):
                    sid = f"holdout-{sc.name}-{i}"
                    session_of[log_session_id(sid) or sid] = sc.name
                    headers = {
                        **proto.headers,
                        "Authorization": f"Bearer {KEYS[n % len(KEYS)]}",
                        "X-Session-Id": sid,
                    }
                    n += 1
                    for end in conv.turns():
                        fake.script(Replay(conv.messages[end]))
                        data = json.dumps(conv.body(end, model), ensure_ascii=False).encode(
                            "utf-8", "surrogatepass"
                        )
                        async with http.post(nocp.url + proto.path, data=data, headers=headers) as resp:
                            await resp.read()
                            http_errors += resp.status != 200
                        fake._script.clear()  # an answer a failed request left must not answer the next
                        fake.requests.clear()
        finally:
            await nocp.stop()
        records = [msgspec.convert(r, TransactionLog) for r in nocp.log_records()]
    by_scenario: dict[str, list[TransactionLog]] = {}
    for rec in records:
        by_scenario.setdefault(session_of.get(rec.session_id or "", "(other)"), []).append(rec)
    return {
        "benchmark": "holdout",
        "experiment": EXPERIMENT,
        "holdout": holdout,
        "model": model,
        "tenants": len(KEYS),
        "requests": len(records),
        "http_errors": http_errors,
        "duration_s": round(time.perf_counter() - started, 1),
        "scenarios": {
            sc.name: {"title": sc.title, "sessions": len(sc.conversations), "requests": sc.requests}
            for sc in scenarios
        },
        "overall": compare(records),
        "by_scenario": {name: compare(recs) for name, recs in by_scenario.items()},
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ci(ci: Sequence[float | None]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"{x:.5f}"


def _row(name: str, c: dict[str, Any]) -> str:
    control, treated = c["cohorts"]["control"], c["cohorts"]["treated"]
    cost = c["saving"]["billed_cost_usd"]
    prompt = c["saving"]["prompt_tokens"]
    per_request = c["saving"]["billed_cost_usd_per_request"]
    verdict = "yes" if c["conclusive"] else f"no: {c['reason']}"
    return (
        f"| {name} | {control['sessions']} / {treated['sessions']} | {control['requests']} / "
        f"{treated['requests']} | {_usd(cost['control'])} / {_usd(cost['treated'])} | "
        f"{_pct(cost['share'])} {_ci(cost['share_ci'])} | "
        f"{_pct(prompt['share'])} {_ci(prompt['share_ci'])} | "
        f"{_pct(per_request['share'])} {_ci(per_request['share_ci'])} | "
        f"{_pct(c['estimated_saving_share'])} | {verdict} |"
    )


def markdown(result: dict[str, Any]) -> str:
    """The run as a Markdown report."""
    o = result["overall"]
    level = f"{o['level']:.0%}"
    lines = [
        "# nocp holdout run on the real traces",
        "",
        f"Every conversation replayed once through nocp with `experiment.holdout: {result['holdout']}` "
        f"(experiment `{result['experiment']}`, model `{result['model']}`, {result['tenants']} tenants, "
        f"{result['requests']} requests, {result['http_errors']} HTTP errors, {result['duration_s']} s). "
        "nocp drew each session's cohort; the figures below are its own TransactionLog compared with "
        f"`proxy.cohorts.compare` (`nocp logs stats --by cohort`): means per session, {level} percentile "
        f"bootstrap intervals over {o['resamples']} resamples of the sessions.",
        "",
        "Measured saving = 1 - treated / control, of the mean per session (and, less noisy when "
        "sessions differ in length, of the cost per request, resampled by session). The per-request "
        "estimate (`cost_savings_usd` of the treated lines over their baseline) is an estimate, shown "
        "for comparison. Each row is its own comparison at the stated level: over several rows, about "
        "one in twenty intervals misses the true value by chance. In a replay every session has the "
        "trace's number of turns in either cohort, so a difference in turns per session is sampling "
        "noise here (with live agents it can be an effect of nocp).",
        "",
        "| scenario | sessions control / treated | requests control / treated | billed $ per session "
        "control / treated | measured saving, billed cost per session | measured saving, prompt tokens "
        "per session | measured saving, billed cost per request | per-request estimate | conclusive |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("**all**", o),
    ]
    lines += [_row(name, c) for name, c in result["by_scenario"].items()]
    lines += [
        "",
        f"## Per session, all traces ({level} intervals)",
        "",
        "| figure | control | treated |",
        "|---|---|---|",
    ]
    for metric, f in o["cohorts"]["control"]["per_session"].items():
        t = o["cohorts"]["treated"]["per_session"][metric]
        fmt = _usd if metric == "billed_cost_usd" else (lambda x: "-" if x is None else f"{x:,.1f}")
        lines.append(
            f"| {metric} | {fmt(f['mean'])} [{fmt(f['ci'][0])}, {fmt(f['ci'][1])}] | "
            f"{fmt(t['mean'])} [{fmt(t['ci'][0])}, {fmt(t['ci'][1])}] |"
        )
    er_c, er_t = o["cohorts"]["control"]["error_rate"], o["cohorts"]["treated"]["error_rate"]
    lines.append(
        f"| error rate | {_pct(er_c['value'])} {_ci(er_c['ci'])} | {_pct(er_t['value'])} {_ci(er_t['ci'])} |"
    )
    if result.get("notes"):
        lines += ["", "Notes:", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--holdout", type=float, default=0.5, help="control share of sessions (default 0.5)")
    parser.add_argument("--quick", action="store_true", help="a few traces only")
    parser.add_argument("--model", default=MODEL, help=f"model sent and priced (default {MODEL})")
    parser.add_argument("--config", type=Path, help="nocp config (its experiment section is replaced)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    if not 0 < args.holdout < 1:
        parser.error("--holdout must be between 0 and 1 (both cohorts need sessions)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    notes: list[str] = []
    scenarios = real_traces(
        notes, swe_limit=1 if args.quick else None, bfcl_per_set=10 if args.quick else None
    )
    if not scenarios:
        print("no traces found: " + "; ".join(notes), file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="nocp-holdout-") as tmp:
        result = asyncio.run(
            run_holdout(
                scenarios, holdout=args.holdout, folder=Path(tmp), model=args.model, config=args.config
            )
        )
    result["notes"] = notes
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = "holdout-quick" if args.quick else "holdout"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    report = markdown(result)
    (out / f"{stem}.md").write_text(report, "utf-8")
    print(report)
    print(f"written: {shown(out / f'{stem}.json')}, {shown(out / f'{stem}.md')}")
    return 1 if result["http_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
