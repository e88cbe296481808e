"""GET /metrics: Prometheus counters and histograms filled from the TransactionLog records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics
from proxy.testing import Fail, FakeUpstream, StreamStall
from proxy.translog import FailOpen, HopUsage, TransactionLog, figures

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Name three prime numbers."}]}


def parse(text: str) -> Samples:
    """Exposition text -> {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


async def scrape(url: str, until: Callable[[Samples], bool] = lambda s: True) -> Samples:
    """Scrape ``url``/metrics until ``until`` holds (observers run just after the log write)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(250):
            async with http.get(f"{url}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=")
                samples = parse(await resp.text())
            if until(samples):
                return samples
            await asyncio.sleep(0.02)
    raise AssertionError("metrics never reached the expected state")


def requests_seen(n: int) -> Callable[[Samples], bool]:
    return lambda s: value(s, "nocp_requests_total") >= n


async def test_metrics_after_proxied_requests(fake: FakeUpstream, make_proxy: Any) -> None:
    """Requests, tokens, upstream usage and latency histograms match what the log recorded."""
    proxy = await make_proxy()
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-x", max_retries=0) as client:
        await client.chat.completions.create(**CHAT)
        await client.chat.completions.create(**CHAT)
        stream = await client.chat.completions.create(**CHAT, stream=True)
        async for _ in stream:
            pass
        fake.script(Fail(500))
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(**CHAT)
    async with aiohttp.ClientSession() as http:
        url = f"{proxy.url}/v1beta/models/gemini-2.0-flash:generateContent"
        async with http.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]}) as resp:
            assert resp.status == 200
    lines = await proxy.log_lines(5)
    s = await scrape(proxy.url, requests_seen(5))

    chat = "/v1/chat/completions"
    assert value(s, "nocp_requests_total", endpoint=chat, model="gpt-4o", status="200", outcome="ok") == 3
    assert value(s, "nocp_requests_total", model="gpt-4o", status="500", outcome="upstream_error") == 1
    gemini = "/v1beta/models/{model}:generateContent"
    assert value(s, "nocp_requests_total", endpoint=gemini, protocol="gemini", model="gemini-2.0-flash") == 1

    ok = [x for x in lines if x["outcome"] == "ok"]
    assert value(s, "nocp_input_tokens_raw_total") == sum(x["raw_input_tokens"] for x in ok)
    assert value(s, "nocp_input_tokens_sent_total") == sum(x["optimized_input_tokens"] for x in ok)
    assert value(s, "nocp_tokens_saved_total") == sum(
        x["raw_input_tokens"] - x["optimized_input_tokens"] for x in ok
    )
    assert value(s, "nocp_upstream_prompt_tokens_total", model="gpt-4o") == sum(
        x["prompt_tokens"] for x in ok if x["model"] == "gpt-4o"
    )
    assert value(s, "nocp_upstream_completion_tokens_total") == sum(x["completion_tokens"] for x in ok)
    assert value(s, "nocp_upstream_cached_tokens_total") == sum(x["cached_tokens"] or 0 for x in ok)

    assert value(s, "nocp_request_duration_seconds_count") == 5
    assert value(s, "nocp_request_duration_seconds_sum") == pytest.approx(
        sum(x["total_latency_ms"] for x in lines) / 1000
    )
    assert value(s, "nocp_request_duration_seconds_bucket", model="gpt-4o", le="+Inf") == 4
    assert value(s, "nocp_upstream_duration_seconds_count") == 4  # successful ones
    assert value(s, "nocp_time_to_first_chunk_seconds_count") == 1  # the streamed one
    assert value(s, "nocp_compression_duration_seconds_count") == 4
    assert value(s, "nocp_proxy_overhead_seconds_count") == 4
    assert value(s, "nocp_streams_in_flight") == 0
    assert value(s, "nocp_translog_written_records_total") == 5
    assert value(s, "nocp_translog_dropped_records_total") == 0
    assert value(s, "nocp_alerts_total") == 0


async def test_streams_in_flight(fake: FakeUpstream, make_proxy: Any) -> None:
    """The streams-in-flight gauge counts a stream while it is being relayed, and drops back after."""
    proxy = await make_proxy()
    fake.script(StreamStall(after_chunks=1, seconds=0.5))
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-x", max_retries=0) as client:
        stream = await client.chat.completions.create(**CHAT, stream=True)
        chunks = aiter(stream)
        await anext(chunks)
        during = await scrape(proxy.url)
        async for _ in chunks:
            pass
    assert value(during, "nocp_streams_in_flight") == 1
    after = await scrape(proxy.url, requests_seen(1))
    assert value(after, "nocp_streams_in_flight") == 0


async def test_each_app_has_its_own_registry(fake: FakeUpstream, make_proxy: Any) -> None:
    """Two proxies in one process keep separate metrics."""
    one, two = await make_proxy(), await make_proxy()
    async with aiohttp.ClientSession() as http, http.post(f"{one.url}/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200
    await scrape(one.url, requests_seen(1))
    assert value(await scrape(two.url), "nocp_requests_total") == 0


def test_fail_opens_and_model_label_cap() -> None:
    """Fail-opens count per stage; models past max_models share the label "other"."""
    metrics = Metrics(max_models=1)
    rec = TransactionLog(model="a", endpoint="/v1/chat/completions", protocol="openai", status=200)
    rec.fail_open.append(FailOpen(stage="tool_output", reason="timeout"))
    metrics.observe(rec)
    metrics.observe(TransactionLog(model="b", endpoint="/v1/chat/completions", protocol="openai", status=200))
    s = parse(metrics.render().decode())
    assert value(s, "nocp_fail_open_total", stage="tool_output") == 1
    assert value(s, "nocp_requests_total", model="a") == 1
    assert value(s, "nocp_requests_total", model="other") == 1
    assert value(s, "nocp_requests_total", model="b") == 0


def test_cost_counter_includes_summarizer_cost() -> None:
    """nocp_cost_usd_total is baseline minus the logged saving, so summarizer calls count as cost."""
    metrics = Metrics()
    rec = TransactionLog(model="gpt-4o", endpoint="/v1/chat/completions", protocol="openai", status=200)
    rec.estimated_cost_usd, rec.baseline_cost_usd, rec.cost_savings_usd = 0.5, 1.0, 0.25  # 0.25 summarizer
    metrics.observe(rec)
    s = parse(metrics.render().decode())
    assert value(s, "nocp_cost_usd_total", model="gpt-4o") == 0.75
    assert value(s, "nocp_baseline_cost_usd_total", model="gpt-4o") == 1.0


def test_token_counters_net_out_to_the_logged_net_savings() -> None:
    """tokens_saved - overhead_tokens is the sum of the records' net savings (retrieval rounds
    included); a failed request adds no tokens."""
    metrics = Metrics()
    base = {"model": "gpt-4o", "endpoint": "/v1/chat/completions", "protocol": "openai", "status": 200}
    hops = [
        HopUsage(prompt_tokens=439, completion_tokens=20),
        HopUsage(prompt_tokens=600, completion_tokens=50),
    ]
    costly = TransactionLog(
        **base,
        retrieval_offered=True,
        retrieval_rounds=1,
        retrieval_hops=hops,
        compression_overhead_tokens=620,
    )
    costly.set_input_tokens(1000, 439)
    summarized = TransactionLog(**base, compression_overhead_tokens=50)
    summarized.set_input_tokens(1000, 700)
    failed = TransactionLog(**(base | {"status": 500}), outcome="upstream_error")
    failed.set_input_tokens(800, 300)
    for rec in (costly, summarized, failed):
        metrics.observe(rec)
    s = parse(metrics.render().decode())
    net = value(s, "nocp_tokens_saved_total") - value(s, "nocp_compression_overhead_tokens_total")
    assert net == figures(costly).net_saved_tokens + figures(summarized).net_saved_tokens == -59 + 250
    assert value(s, "nocp_input_tokens_raw_total") == 2000
    assert value(s, "nocp_retrieval_rounds_total", model="gpt-4o") == 1
