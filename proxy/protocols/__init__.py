"""Wire protocols: one adapter module per protocol, behind this surface."""

from proxy.protocols._base import Adapter, Prompt, Segment, SegmentKind, StreamSniffer, Usage
from proxy.protocols.gemini import GeminiAdapter
from proxy.protocols.openai_chat import OpenAIChatAdapter

__all__ = [
    "Adapter",
    "GeminiAdapter",
    "OpenAIChatAdapter",
    "Prompt",
    "Segment",
    "SegmentKind",
    "StreamSniffer",
    "Usage",
]
