"""The output side: structured answers in TOON on the seed scenarios that ask for JSON.

    nocp bench output [--quick] [--out DIR]      # or python -m proxy.bench.output

Every JSON answer of the ``api`` and ``db`` seed scenarios (each request asks for it with a
``json_schema`` response format) is requested twice from the fake provider: directly (the
baseline: the fake answers the recorded JSON) and through nocp with ``output.toon_models``
(the fake answers the TOON of the recorded JSON value when nocp asks for TOON). Counted:
output tokens billed on both paths, the answers the client got that are exactly the recorded
JSON (type-strict), and the input tokens nocp's instruction adds. A second run makes 20% of the
TOON answers broken (they do not decode): nocp retries each with the client's request, and the
failed attempts' tokens are the retry cost. Compression stages are off in both runs, so the
input difference is the instruction alone. Chat Completions and Responses (``--quick``: small
sizes, chat only). Writes ``output.json`` to ``--out``.

The fake follows the instruction perfectly: how often a real model answers valid TOON is not
measured here (the holdout cohort measures it on real traffic).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import structlog
from aiohttp.test_utils import TestServer

from compressors.toon import same_value
from proxy.bench._common import DEFAULT_OUT, shown
from proxy.bench.protocols import PROTOCOLS
from proxy.bench.scenarios import SIZES, Scenario, seed_scenario

__all__ = ["BROKEN_SHARE", "TARGET_REDUCTION", "OutputTotals", "main", "measure"]

MODEL: Final = "gpt-4.1"
KINDS: Final = ("api", "db")
BROKEN_SHARE: Final = 0.2
TARGET_REDUCTION: Final = 0.30


@dataclass
class OutputTotals:
    """One scenario through one protocol, in one run."""

    scenario: str
    kind: str
    protocol: str
    broken_share: float
    answers: int = 0
    exact: int = 0  # client answers equal to the recorded JSON value (type-strict)
    baseline_output_tokens: int = 0
    nocp_output_tokens: int = 0  # every upstream call, failed attempts included
    baseline_input_tokens: int = 0
    nocp_input_tokens: int = 0
    instruction_input_tokens: int = 0  # nocp's first call minus the baseline's prompt
    retries: int = 0
    retry_overhead_tokens: int = 0  # from nocp's log: the failed attempts' prompt + completion
    logged_raw_output_tokens: int = 0
    logged_sent_output_tokens: int = 0
    formats: dict[str, int] = field(default_factory=dict)

    @property
    def reduction(self) -> float | None:
        """1 - nocp / baseline output tokens."""
        b = self.baseline_output_tokens
        return 1 - self.nocp_output_tokens / b if b else None


def _answer_text(protocol: str, body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    if protocol == "chat":
        content = ((body.get("choices") or [{}])[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None
    texts = [
        p.get("text")
        for item in body.get("output") or ()
        if item.get("type") == "message"
        for p in item.get("content") or ()
        if p.get("type") == "output_text"
    ]
    return "".join(t for t in texts if isinstance(t, str)) if texts else None


def _answers(sc: Scenario) -> list[tuple[int, int, Any]]:
    """(conversation index, message index, recorded JSON value) of each JSON text answer."""
    out = []
    for ci, conv in enumerate(sc.conversations):
        for end in conv.turns():
            msg = conv.messages[end]
            if isinstance(msg.get("content"), str) and not msg.get("tool_calls"):
                out.append((ci, end, json.loads(msg["content"])))
    return out


async def _run(
    scenarios: Sequence[Scenario], protocols: Sequence[str], broken_share: float, folder: Path, seed: int
) -> list[OutputTotals]:
    from proxy import create_app, load_settings
    from proxy.testing import FakeUpstream, Structured
    from proxy.translog import log_session_id

    rng = random.Random(f"nocp-bench:output:{seed}")
    results: list[OutputTotals] = []
    owners: dict[str, OutputTotals] = {}  # the log's session id -> its row
    pooled = [(p, sc.name, i) for p in protocols for sc in scenarios for i in range(len(_answers(sc)))]
    broken = set(rng.sample(pooled, round(broken_share * len(pooled))))
    async with FakeUpstream(models=(MODEL,)) as fake, aiohttp.ClientSession() as http:
        settings = load_settings(
            env={},
            overrides={
                "upstreams": [{"name": "fake", "base_url": fake.openai_base_url, "protocol": "openai"}],
                "log": {"dir": str(folder)},
                "stages": {"tool_output": False},
                "history": {"enabled": False},
                "retrieval": {"enabled": False},
                "output": {"toon_models": [MODEL]},
            },
        )
        server = TestServer(create_app(settings), host="127.0.0.1")
        await server.start_server()
        nocp_root = str(server.make_url("")).rstrip("/")
        try:
            for proto_name in protocols:
                proto = PROTOCOLS[proto_name]
                for sc in scenarios:
                    answers = _answers(sc)
                    t = OutputTotals(sc.name, sc.family, proto_name, broken_share)
                    base_prompt = 0
                    for i, (ci, end, value) in enumerate(answers):
                        conv = sc.conversations[ci]
                        data = json.dumps(proto.body(conv.body(end, MODEL)), ensure_ascii=False).encode()
                        session = f"output-{sc.name}-{proto_name}-{ci}-{i}"
                        owners[str(log_session_id(session))] = t
                        headers = {**proto.headers, "X-Session-Id": session}
                        for path_root, steps in (
                            (fake.url, (Structured(value),)),
                            (
                                nocp_root,
                                (Structured(value, "broken"), Structured(value))
                                if (proto_name, sc.name, i) in broken
                                else (Structured(value),),
                            ),
                        ):
                            used = len(fake.usage_log)
                            fake.script(*steps)
                            async with http.post(path_root + proto.path, data=data, headers=headers) as r:
                                status, body = r.status, await r.json(content_type=None)
                            fake._script.clear()
                            calls = fake.usage_log[used:]
                            out_tokens = sum(u.completion_tokens for u in calls)
                            in_tokens = sum(u.prompt_tokens for u in calls)
                            if path_root == fake.url:
                                t.baseline_output_tokens += out_tokens
                                t.baseline_input_tokens += in_tokens
                                base_prompt = in_tokens
                                continue
                            t.instruction_input_tokens += calls[0].prompt_tokens - base_prompt if calls else 0
                            t.answers += 1
                            t.nocp_output_tokens += out_tokens
                            t.nocp_input_tokens += in_tokens
                            t.retries += len(calls) - 1
                            text = _answer_text(proto_name, body) if status == 200 else None
                            try:
                                got = json.loads(text) if text is not None else None
                            except ValueError:
                                got = None
                            t.exact += got is not None and same_value(got, value)
                    results.append(t)
        finally:
            await server.close()
    log = settings.log.path
    lines = [json.loads(x) for x in log.read_text("utf-8").splitlines()] if log.is_file() else []
    for line in lines:
        found = owners.get(str(line.get("session_id")))
        if found is None:
            continue
        t = found
        fmt = str(line.get("serialization_format"))
        t.formats[fmt] = t.formats.get(fmt, 0) + 1
        t.logged_raw_output_tokens += line.get("raw_output_tokens") or 0
        t.logged_sent_output_tokens += line.get("optimized_output_tokens") or 0
        t.retry_overhead_tokens += line.get("compression_overhead_tokens") or 0
    return results


def measure(
    *, sizes: Sequence[str] = SIZES, protocols: Sequence[str] = ("chat", "responses"), seed: int = 0
) -> dict[str, Any]:
    """Both runs (all TOON answers valid; 20% broken); the JSON the report shows."""
    started = time.perf_counter()
    scenarios = [seed_scenario(kind, size, seed) for kind in KINDS for size in sizes]
    runs: dict[str, Any] = {}
    for name, share in (("toon", 0.0), ("broken_20", BROKEN_SHARE)):
        with tempfile.TemporaryDirectory(prefix="nocp-bench-output-") as tmp:
            rows = asyncio.run(_run(scenarios, protocols, share, Path(tmp), seed))
        runs[name] = {
            "broken_share": share,
            "rows": [{**asdict(r), "reduction": _r(r.reduction)} for r in rows],
            "by_kind": {kind: _sum([r for r in rows if r.kind == kind]) for kind in KINDS},
            "all": _sum(rows),
        }
    return {
        "model": MODEL,
        "sizes": list(sizes),
        "protocols": list(protocols),
        "target_reduction": TARGET_REDUCTION,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 2),
        "note": "The fake answers exactly the TOON asked for; real models' TOON compliance is not "
        "measured here (the holdout cohort measures it on real traffic)",
    }


def _r(x: float | None) -> float | None:
    return round(x, 4) if x is not None else None


def _sum(rows: Sequence[OutputTotals]) -> dict[str, Any]:
    keys = (
        "answers",
        "exact",
        "baseline_output_tokens",
        "nocp_output_tokens",
        "baseline_input_tokens",
        "nocp_input_tokens",
        "instruction_input_tokens",
        "retries",
        "retry_overhead_tokens",
        "logged_raw_output_tokens",
        "logged_sent_output_tokens",
    )
    total = {k: sum(getattr(r, k) for r in rows) for k in keys}
    b = total["baseline_output_tokens"]
    total["reduction"] = _r(1 - total["nocp_output_tokens"] / b) if b else None
    total["exact_share"] = _r(total["exact"] / total["answers"]) if total["answers"] else None
    return total


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The measurement in a few lines (the console and the suite's report use them)."""
    lines = []
    for run in result["runs"].values():
        label = (
            "all TOON answers valid" if not run["broken_share"] else f"{run['broken_share']:.0%} broken TOON"
        )
        for kind, t in run["by_kind"].items():
            if t["reduction"] is None:
                lines.append(f"{label}, {kind}: no answers")
                continue
            instruction = t["instruction_input_tokens"]
            lines.append(
                f"{label}, {kind}: output tokens {t['baseline_output_tokens']} -> {t['nocp_output_tokens']} "
                f"({t['reduction']:.1%} reduction); {t['exact']}/{t['answers']} answers exactly the recorded "
                f"JSON; {t['retries']} retries costing {t['retry_overhead_tokens']} tokens; instruction "
                f"+{instruction} input tokens"
            )
    return lines


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder of output.json (default ./{DEFAULT_OUT})"
    )
    parser.add_argument("--quick", action="store_true", help="small scenarios, Chat Completions only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenarios and of the broken answers")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = measure(
        sizes=("small",) if args.quick else SIZES,
        protocols=("chat",) if args.quick else ("chat", "responses"),
        seed=args.seed,
    )
    for line in summary_lines(result):
        print(line)
    path = args.out / ("output-quick.json" if args.quick else "output.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {shown(path)}", file=sys.stderr)
    ok = all(
        t["exact"] == t["answers"] and (t["reduction"] or 0) >= TARGET_REDUCTION
        for t in result["runs"]["toon"]["by_kind"].values()
    )
    return 0 if ok else 2


if __name__ == "__main__":
    raise SystemExit(main())
