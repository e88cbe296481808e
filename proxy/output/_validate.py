"""A validator for the JSON-schema subset structured outputs allow (OpenAI's strict mode and
what pydantic writes): ``type`` (or a list of types), ``enum``, ``const``, ``properties``,
``required``, ``additionalProperties``, ``items``, ``prefixItems``, ``anyOf`` / ``oneOf`` /
``allOf``, local ``$ref`` (``#/$defs/...``), ``minItems`` / ``maxItems``, ``minLength`` /
``maxLength``, ``pattern``, ``minimum`` / ``maximum`` (and exclusive), ``multipleOf``.
Keywords outside it (``format``, ``description``, ...) are not checked. Iterative over the
value's depth; ``$ref`` chains are bounded."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["SchemaViolation", "validate"]

_MAX_REFS: Final = 64
_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


class SchemaViolation(ValueError):
    """The value does not follow the schema (the message says where)."""


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (type(value) is int) or (type(value) is float and value.is_integer())
    if kind == "number":
        return type(value) in (int, float)
    return type(value) in _TYPES.get(kind, ())


def _resolve(root: Mapping[str, Any], node: Any) -> Any:
    for _ in range(_MAX_REFS):
        if not isinstance(node, Mapping) or not isinstance(node.get("$ref"), str):
            return node
        ref = node["$ref"]
        if ref == "#":
            node = root
            continue
        if not ref.startswith("#/"):
            raise SchemaViolation(f"unsupported $ref {ref[:80]!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            target = target.get(key) if isinstance(target, Mapping) else None
        if target is None:
            raise SchemaViolation(f"unresolved $ref {ref[:80]!r}")
        node = target
    raise SchemaViolation("$ref chain too long")


def _errors(root: Mapping[str, Any], schema: Any, value: Any, path: str) -> list[tuple[Any, Any, str]]:
    """Check the keywords of one node on ``value``; the (schema, value, path) pairs to check next."""
    node = _resolve(root, schema)
    if node is True or node is None or node == {}:
        return []
    if node is False:
        raise SchemaViolation(f"{path}: no value allowed")
    if not isinstance(node, Mapping):
        return []
    t = node.get("type")
    if t is not None:
        kinds = [t] if isinstance(t, str) else list(t) if isinstance(t, list) else []
        if kinds and not any(_is(value, k) for k in kinds):
            raise SchemaViolation(f"{path}: expected {'/'.join(map(str, kinds))}")
    if "enum" in node and not any(_equal(value, e) for e in node["enum"] or ()):
        raise SchemaViolation(f"{path}: not one of the enum values")
    if "const" in node and not _equal(value, node["const"]):
        raise SchemaViolation(f"{path}: not the const value")
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if isinstance(branches, list) and branches and not any(_ok(root, b, value, path) for b in branches):
            raise SchemaViolation(f"{path}: matches none of {key}")
    nxt: list[tuple[Any, Any, str]] = [(b, value, path) for b in node.get("allOf") or ()]
    if isinstance(value, dict):
        found = node.get("properties")
        props: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        for name in node.get("required") or ():
            if name not in value:
                raise SchemaViolation(f"{path}: missing required {name!r}")
        extra = node.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                nxt.append((props[k], v, f"{path}.{k}"))
            elif extra is False:
                raise SchemaViolation(f"{path}: unexpected key {k[:80]!r}")
            elif isinstance(extra, Mapping):
                nxt.append((extra, v, f"{path}.{k}"))
    elif isinstance(value, list):
        lo, hi = node.get("minItems"), node.get("maxItems")
        if (isinstance(lo, int) and len(value) < lo) or (isinstance(hi, int) and len(value) > hi):
            raise SchemaViolation(f"{path}: {len(value)} items, outside minItems/maxItems")
        listed = node.get("prefixItems")
        prefix: list[Any] = listed if isinstance(listed, list) else []
        items = node.get("items")
        for i, v in enumerate(value):
            sub = prefix[i] if i < len(prefix) else items
            if sub is not None:
                nxt.append((sub, v, f"{path}[{i}]"))
    elif isinstance(value, str):
        lo, hi = node.get("minLength"), node.get("maxLength")
        if (isinstance(lo, int) and len(value) < lo) or (isinstance(hi, int) and len(value) > hi):
            raise SchemaViolation(f"{path}: length outside minLength/maxLength")
        pattern = node.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            raise SchemaViolation(f"{path}: does not match the pattern")
    elif type(value) in (int, float):
        _check_number(node, value, path)
    return nxt


def _check_number(node: Mapping[str, Any], value: float, path: str) -> None:
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        raw = node.get(key)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            continue
        b = float(raw)
        bad = {
            "minimum": value < b,
            "maximum": value > b,
            "exclusiveMinimum": value <= b,
            "exclusiveMaximum": value >= b,
            "multipleOf": b > 0 and (value / b) != int(value / b),
        }[key]
        if bad:
            raise SchemaViolation(f"{path}: violates {key}")


def _equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    return bool(a == b)


def _ok(root: Mapping[str, Any], schema: Any, value: Any, path: str) -> bool:
    try:
        _run(root, schema, value, path)
    except SchemaViolation:
        return False
    return True


def _run(root: Mapping[str, Any], schema: Any, value: Any, path: str) -> None:
    stack = [(schema, value, path)]
    while stack:
        s, v, p = stack.pop()
        stack.extend(_errors(root, s, v, p))


def validate(value: Any, schema: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaViolation` when ``value`` does not follow ``schema``."""
    _run(schema, schema, value, "$")
