"""CSV, TSV and markdown tables: keep the header and the rows that matter, describe the rest.

The table is parsed (markdown pipes, or :mod:`csv` with the delimiter ``\\t``, ``,``, ``;``
or ``|`` that the header line uses most); rows keep their original text. Lines before a
markdown table (a caption) stay.

Always kept: the header (and the markdown ``|---|`` line), the first :data:`HEAD_ROWS` and
the last :data:`TAIL_ROWS` rows. Then, within ``cfg.budget_tokens``: rows holding a hard
token of the query, rows with error-ish values (``error``, ``failed``, ``exception``,
``timeout``, ``denied``, ``invalid``, ``NaN``, HTTP 4xx/5xx codes in a status column ...),
rows matching the query's words (BM25), then the others from the top.

Each gap leaves a marker with the row numbers it covers (1 = first data row), and a last
marker gives the row count and, per column, the range of numeric columns
(``latency_ms 3..1870``), the counts of columns with few values (``status {ok: 812,
error: 3}``) or the number of distinct values.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from typing import Final

from compressors._select import MARKER_COST, Query, bm25_texts, mention_budget, render, select, token_costs
from compressors._types import Compressed, CompressionConfig, CompressionContext
from compressors.markers import omitted_marker

__all__ = ["HEAD_ROWS", "TAIL_ROWS", "column_summary", "compress_table"]

HEAD_ROWS: Final = 3
TAIL_ROWS: Final = 2
_MAX_SUMMARY_COLUMNS: Final = 16
_MAX_VALUE_CHARS: Final = 24
_FEW_VALUES: Final = 5
_ERRORISH: Final = re.compile(
    r"(?i:\b(?:error|errors|err|fail|failed|failure|exception|fatal|critical|timeout|timed out|denied"
    r"|refused|invalid|panic|crash|crashed|aborted|rejected|unhealthy|down|nan)\b)"
)
_STATUS_ERROR: Final = re.compile(r"[45]\d\d")
_NUMBER: Final = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_MD_SEPARATOR: Final = re.compile(r"\s*\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?\s*$")


class _Table:
    """Parsed rows: ``pieces`` is the text of the preamble/header piece(s) then each row."""

    def __init__(self, pieces: list[str], header_pieces: int, columns: list[str], rows: list[list[str]]):
        self.pieces = pieces
        self.header_pieces = header_pieces
        self.columns = columns
        self.rows = rows


def _split_md(line: str) -> list[str]:
    inner = line.strip()
    if inner.startswith("|"):
        inner = inner[1:]
    if inner.endswith("|"):
        inner = inner[:-1]
    return [c.strip() for c in inner.split("|")]


def _parse_markdown(lines: list[str]) -> _Table | None:
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    if start is None or start + 1 >= len(lines) or not _MD_SEPARATOR.match(lines[start + 1]):
        return None
    end = start + 2
    while end < len(lines) and lines[end].lstrip().startswith("|"):
        end += 1
    pieces = ["\n".join(lines[: start + 2]), *lines[start + 2 : end]]
    rows = [_split_md(line) for line in lines[start + 2 : end]]
    if end < len(lines):
        pieces[-1] = "\n".join([pieces[-1], *lines[end:]])
    return _Table(pieces, 1, _split_md(lines[start]), rows)


def _parse_delimited(text: str, lines: list[str]) -> _Table | None:
    header = lines[0]
    counts = {d: header.count(d) for d in ("\t", ",", ";", "|")}
    delimiter = max(counts, key=lambda d: (counts[d], -("\t,;|".index(d))))
    if not counts[delimiter]:
        return None
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    records: list[list[str]] = []
    spans: list[tuple[int, int]] = []
    prev = 0
    try:
        for record in reader:
            records.append(record)
            spans.append((prev, reader.line_num))
            prev = reader.line_num
    except csv.Error:
        return None
    if len(records) < 2:
        return None
    pieces = ["\n".join(lines[a:b]) for a, b in spans]
    if prev < len(lines):
        pieces[-1] = "\n".join([pieces[-1], *lines[prev:]])
    return _Table(pieces, 1, records[0], records[1:])


def _as_number(value: str) -> float | None:
    if len(value) > 40 or not _NUMBER.fullmatch(value):
        return None
    return float(value)


def _short(value: str) -> str:
    return value if len(value) <= _MAX_VALUE_CHARS else value[: _MAX_VALUE_CHARS - 3] + "..."


def column_summary(columns: list[str], rows: list[list[str]]) -> str:
    """Per column: ``name lo..hi`` (numeric), ``name {a: 3, b: 1}`` (few values) or
    ``name N distinct``; at most :data:`_MAX_SUMMARY_COLUMNS` columns."""
    parts: list[str] = []
    for j, name in enumerate(columns[:_MAX_SUMMARY_COLUMNS]):
        values = [r[j] for r in rows if j < len(r) and r[j] != ""]
        label = _short(name) or f"col{j + 1}"
        if not values:
            parts.append(f"{label} empty")
            continue
        numbers = [_as_number(v) for v in values]
        if all(x is not None for x in numbers):
            pairs = sorted(zip(numbers, values, strict=True), key=lambda p: (p[0], p[1]))
            parts.append(f"{label} {pairs[0][1]}..{pairs[-1][1]}")
            continue
        counts = Counter(values)
        if len(counts) <= _FEW_VALUES:
            shown = ", ".join(
                f"{_short(v)}: {n}" for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            parts.append(f"{label} {{{shown}}}")
        else:
            parts.append(f"{label} {len(counts)} distinct")
    if len(columns) > _MAX_SUMMARY_COLUMNS:
        parts.append(f"+{len(columns) - _MAX_SUMMARY_COLUMNS} more columns")
    return "; ".join(parts)


def _errorish(row: list[str], status_cols: frozenset[int]) -> bool:
    for j, cell in enumerate(row):
        if _ERRORISH.search(cell[:200]) or (j in status_cols and _STATUS_ERROR.fullmatch(cell.strip())):
            return True
    return False


def compress_table(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """Header, first/last rows and the rows that matter within ``cfg.budget_tokens``, with
    row-range markers and a column summary; ``None`` when the table fits or nothing is gained."""
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    table = _parse_markdown(lines) or _parse_delimited(text, lines)
    if table is None or len(table.rows) <= HEAD_ROWS + TAIL_ROWS:
        return None
    pieces = table.pieces
    costs = [c + 1 for c in token_costs(pieces, ctx.model)]
    if sum(costs) <= cfg.budget_tokens:
        return None
    h = table.header_pieces
    n_rows = len(table.rows)
    columns = column_summary(table.columns, table.rows)
    summary_cost = token_costs([f"{n_rows} of {n_rows} rows; columns: {columns}"], ctx.model)[0] + MARKER_COST
    query = Query(ctx)
    status_cols = frozenset(
        j for j, c in enumerate(table.columns) if "status" in c.lower() or "code" in c.lower()
    )
    scores = [0.0] * h + bm25_texts(pieces[h:], query.terms)
    must = [i < h + HEAD_ROWS or i >= len(pieces) - TAIL_ROWS for i in range(len(pieces))]
    priority: list[tuple[float, ...]] = []
    for i, piece in enumerate(pieces):
        if i < h:
            priority.append((0.0, 0.0, 0.0))
        elif query.hard_hits(piece):
            priority.append((1.0, -scores[i], float(i)))
        elif _errorish(table.rows[i - h], status_cols):
            priority.append((2.0, -scores[i], float(i)))
        elif scores[i] > 0:
            priority.append((3.0, -scores[i], float(i)))
        else:
            priority.append((4.0, 0.0, float(i)))
    budget, mention_chars = mention_budget(cfg.budget_tokens - summary_cost)
    keep = select(costs, priority, budget, must)
    if all(keep):
        return None

    def describe(start: int, end: int) -> str:
        first, last = start - h + 1, end - h
        return f"row {first}" if first == last else f"rows {first}-{last} ({last - first + 1} rows)"

    body, omitted = render(pieces, keep, describe, mention_chars=mention_chars)
    kept_rows = sum(keep[h:])
    summary = f"{n_rows - kept_rows} of {n_rows} rows; columns: {columns}"
    body = f"{body}\n{omitted_marker(summary)}"
    if len(body) >= len(text):
        return None
    return Compressed(text=body, method="table-rows", lossless=False, omitted=(*omitted, summary))
