"""Source code and unified diffs: keep the structure and the regions the query is about.

Both leave content that fits ``cfg.budget_tokens`` untouched (``None``). Above it, lines are
chosen by priority until the budget is spent, written in their original order, and every
run of dropped lines becomes one marker naming the line numbers it covers and the hard
tokens (identifiers, paths, ids) it held that the kept lines lack, within a small share of
the budget.

**Code** (``compress_code``), in order of priority:

1. header lines of an agent's file view (``[File: x.py (1997 lines total)]``,
   ``(1458 more lines above)``) and the first and last line;
2. lines holding a hard token of the query (an identifier, path or line number it names),
   the :data:`CONTEXT` lines around them and the signatures enclosing them (tokens named in
   the tool arguments, like the line of ``open x.py 293``, count double);
3. top-level structure: imports and ``def`` / ``class`` / ``function`` / ``fn`` / ...
   signatures and decorators at indentation 0;
4. more lines around the query's hard tokens, nearest first, up to :data:`REGION` away;
5. nested signatures, outermost first;
6. lines that match the query's words (BM25), with their context;
7. everything else, from the top.

SWE-agent views number their lines (``123:    code``); those numbers are kept as they are
and the markers use them.

**Diffs** (``compress_diff``): file headers (``diff --git``, ``---``/``+++``, ``index``,
modes, renames) and hunk headers (``@@ -a,b +c,d @@``) always; then changed lines near a
hard token of the query; then all changed lines (earlier hunks first); then context lines
next to a change; then the other context lines. Markers count the dropped ``+``/``-`` and
context lines. When that would keep fewer than half of the changed lines (many hunks, small
budget), whole hunks are chosen instead: each shown as its header and changed lines (one
closing marker counts the context lines left out), hunks holding a hard token of the query
first, then from the top; each run of dropped hunks is one marker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from compressors._select import MARKER_COST, Query, bm25_texts, mention_budget, render, select, token_costs
from compressors._types import Compressed, CompressionConfig, CompressionContext
from compressors.markers import omitted_marker

__all__ = ["CONTEXT", "REGION", "compress_code", "compress_diff"]

CONTEXT: Final = 3
# Lines around a hard token of the query are offered up to this far, nearest first.
REGION: Final = 30
# Query hits beyond this many lines (the strongest first) do not grow regions.
_MAX_HIT_LINES: Final = 200
_MAX_LOOKBACK: Final = 400
_NUMBERED: Final = re.compile(r"(\d{1,7}):")
_STRUCTURE_BODY: Final = (
    r"(?:"
    r"(?:export\s+)?(?:default\s+)?(?:async\s+)?(?:def|class|function|func|fn|interface|struct|enum"
    r"|trait|impl|module|namespace|protocol|extension|object|record|union)\b"
    r"|(?:(?:pub(?:\([\w:]+\))?|public|private|protected|internal|static|abstract|final|override"
    r"|virtual|sealed|inline|extern|const|unsafe|async)\s+)+[\w<>\[\],.?*& ]*\("
    r"|@[A-Za-z_]"
    r"|import\b|from\s+[\w.]+\s+import\b|#\s*include\b|using\s|package\s|use\s+[\w:]+|require\("
    r"|(?:export\s+)?(?:const|let|var)\s+\w+\s*=\s*(?:async\s*)?(?:function\b|\([^)]{0,200}\)\s*=>)"
    r")"
)
_STRUCTURE: Final = re.compile(r"[^\S\n]*" + _STRUCTURE_BODY)
# Each line's indentation and first word (or ``@``/``#``), after the line number of an
# agent's view when there is one: one match per newline (none spans lines), so
# ``findall("\n" + text)`` lines up with the lines. The literal newline first lets the scan
# skip ahead fast.
_LINE_HEAD: Final = re.compile(r"\n(?:\d{1,7}:)?([^\S\n]*)([@#]|[A-Za-z_]\w*)?")
_LINE_HEAD_PLAIN: Final = re.compile(r"\n([^\S\n]*)([@#]|[A-Za-z_]\w*)?")
# Every word a structure line can start with (the first word of each _STRUCTURE_BODY branch).
_STRUCTURE_WORDS: Final = frozenset(
    (
        "@",
        "#",
        "export",
        "default",
        "async",
        "def",
        "class",
        "function",
        "func",
        "fn",
        "interface",
        "struct",
        "enum",
        "trait",
        "impl",
        "module",
        "namespace",
        "protocol",
        "extension",
        "object",
        "record",
        "union",
        "pub",
        "public",
        "private",
        "protected",
        "internal",
        "static",
        "abstract",
        "final",
        "override",
        "virtual",
        "sealed",
        "inline",
        "extern",
        "const",
        "unsafe",
        "import",
        "from",
        "using",
        "package",
        "use",
        "require",
        "let",
        "var",
    )
)
_VIEW_HEADER: Final = re.compile(r"\[File: |\(\d+ more lines? (?:above|below)\)|\[\d+ lines? (?:above|below)")
_DIFF_FILE: Final = re.compile(
    r"diff --git |diff -|--- |\+\+\+ |index [0-9a-f]|(?:new|deleted) file mode|old mode|new mode"
    r"|similarity index|dissimilarity index|rename (?:from|to) |copy (?:from|to) |Binary files "
)


def _enclosing(i: int, bodies: list[str], indents: list[int | None]) -> list[int]:
    """The signatures enclosing line ``i``: the nearest structure lines above it with less
    indentation, outermost last (looks back at most :data:`_MAX_LOOKBACK` lines)."""
    body = bodies[i]
    level = len(body) - len(body.lstrip()) if body.strip() else 1 << 30
    found: list[int] = []
    for j in range(i - 1, max(-1, i - _MAX_LOOKBACK), -1):
        indent = indents[j]
        if indent is not None and indent < level:
            found.append(j)
            level = indent
            if indent == 0:
                break
    return found


def _structure_indents(bodies: list[str], text: str, numbered: bool) -> list[int | None]:
    """Per line: the indentation of a structure line (a signature, import, decorator), None
    for other lines. One cheap pass finds each line's first word; the structure pattern runs
    only on lines whose first word can start one."""
    heads = (_LINE_HEAD if numbered else _LINE_HEAD_PLAIN).findall(f"\n{text}")
    indents: list[int | None] = [None] * len(bodies)
    for i, (space, word) in enumerate(heads):
        if word in _STRUCTURE_WORDS and _STRUCTURE.match(bodies[i]):
            indents[i] = len(space)
    return indents


def compress_code(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """Outline plus query regions of source code above ``cfg.budget_tokens``; ``None`` below
    it or when nothing is gained."""
    lines = text.split("\n")
    costs = [c + 1 for c in token_costs(lines, ctx.model)]
    if sum(costs) <= cfg.budget_tokens or len(lines) < 3:
        return None
    matches = list(map(_NUMBERED.match, lines))
    numbered = (len(matches) - matches.count(None)) * 2 >= len(lines)  # an agent's numbered view
    numbers: list[int | None] = []
    bodies: list[str] = []
    if numbered:
        for line, m in zip(lines, matches, strict=True):
            numbers.append(int(m.group(1)) if m else None)
            bodies.append(line[m.end() :] if m else line)
    else:
        numbers = [None] * len(lines)
        bodies = lines
    query = Query(ctx)
    n = len(lines)
    must = [False] * n
    must[0] = must[-1] = True
    if numbered:
        for i, number in enumerate(numbers):
            if number is None and _VIEW_HEADER.match(lines[i]):
                must[i] = True
    weight = [query.weight(line) for line in lines] if query.hard else [0.0] * n
    scores = bm25_texts(bodies, query.terms)
    priority: list[tuple[float, ...]] = [(5.0, 0.0, float(i)) for i in range(n)]

    def offer(i: int, key: tuple[float, ...]) -> None:
        if key < priority[i]:
            priority[i] = key

    indents = _structure_indents(bodies, text, numbered)
    hit_lines = sorted(range(n), key=lambda i: (-weight[i], i))[:_MAX_HIT_LINES] if any(weight) else []
    for i in hit_lines:
        if not weight[i]:
            break
        # the region around a named token grows outward as the budget allows
        for j in range(max(0, i - REGION), min(n, i + REGION + 1)):
            tier = 1.0 if abs(i - j) <= CONTEXT else 2.0
            offer(j, (tier, abs(i - j) / weight[i], float(i)))
        for j in _enclosing(i, bodies, indents):
            offer(j, (1.0, 0.0, float(j)))
    for i, indent in enumerate(indents):
        if indent is not None:
            offer(i, (1.5 if indent == 0 else 2.5, float(indent), float(i)))
    for i in range(n):
        if scores[i] > 0:
            for j in range(max(0, i - CONTEXT), min(n, i + CONTEXT + 1)):
                offer(j, (3.0, -scores[i], float(abs(i - j)), float(i)))

    budget, mention_chars = mention_budget(cfg.budget_tokens)
    keep = select(costs, priority, budget, must)

    def describe(start: int, end: int) -> str:
        count = end - start
        noun = "line" if count == 1 else "lines"
        first, last = numbers[start], numbers[end - 1]
        if first is None or last is None:
            first, last = start + 1, end
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        return f"{where} ({count} {noun})"

    body, omitted = render(lines, keep, describe, mention_chars=mention_chars)
    if len(body) >= len(text):
        return None
    return Compressed(text=body, method="code-outline", lossless=False, omitted=omitted)


def _diff_kinds(lines: list[str]) -> list[str]:
    """Per line: ``F`` file header, ``@`` hunk header, ``+``/``-`` change, `` `` context,
    ``?`` anything else (text around the diff)."""
    kinds: list[str] = []
    in_hunk = False
    for line in lines:
        if line.startswith("@@"):
            kinds.append("@")
            in_hunk = True
        elif (not in_hunk or line.startswith(("diff ", "--- ", "+++ "))) and _DIFF_FILE.match(line):
            kinds.append("F")
            in_hunk = line.startswith(("--- ", "+++ ")) and in_hunk
        elif in_hunk and line[:1] in ("+", "-"):
            kinds.append(line[0])
        elif in_hunk and (line[:1] == " " or line == "" or line.startswith("\\")):
            kinds.append(" ")
        else:
            kinds.append("F" if _DIFF_FILE.match(line) else "?")
            in_hunk = in_hunk and kinds[-1] != "F"
    return kinds


def _count_changes(kinds: Sequence[str]) -> str:
    added, removed = kinds.count("+"), kinds.count("-")
    other = len(kinds) - added - removed
    parts = [p for p in (f"+{added}" if added else "", f"-{removed}" if removed else "") if p]
    if other:
        parts.append(f"{other} context")
    return ", ".join(parts)


def compress_diff(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """File and hunk headers, then changed lines, then context of a unified diff within
    ``cfg.budget_tokens``; whole hunks go when even their changed lines do not fit. ``None``
    below the budget or when nothing is gained."""
    lines = text.split("\n")
    costs = [c + 1 for c in token_costs(lines, ctx.model)]
    if sum(costs) <= cfg.budget_tokens or len(lines) < 3:
        return None
    query = Query(ctx)
    n = len(lines)
    kinds = _diff_kinds(lines)
    changed = [k in ("+", "-") for k in kinds]
    hits = [changed[i] and query.hard_hits(lines[i]) > 0 for i in range(n)]
    must = [k in ("F", "@") for k in kinds]
    must[0] = must[-1] = True
    priority: list[tuple[float, ...]] = []
    for i in range(n):
        if changed[i]:
            priority.append((2.0, float(i)))
        elif (i > 0 and changed[i - 1]) or (i < n - 1 and changed[i + 1]):
            priority.append((3.0, float(i)))
        else:
            priority.append((4.0, float(i)))
    for i in range(n):
        if hits[i]:
            for j in range(max(0, i - 1), min(n, i + 2)):
                priority[j] = min(priority[j], (1.0, float(i)))

    budget, mention_chars = mention_budget(cfg.budget_tokens)
    keep = select(costs, priority, budget, must)
    n_changed = sum(changed)
    if n_changed and sum(k for k, c in zip(keep, changed, strict=True) if c) * 2 < n_changed:
        return _diff_by_hunk(lines, kinds, costs, hits, budget, mention_chars, len(text))

    def describe(start: int, end: int) -> str:
        where = f"diff line {start + 1}" if end - start == 1 else f"diff lines {start + 1}-{end}"
        return f"{where} ({_count_changes(kinds[start:end])})"

    body, omitted = render(lines, keep, describe, mention_chars=mention_chars)
    if len(body) >= len(text):
        return None
    return Compressed(text=body, method="diff-hunks", lossless=False, omitted=omitted)


def _diff_by_hunk(
    lines: list[str],
    kinds: list[str],
    costs: list[int],
    hits: list[bool],
    budget: int,
    mention_chars: int,
    input_chars: int,
) -> Compressed | None:
    """Tight budget: hunks shown as header + changed lines (their context goes, said once in
    a closing marker); whole hunks are dropped by priority (hunks the query names first,
    then from the top), one marker per run of dropped hunks."""
    pieces: list[str] = []
    piece_kinds: list[list[str]] = []
    piece_costs: list[int] = []
    is_hunk: list[bool] = []
    named: list[bool] = []
    context_dropped = 0
    for i, line in enumerate(lines):
        kind = kinds[i]
        starts = kind == "@" or (kind in ("F", "?") and (not is_hunk or is_hunk[-1]))
        if starts or not pieces:
            pieces.append(line)
            piece_kinds.append([kind])
            piece_costs.append(costs[i])
            is_hunk.append(kind == "@")
            named.append(False)
            continue
        piece_kinds[-1].append(kind)
        if kind == " " and is_hunk[-1]:
            context_dropped += 1
            continue
        pieces[-1] += "\n" + line
        piece_costs[-1] += costs[i]
        named[-1] = named[-1] or hits[i]
    note = f"{context_dropped} context lines of the hunks shown" if context_dropped else ""
    budget -= MARKER_COST if note else 0
    priority = [(1.0 if named[i] else 2.0, float(i)) for i in range(len(pieces))]
    must = [not h for h in is_hunk]
    keep = select(piece_costs, priority, budget, must)
    hunk_numbers: list[int] = []
    count = 0
    for h in is_hunk:
        count += h
        hunk_numbers.append(count)

    def describe(start: int, end: int) -> str:
        first, last = hunk_numbers[start], hunk_numbers[end - 1]
        where = f"hunk {first}" if first == last else f"hunks {first}-{last}"
        flat = [k for ks in piece_kinds[start:end] for k in ks]
        return f"{where} ({_count_changes(flat)} lines)"

    body, omitted = render(pieces, keep, describe, mention_chars=mention_chars)
    if note:
        body = f"{body}\n{omitted_marker(note)}"
        omitted = (*omitted, note)
    if len(body) >= input_chars:
        return None
    return Compressed(text=body, method="diff-hunks", lossless=False, omitted=omitted)
