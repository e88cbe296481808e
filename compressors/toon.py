"""TOON, the format lossless JSON is sent in when it costs fewer tokens, and the check.

:func:`toon_encode` writes what is sent and :func:`toon_decode` reads it back, both with
``toons`` (a Rust implementation; see :mod:`compressors._json` for how it compares with the
specification). :func:`same_value` is the type-strict equality a round trip must pass: use it
with :func:`toon_decode` to check that a ``json-toon`` result stands for the original value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import toons

__all__ = ["ToonDecodeError", "same_value", "toon_decode", "toon_encode"]

ToonDecodeError: type[ValueError] = toons.ToonDecodeError


def toon_encode(value: Any, *, indent: int = 2, delimiter: str = ",") -> str:
    """Encode ``value`` as TOON (spec options: indentation width and array delimiter) with
    ``toons``. Raises ``ValueError`` (lone surrogate, nesting over 1,000 levels, integer over
    4,300 digits) or ``TypeError`` (not a JSON value)."""
    return toons.dumps(value, indent_size=indent, delimiter=delimiter)


def toon_decode(text: str, *, indent: int = 2, strict: bool = True) -> Any:
    """Decode a TOON document with ``toons``; raises :class:`ToonDecodeError` (a
    ``ValueError``) when it is not valid TOON."""
    return toons.loads(text, indent_size=indent, strict=strict)


def same_value(a: Any, b: Any, *, float_check: Callable[[float], bool] | None = None) -> bool:
    """Type-strict, order-sensitive equality of two JSON values, iterative (any depth).

    ``1``, ``1.0`` and ``True`` are all different; so are ``0.0`` and ``-0.0``; two objects
    are equal only with the same keys in the same order. When ``float_check`` is given, every
    float of ``b`` must also pass it.
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
            if float_check is not None and not float_check(y):
                return False
        elif x != y:
            return False
    return True
