"""The learned compression policy in simulation: does it converge to the arm with the best net
saving per tool and content type, and does it beat every fixed arm over the run?

Run: ``nocp bench policy`` (or ``python -m proxy.bench.policy``, ``make bench-policy``).
Options: ``--out DIR``, ``--epochs N``, ``--seed N``.

Data: the SWE-agent trajectories in ``$NOCP_EVAL_DATA/swe-agent/*.traj`` (default
``../shared/eval-data``), turned into agent conversations as in :mod:`proxy.bench.retrieval`.
Each of ``--epochs`` passes replays every trajectory as a new session (request ``k`` sends the
conversation up to the result of step ``k``), so a run is ``epochs x 22`` sessions of real tool
outputs, in the same order for every policy.

Every request goes through the proxy's own request path (:class:`proxy.exchange.Exchange`: the
tool-output stage, the retrieval tool loop, the policy feature, one SQLite session store),
with the tool offered to the agent from its first turn, in front of a simulated model. Tool
outputs are compressed with lossy-forcing settings (``min_tokens`` 200,
``lossy_threshold_tokens`` 400, as in :mod:`proxy.bench.retrieval`) under one of three arms:
``lossless`` (lossless only), ``budget-800`` and ``budget-300``.

The simulated model, offered ``nocp_retrieve``, decides once per cut (marker id) and session
whether it needs what was left out: with probability ``min(1, need x removed ** 2)``,
``removed`` being the share of the original's characters the cut removed (it rises as the
budget tightens) and ``need`` depending on the content type (:data:`NEED`: 2.5 for code and
diffs, whose exact lines an agent editing files needs, 0.5 for JSON, 0.2 for command output and
other text). So the best arm differs by content type, which is what a policy learned per tool
and content type is for: no single fixed arm is best everywhere. The draw is a hash of the
seed, session and marker id, so every policy meets the same luck for the same cut. A retrieval
is a real round: nocp answers it from the store, the conversation goes on upstream (the model
reports that call's prompt tokens), and the round is put back in every later request of the
session.

Measured per run, from the TransactionLog records: the **net saving** = the records' net saved
tokens (raw prompt - sent prompt - the rounds' tokens, :func:`proxy.translog.figures`; rounds
put back make later prompts larger) minus ``retrieval_penalty_tokens`` (500) per retrieval.
Runs: each arm fixed (a policy with that one arm), and the learned policy over all three.
Per tool and content type: the best fixed arm (by the policy's own reward in the fixed runs)
and the learned policy's share of sessions per arm in the last third of the run (the arm it
converged to). Writes ``policy.json`` to ``--out`` (default ``./nocp-bench``; ``make
bench-policy`` writes ``benchmarks/results/policy.json``, which the bench report shows).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from multidict import CIMultiDict
from rich.console import Console
from rich.table import Table

from compressors import CompressionConfig, detect, tokens
from compressors.markers import marker_ids
from proxy.bench._common import DEFAULT_OUT, checkout, shown
from proxy.bench.retrieval import conversations
from proxy.bench.traces import eval_data_root
from proxy.config import PolicyArmConfig, PolicyConfig, RetrievalConfig, load_settings
from proxy.exchange import ClientRequest, Exchange, Services
from proxy.pipeline import Pipeline
from proxy.policy import LearnedPolicy, snapshot
from proxy.protocols import OpenAIChatAdapter
from proxy.sessions import SQLiteSessionStore
from proxy.stages import ToolOutputStage
from proxy.testing import MemoryWriter, MockResponse, MockSend, RecordingClient
from proxy.toolloop import ToolLoop
from proxy.translog import TransactionLog, figures

__all__ = ["ARMS", "NEED", "RunResult", "main", "run", "simulate"]

MODEL: Final = "gpt-4o"
ADAPTER: Final = OpenAIChatAdapter()
TOOL: Final = RetrievalConfig().tool_name
COMPRESSION: Final = CompressionConfig(min_tokens=200, lossy_threshold_tokens=400)
ARMS: Final = (
    PolicyArmConfig(name="lossless"),
    PolicyArmConfig(name="budget-800", budget_tokens=800),
    PolicyArmConfig(name="budget-300", budget_tokens=300),
)
NEED: Final[dict[str, float]] = {"code": 2.5, "diff": 2.5, "json": 0.5}  # every other type: 0.2
OTHER_NEED: Final = 0.2
PENALTY: Final = 500
EPOCHS: Final = 8
SEED: Final = 7
_SESSION_TTL_S: Final = 7 * 86_400


def need(content_type: str) -> float:
    """How often the simulated model needs what a cut of this content type removed."""
    return NEED.get(content_type, OTHER_NEED)


def _uniform(*parts: object) -> float:
    raw = "\0".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest()) / 2**64


class Model:
    """The simulated model behind ``send`` (see the module docstring)."""

    def __init__(self, originals: dict[str, str], seed: int) -> None:
        self.send = MockSend(lambda req: MockResponse(body=self.reply(json.loads(req.body))))
        self.originals = originals  # tool_call_id -> the tool output as the trace has it
        self.types = {k: detect(v).value for k, v in originals.items()}
        self.seed = seed
        self.session = ""
        self.decided: set[str] = set()
        self.answer: dict[str, Any] = {"role": "assistant", "content": "Done."}
        self.calls = 0

    def start(self, session: str) -> None:
        """A new session: no cut decided yet."""
        self.session, self.decided = session, set()

    def _wanted(self, body: dict[str, Any]) -> list[str]:
        wanted: list[str] = []
        for msg in body["messages"]:
            content = msg.get("content")
            original = self.originals.get(msg.get("tool_call_id") or "")
            if msg.get("role") != "tool" or not isinstance(content, str) or original is None:
                continue
            for ref in marker_ids(content):
                if ref in self.decided:
                    continue
                self.decided.add(ref)
                removed = max(0.0, 1 - len(content) / max(1, len(original)))
                p = min(1.0, need(self.types[msg["tool_call_id"]]) * removed**2)
                if _uniform(self.seed, self.session, ref) < p:
                    wanted.append(ref)
        return wanted

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        offered = any(t.get("function", {}).get("name") == TOOL for t in body.get("tools") or ())
        follow_up = body["messages"][-1].get("role") == "tool" and str(
            body["messages"][-1].get("tool_call_id", "")
        ).startswith("call_r")
        wanted = self._wanted(body) if offered else []
        out: dict[str, Any] = {"id": "sim", "object": "chat.completion", "model": MODEL}
        if wanted:
            self.calls += 1
            calls = [
                {"id": f"call_r{self.calls}_{i}", "type": "function",
                 "function": {"name": TOOL, "arguments": json.dumps({"id": ref})}}
                for i, ref in enumerate(wanted)
            ]  # fmt: skip
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
        else:
            message = self.answer
        out["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        if wanted or follow_up:  # a round: what it costs is measured from these
            completion = tokens.count(json.dumps(message), MODEL)
            prompt = tokens.count_chat_request(body, MODEL)
            out["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return out


@dataclass
class RunResult:
    """What one policy's run measured."""

    arms: tuple[str, ...]
    sessions: int = 0
    requests: int = 0
    net_saved: int = 0  # figures' net saved tokens, minus the penalty per retrieval
    gross_saved: int = 0
    round_tokens: int = 0
    retrievals: int = 0
    rounds: int = 0
    reward: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> arm -> total reward
    pulls: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> arm -> sessions
    choices: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # key -> arms in order
    seconds: float = 0.0


def _request(session: str, messages: list[dict[str, Any]]) -> ClientRequest:
    body = json.dumps({"model": MODEL, "messages": messages}).encode()
    return ClientRequest(
        path="/v1/chat/completions",
        raw_path="/v1/chat/completions",
        headers=CIMultiDict({"X-Session-Id": session, "Authorization": "Bearer sk-bench-policy"}),
        query={},
        match_info={},
        body=body,
    )


def _measure(result: RunResult, rec: TransactionLog, seen: dict[str, str]) -> None:
    if rec.fail_open or rec.outcome != "ok":
        raise RuntimeError(f"the replay failed open: {rec.outcome} {rec.fail_open}")
    f = figures(rec)
    result.requests += 1
    result.net_saved += f.net_saved_tokens - PENALTY * len(rec.retrievals)
    result.gross_saved += f.gross_saved_tokens
    result.round_tokens += f.retrieval_overhead_tokens
    result.retrievals += len(rec.retrievals)
    result.rounds += rec.retrieval_rounds
    for key, arm in (rec.policy_arms or {}).items():
        if key not in seen:
            seen[key] = arm
            result.choices[key].append(arm)


async def run(
    arms: Sequence[PolicyArmConfig],
    convs: Sequence[tuple[str, list[dict[str, Any]], list[int]]],
    *,
    epochs: int,
    seed: int,
) -> RunResult:
    """Replay ``epochs`` passes over ``convs`` (one session each) under a policy with ``arms``."""
    started = time.perf_counter()
    result = RunResult(arms=tuple(a.name for a in arms))
    originals = {
        f"{name}:{m['tool_call_id']}": m["content"]
        for name, messages, _ in convs
        for m in messages
        if m["role"] == "tool" and isinstance(m.get("content"), str)
    }
    config = PolicyConfig(
        enabled=True, arms=tuple(arms), retrieval_penalty_tokens=PENALTY, seed=seed, min_sessions=3
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteSessionStore(Path(tmp) / "sessions.sqlite3", ttl_s=_SESSION_TTL_S)
        loop = ToolLoop(RetrievalConfig(offer_to_agents=True), store, session_ttl_s=_SESSION_TTL_S)
        policy = LearnedPolicy(config, store, session_ttl_s=_SESSION_TTL_S, retrieval_tool=TOOL)
        services = Services(
            settings=load_settings(env={}, overrides={}),
            pipeline=Pipeline([ToolOutputStage(COMPRESSION)], stage_timeout_s=120),
            writer=MemoryWriter(),
            features=[loop, policy],
        )
        model = Model(originals, seed)
        try:
            for epoch in range(epochs):
                for name, messages, ends in convs:
                    session = f"{name}#{epoch}"
                    model.start(session)
                    # tool call ids made unique per trajectory (the model looks originals up by them)
                    local = [
                        {**m, "tool_call_id": f"{name}:{m['tool_call_id']}"} if m["role"] == "tool" else m
                        for m in messages
                    ]
                    local = [
                        {**m, "tool_calls": [{**c, "id": f"{name}:{c['id']}"} for c in m["tool_calls"]]}
                        if m.get("tool_calls")
                        else m
                        for m in local
                    ]
                    seen: dict[str, str] = {}
                    result.sessions += 1
                    for end in ends:
                        nxt = local[end] if end < len(local) and local[end]["role"] == "assistant" else None
                        model.answer = {"role": "assistant", "content": (nxt or {}).get("content") or "Done."}
                        x = Exchange(
                            services, ADAPTER, _request(session, local[:end]), model.send, RecordingClient()
                        )
                        await x.run()
                        await policy.drain()
                        _measure(result, x.record, seen)
            snap = await snapshot(store, config)
        finally:
            await policy.aclose()
            await store.aclose()
    for tenant in snap["tenants"]:
        for k in tenant["keys"]:
            if k["pooled"]:
                continue
            key = f"{k['tool']}/{k['content_type']}"
            result.reward[key] = {a["arm"]: a["total_reward_tokens"] for a in k["arms"]}
            result.pulls[key] = {a["arm"]: a["pulls"] for a in k["arms"]}
    result.seconds = time.perf_counter() - started
    return result


def _summary(r: RunResult) -> dict[str, Any]:
    return {
        "arms": list(r.arms),
        "sessions": r.sessions,
        "requests": r.requests,
        "net_saved_tokens": r.net_saved,
        "gross_saved_tokens": r.gross_saved,
        "round_tokens": r.round_tokens,
        "retrievals": r.retrievals,
        "rounds": r.rounds,
        "reward_tokens": round(sum(sum(v.values()) for v in r.reward.values())),
        "seconds": round(r.seconds, 2),
    }


def simulate(root: Path, *, epochs: int = EPOCHS, seed: int = SEED) -> dict[str, Any]:
    """Every fixed arm and the learned policy over the same sessions; the report (JSON-able)."""
    convs = list(conversations(root))
    fixed = {arm.name: asyncio.run(run([arm], convs, epochs=epochs, seed=seed)) for arm in ARMS}
    learned = asyncio.run(run(ARMS, convs, epochs=epochs, seed=seed))
    keys: list[dict[str, Any]] = []
    for key in sorted(learned.choices, key=lambda k: -len(learned.choices[k])):
        chosen = learned.choices[key]
        fixed_reward = {name: round(r.reward.get(key, {}).get(name, 0.0)) for name, r in fixed.items()}
        best = max(fixed_reward, key=lambda n: fixed_reward[n])
        tail = chosen[len(chosen) - max(1, len(chosen) // 3) :]
        share = {name: round(n / len(tail), 3) for name, n in Counter(tail).most_common()}
        converged = max(share, key=lambda n: share[n])
        keys.append(
            {
                "key": key,
                "sessions": len(chosen),
                "fixed_reward_tokens": fixed_reward,
                "best_fixed_arm": best,
                "policy_reward_tokens": round(sum(learned.reward.get(key, {}).values())),
                "policy_sessions": dict(Counter(chosen)),
                "last_third_share": share,
                "converged_arm": converged,
                "converged_to_best": converged == best,
            }
        )
    best_fixed = max(fixed.values(), key=lambda r: r.net_saved)
    # The keys whose arm matters: where the best fixed arm is ahead of the others by at least
    # 5 % of what the best one earned (elsewhere the arms tie, and any choice is right).
    decisive = [
        k
        for k in keys
        if k["sessions"] >= 3 * len(ARMS)
        and min(
            (k["fixed_reward_tokens"][k["best_fixed_arm"]] - v)
            for n, v in k["fixed_reward_tokens"].items()
            if n != k["best_fixed_arm"]
        )
        > 0.05 * abs(k["fixed_reward_tokens"][k["best_fixed_arm"]])
    ]
    return {
        "model": MODEL,
        "data": "swe-agent",
        "seed": seed,
        "epochs": epochs,
        "compression": {
            "min_tokens": COMPRESSION.min_tokens,
            "lossy_threshold_tokens": COMPRESSION.lossy_threshold_tokens,
        },
        "arms": [{"name": a.name, "budget_tokens": a.budget_tokens} for a in ARMS],
        "retrieval_penalty_tokens": PENALTY,
        "retrieval_model": {
            "probability": "min(1, need(content type) * removed_share ** 2)",
            "need": NEED,
            "other_need": OTHER_NEED,
        },
        "fixed": {name: _summary(r) for name, r in fixed.items()},
        "policy": {
            **_summary(learned),
            "best_fixed_arm": best_fixed.arms[0],
            "margin_over_best_fixed_tokens": learned.net_saved - best_fixed.net_saved,
            "beats_every_fixed_arm": all(learned.net_saved > r.net_saved for r in fixed.values()),
            "decisive_keys": len(decisive),
            "converged_on_decisive_keys": sum(k["converged_to_best"] for k in decisive),
        },
        "keys": keys,
    }


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder of policy.json (default ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help=f"passes over the traces (default {EPOCHS})"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"the run's seed (default {SEED})")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    root = eval_data_root(checkout())
    if not (root / "swe-agent").is_dir():
        print(f"evaluation data not found at {root} (set NOCP_EVAL_DATA)", file=sys.stderr)
        return 1
    started = time.perf_counter()
    report = simulate(root, epochs=args.epochs, seed=args.seed)
    report["seconds"] = round(time.perf_counter() - started, 2)
    console = Console(width=160)
    console.print(policy_table(report))
    path = args.out / "policy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {shown(path)}")
    p = report["policy"]
    return 0 if p["beats_every_fixed_arm"] and p["converged_on_decisive_keys"] == p["decisive_keys"] else 2


def policy_table(report: dict[str, Any]) -> Table:
    """The run's totals per policy, for the console."""
    table = Table(title=f"Learned compression policy vs fixed arms ({report['policy']['sessions']} sessions)")
    for col in ("policy", "net saved", "gross saved", "retrievals", "rounds", "round tokens"):
        table.add_column(col, justify="right")
    rows = [(f"fixed {n}", r) for n, r in report["fixed"].items()] + [("learned", report["policy"])]
    for name, r in rows:
        table.add_row(
            name,
            str(r["net_saved_tokens"]),
            str(r["gross_saved_tokens"]),
            str(r["retrievals"]),
            str(r["rounds"]),
            str(r["round_tokens"]),
        )
    return table


if __name__ == "__main__":
    raise SystemExit(main())
