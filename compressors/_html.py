"""HTML: converted to readable markdown-like text, then trimmed to budget like plain text.

The conversion (stdlib :class:`html.parser.HTMLParser`, which never raises on broken markup;
a first pass escapes every ``<`` that does not start a complete tag, so junk cannot make it
quadratic):

- dropped with their content: ``script``, ``style``, ``noscript``, ``template``, ``svg``,
  ``canvas``, ``iframe``, ``head`` (except ``title``), ``nav``, ``footer``, ``aside``,
  ``form``, ``button``, ``select`` and any element with ``role="navigation"``,
  ``"banner"``, ``"contentinfo"``, or ``aria-hidden="true"``, or ``hidden``;
- headings become ``#`` ... ``######`` lines; paragraphs, divs and ``br`` break lines;
- list items become ``- item`` (``1. item`` in ordered lists), nested lists indented;
- links keep their target: ``text (https://...)``; in-page (``#x``) and ``javascript:``
  links keep only the text; images become ``[image: alt]``;
- table rows become ``| a | b |`` lines;
- ``pre`` keeps its whitespace; elsewhere runs of whitespace collapse to one space.

A marker line on top says the HTML was converted and what was dropped. If the text is still
above ``cfg.budget_tokens``, :func:`compressors._text.compress_text` selects the chunks the
query asks about.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Final

from compressors import tokens
from compressors._text import compress_text
from compressors._types import Compressed, CompressionConfig, CompressionContext
from compressors.markers import omitted_marker

__all__ = ["compress_html", "html_to_text"]

_SKIP_TAGS: Final = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "canvas",
        "iframe",
        "head",
        "nav",
        "footer",
        "aside",
        "form",
        "button",
        "select",
        "object",
        "embed",
    }
)
_SKIP_ROLES: Final = frozenset({"navigation", "banner", "contentinfo", "search", "menu", "menubar"})
_VOID: Final = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source"}
    | {"track", "wbr"}
)
_BLOCK: Final = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "main",
        "header",
        "blockquote",
        "figure",
        "figcaption",
        "dl",
        "dt",
        "dd",
        "address",
        "details",
        "summary",
        "table",
        "thead",
        "tbody",
        "tfoot",
        "caption",
        "ul",
        "ol",
        "hr",
        "body",
        "html",
    }
)
_HEADINGS: Final = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_MAX_TAG_CHARS: Final = 4096
_TAG: Final = re.compile(rf"<[!/?]?[A-Za-z][^<>]{{0,{_MAX_TAG_CHARS}}}>")
_SPACES: Final = re.compile(r"[ \t\r\n\f\v]+")
_BLANK_LINES: Final = re.compile(r"\n{3,}")


class _Converter(HTMLParser):
    """Streams HTML into lines of text; see the module docstring for the rules."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_tag: str | None = None  # the dropped element we are inside of
        self.skip_depth = 0  # its nesting depth (same tag name only: robust to bad markup)
        self.dropped: dict[str, int] = {}
        self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [ordered(0/1), counter]
        self.href_stack: list[str | None] = []
        self.title: list[str] | None = None
        self.title_text = ""

    # -- helpers -------------------------------------------------------------------------
    def _newline(self, blank: bool = False) -> None:
        self.out.append("\n\n" if blank else "\n")

    def _write(self, text: str) -> None:
        if self.title is not None:
            self.title.append(text)
            return
        if self.skip_tag is not None:
            return
        self.out.append(text if self.pre else _SPACES.sub(" ", text))

    # -- parser callbacks ----------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            if self.title is None and not self.title_text:
                self.title = []
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        a = dict(attrs)
        role = a.get("role") or ""
        if tag in _SKIP_TAGS or role in _SKIP_ROLES or a.get("aria-hidden") == "true" or "hidden" in a:
            self.dropped[tag] = self.dropped.get(tag, 0) + 1
            if tag not in _VOID:
                self.skip_tag = tag
                self.skip_depth = 1
            return
        if tag in _HEADINGS:
            self._newline(blank=True)
            self.out.append("#" * _HEADINGS[tag] + " ")
        elif tag == "br":
            self._newline()
        elif tag in ("ul", "ol"):
            self._newline()
            self.lists.append([1 if tag == "ol" else 0, 0])
        elif tag == "li":
            self._newline()
            indent = "  " * max(0, len(self.lists) - 1)
            if self.lists and self.lists[-1][0]:
                self.lists[-1][1] += 1
                self.out.append(f"{indent}{self.lists[-1][1]}. ")
            else:
                self.out.append(f"{indent}- ")
        elif tag == "tr":
            self._newline()
            self.out.append("|")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "pre":
            self._newline(blank=True)
            self.out.append("```\n")
            self.pre += 1
        elif tag == "a":
            href = (a.get("href") or "").strip()
            keep = href and not href.startswith(("#", "javascript:", "mailto:", "data:"))
            self.href_stack.append(href if keep else None)
        elif tag == "img":
            alt = (a.get("alt") or "").strip()
            if alt:
                self.out.append(f"[image: {_SPACES.sub(' ', alt)}]")
        elif tag in _BLOCK:
            self._newline(blank=tag == "p")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            if self.title is not None:
                self.title_text = _SPACES.sub(" ", "".join(self.title)).strip()
                self.title = None
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if not self.skip_depth:
                    self.skip_tag = None
            return
        if tag in _HEADINGS:
            self._newline(blank=True)
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._newline()
        elif tag in ("td", "th"):
            self.out.append(" |")
        elif tag == "pre":
            if self.pre:
                self.pre -= 1
            self.out.append("\n```")
            self._newline(blank=True)
        elif tag == "a":
            href = self.href_stack.pop() if self.href_stack else None
            if href:
                self.out.append(f" ({href})")
        elif tag in _BLOCK:
            self._newline(blank=tag == "p")

    def handle_data(self, data: str) -> None:
        self._write(data)

    def text(self) -> str:
        body = "".join(self.out)
        lines = [line.rstrip() for line in body.split("\n")]
        body = "\n".join(line if line.strip() else "" for line in lines)
        body = _BLANK_LINES.sub("\n\n", body).strip("\n")
        if self.title_text:
            body = f"# {self.title_text}\n\n{body}" if not body.startswith(f"# {self.title_text}") else body
        return body


def _sanitize(html: str) -> str:
    """``html`` with every ``<`` that does not open a complete tag (within
    :data:`_MAX_TAG_CHARS`) or a closed comment escaped as ``&lt;``. HTMLParser re-scans an
    unfinished tag to the end of the input for every ``<``, which is quadratic on junk like
    ``<div <div <div ...``; after this pass every ``<`` it sees ends within a bounded window."""
    out: list[str] = []
    i = 0
    comments_closed = True  # once a "-->" search fails, no later comment can close either
    while True:
        j = html.find("<", i)
        if j < 0:
            out.append(html[i:])
            return "".join(out)
        out.append(html[i:j])
        if html.startswith("<!--", j) and comments_closed:
            k = html.find("-->", j + 4)
            if k >= 0:
                out.append(html[j : k + 3])
                i = k + 3
                continue
            comments_closed = False
        m = _TAG.match(html, j)
        if m is not None and not html.startswith("<!--", j):
            out.append(m.group(0))
            i = m.end()
        else:
            out.append("&lt;")
            i = j + 1


def html_to_text(html: str) -> tuple[str, dict[str, int]]:
    """Readable text of ``html`` and how many elements of each dropped tag were removed."""
    conv = _Converter()
    conv.feed(_sanitize(html))
    conv.close()
    return conv.text(), dict(sorted(conv.dropped.items()))


def compress_html(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """HTML converted to text (and trimmed to ``cfg.budget_tokens`` by query relevance);
    ``None`` when that saves nothing."""
    converted, dropped = html_to_text(text)
    what = ", ".join(f"{tag} x{n}" for tag, n in dropped.items())
    note = "HTML converted to text (markup" + (f"; {what}" if what else "") + ")"
    omitted: tuple[str, ...] = (note,)
    method = "html-text"
    if tokens.count(converted, ctx.model) > cfg.budget_tokens:
        trimmed = compress_text(converted, ctx, cfg)
        if trimmed is not None:
            converted = trimmed.text
            omitted = (note, *trimmed.omitted)
            method = "html-text+" + trimmed.method
    result = f"{omitted_marker(note)}\n{converted}"
    if len(result) >= len(text):
        return None
    return Compressed(text=result, method=method, lossless=False, omitted=omitted)
