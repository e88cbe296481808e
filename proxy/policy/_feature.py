"""The learned compression policy as a feature of the exchange (see :mod:`proxy.policy`)."""

from __future__ import annotations

import asyncio
import random
import re
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from typing import Any, Final

import msgspec
import structlog

from compressors import CompressionConfig, CompressionResult, ToolPolicy, detect, tokens
from compressors.markers import ID_CHARS
from proxy.config import PolicyArmConfig, PolicyConfig, Settings
from proxy.exchange import Exchange, FeatureRequest
from proxy.policy._posterior import ArmStats, draw, observe
from proxy.policy._state import (
    INDEX_KEY,
    MAX_TENANTS,
    TOOL_CHARS,
    KeyState,
    TenantState,
    index_decoder,
    pooled_key,
    session_key,
    state_decoder,
    state_encoder,
    tenant_key,
)
from proxy.protocols import Prompt
from proxy.sessions import SessionStore
from proxy.translog import FailOpen, retrieval_overhead_tokens

__all__ = ["LearnedPolicy", "Observation", "PolicyRequest", "arm_config"]

_log = structlog.get_logger("nocp.policy")
_ID: Final = re.compile(r"[0-9a-f]{" + str(ID_CHARS) + "}")
MAX_PENDING: Final = 1000  # posterior updates waiting for the store; past it, new ones are dropped


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """One request's reward for the arm of one ``tool/content type`` (None: nothing measured);
    ``new``: the arm was chosen in this request, so its session counts as a pull."""

    key: str
    tool: str
    content_type: str
    arm: str
    reward: float | None
    new: bool = False


def arm_config(arm: PolicyArmConfig, base: CompressionConfig) -> CompressionConfig:
    """``base`` with ``arm`` applied: its lossy budget, or lossless only."""
    if arm.budget_tokens is None:
        return msgspec.structs.replace(base, default_policy=ToolPolicy.LOSSLESS_ONLY, tool_policies={})
    return msgspec.structs.replace(base, budget_tokens=arm.budget_tokens)


class LearnedPolicy:
    """The feature: the policy config, the session store, and this process's pending updates
    (serialised: one read-modify-write of a tenant's posteriors at a time)."""

    def __init__(
        self, config: PolicyConfig, store: SessionStore, *, session_ttl_s: float, retrieval_tool: str
    ) -> None:
        self.config = config
        self.store = store
        self.session_ttl_s = session_ttl_s
        self.retrieval_tool = retrieval_tool
        self.arms = {a.name: a for a in config.arms}
        self._rng = random.Random()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._configs: dict[tuple[str, int], tuple[CompressionConfig, CompressionConfig]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, store: SessionStore) -> LearnedPolicy | None:
        """The feature when ``policy.enabled``, else None."""
        if not settings.policy.enabled:
            return None
        return cls(
            settings.policy,
            store,
            session_ttl_s=settings.sessions.ttl_s,
            retrieval_tool=settings.retrieval.tool_name,
        )

    def begin(self, x: Exchange) -> PolicyRequest | None:
        """The policy's part in one request (None without stages or a session id)."""
        if not x.services.pipeline or not x.record.session_id:
            return None
        return PolicyRequest(self, x)

    def rng(self, tenant: str, session: str, key: str) -> random.Random:
        """The randomness of one choice: reproducible under ``policy.seed``."""
        seed = self.config.seed
        return self._rng if seed is None else random.Random(f"{seed}\0{tenant}\0{session}\0{key}")

    def config_for(self, arm: str, base: CompressionConfig) -> CompressionConfig:
        """The compression config of ``arm`` on top of ``base`` (made once per pair)."""
        hit = self._configs.get((arm, id(base)))
        if hit is not None and hit[0] is base:
            return hit[1]
        config = arm_config(self.arms[arm], base)
        self._configs[(arm, id(base))] = (base, config)
        return config

    def choose(self, stats: dict[str, ArmStats], pooled: dict[str, ArmStats], rng: random.Random) -> str:
        """The arm for a new session of one tool and content type: while some arm was tried in
        fewer than ``min_sessions`` sessions of the content type (``pooled``: every tool's),
        the one tried least; then the best of one Thompson draw per arm from the pair's own
        ``stats``, with the pooled ones as a prior."""
        names = list(self.arms)
        empty = ArmStats()
        pulls = {n: pooled.get(n, empty).pulls for n in names}
        if min(pulls.values()) < self.config.min_sessions:
            least = min(pulls.values())
            return rng.choice([n for n in names if pulls[n] == least])
        draws = {n: draw(stats.get(n, empty), rng, pooled.get(n)) for n in names}
        return max(names, key=lambda n: draws[n])

    # ----------------------------------------------------------------- updates

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background (kept until done); dropped, logged, when
        :data:`MAX_PENDING` updates already wait (a slow store must not pile up tasks)."""
        if len(self._tasks) >= MAX_PENDING:
            coro.close()
            _log.warning("policy_update_dropped", pending=len(self._tasks))
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the pending updates (tests, benchmarks, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def update(self, tenant: str, observations: Sequence[Observation]) -> None:
        """Add one request's rewards to the tenant's posteriors. Never raises (logged)."""
        try:
            async with self._lock:
                await self._update(tenant, observations)
        except Exception as exc:
            _log.warning("policy_update_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _update(self, tenant: str, observations: Sequence[Observation]) -> None:
        store, ttl = self.store, self.config.ttl_s
        key = tenant_key(tenant)
        (raw,) = await store.get_blobs([key], ttl_s=ttl)
        state = state_decoder.decode(raw) if raw else TenantState(tenant=tenant)
        for obs in observations:
            for pair, tool in ((obs.key, obs.tool), (pooled_key(obs.content_type), "")):
                ks = state.keys.get(pair)
                if ks is None:
                    if len(state.keys) >= self.config.max_keys:
                        continue
                    ks = state.keys[pair] = KeyState(tool=tool, content_type=obs.content_type)
                stats = ks.arms.setdefault(obs.arm, ArmStats())
                stats.pulls += obs.new
                if obs.reward is not None:
                    observe(stats, obs.reward)
        await store.put_blobs({key: state_encoder.encode(state)}, ttl_s=ttl)
        if raw is None:
            (index,) = await store.get_blobs([INDEX_KEY], ttl_s=ttl)
            tenants = index_decoder.decode(index) if index else []
            if tenant not in tenants and len(tenants) < MAX_TENANTS:
                await store.put_blobs({INDEX_KEY: state_encoder.encode([*tenants, tenant])}, ttl_s=ttl)

    async def aclose(self) -> None:
        """Finish the pending updates."""
        await self.drain()


class PolicyRequest(FeatureRequest):
    """The policy in one request: the arms of its tool outputs (chosen once per session), what
    each saved as sent, and what retrievals of its cuts cost; the rewards go to the posteriors
    when the exchange finishes."""

    def __init__(self, app: LearnedPolicy, x: Exchange) -> None:
        self.app = app
        self.record = x.record
        self.tenant = x.tenant
        self.session = x.record.session_id or "-"
        self.model = x.model
        self.keys: dict[int, str] = {}  # segment position -> tool/content type
        self.meta: dict[str, tuple[str, str]] = {}  # tool/content type -> (tool, content type)
        self.chosen: dict[str, str] = {}  # tool/content type -> arm
        self.new: set[str] = set()  # keys whose arm this request chose
        self.results: dict[int, tuple[int, str | None]] = {}  # position -> (tokens saved, ref)
        self.refs: dict[str, str] = {}  # marker id of a cut -> its key
        self.saved: dict[str, float] = defaultdict(float)
        self.costs: dict[str, float] = defaultdict(float)

    def fail_open(self, where: str, exc: BaseException) -> None:
        """Record and log a failure of the policy; the request goes on with the defaults."""
        reason = f"{where}: {type(exc).__name__}: {exc}"[:500]
        self.record.fail_open.append(FailOpen(stage="policy", reason=reason))
        _log.warning("policy_failed_open", reason=reason)

    @property
    def arms(self) -> PolicyRequest:
        return self

    # ----------------------------------------------------------------- for the stage

    async def configs(
        self, outputs: Sequence[tuple[int, str | None, str]], base: CompressionConfig
    ) -> dict[int, tuple[str, CompressionConfig]]:
        """Per output the policy decides (a tool with policy ``auto``, large enough for a
        lossy cut): its session's arm for its tool and content type, chosen now if new."""
        try:
            await self._choose(outputs, base)
        except Exception as exc:
            self.fail_open("choosing arms", exc)
            self.keys.clear()
            self.chosen.clear()
            return {}
        return {
            pos: (arm, self.app.config_for(arm, base))
            for pos, key in self.keys.items()
            if (arm := self.chosen.get(key)) is not None
        }

    async def _choose(self, outputs: Sequence[tuple[int, str | None, str]], base: CompressionConfig) -> None:
        for pos, tool, text in outputs:
            if base.policy_for(tool) != ToolPolicy.AUTO or len(text) < base.lossy_threshold_tokens:
                continue  # no arm would cut it (a token is at least one character)
            name, ctype = (tool or "-")[:TOOL_CHARS], detect(text).value
            key = f"{name}/{ctype}"
            self.keys[pos] = key
            self.meta[key] = (name, ctype)
        if not self.keys:
            return
        app, tenant = self.app, self.tenant
        keys = sorted(self.meta)
        skeys = [session_key(tenant, self.session, k) for k in keys]
        stored = await app.store.get_blobs(skeys, ttl_s=app.session_ttl_s)
        missing = []
        for key, value in zip(keys, stored, strict=True):
            arm = value.decode() if value else None
            if arm in app.arms:
                self.chosen[key] = arm
            else:
                missing.append(key)
        if not missing:
            return
        (raw,) = await app.store.get_blobs([tenant_key(tenant)], ttl_s=app.config.ttl_s)
        state = state_decoder.decode(raw) if raw else TenantState(tenant=tenant)
        picked: dict[str, bytes] = {}
        for key in missing:
            ks = state.keys.get(key)
            if ks is None and len(state.keys) >= app.config.max_keys:
                continue  # the tenant's table is full: the default config
            ps = state.keys.get(pooled_key(self.meta[key][1]))
            arm = app.choose(ks.arms if ks else {}, ps.arms if ps else {}, app.rng(tenant, self.session, key))
            self.chosen[key] = arm
            self.new.add(key)
            picked[session_key(tenant, self.session, key)] = arm.encode()
        await app.store.put_blobs(picked, ttl_s=app.session_ttl_s)
        _log.debug("policy_arms_chosen", arms={k: self.chosen[k] for k in sorted(self.new)})

    def compressed(self, position: int, result: CompressionResult) -> None:
        """The output at ``position`` was compressed under its arm to ``result``."""
        key = self.keys.get(position)
        if key is None or key not in self.chosen:
            return
        self.results[position] = (
            result.tokens_before - result.tokens_after if result.changed else 0,
            result.ref,
        )
        if result.ref is not None:
            self.refs[result.ref] = key

    # ----------------------------------------------------------------- after the stages

    async def after_stages(self, x: Exchange, before: Prompt, after: Prompt) -> Prompt:
        """What each key's outputs saved as they go out (a cut the tool loop undid saved
        nothing), and what the answers of earlier retrievals of its cuts, put back in this
        request, add to it."""
        try:
            for pos, (saved, _) in self.results.items():
                if after.segments[pos].text != before.segments[pos].text:
                    self.saved[self.keys[pos]] += saved
            own = self.app.retrieval_tool
            for seg in after.segments:
                if seg.kind == "tool_output" and seg.tool_name == own and self.refs:
                    found = _ID.search(seg.tool_args.lower())
                    key = self.refs.get(found.group(0)) if found else None
                    if key is not None:
                        self.costs[key] += tokens.count(seg.text, self.model)
        except Exception as exc:
            self.fail_open("measuring savings", exc)
        return after

    # ----------------------------------------------------------------- finish

    def finish(self, x: Exchange) -> None:
        """The request's reward per key: tokens saved minus what retrievals of its cuts cost
        (the penalty each, and the rounds' tokens, shared by the retrievals answered in them);
        the arms go into the record, the rewards to the posteriors (in the background)."""
        if not self.chosen:
            return
        rec = self.record
        rec.policy_arms = dict(sorted(self.chosen.items()))
        # Nothing is measured when the request did not complete or the stage that applies the
        # arms failed open (what went out was not the arms' work); a new session still counts.
        measured = rec.outcome == "ok" and not any(f.stage == "tool_output" for f in rec.fail_open)
        try:
            penalty = self.app.config.retrieval_penalty_tokens
            in_rounds = [r for r in rec.retrievals if not r.deferred]
            share = (
                retrieval_overhead_tokens(x.hops, rec.retrieval_rounds) / len(in_rounds) if in_rounds else 0.0
            )
            for r in rec.retrievals:
                key = self.refs.get(r.id)
                if key is not None:
                    self.costs[key] += penalty + (0.0 if r.deferred else share)
            observations = [
                Observation(
                    key=key,
                    tool=self.meta[key][0],
                    content_type=self.meta[key][1],
                    arm=arm,
                    reward=self.saved[key] - self.costs[key] if measured else None,
                    new=key in self.new,
                )
                for key, arm in sorted(self.chosen.items())
                if measured or key in self.new
            ]
            if observations:
                self.app.spawn(self.app.update(self.tenant, observations))
        except Exception as exc:
            self.fail_open("rewards", exc)
