"""Anthropic Messages (``POST /v1/messages``, ``/v1/messages/count_tokens``) as the fake upstream
speaks them: request checks, token billing with breakpoint prompt caching, thinking signatures,
and message / SSE event / error objects shaped like Anthropic's.

Token counts are a documented approximation (Claude's tokenizer is not public): ``o200k_base``
counts of each prompt block, in Anthropic's rendering order (tools, system, messages): a tool is
its compact JSON, text is its text, ``tool_use`` its name plus the JSON of its input,
``tool_result`` the text of its content, ``thinking`` its thinking text, a text ``document`` its
data; images, redacted thinking and framing are not counted. Output tokens are counted the same
way over the answer's blocks; ``max_tokens`` does not cut the answer.

Prompt caching follows Anthropic's rules (see :class:`BreakpointCache`): only prefixes ending at
a ``cache_control`` breakpoint are written, a prefix shorter than the model's minimum is never
cached, reads and writes are reported separately (writes per TTL), and entries expire after
their TTL (5 minutes, or 1 hour with ``"ttl": "1h"``) unless a read refreshes them.

Thinking: the signature of every ``thinking`` block the fake sends is an HMAC of its text under
a fake secret; a later request whose assistant turns carry a ``thinking`` block with any other
signature, or a ``redacted_thinking`` block whose data the fake never sent, is rejected with a
400, so a test proves a proxy passed them through unaltered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from compressors import tokens
from proxy.testing._common import dumps, dumps_str, reason, split_json, split_words, text_parts
from proxy.testing._script import FakeTurn

__all__ = [
    "BreakpointCache",
    "CacheUse",
    "PromptBlock",
    "answer_blocks",
    "error_body",
    "header_error",
    "input_tokens",
    "invalid_reason",
    "last_user_text",
    "message",
    "min_cacheable_tokens",
    "output_tokens",
    "prompt_blocks",
    "rejected_history",
    "signature_for",
    "stream_events",
    "usage",
]

ENCODING: Final = "o200k_base"
SERVICE_TIER: Final = "standard"
MAX_BREAKPOINTS: Final = 4
LOOKBACK_BLOCKS: Final = 20  # a breakpoint finds cache hits this many block boundaries back
TTL_SECONDS: Final = {"5m": 300.0, "1h": 3600.0}
DEFAULT_MIN_CACHEABLE: Final = 1024
# Minimum cacheable prefix per model, first matching prefix wins (Anthropic's table); any other
# Haiku 2048, anything else DEFAULT_MIN_CACHEABLE.
MIN_CACHEABLE: Final = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 2048),
)
THINKING_PREFIX: Final = "Let me think about: "
_SECRET: Final = b"nocp-fake-anthropic-thinking-secret"
_BLOCK_TYPES: Final = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)
_THINKING_TYPES: Final = ("thinking", "redacted_thinking")
_REQUIRED: Final[dict[str, tuple[tuple[str, type], ...]]] = {
    "text": (("text", str),),
    "image": (("source", Mapping),),
    "document": (("source", Mapping),),
    "tool_use": (("id", str), ("name", str), ("input", Mapping)),
    "tool_result": (("tool_use_id", str),),
    "thinking": (("thinking", str), ("signature", str)),
    "redacted_thinking": (("data", str),),
}
_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit. Please try again later."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


# ----------------------------------------------------------------------------- errors and checks


def error_body(status: int, message: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` as Anthropic sends."""
    kind, default = _ERRORS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", reason(status))
    )
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message or default}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def header_error(headers: Mapping[str, str]) -> tuple[int, str] | None:
    """(status, message) when the API key or the ``anthropic-version`` header is missing."""
    if not headers.get("x-api-key") and not headers.get("authorization"):
        return 401, "x-api-key header is required"
    if not headers.get("anthropic-version"):
        return 400, "anthropic-version: header is required"
    return None


def _cache_control_error(value: Any, where: str) -> str | None:
    if not isinstance(value, Mapping) or value.get("type") != "ephemeral":
        return f"{where}cache_control.type: Input should be 'ephemeral'"
    ttl = value.get("ttl")
    if ttl is not None and ttl not in TTL_SECONDS:
        return f"{where}cache_control.ttl: Input should be '5m' or '1h'"
    return None


def _block_error(block: Any, where: str) -> str | None:
    if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
        return f"{where}.type: Field required"
    for name, kind in _REQUIRED.get(block["type"], ()):
        if not isinstance(block.get(name), kind):
            return f"{where}.{name}: Field required"
    content = block.get("content")
    if block["type"] == "tool_result" and content is not None and not isinstance(content, str):
        if not isinstance(content, list):
            return f"{where}.content: Input should be a valid string or list"
        for k, part in enumerate(content):
            if (error := _block_error(part, f"{where}.content.{k}")) is not None:
                return error
    return None


def _cache_controls(payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(where, cache_control) of every breakpoint in prompt order, the top-level one last;
    ``where`` is the block's path with a trailing dot (``""`` for the top level)."""
    found: list[tuple[str, Any]] = []

    def scan(block: Any, where: str) -> None:
        if isinstance(block, Mapping):
            if "cache_control" in block and block["cache_control"] is not None:
                found.append((where + ".", block["cache_control"]))
            content = block.get("content")
            if isinstance(content, list):
                for k, part in enumerate(content):
                    scan(part, f"{where}.content.{k}")

    for i, tool in enumerate(_list(payload.get("tools"))):
        scan(tool, f"tools.{i}")
    for i, block in enumerate(_list(payload.get("system"))):
        scan(block, f"system.{i}")
    for i, msg in enumerate(_list(payload.get("messages"))):
        for j, block in enumerate(_list(msg.get("content") if isinstance(msg, Mapping) else None)):
            scan(block, f"messages.{i}.content.{j}")
    if payload.get("cache_control") is not None:
        found.append(("", payload["cache_control"]))
    return found


def invalid_reason(payload: Any, *, count_only: bool = False) -> str | None:
    """Why ``payload`` is not a Messages request Anthropic would take (``count_only``: a
    ``count_tokens`` request, which has no ``max_tokens``), or ``None``."""
    if not isinstance(payload, Mapping):
        return "There was an error parsing the body of your request: it must be a JSON object."
    if not isinstance(payload.get("model"), str):
        return "model: Field required"
    max_tokens = payload.get("max_tokens")
    if not count_only:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: Field required"
        if max_tokens < 1:
            return "max_tokens: Input should be greater than or equal to 1"
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or msg.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = msg.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"messages.{i}.content: Input should be a valid string or list"
        for j, block in enumerate(content):
            if (error := _block_error(block, f"messages.{i}.content.{j}")) is not None:
                return error
    system = payload.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            return "system: Input should be a valid string or list"
        for j, block in enumerate(system):
            if not isinstance(block, Mapping) or block.get("type") != "text":
                return f"system.{j}.type: Input should be 'text'"
            if not isinstance(block.get("text"), str):
                return f"system.{j}.text: Field required"
    tools = payload.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
                return f"tools.{i}.name: Field required"
    choice = payload.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, Mapping) or choice.get("type") not in ("auto", "any", "tool", "none"):
            return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            return "tool_choice.tool.name: Field required"
    if "stream" in payload and not isinstance(payload["stream"], bool):
        return "stream: Input should be a valid boolean"
    metadata = payload.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        return "metadata: Input should be a valid dictionary"
    if (error := _thinking_error(payload, count_only)) is not None:
        return error
    return _breakpoints_error(payload)


def _thinking_error(payload: Mapping[str, Any], count_only: bool) -> str | None:
    thinking = payload.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, Mapping) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
        return "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            return "thinking.enabled.budget_tokens: Field required"
        if budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if not count_only and payload["max_tokens"] <= budget:
            return "`max_tokens` must be greater than `thinking.budget_tokens`."
    choice = payload.get("tool_choice")
    if thinking_enabled(payload) and isinstance(choice, Mapping) and choice.get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


def _breakpoints_error(payload: Mapping[str, Any]) -> str | None:
    found = _cache_controls(payload)
    for where, control in found:
        if (error := _cache_control_error(control, where)) is not None:
            return error
    if len(found) > MAX_BREAKPOINTS:
        return (
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(found)}."
        )
    seen_5m = False
    for _, control in found:
        if (control.get("ttl") or "5m") == "5m":
            seen_5m = True
        elif seen_5m:
            return (
                "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. "
                "Note that blocks are processed in the following order: `tools`, `system`, `messages`."
            )
    return None


def thinking_enabled(payload: Mapping[str, Any]) -> bool:
    thinking = payload.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive")


def signature_for(thinking: str) -> str:
    """The signature the fake gives a ``thinking`` block: an HMAC of its text."""
    mac = hmac.new(_SECRET, thinking.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.b64encode(b"\x12" + mac).decode("ascii")


def _tool_use_ids(msg: Mapping[str, Any]) -> list[str]:
    return [b["id"] for b in _list(msg.get("content")) if b.get("type") == "tool_use"]


def _tool_result_ids(msg: Mapping[str, Any]) -> list[tuple[int, str]]:
    return [
        (j, b["tool_use_id"])
        for j, b in enumerate(_list(msg.get("content")))
        if b.get("type") == "tool_result"
    ]


def rejected_history(payload: Mapping[str, Any], issued_redacted: Container[str]) -> str | None:
    """Why the conversation in a (well-formed) request is refused: an altered ``thinking`` block
    or ``redacted_thinking`` data the fake never sent, ``tool_use`` / ``tool_result`` blocks
    without their partner, or (thinking enabled) a final tool-use turn without its thinking."""
    messages: list[Mapping[str, Any]] = payload["messages"]
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        for j, block in enumerate(_list(msg.get("content"))):
            if block.get("type") == "thinking":
                if not hmac.compare_digest(block["signature"], signature_for(block["thinking"])):
                    return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
            elif block.get("type") == "redacted_thinking" and block["data"] not in issued_redacted:
                return f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block"
    for i, msg in enumerate(messages):
        previous = messages[i - 1] if i else None
        expected = _tool_use_ids(previous) if previous is not None and previous["role"] == "assistant" else []
        results = _tool_result_ids(msg) if msg["role"] == "user" else []
        for j, tool_use_id in results:
            if tool_use_id not in expected:
                return (
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block "
                    "in the previous message."
                )
        uses = _tool_use_ids(msg) if msg["role"] == "assistant" and i + 1 < len(messages) else []
        answered = {r for _, r in _tool_result_ids(messages[i + 1])} if uses else set()
        missing = [u for u in uses if u not in answered]
        if missing:
            return (
                f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message."
            )
    last = messages[-1]
    if thinking_enabled(payload) and len(messages) >= 2 and last["role"] == "user" and _tool_result_ids(last):
        final = messages[-2]
        first = _list(final.get("content"))[:1]
        found = first[0].get("type") if first else "nothing"
        if final["role"] == "assistant" and found not in _THINKING_TYPES:
            return (
                f"messages.{len(messages) - 2}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                f"but found `{found}`. When `thinking` is enabled, a final `assistant` message must start "
                "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
            )
    return None


# ----------------------------------------------------------------------------- prompt and billing


def _list(value: Any) -> list[Mapping[str, Any]]:
    """The mapping items of a content list; a plain string is one text block; else none."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _without_cache_control(block: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in block.items() if k != "cache_control"}
    content = out.get("content")
    if isinstance(content, list):
        out["content"] = [_without_cache_control(p) if isinstance(p, Mapping) else p for p in content]
    return out


def _block_text(block: Mapping[str, Any]) -> str:
    """The billed text of one prompt block (see the module docstring)."""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return str(block.get("name", "")) + dumps_str(block.get("input", {}))
    if kind == "tool_result":
        content = block.get("content")
        return content if isinstance(content, str) else "".join(text_parts(content))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    if kind == "document":
        source = block.get("source")
        if isinstance(source, Mapping) and source.get("type") == "text":
            return str(source.get("data", ""))
        if isinstance(source, Mapping) and source.get("type") == "content":
            return "".join(text_parts(source.get("content")))
        return ""
    if kind in ("image", "redacted_thinking"):
        return ""
    return dumps_str(_without_cache_control(block))


@dataclass(frozen=True, slots=True)
class PromptBlock:
    """One block of the rendered prompt: ``key`` names the whole prefix that ends with it,
    ``tokens`` are its own tokens, ``ttl`` (seconds) is set when it carries a breakpoint."""

    key: bytes
    tokens: int
    ttl: float | None


def _ttl(control: Any) -> float | None:
    if not isinstance(control, Mapping):
        return None
    return TTL_SECONDS.get(str(control.get("ttl") or "5m"), TTL_SECONDS["5m"])


def _nested_ttl(block: Mapping[str, Any]) -> float | None:
    """A breakpoint on the block, or on a block inside its content (e.g. a tool result's text)."""
    ttl = _ttl(block.get("cache_control"))
    if ttl is None:
        for part in _list(block.get("content")) if isinstance(block.get("content"), list) else ():
            ttl = _nested_ttl(part)
            if ttl is not None:
                break
    return ttl


def prompt_blocks(payload: Mapping[str, Any], namespace: str) -> list[PromptBlock]:
    """The prompt as Anthropic renders it: each tool, each system block, each message content
    block, in that order. A block's key chains over ``namespace`` (e.g. the model) and every
    block before it, so equal keys mean equal prefixes. The tool choice and thinking settings
    are part of every message block's prefix (changing them invalidates the message cache)."""
    prev = hashlib.blake2b(namespace.encode("utf-8"), digest_size=16).digest()
    out: list[PromptBlock] = []

    def add(item: Any, text: str, ttl: float | None) -> None:
        nonlocal prev
        prev = hashlib.blake2b(prev + dumps(item), digest_size=16).digest()
        out.append(PromptBlock(prev, tokens.count(text, ENCODING), ttl))

    for tool in _list(payload.get("tools")):
        bare = _without_cache_control(tool)
        add(["tool", bare], dumps_str(bare), _ttl(tool.get("cache_control")))
    for block in _list(payload.get("system")):
        add(["system", block.get("text")], str(block.get("text", "")), _ttl(block.get("cache_control")))
    prev = hashlib.blake2b(
        prev + dumps(["messages", payload.get("tool_choice"), payload.get("thinking")]), digest_size=16
    ).digest()
    for msg in _list(payload.get("messages")):
        for j, block in enumerate(_list(msg.get("content"))):
            add([msg.get("role"), j, _without_cache_control(block)], _block_text(block), _nested_ttl(block))
    if out and (top := _ttl(payload.get("cache_control"))) is not None:  # automatic caching
        last = out[-1]
        out[-1] = PromptBlock(last.key, last.tokens, last.ttl if last.ttl is not None else top)
    return out


def input_tokens(blocks: Sequence[PromptBlock]) -> int:
    """All the prompt's tokens (``count_tokens``' answer; = input + cache read + cache creation)."""
    return sum(b.tokens for b in blocks)


def min_cacheable_tokens(model: str, default: int = DEFAULT_MIN_CACHEABLE) -> int:
    """The shortest prefix ``model`` caches."""
    m = model.lower().rsplit("/", 1)[-1]
    for prefix, minimum in MIN_CACHEABLE:
        if m.startswith(prefix):
            return minimum
    return max(default, 2048) if "haiku" in m else default


@dataclass(frozen=True, slots=True)
class CacheUse:
    """How one request's prompt was billed: ``input`` (after the last cached breakpoint or
    uncached), ``read`` from the cache, ``created_5m`` / ``created_1h`` written to it."""

    input: int
    read: int = 0
    created_5m: int = 0
    created_1h: int = 0

    @property
    def created(self) -> int:
        return self.created_5m + self.created_1h

    @property
    def prompt(self) -> int:
        return self.input + self.read + self.created


class BreakpointCache:
    """Anthropic-style prompt caching, simulated.

    A request reads the longest prefix written earlier that it can find: from each of its
    breakpoints, Anthropic looks back up to ``LOOKBACK_BLOCKS`` block boundaries for a live
    entry. It then writes every breakpoint past that point whose prefix has at least the model's
    minimum tokens; the tokens from the read point to each written breakpoint are billed as
    cache creation under that breakpoint's TTL; the rest is ``input_tokens``. An entry lives for
    its TTL after it was written or last read. ``clock`` (seconds, default ``time.monotonic``)
    can be replaced to test expiry; the store is an LRU of at most ``max_entries`` prefixes.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_entries: int = 100_000) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # key -> (expiry, ttl)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def _alive(self, key: bytes, now: float) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry[0] <= now:
            del self._entries[key]
            return False
        return True

    def _put(self, key: bytes, ttl: float, now: float) -> None:
        self._entries[key] = (now + ttl, ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def bill(self, blocks: Sequence[PromptBlock], min_tokens: int) -> CacheUse:
        """Bill one request's prompt, reading and writing the cache as Anthropic would."""
        now = self.clock()
        ends: list[int] = []
        total = 0
        for b in blocks:
            total += b.tokens
            ends.append(total)
        breakpoints = [i for i, b in enumerate(blocks) if b.ttl is not None]
        read_at = -1
        for i in breakpoints:
            for j in range(i, max(-1, i - LOOKBACK_BLOCKS), -1):
                if j <= read_at:
                    break
                if self._alive(blocks[j].key, now):
                    read_at = j
                    break
        read = ends[read_at] if read_at >= 0 else 0
        if read_at >= 0:  # a read refreshes the entry's TTL
            self._put(blocks[read_at].key, self._entries[blocks[read_at].key][1], now)
        created_5m = created_1h = 0
        position = read
        for i in breakpoints:
            ttl = blocks[i].ttl
            if i <= read_at or ends[i] < min_tokens or ttl is None:
                continue
            if ttl == TTL_SECONDS["1h"]:
                created_1h += ends[i] - position
            else:
                created_5m += ends[i] - position
            position = ends[i]
            self._put(blocks[i].key, ttl, now)
        return CacheUse(total - position, read, created_5m, created_1h)


# ----------------------------------------------------------------------------- the answer


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            texts = [b["text"] for b in _list(msg.get("content")) if b.get("type") == "text" and "text" in b]
            if texts:
                return " ".join(str(t) for t in texts)
    return ""


def answer_blocks(turn: FakeTurn, *, thinking: str | None, issued_redacted: set[str]) -> list[dict[str, Any]]:
    """The answer's content blocks. A replayed Anthropic message is sent as recorded, except
    that its thinking blocks get the fake's signatures; otherwise text then ``tool_use`` blocks.
    With ``thinking`` (the request enabled it) the answer starts with a thinking block (a
    replayed one, or one with this text); without, thinking blocks are left out. Redacted
    thinking data sent is added to ``issued_redacted``."""
    blocks: list[dict[str, Any]] = []
    if turn.anthropic_content is not None:
        for block in turn.anthropic_content:
            kind = block.get("type")
            if kind == "thinking":
                text = str(block.get("thinking", ""))
                blocks.append({"type": "thinking", "thinking": text, "signature": signature_for(text)})
            elif kind == "redacted_thinking":
                blocks.append({"type": "redacted_thinking", "data": str(block.get("data", ""))})
            else:
                blocks.append(_without_cache_control(block))
    else:
        if turn.text:
            blocks.append({"type": "text", "text": turn.text})
        for call in turn.calls:
            args = call.args_object()
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": args if isinstance(args, dict) else {},
                }
            )
    if thinking is None:
        blocks = [b for b in blocks if b.get("type") not in _THINKING_TYPES]
    elif not blocks or blocks[0].get("type") not in _THINKING_TYPES:
        blocks.insert(0, {"type": "thinking", "thinking": thinking, "signature": signature_for(thinking)})
    issued_redacted.update(b["data"] for b in blocks if b.get("type") == "redacted_thinking")
    return blocks or [{"type": "text", "text": ""}]


def output_tokens(blocks: Sequence[Mapping[str, Any]]) -> int:
    return sum(tokens.count(t, ENCODING) for b in blocks if (t := _block_text(b)))


def _stop_reason(blocks: Sequence[Mapping[str, Any]]) -> str:
    return "tool_use" if any(b.get("type") == "tool_use" for b in blocks) else "end_turn"


def usage(use: CacheUse, output: int) -> dict[str, Any]:
    return {
        "input_tokens": use.input,
        "cache_creation_input_tokens": use.created,
        "cache_read_input_tokens": use.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": use.created_5m,
            "ephemeral_1h_input_tokens": use.created_1h,
        },
        "output_tokens": output,
        "service_tier": SERVICE_TIER,
    }


def message(
    blocks: Sequence[Mapping[str, Any]], *, mid: str, model: str, usage: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``message`` object (the non-streaming answer)."""
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [dict(b) for b in blocks],
        "stop_reason": _stop_reason(blocks),
        "stop_sequence": None,
        "usage": dict(usage),
    }


def _event(data: Mapping[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode("ascii") + b"\ndata: " + dumps(data) + b"\n\n"


def _block_events(block: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the ``content_block_start`` block, the deltas) that stream ``block``."""
    kind = block.get("type")
    if kind == "text":
        text = str(block.get("text", ""))
        deltas = [{"type": "text_delta", "text": w} for w in split_words(text)] if text else []
        return {**block, "text": ""}, deltas
    if kind == "thinking":
        text = str(block.get("thinking", ""))
        deltas = [{"type": "thinking_delta", "thinking": w} for w in split_words(text)] if text else []
        deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
        return {"type": "thinking", "thinking": "", "signature": ""}, deltas
    if kind == "tool_use":
        raw = dumps_str(block.get("input", {}))
        pieces = [""] + (split_json(raw) if raw != "{}" else [])
        return {**block, "input": {}}, [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    return dict(block), []  # redacted thinking and anything else arrive whole


def stream_events(
    blocks: Sequence[Mapping[str, Any]], *, mid: str, model: str, usage: Mapping[str, Any]
) -> list[bytes]:
    """The SSE events of a streamed message: ``message_start`` (empty content, the input usage),
    per block ``content_block_start`` / deltas (text and thinking a word at a time, then the
    signature; tool input as JSON pieces) / ``content_block_stop``, a ``ping`` after the first
    block starts, ``message_delta`` (stop reason, cumulative usage) and ``message_stop``."""
    start_usage = {**usage, "output_tokens": min(1, int(usage["output_tokens"]))}
    head = {**message([], mid=mid, model=model, usage=start_usage), "stop_reason": None}
    events = [_event({"type": "message_start", "message": head})]
    for index, block in enumerate(blocks):
        first, deltas = _block_events(block)
        events.append(_event({"type": "content_block_start", "index": index, "content_block": first}))
        if index == 0:
            events.append(_event({"type": "ping"}))
        events += [_event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        events.append(_event({"type": "content_block_stop", "index": index}))
    final_usage = {
        k: usage[k]
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
    }
    events.append(
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(blocks), "stop_sequence": None},
                "usage": final_usage,
            }
        )
    )
    events.append(_event({"type": "message_stop"}))
    return events
