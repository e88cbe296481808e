"""``nocp bench``: run the benchmark suite and write its report; ``nocp bench NAME``: one of the
other benchmarks.

    nocp bench                 # everything: seed scenarios, real traces, overhead vs LiteLLM
    nocp bench --quick         # small sizes, a few traces, overhead without the peer (CI)
    nocp bench --no-peer --out /tmp/bench --scenarios 'db-*,bfcl-*'
    nocp bench --protocols messages --no-overhead   # Anthropic Messages replays only
    nocp bench --out benchmarks/results --update-readme README.md   # what `make bench` runs
    nocp bench retrieval --out /tmp/bench           # one benchmark (its options after its name)

Each scenario is replayed through every protocol of ``--protocols`` (default all three: Chat
Completions, Responses, Anthropic Messages with and without the client's own cache
breakpoints); ``--quick`` replays everything through chat and one small seed scenario and one
trace through each other protocol.

All benchmark code lives in the installed package (``proxy.bench``), so ``nocp bench`` works from
a wheel: the seed scenarios and the overhead comparison need nothing else; the SWE-agent traces
need the evaluation data (``$NOCP_EVAL_DATA`` or ``../shared/eval-data``), the BFCL traces the
``bfcl-eval`` package, the charts ``matplotlib``, the LiteLLM peer a pip install into its own
virtual environment (``--peer-venv``); whatever is missing is skipped with a note in the report.

The results (``bench.json``, ``bench.md``, ``bench-*.png``; ``bench-quick.*`` with ``--quick``)
go to ``--out``, by default ``./nocp-bench`` in the current directory. Nothing is written into
the source tree unless asked: ``make bench`` passes ``--out benchmarks/results`` and
``--update-readme README.md`` (the headline block between the README's ``bench:start`` and
``bench:end`` markers).

The other benchmarks (:data:`BENCHMARKS`) are modules of this package, each also runnable as
``python -m proxy.bench.NAME``; they write ``NAME.json`` to their own ``--out`` (same default).
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proxy.bench._common import DEFAULT_OUT, checkout, default_peer_venv, git
from proxy.bench.protocols import DEFAULT_ANTHROPIC_MODEL, DEFAULT_PROTOCOLS

__all__ = ["BENCHMARKS", "add_cli", "run"]

DEFAULT_MODEL = "gpt-4.1"
QUICK = {"swe_limit": 1, "bfcl_per_set": 2}
FULL = {"swe_limit": None, "bfcl_per_set": None}
# --quick: what the protocols other than chat replay (first found of each list)
QUICK_SEED = ("api-small",)
QUICK_TRACE = ("swe-agent-fc", "bfcl-base")
# ``nocp bench NAME``: the module of proxy.bench that runs it, and what it measures
BENCHMARKS: dict[str, tuple[str, str]] = {
    "overhead": ("proxy.bench.overhead", "added latency / RSS of the proxy vs direct and vs LiteLLM"),
    "fidelity": ("proxy.bench.fidelity", "compression savings and hard-token recall on the eval data"),
    "compress-speed": ("proxy.bench.compress_speed", "compression and token-counting speed"),
    "history": ("proxy.bench.history", "history roll-up: fact retention, prefix stability"),
    "retrieval": ("proxy.bench.retrieval", "reversible compression: omitted hard tokens recoverable"),
    "hardening": ("proxy.bench.hardening", "small requests under floods of 30 MB requests; Redis paused"),
    "ablation": ("proxy.bench.ablation", "real agent traces: cost saved per feature, at 3 cached discounts"),
    "holdout": ("proxy.bench.holdout", "holdout run on the real traces: both cohorts, the measured saving"),
    "output": ("proxy.bench.output", "structured answers in TOON: output tokens, exact decodes, retry cost"),
    "policy": ("proxy.bench.policy", "learned compression policy vs fixed arms, simulated retrievals"),
}


def add_cli(sub: Any) -> None:
    """Add ``bench`` (and ``bench NAME`` for each of :data:`BENCHMARKS`) to the ``nocp`` sub-commands."""
    p = sub.add_parser(
        "bench",
        help="benchmark suite: baseline vs nocp on seed scenarios and real traces (or one benchmark)",
        description="Without NAME: the benchmark suite (baseline vs nocp on seed scenarios and real "
        "traces, overhead vs LiteLLM). With NAME: that benchmark, given the arguments after it "
        "(nocp bench NAME --help).",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, a few traces, no peer (under a minute)")
    p.add_argument("--no-peer", action="store_true", help="overhead benchmark without the LiteLLM peer")
    p.add_argument("--no-overhead", action="store_true", help="skip the overhead benchmark")
    p.add_argument("--no-traces", action="store_true", help="seed scenarios only")
    p.add_argument(
        "--scenarios", help="comma-separated globs of scenario names to run (e.g. 'rag-*,bfcl-base')"
    )
    p.add_argument(
        "--protocols",
        default=",".join(DEFAULT_PROTOCOLS),
        help="comma-separated protocols to replay through: chat, responses, messages (with "
        "messages-own-cache) (default: all)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model of chat and Responses, sent and priced (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--anthropic-model",
        default=DEFAULT_ANTHROPIC_MODEL,
        help=f"model of Anthropic Messages, sent and priced (default {DEFAULT_ANTHROPIC_MODEL})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generated scenarios (default 0)")
    p.add_argument("--bfcl", type=int, help="BFCL entries per set (default: all 200; quick 2)")
    p.add_argument("--config", type=Path, help="nocp config for the proxy under test (stages, pricing)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument(
        "--update-readme",
        type=Path,
        metavar="README",
        help="write the headline block between this file's bench:start/bench:end markers "
        "(full runs only; make bench passes README.md)",
    )
    p.add_argument(
        "--peer-venv",
        type=Path,
        help=f"virtual environment of the LiteLLM peer, made once and reused (default {default_peer_venv()})",
    )
    p.set_defaults(func=run, benchmark=None)
    names = p.add_subparsers(dest="benchmark", metavar="[NAME]", title="one benchmark instead of the suite")
    for name, (_, what) in BENCHMARKS.items():
        # prefix_chars no argument uses: everything after NAME (--help too) goes to the benchmark
        one = names.add_parser(name, help=what, add_help=False, prefix_chars="\0")
        one.add_argument("argv", nargs="*")


def _git(root: Path | None) -> dict[str, Any]:
    if root is None:
        return {}
    return {
        "head": git(root, "rev-parse", "HEAD") or None,
        "dirty": bool(git(root, "status", "--porcelain", "--", "proxy", "compressors")),
    }


def _scenarios(args: argparse.Namespace, root: Path | None, notes: list[str]) -> list[Any]:
    from proxy.bench.scenarios import SIZES, seed_scenarios
    from proxy.bench.traces import bfcl_data_dir, bfcl_scenarios, eval_data_root, swe_agent_scenarios

    plan = QUICK if args.quick else FULL
    scenarios: list[Any] = list(seed_scenarios(("small",) if args.quick else SIZES, args.seed))
    if not args.no_traces:
        eval_root = eval_data_root(root)
        if (eval_root / "swe-agent").is_dir():
            scenarios += swe_agent_scenarios(eval_root, limit=plan["swe_limit"])
        else:
            notes.append(
                f"SWE-agent traces skipped: {eval_root / 'swe-agent'} not found (set NOCP_EVAL_DATA)"
            )
        data = bfcl_data_dir()
        if data is None:
            notes.append("BFCL traces skipped: the bfcl-eval package is not installed")
        else:
            per_set = args.bfcl if args.bfcl is not None else plan["bfcl_per_set"]
            scenarios += list(bfcl_scenarios(data, per_set=per_set, notes=notes))
    if args.scenarios:
        globs = [g.strip() for g in args.scenarios.split(",") if g.strip()]
        scenarios = [s for s in scenarios if any(fnmatch.fnmatchcase(s.name, g) for g in globs)]
    return scenarios


def _jobs(
    args: argparse.Namespace, scenarios: Sequence[Any], protocols: Sequence[str]
) -> list[tuple[str, Any]]:
    """(protocol, scenario) pairs to run: every scenario through every protocol; with
    ``--quick``, the protocols other than chat get one small seed scenario and one trace."""
    jobs: list[tuple[str, Any]] = []
    for proto in protocols:
        if proto == "chat" or not args.quick:
            jobs += [(proto, s) for s in scenarios]
            continue
        for names, kind in ((QUICK_SEED, "seed"), (QUICK_TRACE, "trace")):
            own = [s for s in scenarios if s.kind == kind]
            pick = next((s for n in names for s in own if s.name == n), own[0] if own else None)
            if pick is not None:
                jobs.append((proto, pick))
    return jobs


def _overhead(args: argparse.Namespace, out: Path, notes: list[str]) -> dict[str, Any] | None:
    """Run :mod:`proxy.bench.overhead` (with the LiteLLM peer unless told otherwise); its JSON."""
    if args.no_overhead:
        notes.append("overhead benchmark skipped (--no-overhead)")
        return None
    path = out / ("overhead-quick.json" if args.quick else "overhead.json")
    argv = [sys.executable, "-m", "proxy.bench.overhead", "--out", str(out)]
    if args.quick:
        argv.append("--quick")
    elif args.no_peer:
        argv.append("--no-peer")
    if args.peer_venv is not None:
        argv += ["--peer-venv", str(args.peer_venv)]
    print(f"\n== overhead: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    code = subprocess.run(argv, check=False).returncode
    if code != 0 or not path.is_file():
        notes.append(f"overhead benchmark failed (exit code {code})")
        return None
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    peer = data.get("peer") or {}
    if peer.get("status") != "measured":
        notes.append(f"LiteLLM peer not measured: {peer.get('reason')}")
    return data


def _output_side(
    args: argparse.Namespace, protocols: Sequence[str], notes: list[str]
) -> dict[str, Any] | None:
    """Run :mod:`proxy.bench.output` in this process (small sizes with ``--quick``) through the
    protocols of ``protocols`` that ask for structured output; its JSON."""
    from proxy.bench import output
    from proxy.bench.scenarios import SIZES

    chosen = [p for p in ("chat", "responses") if p in protocols]
    if not chosen:
        notes.append("output side not measured: no Chat Completions or Responses replay selected")
        return None
    print("\n== output side: structured answers in TOON", file=sys.stderr, flush=True)
    return output.measure(sizes=("small",) if args.quick else SIZES, protocols=chosen, seed=args.seed)


def _progress(total: int, tty: bool) -> tuple[Callable[[str, int], None], Callable[[Any], None], Any]:
    """(per-request callback, per-scenario callback, context manager) for the progress display."""
    if tty:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        overall = bar.add_task("all requests", total=total)
        tasks: dict[str, Any] = {}
        last: dict[str, int] = {}

        def step(name: str, n: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=None)
            bar.update(tasks[name], completed=n)
            bar.advance(overall, n - last.get(name, 0))
            last[name] = n

        def done(result: Any) -> None:
            task = tasks.get(result.name)
            if task is not None:
                bar.update(task, total=result.scenario.requests, completed=result.scenario.requests)

        return step, done, bar
    started = time.perf_counter()
    count = {"scenarios": 0}

    def plain_done(result: Any) -> None:
        count["scenarios"] += 1
        b, n = result.base, result.nocp
        saved = 1 - n.prompt_tokens / b.prompt_tokens if b.prompt_tokens else 0.0
        print(
            f"[{time.perf_counter() - started:6.1f}s] {result.name}: "
            f"{result.scenario.requests} requests, "
            f"input {b.prompt_tokens} -> {n.prompt_tokens} tokens ({saved:.1%} saved), {result.seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )

    class _Null:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    return (lambda name, n: None), plain_done, _Null()


def run(args: argparse.Namespace) -> int:
    """``nocp bench NAME``: that benchmark's ``main``; ``nocp bench``: the suite."""
    if args.benchmark is not None:
        module = importlib.import_module(BENCHMARKS[args.benchmark][0])
        return int(module.main(args.argv, prog=f"nocp bench {args.benchmark}"))
    return run_suite_command(args)


def run_suite_command(args: argparse.Namespace) -> int:
    """``nocp bench``: measure, then write the JSON, the Markdown report, the charts (and the
    README's headline block when asked)."""
    from proxy.bench import report
    from proxy.bench.protocols import PROTOCOLS, expand
    from proxy.bench.runner import proxy_settings, run_suite
    from proxy.exceptions import ConfigError
    from proxy.pricing import PriceTable

    started = time.perf_counter()
    if args.update_readme is not None and args.quick:
        print("nocp bench: --update-readme needs a full run (not --quick)", file=sys.stderr)
        return 2
    if args.update_readme is not None and not args.update_readme.is_file():
        print(f"nocp bench: --update-readme: {args.update_readme} not found", file=sys.stderr)
        return 2
    root = checkout()  # read only: the git state of the run, the eval data beside it
    out: Path = args.out
    notes: list[str] = []
    try:
        prices = PriceTable.from_config(proxy_settings(args.config).pricing)
    except ConfigError as exc:
        print(f"nocp bench: {exc}", file=sys.stderr)
        return 2
    try:
        protocols = expand(args.protocols.split(","))
    except ValueError as exc:
        print(f"nocp bench: {exc}", file=sys.stderr)
        return 2
    if not protocols:
        print("nocp bench: no protocol selected", file=sys.stderr)
        return 2
    for proto in protocols:
        model = args.anthropic_model if PROTOCOLS[proto].family == "anthropic" else args.model
        if prices.lookup(model) is None:
            print(f"nocp bench: no price for model {model!r} (add it under pricing.models)", file=sys.stderr)
            return 2
    scenarios = _scenarios(args, root, notes)
    if not scenarios:
        print("nocp bench: no scenario selected", file=sys.stderr)
        return 2
    jobs = _jobs(args, scenarios, protocols)
    total = sum(s.requests for _, s in jobs)
    out.mkdir(parents=True, exist_ok=True)
    tty = sys.stderr.isatty()
    print(
        f"nocp bench: {len(scenarios)} scenarios through {', '.join(protocols)}: {len(jobs)} runs, "
        f"{total} requests, each sent twice (baseline and nocp); model {args.model}"
        + (f", Messages {args.anthropic_model}" if any(p.startswith("messages") for p in protocols) else ""),
        file=sys.stderr,
        flush=True,
    )
    for note in notes:
        print(f"  note: {note}", file=sys.stderr)
    step, done, display = _progress(total, tty)
    with tempfile.TemporaryDirectory(prefix="nocp-bench-") as tmp, display:
        suite = asyncio.run(
            run_suite(
                scenarios,
                model=args.model,
                prices=prices,
                folder=Path(tmp),
                config=args.config,
                progress=step,
                scenario_done=done,
                anthropic_model=args.anthropic_model,
                jobs=jobs,
            )
        )
    errors = sum(r.base.errors + r.nocp.errors for r in suite.results)
    if errors:
        notes.append(f"{errors} requests failed (see errors per scenario)")
    overhead = _overhead(args, out, notes)
    output = _output_side(args, protocols, notes)
    result = report.build_result(
        suite,
        quick=args.quick,
        seed=args.seed,
        duration_s=time.perf_counter() - started,
        overhead=overhead,
        notes=notes,
        git=_git(root),
        output=output,
    )
    policy = out / "policy.json"  # nocp bench policy's result, shown when run into the same folder
    if policy.is_file():
        result["learned_policy"] = json.loads(policy.read_text("utf-8"))
    stem = "bench-quick" if args.quick else "bench"
    charts, why = report.write_charts(result, out, prefix=stem)
    if why:
        result["notes"].append(why)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    (out / f"{stem}.md").write_text(report.markdown_report(result, charts), "utf-8")
    print(file=sys.stderr)
    report.console_summary(result, rich=sys.stdout.isatty())
    if output is not None:
        from proxy.bench.output import summary_lines

        print("\n".join(["output side:", *summary_lines(output)]))
    written = [out / f"{stem}.json", out / f"{stem}.md", *(out / f for f in charts.values())]
    readme: Path | None = args.update_readme
    if readme is not None:
        # the report as the README links it: relative to the README's folder
        link = Path(os.path.relpath((out / f"{stem}.md").resolve(), readme.resolve().parent)).as_posix()
        if report.update_readme(readme, report.readme_block(result, link)):
            written.append(readme)
    print("written: " + ", ".join(str(p) for p in written))
    return 1 if errors else 0
