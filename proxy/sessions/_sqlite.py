"""The embedded session store: one SQLite file in WAL mode, used from one worker thread.

Every statement runs on a dedicated thread, so the event loop never waits on disk. Each
read and write is a single SQL statement (atomic on its own), and writes are compare-and-set
on the row's version, so several processes may share the file: ``busy_timeout`` makes a
writer wait for another's lock instead of failing.

The file holds whole tool outputs, so it is created with mode ``0600`` (its folder ``0700``
when the store creates it; SQLite gives its ``-wal`` and ``-shm`` files the same mode). A
file deleted (or replaced) under a running store is noticed on the next call and created
afresh. With ``max_bytes``, the oldest rows (least recently used) are evicted after a write
that takes the data past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from proxy.sessions._state import SessionState, decode_state, encode_state

__all__ = ["SQLiteSessionStore"]

T = TypeVar("T")
_PURGE_EVERY_S = 60.0
_EVICT_TO = 0.9  # eviction brings the data down to this share of max_bytes
_log = structlog.get_logger("nocp.sessions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_expires_at ON blobs (expires_at);
"""
_BATCH = 500  # keys per statement (SQLite allows 32766 variables; stay far below)


class SQLiteSessionStore:
    """:class:`~proxy.sessions.SessionStore` on an SQLite file (created on first use)."""

    def __init__(
        self,
        path: str | Path,
        *,
        ttl_s: float,
        max_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes  # 0: unbounded
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nocp-sessions")
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._last_purge = 0.0
        self._closed = False
        self.evicted = 0  # rows evicted for max_bytes
        self.recreated = 0  # times the file was gone and created afresh

    # -------------------------------------------------------------- on the worker thread

    def _db(self) -> sqlite3.Connection:
        if self._conn is not None and not self._same_file():
            _log.warning("session_store_file_gone", path=str(self.path))
            self._close()
            self.recreated += 1
        if self._conn is None:
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(_SCHEMA)
            st = os.stat(self.path)
            self._conn, self._inode = conn, (st.st_dev, st.st_ino)
        return self._conn

    def _same_file(self) -> bool:
        """False when the file was deleted or replaced since it was opened."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def _used_bytes(self, db: sqlite3.Connection) -> int:
        pages = (
            db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        )
        return int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])

    def _bound(self, db: sqlite3.Connection) -> None:
        """Past ``max_bytes``: evict the least recently used blobs and sessions (the oldest
        ``expires_at``) until the data is under 90% of it."""
        if not self.max_bytes:
            return
        limit = self.max_bytes
        for _ in range(8):  # rows differ in size: a few rounds get under the target
            used = self._used_bytes(db)
            if used <= limit:
                return
            limit = int(self.max_bytes * _EVICT_TO)
            share = 1 - self.max_bytes * _EVICT_TO / used
            for table in ("blobs", "sessions"):
                rows = int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                n = min(rows, math.ceil(rows * share))
                if n:
                    cur = db.execute(
                        f"DELETE FROM {table} WHERE key IN "
                        f"(SELECT key FROM {table} ORDER BY expires_at LIMIT ?)",
                        (n,),
                    )
                    self.evicted += max(0, cur.rowcount)
            _log.info(
                "session_store_evicted", used_bytes=used, max_bytes=self.max_bytes, evicted_total=self.evicted
            )

    def _get(self, key: str) -> SessionState | None:
        now = self.clock()
        rows = (
            self._db()
            .execute(
                "UPDATE sessions SET expires_at = ? WHERE key = ? AND expires_at > ? RETURNING data",
                (now + self.ttl_s, key, now),
            )
            .fetchall()
        )
        return decode_state(rows[0][0]) if rows else None

    def _put(self, key: str, state: SessionState, expected: int) -> bool:
        now = self.clock()
        db = self._db()
        data = encode_state(state)
        if expected == 0:
            cur = db.execute(
                "INSERT INTO sessions (key, version, data, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET version = excluded.version, data = excluded.data, "
                "expires_at = excluded.expires_at WHERE sessions.expires_at <= ?",
                (key, state.version, data, now + self.ttl_s, now),
            )
        else:
            cur = db.execute(
                "UPDATE sessions SET version = ?, data = ?, expires_at = ? "
                "WHERE key = ? AND version = ? AND expires_at > ?",
                (state.version, data, now + self.ttl_s, key, expected, now),
            )
        written = cur.rowcount == 1
        self._maybe_purge(db, now)
        self._bound(db)
        return written

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        if now - self._last_purge >= _PURGE_EVERY_S:
            self._last_purge = now
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM blobs WHERE expires_at <= ?", (now,))

    def _refresh(self, keys: Sequence[str], ttl_s: float, what: str) -> dict[str, Any]:
        """Restart the timers of the live ``keys``; their ``what`` column by key."""
        now = self.clock()
        db = self._db()
        found: dict[str, Any] = {}
        for i in range(0, len(keys), _BATCH):
            batch = list(dict.fromkeys(keys[i : i + _BATCH]))
            marks = ",".join("?" * len(batch))
            rows = db.execute(
                f"UPDATE blobs SET expires_at = ? WHERE key IN ({marks}) AND expires_at > ? "
                f"RETURNING key, {what}",
                (now + ttl_s, *batch, now),
            ).fetchall()
            found.update((row[0], row[1]) for row in rows)
        return found

    def _get_blobs(self, keys: Sequence[str], ttl_s: float) -> list[bytes | None]:
        found = self._refresh(keys, ttl_s, "data")
        return [bytes(found[k]) if k in found else None for k in keys]

    def _touch_blobs(self, keys: Sequence[str], ttl_s: float) -> list[bool]:
        found = self._refresh(keys, ttl_s, "1")
        return [k in found for k in keys]

    def _put_blobs(self, items: Mapping[str, bytes], ttl_s: float) -> None:
        now = self.clock()
        db = self._db()
        db.executemany(
            "INSERT INTO blobs (key, data, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
            "SET data = excluded.data, expires_at = excluded.expires_at",
            [(k, v, now + ttl_s) for k, v in items.items()],
        )
        self._maybe_purge(db, now)
        self._bound(db)

    def _delete(self, key: str) -> None:
        self._db().execute("DELETE FROM sessions WHERE key = ?", (key,))

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _count(self) -> int:
        row = self._db().execute("SELECT count(*) FROM sessions").fetchone()
        return int(row[0])

    # -------------------------------------------------------------- on the event loop

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def get(self, key: str) -> SessionState | None:
        """The live state under ``key`` (its idle timer restarted), or None."""
        return await self._call(self._get, key)

    async def put(self, key: str, state: SessionState, *, expected_version: int) -> bool:
        """Compare-and-set ``state`` under ``key``; True when written."""
        return await self._call(self._put, key, state, expected_version)

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        await self._call(self._delete, key)

    async def get_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bytes | None]:
        """The live blob under each key (its idle timer restarted to ``ttl_s``), or None."""
        return await self._call(self._get_blobs, list(keys), ttl_s) if keys else []

    async def touch_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bool]:
        """Restart the idle timer of each live blob; True where the key is live."""
        return await self._call(self._touch_blobs, list(keys), ttl_s) if keys else []

    async def put_blobs(self, items: Mapping[str, bytes], *, ttl_s: float) -> None:
        """Write each blob, to be forgotten ``ttl_s`` after its last use."""
        if items:
            await self._call(self._put_blobs, dict(items), ttl_s)

    async def rows(self) -> int:
        """Rows in the table, expired ones not yet purged included (for tests)."""
        return await self._call(self._count)

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._call(self._close)
        finally:
            self._executor.shutdown(wait=True)
