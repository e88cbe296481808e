"""Wire protocols: one adapter module per protocol, behind this surface."""

from proxy.protocols._base import Adapter, Prompt, Rollup, Segment, SegmentKind, StreamSniffer, Turn, Usage
from proxy.protocols.gemini import GeminiAdapter
from proxy.protocols.openai_chat import OpenAIChatAdapter

__all__ = [
    "Adapter",
    "GeminiAdapter",
    "OpenAIChatAdapter",
    "Prompt",
    "Rollup",
    "Segment",
    "SegmentKind",
    "StreamSniffer",
    "Turn",
    "Usage",
]
