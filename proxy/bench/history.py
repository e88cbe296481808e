"""History roll-up quality: fact retention and prefix stability on replayed conversations.

Run: ``nocp bench history`` (or ``python -m proxy.bench.history``, ``make bench-history``).
Options: ``--threshold N`` (tokens; default 4000), ``--keep-last N`` (6), ``--cut-step N`` (2000),
``--out DIR``, ``--show-misses N``.

The real :class:`proxy.stages.HistoryStage` runs on each request, with a real SQLite session
store (in a temporary folder) and the extractive summarizer (deterministic, no network); the
OpenAI adapter writes the roll-up back, exactly as the proxy does. The threshold is low so
that roll-ups really happen on conversations of these sizes (the default is 60% of the model's
context window).

Conversations:

- **swe-agent** (``$NOCP_EVAL_DATA/swe-agent/*.traj``): ``history`` is an OpenAI-style
  message list; request k is the history up to the k-th assistant turn, one session per file.
- **bfcl-memory** (the ``bfcl-eval`` package's ``BFCL_v4_memory`` set; skipped with a message
  if it is not installed): each scenario's prerequisite conversations as one chat (every user
  message answered by a short assistant acknowledgement), then each memory question.

Metrics:

- **fact retention** (swe-agent): for every request with a roll-up, the hard facts of the
  summarized turns (:mod:`compressors.hardtokens`; paths, numbers, ids (ids and UUIDs),
  URLs, error codes; identifiers are reported but not targeted) and the commands the
  assistant ran in them, and the share still present in what is sent. A hard fact counts as
  present when the sent prompt holds the same hard token; a command when the sent prompt holds
  its text: a tool call's ``command`` argument (first line, up to 120 characters), else its
  name and the first line (up to 60 characters) of each scalar argument; the first line of a
  fenced or ``<command>`` block in the assistant's text. Micro-averaged over requests.
  Target: >= 95% for each kind.
- **answer retention** (bfcl-memory): of the memory questions whose known answer is in the
  conversation, the share whose answer (any of the accepted strings, as a whole word, any case)
  is still in the prompt sent with the question; also only over answers that sat in the
  summarized part.
- **prefix stability**: the share of requests whose sent messages start with exactly the
  previous request's sent messages; requests at a cut step (a new roll-up) are counted apart.
  Target: every request but those at a cut step.
- **tokens**: raw vs sent prompt tokens, the prefix-cache share of them that an OpenAI-style
  cache (1024-token minimum, 128-token blocks; ``proxy.testing.PrefixCache``) would give, with
  and without the roll-up, and the ratio of billed input (sent / raw) when a cached token
  costs 50% or 10% of a fresh one: a roll-up that breaks the cache too often costs more.

Everything is also written to ``history.json`` in ``--out`` (default ``./nocp-bench``;
``make bench-history`` writes ``benchmarks/results/history.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from compressors import tokens
from compressors.hardtokens import hard_tokens, hard_tokens_by_kind
from proxy.bench._common import DEFAULT_OUT, checkout, shown
from proxy.bench.traces import bfcl_data_dir, eval_data_root
from proxy.config import HistoryConfig
from proxy.pipeline import StageContext
from proxy.protocols import OpenAIChatAdapter
from proxy.sessions import SQLiteSessionStore
from proxy.stages import HistoryStage
from proxy.summarizer import ExtractiveSummarizer
from proxy.testing import PrefixCache
from proxy.translog import TransactionLog

MODEL = "gpt-4o"
TARGET = 0.95
KINDS = ("path", "command", "number", "id", "url", "error_code", "identifier")
TARGET_KINDS = ("path", "command", "number", "id")
ADAPTER = OpenAIChatAdapter()
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_COMMAND_TAG = re.compile(r"<command>\s*(.*?)</command>", re.DOTALL)
_ACK = "Noted."
_SYSTEM = "You are a helpful assistant. Remember what the user tells you about themselves."


# ------------------------------------------------------------------------------ replay


@dataclass
class Sent:
    """One replayed request: what the client sent and what went upstream."""

    raw: list[dict[str, Any]]
    sent: list[dict[str, Any]]
    rollup: tuple[int, int] | None
    new_cut: bool


@dataclass
class Replayer:
    """The history stage with its own SQLite store, driven like the proxy drives it."""

    config: HistoryConfig
    folder: Path
    stage: HistoryStage = field(init=False)

    def __post_init__(self) -> None:
        store = SQLiteSessionStore(self.folder / "sessions.sqlite3", ttl_s=3600)
        self.stage = HistoryStage(self.config, store, ExtractiveSummarizer())

    async def send(self, session: str, messages: list[dict[str, Any]]) -> Sent:
        body: dict[str, Any] = {"model": MODEL, "messages": copy.deepcopy(messages)}
        before = ADAPTER.prompt(body)
        record = TransactionLog(session_id=session, protocol="openai", model=MODEL)
        ctx = StageContext(model=MODEL, protocol="openai", record=record)
        after = await self.stage(before, ctx)
        ADAPTER.apply(body, before, after)
        r = after.rollup
        new_cut = any(s.method.startswith("history_rollup:") for s in record.segments)
        return Sent(messages, body["messages"], (r.start, r.end) if r else None, new_cut)

    async def aclose(self) -> None:
        await self.stage.aclose()


# ------------------------------------------------------------------------------ facts


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


def message_texts(msg: dict[str, Any]) -> Iterator[str]:
    content = msg.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        yield str(fn.get("name", ""))
        yield str(fn.get("arguments", ""))


def commands(msg: dict[str, Any]) -> list[tuple[str, ...]]:
    """The commands an assistant message ran, each as the strings that must all be sent."""
    if msg.get("role") != "assistant":
        return []
    out: list[tuple[str, ...]] = []
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        name = str(fn.get("name", ""))
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {}
        if isinstance(args, dict) and isinstance(args.get("command"), str) and args["command"].strip():
            out.append((_first_line(args["command"])[:120],))
        elif isinstance(args, dict):
            values = [_first_line(str(v))[:60] for v in args.values() if isinstance(v, str | int | float)]
            out.append((name, *(v for v in values if v)))
    text = msg.get("content") if isinstance(msg.get("content"), str) else ""
    for pattern in (_FENCE, _COMMAND_TAG):
        for m in pattern.finditer(text or ""):
            line = _first_line(m.group(1))[:120]
            if line:
                out.append((line,))
    return out


def facts(messages: Iterable[dict[str, Any]]) -> dict[str, set[Any]]:
    out: dict[str, set[Any]] = {k: set() for k in KINDS}
    for msg in messages:
        for text in message_texts(msg):
            by_kind = hard_tokens_by_kind(text)
            out["path"] |= by_kind["path"]
            out["number"] |= by_kind["number"]
            out["id"] |= by_kind["id"] | by_kind["uuid"]
            out["url"] |= by_kind["url"]
            out["error_code"] |= by_kind["error_code"]
            out["identifier"] |= by_kind["identifier"]
        out["command"].update(commands(msg))
    return out


def sent_text(messages: Iterable[dict[str, Any]]) -> str:
    return "\n".join(t for m in messages for t in message_texts(m))


@dataclass
class Retention:
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kept: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    misses: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, summarized: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
        text = sent_text(sent)
        flat = " ".join(text.split())
        present = hard_tokens(text)
        for kind, values in facts(summarized).items():
            for value in sorted(values, key=str):
                ok = all(part in flat for part in value) if kind == "command" else value in present
                self.total[kind] += 1
                self.kept[kind] += ok
                if not ok and len(self.misses[kind]) < 200:
                    self.misses[kind].append(" | ".join(value) if kind == "command" else value)

    def share(self, kind: str) -> float | None:
        return self.kept[kind] / self.total[kind] if self.total[kind] else None


@dataclass
class Stability:
    requests: int = 0
    compared: int = 0
    stable: int = 0
    cut_steps: int = 0
    unstable_other: int = 0
    rolled: int = 0

    def add(self, prev: Sent | None, cur: Sent) -> None:
        self.requests += 1
        self.rolled += cur.rollup is not None
        if prev is None:
            return
        self.compared += 1
        same = cur.sent[: len(prev.sent)] == prev.sent
        self.stable += same
        if cur.new_cut:
            self.cut_steps += 1
        elif not same:
            self.unstable_other += 1


@dataclass
class TokenStats:
    raw: int = 0
    sent: int = 0
    cached_raw: int = 0
    cached_sent: int = 0
    cache_raw: PrefixCache = field(default_factory=PrefixCache)
    cache_sent: PrefixCache = field(default_factory=PrefixCache)

    def add(self, session: str, cur: Sent) -> None:
        raw_ids, sent_ids = _ids(cur.raw), _ids(cur.sent)
        self.raw += len(raw_ids)
        self.sent += len(sent_ids)
        self.cached_raw += self.cache_raw.lookup_and_store(session, raw_ids)
        self.cached_sent += self.cache_sent.lookup_and_store(session, sent_ids)

    def billed(self, cached_price: float, *, sent: bool) -> float:
        """Input tokens billed when a cached token costs ``cached_price`` of a fresh one."""
        total, cached = (self.sent, self.cached_sent) if sent else (self.raw, self.cached_raw)
        return total - cached + cached * cached_price


def _ids(messages: list[dict[str, Any]]) -> list[int]:
    enc = tokens.get_encoding(tokens.encoding_for_model(MODEL))
    out: list[int] = []
    for m in messages:
        out.extend(enc.encode_ordinary(f"<|{m.get('role')}|>"))
        for t in message_texts(m):
            out.extend(enc.encode_ordinary(t))
    return out


# ------------------------------------------------------------------------------ sources


def _clean(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg["role"], "content": msg.get("content") or ""}
    if msg.get("tool_calls"):
        out["tool_calls"] = [
            {"id": c.get("id"), "type": "function", "function": c.get("function")} for c in msg["tool_calls"]
        ]
        if not out["content"]:
            out["content"] = None
    if msg["role"] == "tool":
        ids = msg.get("tool_call_ids") or [msg.get("tool_call_id")]
        out["tool_call_id"] = ids[0]
    return out


def swe_conversations(root: Path) -> Iterator[tuple[str, list[dict[str, Any]], list[int]]]:
    """(name, messages, request ends): request k sends messages[:ends[k]]."""
    for path in sorted((root / "swe-agent").glob("*.traj")):
        history = [_clean(m) for m in json.loads(path.read_text())["history"]]
        ends = [i for i, m in enumerate(history) if m["role"] == "assistant"]
        yield path.stem, history, ends


def bfcl_scenarios(data: Path) -> Iterator[tuple[str, list[dict[str, Any]], list[tuple[str, list[str]]]]]:
    """(scenario, conversation, [(question, accepted answers)])."""
    questions = [json.loads(x) for x in (data / "BFCL_v4_memory.json").read_text().splitlines() if x]
    answers = {
        d["id"]: d["ground_truth"]
        for d in (
            json.loads(x)
            for x in (data / "possible_answer" / "BFCL_v4_memory.json").read_text().splitlines()
            if x
        )
    }
    for path in sorted((data / "memory_prereq_conversation").glob("memory_*.json")):
        scenario = path.stem.removeprefix("memory_")
        conv: list[dict[str, Any]] = [{"role": "system", "content": _SYSTEM}]
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            for turn in json.loads(line)["question"]:
                for msg in turn:
                    if msg.get("role") == "user":
                        conv.append({"role": "user", "content": msg["content"]})
                        conv.append({"role": "assistant", "content": _ACK})
        qs = [
            (q["question"][0][0]["content"], answers[q["id"]])
            for q in questions
            if q.get("scenario") == scenario and q["id"] in answers
        ]
        yield scenario, conv, qs


def _has_answer(text: str, accepted: list[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", text, re.IGNORECASE) for a in accepted)


# ------------------------------------------------------------------------------ runs


async def run_swe(root: Path, config: HistoryConfig, folder: Path) -> dict[str, Any]:
    retention = Retention()
    stability = Stability()
    tok = TokenStats()
    per_file: list[dict[str, Any]] = []
    replayer = Replayer(config, folder)
    try:
        for name, history, ends in swe_conversations(root):
            prev: Sent | None = None
            file_stab = Stability()
            for end in ends:
                cur = await replayer.send(name, history[:end])
                stability.add(prev, cur)
                file_stab.add(prev, cur)
                if cur.rollup is not None:
                    start, stop = cur.rollup
                    retention.add(history[start:stop], cur.sent)
                tok.add(name, cur)
                prev = cur
            per_file.append(
                {
                    "file": name[:80],
                    "requests": file_stab.requests,
                    "rolled_up": file_stab.rolled,
                    "cut_steps": file_stab.cut_steps,
                    "unstable_other": file_stab.unstable_other,
                }
            )
    finally:
        await replayer.aclose()
    return {"retention": retention, "stability": stability, "tokens": tok, "files": per_file}


async def run_bfcl(data: Path, config: HistoryConfig, folder: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    misses: list[str] = []
    stability = Stability()
    tok = TokenStats()
    replayer = Replayer(config, folder)
    try:
        for scenario, conv, qs in bfcl_scenarios(data):
            prev: Sent | None = None
            for end in [i for i, m in enumerate(conv) if m["role"] == "assistant"]:
                cur = await replayer.send(scenario, conv[:end])
                stability.add(prev, cur)
                tok.add(scenario, cur)
                prev = cur
            raw_text = sent_text(conv)
            row: dict[str, Any] = {"scenario": scenario, "questions": len(qs)}
            row |= {"in_conversation": 0, "kept": 0}
            row |= {"in_summarized": 0, "kept_summarized": 0, "rolled_up": False}
            for question, accepted in qs:
                cur = await replayer.send(scenario, [*conv, {"role": "user", "content": question}])
                tok.add(scenario, cur)
                if not _has_answer(raw_text, accepted):
                    continue
                row["in_conversation"] += 1
                kept = _has_answer(sent_text(cur.sent), accepted)
                row["kept"] += kept
                if cur.rollup is not None:
                    row["rolled_up"] = True
                    start, stop = cur.rollup
                    if _has_answer(sent_text(conv[start:stop]), accepted):
                        row["in_summarized"] += 1
                        row["kept_summarized"] += kept
                if not kept:
                    misses.append(f"{scenario}: {question} -> {accepted}")
            rows.append(row)
    finally:
        await replayer.aclose()
    return {"rows": rows, "misses": misses, "stability": stability, "tokens": tok}


# ------------------------------------------------------------------------------ report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threshold", type=int, default=4000)
    parser.add_argument("--keep-last", type=int, default=6)
    parser.add_argument("--cut-step", type=int, default=2000)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder of history.json (default ./{DEFAULT_OUT})"
    )
    parser.add_argument("--show-misses", type=int, default=0)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = Console(width=140)
    config = HistoryConfig(
        threshold_tokens=args.threshold, keep_last_messages=args.keep_last, cut_step_tokens=args.cut_step
    )
    root = eval_data_root(checkout())
    report: dict[str, Any] = {
        "model": MODEL,
        "config": {
            "threshold_tokens": args.threshold,
            "keep_last": args.keep_last,
            "cut_step": args.cut_step,
        },
        "summarizer": "extractive",
        "target": TARGET,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        swe = None
        if (root / "swe-agent").is_dir():
            swe = asyncio.run(run_swe(root, config, Path(tmp) / "swe"))
        else:
            console.print(
                f"[yellow]swe-agent skipped: evaluation data not found at {root}[/] (NOCP_EVAL_DATA)"
            )
        data = bfcl_data_dir()
        bfcl = asyncio.run(run_bfcl(data, config, Path(tmp) / "bfcl")) if data else None
        if data is None:
            console.print("[yellow]bfcl-memory skipped: the bfcl-eval package is not installed[/]")

    if swe is not None:
        ret: Retention = swe["retention"]
        table = Table(title="swe-agent: fact retention of roll-ups (micro over requests)")
        for col in ("kind", "facts in summarized turns", "still sent", "retention", "target"):
            table.add_column(col, justify="right" if col != "kind" else "left")
        for kind in KINDS:
            target = f">= {TARGET:.0%}" if kind in TARGET_KINDS else "(info)"
            table.add_row(kind, str(ret.total[kind]), str(ret.kept[kind]), _pct(ret.share(kind)), target)
        console.print(table)
        report["swe_agent"] = {
            "retention": {
                k: {"facts": ret.total[k], "kept": ret.kept[k], "share": ret.share(k)} for k in KINDS
            },
            "retention_misses": {k: ret.misses[k][:50] for k in KINDS if ret.misses[k]},
            "files": swe["files"],
        }
        if args.show_misses:
            for kind in KINDS:
                for miss in ret.misses[kind][: args.show_misses]:
                    console.print(f"  miss {kind}: {miss!r}")
    if bfcl is not None:
        table = Table(title="bfcl-memory: known answers still in the prompt sent with the question")
        for col in ("scenario", "questions", "answer in chat", "kept", "in summarized part", "kept there"):
            table.add_column(col, justify="right" if col != "scenario" else "left")
        for row in bfcl["rows"]:
            table.add_row(
                row["scenario"],
                str(row["questions"]),
                str(row["in_conversation"]),
                str(row["kept"]),
                str(row["in_summarized"]),
                str(row["kept_summarized"]),
            )
        tot = {k: sum(r[k] for r in bfcl["rows"]) for k in ("questions", "in_conversation", "kept")}
        tot |= {k: sum(r[k] for r in bfcl["rows"]) for k in ("in_summarized", "kept_summarized")}
        table.add_row("all", *(str(tot[k]) for k in tot))
        console.print(table)
        report["bfcl_memory"] = {
            "rows": bfcl["rows"],
            "total": tot,
            "answer_retention": tot["kept"] / tot["in_conversation"] if tot["in_conversation"] else None,
            "answer_retention_summarized": (
                tot["kept_summarized"] / tot["in_summarized"] if tot["in_summarized"] else None
            ),
            "misses": bfcl["misses"][:50],
        }
        if args.show_misses:
            for miss in bfcl["misses"][: args.show_misses]:
                console.print(f"  miss: {miss}")

    table = Table(title="prefix stability and tokens")
    for col in (
        "set",
        "requests",
        "rolled up",
        "prefix kept",
        "cut steps",
        "broken (not at a cut)",
        "raw tokens",
        "sent tokens",
        "cached share raw",
        "cached share sent",
        "billed sent/raw @50%",
        "billed sent/raw @10%",
    ):
        table.add_column(col, justify="right" if col != "set" else "left")
    for name, res in (("swe-agent", swe), ("bfcl-memory", bfcl)):
        if res is None:
            continue
        st: Stability = res["stability"]
        tk: TokenStats = res["tokens"]
        table.add_row(
            name,
            str(st.requests),
            str(st.rolled),
            f"{st.stable}/{st.compared}",
            str(st.cut_steps),
            str(st.unstable_other),
            str(tk.raw),
            str(tk.sent),
            _pct(tk.cached_raw / tk.raw) if tk.raw else "-",
            _pct(tk.cached_sent / tk.sent) if tk.sent else "-",
            f"{tk.billed(0.5, sent=True) / tk.billed(0.5, sent=False):.3f}",
            f"{tk.billed(0.1, sent=True) / tk.billed(0.1, sent=False):.3f}",
        )
        report.setdefault(name.replace("-", "_"), {})["stability"] = {
            "requests": st.requests,
            "rolled_up": st.rolled,
            "compared": st.compared,
            "prefix_kept": st.stable,
            "cut_steps": st.cut_steps,
            "broken_not_at_cut": st.unstable_other,
        }
        report[name.replace("-", "_")]["tokens"] = {
            "raw": tk.raw,
            "sent": tk.sent,
            "cached_raw": tk.cached_raw,
            "cached_sent": tk.cached_sent,
            "billed_sent_over_raw_cached_at_50pct": round(
                tk.billed(0.5, sent=True) / tk.billed(0.5, sent=False), 4
            ),
            "billed_sent_over_raw_cached_at_10pct": round(
                tk.billed(0.1, sent=True) / tk.billed(0.1, sent=False), 4
            ),
        }
    console.print(table)
    report["seconds"] = round(time.perf_counter() - started, 2)
    path = args.out / "history.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    console.print(f"written {shown(path)} in {report['seconds']} s")
    ok = True
    if swe is not None:
        ok &= all((swe["retention"].share(k) or 1.0) >= TARGET for k in TARGET_KINDS)
        ok &= swe["stability"].unstable_other == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
