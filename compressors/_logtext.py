"""Logs and stack traces: collapse repeated lines into counted templates, then trim to budget.

1. Every line is *masked*: timestamps, UUIDs, IPv4 addresses, hex ids and numbers become
   ``<TS>``, ``<UUID>``, ``<IP>``, ``<HEX>``, ``<N>``. Lines whose masked forms have the same
   number of space-separated fields and the same first field, and differ in at most a quarter
   of the fields, share one template (differing fields become ``<*>``).
2. A template seen more than once is written once, where it first occurs, as
   ``[x37] Connection closed by <IP> port <N> (first: 10.0.0.1 22; last: 10.0.0.9 4411)``: the
   first and last occurrences' real values stay visible. One marker line says how many lines
   were collapsed.
3. If that is still above ``cfg.budget_tokens``, entries are dropped: the first and last lines,
   error/warning/exception/stack-frame lines and lines holding a hard token of the query are
   always kept; then templates and lines that match the query (BM25), then the rest nearest
   to either end. Each gap leaves a marker with the original line numbers it covers.

Lines longer than :data:`MAX_LINE_CHARS` are clipped first (with a marker). Every regex here
is anchored at word boundaries with no nested quantifiers, so the work is linear.
"""

from __future__ import annotations

import re
from typing import Final

from compressors._select import (
    MARKER_COST,
    Query,
    bm25_texts,
    clip,
    mention_budget,
    render,
    select,
    token_costs,
)
from compressors._types import Compressed, CompressionConfig, CompressionContext
from compressors.markers import omitted_marker

__all__ = ["IMPORTANT_HINT", "compress_logs", "is_important_line", "mask_line"]

MAX_LINE_CHARS: Final = 2000
# Per bucket (same field count and first field), at most this many templates are compared
# with a new line: a pathological log cannot make grouping quadratic.
_MAX_TEMPLATES_PER_BUCKET: Final = 32
_WILDCARD: Final = "<*>"
# A template lists all the distinct values of its lines when they fit in this many characters,
# else the first and the last line's values.
_MAX_VALUES_CHARS: Final = 160

_MASK: Final = re.compile(
    r"(?P<TS>\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\b\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?)"
    r"|(?P<UUID>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
    r"|(?P<IP>\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b)"
    r"|(?P<HEX>\b0[xX][0-9a-fA-F]+\b|\b[0-9a-fA-F]*[0-9][0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*\b"
    r"|\b[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*[0-9][0-9a-fA-F]*\b)"
    r"|(?P<N>\b\d+(?:\.\d+)*\b)"
)
# An important line: one of these words anywhere (any case), or a stack frame, caret line or
# exception at its start. Two patterns (a search for the words, a match at the start for the
# rest) find the same lines as one alternation, faster; the lookahead (implied by the words)
# lets the search skip most positions at once.
_IMPORTANT_WORD: Final = re.compile(
    r"(?i:\b(?=[acdefkoprstw])(?:error|errors|err|exception|traceback|fatal|fail|failed|failure"
    r"|failures|panic|warn|warning|warnings|critical|severe|caused by|denied|refused|timeout"
    r"|timed out|abort|aborted|segmentation fault|killed|oom|assert|assertion)\b)"
)
_IMPORTANT_START: Final = re.compile(
    r"\s+at [\w.$<>/]+\(|\s*File \"|\s*\^+\s*$|[A-Z]\w*(?:Error|Exception|Warning)\b"
)


_IMPORTANT_HINTS: Final = (
    "err",
    "exception",
    "traceback",
    "fatal",
    "fail",
    "panic",
    "warn",
    "critical",
    "severe",
    "caused by",
    "denied",
    "refused",
    "time",
    "abort",
    "segmentation",
    "killed",
    "oom",
    "assert",
    "at ",
    'file "',
    "^",
)


def mask_line(line: str) -> tuple[str, list[str]]:
    """The template of ``line`` (variable parts replaced by ``<TS>``, ``<UUID>``, ``<IP>``,
    ``<HEX>``, ``<N>``) and the values that were replaced, in order."""
    values: list[str] = []

    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        kind = m.lastgroup or "N"
        if kind == "HEX" and len(text) < 7 and not text.lower().startswith("0x"):
            # short hex-looking words ("a1", "be3f") are words, unless they are plain numbers
            if not text.isdigit():
                return text
            kind = "N"
        values.append(text)
        return f"<{kind}>"

    return _MASK.sub(repl, line), values


# One pass finding any of the hints (21 substring tests cost 21 passes over the line).
IMPORTANT_HINT: Final = re.compile("|".join(map(re.escape, _IMPORTANT_HINTS)))


def is_important_line(line: str) -> bool:
    """Error, warning, exception, failure and stack-frame lines: never dropped. (A pre-check
    for any of :data:`_IMPORTANT_HINTS` in the lower-cased line rejects most lines before the
    slower regex runs.)"""
    if IMPORTANT_HINT.search(line.lower()) is None:
        return False
    return _IMPORTANT_START.match(line) is not None or _IMPORTANT_WORD.search(line) is not None


class _Group:
    """Lines that share one template: ``fields`` has ``<*>`` where they differ."""

    __slots__ = ("fields", "lines")

    def __init__(self, index: int, fields: list[str]) -> None:
        self.fields = fields
        self.lines = [index]

    @property
    def first(self) -> int:
        return self.lines[0]

    def values(self, line: str) -> str:
        """The variable parts of one of its lines: masked values, then ``<*>`` fields."""
        masked, values = mask_line(line)
        if len(self.lines) > 1 and _WILDCARD in self.fields:
            fields = masked.split(" ")
            values.extend(f for f, t in zip(fields, self.fields, strict=True) if t == _WILDCARD)
        return " ".join(values)


def _differing(fields: list[str], template: list[str], limit: int) -> list[int] | None:
    """Positions where ``fields`` differ from ``template`` (``<*>`` matches anything), or None
    when the template would end up with more than ``limit`` wildcards."""
    wild = 0
    diff: list[int] = []
    for j, (a, b) in enumerate(zip(fields, template, strict=True)):
        if b == _WILDCARD:
            wild += 1
        elif a != b:
            diff.append(j)
        if wild + len(diff) > limit:
            return None
    return diff


def _group_lines(lines: list[str], query: Query) -> list[_Group]:
    """Group lines by template, in order of first occurrence. A line holding a hard token of
    the query stays on its own, verbatim."""
    groups: list[_Group] = []
    buckets: dict[tuple[int, str], list[_Group]] = {}
    exact: dict[str, _Group] = {}
    for i, line in enumerate(lines):
        if query.hard_hits(line):
            groups.append(_Group(i, [line]))
            continue
        masked, _ = mask_line(line)
        group = exact.get(masked)
        if group is not None:
            group.lines.append(i)
            continue
        fields = masked.split(" ")
        bucket = buckets.setdefault((len(fields), fields[0]), [])
        limit = len(fields) // 4
        if limit:
            for cand in bucket:
                diff = _differing(fields, cand.fields, limit)
                if diff is not None:
                    for j in diff:
                        cand.fields[j] = _WILDCARD
                    cand.lines.append(i)
                    group = cand
                    break
        if group is None:
            group = _Group(i, fields)
            groups.append(group)
            if len(bucket) < _MAX_TEMPLATES_PER_BUCKET:
                bucket.append(group)
        exact[masked] = group
    return groups


def _render_group(group: _Group, lines: list[str]) -> str:
    count = len(group.lines)
    if count == 1:
        return lines[group.first]
    template = " ".join(group.fields)
    values = list(dict.fromkeys(group.values(lines[i]) for i in group.lines))
    if values == [""]:
        return f"[x{count}] {template}"
    listed = " | ".join(values)
    if len(listed) <= _MAX_VALUES_CHARS:
        return f"[x{count}] {template} (values: {listed})"
    return f"[x{count}] {template} (first: {values[0]}; last: {group.values(lines[group.lines[-1]])})"


def compress_logs(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """Collapse repeated log lines into counted templates and keep errors, the first and last
    lines and query matches within ``cfg.budget_tokens``; ``None`` when nothing is gained."""
    raw_lines = text.split("\n")
    lines = [clip(line, MAX_LINE_CHARS) for line in raw_lines]
    clipped = sum(1 for a, b in zip(raw_lines, lines, strict=True) if a is not b)
    query = Query(ctx)
    groups = _group_lines(lines, query)
    entries = [_render_group(g, lines) for g in groups]
    collapsed = sum(len(g.lines) - 1 for g in groups)
    notes: list[str] = []
    if collapsed:
        repeated = [g for g in groups if len(g.lines) > 1]
        count = sum(len(g.lines) for g in repeated)
        noun = "template" if len(repeated) == 1 else "templates"
        notes.append(f"{count} repeated lines collapsed into {len(repeated)} [xN] {noun}")
    if clipped:
        notes.append(f"{clipped} lines longer than {MAX_LINE_CHARS} characters clipped")

    costs = token_costs(entries, ctx.model)
    trailer_cost = MARKER_COST if notes else 0
    gap_notes: tuple[str, ...] = ()
    if sum(costs) + len(costs) + trailer_cost > cfg.budget_tokens:
        budget, mention_chars = mention_budget(cfg.budget_tokens - trailer_cost)
        keep = _fit(groups, entries, lines, costs, query, budget)
        body, gap_notes = render(entries, keep, _GapDescriber(groups), mention_chars=mention_chars)
    else:
        body = "\n".join(entries)
    if not notes and not gap_notes:
        return None
    if notes:
        body = f"{body}\n{omitted_marker('; '.join(notes))}"
    if len(body) >= len(text):
        return None
    return Compressed(text=body, method="log-templates", lossless=False, omitted=(*gap_notes, *notes))


def _fit(
    groups: list[_Group],
    entries: list[str],
    lines: list[str],
    costs: list[int],
    query: Query,
    budget: int,
) -> list[bool]:
    n = len(entries)
    must = [False] * n
    must[0] = must[-1] = True
    last_line = len(lines) - 1
    for i, g in enumerate(groups):
        if g.lines[-1] == last_line or is_important_line(entries[i]) or query.hard_hits(entries[i]):
            must[i] = True
    scores = bm25_texts(entries, query.terms)
    priority: list[tuple[float, ...]] = []
    for i, g in enumerate(groups):
        tier = 0 if scores[i] > 0 else (1 if len(g.lines) > 1 else 2)
        priority.append((tier, -scores[i], min(i, n - 1 - i)))
    return select([c + 1 for c in costs], priority, budget, must)


class _GapDescriber:
    """Describes a run of dropped entries by the original line numbers they cover."""

    def __init__(self, groups: list[_Group]) -> None:
        self._groups = groups

    def __call__(self, start: int, end: int) -> str:
        span = self._groups[start:end]
        first = span[0].first + 1
        last = max(g.lines[-1] for g in span) + 1
        count = sum(len(g.lines) for g in span)
        noun = "line" if count == 1 else "lines"
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        return f"{where}: {count} log {noun}"
