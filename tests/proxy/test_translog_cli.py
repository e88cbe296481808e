"""`nocp logs tail` and `nocp logs stats` over hand-built and live-written transaction logs."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from proxy.cli import main
from proxy.stats import percentile
from proxy.translog import FailOpen, HopUsage, TransactionLog, TransactionLogWriter, figures
from proxy.translog_cli import Follower, expand_paths, parse_since, stats, tail_line

NOW = dt.datetime.now(dt.UTC)


def at(minutes_ago: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(minutes_ago: float, model: str, session: str, raw: int, sent: int, **kw: Any) -> TransactionLog:
    kw.setdefault("status", 200)
    rec = TransactionLog(timestamp=at(minutes_ago), model=model, session_id=session, **kw)
    rec.set_input_tokens(raw, sent)
    return rec


# Oldest first, as the proxy writes them.
RECORDS = [
    record(180, "gpt-4o", "s3", 1000, 500, total_latency_ms=1000.0, proxy_overhead_ms=8.0,
           prompt_tokens=500, cached_tokens=0, estimated_cost_usd=0.05, cost_savings_usd=0.02),
    record(40, "gpt-4o-mini", "s2", 400, 400, total_latency_ms=50.0, proxy_overhead_ms=50.0,
           outcome="upstream_error", status=500, error_message="boom"),
    record(30, "gpt-4o-mini", "s2", 500, 500, total_latency_ms=300.0, proxy_overhead_ms=6.0,
           prompt_tokens=500, cached_tokens=0),
    record(20, "gpt-4o", "s1", 2000, 1000, total_latency_ms=200.0, proxy_overhead_ms=4.0,
           prompt_tokens=1000, cached_tokens=0, estimated_cost_usd=0.02, cost_savings_usd=0.01,
           fail_open=[FailOpen(stage="tool_output", reason="timeout")]),
    record(10, "gpt-4o", "s1", 1000, 700, total_latency_ms=100.0, proxy_overhead_ms=2.0,
           prompt_tokens=700, cached_tokens=512, estimated_cost_usd=0.01, cost_savings_usd=0.004),
]  # fmt: skip


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The hand-built log, with a line cut off by a crash in the middle and one at the end."""
    monkeypatch.delenv("NOCP_CONFIG", raising=False)
    lines = [msgspec.json.encode(r) + b"\n" for r in RECORDS]
    lines.insert(2, b'{"schema_version":1,"transaction_id":"cut-off","model":"gpt\n')
    path = tmp_path / "transactions.jsonl"
    path.write_bytes(b"".join(lines) + b'{"schema_version":1,"model":"gpt-4o","raw_in')
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out  # piped: no colour, no control codes
    return captured.out, captured.err


def stats_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    out, _ = run(capsys, "logs", "stats", "--json", *argv)
    result: dict[str, Any] = json.loads(out)
    return result


def test_stats_totals(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`logs stats --json` totals match the hand-built log (tokens of successful requests only);
    cut-off lines are skipped with a warning."""
    out, err = run(capsys, "logs", "stats", "--json", str(log))
    assert err.count("skipped a line") == 2
    t = json.loads(out)["total"]
    assert t["requests"] == 5
    assert (t["errors"], t["error_rate"]) == (1, 0.2)
    assert (t["fail_opens"], t["fail_open_rate"]) == (1, 0.2)
    assert (t["raw_input_tokens"], t["sent_input_tokens"]) == (4500, 2700)  # not the failed 400
    assert (t["gross_saved_tokens"], t["overhead_tokens"], t["tokens_saved"]) == (1800, 0, 1800)
    assert t["saved_share"] == pytest.approx(1800 / 4500)
    assert (t["billed_tokens"], t["retrieval_rounds"]) == (2700, 0)
    assert t["cache_hit_share"] == pytest.approx(512 / 2700)
    assert t["cost_usd"] == pytest.approx(0.08)
    assert t["cost_savings_usd"] == pytest.approx(0.034)
    # latencies of the four successful requests: 100, 200, 300, 1000 ms
    assert t["latency_p50_ms"] == pytest.approx(250.0)
    assert t["latency_p95_ms"] == pytest.approx(300 + 0.85 * 700)
    assert t["overhead_p50_ms"] == pytest.approx(5.0)


def test_stats_since_and_by_model(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--since 1h --by model` leaves out the old request and splits the rest per model."""
    result = stats_json(capsys, "--since", "1h", "--by", "model", str(log))
    assert result["total"]["requests"] == 4
    assert result["total"]["tokens_saved"] == 1300
    assert result["total"]["latency_p50_ms"] == pytest.approx(200.0)
    assert result["total"]["latency_p95_ms"] == pytest.approx(290.0)
    groups = {g["key"]: g for g in result["groups"]}
    assert set(groups) == {"gpt-4o", "gpt-4o-mini"}
    assert (groups["gpt-4o"]["requests"], groups["gpt-4o"]["tokens_saved"]) == (2, 1300)
    assert groups["gpt-4o"]["latency_p50_ms"] == pytest.approx(150.0)
    assert groups["gpt-4o"]["cost_usd"] == pytest.approx(0.03)
    assert (groups["gpt-4o-mini"]["errors"], groups["gpt-4o-mini"]["error_rate"]) == (1, 0.5)
    assert groups["gpt-4o-mini"]["cost_usd"] is None


def test_stats_by_session_and_day(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--by session` and `--by day` give one row per session / UTC day, adding up to the total."""
    sessions = {g["key"]: g["requests"] for g in stats_json(capsys, "--by", "session", str(log))["groups"]}
    assert sessions == {"s1": 2, "s2": 2, "s3": 1}
    days = {g["key"]: g["requests"] for g in stats_json(capsys, "--by", "day", str(log))["groups"]}
    want: dict[str, int] = {}
    for r in RECORDS:
        want[r.timestamp[:10]] = want.get(r.timestamp[:10], 0) + 1
    assert days == want


def test_stats_table_plain_when_piped(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The stats table prints one row per group plus a total, in plain text when piped."""
    out, _ = run(capsys, "logs", "stats", "--by", "model", str(log))
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["gpt-4o"][1] == "3" and rows["gpt-4o-mini"][1] == "2" and rows["total"][1] == "5"
    assert "1,800" in rows["total"]


def test_stats_reads_rotated_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stats over a log count its rotated files too."""
    path = tmp_path / "transactions.jsonl"
    path.with_name("transactions.jsonl.2").write_bytes(msgspec.json.encode(RECORDS[0]) + b"\n")
    path.with_name("transactions.jsonl.1").write_bytes(msgspec.json.encode(RECORDS[1]) + b"\n")
    path.write_bytes(msgspec.json.encode(RECORDS[2]) + b"\n")
    assert [p.name for p in expand_paths([path])] == [
        "transactions.jsonl.2",
        "transactions.jsonl.1",
        "transactions.jsonl",
    ]
    assert stats_json(capsys, str(tmp_path))["total"]["requests"] == 3


def test_tail_last_lines_and_filters(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`logs tail` shows the last -n requests, one readable line each; --model/--session/--json filter."""
    out, err = run(capsys, "logs", "tail", "-n", "2", str(log))
    lines = out.splitlines()
    assert len(lines) == 2 and "skipped a line" in err
    assert "gpt-4o " in lines[1] and "1,000 -> 700" in lines[1] and "30.0%" in lines[1]
    assert "100.0 ms" in lines[1] and "ok" in lines[1] and "session=s1" in lines[1]
    assert "fail-open=tool_output" in lines[0]

    out, _ = run(capsys, "logs", "tail", "--json", "--model", "gpt-4o", str(log))
    assert [json.loads(x)["transaction_id"] for x in out.splitlines()] == [
        r.transaction_id for r in RECORDS if r.model == "gpt-4o"
    ]
    out, _ = run(capsys, "logs", "tail", "--session", "s2", str(log))
    assert len(out.splitlines()) == 2 and "upstream_error 500" in out.splitlines()[0]


def test_parse_since_and_percentile() -> None:
    """--since takes durations and ISO times; percentiles interpolate linearly."""
    now = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
    assert parse_since("90m", now) == dt.datetime(2026, 11, 21, 10, 30, tzinfo=dt.UTC)
    assert parse_since("2d", now) == dt.datetime(2026, 11, 19, 12, 0, tzinfo=dt.UTC)
    assert parse_since("2026-11-20", now) == dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", now)
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 95) == pytest.approx(3.85)  # unsorted input, q in 0..100
    with pytest.raises(ValueError, match="within 0"):
        percentile([1.0], 101)


def test_follower_handles_rotation_and_partial_lines(tmp_path: Path) -> None:
    """The follower yields whole lines, finishes a rotated file, and reads files rotated in between."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"a\nb")
    follower = Follower(path, warn=lambda m: None)
    assert follower.poll() == [b"a"]
    with path.open("ab") as f:
        f.write(b"c\nd\n")
    os.replace(path, tmp_path / "t.jsonl.2")  # rotated twice before the next poll
    (tmp_path / "t.jsonl.1").write_bytes(b"e\n")
    path.write_bytes(b"f\n")
    assert follower.poll() == [b"bc", b"d", b"e", b"f"]
    assert follower.poll() == []
    follower.close()


def test_follower_reports_lines_lost_when_it_falls_behind_rotation(tmp_path: Path) -> None:
    """A follower whose file was rotated out of the backups warns, then follows the current file."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"a\n")
    warnings: list[str] = []
    follower = Follower(path, warn=warnings.append)
    assert follower.poll() == [b"a"]
    path.unlink()  # rotated away and deleted before the next poll
    (tmp_path / "t.jsonl.2").write_bytes(b"x\n")
    (tmp_path / "t.jsonl.1").write_bytes(b"y\n")
    path.write_bytes(b"z\n")
    assert follower.poll() == [b"z"]
    assert len(warnings) == 1 and "lines were lost" in warnings[0]
    follower.close()


def test_follower_keeps_every_line_while_the_log_rotates_under_it(tmp_path: Path) -> None:
    """A follower polling while another thread writes and rotates yields every line once, in order."""
    path = tmp_path / "t.jsonl"
    total, per_file, backups = 600, 3, 1000

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        for i in range(total):
            os.write(fd, b"%d\n" % i)
            if i % per_file == per_file - 1:  # the writer's rotation: shift .N up, current -> .1
                os.close(fd)
                for n in range(i // per_file + 1, 0, -1):
                    src = tmp_path / f"t.jsonl.{n}"
                    if src.exists():
                        os.replace(src, tmp_path / f"t.jsonl.{n + 1}")
                os.replace(path, tmp_path / "t.jsonl.1")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.close(fd)

    path.touch()
    warnings: list[str] = []
    follower = Follower(path, warn=warnings.append)
    got = follower.poll()  # following from here
    thread = threading.Thread(target=write)
    thread.start()
    while thread.is_alive():
        got += follower.poll()
    thread.join()
    got += follower.poll()
    follower.close()
    assert total // per_file < backups
    assert [int(x) for x in got] == list(range(total)) and warnings == []


async def test_tail_follow_across_rotation(tmp_path: Path) -> None:
    """`logs tail -f` prints requests as the proxy's writer appends them, across several rotations."""
    path = tmp_path / "transactions.jsonl"
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    env = {k: v for k, v in os.environ.items() if k != "NOCP_CONFIG"}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "logs", "tail", "-f", "--json", "--interval", "0.02",
            "--model", "keep-*", str(path), stdout=out, stderr=err, env=env,
        )  # fmt: skip
    writer = TransactionLogWriter(path, max_bytes=3000, backups=100, queue_size=100)
    sent: list[str] = []

    async def printed(n: int) -> list[str]:
        deadline = asyncio.get_running_loop().time() + 15
        while asyncio.get_running_loop().time() < deadline:
            text = await asyncio.to_thread(out_path.read_text)
            ids = [json.loads(line)["transaction_id"] for line in text.split("\n")[:-1]]
            if len(ids) >= n:
                return ids
            await asyncio.sleep(0.02)
        raise AssertionError(f"tail -f printed {text!r}, expected {n} lines")

    try:
        await writer.start()  # tail -f was started before the log existed
        first = TransactionLog(model="keep-first")
        writer.submit(first)
        sent.append(first.transaction_id)
        assert await printed(1) == sent  # it is following now
        for i in range(30):
            rec = TransactionLog(model="keep-a" if i % 3 else "drop-b", session_id=f"s{i}")
            writer.submit(rec)
            if i % 3:
                sent.append(rec.transaction_id)
            if i % 10 == 9:  # a pause now and then, a burst of several rotations in between
                await asyncio.sleep(0.1)
        await writer.close()
        assert len(await asyncio.to_thread(lambda: list(tmp_path.glob("transactions.jsonl.*")))) >= 3
        assert await printed(len(sent)) == sent
        await asyncio.sleep(0.1)
        assert await printed(len(sent)) == sent  # nothing printed twice
    finally:
        proc.terminate()
        await proc.wait()
    errors = await asyncio.to_thread(err_path.read_text)
    assert "Traceback" not in errors and "skipped" not in errors and "lost" not in errors


async def test_writer_ends_a_cut_off_line_on_reopen(tmp_path: Path) -> None:
    """A writer reopening a log whose last line was cut off by a crash starts a fresh line first."""
    path = tmp_path / "transactions.jsonl"
    whole = msgspec.json.encode(RECORDS[0]) + b"\n"
    await asyncio.to_thread(path.write_bytes, whole + b'{"schema_version":1,"mod')
    writer = TransactionLogWriter(path, max_bytes=10**9, backups=1, queue_size=10)
    await writer.start()
    writer.submit(RECORDS[1])
    await writer.close()
    lines = (await asyncio.to_thread(path.read_bytes)).splitlines()
    assert len(lines) == 3 and lines[1] == b'{"schema_version":1,"mod'
    assert msgspec.json.decode(lines[2])["transaction_id"] == RECORDS[1].transaction_id


def test_bad_since_exits_2(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable --since exits 2 with a message instead of a traceback."""
    assert main(["logs", "stats", "--since", "yesterday", str(log)]) == 2
    assert "--since" in capsys.readouterr().err


def retrieval_record(minutes_ago: float) -> TransactionLog:
    """1000 raw -> 439 sent (56.1% gross); its retrieval round cost 600 prompt + 20 unseen
    completion tokens, more than the cut saved: net -59 tokens."""
    hops = [
        HopUsage(prompt_tokens=439, completion_tokens=20),
        HopUsage(prompt_tokens=600, completion_tokens=50),
    ]
    return record(
        minutes_ago, "gpt-4o", "s9", 1000, 439, prompt_tokens=1039, completion_tokens=70,
        retrieval_rounds=1, retrieval_hops=hops, compression_overhead_tokens=620,
    )  # fmt: skip


def test_tail_shows_a_negative_net_saving_for_a_costly_retrieval_round() -> None:
    """`tail` shows the net saving (-59, -5.9%), billed tokens and rounds, not the 56.1% gross."""
    line = tail_line(retrieval_record(1)).plain
    assert "1,000 -> 439" in line and "56.1%" not in line
    assert "saved       -59  -5.9%" in line
    assert "billed     1,109 rounds 1" in line


def test_tail_and_stats_agree_on_one_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """For one request, `tail` and `stats` (JSON and table) show the same net, share, billed, rounds."""
    rec = retrieval_record(1)
    path = tmp_path / "transactions.jsonl"
    path.write_bytes(msgspec.json.encode(rec) + b"\n")
    t = stats_json(capsys, str(path))["total"]
    f = figures(rec)
    assert (t["gross_saved_tokens"], t["overhead_tokens"], t["retrieval_overhead_tokens"]) == (561, 620, 620)
    assert (t["tokens_saved"], t["saved_share"]) == (f.net_saved_tokens, f.saved_share) == (-59, -0.059)
    assert (t["billed_tokens"], t["retrieval_rounds"]) == (f.billed_tokens, 1) == (1109, 1)

    tail, _ = run(capsys, "logs", "tail", str(path))
    assert f"{t['tokens_saved']:,}  {t['saved_share']:.1%}" in tail
    assert f"billed {t['billed_tokens']:>9,} rounds {t['retrieval_rounds']}" in tail
    table, _ = run(capsys, "logs", "stats", str(path))
    total = next(line.split() for line in table.splitlines() if line.startswith("total"))
    assert total[6:12] == ["561", "620", "-59", "-5.9%", "1", "1,109"]


def test_stats_adds_up_figures_of_successful_requests_only() -> None:
    """Group totals are the sums of each successful record's figures; failed ones add only counts."""
    failed = record(2, "gpt-4o", "s9", 800, 300, outcome="proxy_error", status=502, retrieval_rounds=1)
    records = [*RECORDS, retrieval_record(1), failed]
    _, total = stats(records)
    ok = [figures(r) for r in records if figures(r).counts_for_savings]
    assert total.tokens_saved == sum(f.net_saved_tokens for f in ok) == 1800 - 59
    assert total.gross_saved_tokens == sum(f.gross_saved_tokens for f in ok)
    assert total.billed_tokens == sum(f.billed_tokens or 0 for f in ok)
    assert (total.errors, total.retrieval_rounds) == (2, 2)
