"""Observation aging through the running proxy: old tool outputs become digests with a
retrievable marker, only at coarse steps and only when the cache economics say so."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import structlog

from compressors.markers import content_id
from proxy.cacheecon import decide_miss
from proxy.stages.aging import digest_of
from proxy.testing import FakeUpstream, Reply, ToolCall
from tests.helpers import SECRET, sent

TOOL = "nocp_retrieve"
AGING = {"enabled": True, "keep_last_turns": 2, "step_turns": 2, "min_tokens": 100}


def output(turn: int) -> str:
    """A tool output of about 6,000 tokens, different per turn."""
    return "\n".join(
        f"t{turn} line {i}: worker-{i % 7} processed /data/t{turn}/file_{i}.csv in {i * 3 % 97} ms"
        for i in range(300)
    )


def agent_turn(turn: int) -> list[Any]:
    """One agent step: a `cat` call and its output."""
    call = {
        "id": f"c{turn}",
        "type": "function",
        "function": {"name": "cat", "arguments": json.dumps({"f": turn})},
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{turn}", "content": output(turn)},
    ]


def aged(body: dict[str, Any]) -> list[int]:
    """Positions of the tool messages that carry an aged digest."""
    return [
        i for i, m in enumerate(body["messages"]) if m["role"] == "tool" and "aged output of" in m["content"]
    ]


def test_digest_names_the_call_the_size_and_what_it_mentions() -> None:
    """A digest says which call produced the output, its size, first and last lines and the
    hard tokens it mentions (no token that is part of another), and nothing else."""
    text = output(3)
    digest = digest_of(text, "cat", '{"f": 3}')
    assert digest.startswith('[nocp omitted: aged output of cat({"f": 3}): 300 lines; first: t3 line 0:')
    assert "last: t3 line 299" in digest and "/data/t3/file_0.csv" in digest
    assert "mentions: /data/t3/file_0.csv, /data/t3/file_1.csv" in digest  # basenames left out
    assert len(digest) < 1000


async def test_old_outputs_age_in_steps_and_stay_retrievable(fake: FakeUpstream, make_proxy: Any) -> None:
    """Outputs older than the last turns become digests only when a step is reached; between
    steps every request starts with the bytes of the one before; an aged id fetches the output."""
    proxy = await make_proxy(aging=AGING)
    messages: list[Any] = [{"role": "user", "content": "Go through the files."}]
    bodies = []
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-a", max_retries=0) as client:
        for turn in range(6):
            messages += agent_turn(turn)
            await client.chat.completions.create(model="gpt-4o", messages=messages)
            bodies.append(sent(fake, len(fake.requests) - 1))
        ref = content_id(output(0), SECRET)
        fake.script(ToolCall(TOOL, {"id": ref, "query": "line 42:"}), Reply("Line 42 is fine."))
        answer = await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert answer.choices[0].message.content == "Line 42 is fine."
    assert [aged(b) for b in bodies] == [[], [], [], [2, 4], [2, 4], [2, 4, 6, 8]]
    assert bodies[4]["messages"][: len(bodies[3]["messages"])] == bodies[3]["messages"]  # same step
    assert f"; id={ref}]" in bodies[3]["messages"][2]["content"]
    result = sent(fake, len(fake.requests) - 1)["messages"][-1]["content"]
    assert "t0 line 42: worker-0 processed /data/t0/file_42.csv" in result
    lines = await proxy.log_lines(7)
    assert (
        "aged" in lines[3]["input_compression_methods"]
        and "aged" not in lines[2]["input_compression_methods"]
    )


async def test_a_step_that_does_not_pay_is_not_taken(fake: FakeUpstream, make_proxy: Any) -> None:
    """Two small old outputs under a large prompt after them: with no later turns to save on,
    the step's cache miss costs more than it saves, so nothing ages, for the whole step."""
    proxy = await make_proxy(aging={**AGING, "horizon_turns": 0, "min_tokens": 50})

    def small(name: str) -> list[Any]:
        call = {"id": name, "type": "function", "function": {"name": "ls", "arguments": "{}"}}
        listing = "\n".join(f"{name}/file_{i}.txt" for i in range(40))
        return [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": name, "content": listing},
        ]

    messages: list[Any] = [{"role": "user", "content": "Look around."}, *small("a"), *small("b")]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-a", max_retries=0) as client:
        for turn in range(2, 4):
            messages += agent_turn(turn)
            await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert [aged(sent(fake, k)) for k in range(2)] == [[], []]
    lines = await proxy.log_lines(2)
    assert all("aged" not in line["input_compression_methods"] for line in lines)


async def test_nothing_ages_without_retrieval(fake: FakeUpstream, make_proxy: Any) -> None:
    """A digest is a lossy cut: with retrieval off (nowhere to keep originals) nothing ages."""
    proxy = await make_proxy(aging=AGING, retrieval={"enabled": False})
    messages: list[Any] = [{"role": "user", "content": "Go through the files."}]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-a", max_retries=0) as client:
        for turn in range(5):
            messages += agent_turn(turn)
            await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert all(aged(sent(fake, k)) == [] for k in range(5))


def listing(name: str, lines: int) -> list[Any]:
    """One `ls` call and its output: ``lines`` paths."""
    call = {"id": name, "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    text = "\n".join(f"{name}/dir_{i % 9}/file_{i}.txt" for i in range(lines))
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": name, "content": text},
    ]


def early_step_session() -> list[Any]:
    """Four turns: two mid-size listings, then a long user message (~18K tokens) between two
    small ones; aging their first step pays over ten later turns but not over four."""
    notes = " ".join(f"note {i} on the layout of module m{i % 50}." for i in range(1800))
    return [
        {"role": "user", "content": "Look around."},
        *listing("a", 120),
        *listing("b", 120),
        *listing("c", 5),
        {"role": "user", "content": notes},
        *listing("d", 5),
    ]


async def test_an_early_step_is_weighed_over_the_turns_the_session_has_had(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """Four turns in, a step is weighed over four more turns, not the configured cap: removing
    two mid-size outputs ahead of a long user message pays over ten turns but not over four,
    so nothing ages; the decision is logged with its horizon."""
    proxy = await make_proxy(aging={**AGING, "horizon_turns": 10, "min_tokens": 50})
    messages = early_step_session()
    with structlog.testing.capture_logs() as logs:
        async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-a", max_retries=0) as client:
            await client.chat.completions.create(model="gpt-4o", messages=messages)
    (decision,) = [e for e in logs if e["event"] == "aging_decision"]
    assert decision["horizon_turns"] == 4 and decision["age"] is False
    removed, miss = decision["removed_tokens"], decision["suffix_tokens"]
    assert decide_miss(removed=removed, miss_tokens=miss, cached=0.5, write=1.0, horizon=10).pays
    assert aged(sent(fake, 0)) == []


def text_turn(turn: int) -> list[Any]:
    """One text-mode agent step: a bash action block, its output sent back as a user message."""
    return [
        {"role": "assistant", "content": f"Batch {turn}.\n```bash\ncat /data/t{turn}.log\n```"},
        {"role": "user", "content": output(turn) + "\n(Open file: n/a)\n(Current directory: /repo)\nbash-$"},
    ]


async def test_text_mode_observations_age_like_tool_outputs(fake: FakeUpstream, make_proxy: Any) -> None:
    """A text-mode agent's old observations (user messages answering an action block) become
    digests naming the command, with a retrievable marker; the task message stays as sent."""
    proxy = await make_proxy(aging=AGING)
    task = "Go through the batches in /data and report the slow ones."
    messages: list[Any] = [{"role": "user", "content": task}]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-a", max_retries=0) as client:
        for turn in range(4):
            messages += text_turn(turn)
            await client.chat.completions.create(model="gpt-4o", messages=messages)
    body = sent(fake, 3)
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    assert users[0] == task
    assert [u.startswith("[nocp omitted: aged output of cat(cat /data/t") for u in users[1:]] == [
        True, True, False, False,
    ]  # fmt: skip
    assert f"; id={content_id(text_turn(0)[1]['content'], SECRET)}]" in users[1]
    assert "aged" in (await proxy.log_lines(4))[3]["input_compression_methods"]


@pytest.mark.parametrize(
    ("aging", "model", "expect"),
    [
        ({**AGING, "enabled": False, "models": {"gpt-4o*": {"enabled": True}}}, "gpt-4o", [2, 4, 6, 8]),
        ({**AGING, "enabled": False, "models": {"gpt-4o*": {"enabled": True}}}, "gpt-5", []),
        ({**AGING, "models": {"gpt-4o*": {"keep_last_turns": 3, "step_turns": 3}}}, "gpt-4o", [2, 4, 6]),
        ({**AGING, "keep_tools": ["ca?"]}, "gpt-4o", []),
    ],
)
async def test_aging_per_model_and_tools_kept(
    fake: FakeUpstream, make_proxy: Any, aging: dict[str, Any], model: str, expect: list[int]
) -> None:
    """`aging.models` overrides the section for matching models (on for one, off for another,
    its own steps); outputs of `aging.keep_tools` never age."""
    proxy = await make_proxy(aging=aging)
    messages: list[Any] = [{"role": "user", "content": "Go through the files."}]
    for turn in range(6):
        messages += agent_turn(turn)
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-a", max_retries=0) as client:
        await client.chat.completions.create(model=model, messages=messages)
    assert aged(sent(fake, 0)) == expect


async def test_step_decisions_are_per_tenant_and_a_retry_sends_the_same_bytes(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """Two tenants on one proxy with the same session id: A's step ages (and A's retry, streamed,
    goes up byte for byte the same), B's step does not pay and B never reads A's decision."""
    proxy = await make_proxy(aging={**AGING, "horizon_turns": 10, "min_tokens": 50})
    a_messages: list[Any] = [{"role": "user", "content": "Go through the files."}]
    for turn in range(4):
        a_messages += agent_turn(turn)
    b_messages = early_step_session()
    session = {"X-Session-Id": "shared"}
    a = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-tenant-a-0123456789", max_retries=0)
    b = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-tenant-b-0123456789", max_retries=0)
    async with a, b:
        await a.chat.completions.create(model="gpt-4o", messages=a_messages, extra_headers=session)
        stream = await a.chat.completions.create(
            model="gpt-4o", messages=a_messages, extra_headers=session, stream=True
        )
        async for _ in stream:
            pass
        await b.chat.completions.create(model="gpt-4o", messages=b_messages, extra_headers=session)
    first, retry, other = (sent(fake, k) for k in range(3))
    assert aged(first) == [2, 4] and retry["messages"] == first["messages"]
    assert aged(other) == []
