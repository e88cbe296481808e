"""The dashboard page: ``static/index.html`` with ``dashboard.css`` and ``dashboard.js`` put
inline, so the page is one response (no build step, no CDN, no further request needing the
admin key). A Content-Security-Policy allows exactly those two inline blocks (by their SHA-256),
requests to this origin only, and nothing else; the page builds the DOM with ``textContent``,
never HTML from the data, since model and tool names are the clients' choice."""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["Page", "page"]


@dataclass(frozen=True, slots=True)
class Page:
    """The page's bytes and the headers it is served with."""

    body: bytes
    headers: dict[str, str]


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> Page:
    """The dashboard page (read from the package once)."""
    static = resources.files("proxy.dashboard").joinpath("static")
    css = static.joinpath("dashboard.css").read_text("utf-8")
    js = static.joinpath("dashboard.js").read_text("utf-8")
    html = static.joinpath("index.html").read_text("utf-8")
    html = html.replace("<!--STYLE-->", f"<style>{css}</style>").replace(
        "<!--SCRIPT-->", f"<script>{js}</script>"
    )
    csp = (
        f"default-src 'none'; script-src {_sha256(js)}; style-src {_sha256(css)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",  # the admin key may be in the page's URL (?key=)
        "X-Content-Type-Options": "nosniff",
    }
    return Page(html.encode("utf-8"), headers)
