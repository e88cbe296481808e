"""Large compression jobs in worker processes that can be stopped.

A thread cannot be stopped: a stage that overran its budget failed open, but its thread kept
burning CPU (and, holding the GIL, slowed every other request). :class:`CompressPool` runs a
job (tool outputs to :func:`compressors.compress`) in one of at most ``size`` worker
processes, at a lower CPU priority (``nice`` +10) than the proxy. When the awaiting task is
cancelled (the stage's budget ran out, the client left) the worker running its job is killed
at once and a fresh one is forked in the background. Workers come from a fork server that has
the compressors and the tokenizer loaded, so starting one costs milliseconds.

Until its first worker is up (it starts on first use, or with :meth:`CompressPool.start_soon`
when the server starts) the pool runs jobs on a thread, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import sys
import threading
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import structlog

from compressors import CompressionConfig, CompressionContext, CompressionResult, clear_cache, compress

__all__ = ["CompressPool", "release_memory_soon", "run_jobs", "warm"]

_log = structlog.get_logger("nocp.workers")
Job = tuple[str, CompressionContext]


def run_jobs(jobs: Sequence[Job], config: CompressionConfig) -> list[CompressionResult]:
    """Compress each job's text (where the work happens, in a worker or on a thread)."""
    return [compress(text, ctx, config) for text, ctx in jobs]


def _malloc_trim() -> Callable[[int], Any] | None:
    """glibc's ``malloc_trim(0)``: give freed heap memory back to the OS (None elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc.malloc_trim if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_trim = _malloc_trim()
_trim_pending = False


def release_memory_soon(delay_s: float = 0.5) -> None:
    """After a large request: give the heap it freed back to the OS in ``delay_s`` (glibc
    keeps freed memory, above all in the arenas of the threads that hashed or compressed it;
    RSS would stay at its peak). Calls while one is pending do nothing."""
    global _trim_pending
    if _trim is None or _trim_pending:
        return
    _trim_pending = True
    loop = asyncio.get_running_loop()

    def trim() -> None:
        global _trim_pending
        _trim_pending = False
        loop.run_in_executor(None, _trim, 0)

    loop.call_later(delay_s, trim)


def warm() -> None:
    """Load what every job needs (tokenizer tables, regexes): run once in the fork server."""
    compress("warm up " * 300, CompressionContext(), CompressionConfig())
    clear_cache()


def _child_main(conn: Connection) -> None:
    """A worker: jobs in, results out, until the pipe closes."""
    with contextlib.suppress(OSError):
        os.nice(10)
    trim = _malloc_trim()
    while True:
        try:
            jobs, config = conn.recv()
        except (EOFError, OSError):
            return
        try:
            results = run_jobs(jobs, config)
            # the caller has the inputs: an untouched result goes back without its text
            out = [r if r.changed else _without_text(r) for r in results]
            conn.send(("ok", out))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        clear_cache()  # the caller keeps the results; the worker keeps nothing between jobs
        if trim is not None:
            trim(0)


def _without_text(result: CompressionResult) -> CompressionResult:
    import msgspec

    return msgspec.structs.replace(result, text="")


_start_lock = threading.Lock()


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any) -> None:
        parent, child = ctx.Pipe()
        self.conn: Connection = parent
        self.proc = ctx.Process(target=_child_main, args=(child,), name="nocp-compress", daemon=True)
        # multiprocessing would re-run the host program's main module in the worker (it needs
        # nothing from it); a stand-in hides it while the worker starts
        with _start_lock:
            main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                self.proc.start()
            finally:
                sys.modules["__main__"] = main
        child.close()
        self.killed = False

    def roundtrip(self, message: Any) -> Any:
        """Send a job, wait for its answer (on an I/O thread)."""
        try:
            self.conn.send(message)
            return self.conn.recv()
        finally:
            if self.killed:
                self.conn.close()

    def kill(self) -> None:
        """Stop the process now (its job with it); the pipe closes when its reader is done."""
        self.killed = True
        with contextlib.suppress(OSError, ValueError):
            self.proc.kill()

    def reap(self) -> None:
        """Wait for a killed process to exit (on an I/O thread)."""
        with contextlib.suppress(OSError, ValueError, AssertionError):
            self.proc.join(5)


class CompressPool:
    """At most ``size`` worker processes; a job waits for a free one (under its caller's
    deadline) and a cancelled job's worker is killed."""

    def __init__(self, size: int = 1) -> None:
        self.size = max(1, size)
        self._ctx: Any = None
        self._idle: list[_Worker] = []
        self._live = 0  # workers started and not killed
        self._ready = asyncio.Event()  # set while a worker is idle
        self._warm = False  # a worker was up once: from then on jobs wait for one
        self._starting = 0
        self._broken = False  # a worker failed to start: jobs stay on threads
        self._io = ThreadPoolExecutor(max_workers=self.size + 2, thread_name_prefix="nocp-compress-io")
        self._up = asyncio.Event()  # set once a worker came up (or starting one failed)
        self._closed = False
        self.killed = 0  # jobs stopped at their deadline (for tests and logs)

    def _context(self) -> Any:
        if self._ctx is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            if "forkserver" in methods:
                ctx.set_forkserver_preload(["proxy._compress_warm"])
            self._ctx = ctx
        return self._ctx

    def start_soon(self) -> None:
        """Start workers up to ``size`` in the background (a no-op once they are up)."""
        if self._closed or self._broken:
            return
        loop = asyncio.get_running_loop()
        while self._live + self._starting < self.size:
            self._starting += 1
            fut = loop.run_in_executor(self._io, _Worker, self._context())
            fut.add_done_callback(self._started)

    async def start(self) -> bool:
        """Start the workers and wait until one is up (or failed to start): True when up."""
        self.start_soon()
        await self._up.wait()
        return self._warm

    def _started(self, fut: Any) -> None:
        self._starting -= 1
        try:
            worker: _Worker = fut.result()
        except Exception as exc:
            _log.warning("compress_worker_start_failed", error=f"{type(exc).__name__}: {exc}")
            self._broken = True
            self._ready.set()  # jobs waiting for a worker go on (on threads)
            self._up.set()
            return
        if self._closed:
            worker.kill()
            self._reap(worker)
            return
        self._live += 1
        self._warm = True
        self._up.set()
        self._give_back(worker)

    def _reap(self, worker: _Worker) -> None:
        with contextlib.suppress(RuntimeError):  # after aclose: the process exits all the same
            self._io.submit(worker.reap)

    def _give_back(self, worker: _Worker) -> None:
        self._idle.append(worker)
        self._ready.set()

    async def _take(self) -> _Worker | None:
        while not self._idle:
            if self._broken:
                return None
            self._ready.clear()
            self.start_soon()
            await self._ready.wait()
        worker = self._idle.pop()
        if not self._idle:
            self._ready.clear()
        return worker

    async def run(self, jobs: Sequence[Job], config: CompressionConfig) -> list[CompressionResult]:
        """Compress ``jobs``; cancelling the call stops the work."""
        if not self._warm or self._closed or self._broken:
            if not self._broken:
                self.start_soon()
            return await asyncio.get_running_loop().run_in_executor(self._io, run_jobs, jobs, config)
        worker = await self._take()
        if worker is None:
            return await asyncio.get_running_loop().run_in_executor(self._io, run_jobs, jobs, config)
        done = False
        try:
            status, payload = await asyncio.get_running_loop().run_in_executor(
                self._io, worker.roundtrip, (list(jobs), config)
            )
            done = True
        finally:
            if done:
                self._give_back(worker)
            else:  # cancelled (deadline) or the worker died: stop it, fork another
                self.killed += 1
                self._live -= 1
                worker.kill()
                self._reap(worker)
                self.start_soon()
        if status != "ok":
            raise RuntimeError(f"compress worker: {payload}")
        return [r if r.changed else _with_text(r, text) for r, (text, _) in zip(payload, jobs, strict=True)]

    async def aclose(self) -> None:
        """Stop every worker (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        workers, self._idle = self._idle, []
        for worker in workers:
            worker.kill()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._io, w.reap) for w in workers))
        self._io.shutdown(wait=False)


def _with_text(result: CompressionResult, text: str) -> CompressionResult:
    import msgspec

    return msgspec.structs.replace(result, text=text)
