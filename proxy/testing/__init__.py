"""Test support shipped with nocp: ``FakeUpstream``, a fake OpenAI + Gemini + Anthropic provider.

Like httpx's ``MockTransport`` or aiohttp's ``test_utils``, for tests, demos and benchmarks::

    from proxy.testing import FakeUpstream, Fail, Reply

    async with FakeUpstream() as fake:
        fake.script(Reply("hi"), Fail(429))
        client = AsyncOpenAI(base_url=fake.openai_base_url, api_key="k")
        ...
        assert fake.usage_log[0].prompt_tokens == count_messages(messages, model)

Without a socket, an :class:`~proxy.exchange.Exchange` runs against ``MockSend(handler)`` (its
upstream), a ``RecordingClient`` and a ``MemoryWriter``.

Endpoints of the fake: ``POST /v1/chat/completions`` (plain and ``stream: true``), ``POST
/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent`` (``alt=sse`` or a JSON
array), ``GET /v1/models``, ``POST /v1/embeddings``, and an echo route for everything else.
OpenAI Responses: ``POST /v1/responses`` (plain and SSE) and its WebSocket mode (``GET
/v1/responses`` upgraded), with ``previous_response_id`` state kept in ``fake.responses``, plus
``GET``/``DELETE /v1/responses/{id}``, ``.../input_items``, ``.../cancel`` and ``POST
/v1/responses/input_tokens``.
Anthropic Messages: ``POST /v1/messages`` (plain and SSE; tool use; thinking blocks whose
signatures it checks when they come back; Anthropic's breakpoint caching with minimum prefix,
separate cache writes and reads, and TTLs timed by ``FakeUpstream(clock=...)``) and ``POST
/v1/messages/count_tokens``.
"""

from proxy.testing._common import FIXED_CREATED
from proxy.testing._exchange import MemoryWriter, MockResponse, MockSend, RecordingClient
from proxy.testing._fake_upstream import FakeUpstream, run_fake_upstream
from proxy.testing._generic import DEFAULT_MODELS
from proxy.testing._prefix_cache import PrefixCache
from proxy.testing._records import RecordedRequest, UsageRecord
from proxy.testing._script import (
    Answer,
    Drop,
    Fail,
    Replay,
    Reply,
    Stall,
    Step,
    StreamStall,
    Structured,
    ToolCall,
)

__all__ = [
    "DEFAULT_MODELS",
    "FIXED_CREATED",
    "Answer",
    "Drop",
    "Fail",
    "FakeUpstream",
    "MemoryWriter",
    "MockResponse",
    "MockSend",
    "PrefixCache",
    "RecordedRequest",
    "RecordingClient",
    "Replay",
    "Reply",
    "Stall",
    "Step",
    "StreamStall",
    "Structured",
    "ToolCall",
    "UsageRecord",
    "run_fake_upstream",
]
