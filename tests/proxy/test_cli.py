"""The nocp command: serve starts, proxies, and flushes its log on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy.cli import main
from tests.helpers import free_port


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NOCP_CONFIG": ""},
    )


def test_serve_proxies_and_flushes_on_sigterm(tmp_path: Path) -> None:
    """`nocp serve --upstream URL --port N --log-dir D` proxies, and SIGTERM flushes the log."""
    up_port, proxy_port = free_port(), free_port()
    fake = _spawn("fake-upstream", "--port", str(up_port))
    proxy = _spawn(
        "serve",
        "--upstream",
        f"http://127.0.0.1:{up_port}/v1",
        "--port",
        str(proxy_port),
        "--log-dir",
        str(tmp_path),
    )
    try:
        _wait_ready(f"http://127.0.0.1:{up_port}/v1/models", fake)
        _wait_ready(f"http://127.0.0.1:{proxy_port}/readyz", proxy)
        for i in range(5):
            r = httpx.post(
                f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                json={"model": "any-model", "messages": [{"role": "user", "content": f"hi {i}"}]},
            )
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(10) == 0
    finally:
        for p in (proxy, fake):
            if p.poll() is None:
                p.kill()
            p.wait()
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()
    lines = [json.loads(x) for x in (tmp_path / "transactions.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(x["outcome"] == "ok" for x in lines)
    assert [x["user_query"] for x in lines] == [f"hi {i}" for i in range(5)]


def test_bad_config_exits_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nocp serve` with an invalid config exits 2 and names the key on stderr."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: nope}\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "$.server.port" in capsys.readouterr().err
