"""The history roll-up stage: thresholds, incremental summaries, pair integrity, cache-stable cuts."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from compressors.summary import SUMMARY_HEADER, TurnText
from proxy.config import HistoryConfig, HistoryModelConfig
from proxy.pipeline import Pipeline, StageContext
from proxy.protocols import GeminiAdapter, OpenAIChatAdapter
from proxy.sessions import SQLiteSessionStore
from proxy.stages.history import HistoryStage, context_window, policy_for
from proxy.summarizer import ExtractiveSummarizer, SummaryResult
from proxy.translog import TransactionLog
from tests.helpers import FILLER, MODEL, chat, send

OPENAI = OpenAIChatAdapter()
GEMINI = GeminiAdapter()
CONFIG = HistoryConfig(threshold_tokens=600, keep_last_messages=4, cut_step_tokens=100)


class Recording:
    """A summarizer that records what it was asked and answers extractively (or fails)."""

    name = "recording"

    def __init__(self, *, fail: Exception | None = None, delay: float = 0.0, tokens: int = 0) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.fail = fail
        self.delay = delay
        self.tokens = tokens

    async def summarize(
        self, previous: str, turns: Sequence[TurnText], *, api_key: str | None = None
    ) -> SummaryResult:
        self.calls.append((previous, [t.index for t in turns]))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        result = await ExtractiveSummarizer().summarize(previous, turns)
        return SummaryResult(result.text, prompt_tokens=self.tokens, completion_tokens=self.tokens // 2)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteSessionStore]:
    """An SQLite session store in a temporary folder."""
    s = SQLiteSessionStore(tmp_path / "sessions.sqlite3", ttl_s=3600)
    yield s
    await s.aclose()


def agent(calls: int, *, parallel: int = 1) -> list[dict[str, Any]]:
    """An agent conversation: every assistant turn calls ``parallel`` tools, then their results."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Task: find why the tests fail."},
    ]
    for k in range(calls):
        ids = [f"call_{k}_{j}" for j in range(parallel)]
        msgs.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": i,
                        "type": "function",
                        "function": {
                            "name": "bash",
                            "arguments": json.dumps({"command": f"cat f{k}_{j}.log"}),
                        },
                    }
                    for j, i in enumerate(ids)
                ],
            }
        )
        for j, i in enumerate(ids):
            msgs.append(
                {"role": "tool", "tool_call_id": i, "content": f"log {k}.{j}: status 0x{k:04x}\n{FILLER}"}
            )
    msgs.append({"role": "user", "content": "What did you find?"})
    return msgs


def summary_of(sent: list[dict[str, Any]]) -> str | None:
    for msg in sent:
        if isinstance(msg.get("content"), str) and msg["content"].startswith(SUMMARY_HEADER):
            return str(msg["content"])
    return None


def text_of(sent: list[dict[str, Any]]) -> str:
    return json.dumps(sent)


# ------------------------------------------------------------------------------ thresholds


async def test_below_threshold_is_untouched(store: SQLiteSessionStore) -> None:
    """A prompt under the threshold goes out unchanged and the session store is not touched."""
    stage = HistoryStage(CONFIG, store, Recording())
    msgs = chat(2)
    sent, record = await send(stage, msgs)
    assert sent == msgs
    assert record.segments == [] and record.fail_open == []
    assert await store.rows() == 0


async def test_threshold_crossing_rolls_up_old_turns(store: SQLiteSessionStore) -> None:
    """Over the threshold, old turns become one summary; system, first user and last N stay verbatim."""
    summarizer = Recording()
    stage = HistoryStage(CONFIG, store, summarizer)
    msgs = chat(8)
    sent, record = await send(stage, msgs)
    assert sent[:2] == msgs[:2]
    assert sent[-4:] == msgs[-4:]
    assert len(sent) == 7
    summary = sent[2]
    assert summary["role"] == "user" and summary["content"].startswith(SUMMARY_HEADER)
    assert summarizer.calls == [("", list(range(2, len(msgs) - 4)))]
    for k in range(6):  # facts of every summarized turn are still there
        assert f"/srv/app/module_{k}.py" in summary["content"]
        assert str(1000 + k) in summary["content"]
    assert "The quick brown fox" not in summary["content"]
    (seg,) = record.segments
    assert seg.kind == "history" and seg.method == "history_rollup:extractive"
    assert seg.tokens_after < seg.tokens_before
    assert record.input_compression_methods == ["history_rollup"]


async def test_threshold_from_context_window_and_overrides() -> None:
    """The threshold is 60% of the built-in context window unless tokens or a model override say so."""
    cfg = HistoryConfig()
    assert context_window("gpt-4o-2024-08-06") == 128_000
    assert context_window("models/gemini-2.5-flash") == 1_048_576
    assert context_window("my-local-model") is None
    assert policy_for(cfg, "gpt-4o").threshold == 76_800
    assert policy_for(cfg, "my-local-model").threshold == int(128_000 * 0.6)
    assert policy_for(HistoryConfig(threshold_tokens=5000), "gpt-4o").threshold == 5000
    cfg = HistoryConfig(
        threshold_tokens=5000,
        models={
            "llama-*": HistoryModelConfig(context_window=8192, threshold_fraction=0.5, keep_last_messages=2),
            "gpt-4o*": HistoryModelConfig(threshold_tokens=100, cut_step_tokens=7),
        },
    )
    llama = policy_for(cfg, "llama-3.1-8b")
    assert (llama.threshold, llama.keep_last, llama.cut_step) == (4096, 2, cfg.cut_step_tokens)
    gpt = policy_for(cfg, "gpt-4o-mini")
    assert (gpt.threshold, gpt.keep_last, gpt.cut_step) == (100, 6, 7)
    assert policy_for(cfg, "o3").threshold == 5000


# ------------------------------------------------------------------------------ incremental


async def test_incremental_rollup_never_summarizes_a_turn_twice(store: SQLiteSessionStore) -> None:
    """The next roll-up folds only newly aged turns into the old summary, which it extends."""
    summarizer = Recording()
    stage = HistoryStage(CONFIG, store, summarizer)
    first, _ = await send(stage, chat(8))
    old = summary_of(first)
    assert old is not None
    second, record = await send(stage, chat(14))
    new = summary_of(second)
    assert new is not None and new != old
    assert new.startswith(old)  # extractive: the old summary's bytes, then a new section
    (prev1, turns1), (prev2, turns2) = summarizer.calls
    assert prev1 == "" and prev2 == old
    assert max(turns1) < min(turns2)  # no turn summarized twice
    assert turns1 + turns2 == list(range(2, 2 + len(turns1) + len(turns2)))
    assert second[-4:] == chat(14)[-4:]
    assert record.segments[0].method == "history_rollup:extractive"
    for k in range(12):
        assert f"/srv/app/module_{k}.py" in new


async def test_cut_is_reused_until_a_step_has_aged(store: SQLiteSessionStore) -> None:
    """Growing one exchange at a time, each request starts with the previous one's messages, except at
    the few cut steps, and the cut moves only once cut_step tokens have aged past it."""
    cfg = HistoryConfig(threshold_tokens=1500, keep_last_messages=4, cut_step_tokens=500)
    summarizer = Recording()
    stage = HistoryStage(cfg, store, summarizer)
    prev: list[dict[str, Any]] | None = None
    cuts = stable = 0
    for pairs in range(3, 25):
        sent, record = await send(stage, chat(pairs))
        new_cut = any(s.method.startswith("history_rollup:") for s in record.segments)
        if prev is not None:
            if new_cut:
                cuts += 1
            else:
                assert sent[: len(prev)] == prev
                stable += 1
        prev = sent
    assert cuts == len(summarizer.calls) >= 2
    assert stable > 2 * cuts
    for _, turns in summarizer.calls:  # every step aged at least cut_step tokens (~90 tokens a turn)
        assert len(turns) >= 5


async def test_cut_step_zero_still_waits_for_the_threshold(store: SQLiteSessionStore) -> None:
    """With no minimum step, a roll-up happens only when the prompt is over the threshold again."""
    cfg = HistoryConfig(threshold_tokens=900, keep_last_messages=2, cut_step_tokens=0)
    summarizer = Recording()
    stage = HistoryStage(cfg, store, summarizer)
    await send(stage, chat(10))
    assert len(summarizer.calls) == 1
    sent, _ = await send(stage, chat(11))
    assert len(summarizer.calls) == 1  # back under the threshold after the first cut
    assert summary_of(sent) is not None


# ------------------------------------------------------------------------------ pairs


@pytest.mark.parametrize("keep_last", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("parallel", [1, 3])
async def test_tool_calls_and_results_are_never_split(tmp_path: Path, keep_last: int, parallel: int) -> None:
    """A roll-up never separates an assistant tool call from its tool results (OpenAI)."""
    cfg = HistoryConfig(threshold_tokens=300, keep_last_messages=keep_last, cut_step_tokens=0)
    store = SQLiteSessionStore(tmp_path / "s.db", ttl_s=60)
    try:
        stage = HistoryStage(cfg, store, Recording())
        sent, _ = await send(stage, agent(8, parallel=parallel))
    finally:
        await store.aclose()
    assert summary_of(sent) is not None
    called = {c["id"] for m in sent for c in m.get("tool_calls") or ()}
    answered = [m["tool_call_id"] for m in sent if m["role"] == "tool"]
    assert set(answered) == called  # every kept call has its results, every result its call
    i = next(i for i, m in enumerate(sent) if summary_of([m]))
    assert sent[i + 1]["role"] != "tool"
    assert len(sent) - i - 1 >= keep_last


async def test_gemini_function_call_and_response_are_never_split(store: SQLiteSessionStore) -> None:
    """Gemini contents with functionCall / functionResponse are cut only between whole pairs."""
    contents: list[dict[str, Any]] = [{"role": "user", "parts": [{"text": "Task: inspect the logs."}]}]
    for k in range(8):
        contents.append({"role": "model", "parts": [{"functionCall": {"name": "read", "args": {"n": k}}}]})
        contents.append(
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "name": "read",
                            "response": {"output": f"/var/log/app{k}.log {FILLER}"},
                        }
                    }
                ],
            }
        )
    contents.append({"role": "user", "parts": [{"text": "Which log had the error?"}]})
    body: dict[str, Any] = {
        "contents": copy.deepcopy(contents),
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
    }
    cfg = HistoryConfig(threshold_tokens=300, keep_last_messages=2, cut_step_tokens=0)
    stage = HistoryStage(cfg, store, Recording())
    before = GEMINI.prompt(body)
    record = TransactionLog(session_id="g1", protocol="gemini")
    after = await stage(before, StageContext(model="gemini-2.5-flash", protocol="gemini", record=record))
    assert after.rollup is not None
    GEMINI.apply(body, before, after)
    sent = body["contents"]
    assert sent[0] == contents[0]
    assert sent[1]["parts"][0]["text"].startswith(SUMMARY_HEADER)
    assert "/var/log/app0.log" in sent[1]["parts"][0]["text"]
    assert "read n=0" in sent[1]["parts"][0]["text"]  # the call, taken from its response
    for i, block in enumerate(sent):
        if any("functionResponse" in p for p in block["parts"]):
            assert any("functionCall" in p for p in sent[i - 1]["parts"])
    assert sent[-1] == contents[-1]


# ------------------------------------------------------------------------------ validation


async def test_diverged_history_starts_over(store: SQLiteSessionStore) -> None:
    """When the client edits a summarized message, the stored summary is not applied; a new one is made."""
    summarizer = Recording()
    stage = HistoryStage(CONFIG, store, summarizer)
    msgs = chat(8)
    first, _ = await send(stage, msgs)
    assert "/srv/app/module_1.py" in (summary_of(first) or "")
    edited = copy.deepcopy(msgs)
    edited[4]["content"] = edited[4]["content"].replace("module_1.py", "renamed_1.py")
    sent, _ = await send(stage, edited)
    summary = summary_of(sent) or ""
    assert "renamed_1.py" in summary and "/srv/app/module_1.py" not in summary
    assert len(summarizer.calls) == 2 and summarizer.calls[1][0] == ""  # started over


async def test_truncated_history_is_not_given_a_stale_summary(store: SQLiteSessionStore) -> None:
    """A history shorter than the stored cut gets no summary from the store."""
    stage = HistoryStage(CONFIG, store, Recording())
    await send(stage, chat(8))
    short = chat(2)
    sent, record = await send(stage, short)
    assert sent == short and record.segments == []


async def test_sessions_do_not_share_summaries(store: SQLiteSessionStore) -> None:
    """The same conversation under two session ids is rolled up separately."""
    summarizer = Recording()
    stage = HistoryStage(CONFIG, store, summarizer)
    await send(stage, chat(8), session="a")
    await send(stage, chat(8), session="b")
    assert len(summarizer.calls) == 2
    await send(stage, chat(8), session="a")
    assert len(summarizer.calls) == 2


# ------------------------------------------------------------------------------ fail-open


async def test_summarizer_failure_fails_open(store: SQLiteSessionStore) -> None:
    """A summarizer that raises leaves the request unsummarized and the log says why."""
    stage = HistoryStage(CONFIG, store, Recording(fail=ConnectionError("upstream down")))
    msgs = chat(8)
    sent, record = await send(stage, msgs)
    assert sent == msgs
    assert [(f.stage, f.reason) for f in record.fail_open] == [
        ("history.summarizer", "ConnectionError: upstream down")
    ]
    assert record.compression_overhead_tokens == 0
    assert await store.rows() == 0


async def test_summarizer_timeout_keeps_the_stored_cut(store: SQLiteSessionStore) -> None:
    """A summarizer that times out while advancing the cut leaves the stored summary in place."""
    stage = HistoryStage(CONFIG, store, Recording())
    first, _ = await send(stage, chat(8))
    slow = HistoryStage(msgspec.structs.replace(CONFIG, summarizer_timeout_ms=50), store, Recording(delay=1))
    sent, record = await send(slow, chat(14))
    assert [(f.stage, f.reason) for f in record.fail_open] == [("history.summarizer", "timeout")]
    assert sent[: len(first) - 4] == first[:-4]  # same cut, same summary
    assert record.segments[0].method == "history_reused"


async def test_stage_budget_outlives_the_pipeline_default(store: SQLiteSessionStore) -> None:
    """The pipeline gives the history stage its own budget, longer than the default stage timeout."""
    stage = HistoryStage(CONFIG, store, Recording(delay=0.3))
    pipeline = Pipeline([stage], stage_timeout_s=0.05)
    assert pipeline.budget(stage) >= CONFIG.summarizer_timeout_ms / 1000
    body: dict[str, Any] = {"model": MODEL, "messages": chat(8)}
    before = OPENAI.prompt(body)
    record = TransactionLog(session_id="s")
    after = await pipeline.run(before, StageContext(model=MODEL, protocol="openai", record=record))
    assert after.rollup is not None and record.fail_open == []


async def test_summarizer_tokens_are_overhead(store: SQLiteSessionStore) -> None:
    """The summarizer's prompt and completion tokens are recorded as compression overhead."""
    stage = HistoryStage(CONFIG, store, Recording(tokens=300))
    _, record = await send(stage, chat(8))
    assert record.compression_overhead_tokens == 450
    record.set_input_tokens(2000, 800)
    assert record.total_token_savings == 2000 - 800 - 450
    _, again = await send(stage, chat(8))  # a reused summary costs nothing
    assert again.compression_overhead_tokens == 0


# ------------------------------------------------------------------------------ the point of it


async def test_fact_from_message_3_is_still_sent_at_message_20(store: SQLiteSessionStore) -> None:
    """In a 20-message conversation, a fact given in message 3 is still in the prompt sent at message 20."""
    stage = HistoryStage(
        HistoryConfig(threshold_tokens=500, keep_last_messages=4, cut_step_tokens=100), store, Recording()
    )
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Hi, I need help with our deployment."}]
    msgs.append({"role": "assistant", "content": "Sure. What is the setup?"})
    msgs.append(
        {
            "role": "user",
            "content": "The deploy key is stored at /etc/nocp/keys/prod-7f3k9.pem and the "
            "service listens on port 8443 with request id 4f1c2a9e-77d0-4b8e-9a51-0c6d2e8b1f33. " + FILLER,
        }
    )
    while len(msgs) < 19:
        k = len(msgs)
        role = "assistant" if msgs[-1]["role"] == "user" else "user"
        msgs.append({"role": role, "content": f"Message {k}: nothing important here. {FILLER}"})
    msgs.append({"role": "user", "content": "Which port and which key file did I mention at the start?"})
    assert len(msgs) == 20
    sent_at = {}
    for n in range(4, 21):  # the client resends the whole conversation each turn
        if msgs[n - 1]["role"] == "user":
            sent_at[n], _ = await send(stage, msgs[:n])
    sent = sent_at[20]
    summary = summary_of(sent)
    assert summary is not None and msgs[2] not in sent  # message 3 was rolled up ...
    for fact in ("/etc/nocp/keys/prod-7f3k9.pem", "8443", "4f1c2a9e-77d0-4b8e-9a51-0c6d2e8b1f33"):
        assert fact in text_of(sent)  # ... and its facts are still sent
    assert sent[-1] == msgs[-1]


# ------------------------------------------------------------------------------ concurrency


async def test_concurrent_identical_requests_store_one_summary(store: SQLiteSessionStore) -> None:
    """Two concurrent requests of one session both roll up, one state is stored, and it is whole."""
    summarizer = Recording(delay=0.05)
    stage = HistoryStage(CONFIG, store, summarizer)
    (a, _), (b, _) = await asyncio.gather(send(stage, chat(8)), send(stage, chat(8)))
    assert len(summarizer.calls) == 2 and a == b
    assert await store.rows() == 1
    c, record = await send(stage, chat(8))
    assert record.segments[0].method == "history_reused" and c == a


async def test_concurrent_requests_of_different_lengths_stay_consistent(store: SQLiteSessionStore) -> None:
    """Concurrent requests at different points of one session each get a correct prompt, and the
    stored summary is one of theirs, whole, that the next request builds on."""
    summarizer = Recording(delay=0.05)
    stage = HistoryStage(CONFIG, store, summarizer)
    (a, _), (b, _) = await asyncio.gather(send(stage, chat(8)), send(stage, chat(9)))
    assert a[-4:] == chat(8)[-4:] and b[-4:] == chat(9)[-4:]
    assert await store.rows() == 1
    c, _ = await send(stage, chat(10))
    summary = summary_of(c) or ""
    assert summary.startswith(summary_of(a) or "?") or summary.startswith(summary_of(b) or "?")
    assert c[-4:] == chat(10)[-4:]
