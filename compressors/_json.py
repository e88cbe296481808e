"""Lossless JSON: compact JSON or TOON, whichever costs fewer tokens.

Lossless means the value the model reads is exactly the value the tool returned. The input is
parsed strictly: NaN/Infinity, duplicate keys, numbers that a float cannot hold exactly and
integers too long for Python's parser are refused (:class:`CompressionFailed`: the content is
sent as it was), and text that is not JSON at all or nests too deeply to parse raises
:class:`WrongContentType` so the dispatcher can try the plain-text path.

A TOON candidate is sent only after decoding it gives back the original value under
type-strict equality (``1``, ``1.0`` and ``True`` differ; so do ``0.0`` and ``-0.0``; key
order counts). TOON comes from ``python-toon`` (module ``toon``), the implementation that passes
all 516 conformance fixtures of the TOON specification (see tests/test_toon_conformance.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, NoReturn

import toon
import toon.primitives as _toon_primitives
from toon.types import DecodeOptions

from compressors import tokens
from compressors._types import Compressed, CompressionConfig, CompressionContext
from compressors.exceptions import CompressionFailed, WrongContentType

__all__ = [
    "ToonDecodeError",
    "compact",
    "compress_json",
    "compress_ndjson",
    "encode_best",
    "parse_exact",
    "parse_ndjson",
    "same_value",
    "toon_decode",
    "toon_encode",
]

METHOD_COMPACT: Final = "json-compact"
METHOD_TOON: Final = "json-toon"
METHOD_NDJSON_COMPACT: Final = "ndjson-compact"
METHOD_NDJSON_TOON: Final = "ndjson-toon"

ToonDecodeError: type[ValueError] = toon.ToonDecodeError


# --- a faster string escape for python-toon ---------------------------------------------------
#
# python-toon escapes every quoted string one character at a time in Python, which is most of
# the time of a TOON encoding (quoted strings are common: URLs, text with colons). The same
# escapes are made here with one regular-expression pass. The replacement is installed only
# if it gives exactly what python-toon's own function gives on probe strings covering every
# escape (a changed python-toon keeps its own function), and every TOON text we send is still
# decoded and compared with the original value before it is sent.

_TOON_ESCAPE: Final = re.compile(r'[\\"\x00-\x1f]')
_TOON_PROBES: Final = ("", "plain", 'a"b\\c', "x\ny\rz\tw", "\x00\x01\x1f\x7f \u00e9\u2028", "k: v, [1]{2}")


def _install_fast_toon_escape() -> bool:
    original = getattr(_toon_primitives, "escape_string", None)
    escapes = getattr(_toon_primitives, "_ESCAPES", None)
    check = getattr(_toon_primitives, "check_scalar_values", None)
    if not callable(original) or not isinstance(escapes, dict) or not callable(check):
        return False

    def escape_char(m: re.Match[str]) -> str:
        char = m.group()
        escaped = escapes.get(char)
        return escaped if isinstance(escaped, str) else f"\\u{ord(char):04x}"

    def escape_string(value: str) -> str:
        check(value)  # unpaired surrogates raise, as in python-toon
        if _TOON_ESCAPE.search(value) is None:
            return value
        return _TOON_ESCAPE.sub(escape_char, value)

    try:
        if any(escape_string(probe) != original(probe) for probe in _TOON_PROBES):
            return False
    except Exception:  # any surprise: keep python-toon's own function
        return False
    _toon_primitives.escape_string = escape_string
    return True


FAST_TOON_ESCAPE: Final = _install_fast_toon_escape()


# --- parsing ------------------------------------------------------------------------------


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise CompressionFailed("duplicate object key: cannot round-trip exactly")
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise CompressionFailed(f"{name} is not a JSON number: cannot round-trip exactly")


def _exact_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise CompressionFailed(f"number {literal[:40]} overflows a float: cannot round-trip exactly")
    shortest = repr(value)
    if shortest != literal and Decimal(shortest) != Decimal(literal):
        raise CompressionFailed(f"number {literal[:40]} loses precision as a float")
    return value


def parse_exact(text: str) -> Any:
    """Parse ``text`` as JSON that re-encodes to exactly the same value.

    Raises :class:`WrongContentType` when ``text`` is not JSON (or nests too deeply to parse)
    and :class:`CompressionFailed` when it is JSON that cannot round-trip exactly.
    """
    try:
        return json.loads(
            text,
            object_pairs_hook=_pairs_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_exact_float,
        )
    except CompressionFailed:
        raise
    except json.JSONDecodeError as exc:
        raise WrongContentType(f"not JSON: {exc}") from None
    except RecursionError:
        raise WrongContentType("JSON nests too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise CompressionFailed(f"JSON value cannot round-trip exactly: {exc}") from None


def parse_ndjson(text: str) -> list[Any]:
    """Parse newline-delimited JSON (blank lines ignored) with :func:`parse_exact` per line."""
    values = [parse_exact(line) for line in text.split("\n") if line.strip()]
    if not values:
        raise WrongContentType("no NDJSON values")
    return values


# --- encoding -----------------------------------------------------------------------------


def compact(value: Any) -> str:
    """Compact JSON (no spaces, non-ASCII kept). Raises :class:`CompressionFailed` when the
    result is not valid UTF-8 (a lone surrogate from a ``\\ud800`` escape)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CompressionFailed("JSON holds a lone surrogate: cannot be sent as UTF-8") from None
    return text


def toon_encode(value: Any, *, indent: int = 2, delimiter: str = ",") -> str:
    """Encode ``value`` as TOON (spec options: indentation width and array delimiter)."""
    text: str = toon.encode(value, {"indent": indent, "delimiter": delimiter})
    return text


def toon_decode(text: str, *, indent: int = 2, strict: bool = True) -> Any:
    """Decode a TOON document; raises :class:`ToonDecodeError` (a ``ValueError``) when it is
    not valid TOON."""
    return toon.decode(text, DecodeOptions(indent=indent, strict=strict))


def same_value(a: Any, b: Any) -> bool:
    """Type-strict, order-sensitive equality of two JSON values, iterative (any depth).

    ``1``, ``1.0`` and ``True`` are all different; so are ``0.0`` and ``-0.0``; two objects
    are equal only with the same keys in the same order.
    """
    stack: list[tuple[Any, Any]] = [(a, b)]
    while stack:
        x, y = stack.pop()
        kind = type(x)
        if kind is not type(y):
            return False
        if kind is dict:
            if len(x) != len(y) or list(x) != list(y):
                return False
            stack.extend(zip(x.values(), y.values(), strict=True))
        elif kind is list:
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif kind is float:
            if x != y or math.copysign(1.0, x) != math.copysign(1.0, y):
                return False
        elif x != y:
            return False
    return True


def _toon_candidate(value: Any) -> str | None:
    try:
        return toon_encode(value)
    except (ValueError, TypeError, RecursionError):
        return None


def _round_trips(text: str, value: Any) -> bool:
    try:
        return same_value(toon_decode(text), value)
    except Exception:  # any decoder failure means: not safe to send
        return False


SAMPLE_LEAVES: Final = 200  # scalars in the sample used for the cheap TOON estimate
SAMPLE_FRACTION: Final = 0.5  # the estimate is made only when the sample is this much smaller
SAMPLE_MIN_ITEMS: Final = 1  # items every sampled array keeps
TOON_MARGIN: Final = 0.05  # the estimate must say TOON is at most this much worse to try it


class _Sampler:
    """Cuts arrays short once :data:`SAMPLE_LEAVES` scalars have been taken (every array keeps
    at least :data:`SAMPLE_MIN_ITEMS` items; objects keep all their keys)."""

    def __init__(self) -> None:
        self.left = SAMPLE_LEAVES
        self.cut = False

    def sample(self, value: Any) -> Any:
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                if i >= SAMPLE_MIN_ITEMS and self.left <= 0:
                    self.cut = True
                    break
                out.append(self.sample(item))
            return out
        if isinstance(value, dict):
            return {key: self.sample(item) for key, item in value.items()}
        self.left -= 1
        return value


def _toon_may_win(value: Any, base: str, model: str) -> bool:
    """Cheap estimate: False when a sample of ``value`` (arrays cut short) costs clearly more
    tokens as TOON than as compact JSON, so the full TOON encoding is not worth making. True
    (make it) when the sample would not be much smaller than the whole."""
    sampler = _Sampler()
    sample = sampler.sample(value)
    if not sampler.cut:
        return True
    sample_compact = compact(sample)
    if len(sample_compact) > SAMPLE_FRACTION * len(base):
        return True
    toon_text = _toon_candidate(sample)
    if toon_text is None:
        return False
    return tokens.count(toon_text, model) <= (1.0 + TOON_MARGIN) * tokens.count(sample_compact, model)


def encode_best(
    value: Any,
    model: str,
    *,
    baseline: str | None = None,
    methods: tuple[str, str] = (METHOD_COMPACT, METHOD_TOON),
    try_toon: Callable[[Any], bool] | None = None,
) -> tuple[str, str]:
    """``(text, method)`` of the cheaper lossless encoding of ``value``: ``baseline`` (compact
    JSON unless given) or TOON, which must have strictly fewer tokens and decode back to
    exactly ``value``. Ties go to the baseline.

    TOON is skipped without being made in full when ``try_toon`` says no, or when a sample of
    ``value`` (arrays cut after :data:`SAMPLE_LEAVES` scalars) is more than
    :data:`TOON_MARGIN` worse as TOON (pure-Python TOON encoding is the slowest step here).
    """
    base = compact(value) if baseline is None else baseline
    if try_toon is not None and not try_toon(value):
        return base, methods[0]
    if not _toon_may_win(value, base, model):
        return base, methods[0]
    candidate = _toon_candidate(value)
    if candidate is None or candidate == base:
        return base, methods[0]
    if tokens.count(candidate, model) < tokens.count(base, model) and _round_trips(candidate, value):
        return candidate, methods[1]
    return base, methods[0]


# --- the compressors ----------------------------------------------------------------------


def compress_json(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """Lossless: the cheaper of compact JSON and TOON. None when ``text`` is already that."""
    del cfg  # the lossless path has no knobs
    value = parse_exact(text)
    try:
        out, method = encode_best(value, ctx.model)
    except RecursionError:
        raise WrongContentType("JSON nests too deeply to re-encode") from None
    if out == text:
        return None
    return Compressed(text=out, method=method, lossless=True)


def _uniform_rows(values: Sequence[Any]) -> bool:
    """True when every value is an object with the same keys and only scalar fields: the shape
    TOON writes as one table."""
    if not values or not isinstance(values[0], dict) or not values[0]:
        return False
    keys = list(values[0])
    for row in values:
        if not isinstance(row, dict) or list(row) != keys:
            return False
        for field in row.values():
            if isinstance(field, (dict, list)):
                return False
    return True


def compress_ndjson(text: str, ctx: CompressionContext, cfg: CompressionConfig) -> Compressed | None:
    """Lossless: every line compacted, or one TOON table when all lines are uniform objects."""
    del cfg
    values = parse_ndjson(text)
    try:
        lines = "\n".join(compact(value) for value in values)
        out, method = encode_best(
            values,
            ctx.model,
            baseline=lines,
            methods=(METHOD_NDJSON_COMPACT, METHOD_NDJSON_TOON),
            try_toon=_uniform_rows,
        )
    except RecursionError:
        raise WrongContentType("NDJSON nests too deeply to re-encode") from None
    if out == text:
        return None
    return Compressed(text=out, method=method, lossless=True)
