"""Per-request control, shadow mode and the holdout cohort through the running proxy, with the
real ``openai`` and ``anthropic`` SDKs and the recording fake provider: what reaches the
upstream (byte for byte), what the client gets, what the log says."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from proxy.exchange import tenant_of
from proxy.testing import FakeUpstream, Reply
from proxy.treatment import cohort_of

CHAT_MODEL = "gpt-4o"
CLAUDE = "claude-sonnet-4-5"
KEY_A = "sk-tenant-a-0123456789abcdef"
KEY_B = "sk-tenant-b-0123456789abcdef"
LOG = "\n".join(
    f"2024-05-{1 + i % 28:02d}T10:{i % 60:02d}:00Z INFO worker-{i % 7} job {i} took {i * 3 % 97} ms ok"
    for i in range(3000)
)
ROWS = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(40)], indent=2)


def chat_messages(output: str = LOG, turns: int = 1) -> list[Any]:
    """An agent's conversation: a task, then ``turns`` tool calls each with ``output``."""
    msgs: list[Any] = [{"role": "user", "content": "Why did the batch job fail?"}]
    for k in range(turns):
        call = {"id": f"call_{k}", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
        msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        msgs.append({"role": "tool", "tool_call_id": f"call_{k}", "content": f"run {k}\n{output}"})
    return msgs


def messages_conversation() -> list[Any]:
    """The same for Anthropic Messages."""
    turn: list[Any] = [{"type": "tool_use", "id": "toolu_log", "name": "read_log", "input": {}}]
    return [
        {"role": "user", "content": "Why did the batch job fail?"},
        {"role": "assistant", "content": turn},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_log", "content": LOG}]},
    ]


class Capture:
    """The bodies and headers the SDK sent (an httpx request hook)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, request: httpx.Request | httpx2.Request) -> None:
        self.bodies.append(await request.aread())


def openai_client(base: str, capture: Capture, key: str = KEY_A) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(event_hooks={"request": [capture]})
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, http_client=http)


def anthropic_client(base: str, capture: Capture) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(event_hooks={"request": [capture]})
    return anthropic.AsyncAnthropic(base_url=base, api_key=KEY_A, max_retries=0, http_client=http)


def nocp_headers_upstream(fake: FakeUpstream) -> list[str]:
    """Every X-Nocp-* header any upstream request carried."""
    return [k for r in fake.requests for k in r.headers if k.lower().startswith("x-nocp")]


async def test_bypass_sends_the_clients_bytes_and_strips_the_header(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """With X-Nocp-Bypass: 1 the upstream gets exactly the SDK's body (no cut, no retrieval
    tool) and no X-Nocp header; without it the same request is compressed; both are logged."""
    proxy = await make_proxy()
    capture = Capture()
    fake.script(Reply("checksum"), Reply("checksum"))
    async with openai_client(proxy.url, capture) as client:
        await client.chat.completions.create(
            model=CHAT_MODEL, messages=chat_messages(), extra_headers={"X-Nocp-Bypass": "1"}
        )
        await client.chat.completions.create(model=CHAT_MODEL, messages=chat_messages())
    assert fake.requests[0].body == capture.bodies[0]
    assert len(fake.requests[1].body) < len(capture.bodies[1]) / 5
    assert nocp_headers_upstream(fake) == []
    first, second = await proxy.log_lines(2)
    assert (first["bypass"], first["retrieval_offered"], first["segments"]) == (True, False, [])
    assert first["raw_input_tokens"] == first["optimized_input_tokens"] > 0
    assert (second["bypass"], second["policy"], second["cohort"]) == (False, None, None)
    assert second["optimized_input_tokens"] < second["raw_input_tokens"]


async def test_bypassed_stream_only_asks_for_usage(fake: FakeUpstream, make_proxy: Any) -> None:
    """A bypassed streamed request that did not ask for usage differs upstream only by
    stream_options.include_usage (so its billed tokens are logged); the client's stream has no
    usage chunk, as it asked."""
    proxy = await make_proxy()
    capture = Capture()
    fake.script(Reply("streamed"))
    async with openai_client(proxy.url, capture) as client:
        chunks = await client.chat.completions.create(
            model=CHAT_MODEL, messages=chat_messages(), stream=True, extra_headers={"X-Nocp-Bypass": "1"}
        )
        got = [c async for c in chunks]
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "streamed"
    assert all(c.usage is None for c in got)
    sent_body, client_body = fake.requests[0].json(), json.loads(capture.bodies[0])
    assert sent_body.pop("stream_options") == {"include_usage": True} and "stream_options" not in client_body
    assert sent_body == client_body
    (line,) = await proxy.log_lines(1)
    assert line["bypass"] is True and line["prompt_tokens"] > 0 and line["completion_tokens"] > 0


async def test_policy_header_lossless_only_and_never(fake: FakeUpstream, make_proxy: Any) -> None:
    """X-Nocp-Policy: lossless-only compacts JSON but cuts nothing (no marker, no retrieval
    tool); never sends the SDK's bytes; each line records the policy; the header never reaches
    the upstream."""
    proxy = await make_proxy()
    capture = Capture()
    fake.script(Reply("ok"), Reply("ok"), Reply("ok"))
    rows_call = {"id": "call_rows", "type": "function", "function": {"name": "rows", "arguments": "{}"}}
    msgs = [
        *chat_messages(),
        {"role": "user", "content": "And the rows?"},
        {"role": "assistant", "content": None, "tool_calls": [rows_call]},
        {"role": "tool", "tool_call_id": "call_rows", "content": ROWS},
    ]
    async with openai_client(proxy.url, capture) as client:
        for policy in ("lossless-only", "never", "auto"):
            await client.chat.completions.create(
                model=CHAT_MODEL, messages=msgs, extra_headers={"X-Nocp-Policy": policy}
            )
    lossless, never, auto = (r.json() for r in fake.requests)
    assert lossless["messages"][2]["content"] == msgs[2]["content"]  # the log: not cut
    assert len(lossless["messages"][5]["content"]) < len(ROWS) * 0.8  # the rows: compacted
    assert "nocp omitted" not in json.dumps(lossless) and "tools" not in lossless
    assert fake.requests[1].body == capture.bodies[1]
    assert len(auto["messages"][2]["content"]) < len(LOG) / 5 and "nocp omitted" in json.dumps(auto)
    assert nocp_headers_upstream(fake) == []
    lines = await proxy.log_lines(3)
    assert [line["policy"] for line in lines] == ["lossless-only", "never", "auto"]
    assert all(s["lossless"] for s in lines[0]["segments"]) and lines[0]["segments"]
    assert lines[1]["segments"] == [] and never["messages"] == msgs


@pytest.mark.parametrize(
    ("header", "value"),
    [("X-Nocp-Policy", "aggressive"), ("X-Nocp-Bypass", "maybe"), ("X-Nocp-Policy", "x" * 5000)],
)
async def test_invalid_control_header_is_a_400_in_each_protocols_shape(
    fake: FakeUpstream, make_proxy: Any, header: str, value: str
) -> None:
    """An invalid X-Nocp-* value is a 400 in OpenAI's and Anthropic's error shapes (naming the
    header, quoting at most a short piece of the value), nothing goes upstream, and the line is
    logged as a client error."""
    proxy = await make_proxy()
    capture = Capture()
    async with openai_client(proxy.url, capture) as client:
        with pytest.raises(openai.BadRequestError) as chat_err:
            await client.chat.completions.create(
                model=CHAT_MODEL, messages=chat_messages(), extra_headers={header: value}
            )
    async with anthropic_client(proxy.url, capture) as aclient:
        with pytest.raises(anthropic.BadRequestError) as msg_err:
            await aclient.messages.create(
                model=CLAUDE, max_tokens=100, messages=messages_conversation(), extra_headers={header: value}
            )
    assert chat_err.value.status_code == 400 and msg_err.value.status_code == 400
    chat_body: Any = chat_err.value.body
    assert chat_body["param"] == header and header in chat_body["message"]
    assert len(chat_body["message"]) < 200
    msg_body: Any = msg_err.value.body
    assert msg_body["type"] == "error" and msg_body["error"]["type"] == "invalid_request_error"
    assert fake.requests == []
    lines = await proxy.log_lines(2)
    assert [(line["status"], line["outcome"]) for line in lines] == [(400, "client_error")] * 2


@pytest.mark.parametrize("stream", [False, True])
async def test_shadow_mode_sends_the_original_and_logs_the_saving(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """mode: shadow: OpenAI and Anthropic requests reach the upstream as the SDK sent them (no
    retrieval tool, no cache breakpoint), the clients get the provider's answers, and each line
    says mode shadow with the prompt the stages would have sent (much smaller than the raw one)."""
    proxy = await make_proxy(mode="shadow")
    capture = Capture()
    fake.script(Reply("bad checksum"), Reply("bad checksum"))
    async with openai_client(proxy.url, capture) as client:
        opts: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
        if stream:
            chunks = await client.chat.completions.create(
                model=CHAT_MODEL, messages=chat_messages(), stream=True, **opts
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            reply = await client.chat.completions.create(model=CHAT_MODEL, messages=chat_messages())
            text = reply.choices[0].message.content or ""
    async with anthropic_client(proxy.url, capture) as aclient:
        msg = await aclient.messages.create(
            model=CLAUDE, max_tokens=100, messages=messages_conversation(), stream=False
        )
    assert text == "bad checksum" and msg.content[0].type == "text"
    assert [r.body for r in fake.requests] == capture.bodies
    lines = await proxy.log_lines(2)
    for line in lines:
        assert line["mode"] == "shadow" and line["outcome"] == "ok"
        assert line["raw_input_tokens"] == line["optimized_input_tokens"]
        assert line["shadow_input_tokens"] < line["raw_input_tokens"] / 3
        assert line["retrieval_offered"] is False and line["cache_breakpoints_added"] == 0
        assert line["segments"]  # what the stages would have done


async def test_holdout_cohorts_over_sessions_of_two_tenants(fake: FakeUpstream, make_proxy: Any) -> None:
    """experiment.holdout 0.5: every multi-turn session of two tenants keeps one cohort, the
    one the hash of experiment, tenant and session gives; control sessions reach the upstream
    byte for byte as sent, treated ones compressed; every line names the experiment."""
    proxy = await make_proxy(experiment={"name": "exp-a", "holdout": 0.5})
    sessions = [(key, f"session-{i}") for key in (KEY_A, KEY_B) for i in range(5)]
    turns = 3
    fake.script(*[Reply("ok")] * (len(sessions) * turns))
    expected: dict[str, str] = {}
    for key, sid in sessions:
        capture = Capture()
        expected_cohort = cohort_of("exp-a", 0.5, tenant_of({"Authorization": f"Bearer {key}"}, {}), sid)
        async with openai_client(proxy.url, capture, key) as client:
            for k in range(1, turns + 1):
                before = len(fake.requests)
                await client.chat.completions.create(
                    model=CHAT_MODEL, messages=chat_messages(turns=k), extra_headers={"X-Session-Id": sid}
                )
                got = fake.requests[before].body
                if expected_cohort == "control":
                    assert got == capture.bodies[-1]
                else:
                    assert len(got) < len(capture.bodies[-1]) / 3
        expected[f"{key[:12]}/{sid}"] = expected_cohort
    assert set(expected.values()) == {"control", "treated"}
    lines = await proxy.log_lines(len(sessions) * turns)
    assert len(lines) == len(sessions) * turns
    cohorts = [line["cohort"] for line in lines]
    assert cohorts == [c for c in expected.values() for _ in range(turns)]
    assert {line["experiment"] for line in lines} == {"exp-a"}
    control = [line for line in lines if line["cohort"] == "control"]
    assert all(line["raw_input_tokens"] == line["optimized_input_tokens"] for line in control)
    assert all(line["estimated_cost_usd"] is not None for line in lines)


async def test_holdout_with_anthropic_leaves_control_without_breakpoints(
    fake: FakeUpstream, make_proxy: Any
) -> None:
    """With holdout 1 (everyone control) Anthropic requests go as sent: no cache breakpoints,
    no retrieval tool, no cut; the client gets the provider's answer."""
    proxy = await make_proxy(experiment={"holdout": 1.0})
    capture = Capture()
    fake.script(Reply("fine"))
    async with anthropic_client(proxy.url, capture) as aclient:
        msg = await aclient.messages.create(model=CLAUDE, max_tokens=100, messages=messages_conversation())
    assert msg.content[0].type == "text"
    assert fake.requests[0].body == capture.bodies[0]
    (line,) = await proxy.log_lines(1)
    assert (line["cohort"], line["experiment"], line["cache_breakpoints_added"]) == ("control", "holdout", 0)
