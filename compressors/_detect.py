"""What kind of content a tool output is: cheap, bounded, deterministic.

Only a bounded sample is read (the first :data:`SAMPLE_CHARS` characters, at most
:data:`MAX_LINES` lines, and the last few characters), so detection costs the same on a 20 MB
single line as on a page of text. Every regular expression is anchored or bounded, with no
nested quantifiers, so none can backtrack catastrophically.

Each check is defined line by line (the per-line patterns below), but runs over the sample
lines joined by newlines: one C-level scan per pattern instead of a call per line, and
``str.find`` (a memchr) for rare characters. Most checks first take a cheap upper bound on the
number of lines they could count (lines holding a character or a word every counted line
holds), and skip the exact count when even the bound misses the threshold; some take a lower
bound that reaches it. File views and git diffs are recognised from a few lines found with
``str.find``, before the sample is split. Every shortcut gives the verdict of the per-line
definition.

Detection is a guess: a compressor that finds the guess wrong raises
:class:`~compressors.exceptions.WrongContentType` and the dispatcher asks
:func:`detect_non_json` for the next best type.
"""

from __future__ import annotations

import bisect
import csv
import functools
import itertools
import json
import operator
import re
from typing import Final

from compressors._types import ContentType

__all__ = ["MAX_LINES", "SAMPLE_CHARS", "detect", "detect_non_json"]

SAMPLE_CHARS: Final = 65_536
MAX_LINES: Final = 400
_TAIL_CHARS: Final = 4096
_LINE_CHARS: Final = 2000  # per-line regexes look at most this far
_PROBE_CHARS: Final = 256  # the first and last non-space characters are usually this close
_FIND_TRIES: Final = 16  # finds of a prefix's first character before searching for the prefix
_RARE: Final = 32  # colons beyond this many: the checks using them run regexes instead
_CHUNK: Final = 64  # lines per step of a count that may stop early

# Whole-line patterns (names ending in _LINE) are per-line patterns made to run over the lines
# joined with a newline before and after each (:class:`_Sample`): a newline anchors a line
# start, (?=\n) a line end, and white space inside a line is [^\S\n]. Over the lines cut to
# _LINE_CHARS (:meth:`_Sample.short`) they see what the per-line pattern sees in
# ``line[:_LINE_CHARS]``. Quantifiers are possessive (*+, ++) where giving characters back
# cannot lead to a match, and alternatives grouped by first character, which the regex engine
# tests before entering one.

# --- JSON ---------------------------------------------------------------------------------
_OBJECT_START: Final = re.compile(r'\{\s*["}]')
_ARRAY_START: Final = re.compile(
    r'\[\s*(?:[\[{"\]]|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\s*[,\]]|(?:true|false|null)\s*[,\]])'
)

# --- diffs --------------------------------------------------------------------------------
_HUNK: Final = re.compile(r"@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")

# --- HTML ---------------------------------------------------------------------------------
_HTML_TAG: Final = re.compile(
    r"</?(?:html|head|body|div|span|p|a|ul|ol|li|table|tr|td|th|h[1-6]|script|style|meta|link|br"
    r"|img|section|article|nav|header|footer|form|input|button|pre|code|main|title)\b[^<>]{0,200}>",
    re.IGNORECASE,
)
_HTML_MIN_TAGS: Final = 8

# --- stack traces -------------------------------------------------------------------------
_TRACE_HEADER: Final = re.compile(
    r"Traceback \(most recent call last\):|Exception in thread |Caused by: |panic: |goroutine \d+ \["
)
_PY_FRAME: Final = re.compile(r'\s+File "[^"]{1,1000}", line \d+')
_OTHER_FRAME: Final = re.compile(
    r"\s+at [\w$.<>/\[\]`]{1,500}\(.{0,500}\)\s*$"  # Java, C#, Kotlin
    r"|\s+at .{1,500}:\d+:\d+\)?\s*$"  # JavaScript
    r"|\s+from .{1,500}:\d+:in "  # Ruby
    r"|\s+\S{1,500}\.go:\d+"  # Go
)
_EXCEPTION_LINE: Final = re.compile(r"[\w.]{0,200}(?:Error|Exception|Warning|Exit|Interrupt)\b:?")
# Necessary for a frame line: white space, then 'File "', 'at ', 'from ' or (Go) a word holding
# '.go:', the last looked for only when the sample holds '.go:'.
_FRAME_WORDS: Final = r'File "|at |from '
_GO_FRAME_WORDS: Final = _FRAME_WORDS + r"|\S*?\.go:"
_FRAME_ENDS: Final = ('File "', "at ", "from ", ".go:")  # how a match of those ends
_FRAME_LINE: Final = re.compile(r"\n[^\S\n]++(?:" + _FRAME_WORDS + ")")
_GO_FRAME_LINE: Final = re.compile(r"\n[^\S\n]++(?:" + _GO_FRAME_WORDS + ")")
_GO_FILE: Final = re.compile(r"\.go:")  # a literal: the regex engine's prefix scan beats str.find
# To weigh a sample with frames: header, frame and exception lines, whole-line. A frame line
# starts with white space, a header or exception line does not, a Python frame is no other
# frame; the only headers that are exception lines too start with "Exception in thread ".
_HEADER_LINE: Final = re.compile(r"\n(?:" + _TRACE_HEADER.pattern + ")")
_PY_FRAME_LINE: Final = re.compile(r'\n[^\S\n]++File "[^"\n]{1,1000}", line \d')
_OTHER_FRAME_LINE: Final = re.compile(
    r"\n[^\S\n]++(?:at [\w$.<>/\[\]`]{1,500}\(.{0,500}\)[^\S\n]*(?=\n)|at .{1,500}:\d+:\d+\)?[^\S\n]*(?=\n)"
    r"|from .{1,500}:\d+:in |\S{1,500}\.go:\d)"
)
_EXCEPTION_LINE_START: Final = re.compile(r"\n[\w.]{0,200}(?:Error|Exception|Warning|Exit|Interrupt)\b")
_THREAD_EXCEPTION_LINE: Final = re.compile(r"\nException in thread ")

# --- logs ---------------------------------------------------------------------------------
_TIMESTAMP: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"
    r"|\b\d{2}:\d{2}:\d{2}\b"
    r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d{2}:\d{2}"
)
_LEVEL_WORD: Final = re.compile(
    r"\b(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|FATAL|CRITICAL|SEVERE|PASSED|FAILED|SKIPPED|XFAIL)\b"
)
_LEVEL_BRACKET: Final = re.compile(r"\[(?:info|warn|warning|error|debug|trace|fatal)\]", re.IGNORECASE)
_LEVEL_BRACKET_LINE: Final = re.compile(_LEVEL_BRACKET.pattern + r"[^\n]*", re.IGNORECASE)
_BANNER: Final = re.compile(r"(?:={5,}|-{5,}) .{1,200} (?:={5,}|-{5,})$")
_LEVEL_WINDOW: Final = 100  # a level word must appear this close to the start of the line
# Necessary conditions of _TIMESTAMP and _LEVEL_WORD (neither spans a newline).
# (Each consumes the rest of its line: one match per line at most.)
_TIMESTAMP_HINT: Final = re.compile(r"\d\d:\d\d[^\n]*")
_LEVEL_WORD_HINT: Final = re.compile(r"[A-Z]{4}[^\n]*")
_SHAPES: Final = str.maketrans("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0" * 10 + "A" * 26)
_CAPITALS: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"A" * 26)  # in UTF-8 bytes
# A lower bound over the windows: the lines holding a _TIMESTAMP (the match takes the rest of
# the line), found from its first colon (a literal, so a fast scan) with what comes before it
# in each alternative as a fixed-width lookbehind.
_TIMESTAMP_LINE: Final = re.compile(
    r":(?:(?<=\d{4}-\d{2}-\d{2}[T ]\d{2}:)\d{2}|(?<=\b\d{2}:)\d{2}:\d{2}\b"
    r"|(?<=\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d{2}:)\d{2})[^\n]*"
)

# --- search results -----------------------------------------------------------------------
_GREP_LINE: Final = re.compile(r"([^\s:]{1,300}):\d+:")
_FOUND_HEADER: Final = re.compile(r"(?:Found \d+ match|No matches found for )")
_NUMBERED: Final = re.compile(r"\s{0,3}(?:\d{1,3}[.)]|\[\d{1,3}\]|#\d{1,3}|Result \d{1,3}:?)\s+\S")
_FIELD: Final = re.compile(r"\s*(?:Title|URL|Link|Snippet|Source|Score|Summary|Content|Document|Relevance):")
_URL: Final = re.compile(r"https?://\S")
_SEPARATOR: Final = re.compile(r"(?:-{3,}|={3,}|\*{3,}|_{3,})$")
# The lines holding a colon and a digit after it (a match takes the rest of the line): every
# _GREP_LINE match, every time, holds one.
_COLON_DIGIT: Final = re.compile(r":\d[^\n]*")
# A _GREP_LINE whose name holds '/' or '.' (looked for first, possessively: most lines fail
# there; one further than a name's 300 characters fails what follows): the name's first
# character (a hit unless a digit).
_GREP_NAME: Final = re.compile(r"\n(?=[^\s:/.]*+[/.])([^\s:])[^\s:]{0,299}:\d++:")
_NUMBERED_LINE: Final = re.compile(
    r"\n[^\S\n]{0,3}+(?:\d\d{0,2}[.)]|\[\d{1,3}\]|#\d{1,3}|Result \d{1,3}:?)[^\S\n]++\S"
)
_FIELD_LINE: Final = re.compile(
    r"\n[^\S\n]*+(?:T(?:itle)|U(?:RL)|L(?:ink)|S(?:nippet|ource|core|ummary)|C(?:ontent)|D(?:ocument)"
    r"|R(?:elevance)):"
)
_SEPARATOR_LINE: Final = re.compile(r"\n[^\S\n]*+(?:---++|===++|\*\*\*++|___++)[^\S\n]*+(?=\n)")

# --- tables -------------------------------------------------------------------------------
_PIPED_LINE: Final = re.compile(r"\n[^\S\n]*+\|")
# A line starting with '|' made of '|', ':', '-' and spaces only once stripped (group 1: to
# look for '---' in).
_TABLE_RULE_LINE: Final = re.compile(r"\n[^\S\n]*+(\|[|:\- ]*+)[^\S\n]*+(?=\n)")

# --- code ---------------------------------------------------------------------------------
_FILE_VIEW: Final = re.compile(r"\[File: .{1,1000} \(\d+ lines total\)\]")
_LINE_NUMBER: Final = re.compile(r"\s*\d+[:|\t] ?")
_CODE_START: Final = re.compile(
    r"\s*(?:def |class |import |from \S+ import |async def |@\w|function\b|const |let |var |export "
    r"|public |private |protected |static |func |fn |package |#include|#define|using |namespace "
    r"|return\b|if ?\(|for ?\(|while ?\(|\}\s*else|try ?[:{]|except\b|catch ?\(|elif |else:)"
)
_CODE_ENDINGS: Final = ("{", "}", ";", "):", "=>", "};", "})", "*/")
# _CODE_START's alternatives grouped by first character. Whole-line: a line not starting with
# a digit (none of them does), and one after a _LINE_NUMBER (its ' ?' is the white space then).
_CODE_WORDS: Final = (
    r"d(?:ef )|c(?:lass |onst |atch ?\()|i(?:mport |f ?\()|f(?:rom \S+ import |unction\b|unc |n |or ?\()"
    r"|a(?:sync def )|@\w|l(?:et )|v(?:ar )|e(?:xport |xcept\b|lif |lse:)"
    r"|p(?:ublic |rivate |rotected |ackage )|s(?:tatic )|#(?:include|define)|u(?:sing )"
    r"|n(?:amespace )|r(?:eturn\b)|w(?:hile ?\()|\}[^\S\n]*+else|t(?:ry ?[:{])"
)
_CODE_START_LINE: Final = re.compile(r"\n[^\S\n]*+(?:" + _CODE_WORDS + ")")
_NUMBERED_CODE_START_LINE: Final = re.compile(r"\n[^\S\n]*+\d++[:|\t][^\S\n]*+(?:" + _CODE_WORDS + ")")
# A line ending with one of _CODE_ENDINGS (then white space), over the reversed text. (Cutting
# a line number off first never changes the ending: the number ends in ':', '|', tab or space.)
_CODE_END_REVERSED_LINE: Final = re.compile(r"\n[^\S\n]*+(?:[{};]|:\)|>=|\)\}|/\*)")
_CODE_END_CHARS: Final = "{};>)/"  # every one of _CODE_ENDINGS holds one of these

# One scan for three kinds of line: starting with a rule (for the log bound), a _CODE_START
# line not starting with a digit, a frame line's candidate. A match is its text: a rule starts
# with one, a frame candidate ends with a frame word (no code word does).
_MARKS: Final = r"\n(?:=====|-----|[^\S\n]*+(?:" + _CODE_WORDS + r")|[^\S\n]++(?:"
_MARKED_LINE: Final = re.compile(_MARKS + _FRAME_WORDS + "))")
_GO_MARKED_LINE: Final = re.compile(_MARKS + _GO_FRAME_WORDS + "))")


def detect(text: str) -> ContentType:
    """Guess the content type of ``text`` from a bounded sample. Never raises."""
    kind = _json_kind(text)
    if kind is not None:
        return kind
    return detect_non_json(text)


def detect_non_json(text: str) -> ContentType:
    """Like :func:`detect`, for content that turned out not to be JSON after all."""
    hunk = _first_line(text, "@@", _HUNK)  # -1: no sample line is a hunk, so not a diff
    kind = _quick_kind(text, hunk)
    if kind is not None:
        return kind
    lines = _sample_lines(text)
    if not lines:
        return ContentType.TEXT
    if len(lines) == 1:
        return _one_line_kind(text, lines[0])
    sample = _Sample(lines)
    if hunk >= 0 and _is_diff(sample):
        return ContentType.DIFF
    if _is_html(text):
        return ContentType.HTML
    if _FILE_VIEW.match(lines[0]):
        return ContentType.CODE
    trace = _trace_kind(sample)
    if trace is ContentType.STACKTRACE:
        return trace
    if _is_grep_like(sample):
        return ContentType.SEARCH
    if _is_table(sample):
        return ContentType.TABLE
    if trace is ContentType.LOG or _is_log(sample):
        return ContentType.LOG
    if _is_code(sample):
        return ContentType.CODE
    if _is_search_blocks(sample):
        return ContentType.SEARCH
    return ContentType.TEXT


# --- before splitting the sample ----------------------------------------------------------


def _quick_kind(text: str, hunk: int) -> ContentType | None:
    """CODE for a file view, DIFF for a git diff, when the sample lines surely say so (the
    lines that decide are found and placed with ``str.find``, without splitting the sample);
    ``hunk`` is where the first hunk line starts, -1 when no sample line is one."""
    at = _first_non_space(text)
    if at < 0:
        return None
    if hunk < 0 and text.startswith("[File: ", at):
        # Not a diff. The first sample line (the lines before it are blank), when it is one
        # and not indented, matches _FILE_VIEW: CODE (not HTML: it starts with '[').
        end = text.find("\n", at, SAMPLE_CHARS)
        if (
            text.rfind("\n", 0, at) == at - 1
            and _kept(text, at, end)
            and _FILE_VIEW.match(text, at, SAMPLE_CHARS if end < 0 else end)
        ):
            return ContentType.CODE
    if hunk >= 0 and _first_line(text, "diff --git ") >= 0:
        return ContentType.DIFF  # a hunk and a header
    return None


def _first_line(text: str, prefix: str, pattern: re.Pattern[str] | None = None) -> int:
    """Where the first sample line that starts with ``prefix`` (and matches ``pattern``)
    starts in ``text``, -1 when no sample line does."""
    at = 0 if text.startswith(prefix) else _line_start(text, prefix, 1, SAMPLE_CHARS)
    while at >= 0:
        end = text.find("\n", at, SAMPLE_CHARS)
        if not _kept(text, at, end):
            return -1  # nor is any line after it a sample line
        if pattern is None or pattern.match(text, at, SAMPLE_CHARS if end < 0 else end):
            return at
        at = _line_start(text, prefix, at + 1, SAMPLE_CHARS)
    return -1


def _kept(text: str, at: int, end: int) -> bool:
    """Whether the non-blank line holding ``at`` (ending at ``end``: its newline in the sample,
    or -1) is one of :func:`_sample_lines`: among the first lines, not cut by the boundary."""
    if end < 0 and len(text) > SAMPLE_CHARS and text.rfind("\n", 0, at) >= 0:
        return False  # cut by the sample boundary, and not the only line
    return at < MAX_LINES or text.count("\n", 0, at) < MAX_LINES


def _one_line_kind(text: str, line: str) -> ContentType:
    """:func:`detect_non_json` of a one-line sample: the checks that need two lines or more (a
    hunk and a header, a trace header and a frame, two hits or more) cannot say yes."""
    if _is_html(text):
        return ContentType.HTML
    if _FILE_VIEW.match(line):
        return ContentType.CODE
    if _FOUND_HEADER.match(line):
        return ContentType.SEARCH
    short = line[:_LINE_CHARS]
    if not _TRACE_HEADER.match(short) and (_PY_FRAME.match(short) or _OTHER_FRAME.match(short)):
        return ContentType.LOG  # a frame without a header: a trace inside other output
    return ContentType.TEXT


# --- the sample -----------------------------------------------------------------------------


def _sample_lines(text: str) -> list[str]:
    """Up to :data:`MAX_LINES` complete lines from the start of ``text`` (a line cut by the
    sample boundary is dropped unless it is the only one), without trailing ``\\r``."""
    head = text[:SAMPLE_CHARS]
    lines = head.split("\n", MAX_LINES)
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
    elif len(text) > len(head) and len(lines) > 1:
        lines = lines[:-1]
    if "\r" not in head:
        return list(filter(str.strip, lines))
    return list(map(str.removesuffix, filter(str.strip, lines), itertools.repeat("\r")))


class _Sample:
    """The sample lines, joined with a newline before and after each line, and what several
    checks use, computed once."""

    __slots__ = ("_colon_digits", "_colons", "_short", "code_starts", "joined", "lines", "rules")
    _MANY: Final[list[int]] = []  # more colons than _RARE

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.joined = "\n".join(["", *lines, ""])
        self._short: str | None = None
        self._colons: list[int] | None = None  # not looked for yet
        self._colon_digits = -1
        self.rules = -1  # lines starting with "=====" or "-----", once counted
        self.code_starts = -1  # _CODE_START_LINE matches in short(), once counted

    def short(self) -> str:
        """Like :attr:`joined`, with every line cut to :data:`_LINE_CHARS` characters."""
        if self._short is None:
            self._short = self.joined
            if _has_long_line(self.joined):
                self._short = "\n".join(["", *[line[:_LINE_CHARS] for line in self.lines], ""])
        return self._short

    def colons(self) -> list[int] | None:
        """Where the colons of :attr:`joined` are; None when there are more than :data:`_RARE`
        (then the checks that use them run their regular expressions instead)."""
        if self._colons is None:
            self._colons = _find_all(self.joined, ":", _RARE)
        return None if self._colons is _Sample._MANY else self._colons

    def colon_digits(self) -> int:
        """At least the number of lines holding a colon and a digit after it."""
        if self._colon_digits < 0:
            colons = self.colons()
            if colons is None:
                self._colon_digits = len(_COLON_DIGIT.findall(self.joined))
            else:
                self._colon_digits = sum(1 for at in colons if self.joined[at + 1 : at + 2].isdecimal())
        return self._colon_digits


def _has_long_line(joined: str) -> bool:
    """Whether a line of ``joined`` is longer than :data:`_LINE_CHARS`: jumps from a newline
    to the last newline at most ``_LINE_CHARS + 1`` further on (a memrchr each)."""
    at = 0
    last = len(joined) - 1
    while at < last:
        at = joined.rfind("\n", at + 1, at + _LINE_CHARS + 2)
        if at < 0:
            return True
    return False


def _line_start(joined: str, prefix: str, start: int = 1, end: int | None = None) -> int:
    """Where the first line that begins with ``prefix`` at ``start`` or later (before
    ``end``) begins, -1 when none does (``start`` > 0: a line begins after a newline).

    Finds the first character of ``prefix`` (a memchr, fast while that character is rare),
    then newline + ``prefix`` once that character has turned out common."""
    if end is None:
        end = len(joined)
    char = prefix[0]
    at = joined.find(char, start, end)
    tries = _FIND_TRIES
    while at >= 0:
        if joined[at - 1] == "\n" and joined.startswith(prefix, at):
            return at
        tries -= 1
        if not tries:
            match = _newline_then(prefix).search(joined, at, end)
            return match.start() + 1 if match else -1
        at = joined.find(char, at + 1, end)
    return -1


@functools.cache
def _newline_then(prefix: str) -> re.Pattern[str]:
    """Newline + ``prefix`` as a regular expression: a literal, found by the regex engine's
    prefix scan (faster than ``str.find`` for such needles)."""
    return re.compile(re.escape("\n" + prefix))


def _lines_starting(joined: str, prefix: str, limit: float) -> int:
    """How many lines of ``joined`` begin with ``prefix``, counting no further than ``limit``."""
    count = 0
    at = _line_start(joined, prefix)
    while at >= 0 and count < limit:
        count += 1
        at = _line_start(joined, prefix, at + 1)
    return count


def _find_all(text: str, char: str, limit: int) -> list[int]:
    """Where ``char`` occurs in ``text`` (by memchr); ``_Sample._MANY`` beyond ``limit``."""
    found: list[int] = []
    at = text.find(char)
    while at >= 0:
        if len(found) == limit:
            return _Sample._MANY
        found.append(at)
        at = text.find(char, at + 1)
    return found


def _count_chars(text: str, chars: str, limit: float) -> int:
    """How often any of ``chars`` occurs in ``text``, counting no further than ``limit``."""
    count = 0
    for char in chars:
        at = text.find(char)
        while at >= 0:
            count += 1
            if count >= limit:
                return count
            at = text.find(char, at + 1)
    return count


def _first_non_space(text: str) -> int:
    """Index of the first non-space character of the sample, -1 when there is none."""
    probe = text[:_PROBE_CHARS]
    rest = probe.lstrip()
    if not rest:
        probe = text[:SAMPLE_CHARS]
        rest = probe.lstrip()
        if not rest:
            return -1
    return len(probe) - len(rest)


def _last_non_space(text: str) -> str:
    tail = text[-_PROBE_CHARS:].rstrip()
    if not tail:
        tail = text[-_TAIL_CHARS:].rstrip()
    return tail[-1:]


# --- the checks -----------------------------------------------------------------------------


def _json_kind(text: str) -> ContentType | None:
    at = _first_non_space(text)
    if at < 0:
        return None
    first = text[at]
    if first != "{" and first != "[":
        return None
    start = _OBJECT_START if first == "{" else _ARRAY_START
    if not start.match(text, at, SAMPLE_CHARS):  # the stripped sample, without copying it
        return None
    if _is_ndjson(text, at):
        return ContentType.NDJSON
    if _last_non_space(text) != ("}" if first == "{" else "]"):
        return None
    return ContentType.JSON


def _is_ndjson(text: str, at: int) -> bool:
    # The first sample line holds the first non-space character ``at`` (or there is none).
    # When it is the only one, or not a bracketed value, this is not NDJSON.
    end = text.find("\n", at, SAMPLE_CHARS)
    if end < 0:
        return False
    last = text[max(at, end - _PROBE_CHARS) : end].rstrip()[-1:] or text[at:end].rstrip()[-1:]
    if last != ("}" if text[at] == "{" else "]"):
        return False
    values = _sample_lines(text)  # none blank
    for raw in values:
        line = raw.strip()
        if not ((line[0] == "{" and line[-1] == "}") or (line[0] == "[" and line[-1] == "]")):
            return False
    if len(values) < 2:
        return False
    try:
        json.loads(values[0].strip())
    except (ValueError, RecursionError):
        return False
    return True


def _is_diff(sample: _Sample) -> bool:
    # A hunk line, and a header: a "diff --git " line or a "+++ " line after a "--- " line.
    joined = sample.joined
    at = _line_start(joined, "@@")
    while at >= 0 and not _HUNK.match(joined, at):
        at = _line_start(joined, "@@", at + 1)
    if at < 0:
        return False
    if _line_start(joined, "diff --git ") >= 0:
        return True
    at = _line_start(joined, "+++ ")
    while at >= 0:
        before = joined.rfind("\n", 0, at - 1)  # the newline before the previous line
        if before >= 0 and joined.startswith("--- ", before + 1):
            return True
        at = _line_start(joined, "+++ ", at + 1)
    return False


def _is_html(text: str) -> bool:
    at = _first_non_space(text)
    if at < 0 or text[at] != "<":
        return False
    head = text[:SAMPLE_CHARS]
    start = head.lstrip()[:4096].lower()
    if start.startswith(("<!doctype html", "<html")) or "<html" in start[:1024]:
        return True
    return any(n >= _HTML_MIN_TAGS for n, _ in enumerate(_HTML_TAG.finditer(head), start=1))


def _trace_kind(sample: _Sample) -> ContentType | None:
    """STACKTRACE when traces make up most of the sample, LOG when they sit inside other
    output (a test run), None when there is none."""
    joined = sample.joined
    colons = sample.colons()
    if colons is None:
        go = _GO_FILE.search(joined) is not None
    else:
        go = any(joined.startswith(".go", at - 3) for at in colons if at >= 3)
    short = sample.short()
    marks = (_GO_MARKED_LINE if go else _MARKED_LINE).findall(short)
    sample.rules = sum(map(str.startswith, marks, itertools.repeat(("\n=====", "\n-----"))))
    candidates = sum(map(str.endswith, marks, itertools.repeat(_FRAME_ENDS)))
    sample.code_starts = len(marks) - sample.rules - candidates
    # Without a frame line the answer is None. (An indented "from x import y" matched as
    # code may be a frame as well.)
    if not candidates and not any(map(operator.contains, marks, itertools.repeat("from "))):
        return None
    for match in (_GO_FRAME_LINE if go else _FRAME_LINE).finditer(short):
        line = short[match.start() + 1 : short.find("\n", match.end())]
        if _PY_FRAME.match(line) or _OTHER_FRAME.match(line):
            break
    else:
        return None
    # Weight: a header or exception line 1, a Python frame 2 (the frame line and the source
    # line under it), another frame 1.
    headers = len(_HEADER_LINE.findall(short))
    if not headers:
        return ContentType.LOG
    need = 0.6 * len(sample.lines)
    # (Each kind of frame is counted only when a candidate of its kind was seen.)
    python = sum(map(str.endswith, marks, itertools.repeat('File "')))
    weight = headers + (2 * len(_PY_FRAME_LINE.findall(short)) if python else 0)
    if python < candidates or "from " in "".join(marks):
        weight += len(_OTHER_FRAME_LINE.findall(short))
    if weight < need:
        weight += len(_EXCEPTION_LINE_START.findall(short)) - len(_THREAD_EXCEPTION_LINE.findall(short))
    return ContentType.STACKTRACE if weight >= need else ContentType.LOG


def _is_grep_like(sample: _Sample) -> bool:
    lines = sample.lines
    if _FOUND_HEADER.match(lines[0]):
        return True
    bound = sample.colon_digits()  # every hit holds ':<digit>'
    if bound < 3 or bound < 0.5 * len(lines):
        return False
    firsts = _GREP_NAME.findall(sample.short())
    hits = len(firsts) - sum(map(str.isdigit, firsts))
    return hits >= 3 and hits >= 0.5 * len(lines)


def _is_table(sample: _Sample) -> bool:
    lines = sample.lines
    if len(lines) < 3:
        return False
    joined = sample.joined
    if "|" in joined:
        piped = len(_PIPED_LINE.findall(joined))
        rules = _TABLE_RULE_LINE.findall(joined) if piped >= 3 and piped >= 0.8 * len(lines) else []
        if any(map(operator.contains, rules, itertools.repeat("---"))):
            return True
    for delimiter, minimum in (("\t", 1), (",", 2)):
        # A row with fields to count holds the delimiter, and rows do not share lines: when
        # too few lines hold it, the 90 % below cannot be reached (csv.reader is slow).
        if not _enough_hold(lines, joined, delimiter, 0.9 * len(lines)):
            continue
        if '"' not in joined and "\r" not in joined and csv.field_size_limit() >= SAMPLE_CHARS:
            # Without quotes or carriage returns a line is a row, split at every delimiter.
            counts = list(map(str.count, lines, itertools.repeat(delimiter)))
        else:
            try:
                counts = [len(row) - 1 for row in csv.reader(lines, delimiter=delimiter)]
            except csv.Error:
                continue
        # A count on 90 % of the lines is on most rows: it is the median.
        common = sorted(counts)[len(counts) // 2] if counts else 0
        if common >= minimum and counts.count(common) >= 0.9 * len(lines):
            return True
    return False


def _enough_hold(lines: list[str], joined: str, char: str, need: float) -> bool:
    """Whether at least ``need`` of ``lines`` hold ``char``; stops once that is out of reach."""
    if char not in joined:
        return need <= 0
    possible = len(lines)
    for start in range(0, len(lines), _CHUNK):
        chunk = lines[start : start + _CHUNK]
        possible -= len(chunk) - sum(map(operator.contains, chunk, itertools.repeat(char)))
        if possible < need:
            return False
    return True


def _is_log(sample: _Sample) -> bool:
    # An upper bound missing the threshold says no, a lower bound (the lines with a
    # timestamp) reaching it says yes; else the lines are counted.
    lines = sample.lines
    need = max(2.0, 0.3 * len(lines))
    if _log_bound(sample, need) < need:
        return False
    windows = "\n".join([line[:_LEVEL_WINDOW] for line in lines])
    if len(_TIMESTAMP_LINE.findall(windows)) >= need:
        return True
    hits = _log_hits(lines)
    return hits >= 2 and hits >= 0.3 * len(lines)


def _log_bound(sample: _Sample, need: float) -> int:
    """At least the number of lines :func:`_log_hits` counts, once that reaches ``need``: the
    lines holding a time (its colon, between digits), starting with a rule, holding a bracketed
    level, or four capitals in a row in their window."""
    joined = sample.joined
    colons = sample.colons()
    if colons is None:
        bound = sample.colon_digits()
    else:
        bound = sum(
            1 for at in colons if joined[at + 1 : at + 3].isdecimal() and joined[at - 2 : at].isdecimal()
        )
    if sample.rules < 0:
        sample.rules = _lines_starting(joined, "=====", need) + _lines_starting(joined, "-----", need)
    bound += sample.rules
    if bound < need and "[" in joined:
        bound += len(_LEVEL_BRACKET.findall(joined))
    if bound >= need:
        return bound
    lines = sample.lines
    if len(joined) > 2 * _LEVEL_WINDOW * len(lines):  # long lines: encode their windows only
        joined = "\n".join([line[:_LEVEL_WINDOW] for line in lines])
    shape = joined.encode("utf-8", "surrogatepass").translate(_CAPITALS)
    at = shape.find(b"AAAA")
    while at >= 0 and bound < need:
        bound += 1
        at = shape.find(b"AAAA", shape.find(b"\n", at))  # from the next line on
    return bound


def _log_hits(lines: list[str]) -> int:
    """The lines with a bracketed level, a timestamp or a level word in their window, or a
    banner."""
    windows = [line[:_LEVEL_WINDOW] for line in lines]
    # Per-line searches are slow and most lines of non-log text fail them all. None of these
    # patterns spans a newline, so they run over all windows at once (joined by newlines): a
    # bracketed level directly; timestamps and level words on the lines holding a necessary
    # condition of theirs (``12:34``, four capitals); banners on lines starting with a rule.
    joined = "\n".join(windows)
    starts = list(itertools.accumulate((len(w) + 1 for w in windows), initial=0))

    def lines_of(pattern: re.Pattern[str]) -> set[int]:
        return {bisect.bisect_right(starts, m.start()) - 1 for m in pattern.finditer(joined)}

    def lines_with(shape: str, needle: str) -> set[int]:
        found: set[int] = set()
        at = shape.find(needle)
        while at >= 0:
            i = bisect.bisect_right(starts, at) - 1
            found.add(i)
            at = shape.find(needle, starts[i + 1])  # the next line
        return found

    if joined.isascii():
        # The hints by plain substring search: digits read as "0", capitals as "A" (an ASCII
        # translation keeps every position).
        shape = joined.translate(_SHAPES)
        timestamps, level_words = lines_with(shape, "00:00"), lines_with(shape, "AAAA")
    else:
        timestamps, level_words = lines_of(_TIMESTAMP_HINT), lines_of(_LEVEL_WORD_HINT)
    hit = lines_of(_LEVEL_BRACKET_LINE)
    hit.update(i for i in timestamps - hit if _TIMESTAMP.search(windows[i]))
    hit.update(i for i in level_words - hit if _LEVEL_WORD.search(windows[i]))
    hit.update(
        i
        for i in lines_with("\n" + joined, "\n=====") | lines_with("\n" + joined, "\n-----")
        if i not in hit and _BANNER.match(lines[i][:_LINE_CHARS])
    )
    return len(hit)


def _is_code(sample: _Sample) -> bool:
    # A hit line starts with a code word (maybe after a line number) or ends with a code
    # ending. The code words after no number are counted already (by _trace_kind).
    lines = sample.lines
    need = max(2.0, 0.25 * len(lines))
    short = sample.short()
    starts = sample.code_starts if sample.code_starts >= 0 else len(_CODE_START_LINE.findall(short))
    if starts >= need:
        return True
    # After a number: a line number ends with '|', a tab, or a colon after white space and
    # digits. With few colons and neither of the others, those lines are tested one by one.
    joined = sample.joined
    colons = sample.colons()
    numbered = -1  # _NUMBERED_CODE_START_LINE matches, not counted yet
    if colons is not None and "|" not in joined and "\t" not in joined:
        at_numbers = [joined.rfind("\n", 0, at) for at in colons if _after_number(joined, at)]
        if not at_numbers:
            numbered = 0
        elif short is joined:
            numbered = sum(1 for at in at_numbers if _NUMBERED_CODE_START_LINE.match(joined, at))
        if numbered >= 0:
            starts += numbered
            if starts >= need:
                return True
            # A bound on the endings: how often characters occur that each of them holds.
            if starts + _count_chars(joined, _CODE_END_CHARS, need - starts) < need:
                return False
    reverse = short[::-1]
    ends = len(_CODE_END_REVERSED_LINE.findall(reverse))
    if ends >= need:
        return True
    if numbered < 0:
        numbered = len(_NUMBERED_CODE_START_LINE.findall(short))
        starts += numbered
        if starts >= need:
            return True
    if starts + ends < need:
        return False
    # Lines of both kinds count once (keyed by the newline after them).
    last = len(short) - 1
    hit = {short.find("\n", m.start() + 1) for m in _CODE_START_LINE.finditer(short)}
    if numbered:
        hit.update(short.find("\n", m.start() + 1) for m in _NUMBERED_CODE_START_LINE.finditer(short))
    hit.update(last - m.start() for m in _CODE_END_REVERSED_LINE.finditer(reverse))
    return len(hit) >= need


def _after_number(joined: str, at: int) -> bool:
    """Whether only white space and digits come before ``at`` on its line, a digit last."""
    return joined[at - 1 : at].isdecimal() and joined[joined.rfind("\n", 0, at) + 1 : at].lstrip().isdecimal()


def _is_search_blocks(sample: _Sample) -> bool:
    # Needs 2 URL lines or 4 field lines; then 4 field lines, 2 separators or 2 numbered lines.
    joined = sample.joined
    short = sample.short()
    colons = sample.colons()
    if colons is not None:
        fields, urls = _fields_and_urls(joined, colons)
        if fields < 4 and urls < 2:
            return False
    else:
        fields = len(_FIELD_LINE.findall(short))
        if fields < 4 and _url_lines(joined) < 2:
            return False
    if fields >= 4 or len(_SEPARATOR_LINE.findall(short)) >= 2:
        return True
    return len(_NUMBERED_LINE.findall(short)) >= 2


def _fields_and_urls(joined: str, colons: list[int]) -> tuple[int, int]:
    """The field lines, and the lines with a URL (up to 2), in their first
    :data:`_LINE_CHARS` characters, from the colons of ``joined`` (both hold one)."""
    fields = urls = 0
    field_line = url_line = -1
    for at in colons:
        line = joined.rfind("\n", 0, at)  # the newline before the line
        if line != field_line:  # the line's first colon: the one after a field name
            field_line = line
            match = _FIELD_LINE.match(joined, line)
            if match and match.end() == at + 1 and at - line <= _LINE_CHARS:
                fields += 1
        if urls < 2 and line != url_line and joined.startswith("//", at + 1) and _url_at(joined, at, line):
            urls += 1
            url_line = line
    return fields, urls


def _url_at(joined: str, at: int, line: int) -> bool:
    """Whether ``https?://\\S`` matches around the colon at ``at`` (followed by "//") within
    the first :data:`_LINE_CHARS` characters of its line (after the newline at ``line``)."""
    if not (
        (at >= 5 and joined.startswith("https", at - 5)) or (at >= 4 and joined.startswith("http", at - 4))
    ):
        return False
    after = joined[at + 3 : at + 4]
    return bool(after) and not after.isspace() and at + 3 - line <= _LINE_CHARS


def _url_lines(joined: str, limit: int = 2) -> int:
    """Lines with a URL in their first :data:`_LINE_CHARS` characters, counting up to ``limit``."""
    count = 0
    line_end = -1
    for match in _URL.finditer(joined):
        if match.start() < line_end:
            continue  # this line is counted already
        line_start = joined.rfind("\n", 0, match.start()) + 1
        line_end = joined.find("\n", match.start())
        if match.end() - line_start <= _LINE_CHARS:
            count += 1
            if count >= limit:
                break
    return count
