"""Hardening figures (issue 14): CPU amplification and a hung Redis.

Run: ``nocp bench hardening`` (or ``python -m proxy.bench.hardening``, ``make bench-hardening``);
``--quick`` for a short run, ``--out DIR`` for where the numbers go. Everything runs on 127.0.0.1
as separate processes, started on free ports and stopped by PID at the end:

- **CPU fairness**: ``nocp serve`` in front of two upstreams: the fake provider for the small
  requests (model ``gpt-4o``), and a sink that answers at once for the large ones (model
  ``big-*``), so the upstream's own work does not count. Small agent requests (a ~3 KB tool
  output) are timed unloaded, then while 3 clients keep sending 30 MB requests (15 tool
  outputs of ~1 MB of newlines each, the worst case found), then again after. Target: the
  small requests' p50 under load within 2x of unloaded; nocp's RSS (its worker processes
  included) back within 20% of its level before the load.
- **Redis paused**: ``nocp serve`` with ``sessions.backend: redis`` and a redis-server of its
  own; agent requests (a log output that is cut, so its original is stored) timed with Redis
  healthy, then with redis-server stopped (SIGSTOP). Target: all succeed, p50 at most 300 ms
  above healthy. Skipped when redis-server is not installed.

Numbers go to ``hardening.json`` in ``--out`` (default ``./nocp-bench``; ``make bench-hardening``
writes ``benchmarks/results/hardening.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from proxy.bench._common import DEFAULT_OUT, shown
from proxy.bench._procs import Server, cpu_seconds, free_port, memory, start_server, stop_process

NOCP = str(Path(sys.executable).with_name("nocp"))
SMALL_LOG = "\n".join(f"2024-05-01T10:00:{i % 60:02d}Z INFO worker-{i % 7} batch {i} ok" for i in range(60))
AGENT_LOG = "\n".join(
    f"2024-05-0{1 + i % 9}T10:{i % 60:02d}:00Z INFO worker-{i % 7} processed batch {i} in {i * 3 % 97} ms"
    for i in range(600)
)


def agent_body(model: str, outputs: list[str], question: str = "Why did the job fail?") -> dict[str, Any]:
    """An agent turn: a question, one assistant message calling a tool per output, the outputs."""
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
        for i in range(len(outputs))
    ]
    return {
        "model": model,
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": calls},
            *({"role": "tool", "tool_call_id": f"c{i}", "content": o} for i, o in enumerate(outputs)),
        ],
    }


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (nocp's fork server and worker processes)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def rss_tree(pid: int) -> int:
    """RSS of ``pid`` and its descendants, bytes."""
    total = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            total += memory(p).get("VmRSS", 0)
    return total


def p50_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1) if values else float("nan")


def _sink_main(port: int) -> None:
    """An upstream that reads the body and answers a fixed chat completion at once."""
    from aiohttp import web

    answer = {
        "id": "chatcmpl-sink",
        "object": "chat.completion",
        "created": 0,
        "model": "big",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(answer)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def _small_requests(
    http: aiohttp.ClientSession, url: str, stop: asyncio.Event | None, n: int
) -> list[float]:
    """Time small agent requests one after another: ``n`` of them, or until ``stop`` is set."""
    out: list[float] = []
    i = 0
    while (stop is None and i < n) or (stop is not None and not stop.is_set()):
        body = agent_body("gpt-4o", [SMALL_LOG + f"\nrun {i}"], question=f"Status of run {i}?")
        started = time.perf_counter()
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"small request failed: {resp.status}")
        out.append(time.perf_counter() - started)
        i += 1
        await asyncio.sleep(0.02)
    return out


async def _big_client(
    http: aiohttp.ClientSession, url: str, payload: bytes, until: float, done: list[float]
) -> None:
    while time.perf_counter() < until:
        started = time.perf_counter()
        async with http.post(
            f"{url}/v1/chat/completions", data=payload, headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"large request failed: {resp.status}")
        done.append(time.perf_counter() - started)


async def cpu_fairness(nocp: Server, quick: bool) -> dict[str, Any]:
    big = json.dumps(agent_body("big-model", ["\n" * 999_000 + f"end {i}" for i in range(15)])).encode()
    n = 20 if quick else 40
    load_s = 6.0 if quick else 15.0
    headers = {"Authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as http:
        await _small_requests(http, nocp.url, None, 5)  # warm up
        async with http.post(
            f"{nocp.url}/v1/chat/completions", data=big, headers={"Content-Type": "application/json"}
        ) as resp:  # one large request first: nocp's workers start, its buffers are sized
            await resp.read()
        await _idle(nocp.pid)  # work a timed-out stage left running must not count as "unloaded"
        rss_before, main_before = rss_tree(nocp.pid), memory(nocp.pid).get("VmRSS", 0)
        unloaded = await _small_requests(http, nocp.url, None, n)
        cpu0 = _cpu_tree(nocp.pid)
        stop = asyncio.Event()
        big_times: list[float] = []
        until = time.perf_counter() + load_s
        bigs = [asyncio.create_task(_big_client(http, nocp.url, big, until, big_times)) for _ in range(3)]
        await asyncio.sleep(0.5)  # the large requests are in flight
        small_task = asyncio.create_task(_small_requests(http, nocp.url, stop, 0))
        healthz: list[float] = []
        while not all(t.done() for t in bigs):
            started = time.perf_counter()
            async with http.get(f"{nocp.url}/healthz") as resp:
                await resp.read()
            healthz.append(time.perf_counter() - started)
            await asyncio.sleep(0.25)
        await asyncio.gather(*bigs)
        stop.set()
        loaded = await small_task
        rss_peak = memory(nocp.pid).get("VmHWM", 0)
        cpu_load = _cpu_tree(nocp.pid) - cpu0
        await asyncio.sleep(2.0)
        after = await _small_requests(http, nocp.url, None, n)
        rss_after, main_after = rss_tree(nocp.pid), memory(nocp.pid).get("VmRSS", 0)
    result: dict[str, Any] = {
        "small_p50_ms_unloaded": p50_ms(unloaded),
        "small_p50_ms_loaded": p50_ms(loaded),
        "small_p50_ms_after": p50_ms(after),
        "small_loaded_n": len(loaded),
        "loaded_over_unloaded": round(p50_ms(loaded) / p50_ms(unloaded), 2),
        "healthz_max_ms_loaded": round(max(healthz) * 1000, 1) if healthz else None,
        "large_requests_done": len(big_times),
        "large_p50_s": round(statistics.median(big_times), 2) if big_times else None,
        "nocp_cpu_s_during_load_live_processes": round(cpu_load, 2),
        "rss_mb_before": round(rss_before / 2**20, 1),
        "rss_mb_after": round(rss_after / 2**20, 1),
        "rss_mb_main_before": round(main_before / 2**20, 1),
        "rss_mb_main_after": round(main_after / 2**20, 1),
        "rss_mb_peak_main": round(rss_peak / 2**20, 1),
        "rss_after_over_before": round(rss_after / rss_before, 2),
    }
    result["targets_met"] = result["loaded_over_unloaded"] <= 2.0 and result["rss_after_over_before"] <= 1.2
    return result


async def _idle(pid: int, limit_s: float = 120.0) -> None:
    """Wait until ``pid`` (and its children) use under 5% of a core over half a second."""
    deadline = time.perf_counter() + limit_s
    last = _cpu_tree(pid)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        now = _cpu_tree(pid)
        if now - last < 0.025:
            return
        last = now


def _cpu_tree(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (a killed worker's are lost)."""
    total = 0.0
    for p in descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(p)
    return total


async def _agent_latencies(http: aiohttp.ClientSession, url: str, n: int, offset: int) -> list[float]:
    out = []
    for i in range(n):
        body = agent_body("gpt-4o", [AGENT_LOG + f"\nERROR job {offset + i} failed"])
        started = time.perf_counter()
        async with http.post(
            f"{url}/v1/chat/completions", json=body, headers={"X-Session-Id": f"s{offset + i}"}
        ) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"agent request failed: {resp.status}")
        out.append(time.perf_counter() - started)
    return out


async def redis_paused(nocp: Server, redis: subprocess.Popen[bytes], quick: bool) -> dict[str, Any]:
    n = 20 if quick else 50
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-bench"}) as http:
        await _agent_latencies(http, nocp.url, 5, 10_000)
        healthy = await _agent_latencies(http, nocp.url, n, 0)
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            paused = await _agent_latencies(http, nocp.url, n, 1000)
        finally:
            os.kill(redis.pid, signal.SIGCONT)
    result = {
        "requests_each": n,
        "p50_ms_healthy": p50_ms(healthy),
        "p50_ms_paused": p50_ms(paused),
        "max_ms_paused": round(max(paused) * 1000, 1),
        "all_succeeded": True,  # a failed request raises above
    }
    result["targets_met"] = result["p50_ms_paused"] - result["p50_ms_healthy"] <= 300
    return result


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            if conn.recv(16).startswith(b"+PONG"):
                return proc, port
        time.sleep(0.05)
    stop_process(proc)
    return None


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder of hardening.json (default ./{DEFAULT_OUT})"
    )
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)  # internal: run the sink upstream
    args = parser.parse_args(argv)
    if args.sink:
        _sink_main(args.sink)
        return 0
    results: dict[str, Any] = {"machine_cpus": os.cpu_count()}
    started: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="nocp-hardening-") as folder:
        tmp = Path(folder)
        try:
            fake_argv = [NOCP, "fake-upstream", "--host", "127.0.0.1", "--port", "{port}"]
            fake = start_server("fake upstream", fake_argv, "/v1/models", log_dir=tmp)
            started.append(fake.proc)
            sink_argv = [sys.executable, "-m", "proxy.bench.hardening", "--sink", "{port}"]
            sink = start_server("sink", sink_argv, "/healthz", log_dir=tmp)
            started.append(sink.proc)
            config = tmp / "nocp.yaml"
            config.write_text(
                json.dumps(
                    {
                        "upstreams": [
                            {"name": "sink", "base_url": f"{sink.url}/v1", "models": ["big-*"]},
                            {"name": "fake", "base_url": f"{fake.url}/v1", "models": ["*"]},
                        ],
                        "log": {"dir": str(tmp / "logs")},
                    }
                )
            )
            nocp = start_server(
                "nocp", [NOCP, "serve", "--config", str(config), "--port", "{port}"], "/healthz", log_dir=tmp
            )
            started.append(nocp.proc)
            print("CPU fairness: small requests while 3 clients send 30 MB requests ...", flush=True)
            results["cpu_fairness"] = asyncio.run(cpu_fairness(nocp, args.quick))
            print(json.dumps(results["cpu_fairness"], indent=2), flush=True)
            stop_process(nocp.proc)
            redis = start_redis(tmp)
            if redis is None:
                results["redis_paused"] = {"skipped": "redis-server not installed"}
            else:
                started.append(redis[0])
                rconfig = tmp / "nocp-redis.yaml"
                rconfig.write_text(
                    json.dumps(
                        {
                            "upstreams": [{"name": "fake", "base_url": f"{fake.url}/v1", "models": ["*"]}],
                            "log": {"dir": str(tmp / "logs-redis")},
                            "sessions": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{redis[1]}/0"},
                        }
                    )
                )
                rnocp = start_server(
                    "nocp redis", [NOCP, "serve", "--config", str(rconfig), "--port", "{port}"], "/healthz",
                    log_dir=tmp,
                )  # fmt: skip
                started.append(rnocp.proc)
                print("Redis paused: agent requests, Redis healthy then SIGSTOPped ...", flush=True)
                results["redis_paused"] = asyncio.run(redis_paused(rnocp, redis[0], args.quick))
                print(json.dumps(results["redis_paused"], indent=2), flush=True)
        finally:
            for proc in reversed(started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                stop_process(proc)
    path = args.out / "hardening.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
