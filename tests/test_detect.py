"""The content-type detector: what it recognises, and that it is cheap, total and deterministic."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import ContentType, detect
from compressors._detect import detect_non_json

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
