"""Fidelity of tool-output compression on real agent data: savings and hard-token recall.

Run: ``nocp bench fidelity`` (or ``python -m proxy.bench.fidelity``, ``make bench-fidelity``).
Options: ``--quick`` (fewer BFCL entries), ``--out DIR``, ``--show-misses N``.

Every sample goes through the public :func:`compressors.compress` three times: with the
default :class:`~compressors.CompressionConfig`, and with two *lossy-forcing* configs (lower
thresholds, budgets of 300 and 600 tokens: :data:`LOSSY_CONFIG`, :data:`MODERATE_CONFIG`) so
the lossy compressors really run on outputs of these sizes (most are 200-2,500 tokens, under
the default lossy threshold). The overall line per config covers the tool outputs
(swe-agent, octokit, bfcl); bfcl-memory is reported on its own.

Samples (a tool output, the query and tool arguments that produced it, and what later turns
of the same episode did):

- **swe-agent** (``$NOCP_EVAL_DATA/swe-agent/*.traj``): each ``trajectory[k].observation``;
  query = the task (the last user message before the first assistant turn) + the thought
  of step ``k``; tool_args = the action;
  later = thoughts and actions of steps after ``k``. Files without a trajectory use the
  ``history``: ``role: "tool"`` messages, the assistant turn that called them, and the later
  assistant turns.
- **octokit** (``$NOCP_EVAL_DATA/octokit/*.json``): each recorded ``response``, as the
  pretty-printed JSON (indent 2) an API tool returns; query/tool_args = method and path; later
  = the method, path and body of the later requests of the same scenario.
- **bfcl** (the ``bfcl-eval`` package's data; skipped with a message if it is not installed;
  install it with ``pip install --no-deps bfcl-eval mpmath==1.3.0``: its own dependencies
  include torch and model clients that this benchmark does not use):
  multi-turn ``base`` and ``long_context`` entries replayed on the package's own pure-Python
  tool simulators with the ground-truth calls; each call's result is a sample; query = the
  turn's user message, tool_args = the call, later = the ground-truth calls after it.
  Also **bfcl-memory**: each memory scenario's prerequisite conversation as one long text,
  queried with each memory question; later = the ground-truth answer (and we also report
  whether an answer string survives: ``answer kept``).

Metrics per content type (the detector's verdict): samples, how many were changed and how
many lossily, token savings over all samples of the type, exact lossless round trip of JSON
(decoded with ``json.loads`` / the TOON decoder and compared type-strictly), and for lossy
outputs the hard-token recall (:mod:`compressors.hardtokens`):

- ``recall all``: of all hard tokens of the original, the share still in the output;
- ``recall later``: of the original's hard tokens that a *later* turn of the same episode uses,
  the share still in the output. Target: >= 99 %.
- ``values later`` (BFCL only): of the literal argument values of later ground-truth calls
  that occur in the original output (a ticker, a file name, an id), the share still in the
  output (substring test). Hard tokens miss some of these (``'NVDA'`` is a plain word).

Recalls are micro-averages (token counts summed over samples). The numbers are also written
to ``fidelity.json`` in ``--out`` (default ``./nocp-bench``; ``make bench-fidelity`` writes
``benchmarks/results/fidelity.json``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from compressors import CompressionConfig, CompressionContext, CompressionResult, compress
from compressors.hardtokens import hard_tokens
from compressors.toon import same_value, toon_decode
from proxy.bench._common import DEFAULT_OUT, checkout, shown
from proxy.bench.traces import BFCL_CLASSES, BFCL_SIM, bfcl_data_dir, eval_data_root, read_jsonl

DEFAULT_CONFIG = CompressionConfig()
# Lossy-forcing: the observations here are mostly 200-2,500 tokens, below the default lossy
# threshold (2,000); these make the lossy compressors run on them, at two budgets.
LOSSY_CONFIG = CompressionConfig(min_tokens=200, lossy_threshold_tokens=400, budget_tokens=300)
MODERATE_CONFIG = CompressionConfig(min_tokens=200, lossy_threshold_tokens=400, budget_tokens=600)
# bfcl-memory is a retrieval test over conversation text, not tool outputs: it is reported
# on its own and left out of the overall tool-output numbers.
NOT_TOOL_OUTPUT = frozenset({"bfcl-memory"})
TARGET_RECALL_LATER = 0.99
MODEL = "gpt-4o"


@dataclass(frozen=True)
class Sample:
    """One tool output with its query, the call that produced it and what came later."""

    source: str
    origin: str
    text: str
    query: str
    tool_args: str
    later: str
    tool_name: str | None = None
    answers: tuple[str, ...] = ()
    later_values: tuple[str, ...] = ()


# --- loading ------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type", "text") == "text"
        )
    return ""


def _task_of(history: list[dict[str, Any]]) -> str:
    """The task: the last user message before the first assistant turn (SWE-agent puts a
    demonstration in an earlier user message)."""
    task = ""
    for msg in history:
        if msg.get("role") == "assistant":
            break
        if msg.get("role") == "user":
            task = _text_of(msg.get("content"))
    return task


def _calls_of(msg: dict[str, Any]) -> str:
    calls = msg.get("tool_calls") or []
    return "\n".join(
        str((c.get("function") or {}).get("arguments", "")) for c in calls if isinstance(c, dict)
    )


def load_swe_agent(root: Path) -> Iterator[Sample]:
    for path in sorted((root / "swe-agent").glob("*.traj")):
        data = json.loads(path.read_text(encoding="utf-8"))
        history: list[dict[str, Any]] = data.get("history") or []
        task = _task_of(history)
        steps: list[dict[str, Any]] = data.get("trajectory") or []
        if steps:
            turns = [f"{s.get('thought', '')}\n{s.get('action', '')}" for s in steps]
            for k, step in enumerate(steps):
                yield Sample(
                    source="swe-agent",
                    origin=f"{path.name}#{k}",
                    text=str(step.get("observation") or ""),
                    query=f"{task}\n{step.get('thought', '')}",
                    tool_args=str(step.get("action", "")),
                    later="\n".join(turns[k + 1 :]),
                )
            continue
        assistant = [(i, m) for i, m in enumerate(history) if m.get("role") == "assistant"]
        for i, msg in enumerate(history):
            if msg.get("role") != "tool":
                continue
            before = [m for j, m in assistant if j < i]
            after = [m for j, m in assistant if j > i]
            caller = before[-1] if before else {}
            yield Sample(
                source="swe-agent",
                origin=f"{path.name}#h{i}",
                text=_text_of(msg.get("content")),
                query=f"{task}\n{_text_of(caller.get('content'))}",
                tool_args=_calls_of(caller),
                later="\n".join(f"{_text_of(m.get('content'))}\n{_calls_of(m)}" for m in after),
            )


def load_octokit(root: Path) -> Iterator[Sample]:
    for path in sorted((root / "octokit").glob("*.json")):
        exchanges: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        requests = [
            f"{str(e.get('method', '')).upper()} {e.get('path', '')}\n{json.dumps(e.get('body', ''))}"
            for e in exchanges
        ]
        for k, ex in enumerate(exchanges):
            response = ex.get("response")
            if response is None or isinstance(response, str):
                continue
            call = {"method": str(ex.get("method", "")).upper(), "path": ex.get("path", "")}
            yield Sample(
                source="octokit",
                origin=f"{path.name}#{k}",
                text=json.dumps(response, indent=2, ensure_ascii=False),
                query=f"{call['method']} {call['path']}",
                tool_args=json.dumps(call),
                later="\n".join(requests[k + 1 :]),
                tool_name="github_api",
            )


def _run_call(call: str, methods: dict[str, Any]) -> str:
    """Execute one ground-truth call like ``mv(source='a', destination='b')`` on the
    simulators, parsing it with :mod:`ast` (literal arguments only, no ``eval``)."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            return f"Error during execution: unsupported call {call!r}"
        fn = methods.get(node.func.id)
        if fn is None:
            return f"Error during execution: unknown function {node.func.id}"
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        result = fn(*args, **kwargs)
    except Exception as exc:  # the simulators report errors as text too
        return f"Error during execution: {exc}"
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


def _call_values(call: str) -> list[str]:
    """The literal argument values of a ground-truth call, as text (strings of 2+ characters
    and numbers): what a later call copies out of an earlier tool output."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError:
        return []
    if not isinstance(node, ast.Call):
        return []
    out: list[str] = []
    for arg in [*node.args, *(k.value for k in node.keywords)]:
        try:
            value = ast.literal_eval(arg)
        except ValueError:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, str) and len(item) >= 2:
                out.append(item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                out.append(str(item))
    return out


def load_bfcl(data: Path, limit: int | None, skipped: list[str]) -> Iterator[Sample]:
    answers_dir = data / "possible_answer"
    for category, long_context in (("multi_turn_base", False), ("multi_turn_long_context", True)):
        entries = read_jsonl(data / f"BFCL_v4_{category}.json")
        truth = {e["id"]: e["ground_truth"] for e in read_jsonl(answers_dir / f"BFCL_v4_{category}.json")}
        for entry in entries[:limit]:
            calls_by_turn: list[list[str]] = truth.get(entry["id"], [])
            methods: dict[str, Any] = {}
            random.seed(0)  # the simulators draw ids from `random`
            try:
                for cls_name in entry["involved_classes"]:
                    module = importlib.import_module(f"{BFCL_SIM}.{BFCL_CLASSES[cls_name]}")
                    instance = getattr(module, cls_name)()
                    if cls_name != "MathAPI":
                        config = json.loads(json.dumps(entry["initial_config"].get(cls_name, {})))
                        instance._load_scenario(config, long_context=long_context)
                    for name in dir(instance):
                        if not name.startswith("_") and callable(getattr(instance, name)):
                            methods[name] = getattr(instance, name)
            except (ImportError, KeyError) as exc:
                skipped.append(f"bfcl {entry['id']}: {type(exc).__name__}: {exc}")
                continue
            flat = [(t, c) for t, calls in enumerate(calls_by_turn) for c in calls]
            values = [_call_values(c) for _, c in flat]
            for n, (turn, call) in enumerate(flat):
                question = entry["question"][turn] if turn < len(entry["question"]) else []
                query = "\n".join(_text_of(m.get("content")) for m in question if isinstance(m, dict))
                yield Sample(
                    source="bfcl",
                    origin=f"{entry['id']}#{n}",
                    text=_run_call(call, methods),
                    query=query,
                    tool_args=call,
                    later="\n".join(c for _, c in flat[n + 1 :]),
                    tool_name=call.split("(", 1)[0],
                    later_values=tuple(dict.fromkeys(v for vs in values[n + 1 :] for v in vs)),
                )
    yield from _load_bfcl_memory(data, answers_dir)


def _load_bfcl_memory(data: Path, answers_dir: Path) -> Iterator[Sample]:
    prereq = data / "memory_prereq_conversation"
    documents: dict[str, str] = {}
    for path in sorted(prereq.glob("memory_*.json")):
        parts: list[str] = []
        for conv in read_jsonl(path):
            parts.append(f"## {conv.get('topic', conv.get('id', ''))}")
            for turn in conv.get("question", []):
                for msg in turn:
                    if isinstance(msg, dict) and msg.get("role") == "user":
                        parts.append(_text_of(msg.get("content")))
        documents[path.stem.removeprefix("memory_")] = "\n\n".join(parts)
    answers = {e["id"]: e.get("ground_truth", []) for e in read_jsonl(answers_dir / "BFCL_v4_memory.json")}
    for entry in read_jsonl(data / "BFCL_v4_memory.json"):
        doc = documents.get(entry.get("scenario", ""))
        if doc is None:
            continue
        question = "\n".join(
            _text_of(m.get("content")) for t in entry["question"] for m in t if isinstance(m, dict)
        )
        truth = [str(a) for a in answers.get(entry["id"], [])]
        yield Sample(
            source="bfcl-memory",
            origin=entry["id"],
            text=doc,
            query=question,
            tool_args=json.dumps({"query": question}),
            later="\n".join(truth),
            tool_name="memory_retrieve",
            answers=tuple(truth),
        )


# --- measuring ----------------------------------------------------------------------------


def _decode_lossless(result: CompressionResult) -> Any:
    if result.method in ("json-compact",):
        return json.loads(result.text)
    if result.method in ("json-toon", "ndjson-toon"):
        return toon_decode(result.text)
    if result.method == "ndjson-compact":
        return [json.loads(line) for line in result.text.splitlines() if line.strip()]
    raise ValueError(f"no decoder for lossless method {result.method!r}")


def _original_value(result: CompressionResult, text: str) -> Any:
    if result.method.startswith("ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


@dataclass
class Stats:
    """Sums for one (config, source, content type) cell."""

    samples: int = 0
    changed: int = 0
    lossy: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    lossless_checked: int = 0
    lossless_exact: int = 0
    hard_total: int = 0
    hard_kept: int = 0
    later_total: int = 0
    later_kept: int = 0
    lossy_samples_full_later: int = 0
    answers_total: int = 0
    answers_kept: int = 0
    values_total: int = 0
    values_kept: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    misses: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: Stats) -> None:
        for name in (
            "samples",
            "changed",
            "lossy",
            "tokens_before",
            "tokens_after",
            "lossless_checked",
            "lossless_exact",
            "hard_total",
            "hard_kept",
            "later_total",
            "later_kept",
            "lossy_samples_full_later",
            "answers_total",
            "answers_kept",
            "values_total",
            "values_kept",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for m, n in other.methods.items():
            self.methods[m] = self.methods.get(m, 0) + n
        self.seconds += other.seconds

    def summary(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "samples": self.samples,
            "changed": self.changed,
            "lossy": self.lossy,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "savings": ratio(self.tokens_before - self.tokens_after, self.tokens_before),
            "lossless_roundtrip_exact": ratio(self.lossless_exact, self.lossless_checked),
            "lossless_checked": self.lossless_checked,
            "recall_all": ratio(self.hard_kept, self.hard_total),
            "hard_tokens_all": self.hard_total,
            "recall_later": ratio(self.later_kept, self.later_total),
            "hard_tokens_later": self.later_total,
            "lossy_samples_full_later_recall": self.lossy_samples_full_later,
            "answer_kept": ratio(self.answers_kept, self.answers_total),
            "later_values_kept": ratio(self.values_kept, self.values_total),
            "later_values": self.values_total,
            "methods": dict(sorted(self.methods.items())),
            "seconds": round(self.seconds, 3),
        }


def measure(sample: Sample, cfg: CompressionConfig, keep_misses: int) -> tuple[str, Stats]:
    ctx = CompressionContext(
        model=MODEL, query=sample.query, tool_name=sample.tool_name, tool_args=sample.tool_args
    )
    start = time.perf_counter()
    result = compress(sample.text, ctx, cfg)
    st = Stats(samples=1, seconds=time.perf_counter() - start)
    st.tokens_before, st.tokens_after = result.tokens_before, result.tokens_after
    st.methods[result.method] = 1
    if not result.changed:
        return result.content_type.value, st
    st.changed = 1
    if result.lossless:
        if result.content_type.value in ("json", "ndjson"):
            st.lossless_checked = 1
            try:
                st.lossless_exact = int(
                    same_value(_decode_lossless(result), _original_value(result, sample.text))
                )
            except Exception:
                st.lossless_exact = 0
        return result.content_type.value, st
    st.lossy = 1
    orig = hard_tokens(sample.text)
    out = hard_tokens(result.text)
    later = orig & hard_tokens(sample.later)
    st.hard_total, st.hard_kept = len(orig), len(orig & out)
    st.later_total, st.later_kept = len(later), len(later & out)
    st.lossy_samples_full_later = int(later <= out)
    if sample.answers:
        st.answers_total = 1
        low = result.text.lower()
        st.answers_kept = int(any(a.lower() in low for a in sample.answers))
    present = [v for v in sample.later_values if v in sample.text]
    st.values_total = len(present)
    st.values_kept = sum(1 for v in present if v in result.text)
    missed = sorted(later - out)
    if missed and keep_misses:
        st.misses.append({"origin": sample.origin, "method": result.method, "missed": missed[:20]})
    return result.content_type.value, st


# --- reporting ----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_tables(console: Console, results: dict[str, dict[str, dict[str, Stats]]]) -> None:
    for cfg_name, by_source in results.items():
        table = Table(title=f"config: {cfg_name}", show_lines=False)
        for col in (
            "source",
            "type",
            "n",
            "changed",
            "lossy",
            "tok before",
            "tok after",
            "savings",
            "lossless RT",
            "recall all",
            "recall later",
            "answer kept",
            "values later",
        ):
            table.add_column(col, justify="left" if col in ("source", "type") else "right")
        for source, by_type in by_source.items():
            for ctype, st in sorted(by_type.items()):
                s = st.summary()
                later = s["recall_later"]
                style = "red" if later is not None and later < TARGET_RECALL_LATER else ""
                table.add_row(
                    source,
                    ctype,
                    str(s["samples"]),
                    str(s["changed"]),
                    str(s["lossy"]),
                    str(s["tokens_before"]),
                    str(s["tokens_after"]),
                    _pct(s["savings"]),
                    _pct(s["lossless_roundtrip_exact"]),
                    _pct(s["recall_all"]),
                    f"[{style}]{_pct(later)}[/{style}]" if style else _pct(later),
                    _pct(s["answer_kept"]),
                    _pct(s["later_values_kept"]),
                )
        console.print(table)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="only the first 20 BFCL entries per category")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder of fidelity.json (default ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--show-misses", type=int, default=10, help="print this many samples with lost tokens"
    )
    args = parser.parse_args(argv)
    console = Console(width=200)

    root = eval_data_root(checkout())
    if not root.is_dir():
        console.print(
            f"[red]evaluation data not found at {root}[/red] (set NOCP_EVAL_DATA to the eval-data folder)"
        )
        return 2
    samples: list[Sample] = [*load_swe_agent(root), *load_octokit(root)]
    notes: list[str] = []
    data = bfcl_data_dir()
    if data is None:
        notes.append("BFCL skipped: the bfcl-eval package is not installed (pip install --no-deps bfcl-eval)")
        console.print(f"[yellow]{notes[-1]}[/yellow]")
    else:
        samples.extend(load_bfcl(data, 20 if args.quick else None, notes))
        for line in _summarise_notes(notes):
            console.print(f"[yellow]skipped: {line}[/yellow]")

    configs = {"default": DEFAULT_CONFIG, "lossy-300": LOSSY_CONFIG, "lossy-600": MODERATE_CONFIG}
    results: dict[str, dict[str, dict[str, Stats]]] = {}
    misses: dict[str, list[dict[str, Any]]] = {}
    for cfg_name, cfg in configs.items():
        by_source: dict[str, dict[str, Stats]] = defaultdict(dict)
        misses[cfg_name] = []
        for sample in samples:
            ctype, st = measure(sample, cfg, args.show_misses)
            cell = by_source[sample.source].setdefault(ctype, Stats())
            cell.add(st)
            misses[cfg_name].extend({"source": sample.source, **m} for m in st.misses)
        results[cfg_name] = dict(by_source)

    print_tables(console, results)
    report: dict[str, Any] = {
        "target_recall_later": TARGET_RECALL_LATER,
        "model": MODEL,
        "configs": {name: json.loads(json.dumps(cfg, default=_cfg_json)) for name, cfg in configs.items()},
        "notes": _summarise_notes(notes),
        "results": {},
    }
    for cfg_name, by_source in results.items():
        overall = Stats()
        per: dict[str, Any] = {}
        for source, by_type in by_source.items():
            per[source] = {ctype: st.summary() for ctype, st in sorted(by_type.items())}
            if source not in NOT_TOOL_OUTPUT:
                for st in by_type.values():
                    overall.add(st)
        report["results"][cfg_name] = {
            "tool_outputs": overall.summary(),
            "by_source": per,
            "misses": misses[cfg_name][:200],
        }
        s = overall.summary()
        console.print(
            f"[bold]{cfg_name}[/bold] (tool outputs: {', '.join(sorted(set(by_source) - NOT_TOOL_OUTPUT))}): "
            f"{s['samples']} samples, savings {_pct(s['savings'])}, "
            f"lossless round trip {_pct(s['lossless_roundtrip_exact'])} of {s['lossless_checked']}, "
            f"lossy: {s['lossy']} outputs, recall all {_pct(s['recall_all'])}, "
            f"recall later {_pct(s['recall_later'])} of {s['hard_tokens_later']} (target "
            f"{_pct(TARGET_RECALL_LATER)}), {s['seconds']:.2f}s compressing"
        )
        for m in misses[cfg_name][: args.show_misses]:
            console.print(
                f"  lost later-used tokens in {m['source']} {m['origin']} ({m['method']}): {m['missed']}"
            )
    path = args.out / "fidelity.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    console.print(f"wrote {shown(path)}")
    return 0


def _summarise_notes(notes: list[str]) -> list[str]:
    """Skipped-entry notes grouped by reason, with a count and the first few entries."""
    by_reason: dict[str, list[str]] = {}
    for note in notes:
        where, _, reason = note.partition(": ")
        by_reason.setdefault(reason or where, []).append(where)
    return [
        f"{len(wheres)} x {reason}" + (f" ({', '.join(wheres[:3])}, ...)" if len(wheres) > 1 else "")
        for reason, wheres in by_reason.items()
    ]


def _cfg_json(obj: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(obj)


if __name__ == "__main__":
    sys.exit(main())
