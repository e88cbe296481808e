"""HTML: readable text (boilerplate dropped, links/headings/lists/tables kept), marker, bad input."""

from __future__ import annotations

import random
import time

from compressors import CompressionConfig, CompressionContext, tokens
from compressors._html import compress_html, html_to_text
from compressors.markers import MARKER_PREFIX

PAGE = """<!doctype html><html><head><title>Release notes &amp; more</title>
<style>body { color: red }</style><script>var s = "<p>not text</p>";</script></head><body>
<nav><a href="/">Home</a> <a href="/docs">Docs</a></nav>
<h1>Version 2.3</h1>
<p>This release fixes <b>CVE-2024-1234</b> in the
   parser. See <a href="https://example.com/advisory/42">the advisory</a> or <a href="#top">top</a>.</p>
<ul><li>Faster startup</li><li>New <code>--json</code> flag<ol><li>one</li><li>two</li></ol></li></ul>
<table><tr><th>name</th><th>value</th></tr><tr><td>timeout_ms</td><td>500</td></tr></table>
<pre>def f():
    return 1</pre>
<div hidden>secret</div><div role="navigation">menu</div>
<footer>(c) 2024 <a href="/legal">Legal</a></footer></body></html>"""


def test_conversion_drops_boilerplate() -> None:
    """Scripts, styles, nav, footer, hidden and navigation-role elements disappear."""
    text, dropped = html_to_text(PAGE)
    for gone in ("color: red", "not text", "Home", "Docs", "secret", "menu", "Legal", "(c) 2024"):
        assert gone not in text
    assert dropped == {"div": 2, "footer": 1, "head": 1, "nav": 1}


def test_conversion_keeps_structure() -> None:
    """Title, headings, link targets, list items, table rows and pre blocks survive as text."""
    text, _ = html_to_text(PAGE)
    assert text.startswith("# Release notes & more\n")
    assert "# Version 2.3" in text
    assert "This release fixes CVE-2024-1234 in the parser." in text
    assert "the advisory (https://example.com/advisory/42)" in text
    assert "top (#top)" not in text and " top." in text
    assert "- Faster startup" in text and "  1. one" in text and "  2. two" in text
    assert "| name | value |" in text and "| timeout_ms | 500 |" in text
    assert "```\ndef f():\n    return 1\n```" in text


def test_marker_notes_the_conversion() -> None:
    """The output starts with a marker saying the HTML was converted and what was dropped."""
    out = compress_html(PAGE, CompressionContext(), CompressionConfig())
    assert out is not None and not out.lossless
    first = out.text.split("\n", 1)[0]
    assert first == f"{MARKER_PREFIX}HTML converted to text (markup; div x2, footer x1, head x1, nav x1)]"
    assert out.method == "html-text"


def test_long_page_is_trimmed_by_query() -> None:
    """Above the budget, the converted text is cut to the chunks the query asks about."""
    sections = "".join(f"<h2>Part {i}</h2><p>{'lorem ipsum dolor sit amet ' * 20}</p>" for i in range(60))
    sections += "<h2>Install</h2><p>Run pip install frobnicator==2.3 to install it.</p>"
    html = f"<html><body>{sections}</body></html>"
    cfg = CompressionConfig(budget_tokens=300)
    out = compress_html(html, CompressionContext(query="how to install frobnicator"), cfg)
    assert out is not None
    assert "pip install frobnicator==2.3" in out.text
    assert out.method == "html-text+text-bm25"
    assert tokens.count(out.text) <= 400


def test_malformed_html_does_not_crash() -> None:
    """Unclosed tags, stray end tags and broken comments still give text."""
    out, _ = html_to_text("<div><p>one<span>two</div></p></b><!-- open comment <p>three")
    assert "one" in out and "two" in out


def test_deterministic_and_never_longer() -> None:
    """Equal input gives byte-identical output, shorter than the input."""
    a = compress_html(PAGE, CompressionContext(), CompressionConfig())
    b = compress_html(PAGE, CompressionContext(), CompressionConfig())
    assert a is not None and b is not None and a.text == b.text
    assert len(a.text) < len(PAGE)
    assert compress_html("<p>x</p>", CompressionContext(), CompressionConfig()) is None


def test_huge_and_junk_input_finish_quickly() -> None:
    """A 20 MB single line, unclosed-tag junk and random bytes do not hang the parser."""
    rng = random.Random(4)
    junk = bytes(rng.getrandbits(8) for _ in range(1_000_000)).decode("latin-1")
    start = time.perf_counter()
    for text in ("x" * 20_000_000, "<div " * 1_000_000, "<!--" * 500_000, junk):
        out = compress_html(text, CompressionContext(), CompressionConfig())
        assert out is None or len(out.text) < len(text)
    assert time.perf_counter() - start < 60
