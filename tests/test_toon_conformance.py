"""The TOON implementation we send (compressors._json: python-toon) against every conformance
fixture of the TOON specification in eval-data/toon-spec/ (516 cases, one test each).

How the fixtures are run (toon-spec/README.md, fixtures.schema.json):
- ``encode`` cases: ``input`` is a JSON value, ``expected`` the exact TOON text; options
  ``delimiter`` and ``indentSize`` go to the encoder.
- ``decode`` cases: ``input`` is TOON text, ``expected`` the JSON value; options ``strict``
  (default true) and ``indentSize`` go to the decoder; ``shouldError: true`` means decoding
  must fail. Decoded values are compared type-strictly (``1`` is not ``1.0``), key order
  included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import eval_data_root

from compressors._json import ToonDecodeError, same_value, toon_decode, toon_encode

pytestmark = pytest.mark.evaldata

FIXTURES = Path("toon-spec") / "fixtures"
EXPECTED_CASES = 516


def _cases() -> list[Any]:
    root = eval_data_root() / FIXTURES
    if not root.is_dir():
        return [pytest.param(None, id="toon-spec-missing")]
    params = []
    for path in sorted(root.glob("*/*.json")):
        fixture = json.loads(path.read_text(encoding="utf-8"))
        for case in fixture["tests"]:
            case_id = f"{fixture['category']}/{path.stem}::{case['name']}"
            params.append(pytest.param((fixture["category"], case), id=case_id))
    return params


CASES = _cases()


def _run(category: str, case: dict[str, Any]) -> None:
    options = case.get("options", {})
    indent = options.get("indentSize", 2)
    if category == "encode":
        if case.get("shouldError"):
            with pytest.raises((ValueError, TypeError)):
                toon_encode(case["input"], indent=indent, delimiter=options.get("delimiter", ","))
            return
        out = toon_encode(case["input"], indent=indent, delimiter=options.get("delimiter", ","))
        assert out == case["expected"]
        return
    strict = options.get("strict", True)
    if case.get("shouldError"):
        with pytest.raises(ToonDecodeError):
            toon_decode(case["input"], indent=indent, strict=strict)
        return
    value = toon_decode(case["input"], indent=indent, strict=strict)
    assert same_value(value, case["expected"]), f"{value!r} != {case['expected']!r}"


@pytest.mark.parametrize("fixture_case", CASES)
def test_toon_fixture(fixture_case: tuple[str, dict[str, Any]] | None, eval_data: Path) -> None:
    """Each TOON spec fixture passes: exact encode output, type-strict decode, errors raised."""
    assert (eval_data / FIXTURES).is_dir(), f"TOON fixtures missing under {eval_data}"
    assert fixture_case is not None
    category, case = fixture_case
    _run(category, case)


def test_all_fixtures_collected(eval_data: Path) -> None:
    """All 516 fixture cases of the spec are collected, each under a distinct test id."""
    assert (eval_data / FIXTURES).is_dir()
    assert len(CASES) == EXPECTED_CASES
    assert len({p.id for p in CASES}) == EXPECTED_CASES
