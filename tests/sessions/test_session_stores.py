"""Session ids and the session stores (SQLite and a real Redis): compare-and-set, concurrency, TTL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_settings
from proxy.sessions import (
    RedisSessionStore,
    SessionState,
    SessionStore,
    SQLiteSessionStore,
    derive_session_id,
    open_store,
    sqlite_path,
)
from tests.helpers import start_redis

# ------------------------------------------------------------------------------ session ids

SYSTEM = {"role": "system", "content": "You are terse."}
FIRST = {"role": "user", "content": "Plan a trip to Lisbon."}


def test_header_wins() -> None:
    """The X-Session-Id header is the session id, whatever the body says."""
    body = {"messages": [SYSTEM, FIRST], "user": "u-1", "metadata": {"session_id": "m-1"}}
    assert derive_session_id("openai", {"X-Session-Id": " abc-123 "}, body) == "abc-123"


def test_metadata_then_user() -> None:
    """Without the header, a session-like metadata key is used, else the OpenAI user field."""
    body: dict[str, Any] = {
        "messages": [SYSTEM, FIRST],
        "user": "u-1",
        "metadata": {"conversation_id": "c-9"},
    }
    assert derive_session_id("openai", {}, body) == "c-9"
    body["metadata"] = {"unrelated": "x"}
    assert derive_session_id("openai", {}, body) == "u-1"


def test_hash_of_system_and_first_user_message() -> None:
    """Otherwise the id is a hash of the system prompt and first user message, stable across turns."""
    turn1 = {"messages": [SYSTEM, FIRST]}
    turn2 = {
        "messages": [
            SYSTEM,
            FIRST,
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "More"},
        ]
    }
    sid = derive_session_id("openai", {}, turn1)
    assert sid is not None and sid.startswith("h-")
    assert derive_session_id("openai", {}, turn2) == sid
    other = {"messages": [SYSTEM, {"role": "user", "content": "Plan a trip to Porto."}]}
    assert derive_session_id("openai", {}, other) != sid
    assert derive_session_id("openai", {}, {"messages": [{**SYSTEM, "content": "Be verbose."}, FIRST]}) != sid
    assert derive_session_id("openai", {}, {"messages": []}) is None


def test_gemini_hash_and_header() -> None:
    """Gemini requests hash systemInstruction and the first user content, or take the header."""
    base = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
    }
    later = {**base, "contents": [*base["contents"], {"role": "model", "parts": [{"text": "Hi"}]}]}
    sid = derive_session_id("gemini", {}, base)
    assert sid is not None and sid.startswith("h-")
    assert derive_session_id("gemini", {}, later) == sid
    assert derive_session_id("gemini", {"X-Session-Id": "g-7"}, base) == "g-7"
    assert derive_session_id("gemini", {}, {"contents": []}) is None


# ------------------------------------------------------------------------------ stores


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port for this module (skipped when the binary is
    missing locally; in CI, where .ci/run installs it, a missing binary fails)."""
    redis = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield redis.url
    finally:
        redis.proc.terminate()
        redis.proc.wait(timeout=10)


_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Each store backend in turn (Redis under a fresh key prefix)."""
    s: SessionStore
    if request.param == "sqlite":
        s = SQLiteSessionStore(tmp_path / "sessions.sqlite3", ttl_s=60)
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisSessionStore(url, ttl_s=60, prefix=f"test:{next(_counter)}:")
    yield s
    await s.aclose()


def state(version: int, summary: str = "summary", end: int = 5) -> SessionState:
    return SessionState(
        version=version, start=1, end=end, digest="ab" * 16, summary=summary, summary_tokens=3
    )


async def test_get_put_and_compare_and_set(store: SessionStore) -> None:
    """A state is written only over the version it was read at; a stale writer is refused."""
    assert await store.get("k") is None
    assert await store.put("k", state(1), expected_version=0)
    assert await store.get("k") == state(1)
    assert not await store.put("k", state(1, "other"), expected_version=0)  # someone else's first write
    assert await store.put("k", state(2, "second", end=9), expected_version=1)
    assert not await store.put("k", state(2, "stale"), expected_version=1)
    assert await store.get("k") == state(2, "second", end=9)
    await store.delete("k")
    assert await store.get("k") is None


async def test_concurrent_writers_exactly_one_wins(store: SessionStore) -> None:
    """Of many concurrent writers over the same version, exactly one succeeds; the state is whole."""
    await store.put("k", state(1), expected_version=0)
    results = await asyncio.gather(
        *(store.put("k", state(2, f"w{i}"), expected_version=1) for i in range(20))
    )
    assert sum(results) == 1
    winner = results.index(True)
    assert await store.get("k") == state(2, f"w{winner}")


async def test_unicode_and_large_summaries_round_trip(store: SessionStore) -> None:
    """Summaries of any size and script are stored byte for byte."""
    big = "Résumé — 日本語 ✓ " * 20_000
    assert await store.put("k", state(1, big), expected_version=0)
    got = await store.get("k")
    assert got is not None and got.summary == big


async def test_redis_ttl_expires_idle_sessions(redis_url: str) -> None:
    """A Redis session unused for ttl_s is forgotten, and a read restarts its idle timer."""
    store = RedisSessionStore(redis_url, ttl_s=1.0, prefix="ttl:")
    try:
        assert await store.put("a", state(1), expected_version=0)
        assert await store.put("b", state(1), expected_version=0)
        for _ in range(4):
            await asyncio.sleep(0.35)
            assert await store.get("a") is not None  # kept alive by use
        assert await store.get("b") is None  # idle: expired
        assert await store.put("b", state(1, "fresh"), expected_version=0)  # starts over at version 0
    finally:
        await store.aclose()


async def test_sqlite_ttl_expires_idle_sessions(tmp_path: Path) -> None:
    """An SQLite session unused for ttl_s is forgotten, a read restarts its timer, and expired rows
    can be overwritten as new and are purged."""
    now = [1000.0]
    store = SQLiteSessionStore(tmp_path / "s.db", ttl_s=10, clock=lambda: now[0])
    try:
        assert await store.put("a", state(1), expected_version=0)
        assert await store.put("b", state(1), expected_version=0)
        for _ in range(3):
            now[0] += 6
            assert await store.get("a") is not None
        assert await store.get("b") is None
        assert not await store.put("b", state(2), expected_version=1)  # an expired version is gone
        now[0] += 100
        assert await store.put("b", state(1, "fresh"), expected_version=0)
        assert await store.rows() == 1  # "a" expired and was purged by the write
    finally:
        await store.aclose()


async def test_sqlite_is_shared_safely_between_processes(tmp_path: Path) -> None:
    """Two stores on one SQLite file (as two proxy processes) see each other's writes, and their
    compare-and-set still lets exactly one writer win."""
    path = tmp_path / "shared.db"
    one, two = SQLiteSessionStore(path, ttl_s=60), SQLiteSessionStore(path, ttl_s=60)
    try:
        assert await one.put("k", state(1), expected_version=0)
        assert await two.get("k") == state(1)
        results = await asyncio.gather(
            *(s.put("k", state(2, f"{i}"), expected_version=1) for i in range(10) for s in (one, two))
        )
        assert sum(results) == 1
        assert await one.get("k") == await two.get("k")
    finally:
        await one.aclose()
        await two.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_open_store_follows_settings(tmp_path: Path, redis_url: str) -> None:
    """sessions.backend picks the store; the SQLite file defaults to the log directory."""
    settings = load_settings(env={}, overrides={"log": {"dir": str(tmp_path / "logs")}})
    assert sqlite_path(settings) == tmp_path / "logs" / "sessions.sqlite3"
    store = open_store(settings)
    assert isinstance(store, SQLiteSessionStore)
    await store.put("k", state(1), expected_version=0)
    await store.aclose()
    assert (tmp_path / "logs" / "sessions.sqlite3").exists()
    settings = load_settings(env={"NOCP_SESSIONS__BACKEND": "redis", "NOCP_SESSIONS__REDIS_URL": redis_url})
    store = open_store(settings)
    try:
        assert isinstance(store, RedisSessionStore)
        assert await store.put("settings-test", state(1), expected_version=0)
    finally:
        await store.aclose()


# ------------------------------------------------------------------------------ blobs


async def test_blobs_put_get_touch(store: SessionStore) -> None:
    """Blobs round-trip, missing keys read None, touch reports live keys, no clash with states."""
    big = ("Résumé — 日本語 ✓ " * 20_000).encode()
    assert await store.get_blobs(["a", "b"], ttl_s=60) == [None, None]
    assert await store.touch_blobs(["a"], ttl_s=60) == [False]
    await store.put_blobs({"a": b"one", "big": big, "k": b"blob"}, ttl_s=60)
    assert await store.get_blobs(["big", "missing", "a", "a"], ttl_s=60) == [big, None, b"one", b"one"]
    assert await store.touch_blobs(["a", "missing", "k"], ttl_s=60) == [True, False, True]
    await store.put_blobs({"a": b"two"}, ttl_s=60)
    assert await store.get_blobs(["a"], ttl_s=60) == [b"two"]
    assert await store.get("k") is None  # a blob is not a session state
    assert await store.put("k", state(1), expected_version=0)
    assert await store.get_blobs(["k"], ttl_s=60) == [b"blob"]
    assert await store.get_blobs([], ttl_s=60) == [] and await store.touch_blobs([], ttl_s=60) == []
    await store.put_blobs({}, ttl_s=60)


async def test_blobs_many_keys(store: SessionStore) -> None:
    """Reads of more keys than one SQL statement takes are split and keep their order."""
    items = {f"k{i}": str(i).encode() for i in range(1200)}
    await store.put_blobs(items, ttl_s=60)
    keys = [f"k{i}" for i in range(1199, -1, -1)] + ["nope"]
    assert await store.get_blobs(keys, ttl_s=60) == [items[k] for k in keys[:-1]] + [None]


async def test_redis_blob_ttl_restarts_on_use(redis_url: str) -> None:
    """A Redis blob is forgotten ttl_s after its last use; a read or a touch restarts the timer."""
    store = RedisSessionStore(redis_url, ttl_s=60, prefix=f"blobttl:{next(_counter)}:")
    try:
        await store.put_blobs({"read": b"1", "touched": b"2", "idle": b"3"}, ttl_s=0.6)
        for _ in range(4):
            await asyncio.sleep(0.25)
            assert await store.get_blobs(["read"], ttl_s=0.6) == [b"1"]
            assert await store.touch_blobs(["touched"], ttl_s=0.6) == [True]
        assert await store.get_blobs(["idle", "read", "touched"], ttl_s=0.6) == [None, b"1", b"2"]
    finally:
        await store.aclose()
        await store.aclose()  # closing twice is harmless


async def test_sqlite_blob_ttl_restarts_on_use(tmp_path: Path) -> None:
    """An SQLite blob expires ttl_s after last use; reads and touches restart it; purge works."""
    now = [1000.0]
    store = SQLiteSessionStore(tmp_path / "s.db", ttl_s=3600, clock=lambda: now[0])
    try:
        await store.put_blobs({"read": b"1", "touched": b"2", "idle": b"3"}, ttl_s=10)
        for _ in range(3):
            now[0] += 6
            assert await store.get_blobs(["read"], ttl_s=10) == [b"1"]
            assert await store.touch_blobs(["touched"], ttl_s=10) == [True]
        assert await store.get_blobs(["idle", "read", "touched"], ttl_s=10) == [None, b"1", b"2"]
        assert await store.touch_blobs(["idle"], ttl_s=10) == [False]
        now[0] += 100
        await store.put_blobs({"fresh": b"4"}, ttl_s=10)  # a write purges what expired
        with sqlite3.connect(tmp_path / "s.db") as conn:
            assert conn.execute("SELECT key FROM blobs").fetchall() == [("fresh",)]
        conn.close()
    finally:
        await store.aclose()
        await store.aclose()
