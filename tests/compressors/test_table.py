"""Tables: header, first/last, query and error rows kept; row markers and column summary."""

from __future__ import annotations

import random
import re
import time

from compressors import CompressionConfig, CompressionContext
from compressors._table import column_summary, compress_table
from compressors.markers import MARKER_PREFIX

CFG = CompressionConfig(budget_tokens=300)


def csv_table(rows: int = 400, sep: str = ",") -> str:
    lines = [sep.join(["id", "host", "status", "latency_ms"])]
    for i in range(1, rows):
        status = "error" if i in (77, 301) else "ok"
        lines.append(sep.join([str(i), f"web-{i % 7}.example.com", status, str((i * 37) % 1000)]))
    return "\n".join(lines)


def test_header_first_last_rows_kept() -> None:
    """The header, the first three and the last two rows are always there."""
    text = csv_table()
    out = compress_table(text, CompressionContext(), CFG)
    assert out is not None
    lines = text.split("\n")
    for line in lines[:4] + lines[-2:]:
        assert line in out.text.split("\n")
    assert out.text.startswith(lines[0] + "\n")


def test_error_and_query_rows_kept() -> None:
    """Rows with error-ish values and rows holding a hard token of the query are kept."""
    text = csv_table()
    out = compress_table(text, CompressionContext(query="what happened to request 250?"), CFG)
    assert out is not None
    rows = out.text.split("\n")
    assert "77,web-0.example.com,error,849" in rows
    assert "301,web-0.example.com,error,137" in rows
    assert "250,web-5.example.com,ok,250" in rows


def test_row_markers_and_summary() -> None:
    """Each gap is a row-range marker; the last marker gives row count and column stats."""
    out = compress_table(csv_table(), CompressionContext(), CFG)
    assert out is not None
    markers = [line for line in out.text.split("\n") if line.startswith(MARKER_PREFIX)]
    assert all(re.match(r"\[nocp omitted: rows? \d+", m) for m in markers[:-1])
    assert re.fullmatch(
        r"\[nocp omitted: \d+ of 399 rows; columns: id 1\.\.399; host 7 distinct; "
        r"status \{ok: 397, error: 2\}; latency_ms \d+\.\.\d+\]",
        markers[-1],
    )


def test_markdown_table() -> None:
    """A markdown table keeps its caption, header and separator lines."""
    md = "Results:\n| a | b |\n|---|---|\n" + "\n".join(f"| {i} | x{i} |" for i in range(200)) + "\n"
    out = compress_table(md, CompressionContext(), CompressionConfig(budget_tokens=100))
    assert out is not None
    assert out.text.startswith("Results:\n| a | b |\n|---|---|\n| 0 | x0 |\n")
    assert "| 199 | x199 |" in out.text
    assert "a 0..199; b 200 distinct" in out.text


def test_tsv_table() -> None:
    """Tab-separated values are parsed with the tab delimiter."""
    out = compress_table(csv_table(sep="\t"), CompressionContext(), CFG)
    assert out is not None
    assert "status {ok: 397, error: 2}" in out.text


def test_quoted_multiline_cells_stay_whole() -> None:
    """A CSV record spanning lines (quoted newline) is kept or dropped as a whole."""
    lines = ["id,note"] + [f'{i},"line one\nline two {i}"' for i in range(300)]
    text = "\n".join(lines)
    out = compress_table(text, CompressionContext(), CompressionConfig(budget_tokens=200))
    assert out is not None
    assert '0,"line one\nline two 0"' in out.text
    assert out.text.count("line one") == out.text.count("line two")


def test_column_summary() -> None:
    """Numeric columns give ranges, few-valued ones counts, the rest distinct counts."""
    rows = [
        ["1", "a", "x1"],
        ["10", "a", "x2"],
        ["2.5", "b", "x3"],
        ["-3", "", "x4"],
        ["7", "a", "x5"],
        ["8", "c", "x6"],
    ]
    assert column_summary(["n", "k", "s"], rows) == "n -3..10; k {a: 3, b: 1, c: 1}; s 6 distinct"


def test_small_or_unparsable_returns_none() -> None:
    """A table within the budget, a short table and non-tables are left alone."""
    assert compress_table(csv_table(rows=5), CompressionContext(), CFG) is None
    assert compress_table("just some words\nand more", CompressionContext(), CFG) is None


def test_deterministic_and_never_longer() -> None:
    """Equal input gives byte-identical output, shorter than the input."""
    text = csv_table()
    a = compress_table(text, CompressionContext(query="web-3"), CFG)
    b = compress_table(text, CompressionContext(query="web-3"), CFG)
    assert a is not None and b is not None and a.text == b.text
    assert len(a.text) < len(text)


def test_huge_and_junk_input_finish_quickly() -> None:
    """A 20 MB single line and random bytes do not hang or crash the parser."""
    rng = random.Random(6)
    junk = bytes(rng.getrandbits(8) for _ in range(1_000_000)).decode("latin-1")
    start = time.perf_counter()
    for text in ("a,b," * 5_000_000, junk, "x" * 20_000_000):
        out = compress_table(text, CompressionContext(), CFG)
        assert out is None or len(out.text) < len(text)
    assert time.perf_counter() - start < 60
