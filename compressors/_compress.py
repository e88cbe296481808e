"""The one dispatcher: :func:`compress` applies the shared rules once for every compressor.

In order:

1. Content longer than ``cfg.max_input_chars`` passes through (``too_large``); its token
   count is then estimated from an exactly counted prefix.
2. Policy ``never`` for the tool: untouched (``policy_never``).
3. Fewer than ``cfg.lossless_min_tokens`` tokens: untouched (``below_min_tokens``). From
   there up to ``cfg.min_tokens`` only the lossless compressors run (compact JSON / TOON);
   content of a type without one stays untouched (``below_min_tokens``).
4. :func:`~compressors._detect.detect` picks a route. The lossless compressor of the route
   runs first (JSON, NDJSON). Content that turns out not to be of the detected type
   (:class:`WrongContentType`: malformed or too deeply nested JSON) is re-detected without
   JSON and takes that route instead.
5. The lossy compressor runs only with policy ``auto``, when the input is at least
   ``cfg.min_tokens`` and above ``cfg.lossy_threshold_tokens``, and the lossless result (if
   any) is still above ``cfg.budget_tokens``. A lossy result must carry an omission marker,
   and replaces the lossless one only if it saves at least ``cfg.min_saving`` of the lossless
   size. With ``cfg.marker_ids`` its markers carry the content id of the input
   (``result.ref``).
6. The chosen candidate must save something, and enough: a lossy one at least
   ``cfg.min_saving`` of the input, a lossless one at least ``cfg.lossless_min_saving_tokens``
   tokens (nothing is lost, the bytes are the same on every turn, and the saving repeats on
   every later turn). Otherwise the input goes out as it was (``not_justified``); a
   compressor with nothing to offer gives ``no_gain``.
7. Any exception inside a compressor: the input goes out as it was, ``skipped_reason`` names
   the error. :func:`compress` never raises on bad input.

Results are cached in a bounded LRU keyed by a digest of the content, the context and the
config, so the next turn of the same agent pays one hash per tool output. Equal inputs give
byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

import msgspec

from compressors import tokens
from compressors._code import compress_code, compress_diff
from compressors._detect import SAMPLE_CHARS, detect, detect_non_json
from compressors._html import compress_html
from compressors._json import compress_json, compress_ndjson
from compressors._json_lossy import compress_json_lossy, compress_ndjson_lossy
from compressors._logtext import compress_logs
from compressors._select import clear_memo
from compressors._table import compress_table
from compressors._text import compress_text
from compressors._types import (
    Compressed,
    CompressionConfig,
    CompressionContext,
    CompressionResult,
    ContentType,
    ToolPolicy,
)
from compressors.exceptions import CompressionFailed, WrongContentType
from compressors.markers import MARKER_PREFIX, content_id, marker_id

__all__ = [
    "CACHE_MAX_CHARS",
    "CACHE_MAX_ENTRIES",
    "cache_stats",
    "cached",
    "clear_cache",
    "compress",
    "remember",
]

CompressorFn = Callable[[str, CompressionContext, CompressionConfig], Compressed | None]

# skipped_reason values (an error is reported as "error: <ExceptionType>: <message>")
TOO_LARGE: Final = "too_large"
POLICY_NEVER: Final = "policy_never"
BELOW_MIN_TOKENS: Final = "below_min_tokens"
NO_GAIN: Final = "no_gain"
NOT_JUSTIFIED: Final = "not_justified"

_ERROR_CHARS: Final = 200


class Route(NamedTuple):
    """The compressors for one content type: lossless (always allowed) and lossy."""

    lossless: CompressorFn | None
    lossy: CompressorFn | None


ROUTES: Final[Mapping[ContentType, Route]] = {
    ContentType.JSON: Route(compress_json, compress_json_lossy),
    ContentType.NDJSON: Route(compress_ndjson, compress_ndjson_lossy),
    ContentType.LOG: Route(None, compress_logs),
    ContentType.STACKTRACE: Route(None, compress_logs),
    ContentType.CODE: Route(None, compress_code),
    ContentType.DIFF: Route(None, compress_diff),
    ContentType.HTML: Route(None, compress_html),
    ContentType.TABLE: Route(None, compress_table),
    ContentType.SEARCH: Route(None, compress_text),
    ContentType.TEXT: Route(None, compress_text),
}


# --- cache --------------------------------------------------------------------------------

CACHE_MAX_ENTRIES: Final = 4096
CACHE_MAX_CHARS: Final = 64_000_000  # of compressed texts held; untouched results hold none

_Key = tuple[bytes, CompressionContext, bytes]


class _ResultCache:
    """Bounded LRU of results. An untouched result is stored without its text (the caller
    supplies the content again), so the cache never pins large inputs."""

    def __init__(self, max_entries: int, max_chars: int) -> None:
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._data: OrderedDict[_Key, CompressionResult] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: _Key) -> CompressionResult | None:
        with self._lock:
            result = self._data.get(key)
            if result is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return result

    def peek(self, key: _Key) -> CompressionResult | None:
        """Like :meth:`get`, without counting a hit or a miss."""
        with self._lock:
            result = self._data.get(key)
            if result is not None:
                self._data.move_to_end(key)
            return result

    def put(self, key: _Key, result: CompressionResult) -> None:
        stored = result if result.changed else msgspec.structs.replace(result, text="")
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._chars -= len(old.text)
            self._data[key] = stored
            self._chars += len(stored.text)
            while self._data and (len(self._data) > self._max_entries or self._chars > self._max_chars):
                _, evicted = self._data.popitem(last=False)
                self._chars -= len(evicted.text)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._chars = 0
            self.hits = 0
            self.misses = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._data),
                "chars": self._chars,
                "hits": self.hits,
                "misses": self.misses,
            }


_cache = _ResultCache(CACHE_MAX_ENTRIES, CACHE_MAX_CHARS)


def clear_cache() -> None:
    """Forget every cached result and what the compressors remember between calls (run
    classifications, word stems), for benchmarks measuring cold runs and for tests."""
    _cache.clear()
    clear_memo()


def cache_stats() -> dict[str, int]:
    """Entries, characters held, hits and misses of the result cache."""
    return _cache.stats()


def _key(content: str, ctx: CompressionContext, cfg: CompressionConfig) -> _Key:
    digest = hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return digest, ctx, msgspec.json.encode(cfg, order="deterministic")


# --- the dispatcher -----------------------------------------------------------------------


def compress(content: str, ctx: CompressionContext, cfg: CompressionConfig) -> CompressionResult:
    """Compress one tool output under the shared rules (see the module docstring). Pure,
    deterministic and cached; never raises on bad input. (Only a broken installation can make
    it raise: :class:`~compressors.exceptions.TokenizerUnavailable` when the bundled BPE
    tables are missing.)"""
    key = _key(content, ctx, cfg)
    cached = _cache.get(key)
    if cached is not None:
        return cached if cached.changed else msgspec.structs.replace(cached, text=content)
    result = _compress(content, ctx, cfg)
    _cache.put(key, result)
    return result


def cached(content: str, ctx: CompressionContext, cfg: CompressionConfig) -> CompressionResult | None:
    """What :func:`compress` would return from its cache, or None (nothing is computed)."""
    hit = _cache.peek(_key(content, ctx, cfg))
    if hit is None:
        return None
    return hit if hit.changed else msgspec.structs.replace(hit, text=content)


def remember(
    content: str, ctx: CompressionContext, cfg: CompressionConfig, result: CompressionResult
) -> None:
    """Put a result of :func:`compress` computed elsewhere (a worker process) in the cache."""
    _cache.put(_key(content, ctx, cfg), result)


def _untouched(content: str, count: int, kind: ContentType, reason: str) -> CompressionResult:
    return CompressionResult(
        text=content,
        tokens_before=count,
        tokens_after=count,
        method="none",
        lossless=True,
        content_type=kind,
        skipped_reason=reason,
    )


def _estimate_tokens(content: str, model: str) -> int:
    """Tokens of a huge text, extrapolated from an exactly counted prefix."""
    sample = content[:SAMPLE_CHARS]
    if not sample:
        return 0
    return math.ceil(tokens.count(sample, model) * len(content) / len(sample))


def _error_reason(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {exc}"[:_ERROR_CHARS]


def _compress(content: str, ctx: CompressionContext, cfg: CompressionConfig) -> CompressionResult:
    kind = detect(content)
    if len(content) > cfg.max_input_chars:
        return _untouched(content, _estimate_tokens(content, ctx.model), kind, TOO_LARGE)
    before = tokens.count(content, ctx.model)
    policy = cfg.policy_for(ctx.tool_name)
    if policy is ToolPolicy.NEVER:
        return _untouched(content, before, kind, POLICY_NEVER)
    small = before < cfg.min_tokens  # lossless compaction only
    if before < cfg.lossless_min_tokens or (small and ROUTES[kind].lossless is None):
        return _untouched(content, before, kind, BELOW_MIN_TOKENS)
    lossy_allowed = policy is ToolPolicy.AUTO and not small and before > cfg.lossy_threshold_tokens
    try:
        kind, best = _best_candidate(content, kind, lossy_allowed, ctx, cfg)
    except Exception as exc:  # fail open: compression is only an optimisation
        return _untouched(content, before, kind, _error_reason(exc))
    if best is None:
        return _untouched(content, before, kind, BELOW_MIN_TOKENS if small else NO_GAIN)
    chosen, after = best
    if not _justified(before, after, lossless=chosen.lossless, cfg=cfg):
        return _untouched(content, before, kind, NOT_JUSTIFIED)
    return CompressionResult(
        text=chosen.text,
        tokens_before=before,
        tokens_after=after,
        method=chosen.method,
        lossless=chosen.lossless,
        content_type=kind,
        omitted=chosen.omitted,
        ref=content_id(content, cfg.marker_key) if cfg.marker_ids and not chosen.lossless else None,
    )


def _justified(before: int, after: int, *, lossless: bool, cfg: CompressionConfig) -> bool:
    """Whether a result of ``after`` tokens for an input of ``before`` is worth sending: a
    lossless one saves ``cfg.lossless_min_saving_tokens`` (at least one), a lossy one
    ``cfg.min_saving`` of the input."""
    saved = before - after
    if lossless:
        return saved >= max(1, cfg.lossless_min_saving_tokens)
    return saved > 0 and saved >= cfg.min_saving * before


def _checked(result: Compressed | None, *, lossy_allowed: bool) -> Compressed | None:
    """Enforce what every compressor promises: lossless output in the lossless slot, and an
    omission marker in every lossy output."""
    if result is None:
        return None
    if not isinstance(result.text, str):
        raise CompressionFailed(f"{result.method}: output is not text")
    if not result.lossless:
        if not lossy_allowed:
            raise CompressionFailed(f"{result.method}: lossy output where only lossless is allowed")
        if MARKER_PREFIX not in result.text:
            raise CompressionFailed(f"{result.method}: lossy output without an omission marker")
    return result


def _best_candidate(
    content: str,
    kind: ContentType,
    lossy_allowed: bool,
    ctx: CompressionContext,
    cfg: CompressionConfig,
) -> tuple[ContentType, tuple[Compressed, int] | None]:
    """The detected type (possibly corrected) and the candidate to send with its token count.

    A lossy candidate replaces the lossless one only when it saves at least ``cfg.min_saving``
    of the lossless size: information is not given up for a handful of tokens."""
    route = ROUTES[kind]
    best: tuple[Compressed, int] | None = None
    if route.lossless is not None:
        try:
            lossless = _checked(route.lossless(content, ctx, cfg), lossy_allowed=False)
        except WrongContentType:
            kind = detect_non_json(content)
            route = ROUTES[kind]
            lossless = None
        if lossless is not None:
            best = (lossless, tokens.count(lossless.text, ctx.model))
    if not lossy_allowed or route.lossy is None or (best is not None and best[1] <= cfg.budget_tokens):
        return kind, best
    with marker_id(content_id(content, cfg.marker_key) if cfg.marker_ids else None):
        lossy = _checked(route.lossy(content, ctx, cfg), lossy_allowed=True)
    if lossy is None:
        return kind, best
    lossy_tokens = tokens.count(lossy.text, ctx.model)
    if best is None or lossy_tokens <= best[1] * (1.0 - cfg.min_saving):
        best = (lossy, lossy_tokens)
    return kind, best
