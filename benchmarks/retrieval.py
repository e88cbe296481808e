"""Reversible compression on real agent traces: can the model get back what a lossy cut removed,
and what do the retrieval rounds cost?

Run: ``.venv/bin/python benchmarks/retrieval.py`` (``make bench-retrieval``). Options: ``--out PATH``.

Data: the SWE-agent trajectories in ``$NOCP_EVAL_DATA/swe-agent/*.traj`` (default
``../shared/eval-data``). Each trajectory becomes the conversation an agent with tools would send:
the system prompt and the task, then per step an assistant turn (the thought, one tool call: the
action, named after its command) and a tool result (the observation). Request ``k`` sends the
conversation up to the result of step ``k``. Files without a trajectory use their OpenAI-style
``history`` as recorded.

Each conversation is replayed through the proxy's own machinery, exactly as ``_rewrite`` drives it
(the history and tool-output stages, the retrieval request: pending answers, cut recording,
``prepare``, which stores the originals in an SQLite session store), under two configs:

- ``default``: the default compression config and history threshold (on these short traces the
  lossy compressors rarely run and no roll-up happens);
- ``lossy``: lossy-forcing settings (compression ``min_tokens`` 200, ``lossy_threshold_tokens``
  400, ``budget_tokens`` 300, as in ``benchmarks/fidelity.py``; history threshold 4,000 tokens and
  cut step 2,000, as in ``benchmarks/history.py``), so that many tool outputs are cut and roll-ups
  happen.

For every lossy cut (a distinct marker id; tool outputs and history summaries) the first time it is
sent: the *omitted hard tokens* (:mod:`compressors.hardtokens`: distinct hard tokens of the
original that are not in the text sent for it) and how many of them are *recoverable*: present in
what the retrieval tool returns for its id, read back from the session store through the same code
that answers a model's call. Target: 100 %.

Cost: a simulated model retrieves every marker once, the first time it sees it (whole original, no
query). Per round the tokens added are the tool call plus the tool result; in a real round the
whole prompt is sent again, but a provider's prefix cache bills that prefix as cached (reported too,
as ``round prompt``). Retrieved tool outputs are then sent whole on later turns (content that was
retrieved is never compressed again): the ``later turns`` column is the extra prompt tokens of all
later requests compared with the same replay without retrievals. ``saved by cuts`` is what the
cuts saved where they first appeared, and ``raw -> sent`` the prompt tokens of the whole replay
without nocp and with it (no retrievals), for scale.

Writes ``benchmarks/results/retrieval.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import structlog  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from compressors import CompressionConfig, tokens  # noqa: E402
from compressors.hardtokens import hard_tokens  # noqa: E402
from compressors.markers import marker_ids  # noqa: E402
from proxy.bench.traces import eval_data_root  # noqa: E402
from proxy.config import HistoryConfig, RetrievalConfig  # noqa: E402
from proxy.pipeline import Pipeline, StageContext  # noqa: E402
from proxy.protocols import OpenAIChatAdapter, Prompt  # noqa: E402
from proxy.protocols import Call, ModelTurn  # noqa: E402
from proxy.retrieval import Retrieval, RetrievalRequest  # noqa: E402
from proxy.sessions import SQLiteSessionStore  # noqa: E402
from proxy.stages import HistoryStage, ToolOutputStage  # noqa: E402
from proxy.summarizer import ExtractiveSummarizer  # noqa: E402
from proxy.translog import TransactionLog  # noqa: E402

MODEL = "gpt-4o"
ADAPTER = OpenAIChatAdapter()
TOOL = RetrievalConfig().tool_name
TARGET_RECOVERABLE = 1.0
CONFIGS: dict[str, tuple[CompressionConfig, HistoryConfig]] = {
    "default": (CompressionConfig(), HistoryConfig()),
    "lossy": (
        CompressionConfig(min_tokens=200, lossy_threshold_tokens=400, budget_tokens=300),
        HistoryConfig(threshold_tokens=4000, cut_step_tokens=2000),
    ),
}


# ------------------------------------------------------------------------------ traces


def _tool_name(action: str) -> str:
    words = action.strip().split()
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in words[0]) if words else "bash"
    return name[:64] or "bash"


def _from_trajectory(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    history = data["history"]
    system = next((m["content"] for m in history if m["role"] == "system"), "")
    task = next((m["content"] for m in history if m["role"] == "user"), "")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system if isinstance(system, str) else json.dumps(system)},
        {"role": "user", "content": task if isinstance(task, str) else json.dumps(task)},
    ]
    ends = []
    for k, step in enumerate(data["trajectory"]):
        action = str(step.get("action") or "")
        call = {
            "id": f"call_{k}",
            "type": "function",
            "function": {"name": _tool_name(action), "arguments": json.dumps({"command": action})},
        }
        messages.append(
            {"role": "assistant", "content": str(step.get("thought") or ""), "tool_calls": [call]}
        )
        messages.append(
            {"role": "tool", "tool_call_id": f"call_{k}", "content": str(step.get("observation") or "")}
        )
        ends.append(len(messages))
    return messages, ends


def _from_history(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    messages: list[dict[str, Any]] = []
    for msg in data["history"]:
        out: dict[str, Any] = {"role": msg["role"], "content": msg.get("content") or ""}
        if msg.get("tool_calls"):
            out["tool_calls"] = [
                {"id": c.get("id"), "type": "function", "function": c.get("function")}
                for c in msg["tool_calls"]
            ]
        if msg["role"] == "tool":
            out["tool_call_id"] = (msg.get("tool_call_ids") or [msg.get("tool_call_id")])[0]
        messages.append(out)
    ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return messages, ends


def conversations(root: Path) -> Iterator[tuple[str, list[dict[str, Any]], list[int]]]:
    """(name, messages, request ends): request k sends messages[:ends[k]]."""
    for path in sorted((root / "swe-agent").glob("*.traj")):
        data = json.loads(path.read_text())
        messages, ends = _from_trajectory(data) if data.get("trajectory") else _from_history(data)
        yield path.stem, messages, [e for e in ends if e > 0]


# ------------------------------------------------------------------------------ replay


@dataclass
class Totals:
    """What one config's replay measured."""

    requests: int = 0
    offered: int = 0
    cuts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    omitted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recoverable: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    saved: int = 0
    rounds: int = 0
    call_tokens: int = 0
    result_tokens: int = 0
    round_prompt_tokens: int = 0
    raw_tokens: int = 0
    sent_tokens: int = 0
    sent_tokens_no_retrieval: int = 0
    misses: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _cut_texts(
    before: Prompt, after: Prompt, cuts: set[str], record: TransactionLog
) -> dict[str, tuple[str, int]]:
    """Each cut id sent in this request -> (the text sent for it, tokens saved there)."""
    out: dict[str, tuple[str, int]] = {}
    for old, new in zip(before.segments, after.segments, strict=True):
        if new.text != old.text:
            for ref in marker_ids(new.text):
                if ref in cuts:
                    saved = tokens.count(old.text, MODEL) - tokens.count(new.text, MODEL)
                    out.setdefault(ref, (new.text, saved))
    if after.rollup is not None:
        saved = sum(s.tokens_before - s.tokens_after for s in record.segments if s.kind == "history")
        for ref in marker_ids(after.rollup.text):
            if ref in cuts:
                out.setdefault(ref, (after.rollup.text, saved))
    return out


class Replayer:
    """The stages and the retrieval machinery with their own SQLite store, driven like the proxy."""

    def __init__(self, folder: Path, compression: CompressionConfig, history: HistoryConfig) -> None:
        self.store = SQLiteSessionStore(folder / "sessions.sqlite3", ttl_s=86_400)
        self.retrieval = Retrieval(RetrievalConfig(), self.store, session_ttl_s=86_400)
        self.pipeline = Pipeline(
            [HistoryStage(history, self.store, ExtractiveSummarizer()), ToolOutputStage(compression)],
            stage_timeout_s=120,
        )

    async def send(
        self, session: str, messages: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], RetrievalRequest, Prompt, Prompt]:
        body: dict[str, Any] = {"model": MODEL, "messages": copy.deepcopy(messages)}
        record = TransactionLog(session_id=session, protocol="openai", model=MODEL)
        retr = self.retrieval.begin(ADAPTER, record, body, MODEL)
        await retr.insert_pending(body)
        before = ADAPTER.prompt(body)
        ctx = StageContext(model=MODEL, protocol="openai", record=record, retrieval=retr)
        after = await retr.prepare(body, before, await self.pipeline.run(before, ctx))
        ADAPTER.apply(body, before, after)
        if retr.offered:
            ADAPTER.add_tool(body, self.retrieval.spec)
        if record.fail_open:
            raise RuntimeError(f"fail-open during the replay: {record.fail_open}")
        return body, retr, before, after

    async def aclose(self) -> None:
        await self.store.aclose()


async def replay(name: str, compression: CompressionConfig, history: HistoryConfig, root: Path) -> Totals:
    totals = Totals()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with_retrieval = Replayer(Path(tmp) / "a", compression, history)
        without = Replayer(Path(tmp) / "b", compression, history)
        try:
            for conv, messages, ends in conversations(root):
                seen: set[str] = set()
                for end in ends:
                    totals.requests += 1
                    body, retr, before, after = await with_retrieval.send(conv, messages[:end])
                    plain, *_ = await without.send(conv, messages[:end])
                    totals.raw_tokens += tokens.count_chat_request({"messages": messages[:end]}, MODEL)
                    totals.sent_tokens += tokens.count_chat_request(body, MODEL)
                    totals.sent_tokens_no_retrieval += tokens.count_chat_request(plain, MODEL)
                    if not retr.offered:
                        continue
                    totals.offered += 1
                    fresh = {
                        r: v
                        for r, v in _cut_texts(before, after, set(retr.cuts), retr.record).items()
                        if r not in seen
                    }
                    if not fresh:
                        continue
                    # the simulated model: one call per new marker, answered by nocp's own code path
                    calls = [
                        Call(name=TOOL, arguments=json.dumps({"id": ref}), id=f"call_r{i}")
                        for i, ref in enumerate(fresh)
                    ]
                    answers = await retr._answer(calls)
                    totals.rounds += 1
                    turn = ModelTurn(
                        message={
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": c.id,
                                    "type": "function",
                                    "function": {"name": c.name, "arguments": c.arguments},
                                }
                                for c in calls
                            ],
                        },
                        calls=calls,
                    )
                    follow = ADAPTER.follow_up(body, turn, answers)
                    totals.round_prompt_tokens += tokens.count_chat_request(follow, MODEL)
                    totals.call_tokens += sum(tokens.count(c.name + c.arguments, MODEL) for c in calls)
                    for (ref, (sent, saved)), (_, result) in zip(fresh.items(), answers, strict=True):
                        seen.add(ref)
                        kind = retr.cuts[ref].kind
                        original = retr.cuts[ref].text
                        omitted = hard_tokens(original) - hard_tokens(sent)
                        got = hard_tokens(result)
                        totals.cuts[kind] += 1
                        totals.omitted[kind] += len(omitted)
                        totals.recoverable[kind] += len(omitted & got)
                        totals.result_tokens += tokens.count(result, MODEL)
                        totals.saved += saved
                        if omitted - got:
                            totals.misses.append(f"{conv}: {ref} ({kind}) lost {sorted(omitted - got)[:5]}")
        finally:
            await with_retrieval.aclose()
            await without.aclose()
    totals.seconds = time.perf_counter() - started
    return totals


# ------------------------------------------------------------------------------ report


def _pct(n: int, d: int) -> str:
    return f"{n / d:.1%}" if d else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "retrieval.json")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    root = eval_data_root(REPO)
    if not (root / "swe-agent").is_dir():
        print(f"evaluation data not found at {root} (set NOCP_EVAL_DATA)", file=sys.stderr)
        return 1
    console = Console(width=180)
    report: dict[str, Any] = {"model": MODEL, "data": "swe-agent", "target_recoverable": TARGET_RECOVERABLE}
    table = Table(
        title="Reversible compression on the SWE-agent traces (a model retrieving every marker once)"
    )
    for col in (
        "config",
        "requests",
        "raw -> sent (no retrieval)",
        "with tool",
        "cuts (tool / history)",
        "omitted hard tokens",
        "recoverable",
        "rounds",
        "call + result tokens",
        "saved by cuts",
        "round prompt",
        "later turns",
    ):
        table.add_column(col, justify="right")
    ok = True
    for name, (compression, history) in CONFIGS.items():
        t = asyncio.run(replay(name, compression, history, root))
        omitted, recoverable = sum(t.omitted.values()), sum(t.recoverable.values())
        share = recoverable / omitted if omitted else 1.0
        ok = ok and share >= TARGET_RECOVERABLE
        later = t.sent_tokens - t.sent_tokens_no_retrieval
        table.add_row(
            name,
            str(t.requests),
            f"{t.raw_tokens} -> {t.sent_tokens_no_retrieval}",
            str(t.offered),
            f"{t.cuts['tool_output']} / {t.cuts['history']}",
            str(omitted),
            _pct(recoverable, omitted),
            str(t.rounds),
            f"{t.call_tokens} + {t.result_tokens}",
            str(t.saved),
            str(t.round_prompt_tokens),
            f"{later:+d}",
        )
        report[name] = {
            "compression": {
                "min_tokens": compression.min_tokens,
                "lossy_threshold_tokens": compression.lossy_threshold_tokens,
                "budget_tokens": compression.budget_tokens,
            },
            "history": {
                "threshold_tokens": history.threshold_tokens,
                "cut_step_tokens": history.cut_step_tokens,
            },
            "requests": t.requests,
            "requests_with_tool": t.offered,
            "cuts": dict(t.cuts),
            "omitted_hard_tokens": dict(t.omitted),
            "recoverable_hard_tokens": dict(t.recoverable),
            "recoverable_share": round(share, 6),
            "rounds": t.rounds,
            "call_tokens": t.call_tokens,
            "result_tokens": t.result_tokens,
            "tokens_saved_by_cuts": t.saved,
            "round_prompt_tokens": t.round_prompt_tokens,
            "raw_tokens": t.raw_tokens,
            "sent_tokens": t.sent_tokens,
            "sent_tokens_without_retrievals": t.sent_tokens_no_retrieval,
            "later_turn_extra_tokens": later,
            "misses": t.misses[:20],
            "seconds": round(t.seconds, 2),
        }
    console.print(table)
    console.print(
        "recoverable: share of the omitted hard tokens present in what nocp_retrieve returns "
        f"(target {TARGET_RECOVERABLE:.0%}); call + result: tokens a round adds; round prompt: the whole "
        "prompt of each round (mostly a cached prefix); later turns: extra prompt tokens of later requests, "
        "retrieved outputs being sent whole."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0 if ok else 2


if __name__ == "__main__":
    raise SystemExit(main())
