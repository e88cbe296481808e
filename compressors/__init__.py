"""Tool-output compression: pure functions of (content, context, config), no HTTP.

>>> from compressors import CompressionConfig, CompressionContext, compress
>>> result = compress(tool_output, CompressionContext(model="gpt-4o"), CompressionConfig())
>>> result.text, result.tokens_before, result.tokens_after, result.method

Importing the package is light: :func:`compress` (and the compressors behind it) load on first
use; :func:`clear_cache` forgets their cached results, :func:`cached` reads one without
computing it and :func:`remember` adds one computed elsewhere (a worker process). Exact token
counting lives in :mod:`compressors.tokens`. The other public modules are imported by name:
:mod:`compressors.markers` (the omission marker and its content id), :mod:`compressors.hardtokens`,
:mod:`compressors.summary` (summaries without an LLM) and :mod:`compressors.toon`. Modules named
``_*`` are private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressors import exceptions, tokens
from compressors._detect import detect
from compressors._types import (
    Compressed,
    CompressionConfig,
    CompressionContext,
    CompressionResult,
    ContentType,
    ToolPolicy,
)
from compressors.exceptions import (
    CompressionFailed,
    CompressorError,
    TokenizerUnavailable,
    WrongContentType,
)

if TYPE_CHECKING:
    from compressors._compress import cached, clear_cache, compress, remember

__all__ = [
    "Compressed",
    "CompressionConfig",
    "CompressionContext",
    "CompressionFailed",
    "CompressionResult",
    "CompressorError",
    "ContentType",
    "TokenizerUnavailable",
    "ToolPolicy",
    "WrongContentType",
    "cached",
    "clear_cache",
    "compress",
    "detect",
    "exceptions",
    "remember",
    "tokens",
]


def __getattr__(name: str) -> Any:
    if name in ("cached", "clear_cache", "compress", "remember"):
        from compressors import _compress

        return getattr(_compress, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
