"""The stats JSON (`/v1/nocp/stats`) and the dashboard page: the same figures as `nocp logs stats`,
time buckets, tools, the cohort slot, bounded reading of a rotated log, and admin protection."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec
import openai
import pytest

from proxy.auth import hash_key
from proxy.cli import main
from proxy.cohorts import compare
from proxy.dashboard import LogStats, cohorts, page, policy, request_rate, snapshot
from proxy.testing import FakeUpstream, Reply
from proxy.translog import RetrievalRecord, SegmentRecord, TransactionLog
from proxy.translog_cli import last_records
from tests.helpers import ask, free_port, read_log_turn

ADMIN = "nocp-admin-key"
T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(seconds: float, session: str, raw: int, sent: int, **kw: Any) -> TransactionLog:
    kw.setdefault("status", 200)
    rec = TransactionLog(timestamp=at(seconds), model="gpt-4o", session_id=session, **kw)
    rec.set_input_tokens(raw, sent)
    return rec


def records() -> list[TransactionLog]:
    """Six requests over 25 minutes, two sessions, one upstream error, tool segments."""
    grep = SegmentRecord(kind="tool_output", index=3, tool="grep", tokens_before=900, tokens_after=300)
    grep_aged = SegmentRecord(kind="tool_output", index=3, tool="grep", tokens_before=300, tokens_after=50)
    ls = SegmentRecord(kind="tool_output", index=5, tool="ls", tokens_before=200, tokens_after=190)
    return [
        record(0, "s-a", 1000, 400, segments=[grep], prompt_tokens=400, cached_tokens=0,
               total_latency_ms=100.0, estimated_cost_usd=0.01, cost_savings_usd=0.004),
        record(30, "s-a", 1200, 500, segments=[grep, ls], prompt_tokens=500, cached_tokens=400,
               total_latency_ms=200.0, estimated_cost_usd=0.012, cost_savings_usd=0.005),
        record(400, "s-b", 500, 500, outcome="upstream_error", status=502, total_latency_ms=30.0),
        record(700, "s-b", 800, 800, prompt_tokens=800, cached_tokens=0, total_latency_ms=300.0,
               retrieval_rounds=1, retrievals=[RetrievalRecord(id="x", tool="grep", found=True)]),
        record(1400, "s-a", 1500, 250, segments=[grep, grep_aged], prompt_tokens=250, cached_tokens=200,
               total_latency_ms=400.0),
        record(1500, "s-a", 1600, 260, prompt_tokens=260, cached_tokens=250, total_latency_ms=500.0),
    ]  # fmt: skip


def write_log(path: Path, recs: list[TransactionLog]) -> Path:
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in recs))
    return path


def cli_stats(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["logs", "stats", "--json", *argv]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_snapshot_total_is_logs_stats_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The snapshot's total is exactly `nocp logs stats --json`'s total for the same log, and its
    session count is the number of `--by session` groups."""
    log = write_log(tmp_path / "transactions.jsonl", records())
    snap = snapshot(last_records(log, 100), now=T0 + dt.timedelta(hours=1))
    assert snap["total"] == cli_stats(capsys, str(log))["total"]
    assert snap["sessions"] == len(cli_stats(capsys, "--by", "session", str(log))["groups"]) == 2
    assert snap["total"]["retrieval_rate"] == pytest.approx(1 / 6)
    assert snap["window"]["records"] == 6 and not snap["window"]["truncated"]


def test_series_buckets_add_up_to_the_total() -> None:
    """Time buckets are GroupStats summaries of their records: 25 minutes of records give
    30-second buckets (empty ones included), whose requests and tokens add up to the total."""
    recs = records()
    snap = snapshot(recs, now=T0)
    series = snap["series"]
    assert series["bucket_s"] == 30  # 1500 s / 30 s < 60 buckets, 1500 s / 10 s is not
    buckets = series["buckets"]
    assert len(buckets) == 51 and buckets[1]["key"] == "2026-05-01T12:00:30Z"
    assert [b["requests"] for b in buckets[:3]] == [1, 1, 0]
    assert buckets[1]["tokens_saved"] == 700
    for name in ("requests", "tokens_saved", "raw_input_tokens", "errors"):
        assert sum(b[name] for b in buckets) == snap["total"][name]
    week = [record(0, "s", 10, 5), record(6 * 86400, "s", 10, 5)]
    assert snapshot(week, now=T0)["series"]["bucket_s"] == 6 * 3600


def test_tools_by_tokens_and_by_saving() -> None:
    """Per tool: a segment two stages worked on counts its tokens once and both savings; the
    failed request's segments do not count; retrievals are attributed to the tool cut."""
    tools = snapshot(records(), now=T0)["tools"]
    grep = next(t for t in tools["by_tokens"] if t["tool"] == "grep")
    assert (grep["outputs"], grep["tokens"]) == (3, 2700)
    assert grep["saved_tokens"] == 600 * 3 + 250
    assert grep["retrievals"] == 1
    assert [t["tool"] for t in tools["by_tokens"]] == ["grep", "ls"]
    assert [t["tool"] for t in tools["by_saving"]] == ["grep", "ls"]
    assert tools["by_saving"][1]["saved_share"] == pytest.approx(10 / 200)


def test_cohorts_absent_without_cohort_and_grouped_with_it() -> None:
    """No record carries a cohort: `cohorts` is None (no panel). Records that do are grouped per
    cohort with GroupStats figures and session counts, and the measured saving is the holdout
    comparison's (here too few sessions to conclude, which it says)."""
    assert snapshot(records(), now=T0)["cohorts"] is None
    assert snapshot(records(), now=T0)["policy"] is None

    def cohort(r: TransactionLog) -> Literal["control", "treated"]:
        return "control" if r.session_id == "s-b" else "treated"

    recs = [msgspec.structs.replace(r, experiment="holdout", cohort=cohort(r)) for r in records()]
    result = cohorts(recs)
    assert result is not None
    by_key = {g["key"]: g for g in result["groups"]}
    assert (by_key["control"]["requests"], by_key["control"]["sessions"]) == (2, 1)
    assert (by_key["treated"]["requests"], by_key["treated"]["tokens_saved"]) == (4, 600 + 700 + 1250 + 1340)
    measured, comparison = result["measured"], result["comparison"]
    assert comparison == compare(recs)
    assert measured["saving_share"] == comparison["saving"]["billed_cost_usd"]["share"]
    assert measured["conclusive"] is False and "sessions" in measured["note"]


def test_policy_rows_flatten_the_learned_policy_state() -> None:
    """The learned policy's state becomes one row per tenant, (tool, content type) and arm,
    the best arm marked; no state (policy off): no panel."""
    state = {
        "tenants": [
            {
                "tenant": "t1",
                "keys": [
                    {
                        "tool": "grep",
                        "content_type": "code",
                        "best_arm": "budget-600",
                        "arms": [
                            {"arm": "lossless", "pulls": 3, "observations": 9, "mean_reward_tokens": -10.0},
                            {"arm": "budget-600", "pulls": 5, "observations": 20, "mean_reward_tokens": 81.5},
                        ],
                    }
                ],
            }
        ]
    }
    rows = policy(state)
    assert policy(None) is None and rows is not None
    assert [(r["tool"], r["arm"], r["best"], r["sessions"]) for r in rows["arms"]] == [
        ("grep", "lossless", "", 3),
        ("grep", "budget-600", "yes", 5),
    ]


def test_request_rate_counts_the_window_before_now() -> None:
    """Requests per second: records within the window before `now`, by log timestamp."""
    recs = records()
    assert request_rate(recs, T0 + dt.timedelta(seconds=1500), window_s=200) == pytest.approx(2 / 200)
    assert request_rate(recs, T0 + dt.timedelta(seconds=3000), window_s=60) == 0.0


def test_recent_requests_newest_first() -> None:
    """Recent requests are the last ones, newest first; a failed one shows no saving."""
    recent = snapshot(records(), now=T0)["recent"]
    assert [r["timestamp"] for r in recent] == [r.timestamp for r in reversed(records())]
    failed = next(r for r in recent if r["outcome"] == "upstream_error")
    assert failed["net_saved_tokens"] is None and failed["status"] == 502


def test_last_records_reads_backwards_across_rotation_with_a_bound(tmp_path: Path) -> None:
    """`last_records` returns the newest records across rotated files, oldest first, at most
    `limit`, stops at `since`, and leaves out a line still being written."""
    recs = records()
    base = tmp_path / "transactions.jsonl"
    write_log(tmp_path / "transactions.jsonl.2", recs[:2])
    write_log(tmp_path / "transactions.jsonl.1", recs[2:4])
    write_log(base, recs[4:])
    with base.open("ab") as f:
        f.write(b'{"schema_version":1,"model":"gpt-4o","raw_in')
    ids = [r.transaction_id for r in recs]
    assert [r.transaction_id for r in last_records(base, 100)] == ids
    assert [r.transaction_id for r in last_records(base, 3)] == ids[3:]
    since = T0 + dt.timedelta(seconds=500)
    assert [r.transaction_id for r in last_records(base, 100, since=since)] == ids[3:]


async def test_log_stats_caches_for_its_ttl(tmp_path: Path) -> None:
    """LogStats reads the log once per ttl: a second call within it is served from the cache
    (alerts stay live), after it the log is read again and new lines show."""
    log = write_log(tmp_path / "transactions.jsonl", records())
    now = [0.0]
    source = LogStats(log, ttl_s=2.0, clock=lambda: now[0])
    first = await source.get()
    with log.open("ab") as f:
        f.write(msgspec.json.encode(record(1600, "s-c", 10, 5)) + b"\n")
    now[0] = 1.0
    cached = await source.get(alerts=[{"kind": "error_rate"}])
    assert cached["total"] == first["total"] and cached["alerts"] == [{"kind": "error_rate"}]
    assert source.reads == 1
    now[0] = 2.5
    fresh = await source.get()
    assert source.reads == 2 and fresh["total"]["requests"] == 7


def test_page_is_self_contained_with_a_strict_csp() -> None:
    """The page inlines its CSS and JS (no external script, style or CDN) and its CSP allows
    exactly those inline blocks by hash and connections to its own origin only."""
    p = page()
    html = p.body.decode()
    assert "<!--SCRIPT-->" not in html and "<script>" in html and "<style>" in html
    assert "src=" not in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    csp = p.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert csp.count("'sha256-") == 2 and "unsafe-inline" not in csp
    assert "innerHTML" not in html  # data reaches the DOM through textContent only
    assert p.headers["Referrer-Policy"] == "no-referrer"


async def test_stats_and_dashboard_need_the_admin_key(make_proxy: Any) -> None:
    """`/v1/nocp/stats` and `/dashboard` are admin endpoints: 401 without the admin key when one
    is configured, 200 with it; with server.admin_port they are served there and not on the
    proxy's port."""
    guarded = await make_proxy(auth={"admin_key_sha256": hash_key(ADMIN)})
    port = free_port()
    separate = await make_proxy(server={"admin_host": "127.0.0.1", "admin_port": port})
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/nocp/stats", "/dashboard"):
            async with http.get(guarded.url + path) as resp:
                assert resp.status == 401
            async with http.get(guarded.url + path, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with http.get(guarded.url + path, headers=bearer) as resp:
                assert resp.status == 200
            async with http.get(f"{guarded.url}{path}?key={ADMIN}") as resp:
                assert resp.status == 200
            async with http.get(separate.url + path) as resp:
                assert resp.status == 404
            async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                assert resp.status == 200
                if path == "/v1/nocp/stats":
                    body = await resp.json()
                    assert body["total"]["requests"] == 0 and body["alerts"] == []
                else:
                    assert resp.headers["Content-Type"].startswith("text/html")


async def test_stats_rejects_bad_parameters(make_proxy: Any) -> None:
    """A bad `limit` or `since` is a 400 with a message, not a server error."""
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as http:
        for query in ("limit=0", "limit=abc", "limit=1000001", "since=yesterday"):
            async with http.get(f"{proxy.url}/v1/nocp/stats?{query}") as resp:
                assert resp.status == 400, query
                assert "nocp stats" in (await resp.json())["error"]["message"]
        async with http.get(f"{proxy.url}/v1/nocp/stats?limit=5&since=1h") as resp:
            assert resp.status == 200
            assert (await resp.json())["window"]["limit"] == 5


async def test_stats_show_the_holdout_cohorts_and_the_learned_policy(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """With a holdout experiment and the learned policy on, `/v1/nocp/stats` carries both
    cohorts with the measured saving of `proxy.cohorts.compare`, and the arms the policy chose."""
    proxy = await make_proxy(
        experiment={"name": "ab", "holdout": 0.5},
        policy={"enabled": True, "seed": 3},
        pipeline={"workers": 0},
    )
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-tenant-a-0123456789", max_retries=0)
    async with client:
        for i in range(12):
            fake.script(Reply("Worker 5 failed."))
            await ask(client, read_log_turn(), False, extra_headers={"X-Session-Id": f"dash-{i}"})
    lines = await proxy.log_lines(12)
    assert {line["cohort"] for line in lines} == {"control", "treated"}
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.url}/v1/nocp/stats") as resp:
        body = await resp.json()
    groups = {g["key"]: g["sessions"] for g in body["cohorts"]["groups"]}
    assert sum(groups.values()) == 12 and set(groups) == {"control", "treated"}
    measured = body["cohorts"]["measured"]
    assert measured["conclusive"] is False and measured["saving_share"] is not None
    arms = body["policy"]["arms"]
    assert arms and {r["tool"] for r in arms} >= {"read_log"}
    assert sum(r["sessions"] for r in arms if r["tool"] == "read_log") == groups["treated"]
