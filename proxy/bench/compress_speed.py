"""How fast is tool-output compression? (issue 3, "Speed")

Builds one request of about 100K tokens holding 20 tool outputs from the real data in the
evaluation folder (``NOCP_EVAL_DATA`` or ``../shared/eval-data``): the recorded responses of
each octokit scenario as one pretty-printed JSON tool output, and the observations of each
SWE-agent trajectory as one text tool output; the 20 largest distinct ones are used.

Measured:

- **first time**: every output compressed with cold caches (the result cache, the token
  count cache and the compressors' memos of word stems and hard-token classifications
  cleared; the tokenizer tables already loaded). Target <= 20 ms.
- **again**: the same outputs compressed again, as on the next turn of the same agent (result
  cache warm). Target <= 2 ms.
- **token counting throughput** of ``o200k_base`` and ``cl100k_base`` over the same text,
  uncached, in MB/s (UTF-8 bytes).

Run: ``nocp bench compress-speed [--repeat N]`` (or ``python -m proxy.bench.compress_speed``,
``make bench-speed``). Only measured numbers are printed; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from compressors import (
    CompressionConfig,
    CompressionContext,
    CompressionResult,
    clear_cache,
    compress,
    tokens,
)
from proxy.bench._common import checkout
from proxy.bench.traces import eval_data_root

FIRST_TARGET_MS = 20.0
AGAIN_TARGET_MS = 2.0
OUTPUTS = 20


def tool_outputs(root: Path) -> list[tuple[str, str]]:
    """(label, text) of the 20 largest distinct tool outputs built from the eval data."""
    pool: dict[str, str] = {}
    for path in sorted((root / "octokit").glob("*.json")):
        requests = json.loads(path.read_text())
        text = json.dumps([r["response"] for r in requests], indent=2)
        pool.setdefault(text, f"octokit/{path.stem}")
    for path in sorted((root / "swe-agent").glob("*.traj")):
        trajectory = json.loads(path.read_text()).get("trajectory", [])
        text = "\n".join(step.get("observation") or "" for step in trajectory)
        if text.strip():
            pool.setdefault(text, f"swe-agent/{path.stem[:40]}")
    ranked = sorted(pool.items(), key=lambda item: (-len(item[0]), item[1]))[:OUTPUTS]
    return [(label, text) for text, label in ranked]


def compress_each(
    outputs: list[tuple[str, str]], ctx: CompressionContext, cfg: CompressionConfig
) -> tuple[list[float], list[CompressionResult]]:
    """Seconds spent on each output, and the results."""
    seconds: list[float] = []
    results: list[CompressionResult] = []
    for _, text in outputs:
        start = time.perf_counter()
        results.append(compress(text, ctx, cfg))
        seconds.append(time.perf_counter() - start)
    return seconds, results


def cold(outputs: list[tuple[str, str]], ctx: CompressionContext, cfg: CompressionConfig) -> list[float]:
    """Per-output seconds with the result and token-count caches (and the compressors'
    memos) emptied first."""
    clear_cache()
    tokens.clear_cache()
    return compress_each(outputs, ctx, cfg)[0]


def throughput(encoding: str, corpus: list[str], repeat: int) -> tuple[float, float, int, int]:
    """MB/s of uncached exact counting over ``corpus``: nocp's ``tokens.count`` (cache cleared
    before each pass) and plain tiktoken ``encode_ordinary``, side by side; and both totals."""
    enc = tokens.get_encoding(encoding)
    size = sum(len(t.encode("utf-8")) for t in corpus)
    best_ours = best_tiktoken = float("inf")
    ours = theirs = 0
    for _ in range(repeat):
        tokens.clear_cache()
        start = time.perf_counter()
        ours = sum(tokens.count(t, encoding) for t in corpus)
        best_ours = min(best_ours, time.perf_counter() - start)
        start = time.perf_counter()
        theirs = sum(len(enc.encode_ordinary(t)) for t in corpus)
        best_tiktoken = min(best_tiktoken, time.perf_counter() - start)
    return size / best_ours / 1e6, size / best_tiktoken / 1e6, ours, theirs


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions (default 7)")
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args(argv)

    root = eval_data_root(checkout())
    if not root.is_dir():
        print(f"evaluation data not found at {root} (set NOCP_EVAL_DATA)", file=sys.stderr)
        return 2
    outputs = tool_outputs(root)
    ctx = CompressionContext(model=args.model, query="fix the failing test")
    cfg = CompressionConfig()
    for name in ("o200k_base", "cl100k_base"):
        tokens.get_encoding(name)  # tables loaded: not part of any timing

    # One untimed pass imports and warms everything but the caches.
    cold(outputs, ctx, cfg)
    first_runs = [cold(outputs, ctx, cfg) for _ in range(args.repeat)]
    again_runs = [compress_each(outputs, ctx, cfg)[0] for _ in range(args.repeat)]
    first = [sum(run) for run in first_runs]
    again = [sum(run) for run in again_runs]
    per_output = [statistics.median(run[i] for run in first_runs) for i in range(len(outputs))]
    _, final = compress_each(outputs, ctx, cfg)
    results = [
        (label, result, per_output[i])
        for i, ((label, _), result) in enumerate(zip(outputs, final, strict=True))
    ]
    total_before = sum(r.tokens_before for _, r, _ in results)
    total_after = sum(r.tokens_after for _, r, _ in results)
    total_chars = sum(len(t) for _, t in outputs)

    print(
        f"request: {len(outputs)} tool outputs, {total_chars:,} chars, {total_before:,} tokens ({args.model})"
    )
    print()
    print(
        f"{'tool output':<48} {'type':<10} {'method':<24} {'before':>7} {'after':>7} {'cold ms':>8} (median)"
    )
    for label, result, seconds in results:
        print(
            f"{label:<48} {result.content_type.value:<10} {result.method:<24} "
            f"{result.tokens_before:>7} {result.tokens_after:>7} {seconds * 1000:>8.2f}"
        )
    print(f"{'total':<48} {'':<10} {'':<24} {total_before:>7} {total_after:>7}")
    print()
    print(f"{'by content type':<20} {'outputs':>8} {'tokens':>8} {'cold ms (sum of medians)':>26}")
    kinds: dict[str, list[tuple[CompressionResult, float]]] = {}
    for _, result, seconds in results:
        kinds.setdefault(result.content_type.value, []).append((result, seconds))
    for kind, rows in sorted(kinds.items()):
        print(
            f"{kind:<20} {len(rows):>8} {sum(r.tokens_before for r, _ in rows):>8} "
            f"{sum(sec for _, sec in rows) * 1000:>26.2f}"
        )
    print()
    print(f"{'measure':<44} {'median':>10} {'min':>10} {'target':>10} {'met':>5}")
    for name, runs, target in (
        ("first time (cold caches), ms", first, FIRST_TARGET_MS),
        ("same outputs again (warm cache), ms", again, AGAIN_TARGET_MS),
    ):
        median = statistics.median(runs) * 1000
        print(
            f"{name:<44} {median:>10.2f} {min(runs) * 1000:>10.2f} {target:>10.1f} "
            f"{'yes' if median <= target else 'no':>5}"
        )
    print()
    corpus = [t for _, t in outputs]
    title = f"token counting, uncached, best of {args.repeat}"
    print(f"{title:<44} {'nocp MB/s':>10} {'tiktoken':>10} {'tokens':>10} {'same':>5}")
    for name in ("o200k_base", "cl100k_base"):
        ours, theirs, n_ours, n_theirs = throughput(name, corpus, args.repeat)
        same = "yes" if n_ours == n_theirs else "NO"
        print(f"{name:<44} {ours:>10.2f} {theirs:>10.2f} {n_ours:>10,} {same:>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
