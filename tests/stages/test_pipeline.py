"""The pipeline: stages rewrite segments; a failing stage fails open and is logged."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from proxy import Pipeline, StageContext
from proxy.protocols import Prompt, Segment
from proxy.testing import FakeUpstream
from proxy.translog import SegmentRecord, TransactionLog

MESSAGES: Any = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]


async def exploding(prompt: Prompt, ctx: StageContext) -> Prompt:
    """A stage that logs a segment, then raises."""
    ctx.record.segments.append(SegmentRecord(kind="user", index=0))
    raise RuntimeError("compressor exploded")


async def shouting(prompt: Prompt, ctx: StageContext) -> Prompt:
    """A stage that upper-cases user text."""
    for i, seg in enumerate(prompt.segments):
        if seg.kind == "user":
            prompt = prompt.with_text(i, seg.text.upper())
    return prompt


async def test_failing_stage_forwards_original(fake: FakeUpstream, make_proxy: Any) -> None:
    """A stage that raises leaves the request byte-identical upstream and the log records why."""
    proxy = await make_proxy(stages=[exploding])
    direct_body = None
    async with openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        direct_body = fake.requests[-1].body
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        reply = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert fake.requests[-1].body == direct_body
    (line,) = await proxy.log_lines(1)
    assert line["fail_open"] == [{"stage": "exploding", "reason": "RuntimeError: compressor exploded"}]
    assert line["segments"] == []
    assert line["outcome"] == "ok"


async def test_changing_stage_reaches_upstream(fake: FakeUpstream, make_proxy: Any) -> None:
    """A stage's change is written back in place and everything else is kept."""
    proxy = await make_proxy(stages=[shouting])
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=0.3, seed=7)
    sent = fake.requests[-1].json()
    assert sent["messages"] == [MESSAGES[0], {"role": "user", "content": "HELLO THERE"}]
    assert sent["temperature"] == 0.3 and sent["seed"] == 7


async def test_stage_timeout_fails_open() -> None:
    """A stage that overruns its budget is abandoned and the prompt it received goes on."""

    async def slow(prompt: Prompt, ctx: StageContext) -> Prompt:
        await asyncio.sleep(5)
        return prompt.with_text(0, "changed")

    prompt = Prompt(segments=(Segment(kind="user", index=0, path=("messages", 0, "content"), text="orig"),))
    ctx = StageContext(model="gpt-4o", protocol="openai", record=TransactionLog())
    out = await Pipeline([slow, shouting], stage_timeout_s=0.05).run(prompt, ctx)
    assert out.segments[0].text == "ORIG"
    assert ctx.record.fail_open[0].stage == "slow" and ctx.record.fail_open[0].reason == "timeout"


@pytest.mark.parametrize("bad", [None, "text", Prompt(segments=())])
async def test_stage_returning_wrong_shape_fails_open(bad: Any) -> None:
    """A stage returning something other than a same-shaped Prompt is discarded."""

    async def wrong(prompt: Prompt, ctx: StageContext) -> Any:
        return bad

    prompt = Prompt(segments=(Segment(kind="user", index=0, path=("messages", 0, "content"), text="orig"),))
    ctx = StageContext(model="gpt-4o", protocol="openai", record=TransactionLog())
    assert await Pipeline([wrong]).run(prompt, ctx) == prompt
    assert ctx.record.fail_open[0].stage == "wrong"


async def test_rollup_replaces_turns_with_summary(fake: FakeUpstream, make_proxy: Any) -> None:
    """A stage's roll-up replaces a range of messages with one summary message upstream."""

    async def rollup(prompt: Prompt, ctx: StageContext) -> Prompt:
        return prompt.with_rollup(1, 3, "Summary: the user greeted twice.")

    proxy = await make_proxy(stages=[rollup])
    messages: Any = [*MESSAGES, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert fake.requests[-1].json()["messages"] == [
        MESSAGES[0],
        {"role": "user", "content": "Summary: the user greeted twice."},
        {"role": "user", "content": "bye"},
    ]


async def test_rollup_out_of_range_fails_open() -> None:
    """A roll-up that names turns the request does not have is discarded."""
    from proxy.protocols import Turn

    async def bad(prompt: Prompt, ctx: StageContext) -> Prompt:
        return prompt.with_rollup(0, 5, "x")

    turn = Turn(index=0, role="user", tool_result=False, digest=b"d")
    prompt = Prompt(segments=(), turns=(turn,))
    ctx = StageContext(model="gpt-4o", protocol="openai", record=TransactionLog())
    assert await Pipeline([bad]).run(prompt, ctx) == prompt
    assert ctx.record.fail_open[0].stage == "bad"
