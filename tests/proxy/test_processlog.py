"""Process logs: structlog JSON off a terminal, stdlib loggers included, request id = transaction id."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import aiohttp
import structlog

from proxy.protocols import Prompt
from proxy.testing import FakeUpstream

SCRIPT = """
import logging, structlog
from proxy.processlog import configure_logging
configure_logging()
structlog.contextvars.bind_contextvars(request_id="req-1")
structlog.get_logger("nocp.test").warning("from_structlog", n=1)
logging.getLogger("aiohttp.server").error("from_stdlib %s", "x")
"""


def test_json_lines_when_not_a_tty() -> None:
    """Off a terminal, structlog and stdlib log records both come out as JSON with the request id."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(e["event"], e["level"], e["request_id"]) for e in events] == [
        ("from_structlog", "warning", "req-1"),
        ("from_stdlib x", "error", "req-1"),
    ]
    assert events[1]["logger"] == "aiohttp.server" and all("timestamp" in e for e in events)


async def boom(prompt: Prompt, ctx: Any) -> Prompt:
    raise RuntimeError("stage bug")


async def test_request_id_is_the_transaction_id(fake: FakeUpstream, make_proxy: Any) -> None:
    """What is logged while handling a request carries the transaction_id of its log line."""
    proxy = await make_proxy(stages=[boom])
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(f"{proxy.url}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
    lines = await proxy.log_lines(2)
    failed = [e for e in logs if e["event"] == "stage_failed_open"]
    assert [e["request_id"] for e in failed] == [line["transaction_id"] for line in lines]
