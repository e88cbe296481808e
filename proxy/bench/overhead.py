"""What nocp adds to a request: latency, throughput and memory, against the upstream directly.

Run: ``nocp bench overhead`` (or ``python -m proxy.bench.overhead``, ``make bench-overhead``);
``--quick`` for a CI smoke run of a few seconds, ``--requests N`` to change the request counts.
``nocp bench`` runs it too, as part of the suite.

Everything runs on 127.0.0.1 as separate processes, started on free ports and stopped by PID
at the end (also on error or Ctrl-C):

- the fake upstream (``nocp fake-upstream``): OpenAI chat completions, plain and SSE;
- ``nocp`` in passthrough (every pipeline stage this build has switched off, so it has
  nothing to do): the number the targets are about;
- ``nocp`` as ``nocp serve`` runs by default, when this build switches stages on by default;
- the "aiohttp floor": a trivial aiohttp server that does nothing but forward (see
  :mod:`proxy.bench._procs`), i.e. the cost of one extra loopback HTTP hop through aiohttp in Python;
- the peer, the LiteLLM proxy (``litellm[proxy]``, pinned in :data:`LITELLM_SPEC`): installed by
  this script into its own virtual environment (``--peer-venv``, default
  ``~/.cache/nocp/litellm-venv``; ``make bench`` uses ``build/litellm-venv``; reused when present),
  configured to route the model to the same fake upstream as an OpenAI-compatible provider,
  one worker, ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (it would otherwise fetch a price list at
  start-up), a master key equal to the client's key (LiteLLM refuses to start without one;
  every request is then authenticated, as in a real deployment). Skipped with a message when
  it cannot be installed or started, with ``--no-peer``, and always with ``--quick``.

The load generator is this process: asyncio + one aiohttp ``ClientSession`` per target (a pool
of keep-alive connections). Each scenario (non-streaming / streaming at concurrency 1 and 32)
runs in rounds; in every round each target gets one block of requests, in an order that
rotates from round to round, so the noise of this shared 2-core machine hits all of them
alike. Numbers are written to ``overhead.json`` (``overhead-quick.json`` with ``--quick``) in
``--out`` (default ``./nocp-bench``; ``make bench-overhead`` writes ``benchmarks/results``).

Targets (issue 2, for a passthrough request): added p50 <= 1 ms at concurrency 1, RSS <= 80 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from yarl import URL

from proxy.bench._common import DEFAULT_OUT, checkout, default_peer_venv, git, shown
from proxy.bench._procs import (
    Server,
    ServerStartError,
    cpu_seconds,
    machine_cpu_seconds,
    memory,
    start_server,
    stop_process,
)
from proxy.stats import percentile as stats_percentile

ADDED_P50_LIMIT_MS = 1.0
RSS_LIMIT_BYTES = 80 * 10**6  # "80 MB"; MB here is 10^6 bytes (the stricter reading)
MB = 10**6

MODEL = "gpt-4o-mini"
LITELLM_SPEC = "litellm[proxy]==1.106.2"
PEER_INSTALL_TIMEOUT_S = 420  # a slow index must not blow the 10-minute budget of make bench
SYSTEM_PROMPT = (
    "You are Ada, the support assistant of Northwind Outfitters, an online shop for hiking and "
    "camping gear. Answer in a friendly, concise tone and never invent order details: when you "
    "need an order number, a delivery address or a product code, ask the customer for it. You "
    "can explain our policies: free returns within 30 days for unused items with the original "
    "tags, refunds to the original payment method within 5 business days of receiving the "
    "return, and free standard shipping on orders over 75 euros. Express shipping costs 12 "
    "euros and arrives in 1 to 2 business days. If a customer is upset, apologise once, then "
    "focus on solving the problem. Escalate to a human agent when the customer asks for one."
)
USER_PROMPT = (
    "Hi! I ordered the Alpine 2 tent and a pair of trekking poles last Tuesday, but only the "
    "poles arrived this morning. The tracking page for the tent still says 'label created'. "
    "I'm leaving for a three-day hike in the Dolomites on Friday, so I really need it before "
    "then. Can you check what happened, and if it won't make it in time, could you switch it "
    "to express shipping or tell me how a refund would work?"
)
# What the OpenAI Python SDK sends besides the body (values shortened, key not real).
CLIENT_HEADERS = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": "OpenAI/Python 1.99.0",
    "Authorization": "Bearer sk-bench-not-a-real-key-0000000000000000",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.99.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "CPython",
    "X-Stainless-Runtime-Version": "3.11.7",
    "X-Stainless-Async": "async:asyncio",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Read-Timeout": "600",
}
MODES = ("non-streaming", "streaming")


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """:func:`proxy.stats.percentile` (``q`` from 0 to 100), NaN rather than None for no values."""
    p = stats_percentile(values, q)
    return math.nan if p is None else p


def ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


# ----------------------------------------------------------------------------- targets


@dataclass(slots=True)
class Target:
    """Something the load generator sends requests to."""

    key: str
    label: str
    description: str
    base_url: str
    server: Server | None = None  # the proxy process in between (None: direct)
    session: aiohttp.ClientSession | None = None
    sent: int = 0  # every request sent, warm-up included

    @property
    def url(self) -> URL:
        return URL(self.base_url + "/v1/chat/completions")


@dataclass(slots=True)
class Samples:
    """Everything measured for one target in one scenario (all its blocks together)."""

    latencies: list[float] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0
    proxy_cpu: float = 0.0
    upstream_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_busy: float = 0.0
    machine_total: float = 0.0
    round_p50: list[float] = field(default_factory=list)
    round_ttfc_p50: list[float] = field(default_factory=list)


def request_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


BODIES = {False: request_body(False), True: request_body(True)}


def tagged_headers(tag: str) -> dict[str, str]:
    """The client headers plus ``X-Session-Id: tag``: nocp logs it, so its log can be split by scenario."""
    return {**CLIENT_HEADERS, "X-Session-Id": tag}


async def one_request(
    target: Target, stream: bool, headers: dict[str, str]
) -> tuple[float, float | None, bool]:
    """Send one chat completion; (latency, time to first body chunk, ok)."""
    assert target.session is not None
    target.sent += 1
    first: float | None = None
    ok = False
    started = time.perf_counter()
    try:
        async with target.session.post(target.url, data=BODIES[stream], headers=headers) as resp:
            if stream:
                tail = b""
                async for chunk in resp.content.iter_any():
                    if first is None:
                        first = time.perf_counter()
                    tail = (tail + chunk)[-32:]
                ok = resp.status == 200 and tail.endswith(b"data: [DONE]\n\n")
            else:
                data = await resp.read()
                ok = resp.status == 200 and b'"chat.completion"' in data
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    done = time.perf_counter()
    return done - started, (first - started if first is not None else None), ok


async def fetch(target: Target, stream: bool) -> tuple[int, bytes]:
    assert target.session is not None
    target.sent += 1
    headers = tagged_headers("bench-check")
    async with target.session.post(target.url, data=BODIES[stream], headers=headers) as resp:
        return resp.status, await resp.read()


@dataclass(slots=True)
class Block:
    latencies: list[float]
    ttfc: list[float]
    errors: int
    wall: float
    proxy_cpu: float
    upstream_cpu: float
    client_cpu: float
    machine_busy: float
    machine_total: float


async def run_block(
    target: Target, upstream_pid: int, stream: bool, n: int, concurrency: int, tag: str
) -> Block:
    """``n`` requests, ``concurrency`` at a time, with the CPU each process spent meanwhile."""
    latencies: list[float] = []
    ttfc: list[float] = []
    errors = 0
    remaining = n
    headers = tagged_headers(tag)

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            latency, first, ok = await one_request(target, stream, headers)
            if ok:
                latencies.append(latency)
                if first is not None:
                    ttfc.append(first)
            else:
                errors += 1

    gc.collect()
    proxy_pid = target.server.pid if target.server is not None else None
    p0 = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    u0 = cpu_seconds(upstream_pid)
    m0 = machine_cpu_seconds()
    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    wall = time.perf_counter() - t0
    c1 = time.process_time()
    u1 = cpu_seconds(upstream_pid)
    p1 = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    m1 = machine_cpu_seconds()
    return Block(latencies, ttfc, errors, wall, p1 - p0, u1 - u0, c1 - c0, m1[0] - m0[0], m1[1] - m0[1])


# ----------------------------------------------------------------------------- plan


@dataclass(slots=True)
class Plan:
    requests: dict[int, int]  # concurrency -> measured requests per target and mode
    blocks: dict[int, int]  # concurrency -> requests per block
    warmup: int  # per target and mode at concurrency 1 (plus a burst at each higher one)
    time_cap: float  # seconds for all measured scenarios together
    quick: bool


def make_plan(args: argparse.Namespace) -> Plan:
    conc: list[int] = args.concurrency
    if args.quick:
        defaults = {c: (60 if c == 1 else 10 * c) for c in conc}
        warmup, cap = 10, 10.0
    else:
        defaults = {c: (500 if c == 1 else 2000) for c in conc}
        warmup, cap = 40, 85.0
    requests = {c: args.requests or defaults[c] for c in conc}
    blocks = {}
    for c, n in requests.items():
        default_block = 50 if c == 1 else max(250, 4 * c)
        blocks[c] = max(1, min(default_block, math.ceil(n / 4)))
    return Plan(requests, blocks, warmup, args.time_cap or cap, args.quick)


# ----------------------------------------------------------------------------- processes


def nocp_binary() -> str:
    candidate = Path(sys.executable).parent / "nocp"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nocp")
    if found is None:
        raise SystemExit("nocp bench overhead: the 'nocp' console script was not found (run 'make install')")
    return found


@dataclass(slots=True)
class Build:
    """What this build of nocp runs by default, and how to switch its stages off."""

    stages_on: list[str]  # stage names ``nocp serve`` runs with no config
    passthrough_env: dict[str, str]  # NOCP_* variables that switch every one of them off
    stages_left: list[str]  # stages still on with passthrough_env (should be empty)
    log_file: str = "transactions.jsonl"


def probe_build(tmp: Path) -> Build:
    """Ask the build itself (``proxy.server.default_stages``) which stages it runs.

    Candidate switches are every ``true`` boolean of the ``stages`` section and every section's
    ``enabled: true``; a candidate is kept only if turning it off removes a stage, so switches
    of things that are not stages (metrics, drift alerts, ...) stay as they are by default.
    """
    try:
        import msgspec

        from proxy.config import Settings, load_settings
        from proxy.pipeline import stage_name
        from proxy.server import default_stages
    except Exception:  # an older build without configurable stages, or one that cannot import
        return Build([], {}, [])
    overrides: dict[str, Any] = {
        "upstreams": [{"name": "default", "base_url": "http://127.0.0.1:9/v1", "models": ["*"]}],
        "log": {"dir": str(tmp / "probe")},
    }

    def stages_with(env: dict[str, str]) -> list[str]:
        settings = load_settings(None, env=env, overrides=overrides)
        return [stage_name(stage) for stage in default_stages(settings)]

    candidates: list[str] = []
    for section in msgspec.structs.fields(Settings):
        if not (isinstance(section.type, type) and issubclass(section.type, msgspec.Struct)):
            continue
        for f in msgspec.structs.fields(section.type):
            if f.type is bool and f.default is True and (section.name == "stages" or f.name == "enabled"):
                candidates.append(f"NOCP_{section.name.upper()}__{f.name.upper()}")
    on = stages_with({})
    env: dict[str, str] = {}
    left = on
    for var in candidates:
        trial = {**env, var: "false"}
        remaining = stages_with(trial)
        if len(remaining) < len(left):
            env, left = trial, remaining
    log_file = load_settings(None, env={}, overrides=overrides).log.file
    return Build(on, env, left, log_file)


@dataclass(slots=True)
class Peer:
    """The LiteLLM proxy run beside nocp: where it is installed and whether it took part."""

    status: str  # "measured", "skipped"
    reason: str = ""
    executable: Path | None = None
    version: str | None = None
    spec: str = LITELLM_SPEC
    venv: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": "litellm",
            "status": self.status,
            "reason": self.reason,
            "version": self.version,
            "spec": self.spec,
            "venv": self.venv,
        }


def ensure_litellm(venv: Path, spec: str, say: Callable[[str], None]) -> Peer:
    """LiteLLM in its own virtual environment under the build directory: reused when it is
    already there, else created with ``python -m venv`` and ``pip install`` (from PyPI)."""
    peer = Peer("skipped", spec=spec, venv=str(venv))
    exe = venv / "bin" / "litellm"
    python = venv / "bin" / "python"

    def version() -> str | None:
        probe = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return probe.stdout.strip() or None if probe.returncode == 0 else None

    wanted = spec.partition("==")[2] or None
    try:
        if exe.exists() and python.exists() and (found := version()) and (wanted is None or found == wanted):
            peer.executable, peer.version, peer.status = exe, found, "measured"
            return peer
        say(f"installing the peer ({spec}) into {venv} (once; later runs reuse it) ...")
        started = time.perf_counter()
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300
            )
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec],
            capture_output=True,
            text=True,
            timeout=PEER_INSTALL_TIMEOUT_S,
            check=False,
        )
        if pip.returncode != 0:
            tail = (pip.stderr or pip.stdout).strip().splitlines()[-3:]
            peer.reason = f"pip install {spec} failed: {' / '.join(tail)}"
            return peer
        found = version()
        if not exe.exists() or found is None:
            peer.reason = f"{spec} installed but {exe} is missing"
            return peer
        say(f"peer installed in {time.perf_counter() - started:.0f} s (litellm {found})")
        peer.executable, peer.version, peer.status = exe, found, "measured"
    except (OSError, subprocess.SubprocessError) as exc:
        peer.reason = f"could not install {spec}: {exc}"
    return peer


def litellm_config(tmp: Path, fake_url: str) -> Path:
    """A LiteLLM proxy config routing :data:`MODEL` to the fake upstream (OpenAI-compatible)."""
    path = tmp / "litellm-config.yaml"
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {fake_url}/v1\n"
        "      api_key: sk-fake-upstream\n"
        "litellm_settings:\n"
        "  drop_params: true\n",
        "utf-8",
    )
    return path


def _peer_answers(server: Server) -> str | None:
    """None when the peer answers a chat completion with 200; else why not."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        server.url + "/v1/chat/completions", data=BODIES[False], headers=CLIENT_HEADERS, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
            return None if int(resp.status) == 200 else f"answered {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"request failed: {exc}"


@contextlib.contextmanager
def servers(tmp: Path, build: Build, peer: Peer | None = None) -> Iterator[tuple[Server, list[Target]]]:
    """Start the fake upstream, the proxies, the floor and the peer; stop every one of them at the end."""
    started: list[Server] = []
    nocp = nocp_binary()
    try:
        fake = start_server(
            "fake upstream",
            [nocp, "fake-upstream", "--host", "127.0.0.1", "--port", "{port}"],
            "/v1/models",
            log_dir=tmp,
        )
        started.append(fake)
        switches, default_on = build.passthrough_env, build.stages_on

        def nocp_serve(log: str) -> list[str]:
            upstream, port = fake.url + "/v1", "{port}"  # the port is filled in by start_server
            return [nocp, "serve", "--upstream", upstream, "--port", port, "--log-dir", str(tmp / log)]

        specs: list[tuple[str, str, str, list[str], str, dict[str, str]]] = [
            (
                "floor",
                "aiohttp floor",
                "trivial aiohttp forwarding server (_procs.py floor): the cost of one loopback hop",
                [
                    sys.executable,
                    "-m",
                    "proxy.bench._procs",
                    "floor",
                    "--port",
                    "{port}",
                    "--upstream",
                    fake.url,
                ],
                "/healthz",
                {},
            ),
            (
                "nocp",
                "nocp",
                "nocp serve, passthrough: "
                + (
                    f"stages {', '.join(default_on)} switched off ({', '.join(sorted(switches))})"
                    if switches
                    else "no stages on in this build"
                ),
                nocp_serve("log-nocp"),
                "/readyz",
                switches,
            ),
        ]
        if default_on:
            specs.append(
                (
                    "nocp_stages",
                    "nocp+stages",
                    f"nocp serve with its default stages ({', '.join(default_on)}) on",
                    nocp_serve("log-nocp_stages"),
                    "/readyz",
                    {},
                )
            )
        targets = [Target("direct", "direct", "client -> fake upstream", fake.url)]
        for key, label, desc, argv, ready, env in specs:
            server = start_server(label, argv, ready, log_dir=tmp, env_overrides=env)
            started.append(server)
            targets.append(Target(key, label, desc, server.url, server))
        if peer is not None and peer.status == "measured" and peer.executable is not None:
            argv = [str(peer.executable), "--config", str(litellm_config(tmp, fake.url))]
            argv += ["--host", "127.0.0.1", "--port", "{port}", "--num_workers", "1"]
            env = {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_MASTER_KEY": CLIENT_HEADERS["Authorization"].removeprefix("Bearer "),
                "LITELLM_LOG": "ERROR",
                "NO_DOCS": "True",
            }
            try:
                server = start_server(
                    "LiteLLM",
                    argv,
                    "/health/liveliness",
                    log_dir=tmp,
                    env_overrides=env,
                    timeout=120,
                    attempts=2,
                )
            except ServerStartError as exc:
                peer.status, peer.reason = (
                    "skipped",
                    "LiteLLM did not start: " + " ".join(str(exc).split())[-400:],
                )
            else:
                started.append(server)
                problem = _peer_answers(server)
                if problem is None:
                    desc = f"LiteLLM proxy {peer.version}, 1 worker, routing {MODEL} to the fake upstream"
                    targets.append(Target("litellm", "LiteLLM", desc, server.url, server))
                else:
                    peer.status, peer.reason = (
                        "skipped",
                        f"LiteLLM {problem}: " + " ".join(server.log_tail(400).split()),
                    )
                    stop_process(server.proc)
        yield fake, targets
    finally:
        for server in reversed(started):
            stop_process(server.proc)


# ----------------------------------------------------------------------------- measuring


def scenario_tag(mode: str, concurrency: int) -> str:
    return f"bench-{mode}-c{concurrency}"


@dataclass(slots=True)
class Scenario:
    mode: str
    concurrency: int
    requests: int
    block: int
    samples: dict[str, Samples]
    rounds: int = 0
    truncated: bool = False


async def measure(
    targets: list[Target], fake: Server, plan: Plan, say: Callable[[str], None]
) -> tuple[list[Scenario], dict[str, Any]]:
    max_conc = max(plan.requests)
    for t in targets:
        t.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_conc, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
    checks: dict[str, Any] = {}
    try:
        # correctness first: same request, same bytes back through every path?
        reference = {s: await fetch(targets[0], s) for s in (False, True)}
        usage = json.loads(reference[False][1])["usage"]
        checks["prompt_tokens"] = usage["prompt_tokens"]
        checks["completion_tokens"] = usage["completion_tokens"]
        checks["request_bytes"] = len(BODIES[False])
        checks["stream_events"] = reference[True][1].count(b"data: ")
        checks["identical_body"] = {}
        for t in targets[1:]:
            got = {s: await fetch(t, s) for s in (False, True)}
            checks["identical_body"][t.key] = {MODES[s]: got[s] == reference[s] for s in (False, True)}
            for s in (False, True):
                if got[s][0] != 200:
                    raise RuntimeError(
                        f"{t.label}: {MODES[s]} request answered {got[s][0]}: {got[s][1][:300]!r}"
                    )

        # warm-up: connections, code paths, caches
        say(f"warm-up: {plan.warmup} requests per target and mode at c=1, then a burst at c={max_conc}")
        for t in targets:
            for stream in (False, True):
                await run_block(t, fake.pid, stream, plan.warmup, 1, "bench-warmup")
                for c in plan.requests:
                    if c > 1:
                        await run_block(t, fake.pid, stream, 4 * c, c, "bench-warmup")

        scenarios: list[Scenario] = []
        order = [(c, s) for c in sorted(plan.requests) for s in (False, True)]
        deadline = time.perf_counter() + plan.time_cap
        for i, (conc, stream) in enumerate(order):
            n, block = plan.requests[conc], plan.blocks[conc]
            sc = Scenario(MODES[stream], conc, n, block, {t.key: Samples() for t in targets})
            scenario_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (len(order) - i)
            rounds = math.ceil(n / block)
            say(f"{sc.mode} c={conc}: {rounds} rounds x {len(targets)} targets, {block} requests a block")
            for r in range(rounds):
                size = min(block, n - r * block)
                k = r % len(targets)
                for t in targets[k:] + targets[:k]:
                    b = await run_block(t, fake.pid, stream, size, conc, scenario_tag(sc.mode, conc))
                    acc = sc.samples[t.key]
                    acc.latencies += b.latencies
                    acc.ttfc += b.ttfc
                    acc.errors += b.errors
                    acc.wall += b.wall
                    acc.proxy_cpu += b.proxy_cpu
                    acc.upstream_cpu += b.upstream_cpu
                    acc.client_cpu += b.client_cpu
                    acc.machine_busy += b.machine_busy
                    acc.machine_total += b.machine_total
                    acc.round_p50.append(percentile(sorted(b.latencies), 50))
                    if b.ttfc:
                        acc.round_ttfc_p50.append(percentile(sorted(b.ttfc), 50))
                sc.rounds = r + 1
                if r + 1 < rounds and time.perf_counter() > scenario_deadline:
                    sc.truncated = True
                    say(f"  time cap reached after {r + 1} of {rounds} rounds")
                    break
            scenarios.append(sc)
        return scenarios, checks
    finally:
        for t in targets:
            if t.session is not None:
                await t.session.close()


# ----------------------------------------------------------------------------- results


def summarize(scenarios: list[Scenario], targets: list[Target]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sc in scenarios:
        direct = sorted(sc.samples["direct"].latencies)
        floor = sorted(sc.samples["floor"].latencies) if "floor" in sc.samples else []
        rows: dict[str, Any] = {}
        for t in targets:
            s = sc.samples[t.key]
            lat = sorted(s.latencies)
            ttfc = sorted(s.ttfc)
            done = len(lat) + s.errors
            row: dict[str, Any] = {
                "requests": len(lat),
                "errors": s.errors,
                "p50_ms": ms(percentile(lat, 50)),
                "p90_ms": ms(percentile(lat, 90)),
                "p99_ms": ms(percentile(lat, 99)),
                "mean_ms": ms(sum(lat) / len(lat)) if lat else None,
                "min_ms": ms(lat[0]) if lat else None,
                "max_ms": ms(lat[-1]) if lat else None,
                "requests_per_s": round(done / s.wall, 1) if s.wall else None,
                "ttfc_p50_ms": ms(percentile(ttfc, 50)) if ttfc else None,
                "ttfc_p99_ms": ms(percentile(ttfc, 99)) if ttfc else None,
                "client_cpu_ms_per_request": round(s.client_cpu * 1000 / done, 4) if done else None,
                "upstream_cpu_ms_per_request": round(s.upstream_cpu * 1000 / done, 4) if done else None,
                "client_busy_fraction_of_one_core": round(s.client_cpu / s.wall, 3) if s.wall else None,
                "upstream_busy_fraction_of_one_core": round(s.upstream_cpu / s.wall, 3) if s.wall else None,
                "machine_busy_cores": round(s.machine_busy / s.wall, 3) if s.wall else None,
                "machine_busy_fraction": round(s.machine_busy / s.machine_total, 3)
                if s.machine_total
                else None,
                "round_p50_ms": [ms(x) for x in s.round_p50],
            }
            busy = s.client_cpu + s.upstream_cpu
            if t.server is not None:
                row["proxy_cpu_ms_per_request"] = round(s.proxy_cpu * 1000 / done, 4) if done else None
                row["proxy_busy_fraction_of_one_core"] = round(s.proxy_cpu / s.wall, 3) if s.wall else None
                busy += s.proxy_cpu
                row["added_p50_ms"] = ms(percentile(lat, 50) - percentile(direct, 50))
                row["added_p99_ms"] = ms(percentile(lat, 99) - percentile(direct, 99))
                d_rounds = sc.samples["direct"].round_p50
                per_round = [a - b for a, b in zip(s.round_p50, d_rounds, strict=False)]
                row["added_p50_by_round_ms"] = [ms(x) for x in per_round]
                if sc.samples["direct"].ttfc and ttfc:
                    row["added_ttfc_p50_ms"] = ms(
                        percentile(ttfc, 50) - percentile(sorted(sc.samples["direct"].ttfc), 50)
                    )
                if t.key != "floor" and floor:
                    row["over_floor_p50_ms"] = ms(percentile(lat, 50) - percentile(floor, 50))
                    row["over_floor_p99_ms"] = ms(percentile(lat, 99) - percentile(floor, 99))
            row["benchmark_processes_busy_cores"] = round(busy / s.wall, 3) if s.wall else None
            rows[t.key] = row
        out.append(
            {
                "mode": sc.mode,
                "concurrency": sc.concurrency,
                "requests_per_target": sc.requests,
                "block": sc.block,
                "rounds": sc.rounds,
                "truncated": sc.truncated,
                "targets": rows,
            }
        )
    return out


def translog_stats(log_dir: Path, log_file: str, sent: int) -> dict[str, Any]:
    """What nocp's TransactionLog says: one line per request? did a stage run? its own timings."""
    lines: list[dict[str, Any]] = []
    for path in sorted(log_dir.glob(log_file + "*")):  # the file and its rotated backups
        for raw in path.read_text("utf-8").splitlines():
            if raw.strip():
                lines.append(json.loads(raw))

    def ran(x: dict[str, Any]) -> bool:
        return bool((x.get("compression_latency_ms") or 0) > 0 or x.get("segments") or x.get("fail_open"))

    by_scenario: dict[str, dict[str, Any]] = {}
    for tag in sorted({str(x.get("session_id")) for x in lines}):
        group = [x for x in lines if str(x.get("session_id")) == tag]
        overhead = sorted(float(x.get("proxy_overhead_ms") or 0.0) for x in group)
        comp = sorted(float(x.get("compression_latency_ms") or 0.0) for x in group)
        by_scenario[tag.removeprefix("bench-")] = {
            "lines": len(group),
            "proxy_overhead_ms_p50": round(percentile(overhead, 50), 4),
            "proxy_overhead_ms_p99": round(percentile(overhead, 99), 4),
            "compression_latency_ms_p50": round(percentile(comp, 50), 4),
        }
    return {
        "requests_sent": sent,
        "log_lines": len(lines),
        "outcome_ok": sum(1 for x in lines if x.get("outcome") == "ok"),
        "pipeline_ran": sum(1 for x in lines if ran(x)),
        "self_reported_by_scenario": by_scenario,
    }


def git_info() -> dict[str, Any]:
    """The commit of the source checkout this runs from (nothing outside one)."""
    root = checkout()
    dirty = git(root, "status", "--porcelain", "--", "proxy", "compressors")
    return {"head": git(root, "rev-parse", "HEAD") or None, "proxy_or_compressors_modified": bool(dirty)}


# ----------------------------------------------------------------------------- output


def fmt(value: Any, digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, headers: list[str], rows: list[list[str]], *, style: str) -> None:
    """Print a table: ``rich`` (a terminal), ``markdown`` (for the README) or ``plain`` text."""
    if style == "markdown":
        print(f"**{title}**\n")
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        return
    if style == "rich":
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(title)
    line = "  ".join(
        h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print()


def report(result: dict[str, Any], *, style: str) -> None:
    labels = {t["key"]: t["label"] for t in result["targets"]} | {"fake_upstream": "fake upstream"}
    headers = [
        "scenario",
        "target",
        "n",
        "err",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "over floor p50",
        "req/s",
        "TTFC p50",
        "proxy CPU ms/req",
    ]
    rows: list[list[str]] = []
    for sc in result["scenarios"]:
        name = f"{sc['mode']} c={sc['concurrency']}" + (" (time cap)" if sc["truncated"] else "")
        for key, r in sc["targets"].items():
            rows.append(
                [
                    name,
                    labels[key],
                    str(r["requests"]),
                    str(r["errors"]),
                    fmt(r["p50_ms"]),
                    fmt(r["p99_ms"]),
                    fmt(r.get("added_p50_ms"), sign=True),
                    fmt(r.get("added_p99_ms"), sign=True),
                    fmt(r.get("over_floor_p50_ms"), sign=True),
                    fmt(r["requests_per_s"], 0),
                    fmt(r["ttfc_p50_ms"]),
                    fmt(r.get("proxy_cpu_ms_per_request")),
                ]
            )
            name = ""
    print_table("Latency (ms) direct vs through a proxy, loopback", headers, rows, style=style)

    mem_rows = [
        [
            labels.get(key, key),
            "",
            fmt(m["idle_VmRSS"] / MB, 1) if m.get("idle_VmRSS") is not None else "-",
            fmt(m["VmRSS"] / MB, 1),
            fmt(m["VmHWM"] / MB, 1),
        ]
        for key, m in result["memory"].items()
    ]
    print_table(
        "Memory after the run (MB = 10^6 bytes)",
        ["process", "", "VmRSS idle", "VmRSS after", "VmHWM peak"],
        mem_rows,
        style=style,
    )

    load = result["loadavg_1_5_15min"]
    print(
        f"machine: {result['machine']['cpus']} CPUs, 1-minute load average {load['start'][0]:.2f} at start, "
        f"{load['end'][0]:.2f} at end (shared machine: other processes compete for the same cores)"
    )
    lg = result["load_generator"]
    print(f"load generator: {lg['description']}")
    for line in lg["saturation"]:
        print(f"  {line}")
    for key, tl in result["translog"].items():
        own = tl["self_reported_by_scenario"]
        print(
            f"{labels[key]} TransactionLog: {tl['log_lines']} lines for {tl['requests_sent']} requests sent, "
            f"pipeline ran on {tl['pipeline_ran']}; its own proxy_overhead_ms p50: "
            + ", ".join(
                f"{tag} {fmt(v['proxy_overhead_ms_p50'])}"
                for tag, v in own.items()
                if tag not in ("warmup", "check")
            )
        )
    same = result["checks"]["identical_body"]
    print(
        "same bytes as direct: "
        + "; ".join(
            f"{labels[k]}: " + ", ".join(f"{m} {'yes' if v else 'no'}" for m, v in d.items())
            for k, d in same.items()
        )
    )
    print(
        f"request: system + user message, {result['checks']['prompt_tokens']} prompt tokens "
        f"({result['checks']['request_bytes']} bytes); reply {result['checks']['completion_tokens']} tokens, "
        f"{result['checks']['stream_events']} SSE events when streamed"
    )
    print()
    for c in result["targets_check"]:
        verdict = "PASS" if c["pass"] else "FAIL"
        note = f"; {c['note']}" if c.get("note") else ""
        print(f"{verdict}  {c['name']}: {fmt(c['value'])} {c['unit']} (limit {c['limit']} {c['unit']}{note})")
    for c in result["validity_checks"]:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  check: {c['name']} ({c['detail']})")
    peer = result.get("peer") or {}
    if peer.get("status") == "measured":
        print(f"peer: LiteLLM {peer.get('version')} ({peer.get('venv')})")
    elif peer:
        print(f"peer: LiteLLM not measured ({peer.get('reason')})")
    print(f"\nwritten to {result['json_path']}")


def saturation_lines(summary: list[dict[str, Any]], cores: int, labels: dict[str, str]) -> list[str]:
    """Who limits throughput at concurrency > 1: the client, the fake upstream, or the machine."""
    lines: list[str] = []
    for sc in summary:
        if sc["concurrency"] == 1:
            continue
        for key, r in sc["targets"].items():
            client = r["client_busy_fraction_of_one_core"] or 0.0
            upstream = r["upstream_busy_fraction_of_one_core"] or 0.0
            proxy = r.get("proxy_busy_fraction_of_one_core")
            machine = r["machine_busy_fraction"] or 0.0
            other = (r["machine_busy_cores"] or 0.0) - (r["benchmark_processes_busy_cores"] or 0.0)
            if machine >= 0.9:
                verdict = "machine CPU-bound (another client process would only take CPU from the servers)"
            elif client >= 0.9:
                verdict = "client-bound"
            elif upstream >= 0.9:
                verdict = "fake-upstream-bound"
            elif proxy is not None and proxy >= 0.9:
                verdict = "proxy-bound (one event loop, one core)"
            else:
                verdict = "no single process at 90% of a core"
            lines.append(
                f"{sc['mode']} c={sc['concurrency']} {labels[key]}: CPU busy: client {client:.0%}, "
                + (f"proxy {proxy:.0%}, " if proxy is not None else "")
                + f"fake upstream {upstream:.0%} of one core; whole machine {machine:.0%} of {cores} cores "
                + f"({other:.2f} cores outside these processes: kernel, other users): {verdict}"
            )
    return lines


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few requests only (CI smoke, < 20 s)")
    parser.add_argument(
        "--requests", type=int, help="requests per target and scenario (default 500 at c=1, 2000 at c=32)"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: sorted({int(x) for x in s.split(",")}),
        default=[1, 32],
        help="comma-separated concurrency levels (default 1,32)",
    )
    parser.add_argument(
        "--time-cap", type=float, help="seconds for all measured scenarios (default 85, quick 10)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder of overhead.json (overhead-quick.json with --quick; default ./{DEFAULT_OUT})",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--no-peer", action="store_true", help="leave the LiteLLM peer out (never in --quick)"
    )
    parser.add_argument(
        "--peer-venv",
        type=Path,
        default=default_peer_venv(),
        help=f"virtual environment of the peer, made once and reused (default {default_peer_venv()})",
    )
    parser.add_argument(
        "--peer-spec", default=LITELLM_SPEC, help=f"pip requirement of the peer ({LITELLM_SPEC})"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables as Markdown (for the README)"
    )
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if 1 not in args.concurrency:
        parser.error("--concurrency must include 1 (the target is about concurrency 1)")
    return args


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    plan = make_plan(args)
    style = "markdown" if args.markdown else "rich" if sys.stdout.isatty() else "plain"
    json_path: Path = args.out / ("overhead-quick.json" if args.quick else "overhead.json")
    args.peer_venv = args.peer_venv.absolute()
    signal.signal(signal.SIGTERM, _raise_interrupt)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="nocp-bench-"))
    if args.quick or args.no_peer:
        peer = Peer(
            "skipped", "--quick" if args.quick else "--no-peer", spec=args.peer_spec, venv=str(args.peer_venv)
        )
    else:
        peer = ensure_litellm(args.peer_venv, args.peer_spec, say)
    if peer.status != "measured":
        say(f"peer LiteLLM skipped: {peer.reason}")
    peer_planned = peer.status == "measured"
    try:
        build = probe_build(tmp)
        if build.stages_left:
            say(f"warning: stages {build.stages_left} could not be switched off; 'nocp' is not a passthrough")
        with servers(tmp, build, peer) as (fake, targets):
            if peer_planned and peer.status != "measured":
                say(f"peer LiteLLM skipped: {peer.reason}")
            say(
                "started: "
                + ", ".join(f"{t.label} pid {t.server.pid} on {t.base_url}" for t in targets if t.server)
                + f", fake upstream pid {fake.pid} on {fake.url}"
            )
            idle = {t.key: memory(t.server.pid) for t in targets if t.server}
            scenarios, checks = asyncio.run(measure(targets, fake, plan, say))
            mem: dict[str, dict[str, int | None]] = {}
            for t in targets:
                if t.server is not None:
                    mem[t.key] = {"idle_VmRSS": idle[t.key]["VmRSS"], **memory(t.server.pid)}
            mem["fake_upstream"] = {"idle_VmRSS": None, **memory(fake.pid)}
            for t in targets:
                if t.server is not None:
                    stop_process(t.server.proc)  # nocp flushes its TransactionLog on SIGTERM
            translog = {
                t.key: translog_stats(tmp / f"log-{t.key}", build.log_file, t.sent)
                for t in targets
                if t.key.startswith("nocp")
            }
    except ServerStartError as exc:
        print(f"nocp bench overhead: could not start a server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nocp bench overhead: interrupted; every server it started was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    labels = {t.key: t.label for t in targets}
    labels["fake_upstream"] = "fake upstream"
    summary = summarize(scenarios, targets)
    cores = os.cpu_count() or 1
    by = {(s["mode"], s["concurrency"]): s["targets"] for s in summary}
    target_checks = []
    for mode in MODES:
        row = by[(mode, 1)]["nocp"]
        added = row["added_p50_ms"]
        by_round = row["added_p50_by_round_ms"]
        target_checks.append(
            {
                "name": f"nocp passthrough added p50 at c=1, {mode}",
                "value": added,
                "limit": ADDED_P50_LIMIT_MS,
                "unit": "ms",
                "pass": added <= ADDED_P50_LIMIT_MS,
                "note": f"per-round added p50 {min(by_round):.3f} to {max(by_round):.3f} ms "
                f"over {len(by_round)} rounds",
            }
        )
    peak = int(mem["nocp"]["VmHWM"] or 0)
    target_checks.append(
        {
            "name": "nocp passthrough peak RSS (VmHWM) after the run",
            "value": round(peak / MB, 1),
            "limit": RSS_LIMIT_BYTES // MB,
            "unit": "MB",
            "pass": peak <= RSS_LIMIT_BYTES,
        }
    )
    tl = translog.get("nocp", {})
    validity = [
        {
            "name": "nocp was a passthrough: its TransactionLog has one line per request and no stage ran",
            "pass": tl.get("log_lines") == tl.get("requests_sent") and tl.get("pipeline_ran") == 0,
            "detail": f"{tl.get('log_lines')} lines for {tl.get('requests_sent')} requests, "
            f"pipeline ran on {tl.get('pipeline_ran')}",
        }
    ]
    errors = sum(r["errors"] for s in summary for r in s["targets"].values())
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "schema": 1,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": plan.quick,
        "duration_s": round(time.perf_counter() - t_start, 1),
        "machine": {
            "cpus": cores,
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "platform": platform.platform(),
        },
        "git": git_info(),
        "loadavg_1_5_15min": {"start": load_start, "end": os.getloadavg()},
        "plan": {
            "requests_per_target": {str(c): n for c, n in plan.requests.items()},
            "block": {str(c): n for c, n in plan.blocks.items()},
            "warmup_per_target_and_mode": plan.warmup,
            "time_cap_s": plan.time_cap,
        },
        "load_generator": {
            "processes": 1,
            "description": (
                "1 process (this one), asyncio + one aiohttp ClientSession per target with up to "
                f"{max(plan.requests)} keep-alive connections; direct and proxied blocks interleaved, "
                "order rotating each round"
            ),
            "saturation": saturation_lines(summary, cores, labels),
        },
        "targets": [
            {
                "key": t.key,
                "label": t.label,
                "description": t.description,
                "url": t.base_url,
                "pid": t.server.pid if t.server else None,
                "env": t.server.env_overrides if t.server else {},
            }
            for t in targets
        ],
        "checks": checks,
        "scenarios": summary,
        "memory": mem,
        "translog": translog,
        "build": {
            "stages_on_by_default": build.stages_on,
            "passthrough_env": build.passthrough_env,
            "stages_left_in_passthrough": build.stages_left,
        },
        "peer": peer.as_dict(),
        "targets_check": target_checks,
        "validity_checks": validity,
        "errors": errors,
        "json_path": shown(json_path),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    report(result, style=style)
    if errors:
        print(f"\n{errors} requests failed (see 'errors' per scenario)", file=sys.stderr)
        return 1
    if args.check and not all(c["pass"] for c in [*target_checks, *validity]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
