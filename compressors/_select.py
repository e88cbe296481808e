"""Helpers shared by the lossy text-like compressors (logs, text, code, diffs, tables).

- :class:`Query`: what the query (latest user message + the tool call's arguments) asks for,
  as lower-case words for BM25 and as exact hard tokens.
- :func:`bm25`: a small Okapi BM25 over pre-tokenised chunks.
- :func:`token_costs`: token counts of many pieces at once (estimated for huge inputs).
- :func:`select`: greedy choice of pieces by priority within a token budget.
- :func:`render`: kept pieces in original order, one omission marker per gap, which can
  list the hard tokens the gap held (:func:`mentions`, within :func:`mention_budget`).
- :func:`clip`: shorten a giant line, leaving a marker.

Everything here is deterministic and linear in the input size (sorting aside).
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from compressors import tokens
from compressors._hardtokens import (
    _ERRNO_NAMES,
    _LEAD_STRIP,
    _RUN,
    _TRAIL_STRIP,
    KINDS,
    MAX_RUN_CHARS,
    _classify,
    hard_tokens,
    urls_and_statuses,
)
from compressors._markers import omitted_marker
from compressors._types import CompressionContext

__all__ = [
    "MARKER_COST",
    "Query",
    "bm25",
    "bm25_texts",
    "clip",
    "first_last_values",
    "mention_budget",
    "mentions",
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
# Gap markers list dropped hard tokens only when the texts involved are at most this long
# (extracting them is linear but not free).
MENTION_MAX_CHARS: Final = 1_000_000
# Share of a lossy budget that gap markers may spend listing dropped hard tokens.
MENTION_SHARE: Final = 0.15
_MAX_MENTION_CANDIDATES: Final = 200
_MAX_MENTION_TOKEN: Final = 80
_MAX_MENTION_SORT: Final = 400
_MENTION_KINDS: Final = ("error_code", "path", "url", "identifier", "uuid", "id")
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
    """``bm25([words(t) for t in texts], query)``, without splitting every text into words.

    Only texts holding a form of a query term (a case-insensitive substring test over all
    texts at once) can score above zero; only those are split. The others take part only
    through the average length, and the total word count is taken over all texts in one pass
    (no word, compound or camelCase part spans a newline, so joining the texts with newlines
    changes nothing). The scores are the same floats as :func:`bm25` gives."""
    n = len(texts)
    if n == 0 or not query:
        return [0.0] * n
    joined = "\n".join(texts)
    qset = dict.fromkeys(query)
    holders = _holders(texts, joined, _query_forms(tuple(qset)))
    if not holders:
        return [0.0] * n
    total_len = _word_total(joined)
    df: dict[str, int] = dict.fromkeys(qset, 0)
    found: list[tuple[int, int, dict[str, int]]] = []
    for i in holders:
        doc = words(texts[i])
        tf: dict[str, int] = {}
        for term in doc:
            if term in qset:
                tf[term] = tf.get(term, 0) + 1
        for term in tf:
            df[term] += 1
        found.append((i, len(doc), tf))
    scores = [0.0] * n
    avg = total_len / n if total_len else 1.0
    idf = {t: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    for i, length, tf in found:
        norm = k1 * (1.0 - b + b * length / avg)
        s = 0.0
        for term in qset:
            f = tf.get(term)
            if f:
                s += idf[term] * f * (k1 + 1.0) / (f + norm)
        scores[i] = s
    return scores


def _word_total(text: str) -> int:
    """``len(words(text))``, without stemming or building the list.

    Counted per distinct word: when every word run is shorter than 64 characters, each
    :data:`_WORD_RE` match is a whole ``\\w`` run, so it is a compound (:data:`_COMPOUND_RE`)
    exactly when :data:`_COMPOUND_WORD` matches it in full, and its terms are a function of
    the word alone (:func:`_word_terms`)."""
    found = _WORD_RE.findall(text)
    counts = collections.Counter(found)
    if not counts or max(map(len, counts)) < 64:  # a 64-character match: a run of 64 or more
        return sum(map(operator.mul, counts.values(), map(_word_terms, counts)))
    total = len(found) - sum(map(_STOPWORDS.__contains__, map(str.lower, found)))
    compounds = _COMPOUND_RE.findall(text)
    if compounds:
        parts = _CAMEL_SPLIT.findall(" ".join(compounds).replace("_", " "))
        total += sum(1 for p in parts if len(p) > 1 and p.lower() not in _STOPWORDS)
    return total


_COMPOUND_WORD: Final = re.compile(r"\w{0,64}?(?:_|[a-z][A-Z])\w{0,64}", re.ASCII)


@functools.lru_cache(maxsize=65536)
def _word_terms(word: str) -> int:
    """How many terms :func:`words` makes of ``word``, one whole ``\\w`` run of 2-63
    characters: itself unless a stop word, plus its snake_case and camelCase parts when it
    is a compound."""
    n = 0 if word.lower() in _STOPWORDS else 1
    if _COMPOUND_WORD.fullmatch(word):
        parts = _CAMEL_SPLIT.findall(word.replace("_", " "))
        n += sum(1 for p in parts if len(p) > 1 and p.lower() not in _STOPWORDS)
    return n


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
    named = _allocate_mentions(pieces, keep, gaps, sep, mention_chars) if mention_chars > 0 else {}
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


class _RunTokens:
    """The hard tokens of each run of :data:`~compressors._hardtokens._RUN`, remembered for
    all inputs: a pure function of the run (the same identifiers and paths come back in every
    output of a repository). Bounded: emptied when :data:`RUN_MEMO_MAX` runs are held; runs
    longer than :data:`RUN_MEMO_CHARS` (rarely repeated) are classified every time."""

    __slots__ = ("numeric", "plain", "runs", "stripped")

    def __init__(self) -> None:
        self.runs: dict[str, tuple[tuple[str, str], ...]] = {}  # runs holding hard tokens
        self.plain: set[str] = set()  # runs that hold none (most of them)
        self.numeric: set[str] = set()  # runs that hold one number and nothing else
        self.stripped: dict[str, tuple[tuple[str, str], ...]] = {}  # by stripped form

    def clear(self) -> None:
        self.runs.clear()
        self.plain.clear()
        self.numeric.clear()
        self.stripped.clear()

    def _size(self) -> int:
        return len(self.runs) + len(self.plain) + len(self.stripped)

    def classify(self, run: str) -> tuple[tuple[str, str], ...]:
        """The (kind, token) pairs of one run (at most :data:`MAX_RUN_CHARS` long), as
        ``hard_tokens_by_kind`` finds them, remembered."""
        remember = len(run) <= RUN_MEMO_CHARS
        if remember and self._size() >= RUN_MEMO_MAX:
            self.clear()
        stripped = run.rstrip(_TRAIL_STRIP)
        if not (stripped.startswith(("./", "../", "~/", "/")) and len(stripped) > 2):
            stripped = stripped.lstrip(_LEAD_STRIP)
        found = self.stripped.get(stripped)
        if found is None:
            if stripped.isdigit():  # ASCII digits: a number, an id from 7 digits, one digit nothing
                if len(stripped) >= 7:
                    found = (("id", stripped),)
                else:
                    found = (("number", stripped),) if len(stripped) > 1 else ()
            elif stripped.isalpha() and stripped[1:].islower():
                # a plain word ("value", "Value") is never a hard token: no digit, no separator,
                # no second capital, no underscore
                found = ()
            else:
                out: dict[str, set[str]] = {kind: set() for kind in KINDS}
                _classify(stripped, out, split=True)
                found = tuple((kind, token) for kind in KINDS for token in out[kind])
            if remember:
                self.stripped[stripped] = found
        if not remember:
            return found
        if not found:
            self.plain.add(run)
        else:
            self.runs[run] = found
            if len(found) == 1 and found[0][0] == "number":
                self.numeric.add(run)
        return found

    def learn(self, runs: set[str]) -> None:
        """Classify and remember the runs of ``runs`` not known yet (runs longer than
        :data:`RUN_MEMO_CHARS` are left out). Plain words, most of them, are recognised in bulk
        (:data:`_PLAIN_RUN`, exactly the runs that strip to a plain word)."""
        # (set.difference iterates over the smaller side; -= would iterate over the memo)
        new = runs.difference(self.plain).difference(self.runs)
        if not new:
            return
        if self._size() + len(new) >= RUN_MEMO_MAX:
            self.clear()
        plain = set(filter(_PLAIN_RUN.fullmatch, new))
        if plain:
            self.plain |= plain
            new -= plain
        simple = _SIMPLE_RUN.fullmatch
        for run in new:
            if len(run) > RUN_MEMO_CHARS:
                continue
            m = simple(run)
            if m is None:
                self.classify(run)
                continue
            digits, capitals = m.groups()
            if digits is not None:  # a number, an id from 7 digits, one digit nothing
                if len(digits) >= 7:
                    self.runs[run] = (("id", digits),)
                elif len(digits) > 1:
                    self.runs[run] = (("number", digits),)
                    self.numeric.add(run)
                else:
                    self.plain.add(run)
            elif capitals in _ERRNO_NAMES:
                self.classify(run)
            else:  # capitals only: no digit, no lower-case letter, no separator
                self.plain.add(run)


# A run that strips (``_LEAD_STRIP``, ``_TRAIL_STRIP``) to a plain word (a letter, then lower-case
# letters): it holds no hard token. At most RUN_MEMO_CHARS long (such runs are remembered).
# Necessary for the URL or HTTP status passes of ``hard_tokens_by_kind`` to find anything.
_PASS_HINT: Final = re.compile(r"://|HTTP|tatus")
# A run that strips to ASCII digits, or to capital letters (these hold a hard token only as
# an errno name).
_SIMPLE_RUN: Final = re.compile(r"[-+:@%#]*+(?:([0-9]++)|([A-Z]++))[.:\-+@/#]*+", re.ASCII)
_PLAIN_RUN: Final = re.compile(r"(?=[^\n]{1,128}\Z)[-+:@%#]*+[A-Za-z][a-z]++[.:\-+@/#]*+", re.ASCII)


RUN_MEMO_MAX: Final = 65536
RUN_MEMO_CHARS: Final = 128
_run_tokens = _RunTokens()


def clear_memo() -> None:
    """Forget the remembered run classifications and word stems (benchmarks measuring cold
    runs)."""
    _run_tokens.clear()
    _stem.cache_clear()
    _word_terms.cache_clear()
    _query_forms.cache_clear()
    _forms_pattern.cache_clear()


class _HardTokenMemo:
    """:func:`~compressors._hardtokens.hard_tokens_by_kind` for many texts of one input (the
    kept text, each gap, each listed token), classifying every distinct run only once.

    The passes are those of ``hard_tokens_by_kind`` (URLs blanked out, HTTP status codes,
    then each run of :data:`~compressors._hardtokens._RUN` stripped and classified whole): a
    run classifies the same way wherever it occurs, so its tokens are remembered (across
    inputs, :class:`_RunTokens`), and so are those of its stripped form (``1551:`` and
    ``1551`` are classified once). Plain words and digit strings, most of the runs, are
    recognised without the full classification. The results are sets, equal to those of
    ``hard_tokens_by_kind`` for the same text."""

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: dict[str, set[str]] = {}

    def by_kind(self, text: str, *, numbers: bool = True) -> dict[str, set[str]]:
        """Equal to ``hard_tokens_by_kind(text)``; with ``numbers=False`` the ``number`` kind
        may miss tokens (a numbered view has a number on every line), the others are equal."""
        out: dict[str, set[str]] = {kind: set() for kind in KINDS}
        rest = urls_and_statuses(text, out)
        memo = _run_tokens
        runs = set(_RUN.findall(rest))
        memo.learn(runs)
        runs = runs.difference(memo.plain)  # not -=, which iterates over the whole memo
        if not numbers:
            runs = runs.difference(memo.numeric)
        known = memo.runs
        for run in runs:
            found = known.get(run)
            if found is None:  # a run too long to be remembered
                if len(run) > MAX_RUN_CHARS:
                    continue
                found = memo.classify(run)
            for kind, token in found:
                out[kind].add(token)
        return out

    def tokens(self, text: str) -> set[str]:
        """Equal to ``hard_tokens(text)`` (do not modify the returned set)."""
        result = self._tokens.get(text)
        if result is not None:
            return result
        if len(text) <= MAX_RUN_CHARS and _RUN.fullmatch(text) and not _PASS_HINT.search(text):
            # one run (a listed token, most often), which neither the URL nor the HTTP status
            # pass can touch: its classification alone
            pairs = _run_tokens.runs.get(text)
            if pairs is None:
                pairs = () if text in _run_tokens.plain else _run_tokens.classify(text)
            result = {token for _, token in pairs}
        else:
            result = set()
            for found in self.by_kind(text).values():
                result |= found
        self._tokens[text] = result
        return result


def _allocate_mentions(
    pieces: Sequence[str], keep: Sequence[bool], gaps: list[tuple[int, int]], sep: str, max_chars: int
) -> dict[int, list[str]]:
    """Which dropped hard tokens each gap's marker lists: round-robin over the gaps (each
    gap's best candidate first) until ``max_chars`` are used; a token is listed once.

    Each gap's candidates are produced lazily (a gap rarely gets more than a few listed), and
    its runs are classified once for all the gaps and the kept text."""
    kept_text = sep.join(p for p, k in zip(pieces, keep, strict=True) if k)
    if not gaps or len(kept_text) > MENTION_MAX_CHARS:
        return {}
    memo = _HardTokenMemo()
    kept = memo.tokens(kept_text)
    candidates: list[Iterator[str]] = []
    for start, end in gaps:
        dropped = sep.join(pieces[start:end])
        candidates.append(
            _iter_mentions(dropped, kept, _MAX_MENTION_CANDIDATES, memo)
            if len(dropped) <= MENTION_MAX_CHARS
            else iter(())
        )
    named: dict[int, list[str]] = {start: [] for start, _ in gaps}
    listed: set[str] = set()
    used = 0
    progress = True
    while progress:
        progress = False
        for g, (start, _) in enumerate(gaps):
            for token in candidates[g]:
                if token in listed:
                    continue
                if used + len(token) + 2 <= max_chars:
                    named[start].append(token)
                    listed |= memo.tokens(token)
                    used += len(token) + 2
                    progress = True
                break
    return named


def mentions(dropped: str, kept: set[str], limit: int) -> list[str]:
    """Up to ``limit`` hard tokens of ``dropped`` that are not in ``kept``, best first, for a
    gap marker: error codes, paths, URLs, identifiers, UUIDs, then ids (numbers are left out:
    alone they mean nothing), each kind in order of first occurrence. A token already carried
    by one listed before it (the parts of a path or dotted name) is skipped."""
    return list(_iter_mentions(dropped, kept, limit, _HardTokenMemo()))


def _iter_mentions(dropped: str, kept: set[str], limit: int, memo: _HardTokenMemo) -> Iterator[str]:
    """:func:`mentions`, one at a time: a kind's tokens are sorted only when reached."""
    by_kind = memo.by_kind(dropped, numbers=False)  # numbers are never mentioned
    produced = 0
    covered: set[str] = set()
    for kind in _MENTION_KINDS:
        found = [t for t in by_kind[kind] if t not in kept and len(t) <= _MAX_MENTION_TOKEN]
        if len(found) > _MAX_MENTION_SORT:
            found.sort()
        else:
            found.sort(key=lambda t: (dropped.find(t), -len(t), t))
        for token in found:
            if token in covered:
                continue
            yield token
            produced += 1
            if produced >= limit:
                return
            covered |= memo.tokens(token)


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
