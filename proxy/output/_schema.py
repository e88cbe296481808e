"""Structured answers in TOON: when a JSON schema is worth it, what the model is told, and the
way back to JSON (decode, schema-guided fix-ups, validation).

TOON (:mod:`compressors.toon`, the verified decoder of the input side) writes an array of
objects whose fields are all scalars as a table: one header with the field names, one line per
row. A field holding a list of strings (ids, tags) would force the long list form, so nocp
asks for such a list as one cell, its items joined by ``|`` (:data:`LIST_SEP`); the schema
says which cells to split back. Whole numbers of a ``number`` field come back as floats
(``45`` -> ``45.0``), as the JSON they stand for.

A schema is *tabular enough* when it has at least one array of objects whose declared
properties are scalars or lists of strings, and TOON is expected shorter: a sample value built
from the schema (five rows per table) is counted both ways.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from compressors import tokens
from compressors.toon import toon_decode, toon_encode
from proxy.output._validate import SchemaViolation, validate

__all__ = [
    "LIST_SEP",
    "ToonPlan",
    "decode_answer",
    "needs_schema",
    "plan_for_schema",
    "toon_answer",
]

LIST_SEP: Final = "|"
MAX_SCHEMA_BYTES: Final = 64 * 1024
MAX_ANSWER_CHARS: Final = 4_000_000
_MAX_DEPTH: Final = 32
_SAMPLE_ROWS: Final = 5
_SCALARS: Final = frozenset({"string", "number", "integer", "boolean", "null"})
_SAMPLE: Final[Mapping[str, Any]] = {
    "string": "sample text",
    "number": 1234.5,
    "integer": 42,
    "boolean": True,
    "null": None,
}


class _Resolver:
    """Local ``$ref`` (``#/$defs/X``, ``#/definitions/X``) resolution, depth-bounded."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def __call__(self, node: Any) -> Mapping[str, Any]:
        for _ in range(_MAX_DEPTH):
            if not isinstance(node, Mapping):
                return {}
            ref = node.get("$ref")
            if not isinstance(ref, str):
                return node
            if not ref.startswith("#/"):
                return {}
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = (
                    target.get(part.replace("~1", "/").replace("~0", "~"))
                    if isinstance(target, Mapping)
                    else None
                )
            node = target
        return {}


def _types(node: Mapping[str, Any], resolve: _Resolver) -> tuple[set[str], Mapping[str, Any]]:
    """The JSON types a node allows and the node to look into (a nullable ``anyOf`` is the
    non-null branch)."""
    node = resolve(node)
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list) and branches:
        kinds: set[str] = set()
        inner: Mapping[str, Any] = {}
        for b in branches:
            bk, bn = _types(b, resolve)
            kinds |= bk
            if bk - {"null"}:
                if inner:  # two non-null branches: not one shape
                    return kinds | {"mixed"}, {}
                inner = bn
        return kinds, inner
    t = node.get("type")
    if isinstance(t, str):
        return {t}, node
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)}, node
    if "enum" in node or "const" in node:
        enum = node.get("enum")
        values: list[Any] = enum if isinstance(enum, list) else [node.get("const")]
        return {_json_type(v) for v in values}, node
    if isinstance(node.get("properties"), Mapping):
        return {"object"}, node
    return {"any"}, node


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    return "string" if isinstance(v, str) else "any"


def _scalar(kinds: set[str]) -> bool:
    return bool(kinds) and kinds <= _SCALARS


def _list_cell(kinds: set[str], node: Mapping[str, Any], resolve: _Resolver) -> bool:
    """A list of strings, written as one ``|``-joined cell of a row."""
    if kinds - {"array", "null"} or "array" not in kinds:
        return False
    item_kinds, _ = _types(node.get("items") or {}, resolve)
    return item_kinds == {"string"}


def _row_fields(node: Mapping[str, Any], resolve: _Resolver) -> list[str] | None:
    """The fields of a table row, when ``node`` (an array's items) is an object of scalars
    and lists of strings with declared properties; else None."""
    kinds, obj = _types(node, resolve)
    props = obj.get("properties")
    if kinds != {"object"} or not isinstance(props, Mapping) or not props:
        return None
    if obj.get("additionalProperties") not in (None, False):
        return None
    for sub in props.values():
        k, n = _types(sub, resolve)
        if not (_scalar(k) or _list_cell(k, n, resolve)):
            return None
    return list(props)


_LAYOUT_KEYWORDS: Final = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "$defs", "definitions"}
    | {"$ref", "anyOf", "title", "$schema"}
)


def needs_schema(schema: Any) -> bool:
    """True when ``schema`` says more than the layout shows (descriptions, formats, bounds,
    patterns, ...): the instruction then carries the schema too."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, Mapping):
            if set(node) - _LAYOUT_KEYWORDS:
                return True
            for key in ("properties", "$defs", "definitions"):
                if isinstance(node.get(key), Mapping):
                    stack.extend(node[key].values())
            stack.extend(node[k] for k in ("items", "anyOf", "additionalProperties") if k in node)
    return False


@dataclass(frozen=True, slots=True)
class ToonPlan:
    """A schema found worth answering in TOON: the schema, the layout the model is shown, and
    the token counts of the sample it was judged on."""

    schema: Mapping[str, Any]
    layout: str
    tables: int
    sample_json_tokens: int
    sample_toon_tokens: int

    @property
    def expected_saving(self) -> float:
        """1 - TOON / JSON tokens of the sample."""
        return 1 - self.sample_toon_tokens / self.sample_json_tokens if self.sample_json_tokens else 0.0


def _walk(
    node: Any, resolve: _Resolver, depth: int, key: str, indent: str, out: list[str]
) -> tuple[Any, int]:
    """Append ``node``'s layout lines under ``key`` to ``out``; return (a sample value, tables)."""
    if depth > _MAX_DEPTH:
        raise ValueError("schema too deep")
    kinds, n = _types(node, resolve)
    head = f"{indent}{key}" if key else ""
    if _scalar(kinds) or kinds <= {"any", "mixed"} or not kinds:
        typ = "|".join(sorted(kinds)) if kinds else "any"
        enum = n.get("enum")
        if isinstance(enum, list) and enum:
            typ = " or ".join(json.dumps(e) for e in enum[:8])
        out.append(f"{head}: <{typ}>")
        sample = (
            enum[0]
            if isinstance(enum, list) and enum
            else _SAMPLE.get(next(iter(sorted(kinds - {"null"})), "string"), "x")
        )
        return sample, 0
    if "object" in kinds and not kinds - {"object", "null"}:
        props = n.get("properties")
        if head:
            out.append(f"{head}:")
        fields_sample: dict[str, Any] = {}
        tables = 0
        if isinstance(props, Mapping):
            inner = indent + "  " if key else indent
            for name, sub in props.items():
                fields_sample[name], t = _walk(sub, resolve, depth + 1, str(name), inner, out)
                tables += t
        return fields_sample, tables
    if "array" in kinds and not kinds - {"array", "null"}:
        items = n.get("items") or {}
        fields = _row_fields(items, resolve)
        pad = indent + "  "
        if fields is not None:
            _, obj = _types(items, resolve)
            props = obj.get("properties") or {}
            cells = []
            row: dict[str, Any] = {}
            for f in fields:
                k, fn = _types(props[f], resolve)
                if _list_cell(k, fn, resolve):
                    cells.append(f"<strings joined by {LIST_SEP}>")
                    row[f] = ["sample-a", "sample-b"]
                else:
                    cell: list[str] = []
                    row[f], _ = _walk(props[f], resolve, depth + 1, f, "", cell)
                    cells.append(cell[0][len(f) + 2 :] if cell else "<any>")
            out.append(f"{head}[N]{{{','.join(fields)}}}:")
            out.append(pad + ",".join(cells))
            out.append(f"{pad}...")
            return [dict(row) for _ in range(_SAMPLE_ROWS)], 1
        item_kinds, _ = _types(items, resolve)
        if _scalar(item_kinds):
            out.append(f"{head}[N]: <{'|'.join(sorted(item_kinds))}>,...")
            s, _ = _walk(items, resolve, depth + 1, "x", "", [])
            return [s, s], 0
        out.append(f"{head}[N]:")
        lines: list[str] = []
        s, t = _walk(items, resolve, depth + 1, "", pad + "  ", lines)
        out.append(f"{pad}- (item)")
        out.extend(lines)
        return [s, s], t
    raise ValueError(f"{key or 'root'}: unsupported type {sorted(kinds)}")


def plan_for_schema(schema: Any, model: str, *, min_saving: float) -> ToonPlan | None:
    """The plan for answering ``schema`` in TOON, or None when it is not tabular enough (no
    table, or TOON not expected at least ``min_saving`` shorter on a sample), too large, not
    an object at the root, or not a valid schema."""
    if not isinstance(schema, Mapping):
        return None
    try:
        if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
            return None
        resolve = _Resolver(schema)
        kinds, _ = _types(schema, resolve)
        if kinds != {"object"}:
            return None
        lines: list[str] = []
        sample, tables = _walk(schema, resolve, 0, "", "", lines)
    except (ValueError, RecursionError, TypeError):
        return None
    if not tables:
        return None
    as_json = tokens.count(json.dumps(sample, ensure_ascii=False, separators=(",", ":")), model)
    as_toon = tokens.count(toon_encode(_join_cells(sample)), model)
    plan = ToonPlan(schema, "\n".join(lines), tables, as_json, as_toon)
    return plan if plan.expected_saving >= min_saving else None


def _join_cells(value: Any) -> Any:
    """``value`` with each list of strings inside a row of a table joined into one cell."""
    if isinstance(value, dict):
        return {k: _join_cells(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(r, dict) for r in value):
            return [
                {
                    k: LIST_SEP.join(v)
                    if isinstance(v, list) and all(isinstance(e, str) for e in v)
                    else _join_cells(v)
                    for k, v in r.items()
                }
                for r in value
            ]
        return [_join_cells(v) for v in value]
    return value


def _joinable(value: Any) -> bool:
    """True when every list joined by :func:`_join_cells` splits back to itself."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            if v and all(isinstance(r, dict) for r in v):
                for r in v:
                    for c in r.values():
                        if isinstance(c, list) and all(isinstance(e, str) for e in c):
                            if any(LIST_SEP in e for e in c) or c == [""]:
                                return False
                        else:
                            stack.append(c)
            else:
                stack.extend(v)
    return True


def toon_answer(value: Any) -> str:
    """``value`` as a model following nocp's instruction would write it (lists of strings in
    table rows joined into one cell when that splits back exactly; else plain TOON)."""
    return toon_encode(_join_cells(value) if _joinable(value) else value)


def _fix(value: Any, node: Any, resolve: _Resolver, depth: int = 0) -> Any:
    """Split ``|`` cells where the schema has a list of strings; whole numbers of ``number``
    fields as floats."""
    if depth > _MAX_DEPTH:
        return value
    kinds, n = _types(node, resolve)
    if isinstance(value, dict):
        found = n.get("properties")
        props: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        return {k: _fix(v, props.get(k, {}), resolve, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix(v, n.get("items") or {}, resolve, depth + 1) for v in value]
    if isinstance(value, str) and _list_cell(kinds, n, resolve):
        return value.split(LIST_SEP) if value else []
    if type(value) is int and "number" in kinds and "integer" not in kinds:
        return float(value)
    return value


def _strip_fence(text: str) -> str:
    t = text.strip()
    if t.startswith("```") and t.endswith("```") and t.count("\n") >= 1:
        t = t[t.index("\n") + 1 : -3].strip("\n")
    return t


def decode_answer(text: str, schema: Mapping[str, Any]) -> tuple[Any, str]:
    """The JSON value an answer stands for and its form (``toon``, or ``json`` when the model
    answered JSON anyway); raises ``ValueError`` when it is neither valid TOON nor JSON, or
    does not validate against ``schema``."""
    if len(text) > MAX_ANSWER_CHARS:
        raise ValueError("answer too large to decode")
    body = _strip_fence(text)
    form = "toon"
    value: Any
    if body.startswith("{"):
        try:
            value, form = json.loads(body), "json"
        except ValueError:
            value = None
    if form == "toon":
        value = _fix(toon_decode(body, strict=True), schema, _Resolver(schema))
    try:
        validate(value, schema)
    except SchemaViolation as exc:
        raise ValueError(f"answer does not follow the schema: {exc}"[:300]) from None
    return value, form
