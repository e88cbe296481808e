"""Value objects shared by every compressor: config, context, and results."""

from __future__ import annotations

import enum
from typing import Literal

import msgspec


class ToolPolicy(enum.Enum):
    """What may be done to one tool's output."""

    NEVER = "never"
    LOSSLESS_ONLY = "lossless-only"
    AUTO = "auto"


class ContentType(enum.Enum):
    """What the detector decided a piece of content is."""

    JSON = "json"
    NDJSON = "ndjson"
    LOG = "log"
    STACKTRACE = "stacktrace"
    CODE = "code"
    DIFF = "diff"
    HTML = "html"
    TABLE = "table"
    SEARCH = "search"
    TEXT = "text"


class CompressionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How hard to compress. Immutable, hashable: it is part of every cache key.

    - ``min_tokens``: below this size only lossless compaction (compact JSON / TOON) may run.
    - ``lossless_min_tokens``: content below this size is left alone altogether.
    - ``min_saving``: a lossy result saving less than this fraction of the input is discarded
      ("compression not justified") and the input is sent as it was.
    - ``lossless_min_saving_tokens``: a lossless result is kept when it saves at least this many
      tokens (nothing is lost, and the saving repeats on every later turn).
    - ``lossy_threshold_tokens``: lossy methods run only above this size; below it only
      lossless ones (compact JSON / TOON).
    - ``budget_tokens``: the size lossy methods aim for.
    - ``max_string_chars``: JSON string values longer than this are shortened (lossy).
    - ``max_input_chars``: content longer than this is passed through untouched (counting and
      compressing it would cost more than it saves; its token count is then an estimate).
    - ``tool_policies``: per tool name, ``never`` / ``lossless-only`` / ``auto``;
      ``default_policy`` for every other tool.
    - ``text_observations``: ``auto`` compresses command output that a text-mode agent sends
      back as a user message like a tool output (the proxy recognises it, see
      ``proxy.stages.observations``); ``never`` leaves every user message alone.
    - ``marker_ids``: lossy markers carry the content id of the original
      (``[nocp omitted: ...; id=3f9a1c0b2e]``) so that it can be fetched back; the result's
      ``ref`` is that id, keyed with ``marker_key``. Both set by the proxy when retrieval is on
      (the key is its server secret), never from the ``compression`` settings.
    """

    min_tokens: int = 500
    lossless_min_tokens: int = 10
    min_saving: float = 0.05
    lossless_min_saving_tokens: int = 3
    lossy_threshold_tokens: int = 2000
    budget_tokens: int = 1500
    max_string_chars: int = 2000
    max_input_chars: int = 1_000_000
    default_policy: ToolPolicy = ToolPolicy.AUTO
    tool_policies: dict[str, ToolPolicy] = msgspec.field(default_factory=dict)
    text_observations: Literal["auto", "never"] = "auto"
    marker_ids: bool = False
    marker_key: str = ""

    def policy_for(self, tool_name: str | None) -> ToolPolicy:
        """The policy for ``tool_name`` (the default policy when it has none of its own)."""
        if tool_name is None:
            return self.default_policy
        return self.tool_policies.get(tool_name, self.default_policy)


class CompressionContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a compressor may know about where the content sits.

    - ``model``: picks the tokenizer.
    - ``query``: the latest user message, used by query-aware selection.
    - ``tool_name`` / ``tool_args``: the tool call that produced the content.
    """

    model: str = "gpt-4o"
    query: str = ""
    tool_name: str | None = None
    tool_args: str = ""


class Compressed(msgspec.Struct, frozen=True, kw_only=True):
    """What one content-type compressor returns before the shared rules are applied."""

    text: str
    method: str
    lossless: bool
    omitted: tuple[str, ...] = ()


class CompressionResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :func:`compressors.compress`.

    ``text`` is what to send (the input itself when ``method == "none"``); ``tokens_after``
    is never larger than ``tokens_before``. ``omitted`` describes every lossy cut. ``ref`` is
    the content id the markers carry (a lossy result under ``marker_ids``), else None.
    """

    text: str
    tokens_before: int
    tokens_after: int
    method: str
    lossless: bool
    content_type: ContentType
    omitted: tuple[str, ...] = ()
    skipped_reason: str | None = None
    ref: str | None = None

    @property
    def changed(self) -> bool:
        """True when ``text`` differs from the input."""
        return self.method != "none"
