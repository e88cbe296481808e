"""Helpers shared by the lossy text-like compressors (logs, text, code, diffs, tables).

- :class:`Query`: what the query (latest user message + the tool call's arguments) asks for,
  as lower-case words for BM25 and as exact hard tokens.
- :func:`bm25`: a small Okapi BM25 over pre-tokenised chunks.
- :func:`token_costs`: token counts of many pieces at once (estimated for huge inputs).
- :func:`select`: greedy choice of pieces by priority within a token budget.
- :func:`render`: kept pieces in original order, one omission marker per gap, which can
  list the hard tokens the gap held (:mod:`compressors._mentions`, within
  :func:`mention_budget`).
- :func:`clip`: shorten a giant line, leaving a marker.

Everything here is deterministic and linear in the input size (sorting aside).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import re
from collections.abc import Callable, Sequence
from typing import Final

from compressors import _mentions, tokens
from compressors._types import CompressionContext
from compressors.hardtokens import hard_tokens
from compressors.markers import omitted_marker

__all__ = [
    "MARKER_COST",
    "Query",
    "bm25",
    "bm25_texts",
    "clip",
    "first_last_values",
    "mention_budget",
    "render",
    "select",
    "token_costs",
    "words",
]

# What one marker line costs, for budgeting (measured: "[nocp omitted: lines 120-480 (361 lines)]").
MARKER_COST: Final = 16
# Above this many characters in total, piece costs are estimated (chars / 3, an over-estimate for
# text and code) instead of counted exactly: a 20 MB tool output must not stall the request.
EXACT_COUNT_MAX_CHARS: Final = 2_000_000
_WORD_RE: Final = re.compile(r"[A-Za-z0-9_]{2,64}", re.ASCII)
# Share of a lossy budget that gap markers may spend listing dropped hard tokens.
MENTION_SHARE: Final = 0.15
_SUFFIXES: Final = ("ing", "ed", "es", "s")
_COMPOUND_RE: Final = re.compile(r"\b\w{0,64}?(?:_|[a-z][A-Z])\w{0,64}\b", re.ASCII)
_CAMEL_SPLIT: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", re.ASCII)
_STOPWORD_TEXT: Final = """
    a an and are as at be but by can could did do does doing done for from had has have he her his
    how i if in into is it its itself let lets let's me my no not of on or our out over she should so
    some such than that the their them then there these they this those through to too up us very
    was we were what when where which while who why will with would you your also just like now
    see seems seem look looks need needs want use using used first next which should make sure
    file files line lines code run running command try"""
_STOPWORDS: Final = frozenset(_STOPWORD_TEXT.split())


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A light suffix stripper so that ``decrypt``/``decrypted``/``decrypts`` meet."""
    if len(word) > 5:
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 4:
                return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    """Lower-case terms of ``text`` for BM25: each ``[A-Za-z0-9_]`` word of 2-64 characters,
    plus the parts of snake_case and camelCase words; stop words dropped; light stemming
    (``-ing``, ``-ed``, ``-es``, ``-s``)."""
    out = [_stem(w) for w in map(str.lower, _WORD_RE.findall(text)) if w not in _STOPWORDS]
    for compound in _COMPOUND_RE.findall(text):
        parts = _CAMEL_SPLIT.findall(compound.replace("_", " "))
        out.extend(_stem(low) for low in map(str.lower, parts) if len(low) > 1 and low not in _STOPWORDS)
    return out


class Query:
    """What the latest user message and the tool call's arguments ask for.

    ``terms`` are BM25 terms (see :func:`words`); ``hard`` the hard tokens of the query and
    the arguments, which a compressor keeps wherever they occur in the content (a later turn
    is likely to use them); ``args_hard`` those of the arguments alone (the strongest signal:
    ``open x.py 293`` asks for line 293).
    """

    __slots__ = ("_hard_sorted", "args_hard", "hard", "terms")

    def __init__(self, ctx: CompressionContext) -> None:
        text = f"{ctx.query}\n{ctx.tool_args}"
        self.terms: tuple[str, ...] = tuple(dict.fromkeys(words(text)))
        self.args_hard: frozenset[str] = frozenset(hard_tokens(ctx.tool_args))
        self.hard: frozenset[str] = frozenset(hard_tokens(ctx.query)) | self.args_hard
        self._hard_sorted = tuple(sorted(self.hard))

    def __bool__(self) -> bool:
        return bool(self.terms or self.hard)

    def hits(self, text: str) -> frozenset[str]:
        """The query's hard tokens that occur in ``text`` as hard tokens (a substring test
        first, so texts without any of them are rejected at C speed)."""
        if not self.hard or not any(t in text for t in self._hard_sorted):
            return frozenset()
        return self.hard & frozenset(hard_tokens(text))

    def hard_hits(self, text: str) -> int:
        """How many of the query's hard tokens occur in ``text`` as hard tokens."""
        return len(self.hits(text))

    def weight(self, text: str) -> float:
        """Hard-token hits of ``text``, those named in the tool arguments counting twice."""
        found = self.hits(text)
        return float(len(found) + len(found & self.args_hard))


def bm25(
    docs: Sequence[Sequence[str]], query: Sequence[str], k1: float = 1.2, b: float = 0.75
) -> list[float]:
    """Okapi BM25 score of each tokenised doc against ``query`` (IDF with the +1 smoothing of
    Lucene, so it is never negative). Deterministic: plain float arithmetic in a fixed order."""
    n = len(docs)
    if n == 0 or not query:
        return [0.0] * n
    qset = dict.fromkeys(query)
    df: dict[str, int] = dict.fromkeys(qset, 0)
    tfs: list[dict[str, int]] = []
    total_len = 0
    for doc in docs:
        tf: dict[str, int] = {}
        for term in doc:
            if term in qset:
                tf[term] = tf.get(term, 0) + 1
        for term in tf:
            df[term] += 1
        tfs.append(tf)
        total_len += len(doc)
    avg = total_len / n if total_len else 1.0
    idf = {t: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    scores: list[float] = []
    for doc, tf in zip(docs, tfs, strict=True):
        norm = k1 * (1.0 - b + b * len(doc) / avg)
        s = 0.0
        for term in qset:
            f = tf.get(term)
            if f:
                s += idf[term] * f * (k1 + 1.0) / (f + norm)
        scores.append(s)
    return scores


def bm25_texts(texts: Sequence[str], query: Sequence[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 of each text against ``query`` (terms of :func:`words`), with document
    length measured in characters.

    Term frequencies and IDF are those of :func:`bm25` over ``words(t)``; the length
    normalisation uses each text's share of the characters instead of its share of the
    words (only the ratio to the average matters, and counting the words of every text
    would take a pass of the word pattern over the whole input). Only texts holding a form
    of a query term (a case-insensitive substring test over all texts at once) can score
    above zero, and only those are split into words."""
    n = len(texts)
    if n == 0 or not query:
        return [0.0] * n
    joined = "\n".join(texts)
    qset = dict.fromkeys(query)
    holders = _holders(texts, joined, _query_forms(tuple(qset)))
    if not holders:
        return [0.0] * n
    df: dict[str, int] = dict.fromkeys(qset, 0)
    found: list[tuple[int, dict[str, int]]] = []
    for i in holders:
        tf: dict[str, int] = {}
        for term in words(texts[i]):
            if term in qset:
                tf[term] = tf.get(term, 0) + 1
        for term in tf:
            df[term] += 1
        found.append((i, tf))
    scores = [0.0] * n
    avg = (len(joined) - (n - 1)) / n or 1.0
    idf = {t: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    for i, tf in found:
        norm = k1 * (1.0 - b + b * len(texts[i]) / avg)
        s = 0.0
        for term in qset:
            f = tf.get(term)
            if f:
                s += idf[term] * f * (k1 + 1.0) / (f + norm)
        scores[i] = s
    return scores


@functools.lru_cache(maxsize=256)
def _query_forms(terms: tuple[str, ...]) -> tuple[str, ...]:
    """Every word form that :func:`words` turns into one of ``terms``: the term itself, or the
    term plus a suffix that :func:`_stem` strips (stop words excepted)."""
    forms: set[str] = set()
    for term in terms:
        for form in (term, *(term + suffix for suffix in _SUFFIXES)):
            if form not in _STOPWORDS and _stem(form) == term:
                forms.add(form)
    return tuple(sorted(forms))


@functools.lru_cache(maxsize=256)
def _forms_pattern(forms: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(map(re.escape, sorted(forms, key=lambda f: (-len(f), f)))), re.I | re.A)


def _holders(texts: Sequence[str], joined: str, forms: tuple[str, ...]) -> list[int]:
    """Indices (ascending) of the texts holding one of ``forms`` (lower case) as a
    case-insensitive substring; ``joined`` is the texts joined with newlines."""
    if not forms:
        return []
    low = joined.lower()
    same_length = len(low) == len(joined)
    if same_length and not any(form in low for form in forms):
        return []
    starts = list(itertools.accumulate((len(t) + 1 for t in texts), initial=0))
    found: set[int] = set()
    if same_length:
        # No character grew when lowered, so positions still match. (A non-ASCII character
        # lowered to ASCII, like the Kelvin sign, can only add a text to test in full.)
        for form in forms:
            at = low.find(form)
            while at >= 0:
                i = bisect.bisect_right(starts, at) - 1
                found.add(i)
                # the next text: a form does not span a newline
                nxt = starts[i + 1] if i + 1 < len(starts) else len(low)
                at = low.find(form, nxt)
    else:
        for m in _forms_pattern(forms).finditer(joined):
            found.add(bisect.bisect_right(starts, m.start()) - 1)
    return sorted(found)


def token_costs(pieces: Sequence[str], model: str) -> list[int]:
    """Tokens of each piece (exact, batched), or an over-estimate (chars / 3) when the pieces
    are huge in total.

    Exact counts come from :func:`compressors.tokens.count_each` (one batched call).
    """
    total = sum(len(p) for p in pieces)
    if total > EXACT_COUNT_MAX_CHARS:
        return [len(p) // 3 + 1 for p in pieces]
    return tokens.count_each(pieces, model)


def select(
    costs: Sequence[int],
    priority: Sequence[tuple[float, ...]],
    budget: int,
    must: Sequence[bool],
    gap_cost: int = MARKER_COST,
) -> list[bool]:
    """Which pieces to keep: every ``must`` piece, then the others in ascending ``priority``
    (ties by position) while the total, counting one marker per gap, stays within ``budget``.

    A piece that does not fit is skipped and smaller, lower-priority pieces may still go in.
    """
    n = len(costs)
    keep = list(must)
    used = sum(c for c, k in zip(costs, keep, strict=True) if k)
    used += gap_cost * _gaps(keep)
    order = sorted((i for i in range(n) if not keep[i]), key=lambda i: (priority[i], i))
    for i in order:
        if used >= budget:
            break
        # Keeping i splits its gap in two, shrinks it, or closes it.
        gap_left = i > 0 and not keep[i - 1]
        gap_right = i < n - 1 and not keep[i + 1]
        delta_gaps = 1 if gap_left and gap_right else (0 if gap_left or gap_right else -1)
        extra = costs[i] + gap_cost * delta_gaps
        if used + extra <= budget:
            keep[i] = True
            used += extra
    _fill_cheap_gaps(keep, costs, gap_cost)
    return keep


def _dropped_runs(keep: Sequence[bool]) -> list[tuple[int, int]]:
    """Each maximal run ``[start, end)`` of dropped pieces, in order."""
    runs: list[tuple[int, int]] = []
    n = len(keep)
    i = 0
    while i < n:
        if keep[i]:
            i += 1
            continue
        j = i
        while j < n and not keep[j]:
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _fill_cheap_gaps(keep: list[bool], costs: Sequence[int], gap_cost: int) -> None:
    """Put back every gap that costs no more than the marker that would replace it."""
    for i, j in _dropped_runs(keep):
        if sum(costs[i:j]) <= gap_cost:
            keep[i:j] = [True] * (j - i)


def _gaps(keep: Sequence[bool]) -> int:
    return len(_dropped_runs(keep))


def render(
    pieces: Sequence[str],
    keep: Sequence[bool],
    describe: Callable[[int, int], str],
    sep: str = "\n",
    mention_chars: int = 0,
) -> tuple[str, tuple[str, ...]]:
    """Join the kept pieces in order with ``sep``; each maximal run of dropped pieces
    ``[start, end)`` becomes one marker ``omitted_marker(describe(start, end))``. With
    ``sep=""`` (pieces that carry their own newlines) the marker is put on a line of its own.

    With ``mention_chars`` > 0 each marker also lists (``; mentions: a, b``) hard tokens of
    the dropped pieces that the kept text lacks, about ``mention_chars`` characters in all
    (see :func:`mentions`). Returns the text and the gap descriptions.
    """
    n = len(pieces)
    gaps = _dropped_runs(keep)
    named = _mentions.allocate(pieces, keep, gaps, sep, mention_chars) if mention_chars > 0 else {}
    out: list[str] = []
    omitted: list[str] = []
    start_of = {g[0]: g for g in gaps}
    i = 0
    while i < n:
        if keep[i]:
            out.append(pieces[i])
            i += 1
            continue
        _, j = start_of[i]
        desc = describe(i, j)
        if named.get(i):
            desc = f"{desc}; mentions: {', '.join(named[i])}"
        omitted.append(desc)
        marker = omitted_marker(desc)
        if not sep:
            lead = "" if not out or out[-1].endswith("\n") else "\n"
            marker = f"{lead}{marker}\n"
        out.append(marker)
        i = j
    return sep.join(out), tuple(omitted)


def clear_memo() -> None:
    """Forget the remembered run classifications and word stems (benchmarks measuring cold
    runs)."""
    _mentions.clear_memo()
    _stem.cache_clear()
    _query_forms.cache_clear()
    _forms_pattern.cache_clear()


def mention_budget(budget_tokens: int) -> tuple[int, int]:
    """Split a lossy budget: ``(tokens for the kept pieces, characters for gap mentions)``.
    Hard tokens cost about one token per three characters."""
    reserve = int(budget_tokens * MENTION_SHARE)
    return budget_tokens - reserve, reserve * 3


def clip(line: str, max_chars: int) -> str:
    """``line`` itself, or its head and tail around a marker when longer than ``max_chars``."""
    if len(line) <= max_chars:
        return line
    head = max_chars * 3 // 4
    tail = max_chars - head
    cut = len(line) - head - tail
    return f"{line[:head]} {omitted_marker(f'{cut} characters')} {line[len(line) - tail :]}"


def first_last_values(values: Sequence[str], limit: int = 120) -> str:
    """All distinct ``values`` when short, else the first and last: for marker text."""
    distinct = list(dict.fromkeys(values))
    joined = ", ".join(distinct)
    if len(joined) <= limit:
        return joined
    return f"{distinct[0]} ... {distinct[-1]}"
