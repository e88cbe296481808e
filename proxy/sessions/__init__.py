"""Session state: ids, the state kept per conversation, and stores.

``open_store(settings)`` gives the configured :class:`SessionStore`: embedded SQLite (the
default; one file, WAL mode) or Redis (several replicas). Both are compare-and-set on a
version number and forget sessions idle for ``sessions.ttl_s``. Beside the history roll-up's
states they keep blobs with their own idle TTL: the originals of lossy cuts and the rest of
what reversible compression needs (see :mod:`proxy.retrieval`).
"""

from __future__ import annotations

from pathlib import Path

from proxy.config import Settings
from proxy.sessions._ids import HEADER, derive_session_id, metadata_session, session_from
from proxy.sessions._redis import CircuitBreaker, RedisSessionStore, StoreUnavailable
from proxy.sessions._sqlite import SQLiteSessionStore
from proxy.sessions._state import SessionState, SessionStore, decode_state, encode_state

__all__ = [
    "HEADER",
    "CircuitBreaker",
    "RedisSessionStore",
    "SQLiteSessionStore",
    "SessionState",
    "SessionStore",
    "StoreUnavailable",
    "decode_state",
    "derive_session_id",
    "encode_state",
    "metadata_session",
    "open_store",
    "session_from",
    "sqlite_path",
]


def sqlite_path(settings: Settings) -> Path:
    """``sessions.sqlite_path``, or ``sessions.sqlite3`` in the log directory when empty."""
    cfg = settings.sessions
    return Path(cfg.sqlite_path) if cfg.sqlite_path else Path(settings.log.dir) / "sessions.sqlite3"


def open_store(settings: Settings) -> SessionStore:
    """The store ``settings.sessions`` asks for; it connects on first use."""
    cfg = settings.sessions
    if cfg.backend == "redis":
        return RedisSessionStore(
            cfg.redis_url,
            ttl_s=cfg.ttl_s,
            prefix=cfg.redis_prefix,
            timeout_s=cfg.redis_timeout_ms / 1000,
            breaker_failures=cfg.redis_breaker_failures,
            breaker_cooldown_s=cfg.redis_breaker_cooldown_s,
        )
    return SQLiteSessionStore(sqlite_path(settings), ttl_s=cfg.ttl_s, max_bytes=cfg.sqlite_max_bytes)
