"""What a session store keeps per conversation, and the interface every store implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

__all__ = ["SessionState", "SessionStore", "decode_state", "encode_state"]


class SessionState(msgspec.Struct, frozen=True, kw_only=True):
    """The roll-up of one conversation: turns ``start`` to ``end - 1`` are replaced by
    ``summary``. ``digest`` (hex) chains the digests of exactly those turns, so a request
    whose history differs there is recognised and the state is not applied to it.

    ``version`` increases by one with every write; stores use it for compare-and-set.
    ``covered_tokens`` are the tokens of the replaced turns, ``summary_tokens`` the summary's.
    """

    version: int
    start: int
    end: int
    digest: str
    summary: str
    summary_tokens: int = 0
    covered_tokens: int = 0
    method: str = "extractive"
    updated_at: float = 0.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SessionState)


def encode_state(state: SessionState) -> bytes:
    """JSON bytes of ``state``."""
    return _encoder.encode(state)


def decode_state(data: bytes | str) -> SessionState:
    """``state`` back from :func:`encode_state`."""
    return _decoder.decode(data)


class SessionStore(Protocol):
    """A key -> :class:`SessionState` map with compare-and-set writes and idle expiry.

    - ``get`` returns the live state (and restarts its idle timer), or None.
    - ``put`` writes ``state`` only if the stored version is still ``expected_version``
      (0: no live state); it returns False, writing nothing, when another writer got there
      first. A whole state is replaced at once: a reader never sees half of one.

    Beside the states, a store keeps *blobs*: opaque bytes under a key, each with its own
    idle TTL (``ttl_s``: forgotten that long after its last use). Retrieval keeps there the
    originals of lossy cuts (content-addressed), which ids a session retrieved, and answers
    owed to the next request. Blob keys live apart from state keys.

    - ``get_blobs`` returns the live value of each key (None: missing or expired) and restarts
      the idle timer of those found.
    - ``touch_blobs`` only restarts the timers; it says which keys are live.
    - ``put_blobs`` writes (or overwrites) values; each write is atomic per key.
    """

    async def get(self, key: str) -> SessionState | None:
        """The live state under ``key``, or None."""
        ...

    async def put(self, key: str, state: SessionState, *, expected_version: int) -> bool:
        """Compare-and-set ``state`` under ``key``; True when written."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        ...

    async def get_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bytes | None]:
        """The live blob under each key (its idle timer restarted to ``ttl_s``), or None."""
        ...

    async def touch_blobs(self, keys: Sequence[str], *, ttl_s: float) -> list[bool]:
        """Restart the idle timer of each live blob; True where the key is live."""
        ...

    async def put_blobs(self, items: Mapping[str, bytes], *, ttl_s: float) -> None:
        """Write each blob, to be forgotten ``ttl_s`` after its last use."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...
