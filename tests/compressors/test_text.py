"""Long text and search results: BM25 selection within budget, order, markers, bad input."""

from __future__ import annotations

import random
import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import CompressionConfig, CompressionContext, tokens
from compressors._select import bm25, bm25_texts, select, words
from compressors._text import chunk_text, compress_text
from compressors.markers import MARKER_PREFIX

VOCAB = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "omicron", "sigma"]


def handbook(sections: int = 40, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts = ["# Project handbook\n\nThis handbook explains how the team works.\n"]
    for i in range(sections):
        parts.append(f"## Section {i}\n\n" + " ".join(rng.choice(VOCAB) for _ in range(60)) + ".\n")
    if sections > 23:
        parts[23] = (
            "## Deployment\n\nTo deploy the frobnicator service run `make deploy` with "
            "KUBE_CONTEXT=prod-eu-1 and check /var/log/frob.log afterwards.\n"
        )
    return "\n".join(parts)


CFG = CompressionConfig(budget_tokens=400)
QUERY = CompressionContext(query="how do I deploy the frobnicator?")


def test_bm25_scores_matching_docs_higher() -> None:
    """A doc holding the query terms outscores one without; a doc with none scores zero."""
    docs = [words("the cat sat on the mat"), words("deploy the frobnicator now"), words("nothing here")]
    scores = bm25(docs, words("frobnicator deploy"))
    assert scores[1] > 0
    assert scores[0] == 0 and scores[2] == 0


def test_bm25_texts_scores_holders_and_prefers_shorter_texts() -> None:
    """Only texts holding a query term score; with equal term counts the shorter text (in
    characters) scores higher, and the term counts are those of words()."""
    texts = [
        "deploy the frobnicator",
        "nothing relevant at all",
        "deploy the frobnicator " + "padding words " * 20,
        "Frobnicators deployed",  # case and suffix forms count
    ]
    scores = bm25_texts(texts, words("frobnicator deploy"))
    assert scores[1] == 0.0
    assert scores[0] > scores[2] > 0.0
    assert scores[3] > 0.0
    assert bm25_texts(texts, []) == [0.0] * 4


def test_words_split_compounds_and_stem() -> None:
    """Terms are lower-cased, snake/camel parts are added and light stemming applies."""
    terms = words("getElementById parse_date decrypted")
    assert {"getelementbyid", "get", "element", "parse_date", "parse", "date", "decrypt"} <= set(terms)


def test_bm25_picks_the_relevant_chunk() -> None:
    """The one section about deploying is kept even though it sits in the middle."""
    text = handbook()
    out = compress_text(text, QUERY, CFG)
    assert out is not None
    assert "## Deployment" in out.text and "KUBE_CONTEXT=prod-eu-1" in out.text
    assert tokens.count(out.text) <= CFG.budget_tokens + 50
    assert out.method == "text-bm25"


def test_first_chunk_always_kept() -> None:
    """The header chunk stays even when it does not match the query."""
    out = compress_text(handbook(), QUERY, CFG)
    assert out is not None
    assert out.text.startswith("# Project handbook\n\nThis handbook explains how the team works.\n")


def test_original_order_and_marker_per_gap() -> None:
    """Kept chunks appear in input order and each gap is one marker naming its lines."""
    text = handbook()
    out = compress_text(text, QUERY, CFG)
    assert out is not None
    kept = [line for line in out.text.split("\n") if line.startswith("## ")]
    positions = [text.index(line) for line in kept]
    assert positions == sorted(positions)
    markers = [line for line in out.text.split("\n") if line.startswith(MARKER_PREFIX)]
    assert len(markers) == len(out.omitted) >= 1
    assert all(re.search(r"chunks? \d+(-\d+)? of \d+ \(lines? \d+", m) for m in markers)
    pieces = re.split(r"\[nocp omitted: [^\]]*\]\n", out.text)
    assert all(piece in text for piece in pieces)


def test_markers_list_dropped_sections_and_hard_tokens() -> None:
    """A gap marker names the headings it dropped and hard tokens the kept text lacks."""
    appendix = "See config_loader.parse_env in /etc/app/settings.yaml. " + " ".join(VOCAB * 4)
    text = handbook() + f"\n## Appendix\n\n{appendix}\n"
    out = compress_text(text, QUERY, CFG)
    assert out is not None
    assert "sections: Section" in out.text
    assert appendix not in out.text
    assert "mentions: /etc/app/settings.yaml, config_loader.parse_env]" in out.text


def test_fits_budget_returns_none() -> None:
    """Text already within the budget is left alone."""
    assert compress_text("short\n\ntext", QUERY, CFG) is None


def test_deterministic() -> None:
    """Equal input gives byte-identical output."""
    text = handbook()
    a, b = compress_text(text, QUERY, CFG), compress_text(text, QUERY, CFG)
    assert a is not None and b is not None and a.text == b.text


def test_never_longer_than_input() -> None:
    """Output is shorter than the input, or None."""
    for seed in range(5):
        text = handbook(sections=8, seed=seed)
        out = compress_text(text, QUERY, CompressionConfig(budget_tokens=60))
        assert out is None or len(out.text) < len(text)


def test_search_results_chunk_per_result() -> None:
    """Numbered search results are separate chunks; the relevant one is kept."""
    results = [f"{i}. Result about {VOCAB[i % 11]} things\n   https://ex.com/{i}\n" for i in range(1, 60)]
    results[40] = "41. Frobnicator deployment guide\n   https://ex.com/frob\n"
    text = "Found 59 results for your search:\n" + "".join(results)
    out = compress_text(text, QUERY, CompressionConfig(budget_tokens=150))
    assert out is not None
    assert "41. Frobnicator deployment guide\n   https://ex.com/frob\n" in out.text


def test_no_query_keeps_the_start() -> None:
    """Without a query the earliest chunks are kept."""
    out = compress_text(handbook(), CompressionContext(), CFG)
    assert out is not None and out.method == "text-head"
    assert "## Section 0" in out.text


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=3000), st.integers(min_value=50, max_value=800))
def test_chunks_concatenate_to_input(text: str, max_chars: int) -> None:
    """Joining every unit of every chunk gives the input back exactly."""
    assert "".join("".join(chunk) for chunk in chunk_text(text, max_chars)) == text


def test_select_respects_budget_and_must() -> None:
    """select keeps every must piece and adds others by priority within the budget."""
    keep = select([10, 10, 10, 10], [(0,), (2,), (1,), (3,)], 20, [True, False, False, False], gap_cost=0)
    assert keep[0] and keep[2]
    assert keep == [True, False, True, False]


def test_select_counts_marker_cost() -> None:
    """Splitting a gap costs a marker: a cheaper neighbour that closes one is preferred."""
    keep = select([10, 10, 10, 10], [(0,), (2,), (1,), (3,)], 40, [True, False, False, False], gap_cost=16)
    assert keep == [True, True, False, False]


def test_huge_single_line_and_binary_junk_finish_quickly() -> None:
    """A 20 MB single line and random bytes are cut into bounded chunks in linear time."""
    rng = random.Random(5)
    junk = bytes(rng.getrandbits(8) for _ in range(1_000_000)).decode("latin-1")
    start = time.perf_counter()
    out = compress_text("word " * 4_000_000, QUERY, CFG)
    assert out is not None and len(out.text) < 10_000
    out = compress_text(junk, QUERY, CFG)
    assert out is None or len(out.text) < len(junk)
    assert time.perf_counter() - start < 60
