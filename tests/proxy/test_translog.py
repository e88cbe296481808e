"""The TransactionLog: one line per request, every field, no secrets, rotation, flush on close."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.testing import FakeUpstream
from proxy.translog import (
    HopUsage,
    TransactionLog,
    TransactionLogWriter,
    figures,
    log_session_id,
    retrieval_overhead_tokens,
)

SECRET = "sk-test-VERYSECRET0123456789"

DESIGN_FIELDS = {
    "schema_version", "transaction_id", "timestamp", "session_id", "endpoint", "protocol", "model",
    "upstream", "stream", "status", "outcome", "error_message", "user_query", "tools_invoked",
    "raw_input_tokens", "optimized_input_tokens", "input_compression_ratio", "input_compression_methods",
    "compression_justified", "segments", "fail_open", "prompt_tokens", "cached_tokens", "completion_tokens",
    "llm_latency_ms", "ttft_ms", "raw_output_tokens", "optimized_output_tokens", "output_compression_ratio",
    "serialization_format", "total_latency_ms", "compression_latency_ms", "serialization_latency_ms",
    "proxy_overhead_ms", "estimated_cost_usd", "baseline_cost_usd", "cost_savings_usd", "total_token_savings",
    "compression_overhead_tokens", "efficiency_delta",
    # added with reversible compression (schema_version stays 1: fields only added)
    "retrieval_offered", "retrieval_rounds", "retrievals", "retrieval_tokens", "retrieval_hops",
    # added with Anthropic Messages (prompt-cache writes, breakpoints nocp added)
    "cache_creation_input_tokens", "cache_creation_1h_input_tokens", "cache_breakpoints_added",
    # added with the cache-aware cost baseline
    "baseline_cached_tokens", "baseline_cache_write_tokens", "baseline_same_share_cost_usd",
    # added with the holdout experiment, shadow mode and per-request control (issue 18)
    "experiment", "cohort", "mode", "bypass", "policy", "shadow_input_tokens",
    # added with the learned compression policy
    "policy_arms",
}  # fmt: skip


async def test_one_line_per_request_with_design_fields(fake: FakeUpstream, make_proxy: Any) -> None:
    """Each proxied request writes exactly one line carrying every DESIGN.md field."""
    proxy = await make_proxy()
    messages: Any = [{"role": "user", "content": "What is the capital of France?"}]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=SECRET, max_retries=0) as client:
        for _ in range(3):
            await client.chat.completions.create(
                model="gpt-4o", messages=messages, extra_headers={"X-Session-Id": "sess-1"}
            )
    lines = await proxy.log_lines(3)
    assert len(lines) == 3
    assert len({line["transaction_id"] for line in lines}) == 3
    line = lines[0]
    assert set(line) == DESIGN_FIELDS
    assert line["schema_version"] == 1
    assert line["timestamp"].endswith("Z")
    assert line["session_id"] == log_session_id("sess-1")  # the client's id, hashed
    assert (line["endpoint"], line["protocol"], line["model"]) == ("/v1/chat/completions", "openai", "gpt-4o")
    assert (line["upstream"], line["status"], line["outcome"]) == ("fake-openai", 200, "ok")
    assert line["user_query"] == "What is the capital of France?"
    assert line["raw_input_tokens"] == line["optimized_input_tokens"] == line["prompt_tokens"]
    assert line["completion_tokens"] == fake.usage_log[0].completion_tokens
    assert line["total_latency_ms"] >= line["llm_latency_ms"] > 0


async def test_no_secret_in_log(fake: FakeUpstream, make_proxy: Any) -> None:
    """API keys never appear in the log, not even in upstream error messages."""
    from proxy.testing import Fail

    proxy = await make_proxy()
    fake.script(Fail(401, body={"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "x"}}))
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=SECRET, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    await proxy.log_lines(2)
    text = proxy.log_path.read_text()
    assert SECRET not in text and "VERYSECRET" not in text
    assert "Bearer" not in text


async def test_writer_rotates_by_size(tmp_path: Path) -> None:
    """The writer rotates to .1, .2 when the file would pass max_bytes, and keeps whole lines."""
    path = tmp_path / "t.jsonl"
    writer = TransactionLogWriter(path, max_bytes=2000, backups=2, queue_size=100)
    await writer.start()
    for i in range(30):
        writer.submit(TransactionLog(model=f"m{i}"))
    await writer.close()
    files = [path, path.with_name("t.jsonl.1"), path.with_name("t.jsonl.2")]
    assert all(f.exists() for f in files)
    assert not path.with_name("t.jsonl.3").exists()
    for f in files:
        assert f.stat().st_size <= 2000
        for line in f.read_text().splitlines():
            json.loads(line)


async def test_close_flushes_every_queued_record(tmp_path: Path) -> None:
    """Records queued right before close() are all written, none cut in half."""
    path = tmp_path / "t.jsonl"
    writer = TransactionLogWriter(path, max_bytes=10**9, backups=1, queue_size=10_000)
    await writer.start()
    for i in range(2000):
        writer.submit(TransactionLog(model=f"m{i}"))
    await writer.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["model"] for line in lines] == [f"m{i}" for i in range(2000)]


async def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    """When the queue is full, records are dropped and counted instead of blocking the request."""
    writer = TransactionLogWriter(tmp_path / "t.jsonl", max_bytes=10**9, backups=1, queue_size=5)
    for _ in range(8):  # writer not started: nothing drains the queue
        writer.submit(TransactionLog())
    assert writer.dropped == 3
    await writer.start()
    await writer.close()
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 5


async def test_finalizer_error_keeps_line(tmp_path: Path) -> None:
    """A failing token-count finalizer still writes the line and records why."""
    writer = TransactionLogWriter(tmp_path / "t.jsonl", max_bytes=10**9, backups=1, queue_size=5)
    await writer.start()

    def boom() -> None:
        raise ValueError("bad count")

    writer.submit(TransactionLog(model="x"), boom)
    await writer.close()
    (line,) = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert line["fail_open"][0]["stage"] == "translog.finalize"


async def test_streamed_request_logged_with_usage(fake: FakeUpstream, make_proxy: Any) -> None:
    """A streamed request is logged with the usage read from the stream and a time to first chunk."""
    proxy = await make_proxy()
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
    await asyncio.sleep(0)
    (line,) = await proxy.log_lines(1)
    assert line["stream"] is True
    assert line["prompt_tokens"] == fake.usage_log[-1].prompt_tokens
    assert line["ttft_ms"] is not None and line["ttft_ms"] <= line["llm_latency_ms"]


async def test_observers_see_finalized_records(tmp_path: Path) -> None:
    """Observers get every record after it is written, with what the finalizer filled in."""
    writer = TransactionLogWriter(tmp_path / "t.jsonl", max_bytes=10**9, backups=1, queue_size=50)
    seen: list[tuple[str | None, int]] = []
    writer.observers.append(lambda r: seen.append((r.model, r.raw_input_tokens)))

    def broken(record: TransactionLog) -> None:
        raise RuntimeError("observer bug")

    writer.observers.append(broken)
    await writer.start()
    rec = TransactionLog(model="m")
    writer.submit(rec, lambda: rec.set_input_tokens(120, 100))
    await writer.close()
    assert seen == [("m", 120)]
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1


async def test_secrets_in_free_text_are_redacted(tmp_path: Path) -> None:
    """Keys quoted by error messages, fail-open reasons or the user's words never reach disk."""
    from proxy.translog import FailOpen

    writer = TransactionLogWriter(tmp_path / "t.jsonl", max_bytes=10**9, backups=1, queue_size=5)
    await writer.start()
    rec = TransactionLog(error_message=f"bad key {SECRET}", user_query="my key is AIzaSyA1234567890abcdef")
    rec.fail_open.append(FailOpen(stage="history.summarizer", reason=f"AuthenticationError: Bearer {SECRET}"))
    writer.submit(rec)
    await writer.close()
    text = (tmp_path / "t.jsonl").read_text()
    assert "VERYSECRET" not in text and "AIzaSyA" not in text
    assert text.count("[redacted]") == 3


# --- the derived figures ------------------------------------------------------------------


def retrieval_record(**kw: Any) -> TransactionLog:
    """1000 raw -> 439 sent (56.1% gross), then one retrieval round whose second prompt (600)
    and the first completion the client never saw (20) cost 620 tokens: net -59."""
    hops = [
        HopUsage(prompt_tokens=439, completion_tokens=20),
        HopUsage(prompt_tokens=600, completion_tokens=50),
    ]
    rec = TransactionLog(
        status=200,
        prompt_tokens=1039,
        completion_tokens=70,
        retrieval_rounds=1,
        retrieval_hops=hops,
        compression_overhead_tokens=retrieval_overhead_tokens(hops, 1),  # as Retrieval.finish adds it
        **kw,
    )
    rec.set_input_tokens(1000, 439)
    return rec


def test_figures_of_a_request_with_a_summarizer_call() -> None:
    """Gross is raw - sent, net subtracts the summarizer overhead, billed is prompt + completion."""
    rec = TransactionLog(status=200, prompt_tokens=700, completion_tokens=30, compression_overhead_tokens=50)
    rec.set_input_tokens(1000, 700)
    f = figures(rec)
    assert (f.gross_saved_tokens, f.overhead_tokens, f.net_saved_tokens) == (300, 50, 250)
    assert f.saved_share == 0.25 and f.billed_tokens == 730
    assert (f.retrieval_overhead_tokens, f.retrieval_rounds) == (0, 0)
    assert (rec.total_token_savings, rec.efficiency_delta) == (250, 0.25)


def test_retrieval_round_that_cost_more_than_it_saved_is_a_negative_net_saving() -> None:
    """A retrieval round billing more than the cut saved gives a negative net saving and share."""
    rec = retrieval_record()
    f = figures(rec)
    assert f.gross_saved_tokens == 561
    assert f.overhead_tokens == f.retrieval_overhead_tokens == 620
    assert f.net_saved_tokens == -59 == rec.total_token_savings
    assert f.saved_share == pytest.approx(-0.059) and rec.efficiency_delta == pytest.approx(-0.059)
    assert (f.billed_tokens, f.retrieval_rounds) == (1109, 1)


def test_retrieval_overhead_is_the_extra_prompts_and_unseen_completions() -> None:
    """Retrieval overhead: prompts after the first call, completions of the answered rounds only."""
    hops = [HopUsage(prompt_tokens=p, completion_tokens=c) for p, c in ((100, 5), (150, 7), (200, 40))]
    assert retrieval_overhead_tokens(hops, 2) == 150 + 200 + 5 + 7
    assert retrieval_overhead_tokens(hops[:1], 0) == 0
    assert retrieval_overhead_tokens([HopUsage(), HopUsage(prompt_tokens=9)], 1) == 9


@pytest.mark.parametrize(
    ("outcome", "error", "counts"),
    [("ok", False, True), ("upstream_error", True, False), ("proxy_error", True, False),
     ("client_error", False, False), ("cancelled", False, False)],
)  # fmt: skip
def test_error_and_savings_by_outcome(outcome: Any, error: bool, counts: bool) -> None:
    """Errors are upstream_error and proxy_error; only ok requests count for savings."""
    f = figures(TransactionLog(outcome=outcome))
    assert (f.error, f.counts_for_savings) == (error, counts)


def test_figures_without_usage_or_raw_tokens() -> None:
    """No usage from the upstream: billed is None; no raw prompt: no saved share."""
    f = figures(TransactionLog(status=200, completion_tokens=None))
    assert f.billed_tokens is None and f.saved_share is None and f.net_saved_tokens == 0
    assert figures(TransactionLog(completion_tokens=12)).billed_tokens == 12
