"""`nocp top`: the frame shows the figures of `nocp logs stats` for a known log, the request
rate, the drift alerts replayed from the log; it follows the log across rotation, and reads a
running proxy's stats endpoint with the admin key."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from proxy.auth import hash_key
from proxy.cli import main
from proxy.config import DriftConfig
from proxy.drift import DriftDetector
from proxy.top import LogSource
from proxy.translog import SegmentRecord, TransactionLog
from proxy.translog_cli import iter_records, stats

ADMIN = "nocp-top-admin"


def record(seconds_ago: float, *, error: bool = False, session: str = "s-a") -> TransactionLog:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    grep = SegmentRecord(kind="tool_output", index=1, tool="grep", tokens_before=900, tokens_after=200)
    rec = TransactionLog(
        timestamp=when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        model="gpt-4o",
        session_id=session,
        status=502 if error else 200,
        outcome="upstream_error" if error else "ok",
        prompt_tokens=300,
        cached_tokens=100 if seconds_ago < 100 else 0,
        total_latency_ms=10.0 + seconds_ago % 37,
        estimated_cost_usd=0.001,
        cost_savings_usd=0.002,
        segments=[grep],
    )
    rec.set_input_tokens(1000, 300)
    return rec


def known_log(path: Path) -> Path:
    """20 good requests an hour ago, then 10 in the last 30 s of which 6 failed (the
    error rate jumps: a drift alert with a 10-record window), 5 within the last 10 s."""
    recs = [record(3600 - i, session=f"s-{i % 2}") for i in range(20)]
    recs += [record(30 - i, error=i % 2 == 0) for i in range(5)]
    recs += [record(6 - i, error=i % 2 == 0) for i in range(5)]
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in recs))
    return path


def top_once(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["top", "--once", *argv]) == 0
    return capsys.readouterr().out


def test_frame_shows_the_logs_stats_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One frame of a known log: requests, saved tokens and share, cost saved, cache hit share,
    error rate and p50/p95 latency as `nocp logs stats` computes them, the req/s of the last 10 s,
    and the error-rate alert the drift detector raises on the log."""
    monkeypatch.delenv("NOCP_CONFIG", raising=False)
    monkeypatch.setenv("NOCP_DRIFT__WINDOW", "10")
    log = known_log(tmp_path / "transactions.jsonl")
    out = top_once(capsys, str(log))
    total = stats(iter_records([log]))[1].summary()
    lines = out.splitlines()
    figures = {
        "requests": f"{total['requests']:,}",
        "saved tokens (estimate)": f"{total['tokens_saved']:,}",
        "saved share (estimate)": f"{total['saved_share']:.1%}",
        "cost saved (estimate)": f"${total['cost_savings_usd']:,.4f}",
        "cache hit share": f"{total['cache_hit_share']:.1%}",
        "errors": f"{total['error_rate']:.1%}",
        "latency p50": f"{total['latency_p50_ms']:,.1f} ms",
        "latency p95": f"{total['latency_p95_ms']:,.1f} ms",
        "req/s (10 s)": "0.50",
    }
    grid = lines[1:4]  # under the title line
    for label, value in figures.items():
        row = next(line for line in grid if label in line)
        after = row.split(label, 1)[1].split()
        assert " ".join(after[: len(value.split())]) == value, (label, row)
    assert total["requests"] == 30 and total["error_rate"] == pytest.approx(6 / 30)
    alerts = [line for line in lines if "error_rate" in line]
    assert alerts and all("critical" in line for line in alerts)
    assert "measured saving: - (needs a holdout cohort)" in out
    assert "grep" in out


def test_log_source_follows_appends_and_rotation(tmp_path: Path) -> None:
    """The log source takes in lines appended after it started, and after the log rotates the
    new file's lines too, each once."""
    log = known_log(tmp_path / "transactions.jsonl")
    source = LogSource(log, limit=1000, detector=DriftDetector(DriftConfig()), rate_window_s=10)
    try:
        assert source.poll()["total"]["requests"] == 30
        with log.open("ab") as f:
            f.write(msgspec.json.encode(record(1)) + b"\n")
        assert source.poll()["total"]["requests"] == 31
        log.rename(tmp_path / "transactions.jsonl.1")
        log.write_bytes(msgspec.json.encode(record(0, session="s-new")) + b"\n")
        snap = source.poll()
        assert snap["total"]["requests"] == 32 and snap["sessions"] == 4
        assert source.poll()["total"]["requests"] == 32
    finally:
        source.close()


def test_log_source_keeps_only_the_latest_limit(tmp_path: Path) -> None:
    """With --limit the frame counts only the latest records."""
    log = known_log(tmp_path / "transactions.jsonl")
    source = LogSource(log, limit=10, detector=DriftDetector(DriftConfig()), rate_window_s=10)
    try:
        snap = source.poll()
        assert snap["total"]["requests"] == 10 and snap["total"]["errors"] == 6
    finally:
        source.close()


async def test_top_reads_a_running_proxy_with_the_admin_key(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nocp top --url` shows the requests a running proxy logged, with the admin key from
    $NOCP_ADMIN_KEY; without it the stats endpoint's 401 is reported and top exits 1."""
    proxy = await make_proxy(auth={"admin_key_sha256": hash_key(ADMIN)})
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(f"{proxy.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
    assert len(await proxy.log_lines(3)) == 3
    monkeypatch.delenv("NOCP_ADMIN_KEY", raising=False)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["top", "--once", "--url", proxy.url]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    monkeypatch.setenv("NOCP_ADMIN_KEY", ADMIN)
    assert await asyncio.to_thread(main, ["top", "--once", "--url", proxy.url]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("requests"))
    assert row.split()[1] == "3"
