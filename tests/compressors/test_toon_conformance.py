"""TOON against every conformance fixture of the TOON specification in eval-data/toon-spec/
(516 cases, one test each), and the decoder we check with against the conformant one.

What we send is written by ``toons`` (``compressors.toon.toon_encode``) and checked before it
is sent by decoding it again with ``toons`` (``toon_decode``). ``toons`` passes every encode
fixture, but its decoder reads whole numbers written with an exponent or a decimal point
(``1e6``, ``-0.0``) as floats where the spec wants integers (10 decode fixtures), so the decode
fixtures run against ``python-toon`` (module ``toon``), which passes them all: it is the
reference decoder here. The remaining tests show that on every text ``toons`` writes, its
decoder gives exactly what the reference decoder gives, so the check before sending agrees with
a conformant decoder.

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
import random
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import toon
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors.toon import same_value, toon_decode, toon_encode
from tests.helpers import eval_data_root

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


def reference_decode(text: str, *, indent: int = 2, strict: bool = True) -> Any:
    """Decode with python-toon, the implementation that passes every decode fixture."""
    return toon.decode(text, toon.types.DecodeOptions(indent=indent, strict=strict))


def _encode_options(case: dict[str, Any]) -> tuple[int, str]:
    options = case.get("options", {})
    return options.get("indentSize", 2), options.get("delimiter", ",")


def _run(category: str, case: dict[str, Any]) -> None:
    options = case.get("options", {})
    if category == "encode":
        indent, delimiter = _encode_options(case)
        if case.get("shouldError"):
            with pytest.raises((ValueError, TypeError)):
                toon_encode(case["input"], indent=indent, delimiter=delimiter)
            return
        out = toon_encode(case["input"], indent=indent, delimiter=delimiter)
        assert out == case["expected"]
        return
    indent = options.get("indentSize", 2)
    strict = options.get("strict", True)
    if case.get("shouldError"):
        with pytest.raises(toon.ToonDecodeError):
            reference_decode(case["input"], indent=indent, strict=strict)
        return
    value = reference_decode(case["input"], indent=indent, strict=strict)
    assert same_value(value, case["expected"]), f"{value!r} != {case['expected']!r}"


@pytest.mark.parametrize("fixture_case", CASES)
def test_toon_fixture(fixture_case: tuple[str, dict[str, Any]] | None, eval_data: Path) -> None:
    """Each spec fixture passes: our encoder's exact output, the reference decoder's values and errors."""
    assert (eval_data / FIXTURES).is_dir(), f"TOON fixtures missing under {eval_data}"
    assert fixture_case is not None
    category, case = fixture_case
    _run(category, case)


def test_all_fixtures_collected(eval_data: Path) -> None:
    """All 516 fixture cases of the spec are collected, each under a distinct test id."""
    assert (eval_data / FIXTURES).is_dir()
    assert len(CASES) == EXPECTED_CASES
    assert len({p.id for p in CASES}) == EXPECTED_CASES


# --- the check before sending agrees with the conformant decoder ---------------------------


def _assert_decoders_agree(value: Any, *, indent: int = 2, delimiter: str = ",") -> str:
    text = toon_encode(value, indent=indent, delimiter=delimiter)
    ours = toon_decode(text, indent=indent)
    reference = reference_decode(text, indent=indent)
    assert same_value(ours, reference), f"{text!r}: toons {ours!r} != python-toon {reference!r}"
    return text


def _fixture_cases(category: str) -> list[dict[str, Any]]:
    """The fixture cases of ``category`` that are not expected to fail."""
    cases = []
    for param in CASES:
        if param.values[0] is not None:
            cat, case = param.values[0]
            if cat == category and not case.get("shouldError"):
                cases.append(case)
    return cases


def test_our_decoder_agrees_on_every_encode_fixture(eval_data: Path) -> None:
    """On the TOON we write for every encode fixture, toons decodes exactly what python-toon does."""
    assert (eval_data / FIXTURES).is_dir()
    cases = _fixture_cases("encode")
    assert cases
    for case in cases:
        indent, delimiter = _encode_options(case)
        _assert_decoders_agree(case["input"], indent=indent, delimiter=delimiter)


def test_our_decoder_agrees_on_every_decode_fixture_value(eval_data: Path) -> None:
    """The expected value of every decode fixture, written by us, decodes the same with both decoders."""
    assert (eval_data / FIXTURES).is_dir()
    cases = _fixture_cases("decode")
    assert cases
    for case in cases:
        _assert_decoders_agree(case["expected"])


def test_our_decoder_passes_every_decode_fixture_we_would_write(eval_data: Path) -> None:
    """Every decode fixture whose input is exactly the TOON we write for its value passes with toons."""
    assert (eval_data / FIXTURES).is_dir()
    ours = 0
    for case in _fixture_cases("decode"):
        indent = case.get("options", {}).get("indentSize", 2)
        if toon_encode(case["expected"], indent=indent) != case["input"]:
            continue
        ours += 1
        value = toon_decode(case["input"], indent=indent, strict=case.get("options", {}).get("strict", True))
        assert same_value(value, case["expected"]), case["name"]
    assert ours >= 50


def test_our_decoder_agrees_on_octokit_responses(eval_data: Path) -> None:
    """On every octokit response (and each scenario's list of them) both decoders read our TOON alike."""
    values = []
    for path in sorted((eval_data / "octokit").glob("*.json")):
        responses = [request["response"] for request in json.loads(path.read_text(encoding="utf-8"))]
        values += [(path.name, response) for response in responses]
        values.append((path.name, responses))
    assert len(values) >= 90
    for name, value in values:
        for delimiter in (",", "\t", "|"):
            text = _assert_decoders_agree(value, delimiter=delimiter)
            assert same_value(toon_decode(text), value), name
            if delimiter == ",":
                assert text == toon.encode(value), f"{name}: toons and python-toon write different TOON"


# Random JSON values with the awkward cases: huge integers, -0.0, floats TOON must write without
# an exponent, strings that look like numbers, booleans or null, or hold TOON syntax.
awkward_strings = st.sampled_from(
    ["", " ", "-", "- x", "1", "-1", "1e6", "1E+03", "0e1", "-0", "-0.0", "05", "1.0", "0x1f", "true",
     "false", "null", "a:b", "a: b", "[1]", "[2]{a,b}:", "{}", "#x", '"', '\\"', "\\", "a,b", "a|b",
     "a\tb", "x\ny", "x\r\n", "\x00", "\u2028", "é", "😀", " lead", "trail "]
)  # fmt: skip
awkward_floats = st.sampled_from(
    [-0.0, 0.0, 1e20, 1e16, 1e15 + 0.5, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1e-7,
     0.30000000000000004, 1604028002771898.2, -243915020125850.12]
)  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | awkward_floats
    | st.text(max_size=12)
    | st.text(alphabet=':,|\t\n"\\-#[]{} 0123456789.eE+é😀\x01', max_size=12)
    | awkward_strings,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.text(max_size=6) | awkward_strings, children, max_size=6)
    ),
    max_leaves=50,
)


@settings(max_examples=800, deadline=None)
@given(json_values, st.sampled_from([",", "\t", "|"]), st.sampled_from([2, 4]))
def test_our_decoder_agrees_with_reference_on_random_values(value: Any, delimiter: str, indent: int) -> None:
    """Whatever toons writes for a JSON value, toons and python-toon decode to the same value."""
    try:
        toon_encode(value, indent=indent, delimiter=delimiter)
    except ValueError:  # a lone surrogate in a random string: nothing is written, nothing sent
        return
    _assert_decoders_agree(value, indent=indent, delimiter=delimiter)


def _significant_digits(text: str) -> int:
    return len(text.partition("e")[0].lstrip("-").replace(".", "").strip("0"))


def test_our_encoder_writes_floats_as_json_does_below_16_digits() -> None:
    """toons writes a float as the decimal JSON writes, unless it has 16+ digits (guarded in _json)."""
    rnd = random.Random(7)
    generators = [
        lambda: struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0],
        lambda: rnd.uniform(-1e17, 1e17) * 10 ** rnd.randint(-25, 25),
        lambda: rnd.randint(-(2**60), 2**60) / 2 ** rnd.randint(0, 12),
        lambda: rnd.randint(-(10**15), 10**15) / 10 ** rnd.randint(0, 20),
    ]
    differ = 0
    for make in generators:
        for _ in range(20_000):
            x = make()
            if x != x or abs(x) == float("inf"):
                continue
            text = toon_encode(x)
            assert float(text) == x, repr(x)
            if Decimal(text) != Decimal(repr(x)):
                assert _significant_digits(repr(x)) >= 16, f"{x!r} written as {text}"
                differ += 1
    assert differ > 0  # the ties the runtime check guards against do occur
