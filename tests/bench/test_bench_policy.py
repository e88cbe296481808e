"""``nocp bench policy``: the simulated model retrieves more often the tighter the cut, a run is
reproducible under its seed, and the bench report renders the result."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from compressors.markers import marker_id, omitted_marker
from proxy.bench.policy import ARMS, Model, run
from proxy.bench.report import policy_lines
from proxy.bench.retrieval import conversations
from tests.helpers import REPO

CODE = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * 7}" for i in range(80))


def _retrievals(kept: float, sessions: int = 300) -> int:
    """How many of ``sessions`` retrieve a cut of CODE that kept ``kept`` of its characters."""
    model = Model({"c1": CODE}, seed=3)
    with marker_id("0123456789"):
        marker = omitted_marker("lines cut")
    content = CODE[: int(len(CODE) * kept)] + "\n" + marker
    body = {
        "model": "gpt-4o",
        "tools": [{"type": "function", "function": {"name": "nocp_retrieve"}}],
        "messages": [{"role": "tool", "tool_call_id": "c1", "content": content}],
    }
    count = 0
    for n in range(sessions):
        model.start(f"s{n}")
        message = model.reply(body)["choices"][0]["message"]
        count += bool(message.get("tool_calls"))
    return count


def test_the_simulated_model_retrieves_more_the_tighter_the_cut() -> None:
    """A cut that removed more of the original is retrieved in more sessions."""
    loose, mid, tight = _retrievals(0.9), _retrievals(0.6), _retrievals(0.25)
    assert 0 < loose < mid < tight


def test_a_run_is_reproducible_under_its_seed(eval_data: Path) -> None:
    """The same traces, epochs and seed give the same choices, savings and retrievals."""
    convs = list(conversations(eval_data))[:4]
    one = asyncio.run(run(ARMS, convs, epochs=2, seed=5))
    two = asyncio.run(run(ARMS, convs, epochs=2, seed=5))
    same = [f.name for f in dataclasses.fields(one) if f.name != "seconds"]
    assert {n: getattr(one, n) for n in same} == {n: getattr(two, n) for n in same}
    assert one.requests > 0 and one.choices


def test_the_bench_report_shows_the_policy_result() -> None:
    """The report section lists every fixed arm's and the policy's net saving from policy.json."""
    data = json.loads((REPO / "benchmarks" / "results" / "policy.json").read_text())
    text = "\n".join(policy_lines(data))
    assert text.startswith("## Learned compression policy")
    for r in [*data["fixed"].values(), data["policy"]]:
        assert f"{r['net_saved_tokens']:,}" in text
    assert policy_lines(None) == []
