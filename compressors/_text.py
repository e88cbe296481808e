"""Search/RAG results and long plain text or markdown: keep the chunks the query asks about.

1. The text is cut into *units* whose concatenation is exactly the input: its lines, and
   lines longer than a chunk are cut further at sentence ends (or, failing that, at spaces,
   or hard at the size limit), so a 20 MB single line is still handled in linear time.
2. Units are grouped into *chunks*: a chunk ends at a blank line and before a markdown
   heading, a numbered search result (``1.``, ``[2]``, ``Result 3``), a ``---`` rule or a
   grep line (``path:12:``) of another file than the line before, and
   once it reaches about a quarter of the budget. A chunk of a few words (a lone heading)
   is joined to the next one.
3. Each chunk is scored against the query (``ctx.query`` + ``ctx.tool_args``) with BM25,
   plus a bonus for every hard token of the query it holds (an id or path the user named;
   those of the tool arguments count double) and one if it holds an error, warning or
   exception line. Repeats are discounted: a hard token counts only for the best chunk
   holding it (outputs often show the same block twice).
4. The first chunk (the header) is always kept; then chunks by score, and chunks that score
   nothing nearest the start first, while the total stays within ``cfg.budget_tokens``.
   The kept chunks are written in their original order, with one marker per gap naming the
   chunk and line numbers it covers, the headings it held and (within a small share of the
   budget) the hard tokens it held that the kept text lacks.
"""

from __future__ import annotations

import bisect
import itertools
import re
from typing import Final

from compressors._logtext import IMPORTANT_HINT, is_important_line
from compressors._select import MARKER_COST, Query, bm25_texts, mention_budget, render, select, token_costs
from compressors._types import Compressed, CompressionConfig, CompressionContext

__all__ = ["chunk_text", "compress_text"]

# A chunk may hold this many characters per budget token / 4 (about a quarter of the budget).
_CHUNK_FRACTION: Final = 4
_MIN_CHUNK_CHARS: Final = 200
_TINY_CHUNK_CHARS: Final = 60
# Extra score for each hard token of the query a chunk holds (BM25 scores are about 0-10).
_HARD_BONUS: Final = 3.0
# Extra score for a chunk holding an error/warning/exception line (see compressors._logtext).
_ERROR_BONUS: Final = 4.0
_SCAN_CHARS: Final = 2000

_HEADING: Final = re.compile(r"#{1,6} \S")
_RESULT_START: Final = re.compile(
    r"\s{0,3}(?:\d{1,3}[.)]\s|\[\d{1,3}\]\s|(?i:result|hit|document|doc|source|passage)\s*#?\d{1,4}\b)"
)
_RULE: Final = re.compile(r"\s{0,3}(?:-{3,}|\*{3,}|_{3,}|={3,})\s*$")
_GREP_LINE: Final = re.compile(r"([^\s:]{1,300}):\d+:")
_SENTENCE_END: Final = re.compile(r"[.!?;][\"')\]]?\s+")


def _cut_long(line: str, max_chars: int) -> list[str]:
    """Cut one long line into pieces of at most ``max_chars`` at sentence ends, else at a
    space, else hard; the pieces concatenate to ``line``."""
    pieces: list[str] = []
    start = 0
    n = len(line)
    while n - start > max_chars:
        limit = start + max_chars
        cut = -1
        for m in _SENTENCE_END.finditer(line, start + max_chars // 4, limit):
            cut = m.end()
        if cut <= start:
            space = line.rfind(" ", start + max_chars // 4, limit)
            cut = space + 1 if space > start else limit
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return pieces


def _lines(text: str) -> list[str]:
    """The lines of ``text`` with their ``\\n`` (only ``\\n`` ends a line)."""
    lines = [f"{line}\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return lines


def _starts_chunk(unit: str) -> bool:
    return bool(_HEADING.match(unit) or _RESULT_START.match(unit) or _RULE.match(unit))


def chunk_text(text: str, max_chars: int) -> list[list[str]]:
    """Chunks of ``text`` as lists of units; joining all units of all chunks gives ``text``."""
    units: list[str] = []
    for line in _lines(text):
        if len(line) > max_chars:
            units.extend(_cut_long(line, max_chars))
        else:
            units.append(line)
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    source: str | None = None
    for unit in units:
        blank = not unit.strip()
        grep = _GREP_LINE.match(unit)
        new_source = grep is not None and grep.group(1) != source
        source = grep.group(1) if grep else None
        if current and not blank and (new_source or _starts_chunk(unit) or size + len(unit) > max_chars):
            chunks.append(current)
            current, size = [], 0
        current.append(unit)
        size += len(unit)
        if blank and size > _TINY_CHUNK_CHARS:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    merged: list[list[str]] = []
    carry: list[str] = []
    for chunk in chunks:
        chunk = carry + chunk
        carry = []
        if sum(len(u) for u in chunk) < _TINY_CHUNK_CHARS:
            carry = chunk
        else:
            merged.append(chunk)
    if carry:
        if merged:
            merged[-1].extend(carry)
        else:
            merged.append(carry)
    return merged


def _has_important_line(chunk: list[str]) -> bool:
    return any(is_important_line(unit[:_SCAN_CHARS]) for unit in chunk)


def _important_chunks(chunks: list[list[str]]) -> list[bool]:
    """``[_has_important_line(c) for c in chunks]``, with the cheap pre-check of
    :func:`~compressors._logtext.is_important_line` made in one pass over the whole lower-cased
    text: only the units it flags are checked one by one."""
    units = [unit for chunk in chunks for unit in chunk]
    whole = "".join(units)
    low = whole.lower()
    if len(low) != len(whole):  # a character grew when lowered: positions would not match
        return [_has_important_line(c) for c in chunks]
    starts = list(itertools.accumulate(map(len, units), initial=0))
    flagged: set[int] = set()
    pos = 0
    while (m := IMPORTANT_HINT.search(low, pos)) is not None:
        i = bisect.bisect_right(starts, m.start()) - 1
        flagged.add(i)
        pos = starts[i + 1]  # units are joined without a separator: a match may run into the
        # next unit and hide a hint starting there, so the next unit is searched from its start
    out: list[bool] = []
    u = 0
    for chunk in chunks:
        end = u + len(chunk)
        out.append(any(is_important_line(units[i][:_SCAN_CHARS]) for i in range(u, end) if i in flagged))
        u = end
    return out


def _heading_of(chunk: list[str]) -> str | None:
    for unit in chunk:
        stripped = unit.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()[:40]
        if stripped:
            return None
    return None


def _scores(pieces: list[str], chunks: list[list[str]], query: Query) -> list[float]:
    """BM25 + bonuses per chunk, with diversity: ranked by that score, a chunk's hard-token
    bonus counts only the query tokens no better chunk holds, and a chunk whose hits are all
    held by better chunks keeps half its BM25 (agent outputs often repeat a block, e.g. the
    edited and the original view of the same lines)."""
    base = bm25_texts(pieces, query.terms)
    hits = [query.hits(p) for p in pieces]
    errors = [_ERROR_BONUS if important else 0.0 for important in _important_chunks(chunks)]
    first = [
        b + _HARD_BONUS * (len(h) + len(h & query.args_hard)) + e
        for b, h, e in zip(base, hits, errors, strict=True)
    ]
    covered: set[str] = set()
    scores = list(first)
    for i in sorted(range(len(pieces)), key=lambda i: (-first[i], i)):
        new = hits[i] - covered
        covered |= hits[i]
        damp = 0.5 if hits[i] and not new else 1.0
        scores[i] = base[i] * damp + _HARD_BONUS * (len(new) + len(new & query.args_hard)) + errors[i]
    return scores


def compress_text(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """Keep the header and the chunks most relevant to the query within
    ``cfg.budget_tokens``, in original order, with a marker per gap; ``None`` when the text
    already fits or nothing is gained."""
    max_chars = max(_MIN_CHUNK_CHARS, cfg.budget_tokens * _CHUNK_FRACTION // 4)
    chunks = chunk_text(text, max_chars)
    if len(chunks) < 2:
        return None
    pieces = ["".join(c) for c in chunks]
    costs = token_costs(pieces, ctx.model)
    if sum(costs) <= cfg.budget_tokens:
        return None
    query = Query(ctx)
    scores = _scores(pieces, chunks, query)
    priority = [(0.0 if s > 0 else 1.0, -s, float(i)) for i, s in enumerate(scores)]
    must = [i == 0 for i in range(len(pieces))]
    budget, mention_chars = mention_budget(cfg.budget_tokens)
    keep = select(costs, priority, budget - MARKER_COST, must)
    if all(keep):
        return None

    starts: list[int] = []
    line = 1
    for p in pieces:
        starts.append(line)
        line += p.count("\n")

    def describe(start: int, end: int) -> str:
        first = starts[start]
        last = starts[end - 1] + pieces[end - 1].rstrip("\n").count("\n")
        what = f"chunk {start + 1}" if end - start == 1 else f"chunks {start + 1}-{end}"
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        desc = f"{what} of {len(pieces)} ({where}, {sum(costs[start:end])} tokens)"
        headings = [h for h in (_heading_of(chunks[i]) for i in range(start, end)) if h]
        if headings:
            shown = "; ".join(headings[:3]) + ("; ..." if len(headings) > 3 else "")
            desc += f"; sections: {shown}"
        return desc

    body, omitted = render(pieces, keep, describe, sep="", mention_chars=mention_chars)
    if len(body) >= len(text):
        return None
    method = "text-bm25" if query else "text-head"
    return Compressed(text=body, method=method, lossless=False, omitted=omitted)
