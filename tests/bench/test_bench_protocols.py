"""The benchmark through Responses and Anthropic Messages: request converters, cache-write billing,
the per-protocol report, a live run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.bench.criteria import Totals
from proxy.bench.protocols import (
    MAX_TOKENS,
    PROTOCOLS,
    called_tools,
    expand,
    sent_view,
    to_messages,
    to_responses,
)
from proxy.bench.runner import ConversationTotals, ScenarioResult, _add_usage, _stability
from proxy.bench.scenarios import Conversation, Scenario, seed_scenario
from proxy.pricing import Price

SONNET = Price(3.00, 0.30, 15.00)
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _call(cid: str, city: str) -> dict[str, Any]:
    args = json.dumps({"city": city})
    return {"id": cid, "type": "function", "function": {"name": "weather", "arguments": args}}


# Two calls in one assistant turn (two tool messages in a row), then a text answer.
TOOL_CHAT: tuple[dict[str, Any], ...] = (
    {"role": "system", "content": "You answer weather questions."},
    {"role": "user", "content": "Weather in Oslo and Lima?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("call_1", "Oslo"), _call("call_2", "Lima")]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Oslo: 3 C, snow"},
    {"role": "tool", "tool_call_id": "call_2", "content": "Lima: 19 C, cloudy"},
    {"role": "assistant", "content": "Oslo 3 C with snow; Lima 19 C, cloudy."},
    {"role": "user", "content": "And Oslo tomorrow?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [_call("call.3", "Oslo")]},
    {"role": "tool", "tool_call_id": "call.3", "content": "Oslo tomorrow: -1 C"},
    {"role": "assistant", "content": "Oslo tomorrow: -1 C."},
)
CONV = Conversation("weather", TOOL_CHAT, (WEATHER,), {"type": "json_object"})


def _request(end: int = len(TOOL_CHAT) - 1) -> dict[str, Any]:
    return CONV.body(end, "gpt-4.1")


# ------------------------------------------------------------------------------ converters


def test_chat_request_converts_to_responses_items() -> None:
    """System becomes instructions; messages, calls and outputs become items in order; tools are
    flat function tools (not strict); response_format becomes text.format; nothing is stored."""
    body = to_responses(_request())
    assert body["instructions"] == "You answer weather questions."
    assert [(i["type"], i.get("role") or i.get("call_id")) for i in body["input"]] == [
        ("message", "user"),
        ("function_call", "call_1"),
        ("function_call", "call_2"),
        ("function_call_output", "call_1"),
        ("function_call_output", "call_2"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
        ("function_call", "call.3"),
        ("function_call_output", "call.3"),
    ]
    assert body["input"][0]["content"] == [{"type": "input_text", "text": "Weather in Oslo and Lima?"}]
    assert body["input"][5]["content"][0]["type"] == "output_text"
    assert body["input"][1]["arguments"] == '{"city": "Oslo"}'
    assert body["input"][3]["output"] == "Oslo: 3 C, snow"
    assert body["tools"] == [
        {
            "type": "function",
            "name": "weather",
            "description": "Current weather of a city.",
            "parameters": WEATHER["function"]["parameters"],
            "strict": False,
        }
    ]
    assert body["text"] == {"format": {"type": "json_object"}}
    assert body["store"] is False
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True},
    }
    fmt = to_responses({**_request(), "response_format": schema})["text"]["format"]
    assert fmt == {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True}


def test_chat_request_converts_to_messages_blocks() -> None:
    """System is top-level; calls are tool_use blocks, consecutive tool results merge into one user
    message; ids are made Anthropic-safe; tools get input_schema; no breakpoint is set."""
    body = to_messages(_request())
    assert body["system"] == "You answer weather questions."
    assert body["max_tokens"] == MAX_TOKENS
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert msgs[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Lima"}},
    ]
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "Oslo: 3 C, snow"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "Lima: 19 C, cloudy"},
    ]
    assert msgs[5]["content"][0] == {"type": "text", "text": "Let me check."}
    assert msgs[5]["content"][1]["id"] == msgs[6]["content"][0]["tool_use_id"] == "call_3"
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Current weather of a city.",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert "cache_control" not in json.dumps(body)
    assert "response_format" not in body


def test_own_cache_variant_marks_the_system_prompt_and_the_last_message() -> None:
    """The Claude Code pattern: system as text blocks with a breakpoint on the last one, and one on
    the last block of the last message; nothing else is marked."""
    body = to_messages(_request(), own_cache=True)
    assert body["system"] == [
        {"type": "text", "text": "You answer weather questions.", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert json.dumps(body).count("cache_control") == 2
    plain = to_messages(_request())
    assert sent_view("messages", body)[1][1:] == sent_view("messages", plain)[1][1:]


def test_conversions_are_deterministic() -> None:
    """The same request converts to the same bytes every time, for every protocol."""
    for name, proto in PROTOCOLS.items():
        first = json.dumps(proto.body(_request()), ensure_ascii=False)
        assert first == json.dumps(proto.body(_request()), ensure_ascii=False), name
    assert PROTOCOLS["chat"].body(_request()) == _request()


def test_traces_without_tool_definitions_declare_the_called_tools() -> None:
    """A conversation that calls tools but records no definitions gets one per called name (in
    order of first call), since Anthropic refuses tool_use blocks without tools."""
    assert called_tools(TOOL_CHAT) == ["weather"]
    body = to_messages({"model": "m", "messages": list(TOOL_CHAT[:5])}, tool_names=["weather"])
    assert body["tools"] == [{"name": "weather", "input_schema": {"type": "object", "properties": {}}}]


def test_protocol_names_expand_and_unknown_ones_are_refused() -> None:
    """``messages`` brings the own-breakpoints variant along; order is fixed; a typo is an error."""
    assert expand(["messages", "chat"]) == ["chat", "messages", "messages-own-cache"]
    assert expand(["responses", ""]) == ["responses"]
    with pytest.raises(ValueError, match="unknown protocol"):
        expand(["gemini"])


async def test_converted_requests_are_accepted_by_the_fake_provider() -> None:
    """Every request of a tool-calling conversation and of a seed scenario, converted to each
    protocol, gets a 200 from FakeUpstream and is billed."""
    from proxy.testing import FakeUpstream, Replay

    api = seed_scenario("api", "small").conversations[0]
    async with FakeUpstream() as fake, aiohttp.ClientSession() as session:
        for name, proto in PROTOCOLS.items():
            for conv in (CONV, api):
                model = "claude-sonnet-4-5" if proto.family == "anthropic" else "gpt-4.1"
                for end in conv.turns():
                    fake.script(Replay(conv.messages[end]))
                    body = proto.body(conv.body(end, model))
                    before = len(fake.usage_log)
                    async with session.post(fake.url + proto.path, json=body, headers=proto.headers) as r:
                        text = await r.text()
                        assert r.status == 200, (name, conv.id, end, text)
                    assert len(fake.usage_log) == before + 1
                    assert fake.usage_log[-1].prompt_tokens > 0


# ------------------------------------------------------------------------------ accounting


def test_cache_writes_are_billed_at_their_ttl_price() -> None:
    """A 5-minute write costs 1.25x the input price, a 1-hour write 2x, a read the cached price;
    without caching every input token is billed at the input price."""
    t = Totals()
    # 10k prompt: 2k read, 6k written (1k of it for an hour), 2k fresh; 1k output
    _add_usage(t, SONNET, 10_000, 2_000, 1_000, 0.1, 6_000, 1_000)
    expected = (2_000 * 3.00 + 2_000 * 0.30 + 5_000 * 3.75 + 1_000 * 6.00 + 1_000 * 15.00) / 1e6
    assert t.cost_usd == pytest.approx(expected)
    assert t.cost_uncached_usd == pytest.approx((10_000 * 3.00 + 1_000 * 15.00) / 1e6)
    assert (t.cache_write_tokens, t.cache_write_1h_tokens) == (6_000, 1_000)


def test_a_moving_breakpoint_is_not_a_prefix_break() -> None:
    """Request k's last message carries nocp's breakpoint and request k+1's does not: the prefix
    stability check compares the prompts without cache_control."""
    first = to_messages(_request(5), own_cache=True)
    second = to_messages(_request(9), own_cache=True)
    acc: dict[str, Any] = {"checked": 0, "breaks": 0, "reasons": {}}
    _stability(sent_view("messages", first), sent_view("messages", second), acc)
    assert acc == {"checked": 1, "breaks": 0, "reasons": {}}
    changed = json.loads(json.dumps(second))
    changed["messages"][2]["content"][0]["content"] = "Oslo: 4 C"
    _stability(sent_view("messages", first), sent_view("messages", changed), acc)
    assert acc["breaks"] == 1 and acc["reasons"] == {"an earlier user message changed": 1}


def _long_result(nocp_cost: float, turns: int = 30) -> ScenarioResult:
    msgs: list[dict[str, Any]] = []
    for i in range(turns):
        msgs += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    conv = Conversation("bfcl/long_0", tuple(msgs))
    sc = Scenario("bfcl-long-context", "bfcl", "trace", "long", (conv,))
    result = ScenarioResult(sc, "messages", "claude-sonnet-4-5", SONNET)
    totals = ConversationTotals(conv.id, len(conv.turns()))
    totals.base.cost_usd, totals.nocp.cost_usd = 1.0, nocp_cost
    result.conversations.append(totals)
    return result


def test_long_replays_are_judged_against_the_target() -> None:
    """A Messages replay of 30 turns or more passes at or under 0.35x of direct and fails above;
    shorter replays are not judged."""
    from proxy.bench.report import _long_summary

    assert _long_summary([_long_result(0.30)])["status"] == "PASS"
    over = _long_summary([_long_result(0.40)])
    assert over["status"] == "FAIL" and over["conversations"][0]["cost_ratio"] == 0.4
    short = _long_summary([_long_result(0.30, turns=29)])
    assert short["status"] == "N/A" and short["conversations"] == []


def test_quick_runs_one_seed_scenario_and_one_trace_per_other_protocol() -> None:
    """--quick replays everything through chat, and api-small plus the first SWE-agent trace
    through each other protocol."""
    from proxy.bench.cli import _jobs

    def sc(name: str, kind: str) -> Scenario:
        return Scenario(name, name.split("-")[0], kind, name, ())  # type: ignore[arg-type]

    scenarios = [
        sc("rag-small", "seed"),
        sc("api-small", "seed"),
        sc("swe-agent-fc", "trace"),
        sc("bfcl-base", "trace"),
    ]
    quick = _jobs(argparse.Namespace(quick=True), scenarios, ["chat", "responses", "messages"])
    assert [(p, s.name) for p, s in quick] == [
        *(("chat", s.name) for s in scenarios),
        ("responses", "api-small"),
        ("responses", "swe-agent-fc"),
        ("messages", "api-small"),
        ("messages", "swe-agent-fc"),
    ]
    full = _jobs(argparse.Namespace(quick=False), scenarios, ["chat", "messages"])
    assert len(full) == 2 * len(scenarios)


# ------------------------------------------------------------------------------ a live run


async def test_run_suite_replays_through_responses_and_messages(tmp_path: Path) -> None:
    """A live run through Responses and both Messages variants bills every request on both paths
    with a positive cost; Messages direct without breakpoints caches nothing while nocp writes and
    reads the cache; the report has a row per protocol."""
    from proxy.bench.report import build_result, markdown_report, readme_block
    from proxy.bench.runner import run_suite
    from proxy.config import PricingConfig
    from proxy.pricing import PriceTable

    sc = seed_scenario("api", "small")
    run = await run_suite(
        [sc],
        model="gpt-4.1",
        prices=PriceTable.from_config(PricingConfig()),
        folder=tmp_path,
        protocols=("responses", "messages", "messages-own-cache"),
    )
    by_name = {r.name: r for r in run.results}
    assert list(by_name) == ["api-small@responses", "api-small@messages", "api-small@messages-own-cache"]
    for r in run.results:
        assert r.base.requests == r.nocp.requests == sc.requests, r.name
        assert r.base.errors == r.nocp.errors == 0, (r.name, r.log.get("http_errors"))
        assert r.base.cost_usd > 0 and r.nocp.cost_usd > 0, r.name
        assert r.nocp.prompt_tokens < r.base.prompt_tokens, r.name
        assert r.log["lines"] == sc.requests, r.name
    plain = by_name["api-small@messages"]
    assert plain.model == "claude-sonnet-4-5"
    assert plain.base.cached_tokens == plain.base.cache_write_tokens == 0
    assert plain.nocp.cache_write_tokens > 0 and plain.nocp.cached_tokens > 0
    assert plain.nocp.cost_usd < plain.base.cost_usd
    own = by_name["api-small@messages-own-cache"]
    assert own.base.cache_write_tokens > 0
    assert own.nocp.cost_usd <= own.base.cost_usd

    result = build_result(run, quick=True, seed=0, duration_s=1.0, overhead=None, notes=[], git={})
    assert [p["protocol"] for p in result["protocols"]] == ["responses", "messages", "messages-own-cache"]
    assert all(p["cost_ratio"] is not None and p["requests"] == sc.requests for p in result["protocols"])
    report = markdown_report(result, {})
    assert "## Per protocol" in report and "api-small@messages-own-cache" in report
    assert "| messages (`claude-sonnet-4-5`) |" in readme_block(result, "bench.md")  # the compact table
