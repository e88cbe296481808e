"""What the provider would have cached for the prompts the client sent: the cache-aware baseline.

The cost baseline is the request as the client sent it, in a world where nocp never ran. In
that world the provider's prompt cache saw the session's *raw* prompts, so the raw prompt's
cached tokens are estimated per session (tenant + session id, as everything nocp stores):
each raw prompt leaves a compact :class:`Fingerprint` (a hash chained over its units, and the
tokens up to the end of each), and the next raw prompt of the session is compared with it.

Units are the prompt's header (tool definitions, system prompt, instructions) and then each
turn (message, content, input item), in the order the provider renders them; a unit's tokens
come from the adapter's own ``count_prompt`` (cached per text, so turns the session already
sent cost a lookup). The shared prefix is the tokens up to the end of the last unit the two
prompts share (a turn changed part-way counts as not shared: a slight underestimate; Anthropic's
``cache_control`` marks are left out, since moving a breakpoint keeps the prefix). Then,
per protocol:

- OpenAI (Chat Completions, Responses) and Gemini (implicit caching): the shared prefix,
  rounded down to a multiple of 128 tokens, or 0 when that is under 1024. This is OpenAI's
  rule; Gemini's implicit cache has similar minimums (1024 for Flash, 2048 for Pro) and no
  published step, and it is treated the same (as the fake provider does).
- Anthropic: only at breakpoints. The client's own ``cache_control`` breakpoints (a block's
  counts at the end of its message or header; the top-level one at the end of the prompt)
  decide: the read is the longest prefix ending at a breakpoint of the previous raw prompt
  that the two share (1024 tokens at least), the write is the rest up to the current prompt's
  last breakpoint. A client that sets no breakpoints caches nothing: 0.

Fingerprints live in an in-process LRU (:class:`BaselineCache`) for the provider's cache
lifetime (``ttl_s``, 10 minutes by default). With several replicas a session's requests
compare only with those the same replica saw (a miss counts as an uncached start).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

__all__ = [
    "BLOCK_TOKENS",
    "MIN_CACHED_TOKENS",
    "BaselineCache",
    "BaselineEstimate",
    "Fingerprint",
    "estimate",
    "fingerprint",
    "session_key",
]

BLOCK_TOKENS: Final = 128
MIN_CACHED_TOKENS: Final = 1024
DEFAULT_TTL_S: Final = 600.0
_HEADER_KEYS: Final = (
    "tools",
    "functions",
    "system",
    "instructions",
    "systemInstruction",
    "system_instruction",
    "toolConfig",
    "tool_config",
)
_BREAKPOINTS: Final = frozenset({"anthropic"})
_TEXT_KEYS: Final = ("content", "system")


class _Counter(Protocol):
    protocol: str
    turns_key: str

    def count_prompt(self, body: Mapping[str, Any], model: str) -> int: ...


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def _bare(value: Any) -> Any:
    """``value`` without ``cache_control`` marks (moving a breakpoint does not change the prefix)
    and with text ``content`` / ``system`` as a list of one text block (the same prompt)."""
    if isinstance(value, Mapping):
        return {
            k: [{"type": "text", "text": v}] if k in _TEXT_KEYS and isinstance(v, str) else _bare(v)
            for k, v in value.items()
            if k != "cache_control"
        }
    if isinstance(value, list):
        return [_bare(v) for v in value]
    return value


def _canonical(value: Any, breakpoints: bool) -> bytes:
    return msgspec.json.encode(_bare(value) if breakpoints else value, order="sorted")


def _has_breakpoint(value: Any) -> bool:
    if isinstance(value, Mapping):
        if value.get("cache_control") is not None:
            return True
        return any(_has_breakpoint(v) for k, v in value.items() if k in ("content",))
    if isinstance(value, list):
        return any(_has_breakpoint(v) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One raw prompt: ``chain[i]`` names units 0..i, ``ends[i]`` is the tokens up to the end
    of unit i (counted only when an estimate needs them: :func:`counted`), ``breakpoints`` the
    unit indexes a cache breakpoint ends (Anthropic); ``units`` the parts themselves, kept
    only until counted (never in the cache)."""

    chain: tuple[bytes, ...]
    ends: tuple[int, ...] = ()
    breakpoints: tuple[int, ...] = ()
    units: tuple[Any, ...] = ()

    @property
    def tokens(self) -> int:
        """All the prompt's tokens (as far as the units count them)."""
        return self.ends[-1] if self.ends else 0

    def shared_units(self, other: Fingerprint) -> int:
        """How many leading units the two prompts share."""
        n = 0
        for a, b in zip(self.chain, other.chain, strict=False):
            if a != b:
                break
            n += 1
        return n


def fingerprint(adapter: _Counter, body: Mapping[str, Any], model: str) -> Fingerprint:
    """The fingerprint of ``body`` (a raw request of ``adapter``'s protocol) for ``model``:
    hashes only (no tokenizer), the units kept for :func:`counted`."""
    key = adapter.turns_key
    turns = body.get(key)
    if isinstance(turns, str):  # Responses: ``input`` as one user text
        turns = [{"role": "user", "content": turns}]
    turns = turns if isinstance(turns, list) else []
    header = {k: body[k] for k in _HEADER_KEYS if body.get(k)}
    marked = adapter.protocol in _BREAKPOINTS
    prev = _digest(f"{adapter.protocol}\0{model}".encode())
    chain: list[bytes] = []
    units: list[Any] = []
    marks: list[int] = []
    if header:
        prev = _digest(prev + _canonical(header, marked))
        chain.append(prev)
        units.append({**header, key: []})
        if _has_breakpoint(header.get("tools")) or _has_breakpoint(header.get("system")):
            marks.append(0)
    for turn in turns:
        prev = _digest(prev + _canonical(turn, marked))
        chain.append(prev)
        units.append({key: [turn]})
        if _has_breakpoint(turn):
            marks.append(len(chain) - 1)
    if body.get("cache_control") is not None and chain:  # Anthropic's automatic caching
        marks.append(len(chain) - 1)
    if not marked:
        marks = []
    return Fingerprint(tuple(chain), (), tuple(sorted(set(marks))), tuple(units))


def counted(adapter: _Counter, fp: Fingerprint, model: str) -> Fingerprint:
    """``fp`` with its token ``ends`` (counted with the adapter's own, cached, counter)."""
    if fp.ends or not fp.units:
        return fp
    empty = adapter.count_prompt({adapter.turns_key: []}, model)
    ends: list[int] = []
    total = 0
    for unit in fp.units:
        total += max(0, adapter.count_prompt(unit, model) - empty)
        ends.append(total)
    return Fingerprint(fp.chain, tuple(ends), fp.breakpoints, fp.units)


@dataclass(frozen=True, slots=True)
class BaselineEstimate:
    """What the provider would have done with the raw prompt's cache: tokens read, written."""

    cached: int
    written: int = 0


def estimate(protocol: str, current: Fingerprint, previous: Fingerprint | None) -> BaselineEstimate:
    """The raw prompt's cache reads (and Anthropic writes) given the session's previous raw
    prompt (see the module docstring for the rule per protocol)."""
    shared = current.shared_units(previous) if previous is not None else 0
    if protocol in _BREAKPOINTS:
        if not current.breakpoints:
            return BaselineEstimate(0)
        read = 0
        if previous is not None:
            reach = current.breakpoints[-1]
            for i in previous.breakpoints:
                if i < shared and i <= reach and current.ends[i] >= MIN_CACHED_TOKENS:
                    read = max(read, current.ends[i])
        last = current.ends[current.breakpoints[-1]]
        written = last - read if last >= MIN_CACHED_TOKENS else 0
        return BaselineEstimate(read, max(0, written))
    if shared == 0 or current.tokens < MIN_CACHED_TOKENS:
        return BaselineEstimate(0)
    prefix = current.ends[shared - 1] // BLOCK_TOKENS * BLOCK_TOKENS
    return BaselineEstimate(prefix if prefix >= MIN_CACHED_TOKENS else 0)


def session_key(tenant: str, session: str | None) -> str:
    """The key of a session's fingerprint (as :func:`proxy.toolloop.scope` keys stored things)."""
    raw = f"{tenant}\0{session or '-'}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


class BaselineCache:
    """Each session's latest raw-prompt fingerprint, for ``ttl_s`` after it was seen; at most
    ``max_sessions`` (least recently used go first). Thread-safe: the log writer's thread
    uses it."""

    def __init__(
        self, *, ttl_s: float = DEFAULT_TTL_S, max_sessions: int = 10_000, clock: Any = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, Fingerprint]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def swap(self, key: str, current: Fingerprint) -> Fingerprint | None:
        """Remember ``current`` for ``key``; the live fingerprint it replaces, if any."""
        now = self._clock()
        kept = Fingerprint(current.chain, (), current.breakpoints)  # hashes only: small
        with self._lock:
            old = self._data.pop(key, None)
            self._data[key] = (now, kept)
            while len(self._data) > self.max_sessions:
                self._data.popitem(last=False)
        if old is None or now - old[0] > self.ttl_s:
            return None
        return old[1]

    def observe(
        self,
        tenant: str,
        session: str | None,
        adapter: _Counter,
        body: Mapping[str, Any],
        model: str,
        *,
        changed: bool = True,
    ) -> BaselineEstimate | None:
        """Fingerprint the raw ``body``, compare it with the session's previous one, keep it.
        A request nocp did not change needs no estimate (its baseline is what was billed):
        None, and no token is counted."""
        current = fingerprint(adapter, body, model)
        previous = self.swap(session_key(tenant, session), current)
        if not changed:
            return None
        return estimate(adapter.protocol, counted(adapter, current, model), previous)
