"""The benchmark suite: scenario generators, success criteria, cost accounting, report, a live run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.bench.criteria import CRITERIA, Totals, evaluate, reduction, suite_verdict
from proxy.bench.report import README_END, README_START, update_readme
from proxy.bench.runner import _add_usage, _stability, message_text
from proxy.bench.scenarios import (
    API_SIZES,
    DB_SIZES,
    RAG_SIZES,
    SIZES,
    Conversation,
    Scenario,
    seed_scenario,
    seed_scenarios,
)
from proxy.bench.traces import _parse_call, _schema, swe_agent_scenarios
from proxy.pricing import Price

GPT_41 = Price(2.00, 0.50, 8.00)


def _dump(kind: str, size: str, seed: int) -> str:
    sc = seed_scenario(kind, size, seed)
    return json.dumps([[c.messages, c.tools, c.response_format] for c in sc.conversations], sort_keys=True)


# ------------------------------------------------------------------------------ scenarios


@pytest.mark.parametrize("kind", ["rag", "api", "db"])
def test_generators_are_deterministic_for_a_seed(kind: str) -> None:
    """The same kind, size and seed give byte-identical conversations; another seed differs."""
    assert _dump(kind, "small", 7) == _dump(kind, "small", 7)
    assert _dump(kind, "small", 7) != _dump(kind, "small", 8)


def test_generator_output_is_pinned() -> None:
    """A seed gives the same conversation in every process (no hash randomisation, no clock)."""
    sc = seed_scenario("rag", "small", 0)
    digest = json.dumps(sc.conversations[0].messages, sort_keys=True)
    assert digest.count('"role": "tool"') == 3
    assert sc.conversations[0].messages[1]["content"].startswith("What is the default limit of")


def test_rag_sizes_are_documents_times_words() -> None:
    """RAG scenarios hold 10x200, 50x300, 200x500 documents x (at least) words."""
    for size, (docs, words) in RAG_SIZES.items():
        conv = seed_scenario("rag", size).conversations[0]
        results = [
            r for m in conv.messages if m["role"] == "tool" for r in json.loads(m["content"])["results"]
        ]
        assert len(results) == docs
        assert len({r["id"] for r in results}) == docs
        assert all(len(r["content"].split()) >= words for r in results)


def test_api_and_db_sizes_match_the_plan() -> None:
    """API: users / transactions; DB: products / orders / customers rows as specified."""
    for size, (users, charges) in API_SIZES.items():
        conv = seed_scenario("api", size).conversations[0]
        lists = [json.loads(m["content"]) for m in conv.messages if m["role"] == "tool"]
        got_users = sum(len(x["data"]) for x in lists if x.get("url") == "/v1/customers")
        got_charges = sum(len(x["data"]) for x in lists if x.get("url") == "/v1/charges")
        assert (got_users, got_charges) == (users, charges)
    for size, expected in DB_SIZES.items():
        conv = seed_scenario("db", size).conversations[0]
        rows = [json.loads(m["content"]) for m in conv.messages if m["role"] == "tool"]
        assert tuple(len(r) for r in rows) == expected


@pytest.mark.parametrize("size", SIZES)
def test_conversations_are_valid_tool_calling_chats(size: str) -> None:
    """Every tool result answers the call before it; every request ends before an assistant turn."""
    for sc in seed_scenarios((size,)):
        conv = sc.conversations[0]
        pending: set[str] = set()
        for m in conv.messages:
            if m["role"] == "assistant":
                assert not pending
                pending = {c["id"] for c in m.get("tool_calls") or ()}
            elif m["role"] == "tool":
                assert m["tool_call_id"] in pending
                pending.discard(m["tool_call_id"])
        for end in conv.turns():
            body = conv.body(end, "gpt-4.1")
            assert body["messages"] == list(conv.messages[:end])
            assert body["messages"][-1]["role"] != "assistant" or body["messages"][-1].get("tool_calls")
            assert conv.messages[end]["role"] == "assistant"


def test_answers_quote_values_from_the_tool_outputs() -> None:
    """The recorded answers use ids and amounts that are in the data (what fidelity measures)."""
    conv = seed_scenario("db", "small").conversations[0]
    data = "\n".join(m["content"] for m in conv.messages if m["role"] == "tool")
    first = json.loads(conv.messages[conv.turns()[3]]["content"])
    assert first["top_products"] and all(p["sku"] in data for p in first["top_products"])
    returns = json.loads(conv.messages[conv.turns()[4]]["content"])["returns_from_germany"]
    assert returns and all(f'"order_id": {r["order_id"]}' in data for r in returns)


# ------------------------------------------------------------------------------ criteria


def _totals(prompt: int, cached: int, completion: int, latency: float, requests: int = 1) -> Totals:
    t = Totals()
    for _ in range(requests):
        _add_usage(t, GPT_41, prompt, cached, completion, latency)
    return t


def test_cost_accounting_uses_cached_prices() -> None:
    """A request's cost bills cached tokens at the cached price; the uncached cost does not."""
    t = _totals(10_000, 8_000, 500, 0.1)
    # 2,000 * 2.00 + 8,000 * 0.50 + 500 * 8.00 = 12,000 per 1M; without cache 24,000
    assert t.cost_usd == pytest.approx(0.012)
    assert t.cost_uncached_usd == pytest.approx(0.024)
    assert t.cached_share == pytest.approx(0.8)


def test_criteria_on_a_hand_computed_example() -> None:
    """60% fewer input tokens can still be a 12.8% cost saving when the baseline hit the cache."""
    base = _totals(10_000, 8_000, 500, 1.0)  # $0.012
    nocp = _totals(4_000, 1_024, 500, 1.5)  # 2,976 * 2 + 1,024 * 0.5 + 500 * 8 = 10,464 -> $0.010464
    got = {c.key: c for c in evaluate(base, nocp, structured_output=True)}
    assert got["input_reduction"].value == pytest.approx(0.6)
    assert got["input_reduction"].status == "PASS"
    assert got["output_reduction"].value == pytest.approx(0.0)
    assert got["output_reduction"].status == "FAIL"
    assert got["latency"].value == pytest.approx(1.5)
    assert got["latency"].status == "PASS"
    assert got["cost_reduction"].value == pytest.approx(1 - 0.010464 / 0.012)
    assert got["cost_reduction"].status == "FAIL"
    assert got["cost_not_higher"].status == "PASS"


def test_a_broken_prefix_cache_fails_cost_not_higher() -> None:
    """Fewer tokens billed uncached can cost more than more tokens billed mostly cached."""
    base = _totals(10_000, 9_984, 100, 1.0)  # 16 * 2 + 9,984 * 0.5 + 800 = 5,824 -> $0.005824
    nocp = _totals(8_000, 0, 100, 1.0)  # 16,000 + 800 = 16,800 -> $0.0168
    got = {c.key: c for c in evaluate(base, nocp, structured_output=False)}
    assert got["input_reduction"].value == pytest.approx(0.2)
    assert got["cost_not_higher"].status == "FAIL"
    assert got["cost_not_higher"].value == pytest.approx(0.0168 - 0.005824)
    assert got["cost_reduction"].value == pytest.approx(1 - 0.0168 / 0.005824)
    assert got["output_reduction"].status == "N/A"


def test_thresholds_are_strict_and_summarizer_cost_counts() -> None:
    """Exactly 50% / 40% / 2x do not pass; the summarizer's cost is added to nocp's side."""
    base = _totals(1_000, 0, 0, 1.0)  # $0.002
    nocp = _totals(500, 0, 0, 2.0)  # $0.001, plus $0.0002 summarizer -> $0.0012 (40% saved)
    nocp.overhead_cost_usd = 0.0002
    got = {c.key: c for c in evaluate(base, nocp, structured_output=False)}
    assert got["input_reduction"].status == "FAIL"
    assert got["latency"].status == "FAIL"
    assert got["cost_reduction"].value == pytest.approx(0.4)
    assert got["cost_reduction"].status == "FAIL"
    assert CRITERIA["input_reduction"][1] == 0.5


def test_no_baseline_means_not_applicable() -> None:
    """With nothing measured every ratio is N/A, never a pass."""
    got = evaluate(Totals(), Totals(), structured_output=True)
    assert {c.status for c in got} == {"N/A"}
    assert reduction(0, 5) is None


def test_suite_verdict_names_the_scenarios_that_cost_more() -> None:
    """The suite-level criterion fails when any scenario costs more than its baseline."""
    cheap = evaluate(_totals(1_000, 0, 0, 1), _totals(500, 0, 0, 1), structured_output=False)
    dear = evaluate(_totals(10_000, 9_984, 0, 1), _totals(8_000, 0, 0, 1), structured_output=False)
    verdict = suite_verdict([("a", cheap), ("b", dear)])
    assert verdict.status == "FAIL"
    assert "b" in verdict.detail and "a," not in verdict.detail
    assert suite_verdict([("a", cheap)]).status == "PASS"


def test_prefix_stability_names_what_changed() -> None:
    """A tool added to the request, or an edited earlier message, counts as a prefix break."""
    acc: dict[str, object] = {"checked": 0, "breaks": 0, "reasons": {}}
    m1 = [{"role": "user", "content": "a"}]
    m2 = [*m1, {"role": "assistant", "content": "b"}]
    retrieve = [{"type": "function", "function": {"name": "nocp_retrieve"}}]
    _stability(([], m1), ([], m2), acc)
    _stability(([], m2), (retrieve, [*m2, {"role": "user", "content": "c"}]), acc)
    _stability((retrieve, m2), (retrieve, [{"role": "user", "content": "x"}, *m2[1:]]), acc)
    assert acc["checked"] == 3
    assert acc["breaks"] == 2
    assert acc["reasons"] == {
        "tool definitions changed (+nocp_retrieve)": 1,
        "an earlier user message changed": 1,
    }


# ------------------------------------------------------------------------------ traces


def test_bfcl_calls_map_positional_arguments_to_parameter_names() -> None:
    """``sort('a.pdf')`` becomes ``{"file_name": "a.pdf"}`` from the function document."""
    assert _parse_call("sort('a.pdf')", {"sort": ["file_name"]}) == ("sort", {"file_name": "a.pdf"})
    assert _parse_call("mv(source='a', destination='b')", {}) == ("mv", {"source": "a", "destination": "b"})
    assert _schema({"type": "dict", "properties": {"x": {"type": "float"}, "y": {"type": "any"}}}) == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {}},
    }


def test_message_text_covers_content_parts_and_tool_calls() -> None:
    """Fidelity reads text content, content parts and tool-call arguments."""
    msg = {
        "role": "assistant",
        "content": [{"type": "text", "text": "see ord_123"}],
        "tool_calls": [{"function": {"name": "get", "arguments": '{"id": "cus_9"}'}}],
    }
    assert message_text(msg) == 'see ord_123\nget\n{"id": "cus_9"}'


@pytest.mark.evaldata
def test_swe_agent_traces_split_by_tool_calling(eval_data: Path) -> None:
    """Function-calling trajectories and text-action ones become two scenarios."""
    fc, text = swe_agent_scenarios(eval_data)
    assert fc.name == "swe-agent-fc" and len(fc.conversations) == 5
    assert text.name == "swe-agent-text" and len(text.conversations) == 17
    assert all(any(m["role"] == "tool" for m in c.messages) for c in fc.conversations)


# ------------------------------------------------------------------------------ report


def test_readme_table_replaces_the_placeholder_then_its_own_block(tmp_path: Path) -> None:
    """The first run replaces the placeholder, later runs only the marked block; the rest stays."""
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n## Benchmarks\n\n<!-- overhead-table -->\n"
        "(filled in from the latest `make bench-overhead` run)\n\n## After\n",
        "utf-8",
    )
    assert update_readme(readme, f"{README_START}\none\n{README_END}")
    assert update_readme(readme, f"{README_START}\ntwo\n{README_END}")
    text = readme.read_text("utf-8")
    assert "two" in text and "one" not in text and "overhead-table" not in text
    assert text.startswith("# x\n\n## Benchmarks\n\n") and text.endswith("\n## After\n")
    assert not update_readme(readme, f"{README_START}\ntwo\n{README_END}")


# ------------------------------------------------------------------------------ a live run


async def test_run_suite_measures_both_paths(tmp_path: Path) -> None:
    """A live run bills every request on both paths, nocp's own cost estimate matches the usage,
    and the JSON answers nocp asked for in TOON bill fewer output tokens."""
    from proxy.bench.runner import run_suite
    from proxy.config import PricingConfig
    from proxy.pricing import PriceTable

    sc = seed_scenario("api", "small")
    run = await run_suite(
        [sc], model="gpt-4.1", prices=PriceTable.from_config(PricingConfig()), folder=tmp_path
    )
    (r,) = run.results
    assert r.base.requests == r.nocp.requests == sc.requests
    assert r.base.errors == r.nocp.errors == 0
    assert r.nocp.prompt_tokens < r.base.prompt_tokens
    assert r.nocp.completion_tokens < r.base.completion_tokens
    assert r.log["lines"] == sc.requests
    assert r.log["estimated_cost_usd"] == pytest.approx(r.nocp.cost_usd, rel=1e-6)
    assert r.fidelity.needed > 0
    assert "tool_output" in run.stages
    assert [c.key for c in r.criteria] == list(CRITERIA)


def _aged_value_conversation() -> Scenario:
    """Four `cat` steps of 40-path outputs, then an answer quoting a path of the first output
    that an aged digest (which mentions only the first paths) leaves out."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Check the four batches."}]
    for t in range(4):
        call = {"id": f"c{t}", "type": "function", "function": {"name": "cat", "arguments": f'{{"b": {t}}}'}}
        out = "\n".join(f"/srv/t{t}/item_{i}.dat size {i * 7}" for i in range(40))
        msgs += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{t}", "content": out},
        ]
    msgs.append({"role": "assistant", "content": "The odd one is /srv/t0/item_35.dat."})
    conv = Conversation(id="aged", messages=tuple(msgs))
    return Scenario(name="aged", family="test", kind="trace", title="aged value", conversations=(conv,))


@pytest.mark.parametrize("aging", [False, True])
async def test_a_value_only_behind_a_marker_bills_a_retrieval_round(tmp_path: Path, aging: bool) -> None:
    """When the answer uses a value nocp sent only behind an aged marker, the run bills one
    retrieval round (call, prompt, the original, and both carried on); without aging, none."""
    from proxy.bench.runner import run_suite
    from proxy.config import PricingConfig
    from proxy.pricing import PriceTable

    config = tmp_path / "nocp.yaml"
    on = "{enabled: true, keep_last_turns: 1, step_turns: 1, min_tokens: 50, horizon_turns: 50}"
    config.write_text(f"aging: {on if aging else '{enabled: false}'}\n", "utf-8")
    sc = _aged_value_conversation()
    run = await run_suite(
        [sc], model="gpt-4o", prices=PriceTable.from_config(PricingConfig()), folder=tmp_path, config=config
    )
    (r,) = run.results
    assert r.nocp.errors == 0
    assert r.fidelity.rounds == int(aging)
    assert (r.fidelity.round_cost_usd > 0) is aging
