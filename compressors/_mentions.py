"""What a gap marker mentions: the hard tokens of dropped pieces that the kept text lacks.

Each run of dropped pieces becomes one marker (see :func:`compressors._select.render`); with a
mention budget the marker also lists (``; mentions: a, b``) hard tokens of the dropped text that
are not hard tokens of the kept text. :func:`allocate` shares the budget out round-robin over
the gaps (each gap's best candidate first). A gap's candidates come, best first, from:

1. HTTP status codes (the status pass) and runs holding an exception name (``Error``,
   ``Exception``, ``Warning``, ``Interrupt``, ``Exit``: found with ``str.find``) or an
   errno-like ``E..`` (a literal-first pattern): their error codes;
2. the gap's runs holding a ``/`` that the kept text lacks: their paths;
3. the URLs (the URL pass);
4. every run the kept text lacks, in order of first position: file names, identifiers,
   UUIDs, ids, lint codes (numbers are left out: alone they mean nothing).

Only the runs looked at are classified (at most :data:`MAX_EXAMINED` per gap), and the runs of
a gap are listed only when a gap gets that far, with set and list operations at C speed, so
the work grows with what is listed rather than with the input (a plain regular-expression
pass over 350K characters costs ~4 ms in Python, a per-run Python step ~1 us). Tokens are
exactly those of :func:`~compressors.hardtokens.hard_tokens` (property-tested): a run is
classified whole, as there; and whether the kept text holds a token is decided at the token's
occurrences in the kept text, since a run's tokens are substrings of the run (after
:data:`MAX_PROBES` occurrences the kept text is classified in full, once).

Runs are classified once per process (:func:`_run_pairs`, bounded): the same identifiers and
paths come back in every output of a repository.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from itertools import filterfalse
from typing import Final

from compressors.hardtokens import (
    _LEAD_STRIP,
    _RUN,
    _RUN_CHARS,
    _TRAIL_STRIP,
    KINDS,
    MAX_RUN_CHARS,
    _classify,
    hard_tokens,
    split_runs,
    urls_and_statuses,
)

__all__ = ["MAX_PROBES", "MENTION_MAX_CHARS", "allocate", "clear_memo", "mentions"]

# Gap markers list dropped hard tokens only when the texts involved are at most this long.
MENTION_MAX_CHARS: Final = 1_000_000
# Occurrences of one token in the kept text looked at before the kept text is classified whole.
MAX_PROBES: Final = 24
_MAX_CANDIDATES: Final = 200  # per gap
# Runs looked at per gap at most (a bound for pathological inputs; lower caps cost recall).
MAX_EXAMINED: Final = 4096
_MAX_MENTION_TOKEN: Final = 80
_MENTION_KINDS: Final = ("error_code", "path", "url", "identifier", "uuid", "id")
_RUN_CHAR_SET: Final = frozenset(_RUN_CHARS)
RUN_MEMO_MAX: Final = 65536
_NO_RUNS: Final[set[str]] = set()
# Runs with no hard token, told at C speed: a plain word or one digit, with strippable ends.
_NO_TOKENS: Final = re.compile(r"[-+:@%#]*(?:[A-Za-z][a-z]*|[0-9])[.:+@/#-]*", re.ASCII)


@functools.lru_cache(maxsize=RUN_MEMO_MAX)
def _run_pairs(run: str) -> tuple[tuple[str, str], ...]:
    """The (kind, token) pairs of one run, as ``hard_tokens_by_kind`` classifies it."""
    stripped = run.rstrip(_TRAIL_STRIP)
    if not (stripped.startswith(("./", "../", "~/", "/")) and len(stripped) > 2):
        stripped = stripped.lstrip(_LEAD_STRIP)
    if stripped.isalpha() and stripped[1:].islower():
        return ()  # a plain word ("value", "Value"): no digit, separator or second capital
    out: dict[str, set[str]] = {kind: set() for kind in KINDS}
    _classify(stripped, out, split=True)
    return tuple((kind, token) for kind in KINDS if out[kind] for token in sorted(out[kind]))


@functools.lru_cache(maxsize=RUN_MEMO_MAX)
def _own_tokens(token: str) -> frozenset[str]:
    """The hard tokens of a listed token itself (the parts of a path or dotted name)."""
    return frozenset(hard_tokens(token))


def clear_memo() -> None:
    """Forget the remembered run classifications (benchmarks measuring cold runs)."""
    _run_pairs.cache_clear()
    _ordered.cache_clear()
    _own_tokens.cache_clear()


def _run_at(blank: str, at: int) -> tuple[int, int]:
    """``[start, end)`` of the run of :data:`_RUN` characters holding position ``at``."""
    start = at
    while start > 0 and blank[start - 1] in _RUN_CHAR_SET:
        start -= 1
    m = _RUN.match(blank, start)
    return start, (m.end() if m else at)


class _LazyRuns:
    """The distinct runs of a text that are not in ``known``, in order of first position,
    found on the first iteration (a gap whose first candidate is an error code never needs
    them)."""

    __slots__ = ("_blank", "_known", "_runs")

    def __init__(self, blank: str, known: set[str]) -> None:
        self._blank = blank
        self._known = known
        self._runs: list[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._runs is None:
            runs = filterfalse(self._known.__contains__, dict.fromkeys(split_runs(self._blank)))
            self._runs = list(filterfalse(_NO_TOKENS.fullmatch, runs))
        return iter(self._runs)


class _Text:
    """One text (the kept text or a gap) after the URL and HTTP status passes: the URLs and
    status codes it holds, and the rest with each URL blanked out in place."""

    __slots__ = ("_all", "_runs", "blank", "passes", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.passes: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self.blank = urls_and_statuses(text, self.passes)
        self._all: set[str] | None = None
        self._runs: set[str] | None = None

    def has(self, token: str) -> bool:
        """Whether ``token`` is a hard token of the text (``token in hard_tokens(text)``)."""
        if token in self.passes["url"] or token in self.passes["error_code"]:
            return True
        if self._all is not None:
            return token in self._all
        blank = self.blank
        at = blank.find(token)
        probes = 0
        while at >= 0:
            if probes == MAX_PROBES:
                self._all = hard_tokens(self.text)
                return token in self._all
            probes += 1
            start, end = _run_at(blank, at)
            if end - start <= MAX_RUN_CHARS and any(t == token for _, t in _run_pairs(blank[start:end])):
                return True
            at = blank.find(token, max(end, at + 1))
        return False

    def _runs_at(self, positions: Iterator[int]) -> Iterator[str]:
        """The run holding each position, once per run (positions ascending)."""
        blank = self.blank
        end = -1
        for at in positions:
            if at < end:
                continue  # same run as the last position
            start, end = _run_at(blank, at)
            yield blank[start:end]

    def _finds(self, needle: str) -> Iterator[int]:
        blank = self.blank
        at = blank.find(needle)
        while at >= 0:
            yield at
            at = blank.find(needle, at + 1)

    def runs(self) -> set[str]:
        """Every run of the text (after the URL pass)."""
        if self._runs is None:
            self._runs = set(split_runs(self.blank))
        return self._runs

    def candidates(self, examine: int, known: set[str] = _NO_RUNS) -> Iterator[tuple[str, str]]:
        """``(kind, token)`` of the text's hard tokens of the mention kinds, best first, with
        repeats: error codes (HTTP status codes, then runs holding an exception name or an
        errno-like ``E..``), paths holding a ``/``, URLs, then every run in order (file names,
        identifiers, UUIDs, ids, lint codes). Lazy; runs in ``known`` are passed over (their
        tokens are known already) and at most ``examine`` other runs are looked at in all."""
        yield from (("error_code", token) for token in sorted(self.passes["error_code"]))
        marks = sorted(at for word in _ERROR_WORDS for at in self._finds(word))
        marks.extend(m.start() for m in _ERRNO_HINT.finditer(self.blank))
        fresh = _LazyRuns(self.blank, known)
        sources = (
            ("error_code", self._runs_at(iter(sorted(marks)))),
            ("path", (run for run in fresh if "/" in run)),
            ("", iter(fresh)),
        )
        for wanted, runs in sources:
            if not wanted:
                urls = sorted(self.passes["url"], key=lambda u: (self.text.find(u), u))
                yield from (("url", url) for url in urls)
            looked: set[str] = set()
            for run in runs:
                if run in looked or (wanted and run in known):
                    continue
                looked.add(run)
                examine -= 1
                if examine < 0:
                    return
                if len(run) > MAX_RUN_CHARS:
                    continue
                for kind, token in _ordered(run):
                    if not wanted or kind == wanted:
                        yield kind, token


_ERROR_WORDS: Final = ("Error", "Exception", "Warning", "Interrupt", "Exit")
_ERRNO_HINT: Final = re.compile(r"E[A-Z0-9]{2}", re.ASCII)  # every errno name starts so


@functools.lru_cache(maxsize=RUN_MEMO_MAX)
def _ordered(run: str) -> tuple[tuple[str, str], ...]:
    """The mention-kind tokens of one run, in :data:`_MENTION_KINDS` order, each kind by
    first position in the run, longer first."""
    pairs = [(kind, token) for kind, token in _run_pairs(run) if kind in _MENTION_KINDS]
    if len(pairs) < 2:
        return tuple(pairs)
    pairs.sort(key=lambda p: (_MENTION_KINDS.index(p[0]), run.find(p[1]), -len(p[1]), p[1]))
    return tuple(pairs)


def _candidates(gap: _Text, kept: _Text, limit: int, examine: int = MAX_EXAMINED) -> Iterator[str]:
    """Up to ``limit`` hard tokens of ``gap`` that ``kept`` lacks, best first (see
    :meth:`_Text.candidates`), looking at no more than ``examine`` runs. A token
    already carried by one yielded before it (the parts of a path or dotted name) is skipped."""
    produced = 0
    seen: set[str] = set()
    for _, token in gap.candidates(examine, kept.runs()):
        if token in seen or len(token) > _MAX_MENTION_TOKEN:
            continue
        seen.add(token)
        if kept.has(token):
            continue
        yield token
        produced += 1
        if produced >= limit:
            return
        seen |= _own_tokens(token)


def allocate(
    pieces: Sequence[str], keep: Sequence[bool], gaps: Sequence[tuple[int, int]], sep: str, max_chars: int
) -> dict[int, list[str]]:
    """Which dropped hard tokens each gap ``[start, end)`` of ``pieces`` lists: round-robin
    over the gaps (each gap's best candidate first) until ``max_chars`` are used; a token is
    listed once, and a gap whose next token does not fit any more lists no further ones.
    Keys are the gaps' starts."""
    kept_text = sep.join(p for p, k in zip(pieces, keep, strict=True) if k)
    if not gaps or len(kept_text) > MENTION_MAX_CHARS:
        return {}
    kept = _Text(kept_text)
    candidates: list[Iterator[str]] = []
    for start, end in gaps:
        dropped = sep.join(pieces[start:end])
        fits = len(dropped) <= MENTION_MAX_CHARS
        candidates.append(_candidates(_Text(dropped), kept, _MAX_CANDIDATES) if fits else iter(()))
    named: dict[int, list[str]] = {start: [] for start, _ in gaps}
    listed: set[str] = set()
    used = 0
    open_gaps = list(range(len(gaps)))
    while open_gaps:
        still_open: list[int] = []
        for g in open_gaps:
            for token in candidates[g]:
                if token in listed:
                    continue
                if used + len(token) + 2 <= max_chars:
                    named[gaps[g][0]].append(token)
                    listed |= _own_tokens(token)
                    used += len(token) + 2
                    still_open.append(g)
                break  # a gap whose next token does not fit is done
        open_gaps = still_open
    return named


def mentions(dropped: str, kept_text: str, limit: int, examine: int = MAX_EXAMINED) -> list[str]:
    """Up to ``limit`` hard tokens of ``dropped`` that are not hard tokens of ``kept_text``,
    in the order a gap marker would list them."""
    return list(_candidates(_Text(dropped), _Text(kept_text), limit, examine))
