"""The treatment of a request: cohorts by hash, the control headers, the policy the stages
honour, and the settings that switch them on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from compressors import CompressionConfig
from proxy.config import HistoryConfig, load_settings
from proxy.exceptions import BadRequest, ConfigError
from proxy.pipeline import Pipeline, StageContext
from proxy.protocols import OpenAIChatAdapter, Prompt
from proxy.sessions import SQLiteSessionStore
from proxy.stages import HistoryStage, ToolOutputStage
from proxy.summarizer import ExtractiveSummarizer
from proxy.translog import TransactionLog
from proxy.treatment import Treatment, cohort_of, treatment_of
from proxy.upstream import forward_headers
from tests.helpers import chat

LOG = "\n".join(
    f"2024-05-01T10:00:{i % 60:02d}Z INFO worker-{i % 7} job {i} took {i * 3 % 97} ms" for i in range(3000)
)


def test_cohort_is_stable_and_its_share_is_the_holdout() -> None:
    """The same session always gets the same cohort, and over many sessions the control share
    is the holdout (within a few standard errors)."""
    sessions = [f"s{i}" for i in range(20_000)]
    first = [cohort_of("exp", 0.1, "tenant", s) for s in sessions]
    assert first == [cohort_of("exp", 0.1, "tenant", s) for s in sessions]
    share = first.count("control") / len(sessions)
    assert abs(share - 0.1) < 0.01  # the standard error is 0.002


def test_cohort_depends_on_tenant_and_experiment() -> None:
    """The same session id of another tenant, or under another experiment name, is drawn
    afresh: about 2p(1-p) of them land in the other cohort."""
    sessions = [f"s{i}" for i in range(5000)]
    a = [cohort_of("exp", 0.5, "tenant-a", s) for s in sessions]
    b = [cohort_of("exp", 0.5, "tenant-b", s) for s in sessions]
    c = [cohort_of("exp-2", 0.5, "tenant-a", s) for s in sessions]
    for other in (b, c):
        differ = sum(x != y for x, y in zip(a, other, strict=True)) / len(sessions)
        assert 0.45 < differ < 0.55


def test_holdout_edges() -> None:
    """Holdout 0 puts nobody in control, 1 everybody."""
    assert {cohort_of("e", 0.0, "t", f"s{i}") for i in range(500)} == {"treated"}
    assert {cohort_of("e", 1.0, "t", f"s{i}") for i in range(500)} == {"control"}


def _treat(headers: dict[str, str] | list[tuple[str, str]], **raw: Any) -> tuple[Treatment, TransactionLog]:
    record = TransactionLog(session_id="sess-1")
    settings = load_settings(env={}, overrides=raw)
    return treatment_of(settings, CIMultiDict(headers), "tenant", record), record


def test_headers_make_the_treatment_and_are_logged() -> None:
    """Bypass and policy values (case and spaces aside) become the treatment and the line's
    fields; without an experiment there is no cohort."""
    t, rec = _treat({"X-Nocp-Bypass": " 1 "})
    assert (t.bypass, t.runs_stages, t.applies, rec.bypass, rec.cohort) == (True, False, False, True, None)
    t, rec = _treat({"x-nocp-policy": "Lossless-Only"})
    assert (t.policy, t.runs_stages, t.applies, rec.policy) == ("lossless-only", True, True, "lossless-only")
    t, rec = _treat({"X-Nocp-Policy": "never", "X-Nocp-Bypass": "0"})
    assert (t.runs_stages, rec.policy, rec.bypass) == (False, "never", False)
    t, rec = _treat({})
    assert (t.policy, t.applies, rec.policy, rec.mode) == ("auto", True, None, "normal")


def test_shadow_and_holdout_settings_reach_the_line() -> None:
    """mode shadow runs the stages without applying them; an experiment names the cohort."""
    t, rec = _treat({}, mode="shadow", experiment={"name": "e1", "holdout": 0.5})
    assert rec.mode == "shadow" and rec.experiment == "e1"
    assert rec.cohort == cohort_of("e1", 0.5, "tenant", "sess-1")
    assert t.applies is False and t.runs_stages is (rec.cohort == "treated")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Nocp-Bypass": "yes please"},
        {"X-Nocp-Policy": "lossy"},
        {"X-Nocp-Policy": ""},
        [("X-Nocp-Policy", "auto"), ("X-Nocp-Policy", "never")],
    ],
)
def test_invalid_headers_are_bad_requests(headers: Any) -> None:
    """Values outside the allowed ones, and a header sent twice, are 400s naming the header."""
    with pytest.raises(BadRequest) as err:
        _treat(headers)
    assert err.value.status == 400 and (err.value.param or "").startswith("X-Nocp-")


def test_control_headers_are_never_forwarded() -> None:
    """forward_headers drops X-Nocp-Bypass and X-Nocp-Policy (any case), keeps the rest."""
    headers = CIMultiDict({"x-nocp-bypass": "1", "X-NOCP-POLICY": "never", "X-Session-Id": "s", "A": "b"})
    assert sorted(forward_headers(headers)) == ["A", "X-Session-Id"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"experiment": {"holdout": 1.5}}, "experiment.holdout"),
        ({"experiment": {"holdout": -0.1}}, "experiment.holdout"),
        ({"experiment": {"name": ""}}, "experiment.name"),
        ({"mode": "dry-run"}, "mode"),
    ],
)
def test_bad_settings_are_refused(raw: dict[str, Any], message: str) -> None:
    """A holdout outside [0, 1], an empty experiment name or an unknown mode is a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        load_settings(env={}, overrides=raw)


def test_mode_and_holdout_from_the_environment() -> None:
    """NOCP_MODE and NOCP_EXPERIMENT__HOLDOUT set the mode and the holdout."""
    settings = load_settings(env={"NOCP_MODE": "shadow", "NOCP_EXPERIMENT__HOLDOUT": "0.1"})
    assert (settings.mode, settings.experiment.holdout, settings.experiment.name) == (
        "shadow",
        0.1,
        "holdout",
    )


async def _run(stages: list[Any], body: dict[str, Any], policy: Any) -> tuple[dict[str, Any], TransactionLog]:
    adapter = OpenAIChatAdapter()
    before = adapter.prompt(body)
    record = TransactionLog(session_id="s1")
    ctx = StageContext(model="gpt-4o", protocol="openai", record=record, policy=policy)
    after = await Pipeline(stages).run(before, ctx)
    adapter.apply(body, before, after)
    return body, record


class _Spy:
    name = "spy"

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, prompt: Prompt, ctx: StageContext) -> Prompt:
        self.calls += 1
        return prompt


def _tool_body(text: str) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Why did it fail?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": text},
        ],
    }


async def test_policy_never_runs_no_stage() -> None:
    """Under the policy never the pipeline calls no stage; under auto it does."""
    spy = _Spy()
    await _run([spy], _tool_body("x"), "never")
    assert spy.calls == 0
    await _run([spy], _tool_body("x"), "auto")
    assert spy.calls == 1


async def test_lossless_only_keeps_every_fact_and_auto_cuts() -> None:
    """Under lossless-only the tool-output stage makes no lossy cut (a long log stays whole);
    under auto it cuts the same log."""
    stage = ToolOutputStage(CompressionConfig())
    body, record = await _run([stage], _tool_body(LOG), "lossless-only")
    assert body["messages"][2]["content"] == LOG
    assert all(s.lossless for s in record.segments)
    body, record = await _run([stage], _tool_body(LOG), "auto")
    assert len(body["messages"][2]["content"]) < len(LOG) / 5
    assert any(not s.lossless for s in record.segments)


async def test_lossless_only_rolls_up_no_history(tmp_path: Path) -> None:
    """The history roll-up (a lossy cut) does nothing under lossless-only, and acts under auto."""
    store = SQLiteSessionStore(tmp_path / "sessions.sqlite3", ttl_s=3600)
    config = HistoryConfig(threshold_tokens=600, keep_last_messages=4, cut_step_tokens=100)
    stage = HistoryStage(config, store, ExtractiveSummarizer())
    msgs = chat(12)
    try:
        body, _ = await _run(
            [stage], {"model": "gpt-4o", "messages": [dict(m) for m in msgs]}, "lossless-only"
        )
        assert body["messages"] == msgs
        body, _ = await _run([stage], {"model": "gpt-4o", "messages": [dict(m) for m in msgs]}, "auto")
        assert len(body["messages"]) < len(msgs)
    finally:
        await store.aclose()
