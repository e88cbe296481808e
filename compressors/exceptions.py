"""The one exceptions module of :mod:`compressors`.

Hierarchy::

    CompressorError                 base of everything this package raises on purpose
    ├── TokenizerUnavailable        a bundled BPE table is missing or fails its pinned hash
    └── CompressionFailed           a compressor could not produce valid output for its input

Callers (the proxy's pipeline) treat any ``CompressorError`` as a reason to fail open and
send the original content.
"""

from __future__ import annotations


class CompressorError(Exception):
    """Base class of every error raised on purpose by :mod:`compressors`."""


class TokenizerUnavailable(CompressorError):
    """A bundled BPE table could not be loaded or did not match its pinned SHA-256."""


class CompressionFailed(CompressorError):
    """A compressor could not produce output that satisfies its own invariants."""
