"""The LLM summarizers: one plain JSON call through the shared upstream client, no provider SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Settings, load_settings
from proxy.sessions import SQLiteSessionStore
from proxy.stages.history import HistoryStage
from proxy.summarizer import (
    SUMMARY_HEADER,
    SYSTEM_PROMPT,
    GeminiSummarizer,
    OpenAISummarizer,
    SummarizerError,
    TurnText,
    build_prompt,
    make_summarizer,
)
from proxy.testing import Fail, FakeUpstream, Reply, Stall
from proxy.upstream import UpstreamClient
from tests.helpers import REPO, chat, send

TURNS = [
    TurnText(index=2, role="user", text="Deploy failed: ImportError in /srv/app/payments.py line 42."),
    TurnText(index=3, role="assistant", text="Pinned requests==2.32.3 and reran `make deploy`: exit 0."),
]
HISTORY = {"threshold_tokens": 600, "keep_last_messages": 4, "cut_step_tokens": 100}


def settings_for(fake: FakeUpstream, upstream: str, model: str, **history: Any) -> Settings:
    """Settings whose history summarizer is ``model`` on ``upstream`` of the fake provider
    (``fake-openai-keyed`` has its own key in ``NOCP_TEST_SUMMARIZER_KEY``)."""
    upstreams: list[dict[str, Any]] = [
        {"name": "fake-openai", "base_url": fake.openai_base_url, "protocol": "openai"},
        {"name": "fake-gemini", "base_url": fake.url, "protocol": "gemini"},
    ]
    if upstream == "fake-openai-keyed":
        upstreams.append(
            {
                "name": upstream,
                "base_url": fake.openai_base_url,
                "protocol": "openai",
                "api_key_env": "NOCP_TEST_SUMMARIZER_KEY",
                "models": ["none-*"],
            }
        )
    return load_settings(
        env={},
        overrides={
            "upstreams": upstreams,
            "history": {**HISTORY, "summarizer_upstream": upstream, "summarizer_model": model, **history},
            "auth": {"allow_open_relay": True},
        },
    )


@pytest.fixture
async def shared(fake: FakeUpstream) -> AsyncIterator[UpstreamClient]:
    """A started upstream client, as the proxy shares it."""
    client = UpstreamClient(Settings())
    await client.start()
    yield client
    await client.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteSessionStore]:
    """An SQLite session store in a temporary folder."""
    s = SQLiteSessionStore(tmp_path / "sessions.sqlite3", ttl_s=3600)
    yield s
    await s.aclose()


async def test_openai_summarizer_posts_one_chat_completion(
    fake: FakeUpstream, shared: UpstreamClient
) -> None:
    """The OpenAI summarizer POSTs one chat completion with the client's key; returns its text and usage."""
    summarizer = make_summarizer(settings_for(fake, "fake-openai", "gpt-4o-mini"), shared)
    assert isinstance(summarizer, OpenAISummarizer)
    fake.script(Reply("- Deploy fixed by pinning requests==2.32.3."))
    result = await summarizer.summarize("- earlier", TURNS, api_key="sk-client")
    (call,) = fake.requests
    assert (call.method, call.path) == ("POST", "/v1/chat/completions")
    assert call.headers["Authorization"] == "Bearer sk-client"
    assert call.headers["Content-Type"] == "application/json"
    assert call.json() == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": build_prompt("- earlier", TURNS)},
        ],
        "max_completion_tokens": 1024,
        "temperature": 0.0,
    }
    billed = fake.usage_log[0]
    assert result.text == f"{SUMMARY_HEADER}\n- Deploy fixed by pinning requests==2.32.3."
    assert (result.prompt_tokens, result.completion_tokens) == (
        billed.prompt_tokens,
        billed.completion_tokens,
    )
    assert result.overhead_tokens > 0 and result.method == "llm"


async def test_gemini_summarizer_posts_one_generate_content(
    fake: FakeUpstream, shared: UpstreamClient
) -> None:
    """The Gemini summarizer POSTs one generateContent with the client's key; returns its text and usage."""
    summarizer = make_summarizer(settings_for(fake, "fake-gemini", "gemini-2.5-flash-lite"), shared)
    assert isinstance(summarizer, GeminiSummarizer)
    fake.script(Reply("- Deploy fixed."))
    result = await summarizer.summarize("", TURNS, api_key="AIzaClientKey")
    (call,) = fake.requests
    assert (call.method, call.path) == ("POST", "/v1beta/models/gemini-2.5-flash-lite:generateContent")
    assert call.headers["x-goog-api-key"] == "AIzaClientKey" and "Authorization" not in call.headers
    assert call.json() == {
        "contents": [{"role": "user", "parts": [{"text": build_prompt("", TURNS)}]}],
        "systemInstruction": {"parts": [{"text": SYSTEM_PROMPT}]},
        "generationConfig": {"temperature": 0.0, "maxOutputTokens": 1024},
    }
    billed = fake.usage_log[0]
    assert result.text == f"{SUMMARY_HEADER}\n- Deploy fixed."
    assert (result.prompt_tokens, result.completion_tokens) == (
        billed.prompt_tokens,
        billed.completion_tokens,
    )
    assert result.overhead_tokens > 0


async def test_reasoning_model_gets_no_temperature(fake: FakeUpstream, shared: UpstreamClient) -> None:
    """A reasoning model (o-series, gpt-5) is called without a temperature, which it would reject."""
    summarizer = make_summarizer(settings_for(fake, "fake-openai", "gpt-5-mini"), shared)
    await summarizer.summarize("", TURNS)
    assert "temperature" not in fake.requests[0].json()
    assert "Authorization" not in fake.requests[0].headers  # no key to send, none invented


async def test_upstream_key_replaces_the_clients(
    fake: FakeUpstream, shared: UpstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream with ``api_key_env`` is called with that key, never the client's."""
    monkeypatch.setenv("NOCP_TEST_SUMMARIZER_KEY", "sk-server")
    summarizer = make_summarizer(settings_for(fake, "fake-openai-keyed", "gpt-4o-mini"), shared)
    await summarizer.summarize("", TURNS, api_key="sk-client")
    assert fake.requests[0].headers["Authorization"] == "Bearer sk-server"


@pytest.mark.parametrize(
    ("upstream", "model"), [("fake-openai", "gpt-4o-mini"), ("fake-gemini", "gemini-2.5-flash")]
)
async def test_upstream_error_raises_with_status(
    fake: FakeUpstream, shared: UpstreamClient, upstream: str, model: str
) -> None:
    """A non-2xx answer raises a SummarizerError naming the status and the upstream's message."""
    summarizer = make_summarizer(settings_for(fake, upstream, model), shared)
    fake.script(Fail(429))
    with pytest.raises(SummarizerError, match=f"{upstream} answered 429: "):
        await summarizer.summarize("", TURNS)


async def test_summarizer_timeout_raises(fake: FakeUpstream, shared: UpstreamClient) -> None:
    """A summarizer call slower than the configured timeout raises TimeoutError."""
    summarizer = make_summarizer(
        settings_for(fake, "fake-openai", "gpt-4o-mini", summarizer_timeout_ms=100), shared
    )
    fake.script(Stall(2.0))
    with pytest.raises(TimeoutError):
        await summarizer.summarize("", TURNS)


async def test_failing_upstream_falls_back_to_unsummarized(
    fake: FakeUpstream, shared: UpstreamClient, store: SQLiteSessionStore
) -> None:
    """When the summarizer's upstream answers 500, the stage sends the request unsummarized and logs why."""
    stage = HistoryStage.from_settings(
        settings_for(fake, "fake-openai", "gpt-4o-mini"), store, upstream=shared
    )
    fake.script(Fail(500))
    msgs = chat(8)
    sent, record = await send(stage, msgs)
    assert sent == msgs and len(fake.requests) == 1
    ((stage_name, reason),) = [(f.stage, f.reason) for f in record.fail_open]
    assert (
        stage_name == "history.summarizer" and "SummarizerError: upstream fake-openai answered 500" in reason
    )
    assert record.compression_overhead_tokens == 0 and await store.rows() == 0


async def test_stage_rolls_up_through_the_shared_client(
    fake: FakeUpstream, shared: UpstreamClient, store: SQLiteSessionStore
) -> None:
    """The stage's LLM roll-up goes through the shared client, leaves it open, and bills its tokens."""
    stage = HistoryStage.from_settings(
        settings_for(fake, "fake-openai", "gpt-4o-mini"), store, upstream=shared
    )
    fake.script(Reply("- Modules checked; module_0.py returns 200."))
    sent, record = await send(stage, chat(8))
    assert any(isinstance(m["content"], str) and "module_0.py returns 200" in m["content"] for m in sent)
    billed = fake.usage_log[0]
    assert record.compression_overhead_tokens == billed.prompt_tokens + billed.completion_tokens
    await stage.aclose()  # closes the store only: the shared client is the caller's
    fake.script(Reply("- still usable"))
    summarizer = make_summarizer(settings_for(fake, "fake-openai", "gpt-4o-mini"), shared)
    assert (await summarizer.summarize("", TURNS)).text.endswith("- still usable")


async def test_without_a_shared_client_the_stage_owns_one(
    fake: FakeUpstream, store: SQLiteSessionStore
) -> None:
    """Without ``upstream`` the summarizer opens its own client on first use; stage.aclose closes it."""
    stage = HistoryStage.from_settings(settings_for(fake, "fake-gemini", "gemini-2.5-flash-lite"), store)
    summarizer = stage.summarizer
    assert isinstance(summarizer, GeminiSummarizer)
    assert summarizer._http._session is None  # nothing opened before the first call
    result = await summarizer.summarize("", TURNS)
    assert result.text.startswith(SUMMARY_HEADER) and len(fake.requests) == 1
    session = summarizer._http._session
    assert session is not None and not session.closed
    await stage.aclose()
    assert session.closed and summarizer._http._session is None


# The summarizer path from a plain install: `openai` and `google-genai` are dev-only
# dependencies, so a subprocess that cannot import them must still summarize with an LLM.
_PLAIN_INSTALL = textwrap.dedent(
    """
    import asyncio, sys

    BLOCKED = ("openai", "google.genai", "google.generativeai")

    class BlockDevSDKs:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} is a dev-only dependency")
            return None

    sys.meta_path.insert(0, BlockDevSDKs())
    for name in list(sys.modules):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            del sys.modules[name]

    import proxy.stages
    from proxy.config import load_settings
    from proxy.summarizer import TurnText, make_summarizer
    from proxy.testing import FakeUpstream, Reply
    from proxy.upstream import UpstreamClient

    TURNS = [TurnText(index=2, role="user", text="The build fails in /srv/app/x.py.")]

    async def main() -> None:
        async with FakeUpstream() as fake:
            settings = load_settings(env={}, overrides={
                "upstreams": [
                    {"name": "o", "base_url": fake.openai_base_url, "protocol": "openai"},
                    {"name": "g", "base_url": fake.url, "protocol": "gemini"},
                ],
                "history": {"summarizer_upstream": "o", "summarizer_model": "gpt-4o-mini"},
            })
            shared = UpstreamClient(settings)
            await shared.start()
            fake.script(Reply("openai summary"), Reply("gemini summary"))
            got = [await make_summarizer(settings, shared).summarize("", TURNS, api_key="k")]
            settings = load_settings(env={}, overrides={
                "upstreams": [{"name": "g", "base_url": fake.url, "protocol": "gemini"}],
                "history": {"summarizer_upstream": "g", "summarizer_model": "gemini-2.5-flash"},
            })
            own = make_summarizer(settings, None)
            got.append(await own.summarize("", TURNS, api_key="k"))
            await own.aclose()
            await shared.close()
            assert [r.method for r in got] == ["llm", "llm"], got
            assert got[0].text.endswith("openai summary") and got[1].text.endswith("gemini summary"), got
            assert all(r.overhead_tokens > 0 for r in got), got
            assert len(fake.requests) == 2
        leaked = sorted(n for n in sys.modules if any(n == b or n.startswith(b + ".") for b in BLOCKED))
        assert not leaked, leaked
        print("plain-install-ok")

    asyncio.run(main())
    """
)


def test_llm_summarizer_works_without_the_dev_sdks() -> None:
    """With `openai` and `google-genai` unimportable (as in a plain `pip install .`), both LLM summarizers
    still make their call through the shared client and return the model's summary, not the fallback."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NOCP_", "OPENAI_", "GEMINI_", "GOOGLE_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", _PLAIN_INSTALL],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "plain-install-ok"


def test_runtime_dependencies_leave_out_the_sdks() -> None:
    """pyproject's runtime dependencies name no provider SDK: the summarizer needs only aiohttp."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    assert "aiohttp" in names and not names & {"openai", "google-genai"}
