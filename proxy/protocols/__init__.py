"""Wire protocols: one adapter module per protocol, behind this surface.

``ADAPTERS`` is the registry the server serves: each adapter's ``routes`` go to the exchange.
Adding a protocol is adding its adapter here; the server and the exchange stay as they are.
"""

from proxy.protocols._adapter import Adapter, Route
from proxy.protocols._answer import Call, ModelTurn, ToolSpec, Usage, add_usage, anchor_digest
from proxy.protocols._codec import decode_json_object, digest, encode_json
from proxy.protocols._prompt import Prompt, Rollup, Segment, SegmentKind, Turn
from proxy.protocols._stream import HopStream, JSONArraySplitter, SSESplitter, StreamEvent, sse_data
from proxy.protocols.anthropic import AnthropicAdapter
from proxy.protocols.gemini import GeminiAdapter
from proxy.protocols.openai_chat import OpenAIChatAdapter
from proxy.protocols.openai_responses import OpenAIResponsesAdapter

ADAPTERS: tuple[Adapter, ...] = (
    OpenAIChatAdapter(),
    OpenAIResponsesAdapter(),
    AnthropicAdapter(),
    GeminiAdapter(),
)

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AnthropicAdapter",
    "Call",
    "GeminiAdapter",
    "HopStream",
    "JSONArraySplitter",
    "ModelTurn",
    "OpenAIChatAdapter",
    "OpenAIResponsesAdapter",
    "Prompt",
    "Rollup",
    "Route",
    "SSESplitter",
    "Segment",
    "SegmentKind",
    "StreamEvent",
    "ToolSpec",
    "Turn",
    "Usage",
    "add_usage",
    "anchor_digest",
    "decode_json_object",
    "digest",
    "encode_json",
    "sse_data",
]
