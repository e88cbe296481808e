"""The cache-aware cost baseline: what the provider would have cached for the raw prompts."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from proxy.cachebaseline import BLOCK_TOKENS, BaselineCache, counted, estimate, fingerprint
from proxy.cli import main
from proxy.pipeline import StageContext
from proxy.protocols import AnthropicAdapter, OpenAIChatAdapter, Prompt
from proxy.testing import FakeUpstream
from proxy.translog import TransactionLog

MODEL = "gpt-4o"
FILLER = "The quarterly report was reviewed and the plan for next year was discussed in detail. " * 50


async def shorten_latest(prompt: Prompt, ctx: StageContext) -> Prompt:
    """A lossy stage: the latest user message loses its second half."""
    last = max((i for i, s in enumerate(prompt.segments) if s.kind == "user"), default=None)
    if last is None:
        return prompt
    text = prompt.segments[last].text
    return prompt.with_text(last, text[: len(text) // 2])


def turns(n: int, *, early: str = "Task: fix the build.") -> list[list[dict[str, Any]]]:
    """The client's messages at each of ``n`` turns of one growing conversation."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent. " + FILLER}]
    msgs.append({"role": "user", "content": early})
    out: list[list[dict[str, Any]]] = []
    for k in range(n):
        msgs.append({"role": "user", "content": f"Step {k}: {FILLER}"})
        out.append(copy.deepcopy(msgs))
        msgs.append({"role": "assistant", "content": f"Done step {k}."})
    return out


async def _post(url: str, messages: list[dict[str, Any]], *, key: str = "k", session: str = "s1") -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": messages},
            headers={"Authorization": f"Bearer {key}", "X-Session-Id": session},
        )
        r.raise_for_status()


async def test_three_turns_match_the_fake_prefix_cache(fake: FakeUpstream, make_proxy: Any) -> None:
    """Over 3 turns the baseline cached tokens are what the fake's prefix cache gives the raw prompts."""
    proxy = await make_proxy(stages=[shorten_latest])
    conversation = turns(3)
    for messages in conversation:
        await _post(proxy.url, messages)
    lines = await proxy.log_lines(3)
    assert len(lines) == 3
    async with FakeUpstream() as direct:
        for messages in conversation:
            await _post(direct.url, messages)
        raw_cached = [u.cached_tokens for u in direct.usage_log]
    logged = [line["baseline_cached_tokens"] for line in lines]
    assert raw_cached[1] > 0
    for mine, theirs in zip(logged, raw_cached, strict=True):
        assert abs(mine - theirs) <= BLOCK_TOKENS
    assert all(line["baseline_same_share_cost_usd"] is not None for line in lines)
    # the sent prompts differ at the latest message only: real and raw cache alike, savings > 0
    assert all(line["cost_savings_usd"] > 0 for line in lines[1:])


async def test_broken_prefix_gets_no_baseline_cache(fake: FakeUpstream, make_proxy: Any) -> None:
    """A raw prompt whose early message changed shares no prefix: baseline cached 0."""
    proxy = await make_proxy(stages=[shorten_latest])
    first = turns(2)
    await _post(proxy.url, first[0])
    await _post(proxy.url, first[1])
    changed = copy.deepcopy(first[1])
    changed[0]["content"] = "You are a careful reviewer. " + FILLER
    await _post(proxy.url, changed)
    lines = await proxy.log_lines(3)
    assert lines[1]["baseline_cached_tokens"] > 0
    assert lines[2]["baseline_cached_tokens"] == 0


def test_tenants_and_sessions_do_not_share_fingerprints() -> None:
    """A fingerprint is kept per tenant and session: another tenant or session starts uncached."""
    cache = BaselineCache()
    adapter = OpenAIChatAdapter()
    first, second = turns(2)
    body1, body2 = {"model": MODEL, "messages": first}, {"model": MODEL, "messages": second}
    assert cache.observe("tenant-a", "s1", adapter, body1, MODEL).cached == 0
    assert cache.observe("tenant-b", "s1", adapter, body2, MODEL).cached == 0
    assert cache.observe("tenant-a", "s2", adapter, body2, MODEL).cached == 0
    assert cache.observe("tenant-a", "s1", adapter, body2, MODEL).cached >= 1024


def test_fingerprints_expire_with_the_provider_cache() -> None:
    """After the cache lifetime the session's previous prompt no longer counts."""
    now = [0.0]
    cache = BaselineCache(ttl_s=600, clock=lambda: now[0])
    adapter = OpenAIChatAdapter()
    first, second = turns(2)
    cache.observe("t", "s", adapter, {"messages": first}, MODEL)
    now[0] = 601.0
    assert cache.observe("t", "s", adapter, {"messages": second}, MODEL).cached == 0


def test_anthropic_caches_only_at_the_clients_breakpoints() -> None:
    """Anthropic: no client breakpoint, no cache; else the shared prefix up to a (moved) breakpoint."""
    adapter = AnthropicAdapter()
    model = "claude-sonnet-4-5"
    first, second = turns(2)

    def body(msgs: list[dict[str, Any]], mark: bool) -> dict[str, Any]:
        system, rest = msgs[0]["content"] * 2, copy.deepcopy(msgs[1:])
        b: dict[str, Any] = {"model": model, "system": system, "messages": rest}
        if mark:
            b["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        return b

    def fp(b: dict[str, Any]) -> Any:
        return counted(adapter, fingerprint(adapter, b, model), model)

    plain = estimate("anthropic", fp(body(second, False)), None)
    prev = fp(body(first, False))
    assert estimate("anthropic", fp(body(second, False)), prev).cached == 0
    assert plain.cached == 0 and plain.written == 0
    prev = fp(body(first, True))
    cur = fp(body(second, True))
    got = estimate("anthropic", cur, prev)
    assert got.cached == cur.ends[0] and got.written == 0

    def own_cache(msgs: list[dict[str, Any]]) -> dict[str, Any]:  # system and last message marked
        b = body(msgs, True)
        b["messages"][-1]["content"] = [
            {"type": "text", "text": b["messages"][-1]["content"], "cache_control": {"type": "ephemeral"}}
        ]
        return b

    prev = fp(own_cache(first))
    cur = fp(own_cache(second))
    got = estimate("anthropic", cur, prev)  # the moved breakpoint keeps the previous prompt's prefix
    assert got.cached == prev.tokens and got.written == cur.tokens - prev.tokens


async def test_logs_stats_shows_the_cache_aware_saving(
    fake: FakeUpstream, make_proxy: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nocp logs stats`` totals the cache-aware saving, with the old same-share one beside it."""
    monkeypatch.delenv("NOCP_CONFIG", raising=False)
    proxy = await make_proxy(stages=[shorten_latest])
    for messages in turns(3):
        await _post(proxy.url, messages)
    lines = await proxy.log_lines(3)
    capsys.readouterr()
    assert main(["logs", "stats", "--json", str(proxy.log_path)]) == 0
    t = json.loads(capsys.readouterr().out)["total"]
    assert t["cost_savings_usd"] == pytest.approx(sum(line["cost_savings_usd"] for line in lines))
    assert t["baseline_cached_tokens"] == sum(line["baseline_cached_tokens"] for line in lines)
    assert 0 < t["baseline_cache_hit_share"] < 1
    old = [
        line["cost_savings_usd"] - line["baseline_cost_usd"] + line["baseline_same_share_cost_usd"]
        for line in lines
    ]
    assert t["cost_savings_same_share_usd"] == pytest.approx(sum(old))
    assert main(["logs", "stats", str(proxy.log_path)]) == 0
    assert "same-share (old)" in capsys.readouterr().out


def test_cost_model_prices_the_baseline_from_the_cache_estimate() -> None:
    """The baseline reads the estimated raw cache, the same-share one is kept; unchanged: no saving."""
    from proxy.cachebaseline import BaselineEstimate
    from proxy.pricing import CostModel, Price, PriceTable

    cost = CostModel(PriceTable([("m*", Price(2.0, 1.0, 10.0))]))
    rec = TransactionLog(model="m1", prompt_tokens=1000, cached_tokens=0, completion_tokens=10)
    rec.set_input_tokens(3000, 1000)
    cost.apply(rec, BaselineEstimate(2048))
    assert rec.baseline_cached_tokens == 2048
    assert rec.baseline_cost_usd == pytest.approx((952 * 2 + 2048 * 1 + 100) / 1e6)
    assert rec.baseline_same_share_cost_usd == pytest.approx((3000 * 2 + 100) / 1e6)
    assert rec.cost_savings_usd == pytest.approx(rec.baseline_cost_usd - rec.estimated_cost_usd)
    same = TransactionLog(model="m1", prompt_tokens=3000, cached_tokens=2048, completion_tokens=10)
    same.set_input_tokens(3000, 3000)
    cost.apply(same, BaselineEstimate(1024))
    assert same.baseline_cached_tokens == 2048 and same.cost_savings_usd == 0


def test_unchanged_requests_count_no_token() -> None:
    """A request nocp did not change needs no estimate: nothing is counted (no tokenizer on
    the passthrough path) and the session keeps only hashes of its prompt."""
    adapter = OpenAIChatAdapter()
    calls: list[Any] = []

    class Counting(OpenAIChatAdapter):
        def count_prompt(self, body: Any, model: str) -> int:
            calls.append(body)
            return super().count_prompt(body, model)

    cache = BaselineCache()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello " * 50}]}
    assert cache.observe("-", "s", Counting(), body, "gpt-4o", changed=False) is None
    assert calls == []
    ((_, kept),) = cache._data.values()
    assert kept.ends == () and kept.units == () and len(kept.chain) == 1
    assert cache.observe("-", "s", adapter, body, "gpt-4o", changed=True) is not None
