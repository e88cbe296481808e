"""The one format every lossy cut uses to say what it removed."""

from __future__ import annotations

MARKER_PREFIX = "[nocp omitted: "


def omitted_marker(description: str) -> str:
    """A short, recognisable line that says what a lossy cut removed, e.g.
    ``[nocp omitted: 37 rows; id 1..412, status {ok: 35, error: 2}]``."""
    return f"{MARKER_PREFIX}{description}]"
