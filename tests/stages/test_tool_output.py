"""The tool-output stage inside the proxy: compressed upstream, measured in the log, cache-stable."""

from __future__ import annotations

import json
from typing import Any

import openai
from google import genai
from google.genai import types

from compressors import tokens
from compressors.toon import same_value, toon_decode
from proxy.testing import FakeUpstream

ROWS = [
    {
        "id": 1000 + i,
        "name": f"user{i}",
        "email": f"user{i}@example.com",
        "active": i % 3 != 0,
        "score": i * 7 % 101,
    }
    for i in range(80)
]
PRETTY = json.dumps(ROWS, indent=2)


def _conversation(extra_turns: int = 0) -> list[Any]:
    msgs: list[Any] = [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Which users are inactive?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "list_users", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": PRETTY},
    ]
    for i in range(extra_turns):
        msgs += [
            {"role": "assistant", "content": f"answer {i}"},
            {"role": "user", "content": f"and then {i}?"},
        ]
    return msgs


async def test_tool_output_compressed_losslessly_and_logged(fake: FakeUpstream, make_proxy: Any) -> None:
    """A large pretty-printed JSON tool output goes upstream as fewer tokens that decode to the same value."""
    proxy = await make_proxy()
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=_conversation())
    sent = fake.requests[-1].json()["messages"][3]["content"]
    assert sent != PRETTY
    assert tokens.count(sent, "gpt-4o") < tokens.count(PRETTY, "gpt-4o")
    (line,) = await proxy.log_lines(1)
    (seg,) = line["segments"]
    assert seg["kind"] == "tool_output" and seg["tool"] == "list_users" and seg["lossless"] is True
    assert seg["tokens_after"] < seg["tokens_before"]
    assert line["input_compression_methods"] == [seg["method"]]
    assert line["compression_justified"] is True
    assert line["optimized_input_tokens"] == fake.usage_log[-1].prompt_tokens
    assert (
        line["raw_input_tokens"] - line["optimized_input_tokens"]
        == seg["tokens_before"] - seg["tokens_after"]
    )
    assert line["total_token_savings"] > 0 and line["input_compression_ratio"] < 1


async def test_next_turn_keeps_a_byte_identical_prefix(fake: FakeUpstream, make_proxy: Any) -> None:
    """The same tool output compresses to the same bytes on the next turn, so the prompt cache hits."""
    proxy = await make_proxy()
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=_conversation(0))
        await client.chat.completions.create(model="gpt-4o", messages=_conversation(2))
    first, second = (r.json()["messages"] for r in fake.requests[-2:])
    assert second[: len(first)] == first
    assert fake.usage_log[-1].cached_tokens == 0 or fake.usage_log[-1].cached_tokens % 128 == 0


async def test_gemini_function_response_compressed(fake: FakeUpstream, make_proxy: Any) -> None:
    """A Gemini functionResponse holding structured data is sent as {"output": compact text}."""
    proxy = await make_proxy()
    contents = [
        types.Content(role="user", parts=[types.Part(text="Which users are inactive?")]),
        types.Content(
            role="model", parts=[types.Part(function_call=types.FunctionCall(name="list_users", args={}))]
        ),
        types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(name="list_users", response={"rows": ROWS})
                )
            ],
        ),
    ]
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=proxy.url))
    try:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents=contents)
    finally:
        await client.aio.aclose()
    part = fake.requests[-1].json()["contents"][2]["parts"][0]["functionResponse"]
    assert part["name"] == "list_users"
    assert set(part["response"]) == {"output"} and isinstance(part["response"]["output"], str)
    (line,) = await proxy.log_lines(1)
    assert line["segments"][0]["tokens_after"] < line["segments"][0]["tokens_before"]


async def test_never_policy_leaves_tool_untouched(fake: FakeUpstream, make_proxy: Any) -> None:
    """A tool configured 'never' reaches the upstream byte for byte."""
    proxy = await make_proxy(compression={"tool_policies": {"list_users": "never"}})
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=_conversation())
    assert fake.requests[-1].json()["messages"][3]["content"] == PRETTY


def _log_line(i: int) -> str:
    stamp = f"2026-11-21T10:{i // 60 % 60:02d}:{i % 60:02d}Z"
    if i % 97 == 0:
        return f"{stamp} ERROR worker-{i % 4} job {i} failed: timeout after 30s"
    port = 40000 + i * 13 % 9000
    return f"{stamp} INFO worker-{i % 4} connection closed by 10.0.{i % 7}.{i % 250} port {port}"


LOG = "\n".join(_log_line(i) for i in range(1500))


async def test_lossy_output_stable_when_user_asks_something_new(fake: FakeUpstream, make_proxy: Any) -> None:
    """A lossily cut tool output is sent as the same bytes after the user's next, different question."""
    proxy = await make_proxy()
    turn1: list[Any] = [
        {"role": "user", "content": "Why did the jobs fail?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_log", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": LOG},
    ]
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "Timeouts."},
        {"role": "user", "content": "Which ports?"},
    ]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=turn1)
        await client.chat.completions.create(model="gpt-4o", messages=turn2)
    first, second = (r.json()["messages"][2]["content"] for r in fake.requests[-2:])
    assert first != LOG and "[nocp omitted" in first
    assert second == first


ITEMS = [{"sku": "X1", "qty": 2}, {"sku": "Y7", "qty": 1}]
ORDER = {"order_id": "A-1042", "status": "shipped", "items": ITEMS}
SMALL = json.dumps(ORDER, indent=2)


def _small_turns(output: str, extra_turns: int) -> list[Any]:
    msgs: list[Any] = [
        {"role": "user", "content": "Where is my order?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_order", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": output},
    ]
    for i in range(extra_turns):
        msgs += [
            {"role": "assistant", "content": f"It shipped ({i})."},
            {"role": "user", "content": f"When {i}?"},
        ]
    return msgs


async def test_small_json_output_compacted_and_stable(fake: FakeUpstream, make_proxy: Any) -> None:
    """A ~60-token pretty-printed JSON output goes out compacted, same value, same bytes next turn."""
    assert 50 <= tokens.count(SMALL, "gpt-4o") <= 70
    proxy = await make_proxy()
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=_small_turns(SMALL, 0))
        await client.chat.completions.create(model="gpt-4o", messages=_small_turns(SMALL, 2))
    first, second = (r.json()["messages"] for r in fake.requests[-2:])
    sent = first[2]["content"]
    assert sent != SMALL and tokens.count(sent, "gpt-4o") < tokens.count(SMALL, "gpt-4o")
    (seg,) = (await proxy.log_lines(2))[0]["segments"]
    assert seg["lossless"] is True
    decoded = toon_decode(sent) if "toon" in seg["method"] else json.loads(sent)
    assert same_value(decoded, json.loads(SMALL))
    assert second[: len(first)] == first


async def test_small_text_output_untouched(fake: FakeUpstream, make_proxy: Any) -> None:
    """A small plain-text tool output reaches the upstream byte for byte."""
    text = "Order A-1042 shipped on 2026-11-30 via DHL, tracking 00340434161094042557, two items. " * 3
    proxy = await make_proxy()
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=_small_turns(text, 0))
    assert fake.requests[-1].json()["messages"][2]["content"] == text


async def test_ordinary_chat_unchanged(fake: FakeUpstream, make_proxy: Any) -> None:
    """A chat without tool outputs, JSON pasted by the user included, reaches the upstream unchanged."""
    messages: list[Any] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"What does this order record mean?\n{SMALL}"},
        {"role": "assistant", "content": "It is an order that has shipped."},
        {"role": "user", "content": SMALL},
    ]
    proxy = await make_proxy()
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert fake.requests[-1].json()["messages"] == messages
