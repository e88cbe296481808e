"""Real agent traces as benchmark scenarios: SWE-agent trajectories and BFCL multi-turn tasks.

- **SWE-agent** (``$NOCP_EVAL_DATA/swe-agent/*.traj``, default ``../shared/eval-data``): each
  file's ``history`` is the OpenAI-style message list the agent sent. Files whose assistant
  turns call tools (``tool_calls`` + ``role: "tool"`` results) form ``swe-agent-fc``; the
  others, where command output comes back as ``role: "user"`` messages, form
  ``swe-agent-text`` (nocp recognises that output by its structure and compresses it like a
  tool output, see :mod:`proxy.stages.observations`).
- **BFCL** (the ``bfcl-eval`` package's data, installed without its dependencies): entries of
  the ``multi_turn_base`` and ``multi_turn_long_context`` sets, evenly spaced over each set.
  Each entry's user turns, its ground-truth calls (one assistant message per call, with the
  arguments mapped onto the function's parameter names) and the results of running those calls
  on the package's own pure-Python simulators; each user turn ends with a short assistant
  acknowledgement (BFCL records no assistant text, so that one sentence is ours). The
  function documents become the request's ``tools``.

Request k of a conversation is every message before its k-th assistant turn, answered by
that turn, exactly as for the seed scenarios.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from proxy.bench._common import checkout
from proxy.bench.scenarios import Conversation, Message, Scenario, tool_call

__all__ = ["bfcl_data_dir", "bfcl_scenarios", "eval_data_root", "real_traces", "swe_agent_scenarios"]

BFCL_SIM: Final = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
BFCL_CLASSES: Final = {
    "GorillaFileSystem": "gorilla_file_system",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
    "MathAPI": "math_api",
}
_BFCL_SYSTEM: Final = (
    "You are an assistant that completes the user's requests by calling the available functions. "
    "Call one function at a time, use the results of earlier calls, and reply briefly when the "
    "request is done."
)
_TYPES: Final = {"dict": "object", "float": "number", "tuple": "array", "list": "array"}


def eval_data_root(repo: Path | None = None) -> Path:
    """``$NOCP_EVAL_DATA``, else ``../shared/eval-data`` beside the checkout (or the cwd)."""
    env = os.environ.get("NOCP_EVAL_DATA")
    if env:
        return Path(env)
    base = repo if repo is not None else Path.cwd()
    return base.parent / "shared" / "eval-data"


# ------------------------------------------------------------------------------ SWE-agent


def _clean(msg: Mapping[str, Any]) -> Message:
    """The fields a client would send: role, content, tool calls, tool call id."""
    role = str(msg.get("role"))
    out: Message = {"role": role, "content": msg.get("content")}
    if role == "assistant" and msg.get("tool_calls"):
        out["tool_calls"] = [
            {"id": c.get("id"), "type": "function", "function": dict(c.get("function") or {})}
            for c in msg["tool_calls"]
        ]
    if role == "tool":
        ids = msg.get("tool_call_ids") or [msg.get("tool_call_id")]
        out["tool_call_id"] = ids[0]
    if out["content"] is None and role != "assistant":
        out["content"] = ""
    return out


def swe_agent_scenarios(root: Path, *, limit: int | None = None) -> list[Scenario]:
    """``swe-agent-fc`` and ``swe-agent-text`` from the trajectories under ``root/swe-agent``;
    ``limit`` keeps the first files of each (by name)."""
    fc: list[Conversation] = []
    text: list[Conversation] = []
    for path in sorted((root / "swe-agent").glob("*.traj")):
        history = json.loads(path.read_text(encoding="utf-8")).get("history") or []
        messages = tuple(_clean(m) for m in history if isinstance(m, dict) and m.get("role"))
        conv = Conversation(f"swe-agent/{path.stem}", messages)
        if not conv.turns():
            continue
        (fc if any(m.get("tool_calls") for m in messages) else text).append(conv)
    out: list[Scenario] = []
    for name, convs, title, note in (
        (
            "swe-agent-fc",
            fc,
            "SWE-agent trajectories, function calling",
            "tool outputs arrive as role: tool messages",
        ),
        (
            "swe-agent-text",
            text,
            "SWE-agent trajectories, text actions",
            "command output arrives as role: user messages, recognised as observations",
        ),
    ):
        picked = convs[:limit] if limit is not None else convs
        if picked:
            out.append(
                Scenario(
                    name=name,
                    family="swe-agent",
                    kind="trace",
                    title=f"{title} ({len(picked)})",
                    conversations=tuple(picked),
                    params={"files": len(picked)},
                    notes=(note,),
                )
            )
    return out


# ------------------------------------------------------------------------------ BFCL


def bfcl_data_dir() -> Path | None:
    """``bfcl_eval/data`` of the installed package (found without importing it), or None."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if data.is_dir() else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _schema(node: Any) -> Any:
    """A BFCL parameter schema in JSON-Schema terms (``dict`` -> ``object``, ...)."""
    if isinstance(node, dict):
        out = {k: _schema(v) for k, v in node.items()}
        t = out.get("type")
        if isinstance(t, str):
            if t in _TYPES:
                out["type"] = _TYPES[t]
            elif t == "any":
                del out["type"]
        return out
    if isinstance(node, list):
        return [_schema(x) for x in node]
    return node


def _tools(data: Path, classes: Sequence[str]) -> tuple[list[Message], dict[str, list[str]]]:
    """OpenAI ``tools`` for the involved classes, and each function's parameter order."""
    tools: list[Message] = []
    params: dict[str, list[str]] = {}
    for cls in classes:
        for doc in read_jsonl(data / "multi_turn_func_doc" / f"{BFCL_CLASSES[cls]}.json"):
            parameters = _schema(doc.get("parameters") or {"type": "object", "properties": {}})
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": doc["name"],
                        "description": doc.get("description", ""),
                        "parameters": parameters,
                    },
                }
            )
            params[doc["name"]] = list((parameters.get("properties") or {}).keys())
    return tools, params


def _parse_call(call: str, order: Mapping[str, list[str]]) -> tuple[str, dict[str, Any]]:
    """``mv(source='a', destination='b')`` -> ("mv", {...}); positional arguments get the
    function's parameter names in order (literal arguments only, no ``eval``)."""
    node = ast.parse(call.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"unsupported call {call!r}")
    name = node.func.id
    names = order.get(name, [])
    args: dict[str, Any] = {}
    for i, a in enumerate(node.args):
        args[names[i] if i < len(names) else f"arg{i}"] = ast.literal_eval(a)
    for kw in node.keywords:
        if kw.arg:
            args[kw.arg] = ast.literal_eval(kw.value)
    return name, args


def _result_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)


def _bfcl_conversation(
    entry: Mapping[str, Any], truth: Sequence[Sequence[str]], data: Path, long_context: bool
) -> Conversation:
    classes: list[str] = list(entry["involved_classes"])
    tools, order = _tools(data, classes)
    methods: dict[str, Any] = {}
    state = random.getstate()
    random.seed(0)  # the simulators draw ids from the global `random`
    try:
        for cls in classes:
            module = importlib.import_module(f"{BFCL_SIM}.{BFCL_CLASSES[cls]}")
            instance = getattr(module, cls)()
            if cls != "MathAPI":  # stateless; every other simulator needs its scenario loaded
                config = json.loads(json.dumps(entry.get("initial_config", {}).get(cls, {})))
                instance._load_scenario(config, long_context=long_context)
            for name in dir(instance):
                if not name.startswith("_") and callable(getattr(instance, name)):
                    methods[name] = getattr(instance, name)
        rng = random.Random(f"bfcl:{entry['id']}")
        messages: list[Message] = [{"role": "system", "content": _BFCL_SYSTEM}]
        for turn, users in enumerate(entry["question"]):
            messages += [
                {"role": "user", "content": m["content"]}
                for m in users
                if isinstance(m, dict) and m.get("role") == "user"
            ]
            done: list[str] = []
            for call in truth[turn] if turn < len(truth) else ():
                name, args = _parse_call(call, order)
                call_id, call_msg = tool_call(rng, name, args, "0123456789abcdefghijklmnopqrstuvwxyz")
                messages.append(call_msg)
                fn = methods.get(name)
                try:
                    output = _result_text(fn(**args)) if fn is not None else f"Error: unknown function {name}"
                except Exception as exc:  # the simulators report errors as text too
                    output = f"Error during execution: {exc}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
                done.append(name)
            if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
                summary = ", ".join(dict.fromkeys(done)) if done else "nothing to call"
                messages.append({"role": "assistant", "content": f"Done ({summary})."})
    finally:
        random.setstate(state)
    return Conversation(f"bfcl/{entry['id']}", tuple(messages), tuple(tools))


def _evenly(items: Sequence[Any], n: int | None) -> list[Any]:
    if n is None or n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def bfcl_scenarios(data: Path, *, per_set: int | None, notes: list[str]) -> Iterator[Scenario]:
    """``bfcl-base`` and ``bfcl-long-context``: ``per_set`` entries of each set (evenly spaced);
    entries whose simulators cannot be imported are skipped with a line in ``notes``."""
    answers = data / "possible_answer"
    for category, name, long_context in (
        ("multi_turn_base", "bfcl-base", False),
        ("multi_turn_long_context", "bfcl-long-context", True),
    ):
        entries = read_jsonl(data / f"BFCL_v4_{category}.json")
        truth = {e["id"]: e["ground_truth"] for e in read_jsonl(answers / f"BFCL_v4_{category}.json")}
        usable: list[dict[str, Any]] = []
        for entry in entries:
            if entry["id"] not in truth:
                continue
            missing = [c for c in entry["involved_classes"] if c not in BFCL_CLASSES]
            if missing:
                notes.append(f"bfcl {entry['id']}: no simulator for {', '.join(missing)}")
                continue
            usable.append(entry)
        convs: list[Conversation] = []
        skipped: dict[str, int] = {}
        for entry in _evenly(usable, per_set):
            try:
                convs.append(_bfcl_conversation(entry, truth[entry["id"]], data, long_context))
            except ImportError as exc:
                skipped[str(exc)] = skipped.get(str(exc), 0) + 1
        for reason, count in skipped.items():
            notes.append(f"{name}: {count} entries skipped: {reason}")
        if convs:
            yield Scenario(
                name=name,
                family="bfcl",
                kind="trace",
                title=f"BFCL v4 {category.replace('_', ' ')} ({len(convs)})",
                conversations=tuple(convs),
                params={"entries": len(convs), "set": category},
                notes=("assistant acknowledgements closing each user turn are synthetic",),
            )


def real_traces(
    notes: list[str], *, swe_limit: int | None = None, bfcl_per_set: int | None = None
) -> list[Scenario]:
    """The real traces: the SWE-agent trajectories (``swe_limit`` files of each kind) and the BFCL
    multi-turn sets (``bfcl_per_set`` entries each); what is missing is noted in ``notes``."""
    scenarios: list[Scenario] = []
    root = eval_data_root(checkout())
    if (root / "swe-agent").is_dir():
        scenarios += swe_agent_scenarios(root, limit=swe_limit)
    else:
        notes.append(f"SWE-agent traces skipped: {root / 'swe-agent'} not found (set NOCP_EVAL_DATA)")
    data = bfcl_data_dir()
    if data is None:
        notes.append("BFCL traces skipped: the bfcl-eval package is not installed")
    else:
        scenarios += bfcl_scenarios(data, per_set=bfcl_per_set, notes=notes)
    return scenarios
