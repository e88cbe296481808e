"""JSON compression: the lossless path (compact JSON / TOON, exact round trip) and the lossy
path (rows, empty fields, long strings; every cut marked)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import CompressionConfig, CompressionContext, ToolPolicy, compress, tokens
from compressors._json import (
    compact,
    compress_json,
    compress_ndjson,
    encode_best,
    parse_exact,
)
from compressors._json_lossy import compress_json_lossy, compress_ndjson_lossy, is_error_row
from compressors.exceptions import CompressionFailed, WrongContentType
from compressors.markers import MARKER_PREFIX
from compressors.toon import same_value, toon_decode, toon_encode

CTX = CompressionContext(model="gpt-4o")
CFG = CompressionConfig()
LOSSLESS_EVERYTHING = CompressionConfig(min_tokens=0, min_saving=0.0, default_policy=ToolPolicy.LOSSLESS_ONLY)


def decode_output(text: str, method: str) -> Any:
    """The value a lossless output stands for, decoded the way its method says."""
    if method.endswith("toon"):
        return toon_decode(text)
    if method.startswith("ndjson"):
        return [json.loads(line) for line in text.split("\n")]
    return json.loads(text)


def table(rows: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"user{i}", "active": i % 2 == 0, "score": i * 7 % 100} for i in range(rows)]


# --- exact parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"a": NaN}', id="nan"),
        pytest.param("[Infinity, -Infinity]", id="infinity"),
        pytest.param('{"a": 1, "a": 2}', id="duplicate-key"),
        pytest.param('{"n": 1e400}', id="float-overflow"),
        pytest.param('{"n": 1.00000000000000000001}', id="float-precision"),
        pytest.param('{"n": ' + "9" * 5000 + "}", id="huge-int"),
    ],
)
def test_json_that_cannot_round_trip_is_refused(text: str) -> None:
    """JSON whose value would change on re-encoding is refused, never rewritten."""
    with pytest.raises(CompressionFailed):
        compress_json(text, CTX, CFG)


def test_lone_surrogate_escape_is_refused() -> None:
    """A lone surrogate escape parses but cannot be sent as UTF-8, so it is refused."""
    with pytest.raises(CompressionFailed):
        compress_json('{"s": "\\ud800 tail"}', CTX, CFG)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"a": 1,}', id="trailing-comma"),
        pytest.param("{'a': 1}", id="single-quotes"),
        pytest.param('{"a": 1} trailing', id="trailing-text"),
        pytest.param("[" * 10_000 + "]" * 10_000, id="nested-10000"),
        pytest.param('{"a":' * 10_000 + "1" + "}" * 10_000, id="nested-objects-10000"),
    ],
)
def test_text_that_is_not_json_is_reported_as_such(text: str) -> None:
    """Malformed or too deeply nested JSON raises WrongContentType (the text path takes it)."""
    with pytest.raises(WrongContentType):
        compress_json(text, CTX, CFG)


def test_exact_numbers_survive() -> None:
    """Big integers, negative zero and shortest-repr floats parse and re-encode unchanged."""
    text = '{"big": 123456789012345678901234567890, "neg_zero": -0.0, "f": 0.1, "e": 1e21, "i": -7}'
    value = parse_exact(text)
    assert same_value(json.loads(compact(value)), value)
    assert compact(value) == '{"big":123456789012345678901234567890,"neg_zero":-0.0,"f":0.1,"e":1e+21,"i":-7}'


def test_same_value_is_type_strict() -> None:
    """1, 1.0 and True are different values; so are 0.0 and -0.0; key order counts."""
    assert not same_value(1, 1.0)
    assert not same_value(1, True)
    assert not same_value(0.0, -0.0)
    assert not same_value({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not same_value([1, 2], [1, 2, 3])
    assert same_value({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})
    deep: Any = []
    for _ in range(50_000):
        deep = [deep]
    assert same_value(deep, deep)


# --- lossless -----------------------------------------------------------------------------


def test_pretty_json_becomes_compact_or_toon_with_fewer_tokens() -> None:
    """Pretty-printed JSON is re-encoded with fewer tokens and decodes to the same value."""
    value = {"items": table(40), "total": 40, "next": None}
    text = json.dumps(value, indent=2)
    out = compress_json(text, CTX, CFG)
    assert out is not None and out.lossless
    assert tokens.count(out.text, "gpt-4o") < tokens.count(text, "gpt-4o")
    assert same_value(decode_output(out.text, out.method), value)


def test_uniform_rows_choose_toon() -> None:
    """A long array of uniform flat objects is sent as a TOON table (fewer tokens than compact)."""
    value = table(50)
    out = compress_json(json.dumps(value), CTX, CFG)
    assert out is not None
    assert out.method == "json-toon"
    assert out.text.startswith("[50]{id,name,active,score}:")
    assert tokens.count(out.text, "gpt-4o") < tokens.count(compact(value), "gpt-4o")
    assert same_value(toon_decode(out.text), value)


def test_whole_floats_never_become_ints() -> None:
    """Floats such as 2.0 (which TOON writes as 2) keep their type: TOON is refused."""
    value = [{"id": i, "ratio": float(i), "zero": -0.0} for i in range(30)]
    out = compress_json(json.dumps(value), CTX, CFG)
    assert out is not None
    assert out.method == "json-compact"
    assert same_value(json.loads(out.text), value)


def test_floats_are_sent_as_the_decimals_the_tool_wrote() -> None:
    """A float TOON would write as another decimal of the same double (a tie) keeps TOON out."""
    tie = 1604028002771898.2  # exactly ...898.25: JSON writes ...898.2, toons ...898.3
    assert toon_encode(tie) != repr(tie) and float(toon_encode(tie)) == tie
    value = [{**row, "t": tie if row["id"] == 7 else 1.5} for row in table(50)]
    out = compress_json(json.dumps(value), CTX, CFG)
    assert out is not None and out.method == "json-compact"
    assert '"t":1604028002771898.2}' in out.text
    fine = [{**row, "t": 0.30000000000000004} for row in table(50)]  # 17 digits, no tie
    out = compress_json(json.dumps(fine), CTX, CFG)
    assert out is not None and out.method == "json-toon"
    assert "0.30000000000000004" in out.text


class PanicException(BaseException):
    """Stands in for ``pyo3_runtime.PanicException``, what a panic in Rust code raises."""


PanicException.__module__ = "pyo3_runtime"


def _panic(*args: Any, **kwargs: Any) -> Any:
    raise PanicException("panic from Rust code")


@pytest.mark.parametrize("function", ["dumps", "loads"])
def test_a_panic_in_toons_means_no_toon(monkeypatch: pytest.MonkeyPatch, function: str) -> None:
    """A Rust panic while encoding or checking TOON sends compact JSON instead of crashing."""
    monkeypatch.setattr(f"compressors.toon.toons.{function}", _panic)
    value = table(50)
    assert encode_best(value, "gpt-4o") == (compact(value), "json-compact")


def test_keyboard_interrupt_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a Rust panic is caught among BaseExceptions: Ctrl-C still stops the process."""

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("compressors.toon.toons.dumps", interrupt)
    with pytest.raises(KeyboardInterrupt):
        encode_best(table(50), "gpt-4o")


def test_already_compact_json_gives_nothing() -> None:
    """Compact JSON that TOON cannot beat is reported as nothing to gain."""
    text = compact({"url": "https://api.github.com/repos/a/b", "nested": {"k": [1, 2, {"x": "y"}]}})
    assert compress_json(text, CTX, CFG) is None


def test_lossless_output_is_deterministic() -> None:
    """The same JSON gives byte-identical output every time."""
    text = json.dumps({"rows": table(25), "meta": {"page": 1}}, indent=2)
    first = compress_json(text, CTX, CFG)
    assert first is not None
    for _ in range(3):
        again = compress_json(text, CTX, CFG)
        assert again is not None and again.text == first.text and again.method == first.method


def test_ndjson_lines_are_compacted_and_round_trip() -> None:
    """NDJSON: every line compacted (or one TOON table); the sequence of values is unchanged."""
    rows = [{"level": "info", "msg": f"event {i}", "n": i} for i in range(20)]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    out = compress_ndjson(text, CTX, CFG)
    assert out is not None and out.lossless
    assert out.method in ("ndjson-compact", "ndjson-toon")
    assert same_value(decode_output(out.text, out.method), rows)
    assert tokens.count(out.text, "gpt-4o") < tokens.count(text, "gpt-4o")


def test_ndjson_mixed_rows_stay_lines() -> None:
    """NDJSON rows of different shapes are compacted line by line."""
    rows: list[Any] = [{"a": 1}, {"b": [1, 2]}, [1, 2, 3], {"a": {"deep": True}}]
    text = "\n".join(json.dumps(r, indent=None) for r in rows)
    out = compress_ndjson(text, CTX, CFG)
    assert out is not None
    assert out.method == "ndjson-compact"
    assert out.text.split("\n") == [compact(r) for r in rows]


@pytest.mark.evaldata
def test_every_octokit_response_round_trips_exactly(eval_data: Path) -> None:
    """Every octokit response, pretty or compact, decodes back exactly after the lossless path."""
    checked = 0
    for path in sorted((eval_data / "octokit").glob("*.json")):
        for request in json.loads(path.read_text()):
            value = request["response"]
            if not isinstance(value, (dict, list)):
                continue
            for text in (json.dumps(value, indent=2), json.dumps(value, ensure_ascii=False)):
                out = compress_json(text, CTX, CFG)
                sent = text if out is None else out.text
                method = "json-compact" if out is None else out.method
                assert same_value(decode_output(sent, method), value), f"{path.name}: {method}"
                result = compress(text, CTX, LOSSLESS_EVERYTHING)
                assert result.lossless
                decoded = (
                    json.loads(text) if not result.changed else decode_output(result.text, result.method)
                )
                assert same_value(decoded, value), path.name
                checked += 1
    assert checked > 50


@pytest.mark.evaldata
def test_octokit_choice_is_the_cheaper_encoding(eval_data: Path) -> None:
    """On real API responses the lossless output never costs more tokens than compact JSON."""
    for path in sorted((eval_data / "octokit").glob("*.json")):
        value = [r["response"] for r in json.loads(path.read_text())]
        text, method = encode_best(value, "gpt-4o")
        assert tokens.count(text, "gpt-4o") <= tokens.count(compact(value), "gpt-4o"), path.name
        assert same_value(decode_output(text, method), value), path.name


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=250, deadline=None)
@given(json_values, st.sampled_from([None, 2]))
def test_lossless_round_trip_of_arbitrary_json(value: Any, indent: int | None) -> None:
    """For any JSON value, what the lossless path sends decodes to exactly that value."""
    text = json.dumps(value, indent=indent)
    try:
        out = compress_json(text, CTX, CFG)
    except WrongContentType:
        return  # a bare scalar document is not JSON for this compressor's purposes
    if out is None:
        assert same_value(json.loads(text), value)
        return
    assert out.lossless
    assert same_value(decode_output(out.text, out.method), value)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_encode_best_is_never_worse_than_compact(value: Any) -> None:
    """The chosen encoding never has more tokens than compact JSON, and TOON only when exact."""
    text, method = encode_best(value, "gpt-4o")
    assert tokens.count(text, "gpt-4o") <= tokens.count(compact(value), "gpt-4o")
    if method == "json-toon":
        assert same_value(toon_decode(text), value)
        assert text == toon_encode(value)


# --- lossy --------------------------------------------------------------------------------

LOSSY_CFG = CompressionConfig(lossy_threshold_tokens=1000, budget_tokens=800, min_tokens=100)


def service_rows(n: int = 200) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        rows.append(
            {
                "id": 1000 + i,
                "name": f"svc-{i:03d}",
                "status": "ok",
                "region": ["eu-west-1", "us-east-1"][i % 2],
                "latency_ms": 20 + i % 7,
                "created_at": f"2024-03-{1 + i % 28:02d}T10:00:00Z",
                "note": None,
                "tags": [],
            }
        )
    rows[57]["status"] = "error"
    rows[120]["latency_ms"] = 9000
    rows[150]["name"] = "zebra-gateway"
    return rows


def body_of(text: str) -> str:
    """The encoded value without the trailing marker lines."""
    return "\n".join(line for line in text.split("\n") if not line.startswith(MARKER_PREFIX))


def decode_lossy(text: str, method: str) -> Any:
    return decode_output(body_of(text), method.split("+", 1)[1])


def test_lossy_keeps_edges_errors_outliers_and_query_matches() -> None:
    """Long arrays keep edge, error, outlier and query rows; one marker summarises the rest."""
    rows = service_rows()
    ctx = CompressionContext(model="gpt-4o", query="why is zebra-gateway slow?")
    out = compress_json_lossy(json.dumps({"services": rows}, indent=2), ctx, LOSSY_CFG)
    assert out is not None and not out.lossless
    kept = decode_lossy(out.text, out.method)["services"]
    ids = [r["id"] for r in kept]
    assert ids[:2] == [1000, 1001] and ids[-2:] == [1198, 1199]
    assert {1057, 1120, 1150} <= set(ids)
    assert ids == sorted(ids)
    markers = [line for line in out.text.split("\n") if line.startswith(MARKER_PREFIX)]
    row_marker = next(m for m in markers if "rows at $.services" in m)
    assert f"{200 - len(kept)} of 200 rows" in row_marker
    assert "latency_ms 20..26" in row_marker
    assert "region {" in row_marker and "created_at 2024-03-01" in row_marker
    assert any("null/empty fields" in m for m in markers)
    assert all("note" not in r and "tags" not in r for r in kept)


def test_lossy_uses_tool_arguments_as_query() -> None:
    """Terms of the tool call's arguments select matching rows like the user's query does."""
    rows = service_rows()
    ctx = CompressionContext(model="gpt-4o", tool_args='{"service": "svc-077"}')
    out = compress_json_lossy(json.dumps(rows), ctx, LOSSY_CFG)
    assert out is not None
    assert 1077 in [r["id"] for r in decode_lossy(out.text, out.method)]


def test_long_strings_are_shortened_with_an_inline_marker() -> None:
    """A string longer than max_string_chars keeps head and tail around a marker."""
    cfg = CompressionConfig(max_string_chars=300, lossy_threshold_tokens=100, budget_tokens=100)
    body = "".join(f"word{i} " for i in range(3000))
    out = compress_json_lossy(json.dumps({"title": "t", "body": body}), CTX, cfg)
    assert out is not None
    value = decode_lossy(out.text, out.method)
    assert MARKER_PREFIX in value["body"] and len(value["body"]) < 400
    assert value["body"].startswith("word0 ") and value["body"].endswith("word2999 ")
    assert any("long strings" in note for note in out.omitted)


def test_flat_tables_drop_only_columns_empty_everywhere() -> None:
    """In a table of flat rows only all-empty columns go, so the rows stay uniform (TOON table)."""
    rows = [{"id": i, "name": f"n{i}", "gone": None, "sometimes": i if i % 2 else None} for i in range(6)]
    out = compress_json_lossy(json.dumps(rows), CTX, LOSSY_CFG)
    assert out is not None
    kept = decode_lossy(out.text, out.method)
    assert all(list(r) == ["id", "name", "sometimes"] for r in kept)


def test_lossy_gives_nothing_when_nothing_can_go() -> None:
    """Short arrays without empty fields or long strings: the lossy path has nothing to cut."""
    assert compress_json_lossy(json.dumps({"rows": table(5)}), CTX, LOSSY_CFG) is None
    assert compress_json_lossy("not json", CTX, LOSSY_CFG) is None


def test_lossy_is_deterministic() -> None:
    """Lossy output is byte-identical across runs."""
    text = json.dumps({"services": service_rows()})
    ctx = CompressionContext(model="gpt-4o", query="zebra-gateway errors")
    first = compress_json_lossy(text, ctx, LOSSY_CFG)
    assert first is not None
    for _ in range(3):
        again = compress_json_lossy(text, ctx, LOSSY_CFG)
        assert again is not None and again.text == first.text and again.omitted == first.omitted


def test_lossy_ndjson_reduces_rows_with_a_marker() -> None:
    """NDJSON rows are reduced like an array of objects and the cut is marked."""
    text = "\n".join(json.dumps(r) for r in service_rows())
    out = compress_ndjson_lossy(text, CTX, LOSSY_CFG)
    assert out is not None and not out.lossless
    assert MARKER_PREFIX in out.text
    assert out.method.startswith("ndjson-lossy+")


def test_lossy_json_above_threshold_via_dispatcher() -> None:
    """Through compress(): a big JSON output with policy auto is cut, marked and shorter."""
    text = json.dumps({"services": service_rows()}, indent=2)
    result = compress(text, CompressionContext(model="gpt-4o"), LOSSY_CFG)
    assert not result.lossless
    assert result.method.startswith("json-lossy+")
    assert MARKER_PREFIX in result.text
    assert result.tokens_after < result.tokens_before
    assert result.tokens_after == tokens.count(result.text, "gpt-4o")
    assert result.omitted


def test_lossless_only_policy_never_cuts_rows() -> None:
    """With policy lossless-only the same big output is only re-encoded, never cut."""
    text = json.dumps({"services": service_rows()}, indent=2)
    cfg = CompressionConfig(
        lossy_threshold_tokens=1000, budget_tokens=800, tool_policies={"db": ToolPolicy.LOSSLESS_ONLY}
    )
    result = compress(text, CompressionContext(model="gpt-4o", tool_name="db"), cfg)
    assert result.lossless
    assert same_value(decode_output(result.text, result.method), json.loads(text))


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"status": "error"}, True),
        ({"level": "WARN"}, True),
        ({"conclusion": "failure"}, True),
        ({"status": 503}, True),
        ({"exit_code": 2}, True),
        ({"success": False}, True),
        ({"error": {"message": "boom"}}, True),
        ({"status": "ok", "error": None}, False),
        ({"state": "closed"}, False),
        ({"status": 200, "exit_code": 0}, False),
        ({"name": "error handler docs"}, False),
    ],
)
def test_error_rows(row: dict[str, Any], expected: bool) -> None:
    """Rows reporting failures in well-known fields are recognised; others are not."""
    assert is_error_row(row) is expected


def test_numeric_outlier_detection_ignores_uniform_sequences() -> None:
    """Evenly spread values (ids, counters) are no outliers: only the edge rows stay."""
    rows = [{"id": i, "count": i * 3} for i in range(100)]
    cfg = CompressionConfig(lossy_threshold_tokens=100, budget_tokens=100)
    out = compress_json_lossy(json.dumps(rows), CTX, cfg)
    assert out is not None
    ids = [r["id"] for r in decode_lossy(out.text, out.method)]
    edge = len(ids) // 2
    assert 2 <= edge <= 3
    assert ids == [*range(edge), *range(100 - edge, 100)]


@pytest.mark.parametrize("depth", [300, 900, 990, 2000])
def test_deep_but_parseable_nesting_never_crashes(depth: int) -> None:
    """Nesting near the recursion limit is re-encoded exactly or handed to the text path."""
    text = "[ " * depth + "1" + " ]" * depth
    try:
        out = compress_json(text, CTX, CFG)
    except WrongContentType:
        return
    assert out is not None
    assert out.text == "[" * depth + "1" + "]" * depth
    result = compress(text, CTX, LOSSLESS_EVERYTHING)
    assert result.text in (text, out.text)


async def test_deep_nesting_in_a_worker_thread_never_crashes() -> None:
    """The deepest JSON that parses is compressed in a worker thread (as the proxy does) without a crash."""
    for depth in range(995, 900, -5):  # the deepest that parses under the test runner's stack
        text = "[" * depth + "1" + "]" * depth
        try:
            parse_exact(text)
        except WrongContentType:
            continue
        break
    value = await asyncio.to_thread(parse_exact, text)
    out = await asyncio.to_thread(encode_best, value, "gpt-4o")
    assert out[0] == text and out[1] == "json-compact"
    candidate = await asyncio.to_thread(toon_encode, value)
    assert same_value(await asyncio.to_thread(toon_decode, candidate), value)
