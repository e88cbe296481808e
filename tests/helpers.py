"""Helpers more than one test module uses: import them from here (``from tests.helpers import ...``).

Fixtures live in ``tests/conftest.py`` (and a folder's own ``conftest.py`` when only that folder
needs them); plain functions, classes and constants shared between test modules live here, so a
test module never imports another test module. Imports of the code under test stay inside the
functions, as in ``conftest.py``: importing this module loads nothing of nocp.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    import openai

    from proxy.stages.history import HistoryStage
    from proxy.testing import FakeUpstream
    from proxy.translog import TransactionLog

REPO = Path(__file__).resolve().parent.parent  # the checkout
SECRET = "nocp-test-secret"  # the retrieval secret every test proxy gets (marker ids are keyed)


# --- files, ports, processes ----------------------------------------------------------------


def complete_lines(path: Path) -> list[str]:
    """The newline-terminated lines of ``path``: a line a writer is still writing is left out."""
    if not path.exists():
        return []
    return path.read_text().split("\n")[:-1]


def eval_data_root() -> Path:
    """``NOCP_EVAL_DATA`` or ``../shared/eval-data`` beside the checkout."""
    return Path(os.environ.get("NOCP_EVAL_DATA", REPO.parent / "shared" / "eval-data"))


def free_port() -> int:
    """A loopback port free at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server we started, which a test may pause (SIGSTOP) and resume (SIGCONT)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.url = f"redis://127.0.0.1:{port}/0"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


def start_redis(folder: Path) -> RedisProcess:
    """Start redis-server on a free loopback port (skipped without the binary, failed in CI,
    where ``.ci/run`` installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return RedisProcess(proc, port)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)


# --- the proxy in front of the fake upstream (the ``make_proxy`` fixture) --------------------


@dataclass
class RunningProxy:
    """A proxy on a loopback port and where its TransactionLog goes."""

    server: TestServer
    log_path: Path

    @property
    def url(self) -> str:
        """Root URL of the proxy, e.g. ``http://127.0.0.1:PORT``."""
        return str(self.server.make_url("")).rstrip("/")

    async def log_lines(self, n: int, wait_s: float = 5.0) -> list[dict[str, Any]]:
        """Wait until the log holds at least ``n`` lines; return them decoded."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            lines = complete_lines(self.log_path)
            if len(lines) >= n or asyncio.get_running_loop().time() > deadline:
                return [json.loads(line) for line in lines]
            await asyncio.sleep(0.02)


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


def sent(fake: FakeUpstream, k: int) -> dict[str, Any]:
    """The body of the k-th request the fake provider received."""
    body: dict[str, Any] = fake.requests[k].json()
    return body


def long_text(n_words: int, seed: str = "w") -> str:
    """``n_words`` distinct words: ``w0 w1 w2 ...``."""
    return " ".join(f"{seed}{i}" for i in range(n_words))


# --- conversations for the history roll-up ----------------------------------------------------

MODEL = "gpt-4o"
FILLER = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun. " * 4


def chat(pairs: int, *, system: str = "You are a coding agent.") -> list[dict[str, Any]]:
    """A conversation: system, a task, then ``pairs`` user/assistant exchanges with facts."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Task: fix the failing build of the payments service."},
    ]
    for k in range(pairs):
        msgs.append(
            {"role": "user", "content": f"Step {k}: look at /srv/app/module_{k}.py line {1000 + k}. {FILLER}"}
        )
        msgs.append(
            {"role": "assistant", "content": f"Checked module_{k}.py, it returns {200 + k}. {FILLER}"}
        )
    return msgs


async def send(
    stage: HistoryStage, messages: list[dict[str, Any]], *, session: str = "s1", model: str = MODEL
) -> tuple[list[dict[str, Any]], TransactionLog]:
    """Run ``messages`` through the stage as the proxy does; the messages sent and the record."""
    from proxy.pipeline import Pipeline, StageContext
    from proxy.protocols import OpenAIChatAdapter
    from proxy.translog import TransactionLog

    adapter = OpenAIChatAdapter()
    body: dict[str, Any] = {"model": model, "messages": copy.deepcopy(messages)}
    before = adapter.prompt(body)
    record = TransactionLog(session_id=session, protocol="openai", model=model)
    ctx = StageContext(model=model, protocol="openai", record=record)
    after = await Pipeline([stage], stage_timeout_s=2.0).run(before, ctx)
    adapter.apply(body, before, after)
    return body["messages"], record


# the history settings of the roll-up tests through a running proxy
HISTORY = {"threshold_tokens": 2500, "keep_last_messages": 4, "cut_step_tokens": 600}
PARAGRAPH = (
    "The quarterly report was reviewed in general terms and the plan for next year was discussed, "
    "with the usual caveats about staffing and the budget process. "
) * 6


def user_turn(k: int) -> dict[str, Any]:
    """A user message of about 200 tokens carrying a few hard facts."""
    return {
        "role": "user",
        "content": f"Note {k}: invoice INV-{4000 + k} is stored at /data/invoices/{2024 + k % 3}/inv_{k}.pdf "
        f"and totals {125 + k}.50 EUR. {PARAGRAPH}",
    }


# ------------------------------------------------------------------------------ an agent's turn

# A 6,000-line log (about 420,000 characters) with one line that matters.
BATCH_LOG = "\n".join(
    f"2024-05-{1 + i % 28:02d}T10:{i % 60:02d}:{i % 59:02d}Z INFO worker-{i % 7} job {i} batch {i * 7} "
    f"took {i * 3 % 97} ms queue depth {i % 13} region eu-{i % 3} shard {i % 11} ok"
    for i in range(6000)
)
BATCH_LOG += (
    "\n2024-05-29T11:00:00Z ERROR worker-5 failed: ValueError: bad checksum 0xdeadbeef in /data/b_417.bin"
)
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def read_log_turn(output: str = BATCH_LOG) -> list[Any]:
    """An agent's first request: the task, a read_log call and its output (chat messages)."""
    return [
        {"role": "system", "content": "You debug batch jobs."},
        {"role": "user", "content": "Why did the batch job fail?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_log", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_log", "content": output},
    ]


async def ask(client: openai.AsyncOpenAI, messages: list[Any], stream: bool, **kw: Any) -> dict[str, Any]:
    """One chat completion through the SDK, plain or streamed; the assistant message the client
    ends up with (as the SDK accumulates it), its finish reason, and the raw stream chunks."""
    if not stream:
        resp = await client.chat.completions.create(model="gpt-4o", messages=messages, **kw)
        msg = resp.choices[0].message
        return {
            "message": msg.model_dump(exclude_none=True),
            "finish": resp.choices[0].finish_reason,
            "chunks": [],
        }
    async with client.chat.completions.stream(model="gpt-4o", messages=messages, **kw) as s:
        chunks = [e.chunk async for e in s if e.type == "chunk"]
        final = await s.get_final_completion()
    msg = final.choices[0].message
    dumped = msg.model_dump(exclude_none=True, exclude={"parsed"})
    for call in dumped.get("tool_calls") or ():
        call.pop("parsed_arguments", None)
    return {"message": dumped, "finish": final.choices[0].finish_reason, "chunks": chunks}
