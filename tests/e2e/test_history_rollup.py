"""History roll-up through the running proxy: real SDKs, the fake provider's prefix cache, the log."""

from __future__ import annotations

import itertools
import json
from typing import Any

import aiohttp
import openai

from compressors.summary import FACTS_HEADER, SUMMARY_HEADER
from proxy.summarizer import SYSTEM_PROMPT
from proxy.testing import Fail, FakeUpstream, Reply
from proxy.translog import log_session_id
from tests.helpers import HISTORY, PARAGRAPH, user_turn


def summary_in(messages: list[dict[str, Any]]) -> str | None:
    for m in messages:
        if isinstance(m.get("content"), str) and m["content"].startswith(SUMMARY_HEADER):
            return str(m["content"])
    return None


async def test_prefix_stays_byte_identical_between_cut_steps(fake: FakeUpstream, make_proxy: Any) -> None:
    """Through the proxy with the openai SDK, each request after a roll-up starts with exactly the
    previous request's messages unless the cut moved, and the provider bills that prefix as cached."""
    proxy = await make_proxy(history=HISTORY)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You keep track of the user's invoices. " + PARAGRAPH},
        {"role": "user", "content": "I will dictate notes about invoices; keep them in mind."},
    ]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0) as client:
        for k in range(16):
            messages.append(user_turn(k))
            reply = await client.chat.completions.create(
                model="gpt-4o", messages=messages, extra_headers={"X-Session-Id": "e2e-1"}
            )
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
    lines = await proxy.log_lines(16)
    assert len(lines) == 16 and all(line["session_id"] == log_session_id("e2e-1") for line in lines)
    sent = [r.json()["messages"] for r in fake.requests]
    assert len(sent) == 16  # the extractive summarizer makes no upstream call
    cut_steps = {
        i
        for i, line in enumerate(lines)
        if any(s["method"].startswith("history_rollup:") for s in line["segments"])
    }
    rolled = [i for i, m in enumerate(sent) if summary_in(m)]
    assert cut_steps and rolled and min(rolled) == min(cut_steps)
    assert len(cut_steps) <= len(rolled) // 2  # most rolled-up requests reuse the stored cut
    for i in range(1, 16):
        if i not in cut_steps:
            assert sent[i][: len(sent[i - 1])] == sent[i - 1], f"request {i} broke the prefix"
    for i in rolled:
        line = lines[i]
        assert "history_rollup" in line["input_compression_methods"]
        assert line["optimized_input_tokens"] < line["raw_input_tokens"]
        assert fake.usage_log[i].prompt_tokens == line["prompt_tokens"]
    reused = [i for i in rolled if i not in cut_steps and i - 1 in rolled]
    assert reused
    for i in reused:  # the whole previous prompt (>= 1024 tokens) is billed as cached
        assert lines[i]["cached_tokens"] >= (fake.usage_log[i - 1].prompt_tokens // 128 - 1) * 128
    last = summary_in(sent[-1]) or ""
    for k in range(4):  # facts of the earliest notes are still sent
        assert f"INV-{4000 + k}" in last and f"/data/invoices/{2024 + k % 3}/inv_{k}.pdf" in last


async def test_llm_summarizer_through_an_upstream(fake: FakeUpstream, make_proxy: Any) -> None:
    """A configured summarizer model is called through its upstream with the client's key; the facts it
    dropped are appended, and its tokens are overhead subtracted from the savings."""
    proxy = await make_proxy(
        history={**HISTORY, "summarizer_upstream": "fake-openai", "summarizer_model": "gpt-4o-mini"}
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Keep my invoice notes in mind."}]
    for k in range(12):
        messages += [user_turn(k), {"role": "assistant", "content": f"Noted invoice {k}."}]
    messages.append({"role": "user", "content": "What is the total of invoice INV-4001?"})
    fake.script(Reply("- The user dictated invoice notes; INV-4000 is at /data/invoices/2024/inv_0.pdf."))
    async with openai.AsyncOpenAI(
        base_url=f"{proxy.url}/v1", api_key="sk-client-key", max_retries=0
    ) as client:
        await client.chat.completions.create(model="gpt-4o", messages=messages)
    call, main = fake.requests
    body = call.json()
    assert body["model"] == "gpt-4o-mini" and body["messages"][0]["content"] == SYSTEM_PROMPT
    assert "INV-4003" in body["messages"][1]["content"]
    assert call.headers["Authorization"] == "Bearer sk-client-key"
    summary = summary_in(main.json()["messages"]) or ""
    assert "INV-4000 is at /data/invoices/2024/inv_0.pdf" in summary
    facts = summary.split(FACTS_HEADER, 1)[1]
    assert "INV-4001" not in summary.split(FACTS_HEADER, 1)[0] and "126.50" in facts
    (line,) = await proxy.log_lines(1)
    billed = fake.usage_log[0]
    assert line["compression_overhead_tokens"] == billed.prompt_tokens + billed.completion_tokens > 0
    assert line["total_token_savings"] == (
        line["raw_input_tokens"] - line["optimized_input_tokens"] - line["compression_overhead_tokens"]
    )
    assert [s["method"] for s in line["segments"] if s["kind"] == "history"] == ["history_rollup:llm"]


async def test_summarizer_error_fails_open(fake: FakeUpstream, make_proxy: Any) -> None:
    """When the summarizer's upstream fails, the request goes upstream unsummarized and the log says why."""
    proxy = await make_proxy(
        history={**HISTORY, "summarizer_upstream": "fake-openai", "summarizer_model": "gpt-4o-mini"}
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Keep my invoice notes in mind."}]
    for k in range(12):
        messages += [user_turn(k), {"role": "assistant", "content": f"Noted invoice {k}."}]
    fake.script(Fail(500))
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-k", max_retries=0) as client:
        reply = await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert reply.choices[0].message.content
    assert fake.requests[-1].json()["messages"] == messages
    (line,) = await proxy.log_lines(1)
    assert line["outcome"] == "ok"
    ((stage, reason),) = [(f["stage"], f["reason"]) for f in line["fail_open"]]
    assert stage == "history.summarizer" and "SummarizerError: upstream fake-openai answered 500" in reason
    assert line["compression_overhead_tokens"] == 0 and line["segments"] == []


async def test_session_id_is_derived_and_logged(fake: FakeUpstream, make_proxy: Any) -> None:
    """The log's session_id comes from the header, else the user field, else a hash (Gemini too)."""
    proxy = await make_proxy()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(
            model="gpt-4o", messages=msgs, extra_headers={"X-Session-Id": "hdr"}
        )
        await client.chat.completions.create(model="gpt-4o", messages=msgs, user="user-42")
        await client.chat.completions.create(model="gpt-4o", messages=msgs)
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[*msgs, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}],
        )
    gemini = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent", json=gemini) as resp,
    ):
        assert resp.status == 200
    lines = await proxy.log_lines(5)
    ids = [line["session_id"] for line in lines]
    assert ids[:2] == [log_session_id("hdr"), log_session_id("user-42")]  # the client's, hashed
    assert ids[2].startswith("h-") and ids[3] == ids[2]  # same conversation, same id
    assert ids[4].startswith("h-") and ids[4] != ids[2]


def assert_alternates(contents: list[dict[str, Any]]) -> None:
    """Assert that Gemini turns alternate between user and model."""
    roles = [c.get("role", "user") for c in contents]
    assert all(a != b for a, b in itertools.pairwise(roles)), roles


async def test_gemini_history_rolls_up_through_the_proxy(fake: FakeUpstream, make_proxy: Any) -> None:
    """A long Gemini conversation is rolled up before it reaches the upstream, pairs kept whole."""
    proxy = await make_proxy(history={**HISTORY, "threshold_tokens": 1500})
    contents: list[dict[str, Any]] = [{"role": "user", "parts": [{"text": "Track my invoices."}]}]
    for k in range(10):
        contents.append({"role": "model", "parts": [{"functionCall": {"name": "fetch", "args": {"k": k}}}]})
        contents.append(
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "fetch", "response": {"output": user_turn(k)["content"]}}}
                ],
            }
        )
    contents.append({"role": "user", "parts": [{"text": "Where is invoice INV-4002 stored?"}]})
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent",
            json={"contents": contents},
            headers={"X-Session-Id": "gem-1"},
        ) as resp,
    ):
        assert resp.status == 200
    sent = fake.requests[-1].json()["contents"]
    assert len(sent) < len(contents)
    assert sent[1]["role"] == "model"  # no second user turn after the first
    first, text = (p["text"] for p in sent[0]["parts"][:2])  # the summary joined the first user turn
    assert first == "Track my invoices."
    assert text.startswith(SUMMARY_HEADER) and "/data/invoices/2026/inv_2.pdf" in text
    for i, block in enumerate(sent):
        if any("functionResponse" in p for p in block["parts"]):
            assert any("functionCall" in p for p in sent[i - 1]["parts"])
    (line,) = await proxy.log_lines(1)
    assert (
        line["session_id"] == log_session_id("gem-1")
        and "history_rollup" in line["input_compression_methods"]
    )
    assert json.dumps(sent[-1]) == json.dumps(contents[-1])


async def test_gemini_summarizer_through_an_upstream(fake: FakeUpstream, make_proxy: Any) -> None:
    """A Gemini summarizer model is called with plain JSON through its upstream and the client's key."""
    proxy = await make_proxy(
        history={
            **HISTORY,
            "threshold_tokens": 1500,
            "summarizer_upstream": "fake-gemini",
            "summarizer_model": "gemini-2.5-flash-lite",
        }
    )
    contents: list[dict[str, Any]] = [{"role": "user", "parts": [{"text": "Track my invoices."}]}]
    for k in range(10):
        contents.append({"role": "user", "parts": [{"text": user_turn(k)["content"]}]})
        contents.append({"role": "model", "parts": [{"text": f"Noted invoice {k}."}]})
    contents.append({"role": "user", "parts": [{"text": "Where is invoice INV-4002 stored?"}]})
    fake.script(Reply("- Invoices INV-4000 to INV-4005 were dictated."))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent",
            json={"contents": contents},
            headers={"x-goog-api-key": "AIzaClientKey0123456789"},
        ) as resp,
    ):
        assert resp.status == 200
    call, main = fake.requests
    assert "gemini-2.5-flash-lite:generateContent" in call.path
    assert call.headers["x-goog-api-key"] == "AIzaClientKey0123456789"
    assert call.json()["systemInstruction"]["parts"][0]["text"] == SYSTEM_PROMPT
    assert_alternates(main.json()["contents"])
    text = main.json()["contents"][0]["parts"][1]["text"]
    assert "Invoices INV-4000 to INV-4005 were dictated." in text and "/data/invoices/2025/inv_1.pdf" in text
    (line,) = await proxy.log_lines(1)
    billed = fake.usage_log[0]
    assert line["compression_overhead_tokens"] == billed.prompt_tokens + billed.completion_tokens > 0
    assert "AIzaClientKey" not in proxy.log_path.read_text()
