"""The JSON-schema subset structured outputs use, checked on answers (``decode_answer`` of JSON
text validates it against the schema)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.output import decode_answer

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "ratio": {"type": "number", "exclusiveMaximum": 1},
        "kind": {"enum": ["a", "b"]},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$", "maxLength": 3},
        "flag": {"type": "boolean"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["id", "items"],
    "additionalProperties": False,
    "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
}
GOOD = {"id": 3, "ratio": 0.5, "kind": "a", "code": "ABC", "flag": False, "items": [{"n": 1}], "maybe": None}


def validate(value: Any, schema: dict[str, Any]) -> None:
    decode_answer(json.dumps(value), schema)


def test_a_valid_value_passes() -> None:
    """A value that follows every keyword passes (a whole float counts as an integer)."""
    validate(GOOD, SCHEMA)
    validate({**GOOD, "id": 3.0}, SCHEMA)


@pytest.mark.parametrize(
    "change",
    [
        {"id": 0},
        {"id": True},
        {"ratio": 1},
        {"kind": "c"},
        {"code": "abc"},
        {"flag": 1},
        {"items": []},
        {"items": [{"m": 1}]},
        {"maybe": 3},
        {"other": 1},
    ],
)
def test_violations_are_reported(change: dict[str, Any]) -> None:
    """Each keyword's violation is rejected."""
    with pytest.raises(ValueError):
        validate({**GOOD, **change}, SCHEMA)


def test_a_missing_required_key_is_reported() -> None:
    """A required key left out is rejected, naming it."""
    with pytest.raises(ValueError, match="items"):
        validate({"id": 1}, SCHEMA)


def test_a_ref_cycle_is_bounded() -> None:
    """A $ref that points at itself fails instead of looping."""
    with pytest.raises(ValueError):
        validate({"a": 1}, {"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"})
