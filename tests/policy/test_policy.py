"""The learned compression policy through the proxy's request path (Exchange with MockSend, the
tool-output stage, the retrieval tool loop, a SQLite session store): arms fixed per session and
tool (byte-identical requests), budgets applied, rewards booked with retrieval penalties, per
tenant posteriors, reproducible choices, fail open."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from compressors import CompressionConfig, tokens
from compressors.markers import content_id, marker_ids
from proxy import load_settings
from proxy.config import PolicyArmConfig, PolicyConfig, RetrievalConfig
from proxy.exchange import ClientRequest, Exchange, Services, UpstreamRequest
from proxy.pipeline import Pipeline
from proxy.policy import ArmStats, LearnedPolicy, observe, snapshot
from proxy.protocols import OpenAIChatAdapter
from proxy.sessions import RedisSessionStore, SessionStore, SQLiteSessionStore
from proxy.stages import ToolOutputStage
from proxy.testing import MemoryWriter, MockResponse, MockSend, RecordingClient
from proxy.toolloop import ToolLoop
from proxy.translog import TransactionLog
from tests.helpers import SECRET

TOOL = "nocp_retrieve"
ARMS = (
    PolicyArmConfig(name="lossless"),
    PolicyArmConfig(name="budget-2000", budget_tokens=2000),
    PolicyArmConfig(name="budget-400", budget_tokens=400),
)
KEY = "read_log/log"


def log(seed: str, lines: int = 600) -> str:
    """A service log of varied lines (a lossy cut's size follows its budget), one that matters."""
    rng = random.Random(seed)
    words = [
        f"{w}{n}" for w in ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa") for n in range(40)
    ]
    out = [
        f"2024-05-{1 + i % 28:02d}T10:{i % 60:02d}:{i % 59:02d}Z INFO worker-{i % 7} "
        + " ".join(rng.choice(words) for _ in range(10))
        + f" id={rng.randrange(10**8)}"
        for i in range(lines)
    ]
    out.append(f"2024-05-29T11:00:00Z ERROR worker-5 {seed} failed: bad checksum 0xdeadbeef")
    return "\n".join(out)


LOG = log("a")


def conversation(turns: int = 1) -> list[dict[str, Any]]:
    """An agent's conversation: a task, then per turn a read_log call and its large output."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You debug batch jobs."},
        {"role": "user", "content": "Why did the batch job fail?"},
    ]
    for k in range(turns):
        if k:
            msgs += [
                {"role": "assistant", "content": f"Looked at log {k - 1}."},
                {"role": "user", "content": "Check the next log too."},
            ]
        call = {"id": f"call_{k}", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
        msgs += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{k}", "content": LOG if k == 0 else log(f"t{k}")},
        ]
    return msgs


def answer(message: Mapping[str, Any], usage: Mapping[str, int] | None = None) -> MockResponse:
    """A chat completion answering ``message``."""
    body: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": dict(message), "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = dict(usage)
    return MockResponse(body=body)


DONE = answer({"role": "assistant", "content": "The checksum is bad."})


class Harness:
    """The proxy's request path with the policy on, in front of ``handler``."""

    def __init__(
        self,
        folder: Path,
        config: PolicyConfig,
        handler: Callable[[UpstreamRequest], MockResponse] | None = None,
        policy_store: SessionStore | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self.store = store or SQLiteSessionStore(folder / "sessions.sqlite3", ttl_s=3600)
        loop = ToolLoop(RetrievalConfig(), self.store, session_ttl_s=3600, secret=SECRET)
        self.policy = LearnedPolicy(
            config, policy_store or self.store, session_ttl_s=3600, retrieval_tool=TOOL
        )
        self.send = MockSend(handler or (lambda req: DONE))
        self.services = Services(
            settings=load_settings(env={}, overrides={}),
            pipeline=Pipeline([ToolOutputStage(CompressionConfig())], stage_timeout_s=60),
            writer=MemoryWriter(),
            features=[loop, self.policy],
        )

    async def ask(
        self, messages: list[dict[str, Any]], *, session: str = "s1", key: str = "sk-a", ok: bool = True
    ) -> TransactionLog:
        """One request; its record once the posterior update is done."""
        body = json.dumps({"model": "gpt-4o", "messages": messages}).encode()
        headers = CIMultiDict({"Authorization": f"Bearer {key}", "X-Session-Id": session})
        request = ClientRequest(
            path="/v1/chat/completions", raw_path="/v1/chat/completions", headers=headers, query={},
            match_info={}, body=body,
        )  # fmt: skip
        x = Exchange(self.services, OpenAIChatAdapter(), request, self.send, RecordingClient())
        await x.run()
        await self.policy.drain()
        assert (x.record.outcome == "ok") == ok
        assert all(f.stage == "policy" for f in x.record.fail_open)
        return x.record

    def sent_tool_output(self, k: int, call: str = "call_0") -> str:
        """The tool output ``call`` as the k-th upstream request carried it."""
        body = json.loads(self.send.requests[k].body)
        return next(m["content"] for m in body["messages"] if m.get("tool_call_id") == call)

    async def stats(self, key: str = KEY) -> dict[str, dict[str, Any]]:
        """The arms of ``key`` in the (only) tenant's posteriors, by name."""
        snap = await snapshot(self.store, self.policy.config)
        keys = [k for t in snap["tenants"] for k in t["keys"] if f"{k['tool']}/{k['content_type']}" == key]
        return {a["arm"]: a for k in keys for a in k["arms"]}

    async def aclose(self) -> None:
        await self.policy.aclose()
        await self.store.aclose()


def config(arms: Sequence[PolicyArmConfig] = ARMS, **kw: Any) -> PolicyConfig:
    """A policy config that is on, seeded."""
    return PolicyConfig(enabled=True, arms=tuple(arms), seed=kw.pop("seed", 1), **kw)


async def test_the_same_request_twice_goes_upstream_byte_identical(tmp_path: Path) -> None:
    """A retry gets the arm its session already has: the same bytes go upstream."""
    h = Harness(tmp_path, config())
    first = await h.ask(conversation())
    second = await h.ask(conversation())
    assert first.policy_arms is not None and set(first.policy_arms) == {KEY}
    assert second.policy_arms == first.policy_arms
    assert h.send.requests[0].body == h.send.requests[1].body
    stats = await h.stats()
    assert sum(a["pulls"] for a in stats.values()) == 1  # one session, one pull
    assert sum(a["observations"] for a in stats.values()) == 2  # one reward per request
    await h.aclose()


async def test_a_session_keeps_its_arm_while_new_sessions_try_the_others(tmp_path: Path) -> None:
    """Over a session's turns the first tool output keeps its bytes; three new sessions try three arms."""
    h = Harness(tmp_path, config(min_sessions=1))
    arms = []
    for n in range(3):
        one = await h.ask(conversation(1), session=f"s{n}")
        two = await h.ask(conversation(2), session=f"s{n}")
        assert one.policy_arms == two.policy_arms and one.policy_arms is not None
        arms.append(one.policy_arms[KEY])
        assert h.sent_tool_output(2 * n) == h.sent_tool_output(2 * n + 1)
    assert sorted(arms) == sorted(a.name for a in ARMS)
    await h.aclose()


async def test_each_arm_compresses_with_its_budget(tmp_path: Path) -> None:
    """Lossless sends the log as it was; a lossy arm cuts it to about its budget, a tighter one shorter."""
    sizes = {}
    for arm in ARMS:
        h = Harness(tmp_path / arm.name, config([arm]))
        record = await h.ask(conversation())
        assert record.policy_arms == {KEY: arm.name}
        sizes[arm.name] = tokens.count(h.sent_tool_output(0), "gpt-4o")
        await h.aclose()
    assert sizes["lossless"] == tokens.count(LOG, "gpt-4o")
    assert sizes["budget-400"] < sizes["budget-2000"] < sizes["lossless"]
    assert sizes["budget-400"] <= 400 * 1.5 and sizes["budget-2000"] <= 2000 * 1.5


async def test_the_reward_is_the_saving_without_retrievals(tmp_path: Path) -> None:
    """A request without retrieval rewards its arm with exactly the tokens its cut saved."""
    h = Harness(tmp_path, config([ARMS[2]]))
    record = await h.ask(conversation())
    (seg,) = [s for s in record.segments if s.tool == "read_log"]
    stats = (await h.stats())["budget-400"]
    assert stats["observations"] == 1
    assert stats["mean_reward_tokens"] == seg.tokens_before - seg.tokens_after > 0
    await h.aclose()


async def test_a_retrieval_costs_the_penalty_the_round_and_the_answer_on_later_turns(tmp_path: Path) -> None:
    """A retrieved cut's arm pays the penalty and the round's tokens, then the answer resent later."""
    calls = 0

    def upstream(req: UpstreamRequest) -> MockResponse:
        nonlocal calls
        calls += 1
        body = json.loads(req.body)
        refs = [
            r for m in body["messages"] if isinstance(m.get("content"), str) for r in marker_ids(m["content"])
        ]
        if calls == 1:  # the model retrieves the cut
            args = json.dumps({"id": refs[0]})
            call = {"id": "r1", "type": "function", "function": {"name": TOOL, "arguments": args}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return answer(message, {"prompt_tokens": 100, "completion_tokens": 10})
        return answer(
            {"role": "assistant", "content": "Bad checksum."}, {"prompt_tokens": 300, "completion_tokens": 5}
        )

    h = Harness(tmp_path, config([ARMS[2]], retrieval_penalty_tokens=700), upstream)
    first = await h.ask(conversation())
    assert [r.id for r in first.retrievals] == [content_id(LOG, SECRET)] and first.retrieval_rounds == 1
    (seg,) = [s for s in first.segments if s.tool == "read_log"]
    saved = seg.tokens_before - seg.tokens_after
    stats = (await h.stats())["budget-400"]
    assert stats["mean_reward_tokens"] == saved - 700 - (300 + 10)  # the follow-up's prompt, the call
    later = [
        *conversation(),
        {"role": "assistant", "content": "Bad checksum."},
        {"role": "user", "content": "Fix it."},
    ]
    await h.ask(later)
    stats = (await h.stats())["budget-400"]
    second = stats["total_reward_tokens"] - (saved - 1010)
    assert second < saved - 0.9 * tokens.count(LOG, "gpt-4o")  # the answer put back costs the whole log
    await h.aclose()


def test_thompson_sampling_explores_then_settles_on_the_best_arm() -> None:
    """Untried arms come first (the least tried); once all are tried, the best arm wins the draws."""
    policy = LearnedPolicy(config(min_sessions=2), _NoStore(), session_ttl_s=1, retrieval_tool=TOOL)
    pooled = {
        "lossless": ArmStats(pulls=2),
        "budget-2000": ArmStats(pulls=1),
        "budget-400": ArmStats(pulls=2),
    }
    assert policy.choose({}, pooled, random.Random(0)) == "budget-2000"
    rng = random.Random(4)
    stats = {}
    for name, mean in (("lossless", 0.0), ("budget-2000", 900.0), ("budget-400", 600.0)):
        s = stats[name] = ArmStats(pulls=10)
        for _ in range(40):
            observe(s, mean + rng.gauss(0, 400))
    picks = [policy.choose(stats, stats, random.Random(i)) for i in range(200)]
    assert picks.count("budget-2000") > 180


async def test_posteriors_are_per_tenant(tmp_path: Path) -> None:
    """What one tenant's sessions taught is kept apart from another tenant's."""
    h = Harness(tmp_path, config(min_sessions=1))
    for n in range(3):
        await h.ask(conversation(), session=f"a{n}", key="sk-tenant-a")
    await h.ask(conversation(), session="b0", key="sk-tenant-b")
    snap = await snapshot(h.store, h.policy.config)
    pulls = sorted(
        sum(a["pulls"] for k in t["keys"] if not k["pooled"] for a in k["arms"]) for t in snap["tenants"]
    )
    assert pulls == [1, 3]
    await h.aclose()


async def test_choices_are_reproducible_under_a_seed(tmp_path: Path) -> None:
    """Two proxies with the same seed, given the same sessions, choose the same arms."""
    runs = []
    for name in ("one", "two"):
        h = Harness(tmp_path / name, config(min_sessions=1, seed=9))
        runs.append([(await h.ask(conversation(), session=f"s{n}")).policy_arms for n in range(6)])
        await h.aclose()
    assert runs[0] == runs[1]


class _NoStore:
    """A session store that is down."""

    async def get_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bytes | None]:
        raise ConnectionError("store down")

    async def touch_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bool]:
        raise ConnectionError("store down")

    async def put_blobs(self, items: Mapping[str, bytes], *, ttl_s: float) -> None:
        raise ConnectionError("store down")

    async def aclose(self) -> None:
        return None


async def test_a_store_failure_leaves_the_default_compression(tmp_path: Path) -> None:
    """With the store down, the request goes through compressed as without the policy; logged."""
    h = Harness(tmp_path, config(), policy_store=_NoStore())  # type: ignore[arg-type]
    record = await h.ask(conversation())
    assert record.policy_arms is None
    assert [f.stage for f in record.fail_open if f.stage == "policy"] == ["policy"]
    plain = Harness(tmp_path / "plain", config())
    plain.services.features = plain.services.features[:1]  # the tool loop only
    await plain.ask(conversation())
    assert h.sent_tool_output(0) == plain.sent_tool_output(0) != LOG
    await plain.aclose()


async def test_the_snapshot_is_plain_json(tmp_path: Path) -> None:
    """The dashboard's view: per tenant and tool/content type the arms, posteriors and the best arm."""
    h = Harness(tmp_path, config(min_sessions=1))
    for n in range(3):
        await h.ask(conversation(), session=f"s{n}")
    snap = json.loads(json.dumps(await snapshot(h.store, h.policy.config)))
    assert snap["enabled"] is True and [a["name"] for a in snap["arms"]] == [a.name for a in ARMS]
    ((tenant,),) = [snap["tenants"]]
    pair = next(k for k in tenant["keys"] if not k["pooled"])
    assert (pair["tool"], pair["content_type"]) == ("read_log", "log")
    assert {a["arm"] for a in pair["arms"]} == {a.name for a in ARMS}
    best = max(pair["arms"], key=lambda a: a["posterior"]["mu"])
    assert pair["best_arm"] == best["arm"] != "lossless"  # the log's cut was never retrieved
    await h.aclose()


def test_the_policy_is_off_by_default_and_runs_after_the_tool_loop(tmp_path: Path) -> None:
    """Default settings leave the policy out; ``policy.enabled`` adds it after the tool loop."""
    from proxy.server import STATE, create_app

    base: dict[str, Any] = {"log": {"dir": str(tmp_path)}, "pipeline": {"workers": 0}}
    off = create_app(load_settings(env={}, overrides=base))[STATE]
    assert off.policy is None and not any(isinstance(f, LearnedPolicy) for f in off.services.features)
    on = create_app(load_settings(env={}, overrides={**base, "policy": {"enabled": True}}))[STATE]
    kinds = [type(f) for f in on.services.features]
    assert on.policy is not None and kinds.index(LearnedPolicy) > kinds.index(ToolLoop)


async def test_a_failed_request_counts_the_session_but_measures_nothing(tmp_path: Path) -> None:
    """An upstream error leaves no reward; the session it chose an arm for still counts as a pull."""
    h = Harness(tmp_path, config([ARMS[2]]), lambda req: MockResponse(status=500, body={"error": {}}))
    record = await h.ask(conversation(), ok=False)
    assert record.policy_arms == {KEY: "budget-400"}
    stats = (await h.stats())["budget-400"]
    assert (stats["pulls"], stats["observations"]) == (1, 0)
    await h.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_replicas_sharing_a_store_share_arms_and_posteriors(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """A session's later turn served by another replica keeps its arm; both see one posterior."""
    if backend == "redis":
        url = request.getfixturevalue("redis_proc").url
        stores: list[SessionStore | None] = [RedisSessionStore(url, ttl_s=3600) for _ in range(2)]
    else:
        stores = [None, None]  # two processes on the same SQLite file
    a = Harness(tmp_path, config(min_sessions=1), store=stores[0])
    b = Harness(tmp_path, config(min_sessions=1), store=stores[1])
    first = await a.ask(conversation(1))
    second = await b.ask(conversation(2))
    assert second.policy_arms == first.policy_arms is not None
    assert a.sent_tool_output(0) == b.sent_tool_output(0)
    stats = await b.stats()
    assert sum(s["pulls"] for s in stats.values()) == 1
    assert sum(s["observations"] for s in stats.values()) == 2
    await a.aclose()
    await b.aclose()


async def test_the_stage_applies_each_chosen_config_and_reports_the_result() -> None:
    """The tool-output stage compresses an output the chooser decides with the config it gives,
    the others with its own, and reports each decided output's result."""
    from proxy.pipeline import StageContext

    class Chooser:
        def __init__(self) -> None:
            self.seen: dict[int, int] = {}

        async def configs(
            self, outputs: Sequence[tuple[int, str | None, str]], base: CompressionConfig
        ) -> dict[int, tuple[str, CompressionConfig]]:
            tight = CompressionConfig(budget_tokens=300)
            return {pos: ("tight", tight) for pos, tool, _ in outputs if tool == "read_log" and pos % 2}

        def compressed(self, position: int, result: Any) -> None:
            self.seen[position] = result.tokens_after

    adapter = OpenAIChatAdapter()
    body = {"model": "gpt-4o", "messages": conversation(2)}
    prompt = adapter.prompt(body)
    chooser = Chooser()
    ctx = StageContext(model="gpt-4o", protocol="openai", record=TransactionLog(), arms=chooser)
    after = await ToolOutputStage(CompressionConfig(budget_tokens=2000))(prompt, ctx)
    outputs = [i for i, s in enumerate(prompt.segments) if s.kind == "tool_output"]
    sizes = {i: tokens.count(after.segments[i].text, "gpt-4o") for i in outputs}
    decided = [i for i in outputs if i % 2]
    assert decided and set(chooser.seen) == set(decided)
    for i in outputs:
        assert (sizes[i] <= 300 * 1.5) == (i in decided)
        assert (chooser.seen.get(i) == sizes[i]) == (i in decided)
