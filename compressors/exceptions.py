"""The one exceptions module of :mod:`compressors`.

Hierarchy::

    CompressorError                 base of everything this package raises on purpose
    ├── TokenizerUnavailable        a bundled BPE table is missing or fails its pinned hash
    ├── CompressionFailed           a compressor could not produce valid output for its input
    └── WrongContentType            the content is not what the detector guessed (e.g. it looks
                                    like JSON but does not parse); the dispatcher re-routes it

Callers (the proxy's pipeline) treat any ``CompressorError`` as a reason to fail open and
send the original content.
"""

from __future__ import annotations

__all__ = ["CompressionFailed", "CompressorError", "TokenizerUnavailable", "WrongContentType"]


class CompressorError(Exception):
    """Base class of every error raised on purpose by :mod:`compressors`."""


class TokenizerUnavailable(CompressorError):
    """A bundled BPE table could not be loaded or did not match its pinned SHA-256."""


class CompressionFailed(CompressorError):
    """A compressor could not produce output that satisfies its own invariants."""


class WrongContentType(CompressorError):
    """The content is not of the type the detector guessed (e.g. it starts like JSON but does
    not parse, or nests too deeply to parse). The dispatcher sends it down the plain-text path."""
