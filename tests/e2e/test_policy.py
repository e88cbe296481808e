"""The learned compression policy as a client meets it: the openai SDK through the proxy to the
fake provider. A session's tool output keeps its arm's bytes on later turns and on a retry, and
every log line names the arm."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from proxy.testing import FakeUpstream, Reply
from tests.helpers import ask, read_log_turn, sent

ARMS = [{"name": "budget-300", "budget_tokens": 300}, {"name": "budget-900", "budget_tokens": 900}]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_session_keeps_its_arm_over_turns_and_retries(
    fake: FakeUpstream, make_proxy: Any, stream: bool
) -> None:
    """Turn 2 and its retry carry turn 1's cut byte for byte; each log line has the same arm."""
    proxy = await make_proxy(policy={"enabled": True, "seed": 3, "arms": ARMS}, pipeline={"workers": 0})
    fake.script(Reply("Worker 5 failed."), Reply("Fix the checksum."), Reply("Fix the checksum."))
    messages = read_log_turn()
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-tenant-a-0123456789", max_retries=0)
    async with client:
        one = await ask(client, messages, stream, extra_headers={"X-Session-Id": "policy-s1"})
        messages += [one["message"], {"role": "user", "content": "What now?"}]
        for _ in range(2):  # the second turn, then the SDK's retry of it
            await ask(client, messages, stream, extra_headers={"X-Session-Id": "policy-s1"})
    first, second, retry = (sent(fake, k) for k in range(3))
    assert second["messages"][3] == first["messages"][3] and retry == second
    assert "[nocp omitted:" in first["messages"][3]["content"]
    lines = await proxy.log_lines(3)
    arms = [line["policy_arms"] for line in lines]
    assert arms[0] is not None and set(arms[0]) == {"read_log/log"} and arms == [arms[0]] * 3
    assert arms[0]["read_log/log"] in {a["name"] for a in ARMS}
