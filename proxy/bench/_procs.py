"""Process helpers for the benchmarks, and the "aiohttp floor" reference server.

- :func:`free_port`, :func:`start_server`, :func:`stop_process`: run servers as subprocesses,
  wait until they answer on loopback, and stop them by PID (SIGTERM, then SIGKILL on timeout).
- :func:`memory`, :func:`cpu_seconds`: readings from ``/proc/PID`` (Linux).
- ``python -m proxy.bench._procs floor --port P --upstream http://127.0.0.1:Q``: a trivial
  aiohttp reverse proxy that does nothing but forward (read the body, send it upstream on a
  pooled ``ClientSession``, relay the answer, streamed when it is ``text/event-stream``). It is
  the least any aiohttp proxy costs: one extra loopback HTTP hop through aiohttp's server and
  client, with no parsing, routing, logging or anything else nocp does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proxy.upstream import HOP_BY_HOP

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerStartError(RuntimeError):
    """A server subprocess exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Server:
    """A server subprocess we started (and must stop)."""

    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-chars:]
        except OSError:
            return ""


def _http_ok(url: str, timeout: float) -> bool:
    req = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # loopback only
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def spawn(
    name: str,
    argv_for_port: Sequence[str],
    port: int,
    *,
    log_dir: Path,
    env_overrides: Mapping[str, str] | None = None,
) -> Server:
    """Start ``argv_for_port`` (with ``{port}`` substituted) in its own session; output to a file."""
    argv = [a.replace("{port}", str(port)) for a in argv_for_port]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOCP_")}
    env.update(env_overrides or {})
    log_path = log_dir / f"{name.replace(' ', '_')}-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches us; we stop it by PID
        )
    return Server(name, argv, port, proc, log_path, dict(env_overrides or {}))


def wait_ready(server: Server, path: str, timeout: float) -> float:
    """Poll ``GET path`` until it answers 200; return the seconds it took."""
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if server.proc.poll() is not None:
            raise ServerStartError(
                f"{server.name} exited with code {server.proc.returncode} before it was ready:\n"
                f"{server.log_tail()}"
            )
        if _http_ok(server.url + path, timeout=1.0):
            return time.perf_counter() - started
        time.sleep(0.05)
    raise ServerStartError(f"{server.name} was not ready after {timeout:.0f}s:\n{server.log_tail()}")


def start_server(
    name: str,
    argv_for_port: Sequence[str],
    ready_path: str,
    *,
    log_dir: Path,
    env_overrides: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    attempts: int = 3,
) -> Server:
    """Start a server on a free port and wait until ``ready_path`` answers 200.

    Another process may take the port between :func:`free_port` and the bind; a server that
    exits early is retried on a new port, up to ``attempts`` times.
    """
    error: ServerStartError | None = None
    for _ in range(attempts):
        server = spawn(name, argv_for_port, free_port(), log_dir=log_dir, env_overrides=env_overrides)
        try:
            wait_ready(server, ready_path, timeout)
            return server
        except ServerStartError as exc:
            stop_process(server.proc)
            error = exc
        except BaseException:  # Ctrl-C or SIGTERM while waiting: the caller does not know it yet
            stop_process(server.proc)
            raise
    assert error is not None
    raise error


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM ``proc`` (by PID), SIGKILL it if it is still there after ``timeout``; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid`` in bytes, from ``/proc/PID/status``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                value, _, unit = rest.strip().partition(" ")
                out[key] = int(value) * (1024 if unit.strip().lower() == "kb" else 1)
    return out


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from ``/proc/stat``.

    Busy is everything but idle and iowait, so it includes the kernel's network work
    (softirq) that loopback traffic costs and that no process is charged for.
    """
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(x) for x in fh.readline().split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = values[3] + values[4]
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """CPU time used by ``pid`` so far, all threads, in seconds.

    Nanosecond ``/proc/PID/task/*/schedstat`` when the kernel has it (threads that already
    exited are not counted; nocp's worker threads live as long as the process), else
    ``utime + stime`` from ``/proc/PID/stat`` (10 ms ticks, exited threads included).
    """
    total_ns = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError, ProcessLookupError),
                open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as fh,
            ):
                total_ns += int(fh.read().split()[0])
    except (FileNotFoundError, PermissionError, ValueError, IndexError):
        total_ns = 0
    if total_ns > 0:
        return total_ns / 1e9
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# --------------------------------------------------------------------------- the aiohttp floor

_HOP_BY_HOP = HOP_BY_HOP | {"content-length"}


def _floor_main(port: int, upstream: str) -> None:
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict
    from yarl import URL

    base = upstream.rstrip("/")
    session_key = web.AppKey("floor_session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[session_key] = aiohttp.ClientSession(
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
            trust_env=False,
        )
        yield
        await app[session_key].close()

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        url = URL(base + request.raw_path, encoded=True)
        async with request.app[session_key].request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as resp:
            out_headers = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP)
            if resp.content_type == "text/event-stream":
                out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=out_headers)
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            data = await resp.read()
            return web.Response(body=data, status=resp.status, reason=resp.reason, headers=out_headers)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, handler_cancellation=True, print=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    floor = sub.add_parser("floor", help="run the trivial aiohttp forwarding server")
    floor.add_argument("--port", type=int, required=True)
    floor.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000 (no path)")
    args = parser.parse_args(argv)
    if args.command == "floor":
        _floor_main(args.port, args.upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
