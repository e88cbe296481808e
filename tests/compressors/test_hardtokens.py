"""Hard-token extraction: every kind, what is not a hard token, and bad input."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors.hardtokens import KINDS, hard_tokens, hard_tokens_by_kind


@pytest.mark.parametrize(
    ("text", "kind", "token"),
    [
        ("see https://example.com/a/b?x=1#frag.", "url", "https://example.com/a/b?x=1#frag"),
        ("(http://h.io/p)", "url", "http://h.io/p"),
        ("id 123e4567-e89b-12d3-a456-426614174000 ok", "uuid", "123e4567-e89b-12d3-a456-426614174000"),
        ("took 3.5ms", "number", "3.5ms"),
        ("at 45% load", "number", "45%"),
        ("port 8080", "number", "8080"),
        ("version v1.2.3", "number", "v1.2.3"),
        ("host 192.168.0.1", "number", "192.168.0.1"),
        ("at 2024-01-31T10:00:05.123Z", "number", "2024-01-31T10:00:05.123Z"),
        ("commit ad388c7 done", "id", "ad388c7"),
        ("ptr 0x7fff", "id", "0x7fff"),
        ("order 12345678", "id", "12345678"),
        ("E999 IndentationError", "error_code", "E999"),
        ("raise ValueError(x)", "error_code", "ValueError"),
        ("open failed: ENOENT", "error_code", "ENOENT"),
        ("HTTP/1.1 404 Not Found", "error_code", "HTTP 404"),
        ("status code: 503", "error_code", "HTTP 503"),
        ("ORA-00942 table missing", "error_code", "ORA-00942"),
        ("edit src/app/main.py now", "path", "src/app/main.py"),
        ("edit src/app/main.py now", "path", "main.py"),
        ("cat /etc/hosts", "path", "/etc/hosts"),
        ("run ./x/y.sh", "path", "./x/y.sh"),
        ("open setup.py", "path", "setup.py"),
        ("call base_unit.total_seconds()", "identifier", "base_unit.total_seconds"),
        ("call base_unit.total_seconds()", "identifier", "total_seconds"),
        ("use getElementById", "identifier", "getElementById"),
        ("class TimeDelta", "identifier", "TimeDelta"),
        ("def __init__(self)", "identifier", "__init__"),
        ("import os.path.join", "identifier", "os.path.join"),
    ],
)
def test_kinds(text: str, kind: str, token: str) -> None:
    """Each documented kind is extracted exactly as written."""
    assert token in hard_tokens_by_kind(text)[kind]


@pytest.mark.parametrize(
    "text",
    ["the value is here", "HTTP and JSON", "step 1 of 3", "e.g. i.e.", "deadbeef", "a b c"],
)
def test_plain_words_and_single_digits_are_not_hard_tokens(text: str) -> None:
    """Plain words, all-caps words, one-digit numbers and letter-only hex words are not hard tokens."""
    assert hard_tokens(text) == set()


def test_url_pieces_are_not_counted_again() -> None:
    """A URL is one token; its path and host are not extracted separately."""
    found = hard_tokens_by_kind("https://github.com/org/repo/blob/main/src/x.py")
    assert found["url"] == {"https://github.com/org/repo/blob/main/src/x.py"}
    assert found["path"] == set()


def test_line_numbered_code() -> None:
    """A SWE-agent view line yields its line number and the identifiers on it."""
    tokens = hard_tokens("1474:        base_unit = dt.timedelta(**{self.precision: 1})")
    assert {"1474", "base_unit", "dt.timedelta", "self.precision"} <= tokens


def test_edit_range_is_split_into_numbers() -> None:
    """``1475:1480`` gives both line numbers; ``ad388c7..20da768`` both ids."""
    assert {"1475", "1480"} <= hard_tokens("edit 1475:1480")
    assert {"ad388c7", "20da768"} <= hard_tokens("git diff ad388c7..20da768")


def test_union_equals_kinds() -> None:
    """hard_tokens is the union over hard_tokens_by_kind, whose keys are exactly KINDS."""
    text = "GET https://x.io/a 404 /tmp/f.txt ValueError req_id=ab12cd34ef"
    by_kind = hard_tokens_by_kind(text)
    assert tuple(by_kind) == KINDS
    assert hard_tokens(text) == set().union(*by_kind.values())


def test_deterministic() -> None:
    """The same text always gives the same tokens."""
    text = "x_1 y.z /a/b 0xff 1234567 https://q.io E501 " * 50
    assert hard_tokens(text) == hard_tokens(text)


def test_long_runs_are_skipped() -> None:
    """A run longer than MAX_RUN_CHARS (base64, minified code) yields nothing."""
    assert hard_tokens("a_" * 1000) == set()


def test_huge_single_line_and_binary_junk_finish_quickly() -> None:
    """A 20 MB single line and 2 MB of random bytes are handled in linear time."""
    rng = random.Random(7)
    junk = bytes(rng.getrandbits(8) for _ in range(2_000_000)).decode("latin-1")
    start = time.perf_counter()
    hard_tokens("x" * 20_000_000)
    hard_tokens("<div " * 200_000)
    hard_tokens(junk)
    assert time.perf_counter() - start < 30


_PIECES = [
    "value",
    "Value",
    "ENOENT",
    "E1234",
    "HTTP 404",
    "404",
    "1551:",
    "./src/app.py",
    "/etc/nocp.yaml",
    "~/x.txt",
    "https://example.com/a?b=1.",
    "parse_date",
    "camelCase",
    "json.dumps",
    "0xdeadbeef",
    "3f9a1c0b2e",
    "12345678",
    "7",
    "3.14",
    "10ms",
    "550e8400-e29b-41d4-a716-446655440000",
    "ValueError:",
    "(foo)",
    "'bar'",
    "\n",
    " ",
    ",",
    "x86_64",
    "__init__",
    "--flag",
    "a/b",
    "E2BIG",
    "ORA-00942",
    "W0611",
    "base_unit.total_seconds",
    "setup.py",
    "README.MD",
    "x.pyc",
    "getElementById",
    "TimeDelta",
    "HTTP/1.1",
    "status: 500",
    "deadbeef12",
]


_MENTION_KINDS = ("error_code", "path", "url", "identifier", "uuid", "id")
_SEPARATORS = [" ", "\n", ".", ":", "/", "=", "(", ",", "", "_", "-"]


@given(
    st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_SEPARATORS)), max_size=40),
    st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_SEPARATORS)), max_size=40),
)
@settings(max_examples=400, deadline=None)
def test_lazy_mentions_agree_with_hard_tokens(
    dropped_parts: list[tuple[str, str]], kept_parts: list[tuple[str, str]]
) -> None:
    """Gap candidates are exactly the dropped text's hard tokens of the mention kinds, the
    kept-text check is exact, and mentions are a subset of what the kept text lacks, whether
    or not the run memo is warm."""
    from compressors._mentions import _Text, clear_memo, mentions

    dropped = "".join(a + b for a, b in dropped_parts)
    kept = "".join(a + b for a, b in kept_parts)
    by_kind = hard_tokens_by_kind(dropped)
    kept_tokens = hard_tokens(kept)
    for cold in (True, False):
        if cold:
            clear_memo()
        text = _Text(kept)
        for token in hard_tokens(dropped) | kept_tokens | {"value", "a/b", "HTTP 404"}:
            assert text.has(token) == (token in kept_tokens), token
        listed = mentions(dropped, kept, 10_000, examine=10**9)
        assert len(listed) == len(set(listed))
        assert set(listed) <= {t for k in _MENTION_KINDS for t in by_kind[k]} - kept_tokens
        found = set(_Text(dropped).candidates(10**9))
        assert found == {(k, t) for k in _MENTION_KINDS for t in by_kind[k]}


@given(st.from_regex(r"[-+:@%#]{0,3}(?:[A-Za-z][a-z]{0,8}|[0-9])[.:+@/#-]{0,3}", fullmatch=True))
def test_runs_skipped_before_classifying_hold_no_hard_token(run: str) -> None:
    """A run the mention pass skips unclassified (a plain word or one digit) has no hard token."""
    from compressors._mentions import _NO_TOKENS

    assert _NO_TOKENS.fullmatch(run) and hard_tokens(run) == set()


@given(
    st.text(alphabet=st.characters(codec=None), max_size=200)
    | st.text(alphabet=" a1_./:-\u00e9\ud800\n", max_size=60)
)
def test_split_runs_agrees_with_the_run_pattern(text: str) -> None:
    """The translate-and-split run lister gives exactly the run pattern's matches, in order."""
    from compressors.hardtokens import _RUN, split_runs

    assert split_runs(text) == _RUN.findall(text)


def test_kept_check_falls_back_after_many_occurrences() -> None:
    """A token seen more than MAX_PROBES times in the kept text, never as a hard token, is
    still judged absent (and one found late is still found)."""
    from compressors._mentions import MAX_PROBES, _Text

    noise = " ".join(["parse_dates"] * (MAX_PROBES * 3))
    assert not _Text(noise).has("parse_date")
    assert _Text(f"{noise} parse_date").has("parse_date")


def test_mentions_order_kinds_then_first_occurrence() -> None:
    """Error codes come first, then paths, URLs and the other kinds, each in order of first
    occurrence; a path's own parts are not listed again."""
    from compressors._mentions import mentions

    dropped = "see load_config in src/b.py, then src/a.py raised KeyError; docs https://x.io/p"
    assert mentions(dropped, "", 10) == ["KeyError", "src/b.py", "src/a.py", "https://x.io/p", "load_config"]
    assert mentions(dropped, "src/b.py was read", 10) == [
        "KeyError",
        "src/a.py",
        "https://x.io/p",
        "load_config",
    ]
