"""What kind of content a tool output is: cheap, bounded, deterministic.

Only a bounded sample is read (the first :data:`SAMPLE_CHARS` characters, at most
:data:`MAX_LINES` lines, and the last few characters), so detection costs the same on a 20 MB
single line as on a page of text. Every regular expression is anchored or bounded, with no
nested quantifiers, so none can backtrack catastrophically.

Detection is a guess: a compressor that finds the guess wrong raises
:class:`~compressors.exceptions.WrongContentType` and the dispatcher asks
:func:`detect_non_json` for the next best type.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import re
from collections import Counter
from typing import Final

from compressors._types import ContentType

__all__ = ["MAX_LINES", "SAMPLE_CHARS", "detect", "detect_non_json"]

SAMPLE_CHARS: Final = 65_536
MAX_LINES: Final = 400
_TAIL_CHARS: Final = 4096
_LINE_CHARS: Final = 2000  # per-line regexes look at most this far

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
_FRAME_STARTS: Final = ('File "', "at ", "from ")


def _may_be_frame(line: str) -> bool:
    """Necessary for a frame line: white space, then 'File "', 'at ' or 'from '; or '.go:'."""
    return (line[:1].isspace() and line.lstrip().startswith(_FRAME_STARTS)) or ".go:" in line


_EXCEPTION_LINE: Final = re.compile(r"[\w.]{0,200}(?:Error|Exception|Warning|Exit|Interrupt)\b:?")

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

# --- search results -----------------------------------------------------------------------
_GREP_LINE: Final = re.compile(r"([^\s:]{1,300}):\d+:")
_FOUND_HEADER: Final = re.compile(r"(?:Found \d+ match|No matches found for )")
_NUMBERED: Final = re.compile(r"\s{0,3}(?:\d{1,3}[.)]|\[\d{1,3}\]|#\d{1,3}|Result \d{1,3}:?)\s+\S")
_FIELD: Final = re.compile(r"\s*(?:Title|URL|Link|Snippet|Source|Score|Summary|Content|Document|Relevance):")
_URL: Final = re.compile(r"https?://\S")
_SEPARATOR: Final = re.compile(r"(?:-{3,}|={3,}|\*{3,}|_{3,})$")

# --- code ---------------------------------------------------------------------------------
_FILE_VIEW: Final = re.compile(r"\[File: .{1,1000} \(\d+ lines total\)\]")
_LINE_NUMBER: Final = re.compile(r"\s*\d+[:|\t] ?")
_CODE_START: Final = re.compile(
    r"\s*(?:def |class |import |from \S+ import |async def |@\w|function\b|const |let |var |export "
    r"|public |private |protected |static |func |fn |package |#include|#define|using |namespace "
    r"|return\b|if ?\(|for ?\(|while ?\(|\}\s*else|try ?[:{]|except\b|catch ?\(|elif |else:)"
)
_CODE_ENDINGS: Final = ("{", "}", ";", "):", "=>", "};", "})", "*/")


def detect(text: str) -> ContentType:
    """Guess the content type of ``text`` from a bounded sample. Never raises."""
    kind = _json_kind(text)
    if kind is not None:
        return kind
    return detect_non_json(text)


def detect_non_json(text: str) -> ContentType:
    """Like :func:`detect`, for content that turned out not to be JSON after all."""
    lines = _sample_lines(text)
    if not lines:
        return ContentType.TEXT
    if _is_diff(lines):
        return ContentType.DIFF
    if _is_html(text[:SAMPLE_CHARS]):
        return ContentType.HTML
    if _FILE_VIEW.match(lines[0]):
        return ContentType.CODE
    trace = _trace_kind(lines)
    if trace is ContentType.STACKTRACE:
        return trace
    if _is_grep_like(lines):
        return ContentType.SEARCH
    if _is_table(lines):
        return ContentType.TABLE
    if trace is ContentType.LOG or _is_log(lines):
        return ContentType.LOG
    if _is_code(lines):
        return ContentType.CODE
    if _is_search_blocks(lines):
        return ContentType.SEARCH
    return ContentType.TEXT


def _first_non_space(text: str) -> str:
    head = text[:SAMPLE_CHARS].lstrip()
    return head[:1]


def _last_non_space(text: str) -> str:
    tail = text[-_TAIL_CHARS:].rstrip()
    return tail[-1:]


def _json_kind(text: str) -> ContentType | None:
    first = _first_non_space(text)
    if first not in ("{", "["):
        return None
    last = _last_non_space(text)
    head = text[:SAMPLE_CHARS].lstrip()
    closer = "}" if first == "{" else "]"
    start = _OBJECT_START if first == "{" else _ARRAY_START
    if not start.match(head):
        return None
    if _is_ndjson(text):
        return ContentType.NDJSON
    if last != closer:
        return None
    return ContentType.JSON


def _is_ndjson(text: str) -> bool:
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
    return [line[:-1] if line.endswith("\r") else line for line in lines if line.strip()]


def _is_diff(lines: list[str]) -> bool:
    # Necessary: a line starting with "@@", and one starting with "diff --git " or "+++ ".
    joined = "\n" + "\n".join(lines)
    if "\n@@" not in joined or ("\ndiff --git " not in joined and "\n+++ " not in joined):
        return False
    has_hunk = False
    has_header = False
    previous = ""
    for line in lines:
        if line.startswith("@@") and _HUNK.match(line):
            has_hunk = True
        elif line.startswith("diff --git ") or (line.startswith("+++ ") and previous.startswith("--- ")):
            has_header = True
        previous = line
    return has_hunk and has_header


def _is_html(head: str) -> bool:
    start = head.lstrip()[:4096].lower()
    if not start.startswith("<"):
        return False
    if start.startswith(("<!doctype html", "<html")) or "<html" in start[:1024]:
        return True
    return any(n >= _HTML_MIN_TAGS for n, _ in enumerate(_HTML_TAG.finditer(head), start=1))


def _trace_kind(lines: list[str]) -> ContentType | None:
    """STACKTRACE when traces make up most of the sample, LOG when they sit inside other
    output (a test run), None when there is none."""
    # Without a frame line the answer is None: every frame pattern needs the line to start
    # with white space followed by 'File "', 'at ' or 'from ', or holds '.go:' and a digit.
    if not any(map(_may_be_frame, lines)):
        return None
    headers = 0
    weight = 0
    frames = 0
    for line in lines:
        short = line[:_LINE_CHARS]
        if _TRACE_HEADER.match(short):
            headers += 1
            weight += 1
        elif _PY_FRAME.match(short):
            frames += 1
            weight += 2  # the frame line and the source line under it
        elif _OTHER_FRAME.match(short):
            frames += 1
            weight += 1
        elif _EXCEPTION_LINE.match(short):
            weight += 1
    if frames == 0:
        return None
    if headers and weight >= 0.6 * len(lines):
        return ContentType.STACKTRACE
    return ContentType.LOG


def _is_grep_like(lines: list[str]) -> bool:
    if _FOUND_HEADER.match(lines[0]):
        return True
    hits = 0
    for line in lines:
        m = _GREP_LINE.match(line[:_LINE_CHARS])
        if m and ("/" in m.group(1) or "." in m.group(1)) and not m.group(1)[:1].isdigit():
            hits += 1
    return hits >= 3 and hits >= 0.5 * len(lines)


def _is_table(lines: list[str]) -> bool:
    if len(lines) < 3:
        return False
    piped = [line.strip() for line in lines if line.lstrip().startswith("|")]
    if len(piped) >= 3 and len(piped) >= 0.8 * len(lines):
        for line in piped:
            if "---" in line and not line.strip("|:- "):
                return True
    for delimiter, minimum in (("\t", 1), (",", 2)):
        # A row with fields to count holds the delimiter, and rows do not share lines: when
        # too few lines hold it, the 90 % below cannot be reached (csv.reader is slow).
        if sum(1 for line in lines if delimiter in line) < 0.9 * len(lines):
            continue
        try:
            counts = [len(row) - 1 for row in csv.reader(lines, delimiter=delimiter)]
        except csv.Error:
            continue
        common, hits = _most_common(counts)
        if common >= minimum and hits >= 0.9 * len(lines):
            return True
    return False


def _most_common(counts: list[int]) -> tuple[int, int]:
    """(value, occurrences) of the most frequent count; ties go to the larger value."""
    if not counts:
        return 0, 0
    tally = Counter(counts)
    value = max(tally, key=lambda c: (tally[c], c))
    return value, tally[value]


def _is_log(lines: list[str]) -> bool:
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
    hits = len(hit)
    return hits >= 2 and hits >= 0.3 * len(lines)


def _is_code(lines: list[str]) -> bool:
    hits = 0
    for raw in lines:
        line = raw[:_LINE_CHARS]
        number = _LINE_NUMBER.match(line)
        if number:
            line = line[number.end() :]
        stripped = line.rstrip()
        if _CODE_START.match(line) or stripped.endswith(_CODE_ENDINGS):
            hits += 1
    return hits >= 2 and hits >= 0.25 * len(lines)


def _is_search_blocks(lines: list[str]) -> bool:
    numbered = fields = urls = separators = 0
    for raw in lines:
        line = raw[:_LINE_CHARS]
        if _NUMBERED.match(line):
            numbered += 1
        if _FIELD.match(line):
            fields += 1
        if "://" in line and _URL.search(line):
            urls += 1
        if _SEPARATOR.match(line.strip()):
            separators += 1
    if urls < 2 and fields < 4:
        return False
    return numbered >= 2 or fields >= 4 or separators >= 2
