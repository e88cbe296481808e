"""Logs and stack traces: templates with counts, errors and ends kept, markers, bad input."""

from __future__ import annotations

import random
import time

from compressors import CompressionConfig, CompressionContext, tokens
from compressors._logtext import compress_logs, is_important_line, mask_line
from compressors.markers import MARKER_PREFIX

CTX = CompressionContext()
CFG = CompressionConfig()


def sshd_log(n: int = 300) -> str:
    lines = ["2024-05-01T10:00:00Z sshd[123]: Server listening on 0.0.0.0 port 22"]
    for i in range(n):
        lines.append(
            f"2024-05-01T10:{i % 60:02d}:{i % 60:02d}Z sshd[{1000 + i}]: "
            f"Connection closed by 10.0.{i % 7}.{i % 250} port {40000 + i}"
        )
        if i == 150:
            lines.append("2024-05-01T10:30:00Z sshd[1150]: error: PAM authentication failure for root")
    lines.append("2024-05-01T11:00:00Z sshd[1]: Received signal 15; terminating.")
    return "\n".join(lines)


def varied_log(n: int = 400, seed: int = 3) -> str:
    """Lines that do not collapse into few templates (distinct words), so cutting is needed."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    lines = ["BEGIN build 2024-05-01"]
    for i in range(n):
        text = " ".join(rng.choice(words) + rng.choice(words) for _ in range(6))
        lines.append(f"step{i}: {text}")
    lines.insert(200, "ERROR: linker failed on libfoo.so (exit 2)")
    lines.append("END build: done")
    return "\n".join(lines)


def test_mask_line_replaces_variables() -> None:
    """Timestamps, IPs, hex ids and numbers become placeholders; the values are returned."""
    template, values = mask_line("2024-05-01T10:00:00Z conn 10.0.0.1 port 22 id 0x1f sha ab12cd3")
    assert template == "<TS> conn <IP> port <N> id <HEX> sha <HEX>"
    assert values == ["2024-05-01T10:00:00Z", "10.0.0.1", "22", "0x1f", "ab12cd3"]


def test_repeated_lines_collapse_into_counted_template() -> None:
    """300 connection lines become one ``[x300]`` template with placeholders."""
    out = compress_logs(sshd_log(), CTX, CFG)
    assert out is not None
    assert "[x300] <TS> sshd[<N>]: Connection closed by <IP> port <N>" in out.text
    assert out.text.count("Connection closed") == 1
    assert not out.lossless


def test_template_shows_first_and_last_values() -> None:
    """The first and last occurrences' real values stay visible next to the template."""
    out = compress_logs(sshd_log(), CTX, CFG)
    assert out is not None
    assert "10.0.0.0 40000" in out.text
    assert "10.0.5.49 40299" in out.text


def test_error_first_and_last_lines_kept() -> None:
    """The error line and the first and last lines survive verbatim."""
    text = sshd_log()
    out = compress_logs(text, CTX, CFG)
    assert out is not None
    lines = text.split("\n")
    error = "2024-05-01T10:30:00Z sshd[1150]: error: PAM authentication failure for root"
    for line in (lines[0], lines[-1], error):
        assert line in out.text


def test_collapse_leaves_a_marker() -> None:
    """Collapsing repeated lines is a lossy cut and says so in a marker."""
    out = compress_logs(sshd_log(), CTX, CFG)
    assert out is not None
    assert f"{MARKER_PREFIX}300 repeated lines collapsed into 1 [xN] template]" in out.text


def test_over_budget_drops_lines_with_markers_but_keeps_errors_and_ends() -> None:
    """Above the budget, lines are dropped with a line-range marker per gap; errors and ends stay."""
    text = varied_log()
    cfg = CompressionConfig(budget_tokens=300)
    out = compress_logs(text, CTX, cfg)
    assert out is not None
    assert "BEGIN build 2024-05-01" in out.text
    assert "END build: done" in out.text
    assert "ERROR: linker failed on libfoo.so (exit 2)" in out.text
    gaps = [line for line in out.text.split("\n") if line.startswith(MARKER_PREFIX + "line")]
    assert gaps
    assert len(gaps) == len([o for o in out.omitted if o.startswith("line")])
    assert tokens.count(out.text) < tokens.count(text) // 2


def test_query_hard_token_line_kept_verbatim() -> None:
    """A line holding a hard token the query names stays verbatim and is not templated."""
    text = "\n".join([f"req-{i:04d} GET /api/items/{i} 200 in {i % 50}ms trace_{i:08x}" for i in range(500)])
    ctx = CompressionContext(query="why is trace_000000ff slow?")
    out = compress_logs(text, ctx, CompressionConfig(budget_tokens=200))
    assert out is not None
    assert "req-0255 GET /api/items/255 200 in 5ms trace_000000ff" in out.text


def test_stack_trace_lines_are_important() -> None:
    """Traceback headers, frames, carets and exception lines count as important."""
    for line in (
        "Traceback (most recent call last):",
        '  File "/app/x.py", line 12, in main',
        "    at com.example.Foo.bar(Foo.java:42)",
        "ValueError: bad value",
        "         ^^^^^",
        "WARNING: disk almost full",
    ):
        assert is_important_line(line), line
    assert not is_important_line("INFO: request served in 12 ms")


def test_deterministic() -> None:
    """Equal input gives byte-identical output."""
    text = varied_log()
    cfg = CompressionConfig(budget_tokens=300)
    a = compress_logs(text, CTX, cfg)
    b = compress_logs(text, CTX, cfg)
    assert a is not None and b is not None
    assert a.text == b.text and a.omitted == b.omitted


def test_never_longer_than_input() -> None:
    """Output is shorter than the input, or None."""
    for text in (sshd_log(5), varied_log(30), "a\nb\nc", "same\nsame"):
        out = compress_logs(text, CTX, CompressionConfig(budget_tokens=50))
        assert out is None or len(out.text) < len(text)


def test_nothing_to_gain_returns_none() -> None:
    """Distinct lines under the budget: nothing to collapse or cut, so None."""
    assert compress_logs("one line\nanother line\nthird line", CTX, CFG) is None


def test_huge_single_line_and_binary_junk_finish_quickly() -> None:
    """A 20 MB single line and random bytes are clipped/handled quickly, with markers."""
    rng = random.Random(1)
    junk = bytes(rng.getrandbits(8) for _ in range(1_000_000)).decode("latin-1")
    start = time.perf_counter()
    out = compress_logs("x" * 20_000_000, CTX, CFG)
    assert out is not None and MARKER_PREFIX in out.text and len(out.text) < 5000
    out = compress_logs(junk, CTX, CFG)
    assert out is None or len(out.text) < len(junk)
    assert time.perf_counter() - start < 30
