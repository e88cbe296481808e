"""The wire protocols a benchmark request is replayed through, and the converters to them.

A scenario is recorded in chat form (:meth:`proxy.bench.scenarios.Conversation.body`: OpenAI
chat-completions messages, system included, ``tool_calls`` / ``role: "tool"``, tools in chat's
``function`` format, ``response_format``). Each :class:`Protocol` turns that request into its own
body, deterministically (the same request gives the same bytes):

- ``chat``: ``POST /v1/chat/completions``, the request as it is.
- ``responses``: ``POST /v1/responses`` (:func:`to_responses`): the leading system messages
  become ``instructions``, every other message a ``message`` item (``input_text`` parts, or
  ``output_text`` for the assistant), each tool call a ``function_call`` item after its
  message, each tool message a ``function_call_output``; tools ``{"type": "function", "name",
  ...}``; ``response_format`` becomes ``text.format``; ``store: false`` (the client resends the
  whole conversation, as Codex does).
- ``messages``: ``POST /v1/messages`` (:func:`to_messages`): ``system`` from the leading system
  messages, user / assistant messages of content blocks, tool calls as ``tool_use`` blocks and
  tool messages as ``tool_result`` blocks, consecutive messages of one role merged (so the
  results of one turn's calls form one user message), tools with ``input_schema``,
  ``max_tokens``. No ``cache_control`` anywhere: what a client that never sets breakpoints
  sends (nocp's ``anthropic.auto_cache`` adds them).
- ``messages-own-cache``: the same with the client's own breakpoints, the Claude Code pattern:
  the system prompt (as text blocks) and the last block of the last message are marked, so
  nocp adds none.

Messages has no ``response_format``: it is left out (the answer is the recorded one anyway). A
conversation whose assistant turns call tools but that carries no tool definitions (the
SWE-agent trajectories did not record them) gets a minimal definition per called name, in order
of first call over the whole conversation, since Anthropic refuses ``tool_use`` blocks without
tools.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_ANTHROPIC_MODEL",
    "DEFAULT_PROTOCOLS",
    "MAX_TOKENS",
    "PROTOCOLS",
    "Protocol",
    "called_tools",
    "expand",
    "leaf_text",
    "sent_view",
    "to_messages",
    "to_responses",
]

Family = Literal["openai", "anthropic"]
ANTHROPIC_VERSION: Final = "2023-06-01"
DEFAULT_ANTHROPIC_MODEL: Final = "claude-sonnet-4-5"  # what Messages replays send and are priced at
MAX_TOKENS: Final = 4096
EMPTY_TEXT: Final = "(no content)"  # Anthropic refuses empty text blocks (Claude Code's filler)
_TOOL_ID: Final = re.compile(r"[^a-zA-Z0-9_-]")
_CACHE: Final = {"type": "ephemeral"}

Message = dict[str, Any]


def _text_of(content: Any) -> str:
    """The text of a chat content (a string, ``None`` or a list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise ValueError(f"unsupported chat content part: {part!r}")
            out.append(str(part.get("text", "")))
        return "".join(out)
    raise ValueError(f"unsupported chat content: {content!r}")


def _leading_system(messages: Sequence[Message]) -> tuple[list[str], list[Message]]:
    """(texts of the system messages the chat starts with, the other messages)."""
    k = 0
    while k < len(messages) and messages[k].get("role") == "system":
        k += 1
    return [_text_of(m.get("content")) for m in messages[:k]], list(messages[k:])


# ------------------------------------------------------------------------------ Responses


def _responses_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    fn = tool.get("function")
    if tool.get("type") != "function" or not isinstance(fn, Mapping):
        raise ValueError(f"unsupported chat tool: {tool!r}")
    out: dict[str, Any] = {"type": "function", "name": fn["name"]}
    if "description" in fn:
        out["description"] = fn["description"]
    out["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
    # Chat functions are not strict unless they say so; Responses functions are by default.
    out["strict"] = bool(fn.get("strict", False))
    return out


def _text_format(response_format: Mapping[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        out: dict[str, Any] = {"type": "json_schema", "name": spec.get("name", "response")}
        for key in ("description", "schema", "strict"):
            if key in spec:
                out[key] = spec[key]
        return out
    if kind in ("json_object", "text"):
        return {"type": kind}
    raise ValueError(f"unsupported response_format: {response_format!r}")


def to_responses(body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat-completions request as the Responses request that asks the same (see the module
    docstring)."""
    system, rest = _leading_system(body.get("messages") or [])
    items: list[dict[str, Any]] = []
    for msg in rest:
        role = msg.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": str(msg.get("tool_call_id")),
                    "output": _text_of(msg.get("content")),
                }
            )
            continue
        if role not in ("user", "assistant", "system", "developer"):
            raise ValueError(f"unsupported chat role: {role!r}")
        text = _text_of(msg.get("content"))
        calls = msg.get("tool_calls") or []
        if role != "assistant" or text or not calls:
            part = "output_text" if role == "assistant" else "input_text"
            items.append({"type": "message", "role": role, "content": [{"type": part, "text": text}]})
        for call in calls:
            fn = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": str(call.get("id")),
                    "name": str(fn.get("name", "")),
                    "arguments": str(fn.get("arguments") or ""),
                }
            )
    out: dict[str, Any] = {"model": body["model"]}
    if system:
        out["instructions"] = "\n\n".join(system)
    out["input"] = items
    if body.get("tools"):
        out["tools"] = [_responses_tool(t) for t in body["tools"]]
    if body.get("response_format") is not None:
        out["text"] = {"format": _text_format(body["response_format"])}
    out["store"] = False
    return out


# ------------------------------------------------------------------------------ Messages


def _tool_id(raw: Any) -> str:
    """A chat tool-call id as Anthropic accepts it (``[a-zA-Z0-9_-]+``)."""
    return _TOOL_ID.sub("_", str(raw)) or "toolu_"


def _tool_input(arguments: Any) -> dict[str, Any]:
    """Chat's JSON-text arguments as a ``tool_use`` input object."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def called_tools(messages: Iterable[Message]) -> list[str]:
    """The names of the tools the assistant turns call, in order of first call."""
    names: dict[str, None] = {}
    for msg in messages:
        for call in msg.get("tool_calls") or ():
            name = (call.get("function") or {}).get("name")
            if isinstance(name, str):
                names.setdefault(name, None)
    return list(names)


def _anthropic_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    fn = tool.get("function")
    if tool.get("type") != "function" or not isinstance(fn, Mapping):
        raise ValueError(f"unsupported chat tool: {tool!r}")
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _blocks(msg: Message) -> tuple[str, list[dict[str, Any]]]:
    """(Anthropic role, content blocks) of one chat message."""
    role = msg.get("role")
    if role == "tool":
        result = {
            "type": "tool_result",
            "tool_use_id": _tool_id(msg.get("tool_call_id")),
            "content": _text_of(msg.get("content")),
        }
        return "user", [result]
    text = _text_of(msg.get("content"))
    if role == "assistant":
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") or {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": _tool_id(call.get("id")),
                    "name": str(fn.get("name", "")),
                    "input": _tool_input(fn.get("arguments")),
                }
            )
        return "assistant", blocks
    if role in ("user", "system", "developer"):  # a later system message is user text here
        return "user", [{"type": "text", "text": text}] if text else []
    raise ValueError(f"unsupported chat role: {role!r}")


def to_messages(
    body: Mapping[str, Any], *, own_cache: bool = False, tool_names: Sequence[str] = ()
) -> dict[str, Any]:
    """A chat-completions request as the Anthropic Messages request that asks the same (see the
    module docstring). ``own_cache``: with the client's breakpoints (system, last message);
    ``tool_names``: tools to declare when the request has no tool definitions."""
    system, rest = _leading_system(body.get("messages") or [])
    messages: list[dict[str, Any]] = []
    for msg in rest:
        role, blocks = _blocks(msg)
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})
    for msg in messages:
        if not msg["content"]:
            msg["content"] = [{"type": "text", "text": EMPTY_TEXT}]
    out: dict[str, Any] = {"model": body["model"], "max_tokens": MAX_TOKENS}
    if system:
        if own_cache:
            texts = [t for t in system if t] or [EMPTY_TEXT]
            blocks = [{"type": "text", "text": t} for t in texts]
            blocks[-1]["cache_control"] = dict(_CACHE)
            out["system"] = blocks
        else:
            out["system"] = "\n\n".join(system)
    if own_cache and messages:
        last = messages[-1]["content"]
        last[-1] = {**last[-1], "cache_control": dict(_CACHE)}
    out["messages"] = messages
    if body.get("tools"):
        out["tools"] = [_anthropic_tool(t) for t in body["tools"]]
    elif tool_names:
        out["tools"] = [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in tool_names]
    return out


# ------------------------------------------------------------------------------ protocols


@dataclass(frozen=True, slots=True)
class Protocol:
    """One way a scenario is replayed: the path, the client's headers, how the body is made."""

    name: str
    path: str
    family: Family
    title: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        """What a scenario's name gets in this protocol's rows (``""`` for chat)."""
        return "" if self.name == "chat" else f"@{self.name}"

    def body(self, chat: Mapping[str, Any], *, tool_names: Sequence[str] = ()) -> dict[str, Any]:
        """The request of this protocol for the chat-form request ``chat`` (``tool_names``: the
        tools a Messages request declares when ``chat`` has none)."""
        if self.name == "chat":
            return dict(chat)
        if self.name == "responses":
            return to_responses(chat)
        return to_messages(chat, own_cache=self.name == "messages-own-cache", tool_names=tool_names)


CLIENT_KEY: Final = "sk-bench-not-a-real-key-0000000000000000"
_OPENAI_HEADERS: Final = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "OpenAI/Python 1.99.0",
    "Authorization": f"Bearer {CLIENT_KEY}",
}
_ANTHROPIC_HEADERS: Final = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "Anthropic/Python 0.75.0",
    "x-api-key": CLIENT_KEY,
    "anthropic-version": ANTHROPIC_VERSION,
}
PROTOCOLS: Final[dict[str, Protocol]] = {
    "chat": Protocol("chat", "/v1/chat/completions", "openai", "OpenAI Chat Completions", _OPENAI_HEADERS),
    "responses": Protocol("responses", "/v1/responses", "openai", "OpenAI Responses", _OPENAI_HEADERS),
    "messages": Protocol(
        "messages",
        "/v1/messages",
        "anthropic",
        "Anthropic Messages, client sets no breakpoints",
        _ANTHROPIC_HEADERS,
    ),
    "messages-own-cache": Protocol(
        "messages-own-cache",
        "/v1/messages",
        "anthropic",
        "Anthropic Messages, client's own breakpoints (system, last message)",
        _ANTHROPIC_HEADERS,
    ),
}
DEFAULT_PROTOCOLS: Final = ("chat", "responses", "messages")


def expand(names: Iterable[str]) -> list[str]:
    """Protocol names as given on the command line, in :data:`PROTOCOLS` order: ``messages``
    brings ``messages-own-cache`` with it. Raises ``ValueError`` for an unknown name."""
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")
        wanted.add(name)
        if name == "messages":
            wanted.add("messages-own-cache")
    return [p for p in PROTOCOLS if p in wanted]


# ------------------------------------------------------------------------------ what was sent


def _strip_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_control(v) for v in value]
    return value


def sent_view(protocol: str, body: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(tools, prompt items in order) of a request body as sent upstream, ``cache_control``
    left out (a moving breakpoint is not a change of the prompt): chat's messages; Responses'
    instructions (as a system item) then input items; Messages' system (as a system item) then
    messages."""
    tools = list(body.get("tools") or [])
    if protocol == "chat":
        return tools, list(body.get("messages") or [])
    if protocol == "responses":
        head = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
        raw = body.get("input")
        items = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
        return tools, head + items
    head = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    return _strip_cache_control(tools), _strip_cache_control(head + list(body.get("messages") or []))


def leaf_text(value: Any) -> str:
    """Every string value inside ``value`` (keys and ``cache_control`` left out), one per line:
    the text of a sent item whatever its protocol."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, Mapping):
            for k, x in v.items():
                if k != "cache_control":
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return "\n".join(out)
