"""Run scenarios twice, baseline and through nocp, and measure what the provider bills.

Layout, all on 127.0.0.1::

    this process: client ──────────────────────────────> FakeUpstream "baseline"
                  client ──> nocp serve (subprocess) ──> FakeUpstream "nocp"

- The two fake providers run in this process (:class:`proxy.testing.FakeUpstream`): each
  request is answered with the recorded assistant turn (``Replay``), and its ``usage_log``
  gives the tokens billed (prompt, cached by the OpenAI-style prefix-cache simulation,
  completion) without parsing anything. Two instances, so the baseline's prompts never warm
  nocp's cache or the other way round; both are reset between scenarios.
- nocp runs as ``python -m proxy.cli serve``, the way it is deployed (a fresh process for
  each protocol): its own process and event loop, its own core for the log writer's token counting, the stages
  :func:`proxy.server.default_stages` builds from the settings (default settings, or
  ``--config``), its SQLite session store in a temporary folder. Its TransactionLog is read
  after SIGTERM (which flushes it) for what only nocp knows: raw vs sent tokens, compression
  overhead (summarizer) tokens, fail-opens, its own cost estimate.
- Requests go out one at a time (a conversation is sequential), each to both paths with the
  same body bytes, alternating which path goes first, so machine noise hits both alike.
- Each scenario can be replayed through several protocols (:mod:`proxy.bench.protocols`): Chat
  Completions, Responses, and Anthropic Messages with and without the client's own cache
  breakpoints; each protocol's replay of a scenario is a row of its own (``name@protocol``).
  nocp gets a config with two upstreams, the OpenAI-shaped one (``/v1``) and an Anthropic one
  (the same fake's root). Anthropic requests are billed with their cache writes (5-minute at
  1.25x, 1-hour at 2x the input price) and reads at the cached price.

Fidelity: for request k, the hard tokens (:func:`compressors.hardtokens.hard_tokens`) that
occur in the tool outputs of its prompt *and* in any later assistant turn (text or tool-call
arguments) are what the agent goes on to use; the share of them still present anywhere in
what nocp sent upstream is the recall. Summed over requests (micro-average).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from compressors import tokens
from compressors.hardtokens import hard_tokens
from proxy.bench.criteria import Criterion, Fidelity, Totals, evaluate
from proxy.bench.protocols import (
    CLIENT_KEY,
    DEFAULT_ANTHROPIC_MODEL,
    PROTOCOLS,
    Protocol,
    called_tools,
    leaf_text,
    sent_view,
)
from proxy.bench.scenarios import Conversation, Message, Scenario, seed_scenarios
from proxy.pricing import Price, PriceTable
from proxy.stages.observations import observation
from proxy.stats import percentile

if TYPE_CHECKING:
    from proxy.config import Settings
    from proxy.testing import Answer, FakeUpstream

__all__ = [
    "CLIENT_KEY",
    "DEFAULT_ANTHROPIC_MODEL",
    "LONG_TURNS",
    "ConversationTotals",
    "NocpProcess",
    "ScenarioResult",
    "SuiteRun",
    "message_text",
    "percentile",
    "run_suite",
]

LONG_TURNS = 30  # conversations with at least this many requests are reported one by one
_CALL_TOKENS = 30  # output tokens of one retrieval call (name, id, query)


def message_text(msg: Mapping[str, Any]) -> str:
    """Every text of a chat message: content (string or parts) and tool-call names/arguments."""
    parts: list[str] = []
    content = msg.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            parts.append(str(fn.get("name", "")))
            parts.append(str(fn.get("arguments", "")))
    return "\n".join(parts)


class _HardTokenCache:
    """Hard tokens by text digest: the same message recurs in every later request."""

    def __init__(self) -> None:
        self._cache: dict[bytes, frozenset[str]] = {}

    def __call__(self, text: str) -> frozenset[str]:
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = frozenset(hard_tokens(text))
        return found


# ------------------------------------------------------------------------------ nocp process


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NocpProcess:
    """``python -m proxy.cli serve`` on a free loopback port; stopped by PID."""

    def __init__(
        self, upstream: str, folder: Path, config: Path | None = None, anthropic_upstream: str | None = None
    ) -> None:
        self.upstream = upstream
        self.anthropic_upstream = anthropic_upstream
        self.folder = folder
        self.config = config
        self.log_dir = folder / "nocp-log"
        self.output = folder / "nocp-serve.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _config_file(self) -> Path:
        """The config nocp runs with: ``config`` (if any) with its upstreams replaced by the
        fake's OpenAI base URL (``default``) and Anthropic root (``anthropic``), and structured
        answers in TOON for every model (``output.toon_models: ["*"]``) unless it sets ``output``."""
        raw: dict[str, Any] = {}
        if self.config is not None:
            import msgspec

            loaded = msgspec.yaml.decode(self.config.read_bytes())
            raw = dict(loaded) if isinstance(loaded, dict) else {}
        raw["upstreams"] = [
            {"name": "default", "base_url": self.upstream, "protocol": "openai", "models": ["*"]},
            {
                "name": "anthropic",
                "base_url": self.anthropic_upstream,
                "protocol": "anthropic",
                "models": ["*"],
            },
        ]
        raw.setdefault("output", {"toon_models": ["*"]})  # structured answers in TOON
        path = self.folder / "nocp-bench-config.yaml"
        path.write_text(json.dumps(raw, indent=2), "utf-8")  # JSON is YAML
        return path

    def _spawn(self) -> None:
        self.port = _free_port()
        argv = [sys.executable, "-m", "proxy.cli", "serve"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-dir", str(self.log_dir)]
        if self.anthropic_upstream is not None:
            argv += ["--config", str(self._config_file())]
        else:
            argv += ["--upstream", self.upstream]
            if self.config is not None:
                argv += ["--config", str(self.config)]
        env = {k: val for k, val in os.environ.items() if not k.startswith("NOCP_")}
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.output.read_text("utf-8", "replace")[-chars:]
        except OSError:
            return ""

    async def start(self, session: aiohttp.ClientSession, wait_s: float = 30.0) -> None:
        """Start and wait for ``/readyz``; a process that exits early is retried on a new port."""
        for _ in range(3):
            self._spawn()
            assert self.proc is not None
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
            await self.stop()
        raise RuntimeError(f"nocp serve did not become ready:\n{self.tail()}")

    async def stop(self) -> None:
        """SIGTERM (nocp flushes its log), SIGKILL after 10 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait, 10)

    def log_records(self) -> list[dict[str, Any]]:
        """Every TransactionLog line written (rotated files first)."""
        files = sorted(self.log_dir.glob("transactions.jsonl*"), key=lambda p: p.name, reverse=True)
        out: list[dict[str, Any]] = []
        for path in files:
            for line in path.read_text("utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


# ------------------------------------------------------------------------------ results


@dataclass(slots=True)
class ConversationTotals:
    """One conversation's requests as billed on both paths."""

    id: str
    turns: int
    base: Totals = field(default_factory=Totals)
    nocp: Totals = field(default_factory=Totals)


@dataclass(slots=True)
class ScenarioResult:
    """Everything measured for one scenario replayed through one protocol."""

    scenario: Scenario
    protocol: str = "chat"
    model: str = ""
    price: Price | None = None
    base: Totals = field(default_factory=Totals)
    nocp: Totals = field(default_factory=Totals)
    fidelity: Fidelity = field(default_factory=Fidelity)
    # Prefix stability of what nocp sent: did request k+1 start with request k's tools and messages?
    stability: dict[str, Any] = field(default_factory=lambda: {"checked": 0, "breaks": 0, "reasons": {}})
    base_latencies: list[float] = field(default_factory=list)
    nocp_latencies: list[float] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    criteria: list[Criterion] = field(default_factory=list)
    seconds: float = 0.0
    conversations: list[ConversationTotals] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The row's name: the scenario's, with ``@protocol`` unless chat."""
        return self.scenario.name + PROTOCOLS[self.protocol].suffix

    def session(self, index: int) -> str:
        return f"bench-{self.name}-{index}"


@dataclass(slots=True)
class SuiteRun:
    """The results of every scenario, and what the run was."""

    results: list[ScenarioResult]
    model: str
    price: Price
    stages: list[str]
    nocp_pid: int | None
    history_threshold: int | None = None  # prompt tokens above which the roll-up acts (model)
    notes: list[str] = field(default_factory=list)
    # protocol -> (model, price) of the protocols run
    protocols: dict[str, tuple[str, Price]] = field(default_factory=dict)
    auto_cache: bool = True
    cache_ttl: str = "5m"


Progress = Callable[[str, int], None]  # (scenario name, requests done in it) after each request


_WARMUP_SEED = 987_654_321


def _ignore(name: str, n: int) -> None:
    return None


def _offset(report: Progress, base: int, name: str, n: int) -> None:
    report(name, base + n)


def _add_usage(
    totals: Totals,
    price: Price,
    prompt: int,
    cached: int,
    completion: int,
    latency: float,
    written: int = 0,
    written_1h: int = 0,
) -> None:
    """Account one billed request: cached reads at the cached price, cache writes at theirs
    (``written`` tokens, ``written_1h`` of them for an hour); without caching, all at the input price."""
    totals.requests += 1
    totals.prompt_tokens += prompt
    totals.cached_tokens += cached
    totals.cache_write_tokens += written
    totals.cache_write_1h_tokens += written_1h
    totals.completion_tokens += completion
    totals.latency_s += latency
    totals.cost_usd += price.cost(prompt, cached, completion, written, written_1h)
    totals.cost_uncached_usd += price.cost(prompt, 0, completion)


async def _post(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: Mapping[str, str]
) -> tuple[int, float, bytes]:
    started = time.perf_counter()
    async with session.post(url, data=data, headers=dict(headers)) as resp:
        body = await resp.read()
        status = resp.status
    return status, time.perf_counter() - started, body


def _answer(message: Message, *, structured: bool) -> Answer:
    """The fake's answer to a request: the recorded turn; in a scenario that asks for JSON, a
    JSON text answer as its value (:class:`~proxy.testing.Structured`: the same JSON text, or
    its TOON when nocp asks for TOON)."""
    from proxy.testing import Replay, Structured

    content = message.get("content")
    if structured and isinstance(content, str) and not message.get("tool_calls"):
        try:
            return Structured(json.loads(content))
        except ValueError:
            pass
    return Replay(message)


def _output_note(item: Any) -> bool:
    """True for the instruction nocp's output side appends as the last message (TOON)."""
    content = item.get("content") if isinstance(item, dict) else None
    from proxy.output import TOON_MARKER

    return item.get("role") == "system" and isinstance(content, str) and TOON_MARKER in content


class _Replayer:
    """Sends each request of a conversation to both paths and accounts for it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_fake: FakeUpstream,
        nocp_fake: FakeUpstream,
        nocp_url: str,
        model: str,
        price: Price,
    ) -> None:
        self.session = session
        self.base_fake = base_fake
        self.nocp_fake = nocp_fake
        self.nocp_root = nocp_url
        self.base_root = base_fake.url
        self.model = model
        self.price = price
        self.hard = _HardTokenCache()
        self.flip = False

    async def conversation(
        self,
        conv: Conversation,
        result: ScenarioResult,
        session_id: str,
        progress: Progress,
        protocol: Protocol | None = None,
    ) -> None:

        proto = protocol or PROTOCOLS[result.protocol]
        model = result.model or self.model
        price = result.price or self.price
        msgs = conv.messages
        turns = conv.turns()
        own = ConversationTotals(conv.id, len(turns))
        result.conversations.append(own)
        # later[i]: hard tokens of the assistant turns at or after message i
        later: list[frozenset[str]] = [frozenset()] * (len(msgs) + 1)
        acc: frozenset[str] = frozenset()
        for i in range(len(msgs) - 1, -1, -1):
            if msgs[i].get("role") == "assistant":
                acc = acc | self.hard(message_text(msgs[i]))
            later[i] = acc
        headers = {**proto.headers, "X-Session-Id": session_id}
        tool_names = called_tools(msgs) if proto.family == "anthropic" and not conv.tools else []
        base_url, nocp_url = self.base_root + proto.path, self.nocp_root + proto.path
        previous: tuple[list[Any], list[Any]] | None = None  # (tools, items) nocp sent last time
        for k, end in enumerate(turns):
            body = proto.body(conv.body(end, model), tool_names=tool_names)
            data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
            answer = _answer(msgs[end], structured=result.scenario.structured_output)
            self.base_fake.script(answer)
            self.nocp_fake.script(answer)
            paths = [("base", base_url), ("nocp", nocp_url)]
            if self.flip:
                paths.reverse()
            self.flip = not self.flip
            outcome: dict[str, tuple[int, float, bytes]] = {}
            used: dict[str, int] = {
                "base": len(self.base_fake.usage_log),
                "nocp": len(self.nocp_fake.usage_log),
            }
            for name, url in paths:
                try:
                    outcome[name] = await _post(self.session, url, data, headers)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result.log.setdefault("client_errors", []).append(f"{name} request {k}: {exc!r}")
                    outcome[name] = (0, 0.0, b"")
            for name, fake, totals, conv_totals, lat in (
                ("base", self.base_fake, result.base, own.base, result.base_latencies),
                ("nocp", self.nocp_fake, result.nocp, own.nocp, result.nocp_latencies),
            ):
                status, seconds, answer_body = outcome[name]
                if status != 200 or len(fake.usage_log) <= used[name]:
                    totals.errors += 1
                    conv_totals.errors += 1
                    errors = result.log.setdefault("http_errors", [])
                    if status != 0 and len(errors) < 5:
                        text = answer_body[:300].decode("utf-8", "replace")
                        errors.append(f"{name} request {k} of {conv.id}: HTTP {status} {text}")
                    continue
                u = fake.usage_log[-1]
                for t in (totals, conv_totals):
                    _add_usage(
                        t,
                        price,
                        u.prompt_tokens,
                        u.cached_tokens,
                        u.completion_tokens,
                        seconds,
                        u.cache_creation_tokens,
                        u.cache_creation_1h_tokens,
                    )
                lat.append(seconds)
            # An answer left unused (the request failed before it reached the fake) must not
            # answer the next request; FakeUpstream.reset() would also clear the prefix cache.
            for fake in (self.base_fake, self.nocp_fake):
                if fake.pending:
                    fake._script.clear()
            if outcome["nocp"][0] == 200 and self.nocp_fake.requests:
                sent_body = self.nocp_fake.requests[-1].json()
                tools, sent = sent_view(proto.name, sent_body)
                sent = [m for m in sent if not _output_note(m)]  # nocp's last-message instruction
                observed = self._observations(msgs[:end])
                present = self._present(sent, chat=proto.name == "chat")
                self._fidelity(observed, present, later[end], result.fidelity)
                self._round(
                    observed,
                    present,
                    msgs[end],
                    result.fidelity,
                    remaining=len(turns) - k - 1,
                    prompt=self.nocp_fake.usage_log[-1].prompt_tokens,
                    model=model,
                    price=price,
                )
                current = (tools, sent)
                if previous is not None:
                    _stability(previous, current, result.stability)
                previous = current
            self.base_fake.requests.clear()
            self.nocp_fake.requests.clear()
            progress(result.name, k + 1)

    def _observations(self, raw: Sequence[Message]) -> list[Message]:
        """A prompt's observations: tool messages and text-mode observations (user messages
        answering an assistant's action block, :mod:`proxy.stages.observations`)."""
        return [
            m
            for i, m in enumerate(raw)
            if m.get("role") == "tool"
            or (
                m.get("role") == "user"
                and i > 0
                and raw[i - 1].get("role") == "assistant"
                and observation(message_text(raw[i - 1]), message_text(m)) is not None
            )
        ]

    def _present(self, sent: Iterable[Message], *, chat: bool) -> set[str]:
        """The hard tokens of what nocp sent."""
        present: set[str] = set()
        for m in sent:
            if isinstance(m, dict):
                present |= self.hard(message_text(m) if chat else leaf_text(m))
        return present

    def _round(
        self,
        observed: Sequence[Message],
        present: set[str],
        answer: Message,
        fid: Fidelity,
        *,
        remaining: int,
        prompt: int,
        model: str,
        price: Price,
    ) -> None:
        """Bill a retrieval round when ``answer`` uses a value of an observation in its prompt
        that nocp did not send: the round's call (about ``_CALL_TOKENS`` output tokens), its
        prompt again (cached in the provider's steps) plus the whole original fetched, and the
        call and original resent on every later turn (cached)."""
        used = self.hard(message_text(answer))
        missing = {t for m in observed for t in self.hard(message_text(m)) & used} - present
        if not missing:
            return
        fetched = sum(
            tokens.count(message_text(m), model) for m in observed if self.hard(message_text(m)) & missing
        )
        cached = prompt // 128 * 128 if prompt >= 1024 else 0
        fid.rounds += 1
        fid.round_cost_usd += price.cost(prompt + _CALL_TOKENS + fetched, cached, _CALL_TOKENS)
        carried = (_CALL_TOKENS + fetched) * remaining
        fid.round_cost_usd += price.cost(carried, carried, 0)

    def _fidelity(
        self, observed: Sequence[Message], present: set[str], later: frozenset[str], fid: Fidelity
    ) -> None:
        needed = {t for m in observed for t in self.hard(message_text(m))} & later
        if not needed:
            return
        kept = needed & present
        fid.needed += len(needed)
        fid.kept += len(kept)
        fid.requests += 1
        fid.requests_full += int(kept == needed)
        for token in sorted(needed - kept):
            if len(fid.missed_examples) >= 12:
                break
            if token not in fid.missed_examples:
                fid.missed_examples.append(token)


def _tool_names(tools: Iterable[Any]) -> list[str]:
    """Names of chat (``function.name``), Responses and Anthropic (``name``) tool definitions."""
    return [str((t.get("function") or t).get("name")) for t in tools if isinstance(t, dict)]


def _stability(
    previous: tuple[list[Any], list[Any]], current: tuple[list[Any], list[Any]], acc: dict[str, Any]
) -> None:
    """Count a request whose tools or earlier messages differ from the previous request's (what
    nocp sent): a provider's prefix cache then misses from that point on."""
    (old_tools, old_msgs), (new_tools, new_msgs) = previous, current
    acc["checked"] += 1
    reason = None
    if old_tools != new_tools:
        added = [n for n in _tool_names(new_tools) if n not in _tool_names(old_tools)]
        removed = [n for n in _tool_names(old_tools) if n not in _tool_names(new_tools)]
        what = ", ".join([*(f"+{n}" for n in added), *(f"-{n}" for n in removed)]) or "changed"
        reason = f"tool definitions changed ({what})"
    elif new_msgs[: len(old_msgs)] != old_msgs:
        i = next(
            (i for i, (a, b) in enumerate(zip(old_msgs, new_msgs, strict=False)) if a != b), len(new_msgs)
        )
        old = old_msgs[i] if i < len(old_msgs) and isinstance(old_msgs[i], dict) else {}
        role = old.get("role") or old.get("type") or "?"
        reason = f"an earlier {role} message changed"
    if reason is not None:
        acc["breaks"] += 1
        acc["reasons"][reason] = acc["reasons"].get(reason, 0) + 1


def _same_share_saving(r: Mapping[str, Any]) -> float:
    """A line's saving with the same-share baseline (lines from before it was logged: as is)."""
    saved, base, same = (
        r.get("cost_savings_usd"),
        r.get("baseline_cost_usd"),
        r.get("baseline_same_share_cost_usd"),
    )
    if saved is None or base is None:
        return 0.0
    return float(saved) - float(base) + float(same if same is not None else base)


def _log_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What nocp's own TransactionLog says about one scenario's requests."""

    def total(key: str) -> float:
        return sum(float(r.get(key) or 0) for r in records)

    methods: Counter[str] = Counter()
    rollups = 0
    for r in records:
        for seg in r.get("segments") or ():
            methods[str(seg.get("method"))] += 1
            if str(seg.get("method", "")).startswith("history_rollup"):
                rollups += 1
    fail_open = Counter(str(f.get("stage")) for r in records for f in r.get("fail_open") or ())
    overhead = [float(r.get("proxy_overhead_ms") or 0) for r in records]
    compression = [float(r.get("compression_latency_ms") or 0) for r in records]
    return {
        "lines": len(records),
        "outcomes": dict(Counter(str(r.get("outcome")) for r in records)),
        "raw_input_tokens": int(total("raw_input_tokens")),
        "optimized_input_tokens": int(total("optimized_input_tokens")),
        "compression_overhead_tokens": int(total("compression_overhead_tokens")),
        "estimated_cost_usd": round(total("estimated_cost_usd"), 8),
        "baseline_cost_usd": round(total("baseline_cost_usd"), 8),
        "cost_savings_usd": round(total("cost_savings_usd"), 8),
        # the earlier estimate (baseline cached for the same share as the sent prompt)
        "cost_savings_same_share_usd": round(sum(_same_share_saving(r) for r in records), 8),
        "baseline_cached_tokens": int(total("baseline_cached_tokens")),
        "fail_open": dict(fail_open),
        "segment_methods": dict(methods.most_common()),
        "history_rollups": rollups,
        "proxy_overhead_ms_p50": percentile(overhead, 50),
        "proxy_overhead_ms_p95": percentile(overhead, 95),
        "compression_latency_ms_p50": percentile(compression, 50),
        "compression_latency_ms_max": max(compression) if compression else None,
    }


def proxy_settings(config: Path | None) -> Settings:
    """The settings ``nocp serve`` runs with here: ``config`` (or defaults), no ``NOCP_*``
    variables (the subprocess gets none either)."""
    from proxy.config import load_settings

    env = {k: val for k, val in os.environ.items() if not k.startswith("NOCP_")}
    return load_settings(config, env=env)


def stage_names(settings: Settings) -> list[str]:
    """The stages ``nocp serve`` builds with ``settings`` (the session store connects on first use)."""
    from proxy.pipeline import stage_name
    from proxy.server import default_stages

    return [stage_name(s) for s in default_stages(settings)]


Job = tuple[str, Scenario]  # (protocol, scenario)


def _logged_ids(session: str) -> tuple[str, ...]:
    """The ids a session's lines can carry in nocp's log: as sent, or as the log keeps client
    session ids (hashed, where the TransactionLog does so)."""
    import importlib

    keep = getattr(importlib.import_module("proxy.translog"), "log_session_id", None)
    logged = keep(session) if callable(keep) else None
    return (session,) if not isinstance(logged, str) or logged == session else (session, logged)


async def run_suite(
    scenarios: Sequence[Scenario],
    *,
    model: str,
    prices: PriceTable,
    folder: Path,
    config: Path | None = None,
    progress: Progress | None = None,
    scenario_done: Callable[[ScenarioResult], None] | None = None,
    protocols: Sequence[str] = ("chat",),
    anthropic_model: str = DEFAULT_ANTHROPIC_MODEL,
    jobs: Sequence[Job] | None = None,
) -> SuiteRun:
    """Replay every scenario through both paths, once per protocol (``jobs``: exactly these
    (protocol, scenario) pairs instead); return the measurements. ``model`` is sent and priced
    for chat and Responses, ``anthropic_model`` for Messages."""
    from proxy.testing import FakeUpstream

    plan: list[Job] = (
        list(jobs) if jobs is not None else [(proto, sc) for proto in protocols for sc in scenarios]
    )
    for proto, _ in plan:
        if proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {proto!r}")
    models: dict[str, tuple[str, Price]] = {}
    for proto in dict.fromkeys(p for p, _ in plan):
        name = anthropic_model if PROTOCOLS[proto].family == "anthropic" else model
        found = prices.lookup(name)
        if found is None:
            raise ValueError(f"no price for model {name!r}; add it under pricing.models in the config")
        models[proto] = (name, found)
    price = prices.lookup(model)
    if price is None:
        raise ValueError(f"no price for model {model!r}; add it under pricing.models in the config")
    settings = proxy_settings(config)
    history = settings.history
    summarizer = (
        prices.lookup(history.summarizer_model)
        if history.summarizer_upstream and history.summarizer_model
        else None
    )
    report = progress or (lambda name, n: None)
    results: list[ScenarioResult] = []
    timeout = aiohttp.ClientTimeout(total=600)
    served = (model, anthropic_model)
    async with (
        FakeUpstream(models=served) as base_fake,
        FakeUpstream(models=served) as nocp_fake,
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=4)) as session,
    ):
        # One nocp process per protocol, so a protocol never finds the tool outputs of the one
        # before it in nocp's caches (which would flatter its latency).
        records: list[dict[str, Any]] = []
        pid: int | None = None
        warm_ups = list(seed_scenarios(("small",), seed=_WARMUP_SEED))
        for proto in models:
            proto_model, proto_price = models[proto]
            where = folder / f"nocp-{proto}"
            where.mkdir(parents=True, exist_ok=True)
            nocp = NocpProcess(nocp_fake.openai_base_url, where, config, anthropic_upstream=nocp_fake.url)
            await nocp.start(session)
            pid = nocp.pid
            try:
                replayer = _Replayer(session, base_fake, nocp_fake, nocp.url, model, price)
                # Warm-up: tokenizer tables, every compressor's code path, connection pools; with
                # conversations of another seed, so no measured tool output is in nocp's caches.
                for i, warm in enumerate(warm_ups):
                    result = ScenarioResult(warm, proto, proto_model, proto_price)
                    session_id = f"bench-warmup-{proto}-{i}"
                    await replayer.conversation(warm.conversations[0], result, session_id, _ignore)
                for sc in (sc for p, sc in plan if p == proto):
                    base_fake.reset()
                    nocp_fake.reset()
                    result = ScenarioResult(sc, proto, proto_model, proto_price)
                    started = time.perf_counter()
                    done = 0
                    for ci, conv in enumerate(sc.conversations):
                        step = functools.partial(_offset, report, done)
                        await replayer.conversation(conv, result, result.session(ci), step)
                        done += len(conv.turns())
                    result.seconds = time.perf_counter() - started
                    results.append(result)
                    if scenario_done is not None:
                        scenario_done(result)
            finally:
                await nocp.stop()
            records += nocp.log_records()
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_session[str(r.get("session_id"))].append(r)
    for result in results:
        own = [
            r
            for ci in range(len(result.scenario.conversations))
            for sid in _logged_ids(result.session(ci))
            for r in by_session.get(sid, [])
        ]
        result.log = {**result.log, **_log_stats(own)}
        # Summarizer calls are billed too: at the summarizer model's fresh-input price (the log
        # keeps only the sum of their prompt and completion tokens; see proxy.pricing).
        overhead_tokens = int(result.log["compression_overhead_tokens"])
        result.nocp.overhead_tokens = overhead_tokens
        overhead_price = summarizer or models[result.protocol][1]
        result.nocp.overhead_cost_usd = overhead_tokens * overhead_price.input / 1e6
        # Messages has no response_format: nothing structured is asked there.
        structured = result.scenario.structured_output and PROTOCOLS[result.protocol].family == "openai"
        result.criteria = evaluate(result.base, result.nocp, structured_output=structured)
    threshold = None
    if history.enabled:
        from proxy.stages.history import policy_for

        threshold = policy_for(history, model).threshold
    return SuiteRun(
        results,
        model,
        price,
        stage_names(settings),
        pid,
        threshold,
        protocols=models,
        auto_cache=settings.anthropic.auto_cache,
        cache_ttl=settings.anthropic.cache_ttl,
    )
