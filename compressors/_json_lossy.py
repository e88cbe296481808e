"""Lossy JSON: fewer rows, no empty fields, shorter strings; every cut marked.

Runs only above ``cfg.lossy_threshold_tokens`` with policy ``auto`` (the dispatcher decides).
What it does to the parsed value, then encodes the result losslessly (compact JSON or TOON):

- **Long arrays of objects** (at least :data:`MIN_ROWS`) keep the first and last rows, rows
  that report an error (``error``/``status``/``level``/... with a failure value, HTTP status
  >= 400, non-zero exit code, ``success: false``), rows with a numeric outlier (outside
  3 IQR of a field, or a rare value of an otherwise constant field) and rows matching the query
  (BM25 over the words of ``ctx.query`` and ``ctx.tool_args`` that occur in at most half the
  rows, plus the query's hard tokens). How many rows an array keeps scales with
  ``budget_tokens / tokens_before``. One marker per array says how many rows went and
  summarises them: numeric ranges ``min..max``, dates ``first..last``, a few values with
  counts, or a count of distinct values.
- **Null and empty fields** (``null``, ``""``, ``[]``, ``{}``) are dropped; in a table of flat
  rows only columns empty in every row go, so the table stays a table. One marker counts them.
- **Strings longer than** ``cfg.max_string_chars`` keep their head and tail around an inline
  marker.

Everything is a pure function of the input: iteration follows document order, ties are broken
by position, and no set order leaks into the output.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

from compressors import tokens
from compressors._json import METHOD_NDJSON_COMPACT, METHOD_NDJSON_TOON, compact, encode_best, parse_ndjson
from compressors._select import Query, bm25, words
from compressors._types import Compressed, CompressionConfig, CompressionContext
from compressors.exceptions import CompressorError
from compressors.markers import omitted_marker

__all__ = ["MIN_ROWS", "compress_json_lossy", "compress_ndjson_lossy", "is_error_row"]

MIN_ROWS: Final = 8  # shorter arrays are left whole
MIN_KEEP: Final = 4  # rows an array keeps at the very least
MIN_EDGE: Final = 2  # first/last rows kept at least
MAX_EDGE: Final = 3  # first/last rows kept at most
SUMMARY_FIELDS: Final = 8  # informative fields described in a marker
SUMMARY_DISTINCT_FIELDS: Final = 4  # "N distinct" fields described in a marker
_CATEGORY_MAX: Final = 4  # at most this many distinct values are listed with counts
_CATEGORY_VALUE_CHARS: Final = 40
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")

_ERROR_FIELDS: Final = frozenset(
    {"error", "errors", "exception", "traceback", "stderr", "failure", "failures"}
)
_STATUS_FIELDS: Final = frozenset(
    {
        "status", "state", "level", "severity", "conclusion", "result", "outcome", "log_level",
        "loglevel", "status_text", "health", "lvl",
    }
)  # fmt: skip
_HTTP_FIELDS: Final = frozenset({"status", "status_code", "statuscode", "http_status", "code"})
_FLAG_FIELDS: Final = frozenset({"success", "ok", "passed", "succeeded"})
_EXIT_FIELDS: Final = frozenset({"exit_code", "exitcode", "returncode", "return_code", "exit_status"})
_FAILURE: Final = re.compile(
    r"\b(?:err|errors?|fail|failed|failure|failing|fatal|crit|critical|exception|panic|denied|timeout"
    r"|timed[ _-]?out|crash|crashed|abort|aborted|invalid|unauthori[sz]ed|forbidden|rejected|warn"
    r"|warning|severe|alert|emerg|emergency|unhealthy|down)\b",
    re.IGNORECASE,
)


def is_error_row(row: dict[str, Any]) -> bool:
    """True when an object reports a failure in one of its well-known fields."""
    for key, value in row.items():
        name = key.lower()
        if name in _ERROR_FIELDS and value not in (None, "", [], {}, False, 0):
            return True
        if isinstance(value, bool):
            if name in _FLAG_FIELDS and value is False:
                return True
        elif isinstance(value, str):
            if name in _STATUS_FIELDS and _FAILURE.search(value[:200]):
                return True
        elif isinstance(value, int):
            if name in _HTTP_FIELDS and 400 <= value <= 599:
                return True
            if name in _EXIT_FIELDS and value != 0:
                return True
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _outlier_rows(rows: list[dict[str, Any]], cap: int) -> list[int]:
    """Indices of rows holding a numeric outlier, most extreme first, at most ``cap``."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    scored: dict[int, float] = {}
    for key in keys:
        values = [(row[key], i) for i, row in enumerate(rows) if _is_number(row.get(key))]
        if len(values) < MIN_ROWS or len(values) < 0.5 * len(rows):
            continue
        ordered = sorted(v for v, _ in values)
        n = len(ordered)
        q1, median, q3 = ordered[n // 4], ordered[n // 2], ordered[(3 * n) // 4]
        iqr = q3 - q1
        if iqr > 0:
            for value, i in values:
                if value < q1 - 3 * iqr or value > q3 + 3 * iqr:
                    scored[i] = max(scored.get(i, 0.0), abs(value - median) / iqr)
        elif sum(1 for v, _ in values if v != median) <= max(1, n // 20):
            # an otherwise constant field: its rare other values are the outliers
            for value, i in values:
                if value != median:
                    scored[i] = math.inf
    ranked = sorted(scored, key=lambda i: (-scored[i], i))
    return ranked[:cap]


def _query_rows(rows: list[dict[str, Any]], query: Query, cap: int) -> list[int]:
    """Indices of rows matching the query, best first, at most ``cap``. Words that occur in
    more than half of the rows do not identify anything and are ignored."""
    if not query:
        return []
    texts = [compact(row) for row in rows]
    docs = [words(text) for text in texts]
    wanted = set(query.terms)
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(wanted.intersection(doc))
    terms = [t for t in query.terms if 0 < df[t] <= len(rows) / 2]
    scores = bm25(docs, terms)
    ranked: list[tuple[float, int]] = []
    for i, text in enumerate(texts):
        score = scores[i] + 10.0 * query.hard_hits(text)
        if score > 0:
            ranked.append((-score, i))
    ranked.sort()
    return [i for _, i in ranked[:cap]]


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _describe_field(key: str, values: list[Any]) -> tuple[int, str] | None:
    """(rank, text) describing the values of one field in the dropped rows; rank 0 fields
    (ranges, categories) go before rank 1 ("N distinct")."""
    present = [v for v in values if not _is_empty(v)]
    if not present:
        return None
    if all(_is_number(v) for v in present):
        lo, hi = min(present), max(present)
        return (
            0,
            f"{key} {_format_value(lo)}" if lo == hi else f"{key} {_format_value(lo)}..{_format_value(hi)}",
        )
    if all(isinstance(v, bool) for v in present) or all(isinstance(v, str) for v in present):
        counts = Counter(present)
        if len(counts) <= _CATEGORY_MAX and all(
            len(_format_value(v)) <= _CATEGORY_VALUE_CHARS for v in counts
        ):
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], _format_value(kv[0])))
            inner = ", ".join(f"{_format_value(v)}: {c}" for v, c in ordered)
            return 0, f"{key} {{{inner}}}"
        if all(isinstance(v, str) and _DATE.match(v) for v in present):
            return 0, f"{key} {min(present)}..{max(present)}"
        return 1, f"{key} {len(counts)} distinct"
    return None


def _summarise(dropped: list[dict[str, Any]]) -> str:
    keys: dict[str, None] = {}
    for row in dropped:
        keys.update(dict.fromkeys(row))
    informative: list[str] = []
    distinct: list[str] = []
    for key in keys:
        described = _describe_field(key, [row[key] for row in dropped if key in row])
        if described is None:
            continue
        rank, text = described
        (informative if rank == 0 else distinct).append(text)
    shown = informative[:SUMMARY_FIELDS] + distinct[:SUMMARY_DISTINCT_FIELDS]
    rest = len(informative) + len(distinct) - len(shown)
    if rest > 0:
        shown.append(f"+{rest} more fields")
    return ", ".join(shown)


def _child_path(path: str, key: str) -> str:
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


class _Reducer:
    """One lossy pass over a parsed value; collects the marker descriptions as it goes."""

    def __init__(self, ctx: CompressionContext, cfg: CompressionConfig, ratio: float) -> None:
        self._query = Query(ctx)
        self._max_chars = max(cfg.max_string_chars, 16)
        self._ratio = ratio
        self.row_notes: list[str] = []
        self.empty_fields = 0
        self.empty_names: dict[str, None] = {}
        self.strings_cut = 0
        self.chars_cut = 0

    def cut(self) -> bool:
        """True once anything was cut (then there are notes for :func:`_finish`)."""
        return bool(self.row_notes or self.empty_fields or self.strings_cut)

    def line_notes(self) -> list[str]:
        """Descriptions of the cuts that get a marker line of their own (rows, empty fields)."""
        out = list(self.row_notes)
        if self.empty_fields:
            names = list(self.empty_names)
            listed = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            out.append(f"{self.empty_fields} null/empty fields ({listed})")
        return out

    def inline_notes(self) -> list[str]:
        """Descriptions of the cuts marked where they happened (inside shortened strings)."""
        if not self.strings_cut:
            return []
        return [f"{self.chars_cut} chars from {self.strings_cut} long strings"]

    def reduce(self, value: Any, path: str = "$") -> Any:
        if isinstance(value, dict):
            return self._reduce_object(value, path, drop_empty=True)
        if isinstance(value, list):
            return self._reduce_array(value, path)
        if isinstance(value, str) and len(value) > self._max_chars:
            return self._shorten(value)
        return value

    def _reduce_object(self, obj: dict[str, Any], path: str, *, drop_empty: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if drop_empty and _is_empty(value):
                self._dropped_empty(key)
                continue
            out[key] = self.reduce(value, _child_path(path, key))
        return out

    def _dropped_empty(self, key: str, times: int = 1) -> None:
        self.empty_fields += times
        self.empty_names[key] = None

    def _shorten(self, text: str) -> str:
        head = (self._max_chars * 2) // 3
        tail = self._max_chars // 3
        cut = len(text) - head - tail
        self.strings_cut += 1
        self.chars_cut += cut
        return f"{text[:head]} {omitted_marker(f'{cut} chars')} {text[-tail:]}"

    def _reduce_array(self, items: list[Any], path: str) -> list[Any]:
        if not items or not all(isinstance(item, dict) for item in items):
            return [self.reduce(item, f"{path}[{i}]") for i, item in enumerate(items)]
        rows: list[dict[str, Any]] = items
        kept = self._select_rows(rows, path)
        flat = all(not isinstance(v, (dict, list)) for row in rows for v in row.values())
        empty_columns: list[str] = []
        if flat:
            columns: dict[str, None] = {}
            for row in rows:
                columns.update(dict.fromkeys(row))
            empty_columns = [c for c in columns if all(_is_empty(row.get(c)) for row in rows)]
        out: list[Any] = []
        for i in kept:
            row = rows[i]
            if flat:
                trimmed = {k: v for k, v in row.items() if k not in empty_columns}
                for key in row:
                    if key in empty_columns:
                        self._dropped_empty(key)
                out.append(self._reduce_object(trimmed, f"{path}[{i}]", drop_empty=False))
            else:
                out.append(self._reduce_object(row, f"{path}[{i}]", drop_empty=True))
        return out

    def _select_rows(self, rows: list[dict[str, Any]], path: str) -> list[int]:
        n = len(rows)
        target = max(MIN_KEEP, math.ceil(n * self._ratio))
        if n < MIN_ROWS or target >= n:
            return list(range(n))
        edge = max(MIN_EDGE, min(MAX_EDGE, target // 4))
        first = list(range(edge))
        last = list(range(n - edge, n))
        errors = [i for i, row in enumerate(rows) if is_error_row(row)][:target]
        outliers = _outlier_rows(rows, max(2, target // 4))
        matches = _query_rows(rows, self._query, target)
        keep = set(first) | set(last) | set(errors) | set(outliers) | set(matches)
        if len(keep) >= n - 1:
            return list(range(n))
        kept = sorted(keep)
        dropped = [rows[i] for i in range(n) if i not in keep]
        reasons = [f"first {edge}", f"last {edge}"]
        for label, group in (("error", errors), ("outlier", outliers), ("query-matching", matches)):
            if group:
                reasons.append(f"{len(group)} {label}")
        summary = _summarise(dropped)
        note = f"{len(dropped)} of {n} rows at {path} (kept {len(kept)}: {', '.join(reasons)})"
        self.row_notes.append(f"{note}; dropped rows: {summary}" if summary else note)
        return kept


def _ratio(encoded: str, ctx: CompressionContext, cfg: CompressionConfig) -> float:
    """How much of each long array may stay: the budget over the size of the losslessly
    encoded value (its count is usually cached: the lossless path counted the same text)."""
    return min(1.0, cfg.budget_tokens / max(tokens.count(encoded, ctx.model), 1))


def _finish(body: str, reducer: _Reducer, method: str) -> Compressed | None:
    line_notes = reducer.line_notes()
    notes = line_notes + reducer.inline_notes()
    if not notes:
        return None
    text = "\n".join([body, *(omitted_marker(note) for note in line_notes)])
    return Compressed(text=text, method=method, lossless=False, omitted=tuple(notes))


def _parse(text: str) -> Any:
    return json.loads(text)


def compress_json_lossy(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """Fewer rows, no empty fields, shorter strings; then the cheaper of compact JSON and TOON,
    followed by one marker line per cut. None when nothing was cut or ``text`` is not JSON."""
    try:
        value = _parse(text)
    except (ValueError, RecursionError):
        return None
    try:
        reducer = _Reducer(ctx, cfg, _ratio(compact(value), ctx, cfg))
        reduced = reducer.reduce(value)
        if not reducer.cut():
            return None  # nothing was cut: no lossy result (and no encoding to pay for)
        body, method = encode_best(reduced, ctx.model)
    except (ValueError, RecursionError, CompressorError):  # NaN cannot be encoded; too deep
        return None
    return _finish(body, reducer, f"json-lossy+{method}")


def _lines(values: list[Any]) -> Iterator[str]:
    for value in values:
        yield compact(value)


def compress_ndjson_lossy(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """NDJSON rows reduced like a JSON array of objects, sent as compact lines or a TOON table."""
    try:
        values = parse_ndjson(text)
    except CompressorError:
        return None
    try:
        reducer = _Reducer(ctx, cfg, _ratio("\n".join(_lines(values)), ctx, cfg))
        reduced = reducer.reduce(values)
        if not reducer.cut():
            return None
        lines = "\n".join(_lines(reduced))
        body, method = encode_best(
            reduced, ctx.model, baseline=lines, methods=(METHOD_NDJSON_COMPACT, METHOD_NDJSON_TOON)
        )
    except (ValueError, RecursionError, CompressorError):
        return None
    return _finish(body, reducer, f"ndjson-lossy+{method}")
