"""Text-mode agents: command output sent back as a user message is compressed like a tool output,
and human-written user messages are never touched."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.bench.traces import bfcl_data_dir, read_jsonl
from proxy.stages.observations import action_block, looks_like_output, observation
from proxy.testing import FakeUpstream


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _text_mode_pairs(root: Path) -> list[tuple[str, str]]:
    """(assistant, user) message pairs of the SWE-agent trajectories without function calling."""
    pairs: list[tuple[str, str]] = []
    for path in sorted((root / "swe-agent").glob("*.traj")):
        history = json.loads(path.read_text(encoding="utf-8")).get("history") or []
        if any(m.get("tool_calls") for m in history):
            continue
        for a, u in itertools.pairwise(history):
            if a.get("role") == "assistant" and u.get("role") == "user":
                pairs.append((_text(a.get("content")), _text(u.get("content"))))
    return pairs


# --- the detector -------------------------------------------------------------------------

SWE_ACTION = "Let's look at the files in the repository.\n```\nls -F\n```"


def test_detects_swe_agent_text_observations(eval_data: Path) -> None:
    """Nearly every SWE-agent text-mode observation is recognised, with its action's command word."""
    pairs = _text_mode_pairs(eval_data)
    assert len(pairs) > 100
    found = [observation(a, u) for a, u in pairs]
    assert sum(f is not None for f in found) >= 0.95 * len(pairs)
    commands = {f.command for f in found if f is not None}
    assert {"open", "edit", "python", "ls", "find_file", "submit"} <= commands


def test_task_and_first_messages_of_trajectories_are_not_observations(eval_data: Path) -> None:
    """A trajectory's user messages that answer no assistant action (the task) are never observations."""
    for path in sorted((eval_data / "swe-agent").glob("*.traj")):
        history = json.loads(path.read_text(encoding="utf-8")).get("history") or []
        for before, msg in itertools.pairwise(history):
            if msg.get("role") == "user" and before.get("role") != "assistant":
                assert observation(_text(before.get("content")), _text(msg.get("content"))) is None


def test_human_questions_after_an_action_are_not_observations() -> None:
    """Thousands of human-written BFCL requests are never taken for output, even right after an action."""
    data = bfcl_data_dir()
    if data is None:
        pytest.skip("bfcl-eval is not installed")
    rows: list[dict[str, Any]] = []
    for f in sorted(data.glob("BFCL_v4_*.json")):
        try:
            rows += read_jsonl(f)
        except ValueError:  # a few files of the set are not JSON lines
            continue
    texts = [
        m["content"]
        for row in rows
        for turn in row.get("question") or ()
        for m in (turn if isinstance(turn, list) else [turn])
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    assert len(texts) > 1000
    assert [t[:80] for t in texts if observation(SWE_ACTION, t) is not None] == []


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/main.py", line 12, in <module>\n'
    "    run()\n"
    '  File "/srv/app/main.py", line 8, in run\n'
    "    import yaml\n"
    "ModuleNotFoundError: No module named 'yaml'"
)
HUMAN_MESSAGES = [
    "Hi! Can you help me plan a trip to Lisbon in May?",
    "Thanks, that worked. Now how do I make it run every night at 2am?",
    f"I ran the script and got this:\n{TRACEBACK}\nWhat am I doing wrong?",
    "Here is my function, why is it slow?\n```python\ndef f(xs):\n    return [x for x in xs if x in xs]\n```",
    "Please review:\n\ndef add(a, b):\n    return a - b\n\nI think there is a bug in it somewhere.",
    "The logs say\n2026-01-02 10:00:01 ERROR db timeout\n2026-01-02 10:00:05 ERROR db timeout\n"
    "Is the database down?",
]


@pytest.mark.parametrize("text", HUMAN_MESSAGES)
def test_human_messages_after_an_action_are_not_observations(text: str) -> None:
    """Questions, and code or logs pasted with a person's words around them, are not command output."""
    assert observation(SWE_ACTION, text) is None


@pytest.mark.parametrize("text", [TRACEBACK, *HUMAN_MESSAGES])
def test_nothing_is_an_observation_without_an_action_before_it(text: str) -> None:
    """Pasted tracebacks and code are not observations when the assistant message has no action block."""
    chat = "Sure! Here is an example:\n```python\nprint('hi')\n```\nLet me know if it helps."
    for before in (
        "Sure, what would you like to know?",
        chat,
        "```python\nimport os\nprint(os.getcwd())\n```",
    ):
        assert observation(before, text) is None


def test_action_blocks() -> None:
    """Shell fences and <command> tags that end the message are actions; code samples are not."""
    assert action_block("Run it.\n```bash\ncd /repo && pytest -x tests\n```\n") == action_block(
        "Run it.\n```bash\ncd /repo && pytest -x tests\n```"
    )
    assert action_block("x\n```bash\ncd /repo && pytest -x tests\n```").command == "pytest"  # type: ignore[union-attr]
    assert action_block("DISCUSSION\nopen it\n<command>\nopen src/a.py 10\n</command>").command == "open"  # type: ignore[union-attr]
    edit = "Fix.\n```\nedit 3:3\nText with a fence:\n```python\nx = 1\n```\nend_of_edit\n```"
    assert action_block(edit).command == "edit"  # type: ignore[union-attr]
    assert action_block("Like this:\n```python\nprint(1)\n```") is None
    assert action_block("Like this:\n```\ndef f():\n    pass\n```") is None
    assert action_block("```bash\nls\n```\nThen tell me what it prints.") is None


def test_output_without_an_envelope() -> None:
    """Bare command output (traceback, ls -l, grep hits) reads as output; chat text does not."""
    ls = (
        "total 12\ndrwxr-xr-x  2 root root 4096 Jan  1 00:00 src\n"
        "-rw-r--r--  1 root root  120 Jan  1 00:00 setup.py"
    )
    grep = "src/a.py:10:def parse():\nsrc/b.py:22:    parse()\ntests/test_a.py:5:from a import parse"
    mini = "<returncode>1</returncode>\n<output>\nboom\n</output>"
    assert all(looks_like_output(t) for t in (TRACEBACK, ls, grep, mini))
    assert not any(looks_like_output(t) for t in HUMAN_MESSAGES)


# --- through the proxy --------------------------------------------------------------------


def _log_line(i: int) -> str:
    stamp = f"2026-11-21 10:{i // 60 % 60:02d}:{i % 60:02d}"
    if i % 97 == 0:
        return f"{stamp} ERROR worker-{i % 4} job {i} failed: timeout after 30s"
    port = 40000 + i * 13 % 9000
    return f"{stamp} INFO worker-{i % 4} connection closed by 10.0.{i % 7}.{i % 250} port {port}"


LOG = "\n".join(_log_line(i) for i in range(1500))
FOOTER = "\n(Open file: n/a)\n(Current directory: /repo)\nbash-$"


def _agent(extra: int = 0) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are an autonomous programmer. Reply with one command."},
        {"role": "user", "content": "The worker jobs time out. Find out why."},
        {"role": "assistant", "content": "Let's read the worker log.\n```\ncat logs/worker.log\n```"},
        {"role": "user", "content": LOG + FOOTER},
    ]
    for i in range(extra):
        msgs += [
            {"role": "assistant", "content": f"Let's look further.\n```\nls -F dir{i}\n```"},
            {"role": "user", "content": f"a.py\nb.py\nc{i}.py{FOOTER}"},
        ]
    return msgs


async def _send(proxy: Any, messages: list[dict[str, Any]]) -> None:
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="k", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]


async def test_agent_observation_compressed_and_stable(fake: FakeUpstream, make_proxy: Any) -> None:
    """A text-mode agent's long observation is cut with a marker and is the same bytes on the next turn."""
    proxy = await make_proxy()
    await _send(proxy, _agent(0))
    await _send(proxy, _agent(2))
    first, second = (r.json()["messages"] for r in fake.requests[-2:])
    sent = first[3]["content"]
    assert sent != LOG + FOOTER and "[nocp omitted" in sent and "ERROR" in sent
    assert second[: len(first)] == first
    assert [m["content"] for m in first[:3]] == [m["content"] for m in _agent(0)[:3]]
    line = (await proxy.log_lines(2))[0]
    (seg,) = line["segments"]
    assert (
        seg["kind"] == "observation" and seg["tool"] == "cat" and seg["tokens_after"] < seg["tokens_before"]
    )


async def test_pasted_log_without_action_untouched(fake: FakeUpstream, make_proxy: Any) -> None:
    """A person pasting a long log (no agent action before it) reaches the upstream byte for byte."""
    proxy = await make_proxy()
    messages = [
        {"role": "user", "content": "Hi, my workers keep failing."},
        {"role": "assistant", "content": "Can you paste the worker log?"},
        {"role": "user", "content": LOG},
    ]
    await _send(proxy, messages)
    assert fake.requests[-1].json()["messages"] == messages


async def test_ordinary_chat_unchanged(fake: FakeUpstream, make_proxy: Any) -> None:
    """An ordinary chat, code and a traceback pasted by the user included, goes upstream unchanged."""
    proxy = await make_proxy()
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant."}]
    for i, text in enumerate(HUMAN_MESSAGES):
        messages += [
            {"role": "user", "content": text * 40},
            {"role": "assistant", "content": f"Try this:\n```bash\npip install pyyaml=={i}.0\n```"},
        ]
    messages.append({"role": "user", "content": "It still fails:\n" + (TRACEBACK + "\n") * 60})
    await _send(proxy, messages)
    assert fake.requests[-1].json()["messages"] == messages


async def test_never_policy_leaves_observations_alone(fake: FakeUpstream, make_proxy: Any) -> None:
    """With compression.text_observations: never, a text-mode agent's observations go as sent."""
    proxy = await make_proxy(compression={"text_observations": "never"})
    await _send(proxy, _agent(1))
    assert fake.requests[-1].json()["messages"] == _agent(1)
