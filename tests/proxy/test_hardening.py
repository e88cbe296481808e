"""Hardening (issue 14): bounded /metrics, whole log lines on a full disk, deep JSON, gzip
bodies, secrets at rest, absolute-form request lines, the session file's life and size."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import json
import os
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from proxy.config import DriftConfig
from proxy.drift import DriftDetector, DriftMonitor
from proxy.metrics import OTHER, Metrics
from proxy.protocols import decode_json_object
from proxy.sessions import SessionState, SQLiteSessionStore
from proxy.testing import FakeUpstream
from proxy.translog import (
    AppendFile,
    RetrievalRecord,
    SegmentRecord,
    TransactionLog,
    TransactionLogWriter,
    clip,
    log_session_id,
    redact,
)
from tests.helpers import complete_lines

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
GEMINI = "/v1beta/models/gemini-2.5-flash:generateContent"
ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def chat(content: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **kw}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- 3. /metrics stays small whatever names clients send ------------------------------------


async def test_metrics_stay_small_after_100_requests_with_100kb_model_names(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """100 requests with distinct 100 KB model names leave /metrics under 100 KB and log lines short."""
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as http:
        for i in range(100):
            body = {"model": f"m{i:03d}" + "x" * 100_000, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(proxy.url + CHAT, json=body) as r:
                assert r.status == 200
        lines = await proxy.log_lines(100)
        for _ in range(100):  # observers run just after the write
            async with http.get(proxy.url + "/metrics") as r:
                text = await r.text()
            if f'model="{OTHER}"' in text:
                break
            await asyncio.sleep(0.02)
    assert len(text.encode()) < 100_000
    assert 'model="other"' in text and "xxxxxxxxxx" * 13 not in text
    assert len(lines) == 100 and all(len(line["model"]) <= 256 for line in lines)
    assert len({line["model"] for line in lines}) == 100  # cut names stay distinct (hash suffix)
    assert max(len(line) for line in complete_lines(proxy.log_path)) < 4_000


def test_label_values_from_clients_are_capped_and_printable() -> None:
    """A model or tool that is too long or has control characters is counted as "other"; names
    nocp gives (endpoint, content type, stage) are bounded in number too."""
    metrics = Metrics(max_models=10)
    for model in ("a" * 129, "bad\nname", "", "fine-model"):
        rec = TransactionLog(model=model, endpoint=CHAT, protocol="openai", status=200)
        rec.retrievals.append(RetrievalRecord(id="x", tool="t" * 500, content_type="c\x00" * 10, found=True))
        metrics.observe(rec)
    for i in range(200):
        metrics.observe(
            TransactionLog(model="fine-model", endpoint=f"/v1/odd/{i}", protocol="openai", status=200)
        )
    text = metrics.render().decode()
    assert text.count('model="other"') > 0 and 'model="fine-model"' in text
    assert "aaaa" * 20 not in text and "bad\\nname" not in text
    assert 'nocp_retrievals_total{content_type="other",tool="other"} 4.0' in text
    assert text.count('endpoint="/v1/odd/') == 63  # 64 distinct endpoints, the first is the chat route


def test_clip_cuts_with_a_hash_suffix_and_replaces_control_characters() -> None:
    """Short printable names pass; long ones are cut to the limit and stay distinct; control
    characters and lone surrogates become '?'."""
    assert clip("gpt-4o", 64) == "gpt-4o"
    a, b = clip("x" * 1000 + "a", 64), clip("x" * 1000 + "b", 64)
    assert len(a) == len(b) == 64 and a != b and a.startswith("x" * 55 + "~")
    assert clip("a\nb\x00c\ud800", 64) == "a?b?c?"


async def test_log_caps_names_the_client_chose(tmp_path: Path) -> None:
    """Model, tool names, endpoint, retrieval ids and error text are capped before they reach disk."""
    writer = TransactionLogWriter(tmp_path / "t.jsonl", max_bytes=10**9, backups=1, queue_size=5)
    await writer.start()
    rec = TransactionLog(
        model="m" * 100_000,
        endpoint="/v1beta/models/" + "g" * 100_000 + ":generateContent",
        tools_invoked=["t" * 10_000] * 1000,
        error_message="e" * 100_000,
    )
    rec.segments.append(SegmentRecord(kind="tool_output", index=0, tool="s" * 10_000))
    rec.retrievals.append(RetrievalRecord(id="i" * 10_000, tool="r" * 10_000, content_type="c" * 10_000))
    writer.submit(rec)
    await writer.close()
    (line,) = [json.loads(x) for x in complete_lines(tmp_path / "t.jsonl")]
    assert len(line["model"]) == 256 and len(line["endpoint"]) == 512 and len(line["error_message"]) == 2000
    assert len(line["tools_invoked"]) == 100 and all(len(t) == 256 for t in line["tools_invoked"])
    assert len(line["segments"][0]["tool"]) == 256
    assert {len(v) for k, v in line["retrievals"][0].items() if k in ("id", "tool", "content_type")} == {256}


# --- 5. a line is written whole or not at all; losses are counted and reported --------------


@pytest.fixture
def enospc(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """os.write that, while ``full``, writes half of what it is given once, then fails ENOSPC."""
    real_write = os.write
    state: dict[str, Any] = {"full": False, "short": False}

    def write(fd: int, data: Any) -> int:
        if not state["full"]:
            return real_write(fd, data)
        if not state["short"]:
            state["short"] = True
            return real_write(fd, bytes(data)[: len(data) // 2])
        state["short"] = False
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr("proxy.translog._free_bytes", lambda folder: 0 if state["full"] else 1 << 30)
    yield state


async def test_failed_writes_leave_no_torn_line_and_are_counted(
    tmp_path: Path, enospc: dict[str, Any]
) -> None:
    """A write cut short by a full disk is taken back off the file; every lost record is counted,
    the writer reports itself degraded, the process log says so once, and it recovers."""
    path = tmp_path / "t.jsonl"
    writer = TransactionLogWriter(path, max_bytes=10**9, backups=1, queue_size=100)
    await writer.start()
    with structlog.testing.capture_logs() as logs:
        writer.submit(TransactionLog(model="before"))
        await asyncio.sleep(0.05)
        enospc["full"] = True
        for i in range(10):
            writer.submit(TransactionLog(model=f"lost{i}"))
        await asyncio.sleep(0.05)
        assert writer.degraded() is not None and "10 lines lost" in str(writer.degraded())
        enospc["full"] = False
        writer.submit(TransactionLog(model="after"))
        await writer.close()
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    assert [json.loads(x)["model"] for x in raw.splitlines()] == ["before", "after"]
    assert (writer.written, writer.dropped, writer.file.dropped) == (2, 10, 10)
    assert writer.degraded() is None
    events = [e["event"] for e in logs]
    assert events.count("translog_write_failed") == 1 and events.count("translog_write_recovered") == 1


def test_when_the_fragment_cannot_be_cut_the_next_line_starts_fresh(
    tmp_path: Path, enospc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If even truncating fails, the next line begins with a newline, so only the fragment is unreadable."""
    f = AppendFile(tmp_path / "a.jsonl", name="test")
    assert f.append(b'{"n":1}\n')
    enospc["full"] = True
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "no")))
    assert not f.append(b'{"n":2,"pad":"' + b"x" * 100 + b'"}\n')
    enospc["full"] = False
    assert f.append(b'{"n":3}\n')
    f.close()
    lines = (tmp_path / "a.jsonl").read_bytes().split(b"\n")
    assert lines[0] == b'{"n":1}' and lines[2] == b'{"n":3}' and lines[3] == b""
    assert lines[1].startswith(b'{"n":2') and not lines[1].endswith(b"}")  # the fragment, alone
    assert (f.written, f.dropped) == (2, 1)


def test_a_file_ending_in_a_fragment_gets_a_fresh_line(tmp_path: Path) -> None:
    """Reopening a file whose last line was cut off (a crash) starts the next line on a new line."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"n":1}\n{"n":2,"cut')
    f = AppendFile(path, name="test")
    f.open()
    assert f.append(b'{"n":3}\n')
    f.close()
    assert path.read_bytes() == b'{"n":1}\n{"n":2,"cut\n{"n":3}\n'


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (needs root and mount permission, else the test is skipped). Request it
    before ``make_proxy``, so it is unmounted after the proxy closed its files."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
        )
    except OSError:
        pytest.skip("mount not available")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_300_requests_on_a_full_1mb_tmpfs(
    tiny_tmpfs: Path, fake: FakeUpstream, make_proxy: Any
) -> None:
    """On a full tmpfs, every request still succeeds, the log keeps only whole lines, the drop
    counter in /metrics equals the records lost, /readyz says 503 with the reason until there is
    room again, and the next record is a whole line."""
    proxy = await make_proxy(log={"dir": str(tiny_tmpfs / "logs")})
    st = os.statvfs(tiny_tmpfs)
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 40 * 1024))  # ~40 KB left
    async with aiohttp.ClientSession() as http:
        for i in range(300):
            async with http.post(proxy.url + CHAT, json=chat(f"question {i} " + "word " * 200)) as r:
                assert r.status == 200
        await asyncio.sleep(0.2)
        async with http.get(proxy.url + "/readyz") as r:
            assert r.status == 503
            assert "No space left on device" in (await r.json())["reasons"][0]
        async with http.get(proxy.url + "/metrics") as r:
            metrics = await r.text()
        filler.unlink()
        async with http.post(proxy.url + CHAT, json=chat("after")) as r:
            assert r.status == 200
        await proxy.log_lines(1)
        await asyncio.sleep(0.2)
        async with http.get(proxy.url + "/readyz") as r:
            assert r.status == 200
    raw = proxy.log_path.read_bytes()
    lines = raw.split(b"\n")
    assert raw.endswith(b"\n")
    records = [json.loads(x) for x in lines[:-1]]  # every line parses: no torn line
    dropped = next(
        float(x.split()[-1])
        for x in metrics.splitlines()
        if x.startswith("nocp_translog_dropped_records_total") and 'reason="write_failed"' in x
    )
    assert 0 < len(records) - 1 < 300 and dropped == 300 - (len(records) - 1)
    assert records[-1]["user_query"] == "after"


async def test_alerts_file_lines_whole_and_counted(tmp_path: Path, enospc: dict[str, Any]) -> None:
    """Drift alerts that cannot be written are counted and reported; the file keeps whole lines."""
    monitor = DriftMonitor(DriftConfig(window=5, quiet_s=0), tmp_path / "alerts.jsonl")
    monitor.start()
    monitor._file.submit(b'{"n":1}\n')
    await asyncio.sleep(0.05)
    enospc["full"] = True
    for _ in range(3):
        monitor._file.submit(b'{"n":"lost","pad":"' + b"x" * 50 + b'"}\n')
    await asyncio.sleep(0.05)
    assert monitor.alerts_file.degraded() is not None
    enospc["full"] = False
    monitor._file.submit(b'{"n":2}\n')
    await monitor.close()
    assert (tmp_path / "alerts.jsonl").read_bytes() == b'{"n":1}\n{"n":2}\n'
    assert (monitor.alerts_file.written, monitor.alerts_file.dropped) == (2, 3)


def test_drift_writes_one_alert_per_signal_per_episode() -> None:
    """A figure that swings across its threshold keeps one episode open (one alert, not one per
    swing); it resolves once it has stayed clear for quiet_s."""
    window = 10
    detector = DriftDetector(DriftConfig(window=window, quiet_s=60))
    t = 0

    def rec(latency: float) -> TransactionLog:
        nonlocal t
        t += 1
        r = TransactionLog(model="m", status=200, llm_latency_ms=latency, prompt_tokens=10,
                           timestamp=f"2026-01-01T00:{t // 60 % 60:02d}:{t % 60:02d}.000Z")  # fmt: skip
        r.set_input_tokens(100, 70)
        return r

    alerts = [a for _ in range(2 * window) for a in detector.observe(rec(400))]
    for swing in range(20):  # 400 ms and 800 ms in turn, one window each: 20 threshold crossings
        latency = 800 if swing % 2 == 0 else 400
        alerts += [a for _ in range(window) for a in detector.observe(rec(latency))]
    fired = [a for a in alerts if a.kind == "upstream_latency" and a.model is None]
    assert [(a.state, a.severity) for a in fired] == [("firing", "warning"), ("firing", "critical")]
    assert len(alerts) == 4  # the same for model "m"; nothing else
    clear = [a for _ in range(200) for a in detector.observe(rec(400)) if a.kind == "upstream_latency"]
    assert [(a.model, a.state) for a in clear] == [(None, "resolved"), ("m", "resolved")]


# --- 6. deep nesting is a 400, never a 500 ---------------------------------------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP_BODIES = {
    CHAT: ['{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"x":%s}',
           '{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"hi","x":%s}]}]}',
           '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"},{"role":"assistant","tool_calls":'
           '[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},'
           '{"role":"tool","tool_call_id":"c","content":"ok","x":%s}]}',
           "%s"],
    RESPONSES: ['{"model":"gpt-4o","input":"hi","x":%s}',
                '{"model":"gpt-4o","input":[{"role":"user","content":"hi","x":%s}]}'],
    MESSAGES: ['{"model":"claude-sonnet-4-5","max_tokens":10,'
               '"messages":[{"role":"user","content":"hi"}],"x":%s}',
               '{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":'
               '[{"type":"text","text":"hi","x":%s}]}]}'],
    GEMINI: ['{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"x":%s}',
             '{"contents":[{"role":"user","parts":[{"text":"hi","x":%s}]}]}'],
}  # fmt: skip


def _assert_error_shape(path: str, body: Any) -> None:
    if path == GEMINI:
        assert (
            set(body) == {"error"}
            and body["error"]["code"] == 400
            and body["error"]["status"] == "INVALID_ARGUMENT"
        )
    elif path == MESSAGES:
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("depth", [201, 1_000, 100_000])
@pytest.mark.parametrize("path", list(DEEP_BODIES))
async def test_deep_nesting_gets_400_in_the_protocols_shape(
    fake: FakeUpstream, make_proxy: Any, path: str, depth: int
) -> None:
    """JSON nested past 200 levels, at the top or in any nested field, is a 400 in the protocol's
    error shape on every rewriting endpoint, and never reaches the upstream."""
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as http:
        for template in DEEP_BODIES[path]:
            data = (template % _deep(depth)).encode()
            async with http.post(proxy.url + path, data=data, headers=ANTHROPIC_HEADERS) as r:
                assert r.status == 400, template
                payload = await r.json()
            _assert_error_shape(path, payload)
            assert "deeper than 200" in json.dumps(payload)
    assert fake.requests == []
    lines = await proxy.log_lines(len(DEEP_BODIES[path]))
    assert {(line["status"], line["outcome"]) for line in lines} == {(400, "client_error")}


async def test_nesting_within_the_bound_is_forwarded(fake: FakeUpstream, make_proxy: Any) -> None:
    """A body nested 200 levels deep, and brackets inside strings, are not refused."""
    proxy = await make_proxy()
    text, nested = "[" * 10_000, _deep(199)  # 200 levels with the body itself
    body = f'{{"model":"gpt-4o","messages":[{{"role":"user","content":"{text}"}}],"x":{nested}}}'
    async with aiohttp.ClientSession() as http, http.post(proxy.url + CHAT, data=body) as r:
        assert r.status == 200
    assert len(fake.requests) == 1


def test_depth_bound_counts_structure_not_strings() -> None:
    """The bound counts arrays and objects outside strings, escaped quotes included."""
    assert decode_json_object(b'{"a":"[[[[\\"[[[[","b":' + _deep(199).encode() + b"}")["a"].startswith("[[[[")
    with pytest.raises(Exception, match="deeper than 200"):
        decode_json_object(b'{"a":' + _deep(200).encode() + b"}")


# --- 7. gzip request bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [(CHAT, chat("gzip me")), ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "gzip me"})],
    ids=["rewriting", "passthrough"],
)
async def test_gzip_body_is_forwarded_decoded_without_content_encoding(
    fake: FakeUpstream, make_proxy: Any, path: str, body: dict[str, Any]
) -> None:
    """A gzip request body reaches the upstream decoded, without Content-Encoding, with a
    length that matches (the upstream decodes it as plain JSON)."""
    proxy = await make_proxy()
    data = gzip.compress(json.dumps(body).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as http, http.post(proxy.url + path, data=data, headers=headers) as r:
        assert r.status == 200
    (got,) = fake.requests
    assert "Content-Encoding" not in got.headers
    assert (
        got.json()["input" if path != CHAT else "messages"] == body["input" if path != CHAT else "messages"]
    )
    if "Content-Length" in got.headers:
        assert int(got.headers["Content-Length"]) == len(got.body)


# --- 9. secrets at rest -----------------------------------------------------------------------

SECRETS = [
    "AKIAIOSFODNN7EXAMPLE",
    "ASIAY34FZKBOKMUTVV7A",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "gho_16C7e42F292c6912E7710c838347Ae178B4a",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "xoxb-2400000000-2400000000000-AbCdEfGhIjKlMnOpQrStUvWx",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789",
    "sk-proj-abcdefghijklmnop",
    "AIzaSyA1234567890abcdefghij",
]
PAIRS = ["password=hunter2", "passwd: hunter2", "secret=hunter2", "token=hunter2", "api_key=hunter2",
         '"password": "hunter2"', "AWS_SECRET_ACCESS_KEY=hunter2", "client_secret='hunter2'"]  # fmt: skip
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAhunter2\nabc\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize("secret", [*SECRETS, PEM, PEM.split("\nabc")[0]])
def test_redact_removes_keys_tokens_and_private_keys(secret: str) -> None:
    """Cloud and SaaS keys, JWTs and PEM private-key blocks (even cut short) are redacted."""
    out = redact(f"please use {secret} now")
    assert "[redacted]" in out and secret not in out and "hunter2" not in out
    assert out.startswith("please use ") and (out.endswith(" now") or secret.startswith("-----"))


@pytest.mark.parametrize("pair", PAIRS)
def test_redact_removes_the_value_of_secret_pairs(pair: str) -> None:
    """The value of password / secret / token / api_key pairs goes, the name stays."""
    out = redact(f"config: {pair}, more")
    assert "hunter2" not in out and "[redacted]" in out and out.endswith(", more")


def test_redact_keeps_ordinary_text() -> None:
    """Words that merely look like keys are kept."""
    text = "max_tokens: 100 and the tokens were skipped; ask about secrets management"
    assert redact(text) == text


@pytest.mark.parametrize("where", ["header", "user", "metadata"])
async def test_client_session_ids_are_logged_hashed(fake: FakeUpstream, make_proxy: Any, where: str) -> None:
    """A session id from X-Session-Id, `user` or metadata (here a key) is logged as s-<hash>,
    never verbatim; an id nocp derived (h-...) is kept."""
    proxy = await make_proxy()
    key = "sk-live-SESSIONKEY0123456789"
    body = chat("hi")
    headers = {}
    if where == "header":
        headers["X-Session-Id"] = key
    elif where == "user":
        body["user"] = key
    else:
        body["metadata"] = {"session_id": key}
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url + CHAT, json=body, headers=headers) as r:
            assert r.status == 200
        async with http.post(proxy.url + CHAT, json=chat("no session given")) as r:
            assert r.status == 200
    first, second = await proxy.log_lines(2)
    assert first["session_id"] == log_session_id(key) and first["session_id"].startswith("s-")
    assert len(first["session_id"]) == 18
    assert (
        second["session_id"].startswith("h-") and log_session_id(second["session_id"]) == second["session_id"]
    )
    assert "SESSIONKEY" not in proxy.log_path.read_text()


async def test_files_are_created_private(fake: FakeUpstream, make_proxy: Any, tmp_path: Path) -> None:
    """The log folder nocp creates is 0700; the transaction log, the alerts file and the SQLite
    session files (with -wal and -shm) are 0600."""
    old = os.umask(0o022)
    try:
        logs = tmp_path / "private-logs"
        proxy = await make_proxy(log={"dir": str(logs)}, retrieval={"enabled": True}, drift={"window": 1})
        async with aiohttp.ClientSession() as http:
            for i in range(3):
                async with http.post(proxy.url + CHAT, json=chat(f"q{i}", user="u1")) as r:
                    assert r.status == 200
        await proxy.log_lines(3)
        store = SQLiteSessionStore(logs / "sessions.sqlite3", ttl_s=60)
        await store.put_blobs({"k": b"tool output"}, ttl_s=60)
        await store.put(
            "s", SessionState(version=1, start=0, end=1, digest="", summary="x"), expected_version=0
        )
        assert mode(logs) == 0o700
        assert mode(logs / "transactions.jsonl") == 0o600
        for name in ("sessions.sqlite3", "sessions.sqlite3-wal", "sessions.sqlite3-shm"):
            assert mode(logs / name) == 0o600, name
        await store.aclose()
        monitor = DriftMonitor(DriftConfig(), logs / "alerts.jsonl")
        monitor.alerts_file.append(b"{}\n")
        monitor.alerts_file.close()
        assert mode(logs / "alerts.jsonl") == 0o600
    finally:
        os.umask(old)


# --- low: request line, the session file's life and size ------------------------------------


async def test_absolute_form_request_line_gets_400(fake: FakeUpstream, make_proxy: Any) -> None:
    """`GET http://host/path` (and `*`) get 400 in the protocol's error shape, never reach the upstream."""
    proxy = await make_proxy()
    port = proxy.server.port
    assert port is not None

    def send(request_line: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request_line + b"\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    lines = [
        b"GET http://example.com/v1/models HTTP/1.1",
        b"POST http://127.0.0.1/v1/chat/completions HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"POST http://x/v1beta/models/g:generateContent HTTP/1.1",
    ]
    for line in lines:
        head, _, body = (await asyncio.to_thread(send, line)).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), line
        assert "error" in json.loads(body)
    assert fake.requests == []


async def test_deleted_session_file_is_recreated(tmp_path: Path) -> None:
    """A session file deleted under a running store is noticed on the next call and created afresh."""
    path = tmp_path / "s.sqlite3"
    store = SQLiteSessionStore(path, ttl_s=60)
    await store.put_blobs({"a": b"1"}, ttl_s=60)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    assert await store.get_blobs(["a"], ttl_s=60) == [None]  # gone with the file, no error
    await store.put_blobs({"b": b"2"}, ttl_s=60)
    assert path.exists() and store.recreated == 1
    await store.aclose()
    with sqlite3.connect(path) as db:  # the new file holds the new row
        assert db.execute("SELECT key FROM blobs").fetchall() == [("b",)]


async def test_session_file_size_is_bounded_oldest_evicted_first(tmp_path: Path) -> None:
    """Past sessions.sqlite_max_bytes the least recently used rows are evicted; recent ones stay."""
    clock = [1000.0]
    store = SQLiteSessionStore(
        tmp_path / "s.sqlite3", ttl_s=3600, max_bytes=1_000_000, clock=lambda: clock[0]
    )
    for i in range(100):  # 100 x 50 KB = 5 MB written into a 1 MB bound
        clock[0] += 1
        await store.put_blobs({f"k{i:03d}": os.urandom(50_000)}, ttl_s=3600)
    got = await store.get_blobs([f"k{i:03d}" for i in range(100)], ttl_s=3600)
    kept = [i for i, blob in enumerate(got) if blob is not None]
    assert kept and kept == list(range(kept[0], 100))  # a suffix: the newest
    assert 50_000 * len(kept) <= 1_000_000 and len(kept) >= 10
    assert store.evicted == 100 - len(kept)
    await store.aclose()
