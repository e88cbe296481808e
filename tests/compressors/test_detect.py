"""The content-type detector: what it recognises, and that it is cheap, total and deterministic."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import ContentType, detect
from compressors import _detect as d
from compressors._detect import MAX_LINES, SAMPLE_CHARS, detect_non_json

PY_TRACE = """Traceback (most recent call last):
  File "/app/main.py", line 12, in <module>
    main()
  File "/app/main.py", line 8, in main
    run(config)
  File "/app/runner.py", line 41, in run
    raise ValueError("bad config")
ValueError: bad config
"""

JAVA_TRACE = """Exception in thread "main" java.lang.IllegalStateException: boom
\tat com.example.App.run(App.java:42)
\tat com.example.App.main(App.java:10)
Caused by: java.io.IOException: disk full
\tat com.example.Io.write(Io.java:7)
"""

LOG = "\n".join(
    f"2024-05-01T10:00:{i:02d}Z INFO  worker-{i % 3} processed job {1000 + i} in {i * 3} ms"
    for i in range(30)
)

SYSLOG = "\n".join(
    f"Jan 12 06:2{i % 10}:01 host sshd[{4000 + i}]: Connection closed by 10.0.0.{i} port {5000 + i}"
    for i in range(20)
)

PYTEST_RUN = """============================= test session starts ==============================
collected 3 items

tests/test_a.py::test_one PASSED                                          [ 33%]
tests/test_a.py::test_two FAILED                                          [ 66%]
tests/test_a.py::test_three PASSED                                        [100%]

=================================== FAILURES ===================================
Traceback (most recent call last):
  File "/repo/tests/test_a.py", line 9, in test_two
    assert 1 == 2
AssertionError
=========================== short test summary info ============================
FAILED tests/test_a.py::test_two - AssertionError
========================= 1 failed, 2 passed in 0.12s ==========================
"""

DIFF = """diff --git a/src/app.py b/src/app.py
index 1234567..89abcde 100644
--- a/src/app.py
+++ b/src/app.py
@@ -10,7 +10,7 @@ def handler(event):
     value = event["value"]
-    return value * 2
+    return value * 3
     # done
"""

PLAIN_DIFF = """--- a/README.md
+++ b/README.md
@@ -1,3 +1,4 @@
 # Title
+A new line.
 Body text.
"""

HTML = """<!DOCTYPE html>
<html><head><title>Docs</title></head>
<body><div class="main"><h1>Hello</h1><p>Some <a href="/x">link</a>.</p></div></body></html>
"""

HTML_FRAGMENT = (
    '<div class="result"><h2>One</h2><p>first</p><ul><li>a</li><li>b</li></ul></div>\n'
    '<div class="result"><h2>Two</h2><p>second</p><span>c</span><br></div>\n'
)

PYTHON = '''import os
from pathlib import Path


class Loader:
    """Loads things."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, name: str) -> bytes:
        path = self.root / name
        if not path.exists():
            raise FileNotFoundError(path)
        return path.read_bytes()
'''

JS = """const express = require("express");
const app = express();

function handler(req, res) {
  if (!req.query.id) {
    return res.status(400).send("missing id");
  }
  res.json({ id: req.query.id });
}

app.get("/item", handler);
"""

SWE_FILE_VIEW = """[File: /repo/src/marshmallow/fields.py (1990 lines total)]
(1100 more lines above)
1101:    def _serialize(self, value, attr, obj, **kwargs):
1102:        if value is None:
1103:            return None
1104:        base_unit = dt.timedelta(**{self.precision: 1})
1105:        return int(value.total_seconds() / base_unit.total_seconds())
(885 more lines below)
"""

CSV = "id,name,email,age\n1,Ada,ada@example.com,36\n2,Bob,bob@example.com,41\n3,Cy,cy@example.com,29\n"
TSV = "id\tname\tscore\n1\tAda\t9.5\n2\tBob\t7.25\n3\tCy\t8.0\n"
MARKDOWN_TABLE = """| name | stars | language |
|------|------:|----------|
| nocp | 120 | Python |
| toon | 4000 | TypeScript |
| tiktoken | 12000 | Rust |
"""

GREP = """src/app.py:12:    value = compute(x)
src/app.py:40:    return compute(y)
src/lib/util.py:7:def compute(v):
tests/test_app.py:3:from app import compute
"""

SWE_FIND = """Found 3 matches for "numpy_handler.py" in /pydicom__pydicom:
/pydicom__pydicom/pydicom/overlays/numpy_handler.py
/pydicom__pydicom/pydicom/pixel_data_handlers/numpy_handler.py
"""

SEARCH = """1. Python asyncio tutorial
   URL: https://example.com/asyncio
   Snippet: Learn how event loops work.

2. aiohttp client sessions
   URL: https://example.com/aiohttp
   Snippet: Reuse one ClientSession per application.

3. Structured concurrency
   URL: https://example.com/trio
   Snippet: Nurseries and cancellation scopes.
"""

MARKDOWN = """# Release notes

This release improves the proxy's handling of streaming responses. The relay now
forwards chunks as they arrive and only sniffs usage.

## Changes

- Faster startup.
- Fewer allocations in the hot path.

Thanks to everyone who reported issues.
"""

NDJSON = (
    '{"level":"info","msg":"start","n":1}\n{"level":"warn","msg":"slow","n":2}\n'
    '{"level":"info","msg":"done","n":3}\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('{"a": 1, "b": [1, 2]}', ContentType.JSON, id="json-object"),
        pytest.param('[{"a": 1}, {"a": 2}]', ContentType.JSON, id="json-array"),
        pytest.param(json.dumps({"k": list(range(5))}, indent=2), ContentType.JSON, id="json-pretty"),
        pytest.param("[]", ContentType.JSON, id="json-empty-array"),
        pytest.param("  [1, 2, 3]\n", ContentType.JSON, id="json-numbers"),
        pytest.param(NDJSON, ContentType.NDJSON, id="ndjson"),
        pytest.param(PY_TRACE, ContentType.STACKTRACE, id="python-trace"),
        pytest.param(JAVA_TRACE, ContentType.STACKTRACE, id="java-trace"),
        pytest.param(LOG, ContentType.LOG, id="iso-log"),
        pytest.param(SYSLOG, ContentType.LOG, id="syslog"),
        pytest.param(PYTEST_RUN, ContentType.LOG, id="pytest-run-with-trace"),
        pytest.param(DIFF, ContentType.DIFF, id="git-diff"),
        pytest.param(PLAIN_DIFF, ContentType.DIFF, id="unified-diff"),
        pytest.param(HTML, ContentType.HTML, id="html-document"),
        pytest.param(HTML_FRAGMENT, ContentType.HTML, id="html-fragment"),
        pytest.param(PYTHON, ContentType.CODE, id="python"),
        pytest.param(JS, ContentType.CODE, id="javascript"),
        pytest.param(SWE_FILE_VIEW, ContentType.CODE, id="swe-agent-file-view"),
        pytest.param(CSV, ContentType.TABLE, id="csv"),
        pytest.param(TSV, ContentType.TABLE, id="tsv"),
        pytest.param(MARKDOWN_TABLE, ContentType.TABLE, id="markdown-table"),
        pytest.param(GREP, ContentType.SEARCH, id="grep"),
        pytest.param(SWE_FIND, ContentType.SEARCH, id="swe-agent-find"),
        pytest.param(SEARCH, ContentType.SEARCH, id="search-results"),
        pytest.param(MARKDOWN, ContentType.TEXT, id="markdown"),
        pytest.param("", ContentType.TEXT, id="empty"),
        pytest.param("hello world", ContentType.TEXT, id="one-line"),
    ],
)
def test_detects_content_type(text: str, expected: ContentType) -> None:
    """Each kind of tool output is recognised from its content alone."""
    assert detect(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[x] Opening connection to host on port 1337: Done\n[+] ok]", id="bracket-log"),
        pytest.param("[2024-01-01 10:00:00] INFO started [pid 42]", id="timestamp-in-brackets"),
        pytest.param("{not json at all}", id="braces-prose"),
    ],
)
def test_json_lookalikes_are_not_json(text: str) -> None:
    """Text that merely starts with a bracket or brace is not taken for JSON."""
    assert detect(text) not in (ContentType.JSON, ContentType.NDJSON)


def test_detect_non_json_never_says_json() -> None:
    """The fallback detector used after a failed JSON parse never answers JSON again."""
    assert detect_non_json('{"a": 1}') not in (ContentType.JSON, ContentType.NDJSON)
    assert detect_non_json("[" * 10_000 + "]" * 10_000) not in (ContentType.JSON, ContentType.NDJSON)


def test_twenty_megabyte_single_line_is_fast() -> None:
    """A 20 MB single line (and a pathological one) is classified in well under a second."""
    for text in ("a" * 20_000_000, '{"k":"' + "x" * 20_000_000 + '"}', "<" * 20_000_000, "[" * 20_000_000):
        start = time.perf_counter()
        detect(text)
        assert time.perf_counter() - start < 0.5


def test_binary_junk_is_text() -> None:
    """Binary junk decoded leniently is plain text, not a structured type."""
    junk = bytes(range(256)).decode("latin-1") * 50
    assert detect(junk) is ContentType.TEXT
    assert detect("\x00\x01\x02\ufffd\ud800 junk") is ContentType.TEXT


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_detect_is_total_and_deterministic(text: str) -> None:
    """Any string at all gets a content type, the same one every time."""
    first = detect(text)
    assert isinstance(first, ContentType)
    assert detect(text) is first


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["{", "}", "[", "]", '"', ",", ":", "\n", " ", "a", "1", "@@", "<div>"]), max_size=200
    )
)
def test_detect_survives_structural_soup(parts: list[str]) -> None:
    """Strings made of structural characters never make the detector raise."""
    text = "".join(parts)
    assert detect(text) is detect(text)


@pytest.mark.evaldata
def test_octokit_responses_are_json(eval_data: Path) -> None:
    """Every recorded GitHub API response, pretty-printed or compact, is detected as JSON."""
    for path in sorted((eval_data / "octokit").glob("*.json")):
        for request in json.loads(path.read_text()):
            response = request["response"]
            if isinstance(response, (dict, list)):
                assert detect(json.dumps(response, indent=2)) is ContentType.JSON, path.name
                assert detect(json.dumps(response)) is ContentType.JSON, path.name


@pytest.mark.evaldata
def test_swe_agent_submissions_are_diffs(eval_data: Path) -> None:
    """The final patches of the SWE-agent trajectories are detected as unified diffs."""
    seen = 0
    for path in sorted((eval_data / "swe-agent").glob("*.traj")):
        submission = json.loads(path.read_text()).get("info", {}).get("submission")
        if submission and "diff --git" in submission:
            seen += 1
            assert detect(submission) is ContentType.DIFF, path.name
    assert seen > 0


# --- the fast paths against the per-line definitions ----------------------------------------


def reference_detect(text: str) -> ContentType:
    """What :func:`detect` is defined to answer: every check line by line, no shortcut."""
    head = text[:SAMPLE_CHARS].lstrip()
    if head[:1] in ("{", "[") and (d._OBJECT_START if head[0] == "{" else d._ARRAY_START).match(head):
        values = _reference_lines(text)
        if len(values) >= 2 and all(
            (v.strip()[0], v.strip()[-1]) in (("{", "}"), ("[", "]")) for v in values
        ):
            try:
                json.loads(values[0].strip())
                return ContentType.NDJSON
            except (ValueError, RecursionError):
                pass
        if text[-4096:].rstrip()[-1:] == ("}" if head[0] == "{" else "]"):
            return ContentType.JSON
    return reference_detect_non_json(text)


def _reference_lines(text: str) -> list[str]:
    head = text[:SAMPLE_CHARS]
    lines = head.split("\n", MAX_LINES)
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
    elif len(text) > len(head) and len(lines) > 1:
        lines = lines[:-1]
    return [line.removesuffix("\r") for line in lines if line.strip()]


def reference_detect_non_json(text: str) -> ContentType:
    """What :func:`detect_non_json` is defined to answer: every check line by line."""
    lines = _reference_lines(text)
    if not lines:
        return ContentType.TEXT
    n = len(lines)
    short = [line[:2000] for line in lines]
    hunk = header = False
    for previous, line in zip(["", *lines], lines, strict=False):
        hunk = hunk or bool(line.startswith("@@") and d._HUNK.match(line))
        header = (
            header
            or line.startswith("diff --git ")
            or (line.startswith("+++ ") and previous.startswith("--- "))
        )
    if hunk and header:
        return ContentType.DIFF
    start = text[:SAMPLE_CHARS].lstrip()[:4096].lower()
    if start.startswith("<") and (
        start.startswith(("<!doctype html", "<html"))
        or "<html" in start[:1024]
        or len(d._HTML_TAG.findall(text[:SAMPLE_CHARS])) >= 8
    ):
        return ContentType.HTML
    if d._FILE_VIEW.match(lines[0]):
        return ContentType.CODE
    headers = weight = frames = 0
    for line in short:
        if d._TRACE_HEADER.match(line):
            headers, weight = headers + 1, weight + 1
        elif d._PY_FRAME.match(line):
            frames, weight = frames + 1, weight + 2
        elif d._OTHER_FRAME.match(line):
            frames, weight = frames + 1, weight + 1
        elif d._EXCEPTION_LINE.match(line):
            weight += 1
    if frames and headers and weight >= 0.6 * n:
        return ContentType.STACKTRACE
    names = [m[1] for m in map(d._GREP_LINE.match, short) if m]
    hits = sum(1 for name in names if ("/" in name or "." in name) and not name[:1].isdigit())
    if d._FOUND_HEADER.match(lines[0]) or (hits >= 3 and hits >= 0.5 * n):
        return ContentType.SEARCH
    if n >= 3:
        piped = [line.strip() for line in lines if line.lstrip().startswith("|")]
        if (
            len(piped) >= 3
            and len(piped) >= 0.8 * n
            and any("---" in p and not p.strip("|:- ") for p in piped)
        ):
            return ContentType.TABLE
        for delimiter, minimum in (("\t", 1), (",", 2)):
            try:
                counts = Counter(len(row) - 1 for row in csv.reader(lines, delimiter=delimiter))
            except csv.Error:
                continue
            if counts:
                common, most = max(counts.items(), key=lambda item: (item[1], item[0]))
                if common >= minimum and most >= 0.9 * n:
                    return ContentType.TABLE
    hits = 0
    for line in lines:
        window = line[:100]
        if any(p.search(window) for p in (d._LEVEL_BRACKET, d._TIMESTAMP, d._LEVEL_WORD)) or d._BANNER.match(
            line[:2000]
        ):
            hits += 1
    if frames or (hits >= 2 and hits >= 0.3 * n):
        return ContentType.LOG
    hits = 0
    for line in short:
        number = d._LINE_NUMBER.match(line)
        rest = line[number.end() :] if number else line
        hits += bool(d._CODE_START.match(rest) or rest.rstrip().endswith(d._CODE_ENDINGS))
    if hits >= 2 and hits >= 0.25 * n:
        return ContentType.CODE
    numbered = sum(1 for line in short if d._NUMBERED.match(line))
    fields = sum(1 for line in short if d._FIELD.match(line))
    urls = sum(1 for line in short if "://" in line and d._URL.search(line))
    separators = sum(1 for line in short if d._SEPARATOR.match(line.strip()))
    if (urls >= 2 or fields >= 4) and (numbered >= 2 or fields >= 4 or separators >= 2):
        return ContentType.SEARCH
    return ContentType.TEXT


# Lines that each check counts, nearly counts, or is fooled by.
FRAGMENTS = [
    *(line for sample in (PY_TRACE, JAVA_TRACE, PYTEST_RUN, DIFF, SWE_FILE_VIEW, GREP, SEARCH, MARKDOWN_TABLE)
      for line in sample.splitlines()[:6]),
    "", "   ", "\t", "x", "Found 2 matches for \"x\" in /repo:", "No matches found for y",
    "@@ -1 +1 @@", "@@ nope", "diff --git a/x b/x", "--- a/x", "+++ b/x", "<div>", "<html>",
    "  at foo (/app/a.js:1:2)", "  main.go:12 +0x1", "\t/usr/go/src/x.go:3 +0x2", "    from /a/b.rb:3:in `f'",
    "  from x import y", "Exception in thread \"main\" x.Error: e", "goroutine 7 [running]:", "panic: boom",
    "KeyError: 'a'", "java.lang.NullPointerException", "12:34:56 INFO ok", "2024-01-01T10:00 ERROR z",
    "Jan  1 10:00 host x", "[warn] disk", "[INFO] started", "INFO\u00e9 x", "===== x =====", "----- y -----",
    "=====", "| a | b |", "|---|:--|", "| --- \t |", "a,b,c", "a,\"b,c\",d", "a\tb", "1. First", "[2] Second",
    "#3 third", "Result 4: r", "Title: t", "   URL: https://x.y/z", "see http://a.b and https://c.d", "---",
    "***", "___", "def f():", "  return x;", "}", "{", "} else {", "class A {", "10: def g():",
    "12|   x => y", "7\tint main() {", "@decorator", "#include <x.h>", "x = f(1) */", "src/a.py:12:  x = 1",
    "a.py:1:2:", "12.py:3:x", "\u00b2a.py:1:x", "C:/go/a.go:4 +0x1", "\u0661\u0662:\u0663\u0664:\u0665\u0666",
    "x" * 2100 + ":1:", " " * 1999 + "return", "from " + "a" * 2100 + " import b", "-" * 2100 + "x",
    "a:" + "1" * 2100 + ":", "1:" + " " * 2100 + "def x", "\x0b  at x(y:1:2)", "\u2028File \"x\", line 1",
    "x\r", "  \r", "if a and (b):",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=30),
    st.sampled_from(["\n", "\r\n"]),
)
def test_detect_agrees_with_the_line_by_line_definition(lines: list[str], repeat: int, newline: str) -> None:
    """The bounds and one-scan patterns of the detector give the verdict of checking every line."""
    text = newline.join(lines * repeat)
    assert detect(text) is reference_detect(text)
    assert detect_non_json(text) is reference_detect_non_json(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(PY_TRACE + JAVA_TRACE + LOG + SYSLOG + PYTEST_RUN, id="traces-and-logs"),
        pytest.param(DIFF + PLAIN_DIFF + HTML_FRAGMENT, id="diffs-and-html"),
        pytest.param(PYTHON + JS + SWE_FILE_VIEW + CSV + TSV + MARKDOWN_TABLE, id="code-and-tables"),
        pytest.param(GREP + SWE_FIND + SEARCH + MARKDOWN + NDJSON, id="search-and-text"),
    ],
)
def test_detect_agrees_with_the_definition_on_mixed_outputs(text: str) -> None:
    """Concatenated outputs of several kinds get the verdict of checking every line."""
    for sample in (text, text * 40, text.replace("\n", "\r\n")):
        assert detect(sample) is reference_detect(sample)
        assert detect_non_json(sample) is reference_detect_non_json(sample)


# Lines that start the sample (a trace header, a table rule, URLs), and lines a check counts
# (taken in turn).
COUNTED = [
    (["Traceback (most recent call last):"], ['  File "/a.py", line 3, in f']),
    (['Exception in thread "main" x.Error: e'], ["\tat a.B.c(B.java:1)", "KeyError: 'k'"]),
    (["panic: boom"], ["  main.go:12 +0x1", "\t/usr/go/x.go:3 +0x2"]),
    ([], ["src/a.py:12:  x = 1"]),
    (["|---|---|"], ["| a | b |"]),
    ([], ["a,b,c"]),
    ([], ["a\tb"]),
    ([], ["2024-01-01T10:00 INFO x"]),
    ([], ["[warn] disk", "x INFO y", "===== x ====="]),
    ([], ["def f():", "  x = y;", "def g(): pass;"]),
    ([], ["def f(x)", "  x = y;"]),
    ([], ["10: def g():", "  return x;"]),
    (["   URL: https://x.y/z"], ["Title: t"]),
    (["see http://a.b", "URL: http://c.d"], ["1. First", "---"]),
    (["see http://a.b", "URL: http://c.d"], ["***"]),
]
FILLER = ["plain words here", "  indented words", "x = y", "Other words, and more"]


@pytest.mark.parametrize(("first", "counted"), COUNTED)
def test_detect_agrees_with_the_definition_at_the_thresholds(first: list[str], counted: list[str]) -> None:
    """With every number of counted lines, around each threshold, the verdict is the definition's."""
    for size in (3, 4, 5, 10, 20, 21, 40):
        for count in range(size + 1):
            body = [counted[i % len(counted)] for i in range(count)]
            body += [FILLER[i % len(FILLER)] for i in range(size - count)]
            for lines in (body, body[::-1], first + body):
                text = "\n".join(lines)
                assert detect(text) is reference_detect(text), (first, counted, size, count)
                assert detect_non_json(text) is reference_detect_non_json(text), (first, counted, size, count)


def test_file_view_with_a_diff_past_the_sample_lines_is_code() -> None:
    """A file view whose only diff lies past the first MAX_LINES lines is code; one within them is a diff."""
    view = SWE_FILE_VIEW + "".join(f"{i}:    x = {i}\n" for i in range(MAX_LINES))
    assert detect(view + DIFF) is ContentType.CODE
    assert detect(SWE_FILE_VIEW + DIFF) is ContentType.DIFF
    indented = "  [File: /repo/a.py (3 lines total)]\nplain words\nmore plain words\n"  # not a file view
    assert detect(indented) is reference_detect(indented) is ContentType.TEXT


def test_diff_lines_cut_by_the_sample_boundary_do_not_count() -> None:
    """A hunk line cut by the sample boundary does not make a diff; the same line within the sample does."""
    top = "diff --git a/x b/x\n" + ("x" * 200 + "\n") * 300

    def hunk_at(offset: int) -> str:
        return top + "y" * (offset - len(top) - 1) + "\n@@ -1 +1 @@\n" + "z\n" * 10

    cut = hunk_at(SAMPLE_CHARS - 3)
    assert detect(cut) is reference_detect(cut) is not ContentType.DIFF
    assert detect(hunk_at(SAMPLE_CHARS - 20)) is ContentType.DIFF
    last = cut[: SAMPLE_CHARS - 12] + "\n@@ -1 +1 @@"  # the last line, ending at the boundary
    assert len(last) == SAMPLE_CHARS
    assert detect(last) is ContentType.DIFF


def test_one_line_samples() -> None:
    """A one-line sample is a frame (log), a search header, a file view, or else text."""
    assert detect('  File "/app/x.py", line 3, in f') is ContentType.LOG
    assert detect('Found 3 matches for "x" in /repo:') is ContentType.SEARCH
    assert detect("[File: /repo/a.py (3 lines total)]") is ContentType.CODE
    assert detect("def f(): return 1;") is ContentType.TEXT  # code needs two lines
    assert detect("Traceback (most recent call last):") is ContentType.TEXT
