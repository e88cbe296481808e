"""Drift detection: each alert kind fires once per episode and clears; live in the proxy and
offline over rotated logs with `nocp drift`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from proxy.cli import main
from proxy.config import DriftConfig
from proxy.drift import KINDS, Alert, DriftDetector
from proxy.testing import Fail, FakeUpstream
from proxy.translog import FailOpen, HopUsage, TransactionLog, TransactionLogWriter, figures
from tests.helpers import complete_lines

WINDOW = 10


def good(i: int = 0, model: str = "m", **kw: Any) -> TransactionLog:
    """A healthy request: 30% saved, 500 of 700 prompt tokens cached, 400 ms upstream."""
    fields: dict[str, Any] = {
        "model": model,
        "status": 200,
        "prompt_tokens": 700,
        "cached_tokens": 500,
        "llm_latency_ms": 400.0,
        "proxy_overhead_ms": 3.0,
        "total_latency_ms": 403.0,
    }
    raw, sent = kw.pop("raw", 1000), kw.pop("sent", 700)
    rec = TransactionLog(**(fields | kw))
    rec.set_input_tokens(raw, sent)
    return rec


def failed(i: int) -> TransactionLog:
    return TransactionLog(model="m", status=500, outcome="upstream_error", total_latency_ms=50.0)


# For each kind, a regime that is worse by more than the warning threshold and less than the
# critical one (DriftConfig defaults), so that it raises exactly one warning.
WORSE: dict[str, Callable[[int], TransactionLog]] = {
    "compression_ratio": lambda i: good(i, sent=850),  # ratio 0.70 -> 0.85
    "token_savings": lambda i: good(i, sent=800),  # 300 -> 200 tokens saved per request
    "cache_hit_share": lambda i: good(i, cached_tokens=350),  # 71% -> 50%
    "proxy_overhead": lambda i: good(i, proxy_overhead_ms=5.5),  # 3 -> 5.5 ms
    "upstream_latency": lambda i: good(i, llm_latency_ms=700.0),  # 400 -> 700 ms
    "error_rate": lambda i: failed(i) if i % 10 == 0 else good(i),  # 0% -> 10%
    "fail_open_rate": lambda i: (
        good(i, fail_open=[FailOpen(stage="s", reason="timeout")]) if i % 10 == 0 else good(i)
    ),  # 0% -> 10%
}


def feed(detector: DriftDetector, records: list[TransactionLog]) -> list[Alert]:
    return [alert for rec in records for alert in detector.observe(rec)]


def test_every_kind_has_a_case() -> None:
    """The synthetic cases cover every alert kind the detector knows."""
    assert set(WORSE) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_fires_once_then_clears(kind: str) -> None:
    """A worse regime warns once per scope, stays quiet while it lasts, resolves once, can recur."""
    detector = DriftDetector(DriftConfig(window=WINDOW, quiet_s=0))
    assert feed(detector, [good(i) for i in range(2 * WINDOW)]) == []

    alerts = [a for a in feed(detector, [WORSE[kind](i) for i in range(WINDOW)]) if a.kind == kind]
    # once for all models and once for model "m" (every record is model "m")
    assert sorted((a.model or "", a.state, a.severity) for a in alerts) == [
        ("", "firing", "warning"),
        ("m", "firing", "warning"),
    ]
    overall = next(a for a in alerts if a.model is None)
    assert overall.window == WINDOW and overall.previous != overall.recent and overall.message
    assert kind in {a.kind for a in detector.active()}

    later = [a for a in feed(detector, [WORSE[kind](i) for i in range(3 * WINDOW)]) if a.kind == kind]
    assert sorted((a.model or "", a.state) for a in later) == [("", "resolved"), ("m", "resolved")]
    assert kind not in {a.kind for a in detector.active()}

    # back to the old normal is an improvement (no alert), then worse again: a new episode
    feed(detector, [good(i) for i in range(2 * WINDOW)])
    again = [a for a in feed(detector, [WORSE[kind](i) for i in range(WINDOW)]) if a.kind == kind]
    assert [a.state for a in again if a.model is None] == ["firing"]


def test_escalation_to_critical_fires_once_more() -> None:
    """A change past the critical threshold raises a warning, then one critical, then one resolution."""
    detector = DriftDetector(DriftConfig(window=WINDOW, quiet_s=0))
    feed(detector, [good(i) for i in range(2 * WINDOW)])
    alerts = [
        (a.state, a.severity)
        for a in feed(detector, [failed(i) if i % 2 else good(i) for i in range(4 * WINDOW)])
        if a.kind == "error_rate" and a.model is None
    ]
    assert alerts == [("firing", "warning"), ("firing", "critical"), ("resolved", "critical")]


def test_per_model_scope() -> None:
    """Only the model that got worse alerts in its own scope; the other model stays quiet."""
    detector = DriftDetector(DriftConfig(window=WINDOW))
    base = [good(i, model=m) for i in range(2 * WINDOW) for m in ("a", "b")]
    assert feed(detector, base) == []
    worse = [good(i, model="a") if m == "a" else good(i, model="b", llm_latency_ms=2000.0)
             for i in range(WINDOW) for m in ("a", "b")]  # fmt: skip
    alerts = [a for a in feed(detector, worse) if a.kind == "upstream_latency"]
    assert {a.model for a in alerts} <= {None, "b"}
    assert any(a.model == "b" and a.severity == "critical" for a in alerts)


def test_token_savings_are_net_of_retrieval_rounds() -> None:
    """Retrieval rounds costing 100 tokens per request raise a token-savings alert though raw and
    sent tokens stay the same: drift compares the records' net savings (300 -> 200)."""
    hops = [
        HopUsage(prompt_tokens=700, completion_tokens=40),
        HopUsage(prompt_tokens=60, completion_tokens=30),
    ]
    costly = [
        good(i, retrieval_rounds=1, retrieval_hops=hops, compression_overhead_tokens=100)
        for i in range(WINDOW)
    ]
    assert figures(costly[0]).net_saved_tokens == 200 and figures(good()).net_saved_tokens == 300
    detector = DriftDetector(DriftConfig(window=WINDOW))
    feed(detector, [good(i) for i in range(2 * WINDOW)])
    alerts = [a for a in feed(detector, costly) if a.model is None]
    assert [a.kind for a in alerts] == ["token_savings"]
    assert alerts[0].previous == 300.0 and 200.0 <= alerts[0].recent <= 0.75 * 300


def test_only_upstream_and_proxy_errors_raise_the_error_rate() -> None:
    """Client errors and cancellations are not errors for drift, as for `logs stats`."""
    detector = DriftDetector(DriftConfig(window=WINDOW))
    feed(detector, [good(i) for i in range(2 * WINDOW)])
    others = [
        TransactionLog(model="m", status=400, outcome="client_error"),
        TransactionLog(model="m", outcome="cancelled"),
    ]
    assert not any(figures(r).error for r in others)
    alerts = feed(detector, [others[(i // 2) % 2] if i % 2 else good(i) for i in range(WINDOW)])
    assert "error_rate" not in {a.kind for a in alerts}


def test_needs_two_full_windows() -> None:
    """Nothing is compared before both windows are full, however bad the records are."""
    detector = DriftDetector(DriftConfig(window=WINDOW))
    feed(detector, [good(i) for i in range(WINDOW)])
    assert feed(detector, [failed(i) for i in range(WINDOW - 1)]) == []


def test_thresholds_are_configurable() -> None:
    """A warning threshold above the change keeps the detector quiet."""
    detector = DriftDetector(DriftConfig(window=WINDOW, latency_warning=0.9, latency_critical=2.0))
    feed(detector, [good(i) for i in range(2 * WINDOW)])
    assert [a for a in feed(detector, [WORSE["upstream_latency"](i) for i in range(3 * WINDOW)])] == []


def test_small_latency_changes_are_ignored() -> None:
    """A relative rise smaller than latency_min_delta_ms in absolute terms raises nothing."""
    detector = DriftDetector(DriftConfig(window=WINDOW))
    feed(detector, [good(i, proxy_overhead_ms=0.5) for i in range(2 * WINDOW)])
    assert feed(detector, [good(i, proxy_overhead_ms=1.5) for i in range(3 * WINDOW)]) == []


# --- in the running proxy -------------------------------------------------------------------


async def test_proxy_publishes_alerts(fake: FakeUpstream, make_proxy: Any) -> None:
    """A burst of upstream errors raises an alert at /v1/nocp/alerts, in alerts.jsonl and in metrics."""
    proxy = await make_proxy(drift={"window": 5})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for i in range(15):
            if i >= 10:
                fake.script(Fail(500))
            async with http.post(f"{proxy.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == (500 if i >= 10 else 200)
        await proxy.log_lines(15)
        snapshot: dict[str, Any] = {}
        for _ in range(100):
            async with http.get(f"{proxy.url}/v1/nocp/alerts") as resp:
                assert resp.status == 200
                snapshot = await resp.json()
            if snapshot["recent"]:
                break
            await asyncio.sleep(0.02)
        async with http.get(f"{proxy.url}/metrics") as resp:
            metrics = await resp.text()
    kinds = {(a["kind"], a["model"]) for a in snapshot["active"]}
    assert ("error_rate", None) in kinds and ("error_rate", "gpt-4o") in kinds
    assert all(a["state"] == "firing" for a in snapshot["recent"])
    assert 'nocp_alerts_total{kind="error_rate",severity="critical"} 2.0' in metrics  # 0% -> 20%+
    assert 'nocp_alerts_active{kind="error_rate",severity="critical"} 2.0' in metrics
    alerts_file = proxy.log_path.with_name("alerts.jsonl")
    for _ in range(100):
        if len(complete_lines(alerts_file)) >= len(snapshot["recent"]):
            break
        await asyncio.sleep(0.02)
    lines = [json.loads(x) for x in complete_lines(alerts_file)]
    assert lines == snapshot["recent"]


# --- offline: nocp drift --------------------------------------------------------------------


def write_rotated_log(path: Path, records: list[TransactionLog], max_bytes: int = 8_000) -> None:
    """Write ``records`` with the proxy's own writer, rotating every ``max_bytes``."""

    async def write() -> None:
        writer = TransactionLogWriter(path, max_bytes=max_bytes, backups=20, queue_size=len(records) + 1)
        await writer.start()
        for rec in records:
            writer.submit(rec)
        await writer.close()

    asyncio.run(write())


def test_offline_drift_over_rotated_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nocp drift` reads rotated files oldest first and reports what the live detector would."""
    monkeypatch.delenv("NOCP_CONFIG", raising=False)
    records = [good(i) for i in range(40)] + [WORSE["upstream_latency"](i) for i in range(40)]
    path = tmp_path / "transactions.jsonl"
    write_rotated_log(path, records)
    rotated = sorted(tmp_path.glob("transactions.jsonl.*"))
    assert len(rotated) >= 3  # the change spans several rotated files

    live = DriftDetector(DriftConfig(window=WINDOW))
    want = [msgspec.to_builtins(a) for rec in records for a in live.observe(rec)]
    assert any(a["kind"] == "upstream_latency" and a["state"] == "firing" for a in want)

    assert main(["drift", "--window", str(WINDOW), "--json", str(path)]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert got == want

    # files named explicitly, in any order, are still read oldest first
    shuffled = [str(p) for p in reversed([path, *rotated])]
    assert main(["drift", "--window", str(WINDOW), "--json", *shuffled]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == want

    # the table form names the alert and says how many there were
    assert main(["drift", "--window", str(WINDOW), str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "upstream_latency" in out and "\x1b" not in out
    assert f"{sum(a['state'] == 'firing' for a in want)} alert(s)" in out
