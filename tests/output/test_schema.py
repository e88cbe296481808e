"""When a schema is answered in TOON, and the way back: decode, fix-ups, validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from compressors import tokens
from compressors.toon import same_value, toon_encode
from proxy.bench.scenarios import seed_scenario
from proxy.output import decode_answer, plan_for_schema, toon_answer, toon_instruction

MODEL = "gpt-4.1"
ROW = {
    "type": "object",
    "properties": {
        "sku": {"type": "string"},
        "units": {"type": "integer"},
        "price": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["sku", "units", "price", "tags", "note"],
    "additionalProperties": False,
}
TABLE = {
    "type": "object",
    "properties": {"rows": {"type": "array", "items": {"$ref": "#/$defs/Row"}}},
    "required": ["rows"],
    "additionalProperties": False,
    "$defs": {"Row": ROW},
}
VALUE = {
    "rows": [
        {
            "sku": f"S-{i}",
            "units": i,
            "price": 10.0 + i,
            "tags": ["a", f"t{i}"],
            "note": None if i % 2 else "x, y",
        }
        for i in range(6)
    ]
}


def test_a_table_of_scalars_is_planned_with_its_exact_header() -> None:
    """An array of uniform scalar objects (through a $ref) is planned, with the header's
    fields in the schema's order and TOON shorter on the sample."""
    plan = plan_for_schema(TABLE, MODEL, min_saving=0.1)
    assert plan is not None
    assert "rows[N]{sku,units,price,tags,note}:" in plan.layout
    assert plan.sample_toon_tokens < plan.sample_json_tokens
    assert plan.layout in toon_instruction(plan)


@pytest.mark.parametrize(
    "schema",
    [
        ROW,  # a flat object: no table
        {"type": "array", "items": ROW},  # the root is not an object
        {"type": "object", "properties": {"rows": {"type": "array", "items": {"type": "object"}}}},
        {"type": "object", "properties": {"rows": {"type": "array", "items": {"$ref": "#/$defs/Gone"}}}},
        "not a schema",
    ],
    ids=["flat", "root-array", "rows-without-properties", "bad-ref", "not-a-mapping"],
)
def test_schemas_without_a_table_are_not_planned(schema: Any) -> None:
    """No table, a non-object root or an unusable schema: the request stays as it is."""
    assert plan_for_schema(schema, MODEL, min_saving=0.1) is None


def test_a_saving_below_the_minimum_is_not_planned() -> None:
    """A table whose expected saving is under ``min_saving`` is left in JSON."""
    plan = plan_for_schema(TABLE, MODEL, min_saving=0.0)
    assert plan is not None
    assert plan_for_schema(TABLE, MODEL, min_saving=plan.expected_saving + 0.01) is None


def test_toon_answers_decode_to_exactly_the_value() -> None:
    """List cells split back, whole floats come back as floats, nulls and quoted commas stay."""
    text = toon_answer(VALUE)
    assert "a|t1" in text
    value, form = decode_answer(text, TABLE)
    assert form == "toon" and same_value(value, VALUE)
    assert tokens.count(text, MODEL) < tokens.count(json.dumps(VALUE), MODEL)


def test_a_fenced_answer_and_json_anyway_are_accepted() -> None:
    """A TOON answer in a code fence decodes; JSON that follows the schema is taken as JSON."""
    value, form = decode_answer("```toon\n" + toon_answer(VALUE) + "\n```", TABLE)
    assert form == "toon" and same_value(value, VALUE)
    value, form = decode_answer(json.dumps(VALUE), TABLE)
    assert form == "json" and same_value(value, VALUE)


@pytest.mark.parametrize(
    "text",
    [
        toon_answer(VALUE).replace("rows[6]", "rows[7]"),  # row count does not match
        toon_encode({"rows": [{"sku": "S", "units": "many", "price": 1.5, "tags": "", "note": None}]}),
        toon_encode({"rows": [{"sku": "S", "units": 1, "price": 1.5, "tags": ""}]}),  # missing note
        toon_encode({"rows": [], "extra": 1}),  # additionalProperties false
        '{"rows": [',
    ],
    ids=["row-count", "wrong-type", "missing-required", "extra-key", "broken-json"],
)
def test_answers_that_break_or_violate_the_schema_are_rejected(text: str) -> None:
    """Broken TOON, broken JSON and values outside the schema raise ValueError."""
    with pytest.raises(ValueError):
        decode_answer(text, TABLE)


@pytest.mark.parametrize("kind", ["api", "db"])
@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_seed_scenario_answers_round_trip_exactly(kind: str, size: str) -> None:
    """Every JSON answer of the api and db seed scenarios, written as TOON, decodes to exactly
    the recorded value under the scenario's schema, which is planned for TOON."""
    conv = seed_scenario(kind, size).conversations[0]
    assert conv.response_format is not None
    schema = conv.response_format["json_schema"]["schema"]
    assert plan_for_schema(schema, MODEL, min_saving=0.1) is not None
    answers = [m["content"] for m in conv.messages if m["role"] == "assistant" and m.get("content")]
    assert answers
    for recorded in answers:
        value = json.loads(recorded)
        decoded, _ = decode_answer(toon_answer(value), schema)
        assert same_value(decoded, value)
