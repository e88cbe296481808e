"""Hard tokens: the exact strings a model cannot guess back once they are cut.

A lossy compressor may drop prose, but a later turn of an agent usually *uses* the numbers,
ids, paths, urls, error codes and identifiers it read in a tool output. This module extracts
them, so that compressors can keep the lines holding the ones the query mentions and the
fidelity benchmark can measure how many survive.

Extraction is a pure, linear-time function of the text. It works in three passes:

1. **URLs**: ``http://`` / ``https://`` / ``ftp://`` up to whitespace, quotes or angle
   brackets; trailing ``.,;:!?)]}`` is not part of the URL. URLs are then blanked out so
   their pieces are not counted again.
2. **HTTP status codes**: ``HTTP 404``, ``HTTP/1.1 404``, ``status 404``, ``status code: 404``
   give the error code ``HTTP 404`` (the bare ``404`` is also a number, from pass 3).
3. **Runs**: maximal runs of ``[A-Za-z0-9_.:/~@%+#-]`` (other characters separate tokens).
   Runs longer than :data:`MAX_RUN_CHARS` are junk (base64, minified code) and skipped.
   Leading ``-+:@%#`` and trailing ``.:-+@/#`` are stripped. A run is classified whole,
   first match wins:

   - ``uuid``: ``8-4-4-4-12`` hex digits.
   - ``number``: a timestamp/date (``2024-01-31``, ``2024-01-31T10:00:05.123Z``),
     a time (``10:00:05``), or a numeral ``\\d+(\\.\\d+)*`` with an optional exponent and an
     optional attached unit (``%``, ``ms``, ``s``, ``KB``, ``MiB``, ``px`` ...) and an
     optional leading ``v`` (``v1.2.3``). Dotted
     numerals (versions, IPv4 addresses) are numbers. Bare one-digit integers are *not*
     hard tokens (too common to identify anything). Signs are not part of a number.
   - ``id``: ``0x``-prefixed hex; hex strings of 7+ characters holding a digit and a letter
     (git SHAs, object ids); digit runs of 7+ digits.
   - ``error_code``: lint/compiler codes (``E999``, ``W0611``, ``TS2345``: 1-3 capitals and
     3-5 digits), ``ORA-00942``-style codes, errno names (``ENOENT``; exactly the names in
     :data:`errno.errorcode`), and exception class names (``ValueError``,
     ``KeyboardInterrupt``: CamelCase ending in Error/Exception/Warning/Interrupt/Exit).
   - ``path``: holds a ``/`` and is made of path segments (``src/app/main.py``,
     ``/etc/hosts``, ``./x``, ``~/y``), with at least one letter and no ``//`` (``HTTP/1.1``
     is not a path); its last segment is also
     added when it is a file name with an extension. A bare ``name.ext`` with a common
     source/data extension (``setup.py``, ``README.md``) is a path too.
   - ``identifier``: a dotted name (``os.path.join``, ``dt.timedelta``: 2+ parts, not all of
     one letter), snake_case (holds ``_`` and a letter, 3+ characters, ``__init__``), camelCase
     (``getElementById``) or PascalCase with two humps (``TimeDelta``). The parts of a
     dotted name that are themselves identifiers are added too (``base_unit.total_seconds``
     gives also ``base_unit`` and ``total_seconds``).

   A run that is none of these is split at ``: = - + @ % ~ # /`` and ``..`` and each part is classified
   the same way (without splitting again). Plain words (``value``, ``HTTP``) are never hard
   tokens.

Tokens are kept exactly as written (case-sensitive); two texts share a hard token when the
same string is extracted from both.
"""

from __future__ import annotations

import errno
import re
from typing import Final

__all__ = ["KINDS", "hard_tokens", "hard_tokens_by_kind"]

KINDS: Final = ("url", "uuid", "number", "id", "error_code", "path", "identifier")
MAX_RUN_CHARS: Final = 512

_URL: Final = re.compile(r"""(?:https?|ftp)://[^\s"'`<>\\^|{}]++""", re.ASCII)
_URL_TRAIL: Final = ".,;:!?)]}'\""
_HTTP_STATUS: Final = re.compile(
    r"\b(?:HTTP(?:/\d(?:\.\d)?)?|[Ss]tatus(?:[ _][Cc]ode)?:?)[ \t]{0,3}([1-5]\d\d)\b", re.ASCII
)
_RUN_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/~@%+#-"
_RUN: Final = re.compile(f"[{re.escape(_RUN_CHARS)}]++", re.ASCII)
# UTF-8 bytes -> themselves for run characters, a space for every other byte (non-ASCII
# characters are separators, and all their bytes are >= 0x80).
_BLANK_SEPARATORS: Final = bytes(b if chr(b) in _RUN_CHARS else 32 for b in range(256))
_LEAD_STRIP: Final = "-+:@%#"
_TRAIL_STRIP: Final = ".:-+@/#"
_SPLIT: Final = re.compile(r"[:=\-+@%~#/]+|\.{2,}", re.ASCII)

_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TIMESTAMP: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T_]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
    r"|\d{1,2}:\d{2}:\d{2}(?:[.,]\d{1,9})?"
)
_UNITS: Final = (
    "%|ms|us|µs|ns|s|sec|secs|m|min|mins|h|hr|hrs|d|x|px|em|rem|pt|"
    "b|kb|mb|gb|tb|kib|mib|gib|tib|k|ki|mi|gi|hz|khz|mhz|ghz"
)
_NUMBER: Final = re.compile(rf"v?(\d+(?:\.\d+)*(?:[eE][+-]?\d+)?)((?i:{_UNITS}))?")
_HEX0X: Final = re.compile(r"0[xX][0-9a-fA-F]+")
_HEX: Final = re.compile(r"[0-9a-fA-F]{7,}")
_DIGITS: Final = re.compile(r"\d{7,}")
_LINT_CODE: Final = re.compile(r"[A-Z]{1,3}\d{3,5}|[A-Z]{2,5}-\d{3,5}")
_EXCEPTION: Final = re.compile(r"[A-Z][A-Za-z0-9]*(?:Error|Exception|Warning|Interrupt|Exit)")
_EXCEPTION_ENDS: Final = ("Error", "Exception", "Warning", "Interrupt", "Exit")
_ERRNO_NAMES: Final = frozenset(errno.errorcode.values())
_PROTOCOL: Final = re.compile(r"[A-Z]{2,}/\d+(?:\.\d+)?")
_PATH: Final = re.compile(r"(?:~|\.{1,2})?/?[\w.@+-]+(?:/[\w.@+-]*)*", re.ASCII)
_WORD: Final = re.compile(r"[A-Za-z_]\w*", re.ASCII)
_DOTTED: Final = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", re.ASCII)
_CAMEL: Final = re.compile(r"[a-z][a-z0-9]*[A-Z]|[A-Z][a-z0-9]+[A-Z][a-z0-9]")
_FILE_EXT_NAMES: Final = """
    py pyi pyx ipynb js mjs cjs ts tsx jsx json jsonl ndjson yaml yml toml cfg ini conf env txt md
    rst c h cc cpp cxx hpp hh go rs java kt kts scala rb php pl sh bash zsh ps1 bat sql html htm css
    scss xml csv tsv log lock traj proto gradle swift m mm cs fs vue svelte lua r jl dart ex exs erl
    hs ml el clj tf hcl dockerfile mk cmake pdf png jpg jpeg gif svg zip gz tgz tar whl egg so dll
    dylib exe bin wasm patch diff"""
_FILE_EXTS: Final = frozenset(_FILE_EXT_NAMES.split())


def _is_file_name(name: str) -> bool:
    stem, dot, ext = name.rpartition(".")
    return bool(dot) and bool(stem) and ext.lower() in _FILE_EXTS and any(c.isalpha() for c in stem)


def _identifier_kind(word: str) -> bool:
    """True for snake_case, camelCase, PascalCase-with-two-humps words."""
    if len(word) < 3 or not _WORD.fullmatch(word):
        return False
    if "_" in word and any(c.isalpha() for c in word):
        return True
    return _CAMEL.search(word) is not None


def _classify(run: str, out: dict[str, set[str]], split: bool) -> None:
    """Add the hard tokens of one stripped run to ``out``."""
    if not run:
        return
    # Runs are ASCII. The first character (and the length) rule most patterns out before
    # they are tried: each guard is implied by its pattern.
    first = run[0]
    digit_first = "0" <= first <= "9"
    if len(run) == 36 and _UUID.fullmatch(run):
        out["uuid"].add(run)
        return
    if digit_first and _TIMESTAMP.fullmatch(run):
        out["number"].add(run)
        return
    m = _NUMBER.fullmatch(run) if digit_first or first == "v" else None
    if m:
        digits, unit = m.group(1), m.group(2)
        if unit is None and _DIGITS.fullmatch(digits):
            out["id"].add(run)
        elif unit is not None or len(digits) > 1:
            out["number"].add(run)
        return
    if (first == "0" and _HEX0X.fullmatch(run)) or (
        len(run) >= 7
        and _HEX.fullmatch(run)
        and any(c.isdigit() for c in run)
        and any(c.isalpha() for c in run)
    ):
        out["id"].add(run)
        return
    if "A" <= first <= "Z" and (
        _LINT_CODE.fullmatch(run)
        or run in _ERRNO_NAMES
        or (run.endswith(_EXCEPTION_ENDS) and _EXCEPTION.fullmatch(run))
    ):
        out["error_code"].add(run)
        return
    if "/" in run:
        if (
            split
            and _PATH.fullmatch(run)
            and not _PROTOCOL.fullmatch(run)
            and any(c.isalpha() for c in run)
            and "//" not in run
        ):
            out["path"].add(run)
            base = run.rstrip("/").rpartition("/")[2]
            if _is_file_name(base):
                out["path"].add(base)
            return
    elif _DOTTED.fullmatch(run):
        if _is_file_name(run):
            out["path"].add(run)
            return
        parts = run.split(".")
        if any(len(p) > 1 for p in parts):
            out["identifier"].add(run)
            for part in parts:
                if _identifier_kind(part):
                    out["identifier"].add(part)
            return
    elif _identifier_kind(run):
        out["identifier"].add(run)
        return
    if split:
        for part in _SPLIT.split(run):
            part = part.strip(_LEAD_STRIP + _TRAIL_STRIP)
            if part and part != run:
                _classify(part, out, split=False)


def urls_and_statuses(text: str, out: dict[str, set[str]]) -> str:
    """The first passes: add the URLs of ``text`` to ``out["url"]`` and its HTTP status
    codes to ``out["error_code"]``; return the text with each URL replaced by as many spaces
    (positions are kept), for the run pass."""
    rest = text
    if "://" in text:
        pieces: list[str] = []
        pos = 0
        for m in _URL.finditer(text):
            url = m.group(0).rstrip(_URL_TRAIL)
            if len(url) > len(m.group(0).split("://", 1)[0]) + 3:
                out["url"].add(url)
            pieces.append(text[pos : m.start()])
            pieces.append(" " * len(url))
            pos = m.start() + len(url)
        pieces.append(text[pos:])
        rest = "".join(pieces)
    if "HTTP" in rest or "tatus" in rest:
        for m in _HTTP_STATUS.finditer(rest):
            out["error_code"].add(f"HTTP {m.group(1)}")
    return rest


def split_runs(text: str) -> list[str]:
    """The runs of ``text`` in order (what ``_RUN.findall`` gives, at about twice its speed:
    a byte translation and a C-level split)."""
    return text.encode("utf-8", "surrogatepass").translate(_BLANK_SEPARATORS).decode("ascii").split()


def hard_tokens_by_kind(text: str) -> dict[str, set[str]]:
    """The hard tokens of ``text`` grouped by kind (keys: :data:`KINDS`, all present)."""
    out: dict[str, set[str]] = {kind: set() for kind in KINDS}
    rest = urls_and_statuses(text, out)
    seen: set[str] = set()  # a run classifies the same way every time: do it once
    for run in split_runs(rest):
        if len(run) > MAX_RUN_CHARS or run in seen:
            continue
        seen.add(run)
        stripped = run.rstrip(_TRAIL_STRIP)
        if stripped.startswith(("./", "../", "~/", "/")) and len(stripped) > 2:
            _classify(stripped, out, split=True)
        else:
            _classify(stripped.lstrip(_LEAD_STRIP), out, split=True)
    return out


def hard_tokens(text: str) -> set[str]:
    """All hard tokens of ``text`` (the union over kinds); see the module docstring."""
    result: set[str] = set()
    for tokens in hard_tokens_by_kind(text).values():
        result |= tokens
    return result
