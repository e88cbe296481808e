"""Source code and diffs: untouched below budget, structure and query regions above it."""

from __future__ import annotations

import random
import re
import time

from compressors import CompressionConfig, CompressionContext, tokens
from compressors._code import compress_code, compress_diff
from compressors.markers import MARKER_PREFIX

CFG = CompressionConfig(budget_tokens=300)


def python_module(functions: int = 40) -> str:
    lines = ["import os", "from typing import Any", "", "", "class Store:", '    """A store."""', ""]
    for i in range(functions):
        lines.append(f"    def method_{i}(self, value: int) -> int:")
        lines.append(f"        total = value * {i}")
        for k in range(6):
            lines.append(f"        total += helper_{k}(total, {k})  # step {k}")
        lines.append("        return total")
        lines.append("")
    lines[7 + 20 * 10 + 3] = "        total = parse_date(value)  # the interesting call"
    return "\n".join(lines)


def numbered_view(start: int = 1400, count: int = 100) -> str:
    body = [f"{n}:        x_{n} = compute(y_{n}, {n})" for n in range(start, start + count)]
    body[74] = f"{start + 74}:        base_unit = dt.timedelta(**{{self.precision: 1}})"
    return "\n".join(
        [
            "[File: /repo/src/marshmallow/fields.py (1997 lines total)]",
            f"({start - 1} more lines above)",
            *body,
            f"({1997 - start - count + 1} more lines below)",
        ]
    )


def test_below_budget_untouched() -> None:
    """Code within the budget is left alone (None)."""
    assert compress_code("def f():\n    return 1\n", CompressionContext(), CFG) is None
    assert compress_diff("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", CompressionContext(), CFG) is None


def test_keeps_imports_signatures_and_query_region() -> None:
    """Above budget: imports, class/def signatures and the lines around the query's identifier stay."""
    text = python_module()
    out = compress_code(text, CompressionContext(query="where is parse_date called?"), CFG)
    assert out is not None
    assert "import os" in out.text and "from typing import Any" in out.text
    assert "class Store:" in out.text
    assert "        total = parse_date(value)  # the interesting call" in out.text
    assert "    def method_20(self, value: int) -> int:" in out.text
    assert tokens.count(out.text) <= CFG.budget_tokens + 40
    assert out.method == "code-outline" and not out.lossless


def test_markers_give_line_ranges() -> None:
    """Every elided run leaves one marker with its 1-based line range and count."""
    text = python_module()
    out = compress_code(text, CompressionContext(query="parse_date"), CFG)
    assert out is not None
    markers = [line for line in out.text.split("\n") if line.startswith(MARKER_PREFIX)]
    assert markers and len(markers) == len(out.omitted)
    total = len(text.split("\n"))
    dropped = 0
    for m in markers:
        found = re.search(r"lines? (\d+)(?:-(\d+))? \((\d+) lines?\)", m)
        assert found is not None, m
        first, last, count = int(found[1]), int(found[2] or found[1]), int(found[3])
        assert last - first + 1 == count
        dropped += count
    kept = len([line for line in out.text.split("\n") if not line.startswith(MARKER_PREFIX)])
    assert kept + dropped == total


def test_numbered_view_keeps_line_numbers_and_header() -> None:
    """An agent's numbered view keeps its numbers verbatim, its header, and the asked-for line."""
    text = numbered_view()
    ctx = CompressionContext(query="look at the rounding", tool_args="open src/marshmallow/fields.py 1474")
    out = compress_code(text, ctx, CompressionConfig(budget_tokens=200))
    assert out is not None
    assert out.text.startswith(
        "[File: /repo/src/marshmallow/fields.py (1997 lines total)]\n(1399 more lines above)"
    )
    assert "1474:        base_unit = dt.timedelta(**{self.precision: 1})" in out.text
    assert "1473:        x_1473 = compute(y_1473, 1473)" in out.text
    assert "(498 more lines below)" in out.text
    assert re.search(r"\[nocp omitted: lines 14\d\d-14\d\d \(\d+ lines\)", out.text)
    for line in out.text.split("\n")[2:-1]:
        assert line.startswith(MARKER_PREFIX) or line in text


def diff_text(hunks: int = 30) -> str:
    out = [
        "diff --git a/src/app.py b/src/app.py",
        "index ad388c7..20da768 100644",
        "--- a/src/app.py",
        "+++ b/src/app.py",
    ]
    for h in range(hunks):
        start = 10 + h * 40
        out.append(f"@@ -{start},7 +{start},7 @@ def handler_{h}(request):")
        out.extend(f"     context_line_{h}_{k} = {k}" for k in range(3))
        out.append(f"-    value = old_call_{h}(request)")
        out.append(f"+    value = new_call_{h}(request, retries=3)")
        out.extend(f"     trailing_{h}_{k} = {k}" for k in range(3))
    return "\n".join(out)


def test_diff_keeps_headers_and_changes_over_context() -> None:
    """File and hunk headers always stay; changed lines are kept before context lines."""
    text = diff_text(hunks=10)
    out = compress_diff(text, CompressionContext(), CompressionConfig(budget_tokens=800))
    assert out is not None
    for line in text.split("\n"):
        if line.startswith(("diff --git", "index ", "--- ", "+++ ", "@@ ")):
            assert line in out.text
    changed = [line for line in text.split("\n") if line.startswith(("+    ", "-    "))]
    kept_changed = sum(1 for line in changed if line in out.text)
    context = [line for line in text.split("\n") if line.startswith("     ")]
    kept_context = sum(1 for line in context if line in out.text)
    assert kept_changed / len(changed) > kept_context / len(context)
    assert re.search(
        r"\[nocp omitted: diff lines? \d+(-\d+)? \((?:\+\d+, )?(?:-\d+, )?\d+ context\)", out.text
    )


def test_diff_tight_budget_drops_whole_hunks() -> None:
    """With many hunks and a small budget, whole hunks go (one marker per run), not their headers alone."""
    text = diff_text(hunks=30)
    out = compress_diff(text, CompressionContext(), CompressionConfig(budget_tokens=700))
    assert out is not None
    assert out.text.startswith("diff --git a/src/app.py b/src/app.py\nindex ad388c7..20da768 100644\n")
    assert "@@ -10,7 +10,7 @@ def handler_0(request):\n-    value = old_call_0(request)\n" in out.text
    assert re.search(r"\[nocp omitted: hunks \d+-30 \(\+\d+, -\d+, \d+ context lines\)", out.text)
    assert out.text.endswith("[nocp omitted: 180 context lines of the hunks shown]")
    shown = out.text.count("\n@@ ")
    assert 0 < shown < 30
    assert tokens.count(out.text) <= 700 + 40


def test_diff_query_hunk_kept_in_full_budget() -> None:
    """Changed lines holding a hard token of the query are kept first."""
    text = diff_text()
    out = compress_diff(
        text, CompressionContext(query="why new_call_27?"), CompressionConfig(budget_tokens=400)
    )
    assert out is not None
    assert "+    value = new_call_27(request, retries=3)" in out.text
    assert "-    value = old_call_27(request)" in out.text


def test_deterministic_and_never_longer() -> None:
    """Equal input gives byte-identical output, shorter than the input."""
    for fn, text in ((compress_code, python_module()), (compress_diff, diff_text())):
        a = fn(text, CompressionContext(query="parse_date"), CFG)
        b = fn(text, CompressionContext(query="parse_date"), CFG)
        assert a is not None and b is not None
        assert a.text == b.text and len(a.text) < len(text)


def test_huge_single_line_and_binary_junk_finish_quickly() -> None:
    """A 20 MB single line and random bytes do not hang either compressor."""
    rng = random.Random(2)
    junk = bytes(rng.getrandbits(8) for _ in range(1_000_000)).decode("latin-1")
    start = time.perf_counter()
    for fn in (compress_code, compress_diff):
        assert fn("x" * 20_000_000, CompressionContext(), CFG) is None
        out = fn(junk, CompressionContext(query="parse_date"), CFG)
        assert out is None or len(out.text) < len(junk)
    assert time.perf_counter() - start < 60


def test_structure_lines_found_in_plain_and_numbered_views() -> None:
    """Signatures, imports and decorators are structure lines (with their indentation), in
    plain source and in an agent's numbered view; other lines are not."""
    from compressors._code import _structure_indents

    source = [
        "import os",
        "@dataclass",
        "class Store:",
        "    async def load(self) -> None:",
        "        return None",
        "  pub(crate) fn parse(x: &str) -> u8 {",
        "public static int main(String[] args) {",
        "export const handler = async (event) => {",
        "#include <stdio.h>",
        "    value = compute()",
        "",
        "definitely not a def",
    ]
    want = [0, 0, 0, 4, None, 2, 0, 0, 0, None, None, None]
    text = "\n".join(source)
    assert _structure_indents(source, text, numbered=False) == want
    numbered = [f"{i + 10}:{line}" for i, line in enumerate(source)]
    assert _structure_indents(source, "\n".join(numbered), numbered=True) == want
