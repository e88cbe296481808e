"""Reversible compression on real agent traces: can the model get back what a lossy cut removed,
and what do the retrieval rounds cost?

Run: ``nocp bench retrieval`` (or ``python -m proxy.bench.retrieval``, ``make bench-retrieval``).
Options: ``--out DIR``.

Data: the SWE-agent trajectories in ``$NOCP_EVAL_DATA/swe-agent/*.traj`` (default
``../shared/eval-data``). Each trajectory becomes the conversation an agent with tools would send:
the system prompt and the task, then per step an assistant turn (the thought, one tool call: the
action, named after its command) and a tool result (the observation). Request ``k`` sends the
conversation up to the result of step ``k``. Files without a trajectory use their OpenAI-style
``history`` as recorded.

Each request goes through the proxy's own request path, :class:`proxy.exchange.Exchange` (the
history and tool-output stages, the retrieval tool loop with its SQLite session store), with
``send`` answered in-process by a simulated model, under two configs:

- ``default``: the default compression config and history threshold (on these short traces the
  lossy compressors rarely run and no roll-up happens);
- ``lossy``: lossy-forcing settings (compression ``min_tokens`` 200, ``lossy_threshold_tokens``
  400, ``budget_tokens`` 300, as in :mod:`proxy.bench.fidelity`; history threshold 4,000 tokens
  and cut step 2,000, as in :mod:`proxy.bench.history`), so that many tool outputs are cut and
  roll-ups happen.

For every lossy cut (a distinct marker id; tool outputs and history summaries) the first time it is
sent: the *omitted hard tokens* (:mod:`compressors.hardtokens`: distinct hard tokens of the
original that are not in the text sent for it) and how many of them are *recoverable*: present in
what the retrieval tool returns for its id, read back from the session store through the same code
that answers a model's call. Target: 100 %.

Cost: the simulated model retrieves every marker once, the first time it is offered the tool
with it (whole original, no query), then answers with the trace's next assistant message, which
the next request carries. Per round the tokens added are the tool call plus the tool result; in a
real round the whole prompt is sent again, but a provider's prefix cache bills that prefix as
cached (reported too, as ``round prompt``). The cut keeps its bytes on later turns and the round
(call and result) is put back where it happened: the ``later turns`` column is the extra prompt
tokens of all later requests compared with the same replay without retrievals. ``saved by cuts``
is what the cuts saved where they first appeared, and ``raw -> sent`` the prompt tokens of the
whole replay without nocp and with it (no retrievals), for scale.

Writes ``retrieval.json`` in ``--out`` (default ``./nocp-bench``; ``make bench-retrieval`` writes
``benchmarks/results/retrieval.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from multidict import CIMultiDict
from rich.console import Console
from rich.table import Table

from compressors import CompressionConfig, tokens
from compressors.hardtokens import hard_tokens
from compressors.markers import marker_ids
from proxy.bench._common import DEFAULT_OUT, checkout, shown
from proxy.bench.traces import eval_data_root
from proxy.config import HistoryConfig, RetrievalConfig, load_settings
from proxy.exchange import ClientRequest, Exchange, Services
from proxy.pipeline import Pipeline
from proxy.protocols import OpenAIChatAdapter
from proxy.sessions import SQLiteSessionStore
from proxy.stages import HistoryStage, ToolOutputStage
from proxy.summarizer import ExtractiveSummarizer
from proxy.testing import MemoryWriter, MockResponse, MockSend, RecordingClient
from proxy.toolloop import ToolLoop

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


class Model:
    """The simulated model behind ``send``. Offered ``nocp_retrieve`` with marker ids it has not
    fetched yet in this conversation, it calls the tool once per id; otherwise it answers with
    ``answer`` (the trace's next assistant message). Keeps every request it got."""

    def __init__(self, retrieve: bool) -> None:
        self.send = MockSend(lambda req: MockResponse(body=self.reply(json.loads(req.body))))
        self.retrieve = retrieve
        self.fetched: set[str] = set()
        self.answer: dict[str, Any] = {"role": "assistant", "content": "Done."}
        self.requests: list[dict[str, Any]] = []

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(body)
        offered = any(t.get("function", {}).get("name") == TOOL for t in body.get("tools") or ())
        texts = [m["content"] for m in body["messages"] if isinstance(m.get("content"), str)]
        fresh = [r for t in texts for r in marker_ids(t) if r not in self.fetched] if offered else []
        fresh = list(dict.fromkeys(fresh))
        if self.retrieve and fresh:
            self.fetched.update(fresh)
            calls = [
                {"id": f"call_r{len(self.requests)}_{i}", "type": "function",
                 "function": {"name": TOOL, "arguments": json.dumps({"id": ref})}}
                for i, ref in enumerate(fresh)
            ]  # fmt: skip
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
        else:
            message = self.answer
        return {"id": "sim", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip


class Replayer:
    """The proxy's request path (:class:`~proxy.exchange.Exchange`) with its own SQLite store, the
    stages and the retrieval tool loop, in front of a simulated model."""

    def __init__(self, folder: Path, compression: CompressionConfig, history: HistoryConfig, retrieve: bool):
        self.store = SQLiteSessionStore(folder / "sessions.sqlite3", ttl_s=86_400)
        self.loop = ToolLoop(RetrievalConfig(), self.store, session_ttl_s=86_400)
        pipeline = Pipeline(
            [HistoryStage(history, self.store, ExtractiveSummarizer()), ToolOutputStage(compression)],
            stage_timeout_s=120,
        )
        self.services = Services(
            settings=load_settings(env={}, overrides={}),
            pipeline=pipeline,
            writer=MemoryWriter(),
            features=[self.loop],
        )
        self.model = Model(retrieve)

    async def send(self, session: str, messages: list[dict[str, Any]]) -> Exchange:
        """One request of ``session``; the exchange that served it."""
        body = json.dumps({"model": MODEL, "messages": messages}).encode()
        request = ClientRequest(
            path="/v1/chat/completions",
            raw_path="/v1/chat/completions",
            headers=CIMultiDict({"X-Session-Id": session, "Authorization": "Bearer sk-bench"}),
            query={},
            match_info={},
            body=body,
        )
        x = Exchange(self.services, ADAPTER, request, self.model.send, RecordingClient())
        await x.run()
        if x.record.fail_open or x.record.outcome != "ok":
            raise RuntimeError(f"the replay failed open: {x.record.outcome} {x.record.fail_open}")
        return x

    async def aclose(self) -> None:
        await self.store.aclose()


def _sent_texts(body: dict[str, Any], refs: set[str]) -> dict[str, str]:
    """Each of ``refs`` -> the text sent for it (the message holding its marker)."""
    out: dict[str, str] = {}
    for msg in body["messages"]:
        content = msg.get("content")
        if isinstance(content, str):
            for ref in marker_ids(content):
                if ref in refs:
                    out.setdefault(ref, content)
    return out


async def replay(name: str, compression: CompressionConfig, history: HistoryConfig, root: Path) -> Totals:
    totals = Totals()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with_retrieval = Replayer(Path(tmp) / "a", compression, history, retrieve=True)
        without = Replayer(Path(tmp) / "b", compression, history, retrieve=False)
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        try:
            for conv, messages, ends in conversations(root):
                for sim in (with_retrieval.model, without.model):
                    sim.fetched = set()
                for end in ends:
                    totals.requests += 1
                    answer = (
                        messages[end]
                        if end < len(messages) and messages[end]["role"] == "assistant"
                        else None
                    )
                    for sim in (with_retrieval.model, without.model):
                        sim.answer = answer or {"role": "assistant", "content": "Done."}
                        sim.requests = []
                    x = await with_retrieval.send(conv, messages[:end])
                    await without.send(conv, messages[:end])
                    hops = with_retrieval.model.requests
                    totals.raw_tokens += tokens.count_chat_request({"messages": messages[:end]}, MODEL)
                    totals.sent_tokens += tokens.count_chat_request(hops[0], MODEL)
                    totals.sent_tokens_no_retrieval += tokens.count_chat_request(
                        without.model.requests[0], MODEL
                    )
                    if x.record.retrieval_offered:
                        totals.offered += 1
                    if len(hops) < 2:
                        continue
                    loop = next(f for f in x.features if f.owns_response)
                    originals = loop.cut_originals  # type: ignore[attr-defined]
                    totals.rounds += x.record.retrieval_rounds
                    rounds = hops[1]["messages"][len(hops[0]["messages"]) :]  # this request's round
                    calls = {c["id"]: json.loads(c["function"]["arguments"])["id"]
                             for m in rounds for c in m.get("tool_calls") or ()
                             if c["function"]["name"] == TOOL}  # fmt: skip
                    results = {calls[m["tool_call_id"]]: m["content"] for m in rounds
                               if m["role"] == "tool" and m.get("tool_call_id") in calls}  # fmt: skip
                    sent = _sent_texts(hops[0], set(results))
                    totals.round_prompt_tokens += sum(tokens.count_chat_request(h, MODEL) for h in hops[1:])
                    totals.call_tokens += sum(
                        tokens.count(TOOL + json.dumps({"id": r}), MODEL) for r in results
                    )
                    totals.result_tokens += x.record.retrieval_tokens
                    for ref, result in results.items():
                        original = originals[ref]
                        omitted = hard_tokens(original.text) - hard_tokens(sent.get(ref, ""))
                        got = hard_tokens(result)
                        totals.cuts[original.kind] += 1
                        totals.omitted[original.kind] += len(omitted)
                        totals.recoverable[original.kind] += len(omitted & got)
                        totals.saved += tokens.count(original.text, MODEL) - tokens.count(
                            sent.get(ref, ""), MODEL
                        )
                        if omitted - got:
                            totals.misses.append(
                                f"{conv}: {ref} ({original.kind}) lost {sorted(omitted - got)[:5]}"
                            )
        finally:
            await with_retrieval.aclose()
            await without.aclose()
    totals.seconds = time.perf_counter() - started
    return totals


# ------------------------------------------------------------------------------ report


def _pct(n: int, d: int) -> str:
    return f"{n / d:.1%}" if d else "-"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder of retrieval.json (default ./{DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    root = eval_data_root(checkout())
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
        "the rounds being put back where they happened."
    )
    path = args.out / "retrieval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {shown(path)}")
    return 0 if ok else 2


if __name__ == "__main__":
    raise SystemExit(main())
