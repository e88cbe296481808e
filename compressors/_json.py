"""Lossless JSON: compact JSON or TOON, whichever costs fewer tokens.

Lossless means the value the model reads is exactly the value the tool returned. The input is
parsed strictly: NaN/Infinity, duplicate keys, numbers that a float cannot hold exactly and
integers too long for Python's parser are refused (:class:`CompressionFailed`: the content is
sent as it was), and text that is not JSON at all or nests too deeply to parse raises
:class:`WrongContentType` so the dispatcher can try the plain-text path.

A TOON candidate is sent only when it has strictly fewer tokens than the baseline and decoding
it gives back the original value under type-strict equality (``1``, ``1.0`` and ``True``
differ; so do ``0.0`` and ``-0.0``; key order counts), with every float written as the same
decimal number that JSON writes (see :func:`_float_written_as_json_does`).

TOON is encoded and checked with ``toons`` (a Rust implementation): on the 93 octokit values of
the evaluation data it writes byte for byte what the pure-Python ``python-toon`` writes, in
1.1 ms instead of 23 ms (13 ms with the faster string escape once patched in here), and decodes
them in 2.3 ms instead of 56 ms, so every value is encoded in full (TOON is no longer estimated
on a sample first). Its encoder passes every encode fixture of the TOON specification. Its
decoder fails 10 decode fixtures, all of one kind: a whole number written with an exponent or a
decimal point (``1e6``, ``-1E+03``, ``-0.0``) decodes to a float where the spec says integer
(same number, other type). That cannot change what is sent: the check only decodes text
``toons`` itself wrote, which has no such number (whole numbers are written as integers, never
with an exponent, and strings that look like numbers are quoted), and
tests/compressors/test_toon_conformance.py shows on the fixtures, the evaluation data and random values
that ``toons`` decodes that text exactly as ``python-toon`` (which passes all 516 fixtures and
is the reference decoder there) does.

``toons`` refuses nesting over 1,000 levels (``ValueError``: no TOON candidate); at that depth
its Rust recursion needs about 0.6 MB of stack, well within a worker thread's default (8 MB
with glibc) but more than a thread started with a small ``threading.stack_size``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, NoReturn

from compressors import tokens
from compressors._types import Compressed, CompressionConfig, CompressionContext
from compressors.exceptions import CompressionFailed, WrongContentType
from compressors.toon import same_value, toon_decode, toon_encode

__all__ = [
    "compact",
    "compress_json",
    "compress_ndjson",
    "encode_best",
    "parse_exact",
    "parse_ndjson",
]

METHOD_COMPACT: Final = "json-compact"
METHOD_TOON: Final = "json-toon"
METHOD_NDJSON_COMPACT: Final = "ndjson-compact"
METHOD_NDJSON_TOON: Final = "ndjson-toon"

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


def _float_written_as_json_does(x: float) -> bool:
    """True when ``toons`` writes ``x`` as the same decimal number as JSON (``repr``) does.

    Both write a shortest decimal that reads back as ``x``, but when two are equally close to
    it (``1604028002771898.25``: ``...898.2`` or ``...898.3``) Python takes one and ``toons``
    may take the other: the same float, yet not the number the tool wrote. Only a float of 16
    or 17 significant digits can have two (two decimals of 15 digits never read back as the
    same float), so shorter ones are not looked at.
    """
    text = repr(x)
    if len(text.partition("e")[0]) < 17:  # mantissa of at most 15 digits
        return True
    return Decimal(toon_encode(x)) == Decimal(text)


def _is_rust_panic(exc: BaseException) -> bool:
    """A panic inside ``toons`` reaches Python as ``pyo3_runtime.PanicException``, which
    derives from ``BaseException`` and cannot be imported by name."""
    kind = type(exc)
    return kind.__module__ == "pyo3_runtime" and kind.__name__ == "PanicException"


def _toon_candidate(value: Any) -> str | None:
    try:
        return toon_encode(value)
    except (ValueError, TypeError, RecursionError, OverflowError):
        return None
    except BaseException as exc:
        if _is_rust_panic(exc):
            return None
        raise


def _round_trips(text: str, value: Any) -> bool:
    try:
        return same_value(toon_decode(text), value, float_check=_float_written_as_json_does)
    except Exception:  # any decoder failure means: not safe to send
        return False
    except BaseException as exc:
        if _is_rust_panic(exc):
            return False
        raise


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
    exactly ``value``. Ties go to the baseline. TOON is not made when ``try_toon`` says no.
    """
    base = compact(value) if baseline is None else baseline
    if try_toon is not None and not try_toon(value):
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
