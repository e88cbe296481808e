"""The retrieval tool loop as users' traffic meets it: real SDK clients (openai, openai-agents,
google-genai) through the proxy to the fake provider, over several turns, retries, every stream
shape, and two tenants; nocp_retrieve never reaches a client, and no answer is empty or cut."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types

from compressors.markers import content_id
from proxy.testing import Drop, FakeUpstream, Reply, ToolCall
from tests.helpers import BATCH_LOG, HISTORY, SECRET, WEATHER, ask, long_text, read_log_turn, sent, user_turn

TOOL = "nocp_retrieve"
LOG = BATCH_LOG
REF = content_id(LOG, SECRET)
SHAPES = ["role_first", "openai"]


def conversation() -> list[Any]:
    """An agent's first request: the task, a read_log call and its (large) output."""
    return read_log_turn(LOG)


def _client(base: str, key: str = "sk-tenant-a-0123456789") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def no_leak(answer: dict[str, Any]) -> None:
    """Assert that the client saw nothing of nocp's tool and got a non-empty answer."""
    msg = answer["message"]
    assert TOOL not in json.dumps(msg)
    for chunk in answer["chunks"]:
        assert TOOL not in chunk.model_dump_json()
    assert msg.get("content") or msg.get("tool_calls"), "an empty answer"


def tool_names(body: dict[str, Any]) -> list[str]:
    """The function tools of a chat request."""
    return [t["function"]["name"] for t in body.get("tools") or ()]


@pytest.fixture(params=SHAPES)
def shape(request: pytest.FixtureRequest, fake: FakeUpstream) -> str:
    """Each stream shape real servers send (OpenAI's own; a role chunk first, as vLLM)."""
    fake.openai_stream_shape = request.param
    return str(request.param)


# ------------------------------------------------------------------------------ OpenAI SDK


@pytest.mark.parametrize("stream", [False, True])
async def test_second_turn_and_retry_are_answered(
    fake: FakeUpstream, make_proxy: Any, stream: bool, shape: str
) -> None:
    """A retrieval on turn 2 of a session, and the same request sent again, are answered by
    nocp; the cut keeps its bytes and turn 1's round is put back before the answer it led to."""
    proxy = await make_proxy()
    fake.script(
        ToolCall(TOOL, {"id": REF, "query": "ERROR"}),
        Reply("Worker 5 hit a bad checksum."),
        ToolCall(TOOL, {"id": REF, "query": "lines 1-3"}),
        Reply("The first jobs were fine."),
        ToolCall(TOOL, {"id": REF, "query": "lines 1-3"}),
        Reply("The first jobs were fine."),
    )
    messages = conversation()
    async with _client(proxy.url) as client:
        one = await ask(client, messages, stream)
        no_leak(one)
        assert one["message"]["content"] == "Worker 5 hit a bad checksum." and one["finish"] == "stop"
        messages += [one["message"], {"role": "user", "content": "And the first jobs?"}]
        two = await ask(client, messages, stream)
        again = await ask(client, messages, stream)  # an SDK retry of the same request
    for answer in (two, again):
        no_leak(answer)
        assert answer["message"]["content"] == "The first jobs were fine." and answer["finish"] == "stop"
    assert len(fake.requests) == 6
    first, round1, turn2, round2, retry = (sent(fake, k) for k in (0, 1, 2, 3, 4))
    assert turn2["messages"][3] == first["messages"][3]  # the cut, byte for byte
    assert len(turn2["messages"][3]["content"]) < 2000
    assert turn2["messages"][4:6] == round1["messages"][4:6]  # turn 1's round, put back
    assert "bad checksum 0xdeadbeef" in turn2["messages"][5]["content"]
    assert turn2["messages"][6]["content"] == "Worker 5 hit a bad checksum."
    assert tool_names(turn2) == [TOOL] and retry == turn2
    assert "lines 1-3 of 6001" in round2["messages"][-1]["content"]
    lines = await proxy.log_lines(3)
    assert [line["retrieval_rounds"] for line in lines] == [1, 1, 1]
    assert all(line["outcome"] == "ok" for line in lines)


@pytest.mark.parametrize("stream", [False, True])
async def test_query_retrieval_never_uncompresses_the_output(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """Retrieving 3 lines of a 420,000-character log adds those lines to later turns, not the log."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": REF, "query": "lines 10-12"}), Reply("Seen."), Reply("Next."))
    messages = conversation()
    async with _client(proxy.url) as client:
        one = await ask(client, messages, stream)
        messages += [one["message"], {"role": "user", "content": "Go on."}]
        await ask(client, messages, stream)
    later = fake.requests[2].body
    assert len(LOG) > 400_000 and len(later) < 8_000  # the compressed log plus 3 retrieved lines
    assert "lines 10-12 of 6001" in json.loads(later)["messages"][5]["content"]


async def test_reserved_name_is_answered_without_an_offer(fake: FakeUpstream, make_proxy: Any) -> None:
    """A model that calls nocp_retrieve when nothing was cut (no tool offered) gets an answer
    from nocp, never the client."""
    proxy = await make_proxy()
    fake.script(ToolCall(TOOL, {"id": "0123456789"}), Reply("Nothing more to see."))
    messages = [{"role": "user", "content": "Hello"}]
    async with _client(proxy.url) as client:
        answer = await ask(client, messages, False)
    no_leak(answer)
    assert answer["message"]["content"] == "Nothing more to see."
    assert "tools" not in sent(fake, 0)
    assert "Nothing is stored under id 0123456789" in sent(fake, 1)["messages"][-1]["content"]


@pytest.mark.parametrize("stream", [False, True])
async def test_more_calls_than_max_rounds_still_answer(
    fake: FakeUpstream, make_proxy: Any, stream: bool, shape: str
) -> None:
    """More retrieval calls than max_rounds: the tool is withdrawn after the last round and the
    client gets the model's real answer, never an empty message."""
    proxy = await make_proxy(retrieval={"max_rounds": 2})
    fake.script(*(ToolCall(TOOL, {"id": REF, "query": f"job {i}"}) for i in range(3)), Reply("Done looking."))
    async with _client(proxy.url) as client:
        answer = await ask(client, conversation(), stream)
    no_leak(answer)
    assert answer["message"]["content"] == "Done looking." and answer["finish"] == "stop"
    assert [TOOL in tool_names(sent(fake, k)) for k in range(4)] == [True, True, False, False]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_choice_required_is_kept(fake: FakeUpstream, make_proxy: Any, stream: bool) -> None:
    """With tool_choice required the client still gets one of its own tool calls after the rounds."""
    proxy = await make_proxy(retrieval={"max_rounds": 1})
    fake.script(
        ToolCall(TOOL, {"id": REF, "query": "ERROR"}),
        ToolCall(TOOL, {"id": REF}),
        ToolCall("get_weather", {"city": "Paris"}),
    )
    async with _client(proxy.url) as client:
        answer = await ask(client, conversation(), stream, tools=[WEATHER], tool_choice="required")
    no_leak(answer)
    assert [c["function"]["name"] for c in answer["message"]["tool_calls"]] == ["get_weather"]
    assert answer["finish"] == "tool_calls"
    last = sent(fake, 2)
    assert tool_names(last) == ["get_weather"] and last["tool_choice"] == "required"


async def test_streamed_preamble_and_answer_are_one_message(
    fake: FakeUpstream, make_proxy: Any, shape: str
) -> None:
    """Text streamed before a retrieval call is followed, in the same client stream, by the answer
    after the round: one role, one id, one finish; the next turn puts the round back."""
    proxy = await make_proxy()
    fake.script(
        Reply(
            "Let me look at the omitted rows.", tool_calls=(ToolCall(TOOL, {"id": REF, "query": "ERROR"}),)
        ),
        Reply(" Worker 5 failed on a bad checksum."),
        Reply("Restart it."),
    )
    messages = conversation()
    async with _client(proxy.url) as client:
        answer = await ask(client, messages, True)
        no_leak(answer)
        text = "Let me look at the omitted rows. Worker 5 failed on a bad checksum."
        assert answer["message"]["content"] == text and answer["finish"] == "stop"
        chunks = answer["chunks"]
        assert len({c.id for c in chunks}) == 1
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
            "stop"
        ]
        messages += [answer["message"], {"role": "user", "content": "What now?"}]
        await ask(client, messages, True)
    turn2 = sent(fake, 2)["messages"]
    assert turn2[4]["content"] == "Let me look at the omitted rows." and turn2[4]["tool_calls"]
    assert turn2[5]["role"] == "tool" and "bad checksum" in turn2[5]["content"]
    assert turn2[6] == {"role": "assistant", "content": " Worker 5 failed on a bad checksum."}
    assert turn2[7] == {"role": "user", "content": "What now?"}


@pytest.mark.parametrize("stream", [False, True])
async def test_parallel_retrieval_calls_and_mixed_calls(
    fake: FakeUpstream, make_proxy: Any, stream: bool, shape: str
) -> None:
    """Two retrieval calls in one answer are one round; beside a client call, ours is taken out,
    the client's call renumbered, and ours answered in the next request."""
    proxy = await make_proxy()
    fake.script(
        Reply(tool_calls=(ToolCall(TOOL, {"id": REF, "query": "ERROR"}), ToolCall(TOOL, {"id": REF}))),
        Reply("Both read."),
        Reply(
            tool_calls=(
                ToolCall(TOOL, {"id": REF, "query": "job 7"}),
                ToolCall("get_weather", {"city": "Oslo"}),
            )
        ),
    )
    messages = conversation()
    async with _client(proxy.url) as client:
        one = await ask(client, messages, stream, tools=[WEATHER])
        assert one["message"]["content"] == "Both read."
        messages += [one["message"], {"role": "user", "content": "Weather in Oslo?"}]
        two = await ask(client, messages, stream, tools=[WEATHER])
    for answer in (one, two):
        no_leak(answer)
    (call,) = two["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and two["finish"] == "tool_calls"
    if stream:
        deltas = [tc for c in two["chunks"] if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert {tc.index for tc in deltas} == {0}
    round1 = sent(fake, 1)["messages"]
    assert [m["role"] for m in round1[-3:]] == ["assistant", "tool", "tool"]
    lines = await proxy.log_lines(2)
    assert [r["deferred"] for r in lines[1]["retrievals"]] == [True]


async def test_two_tenants_never_share_stored_content(fake: FakeUpstream, make_proxy: Any) -> None:
    """Tenant B with A's session id asks for A's marker id: nothing stored for B; A's next request
    is what it would have been."""
    proxy = await make_proxy()
    fake.script(Reply("A done."), ToolCall(TOOL, {"id": REF}), Reply("B done."), Reply("A again."))
    headers = {"X-Session-Id": "shared-session"}
    async with _client(proxy.url) as a, _client(proxy.url, "sk-tenant-b-9876543210") as b:
        first = await a.chat.completions.create(
            model="gpt-4o", messages=conversation(), extra_headers=headers
        )
        assert first.choices[0].message.content == "A done."
        b_messages = [{"role": "user", "content": f"Show me id {REF}"}]
        answer = await b.chat.completions.create(model="gpt-4o", messages=b_messages, extra_headers=headers)
        assert answer.choices[0].message.content == "B done."
        await a.chat.completions.create(model="gpt-4o", messages=conversation(), extra_headers=headers)
    b_round = sent(fake, 2)["messages"][-1]["content"]
    assert f"Nothing is stored under id {REF}" in b_round and "0xdeadbeef" not in b_round
    assert sent(fake, 3) == sent(fake, 0)


async def test_broken_upstream_stream_is_an_error_for_the_client(fake: FakeUpstream, make_proxy: Any) -> None:
    """An upstream stream that breaks mid-answer reaches the client as an error, not a clean end."""
    proxy = await make_proxy()
    fake.script(Drop(after_chunks=3, then=Reply("one two three four five six")))
    async with _client(proxy.url) as client:
        with pytest.raises(openai.APIConnectionError):
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Count."}], stream=True
            )
            async for _ in stream:
                pass
    (line,) = await proxy.log_lines(1)
    assert line["outcome"] == "upstream_error" and "stream broke" in line["error_message"]


# ------------------------------------------------------------------------------ openai-agents


@pytest.mark.parametrize("stream", [False, True])
async def test_agents_sdk_tool_loop_over_two_turns(fake: FakeUpstream, make_proxy: Any, stream: bool) -> None:
    """The openai-agents SDK (Chat Completions model) runs its tool loop through nocp: the model
    retrieves from the cut log on both turns and the agent's final output is the real answer."""
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    proxy = await make_proxy()

    @function_tool
    def read_log() -> str:
        """Read the batch job's log."""
        return LOG

    fake.script(
        ToolCall("read_log", {}),
        Reply("Checking.", tool_calls=(ToolCall(TOOL, {"id": REF, "query": "ERROR"}),)),
        Reply(" Worker 5: bad checksum."),
        ToolCall(TOOL, {"id": REF, "query": "worker-5"}),
        Reply("It is shard 10."),
    )
    client = _client(proxy.url)
    agent = Agent(
        name="debugger",
        instructions="You debug batch jobs.",
        tools=[read_log],
        model=OpenAIChatCompletionsModel(model="gpt-4o", openai_client=client),
    )

    async def run(inputs: Any) -> Any:
        if not stream:
            return await Runner.run(agent, inputs)
        result = Runner.run_streamed(agent, inputs)
        async for _ in result.stream_events():
            pass
        return result

    one = await run("Why did the batch job fail?")
    # streamed, the preamble and the answer are one message; whole, the answer after the round
    assert one.final_output == ("Checking. Worker 5: bad checksum." if stream else " Worker 5: bad checksum.")
    two = await run([*one.to_input_list(), {"role": "user", "content": "Which shard?"}])
    assert two.final_output == "It is shard 10."
    await client.close()
    assert TOOL not in json.dumps(one.to_input_list()) + json.dumps(two.to_input_list())
    turn2 = sent(fake, 3)
    assert any(m.get("role") == "tool" and "0xdeadbeef" in m["content"] for m in turn2["messages"])
    lines = await proxy.log_lines(3)
    assert [line["retrieval_rounds"] for line in lines] == [0, 1, 1]


# ------------------------------------------------------------------------------ Gemini SDK


def gemini_contents() -> list[Any]:
    """The agent turn in Gemini's form."""
    return [
        {"role": "user", "parts": [{"text": "Why did the batch job fail?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "read_log", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "read_log", "response": {"output": LOG}}}]},
    ]


async def _gemini(client: genai.Client, contents: list[Any], stream: bool) -> str:
    if not stream:
        resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents=contents)
        return resp.text or ""
    pieces: AsyncIterator[Any] = await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=contents
    )
    return "".join([r.text or "" async for r in pieces])


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_preamble_second_turn_and_retry(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """Gemini through google-genai: a preamble before a retrieval call and the answer after the
    round reach the client as one answer; turn 2 and its retry are answered too; turns alternate."""
    proxy = await make_proxy()
    fake.script(
        Reply("Looking.", tool_calls=(ToolCall(TOOL, {"id": REF, "query": "ERROR"}),)),
        Reply(" Bad checksum."),
        ToolCall(TOOL, {"id": REF, "query": "lines 1-2"}),
        Reply("Fine at first."),
        ToolCall(TOOL, {"id": REF, "query": "lines 1-2"}),
        Reply("Fine at first."),
    )
    client = genai.Client(api_key="AIzaTESTKEY0123456789", http_options=types.HttpOptions(base_url=proxy.url))
    contents = gemini_contents()
    first = await _gemini(client, contents, stream)
    assert first == ("Looking. Bad checksum." if stream else " Bad checksum.")
    contents += [
        {"role": "model", "parts": [{"text": first}]},
        {"role": "user", "parts": [{"text": "Start?"}]},
    ]
    assert await _gemini(client, contents, stream) == "Fine at first."
    assert await _gemini(client, contents, stream) == "Fine at first."
    turn2 = sent(fake, 2)["contents"]
    roles = [c["role"] for c in turn2]
    assert all(a != b for a, b in itertools.pairwise(roles)), roles
    assert turn2[3]["parts"][-1]["functionCall"]["name"] == TOOL  # turn 1's round, put back
    assert sent(fake, 4) == sent(fake, 2)


# ------------------------------------------------------------------------------ tenants


def _pin_output(pin: int) -> str:
    """A tool output with a 3-digit PIN among lines that get cut."""
    lines = [f"2024-05-01T10:{i % 60:02d}:00Z INFO vault sync step {i} ok" for i in range(1500)]
    lines[700] = f"2024-05-01T10:40:00Z INFO vault unlocked with PIN {pin:03d}"
    return "\n".join(lines)


@pytest.mark.parametrize("mode", ["header", "user", "metadata", "derived"])
async def test_every_scope_mode_keeps_tenants_apart(fake: FakeUpstream, make_proxy: Any, mode: str) -> None:
    """Tenant B, with A's session id (header, user, metadata, or the same conversation start)
    and A's marker id in its own conversation, gets "nothing stored"; A's next request is
    exactly what it was."""
    proxy = await make_proxy()
    secret_output = _pin_output(417)
    ref = content_id(secret_output, SECRET)
    kw: dict[str, Any] = {
        "header": {"extra_headers": {"X-Session-Id": "shared"}},
        "user": {"user": "shared"},
        "metadata": {"metadata": {"session_id": "shared"}, "store": True},
        "derived": {},
    }[mode]
    a_messages = conversation()
    a_messages[3]["content"] = secret_output
    fake.script(Reply("A done."), ToolCall(TOOL, {"id": ref}), Reply("B done."), Reply("A done."))
    async with _client(proxy.url) as a, _client(proxy.url, "sk-tenant-b-9876543210") as b:
        await a.chat.completions.create(model="gpt-4o", messages=a_messages, **kw)
        b_messages = [
            *a_messages[:2],
            {"role": "user", "content": f"I saw [nocp omitted: vault lines; id={ref}] earlier; fetch it."},
        ]
        answer = await b.chat.completions.create(model="gpt-4o", messages=b_messages, **kw)
        assert answer.choices[0].message.content == "B done."
        await a.chat.completions.create(model="gpt-4o", messages=a_messages, **kw)
    b_result = sent(fake, 2)["messages"][-1]["content"]
    assert f"Nothing is stored under id {ref}" in b_result and "PIN 417" not in b_result
    assert sent(fake, 3) == sent(fake, 0)
    lines = await proxy.log_lines(3)
    assert lines[0]["session_id"] == lines[1]["session_id"]  # the same session id, other tenant
    assert lines[1]["retrievals"][0]["found"] is False


async def test_guessing_ids_finds_nothing(fake: FakeUpstream, make_proxy: Any) -> None:
    """Ids are keyed with the server secret and answered only when the conversation carries
    them: 1,000 guessed ids (every PIN's plain content hash, and the real keyed id) find nothing."""
    proxy = await make_proxy()
    a_messages = conversation()
    a_messages[3]["content"] = _pin_output(417)
    guesses = [content_id(_pin_output(pin)) for pin in range(1000)]
    real = content_id(_pin_output(417), SECRET)
    assert real not in guesses  # the unkeyed hash an attacker can compute is not the id
    calls = tuple(ToolCall(TOOL, {"id": g}) for g in [*guesses[:999], real])
    fake.script(Reply("A done."), Reply(tool_calls=calls), Reply("Nothing found."))
    async with _client(proxy.url) as a, _client(proxy.url, "sk-tenant-b-9876543210") as b:
        await a.chat.completions.create(model="gpt-4o", messages=a_messages)
        answer = await b.chat.completions.create(model="gpt-4o", messages=a_messages[:2])
    assert answer.choices[0].message.content == "Nothing found."
    results = [m["content"] for m in sent(fake, 2)["messages"] if m["role"] == "tool"]
    assert len(results) == 1000 and all("Nothing is stored" in r for r in results)
    assert not any("PIN 417" in r for r in results)


async def test_roll_up_state_is_kept_per_tenant(fake: FakeUpstream, make_proxy: Any) -> None:
    """Two tenants rolling up conversations under one session id keep separate states: B's
    roll-up does not replace A's, whose next request reuses its stored summary."""
    proxy = await make_proxy(history=HISTORY)
    base: list[Any] = [{"role": "user", "content": "Keep my invoice notes in mind."}]
    a_messages = list(base)
    b_messages = list(base)
    for k in range(12):
        a_messages += [user_turn(k), {"role": "assistant", "content": f"Noted invoice {k}."}]
        b_messages += [user_turn(k + 50), {"role": "assistant", "content": f"Noted invoice {k + 50}."}]
    question = {"role": "user", "content": "What is the total of invoice INV-4001?"}
    headers = {"X-Session-Id": "shared"}
    async with _client(proxy.url) as a, _client(proxy.url, "sk-tenant-b-9876543210") as b:
        await a.chat.completions.create(
            model="gpt-4o", messages=[*a_messages, question], extra_headers=headers
        )
        await b.chat.completions.create(
            model="gpt-4o", messages=[*b_messages, question], extra_headers=headers
        )
        await a.chat.completions.create(
            model="gpt-4o", messages=[*a_messages, question], extra_headers=headers
        )
    lines = await proxy.log_lines(3)
    methods = [[s["method"] for s in line["segments"] if s["kind"] == "history"] for line in lines]
    assert methods[0][0].startswith("history_rollup") and methods[1][0].startswith("history_rollup")
    assert methods[2] == ["history_reused"]
    assert sent(fake, 2) == sent(fake, 0)


async def test_the_secret_is_generated_once_and_private(tmp_path: Any) -> None:
    """Without a configured secret, one is generated into the log folder with mode 0600 and
    reused by the next start; a configured one wins."""
    import os
    import stat

    from proxy import load_settings
    from proxy.secret import SECRET_FILE, server_secret

    settings = load_settings(env={}, overrides={"log": {"dir": str(tmp_path / "logs")}})
    first = server_secret(settings)
    path = tmp_path / "logs" / SECRET_FILE
    assert len(first) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert server_secret(settings) == first
    configured = load_settings(
        env={"NOCP_RETRIEVAL__SECRET": "from-env"}, overrides={"log": {"dir": str(tmp_path)}}
    )
    assert server_secret(configured) == "from-env"
    assert content_id("x", "a") != content_id("x", "b") and content_id("x", "a") == content_id("x", "a")


async def test_a_tool_added_mid_session_must_pay_for_the_cache_miss(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """The session's earlier requests had no nocp tool (nothing was cut): a modest output under
    a long cached prompt is sent whole rather than cut (adding the tool would cost the whole
    prompt one cache miss); a huge one is cut and the tool added, and stays from then on."""
    proxy = await make_proxy()
    system = {"role": "system", "content": "You debug batch jobs. " + "Follow the runbook carefully. " * 5000}
    start = [system, {"role": "user", "content": "Why did the batch job fail?"}]
    call = {"id": "c1", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
    modest = long_text(1100)  # prose: cut from ~2,300 to ~1,100 tokens
    huge = LOG

    def later(output: str, n: int) -> list[Any]:
        c = {**call, "id": f"c{n}"}
        return [
            {"role": "assistant", "content": None, "tool_calls": [c]},
            {"role": "tool", "tool_call_id": f"c{n}", "content": output},
        ]

    async with _client(proxy.url) as client:
        await client.chat.completions.create(model="gpt-4o", messages=start)
        await client.chat.completions.create(model="gpt-4o", messages=[*start, *later(modest, 1)])
        await client.chat.completions.create(
            model="gpt-4o", messages=[*start, *later(modest, 1), *later(huge, 2)]
        )
    first, second, third = (sent(fake, k) for k in range(3))
    assert "tools" not in first and "tools" not in second
    assert second["messages"][3]["content"] == modest  # sent whole
    assert tool_names(third) == [TOOL] and len(third["messages"][5]["content"]) < len(huge) / 5
