"""Conversation summaries without an LLM, and the deterministic facts pass.

Both are pure functions of their input: the same turns give byte-identical text, which is
what lets a stored summary be reused and a provider's prompt cache keep working.

- :func:`extractive_summary` condenses a run of turns into one section, one line per turn:
  prose is cut to its informative sentences (those carrying numbers, names, first-person
  statements or hard tokens), an assistant turn keeps its first sentence and the commands it
  ran, a tool output keeps its first line, its error lines and its size.
- :func:`facts_pass` collects the hard facts of summarized turns (paths, URLs, ids, numbers,
  error codes via :mod:`compressors.hardtokens`; commands; error lines) and renders the ones a
  summary lost as a compact, verbatim list, to be appended to whatever a summarizer returned.
- :func:`render_transcript` is the plain transcript an LLM summarizer is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from compressors.hardtokens import hard_tokens, hard_tokens_by_kind

__all__ = [
    "FACTS_HEADER",
    "SUMMARY_HEADER",
    "TurnText",
    "extractive_summary",
    "facts_pass",
    "render_transcript",
]

SUMMARY_HEADER: Final = (
    "[nocp: earlier messages of this conversation were replaced by this summary to save context]"
)
FACTS_HEADER: Final = "Facts from the summarized messages (verbatim):"

# Hard-token kinds the facts pass keeps (identifiers are too many to list; see compressors.hardtokens).
FACT_KINDS: Final = ("error_code", "path", "url", "uuid", "id", "number")
_LABELS: Final = {
    "error_code": "error codes",
    "path": "paths",
    "url": "urls",
    "uuid": "ids",
    "id": "ids",
    "number": "numbers",
}
_LABEL_ORDER: Final = ("commands", "errors", "error codes", "paths", "urls", "ids", "numbers")

_MAX_LINE: Final = 240  # longest kept line / sentence, in characters
_MAX_COMMAND: Final = 200
_MAX_ARG: Final = 80  # per argument value of a rendered tool call
_MAX_ERRORS_PER_TURN: Final = 5
_MAX_ERROR_LINES: Final = 40  # over all turns of one facts pass
_MAX_FACTS: Final = 4000  # hard tokens listed by one facts pass, at most

_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_FIRST_PERSON: Final = re.compile(r"\b(?:I|I'm|I've|I'd|I'll|my|My|me|mine|we|We|our|Our|us)\b")
_PROPER: Final = re.compile(r"(?<=[\s,;(\"'])[A-Z][a-z]+(?:[ -][A-Z][a-z]+)*")
_DIGIT: Final = re.compile(r"\d")
_QUOTED: Final = re.compile(r"[\"\u201c\u2018`'][^\"\u201d\u2019`']{2,80}[\"\u201d\u2019`']")
_PLEASANTRY: Final = re.compile(
    r"^(?:hi|hey|hello|thanks|thank you|great|perfect|awesome|ok|okay|sure|cool|got it|sounds good)"
    r"\b[^.!?]{0,40}[.!?]*$",
    re.IGNORECASE,
)
_FENCE: Final = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
_COMMAND_TAG: Final = re.compile(r"<command>\s*(.*?)</command>", re.DOTALL)
_ERROR_LINE: Final = re.compile(
    r"\b(?:[A-Z]\w*(?:Error|Exception)|Traceback|FAILED|FAIL|ERROR|Error|error|fatal|panic"
    r"|failed|No such file|not found|command not found|Permission denied|Segmentation fault)\b"
)
_NUMBERED: Final = re.compile(r"\s*\d+:(?!\d)")  # a line of a numbered file listing (code, not an error)
_COMMAND_KEYS: Final = ("command", "cmd", "script", "code", "query")
_CODE_CHARS: Final = frozenset("{}()[];=<>|\\/_#$*")


@dataclass(frozen=True, slots=True)
class TurnText:
    """One message as summarizers see it.

    ``role`` is ``user``, ``assistant`` or ``tool`` (a tool result); ``calls`` are the tool
    calls of an assistant turn as ``(name, arguments text)``; ``tool_name`` names the tool a
    result came from.
    """

    index: int
    role: str
    text: str = ""
    calls: tuple[tuple[str, str], ...] = ()
    tool_name: str | None = None


def _clip(text: str, limit: int = _MAX_LINE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _sentences(text: str) -> list[str]:
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def _is_prose(text: str) -> bool:
    """True for running text (a chat message), False for code, listings, logs and tables."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return False
    letters = sum(c.isalpha() for c in chars)
    code = sum(c in _CODE_CHARS for c in chars)
    lines = [line for line in text.splitlines() if line.strip()]
    avg = sum(len(line) for line in lines) / len(lines)
    return letters / len(chars) >= 0.7 and code / len(chars) < 0.03 and avg >= 40


def _informative(sentence: str) -> bool:
    """A sentence worth keeping: it holds a number, a name, a quote, a hard token or a
    first-person statement (what the user said about themselves or their situation)."""
    if _PLEASANTRY.match(sentence):
        return False
    if _DIGIT.search(sentence) or _QUOTED.search(sentence) or _PROPER.search(sentence):
        return True
    if hard_tokens(sentence):
        return True
    return _FIRST_PERSON.search(sentence) is not None and not sentence.endswith("?")


def _condense_prose(text: str) -> str:
    kept = [_clip(s, 400) for s in _sentences(text) if _informative(s)]
    return " ".join(kept) if kept else _clip(_first_line(text))


def _command_of_call(name: str, args: str) -> str:
    """One line for a tool call: its ``command`` argument when it has one, else the name and
    ``key=value`` for each scalar argument (the first line of each value, decoded)."""
    try:
        value = json.loads(args) if args.strip() else {}
    except ValueError:
        value = None
    if isinstance(value, dict):
        for key in _COMMAND_KEYS:
            if isinstance(value.get(key), str) and value[key].strip():
                return _clip(_first_line(value[key]), _MAX_COMMAND)
        pairs = [
            f"{k}={_clip(_first_line(str(v)), _MAX_ARG)}"
            for k, v in value.items()
            if isinstance(v, str | int | float | bool)
        ]
        return _clip(" ".join([name, *pairs]), _MAX_COMMAND)
    return _clip(f"{name} {_first_line(args)}", _MAX_COMMAND)


def commands_of(turn: TurnText) -> list[str]:
    """The commands an assistant turn ran: tool calls (their ``command`` argument when they
    have one, else ``name(arguments)``), and the first line of each fenced or
    ``<command>`` block in its text. Each is one line, at most 200 characters."""
    if turn.role != "assistant":
        return []
    out = [_command_of_call(name, args) for name, args in turn.calls]
    for pattern in (_FENCE, _COMMAND_TAG):
        for m in pattern.finditer(turn.text):
            line = _first_line(m.group(1))
            if line:
                out.append(_clip(line, _MAX_COMMAND))
    return list(dict.fromkeys(out))


def error_lines(text: str, limit: int = _MAX_ERRORS_PER_TURN) -> list[str]:
    """Lines of ``text`` that report an error (exception names, ``Traceback``, ``FAILED``,
    ``No such file`` ...), stripped and clipped, first ``limit`` distinct ones. Lines of a
    numbered file listing (``1466:    raise ValueError(msg)``) are code, not errors."""
    out: dict[str, None] = {}
    for line in text.splitlines():
        if len(out) >= limit:
            break
        if _ERROR_LINE.search(line[:2000]) and not _NUMBERED.match(line):
            out.setdefault(_clip(line))
    return list(out)


def _text_without_commands(text: str) -> str:
    return _COMMAND_TAG.sub(" ", _FENCE.sub(" ", text))


def _summarize_turn(turn: TurnText) -> str:
    if turn.role == "assistant":
        prose = _text_without_commands(turn.text)
        sentences = _sentences(prose)
        head = _clip(sentences[0]) if sentences else ""
        cmds = commands_of(turn)
        parts = [head] if head else []
        parts.extend(f"ran `{c}`" for c in cmds)
        return f"[{turn.index}] assistant: " + ("; ".join(parts) if parts else "(no text)")
    if turn.role == "tool":
        text = turn.text
        lines = text.count("\n") + 1 if text else 0
        parts = [_clip(_first_line(text), 160)] if text.strip() else ["(empty)"]
        parts.extend(e for e in error_lines(text) if e != parts[0])
        name = f" {turn.tool_name}" if turn.tool_name else ""
        return f"[{turn.index}] tool{name} ({lines} lines): " + " | ".join(parts)
    text = turn.text
    if len(text) <= 300:
        body = _clip(text, 300)
    elif _is_prose(text):
        body = _condense_prose(text)
    else:
        lines = text.count("\n") + 1
        parts = [_clip(_first_line(text), 160), *error_lines(text)]
        body = f"({lines} lines) " + " | ".join(dict.fromkeys(parts))
    return f"[{turn.index}] {turn.role}: {body}"


def extractive_summary(turns: Sequence[TurnText]) -> str:
    """One summary section for ``turns`` (one line per turn); ``""`` for no turns.

    Pair it with :func:`facts_pass` for the verbatim facts the condensed lines dropped.
    """
    if not turns:
        return ""
    lines = [f"Messages {turns[0].index}-{turns[-1].index}:"]
    lines.extend(_summarize_turn(t) for t in turns)
    return "\n".join(lines)


def render_transcript(turns: Sequence[TurnText]) -> str:
    """The turns as a plain transcript (what an LLM summarizer reads)."""
    out: list[str] = []
    for t in turns:
        head = f"[{t.index}] {t.role}" + (f" ({t.tool_name})" if t.tool_name else "")
        out.append(f"{head}: {t.text}".rstrip())
        out.extend(f"    call {name}({args})" for name, args in t.calls)
    return "\n".join(out)


def _ordered(tokens: Iterable[str], text: str) -> list[str]:
    return sorted(tokens, key=lambda tok: (text.find(tok), tok))


def facts_of(turns: Sequence[TurnText], previous: str = "") -> dict[str, list[str]]:
    """The hard facts of ``turns`` (and of a ``previous`` summary), by label, in order of
    first appearance: commands, error lines, error codes, paths, urls, ids, numbers."""
    facts: dict[str, dict[str, None]] = {label: {} for label in _LABEL_ORDER}
    n_errors = 0
    texts: list[str] = [previous] if previous else []
    for t in turns:
        for cmd in commands_of(t):
            facts["commands"].setdefault(cmd)
        if t.role != "assistant" and n_errors < _MAX_ERROR_LINES:
            for line in error_lines(t.text):
                if line not in facts["errors"] and n_errors < _MAX_ERROR_LINES:
                    facts["errors"].setdefault(line)
                    n_errors += 1
        texts.append(t.text)
        texts.extend(args for _, args in t.calls)
    for text in texts:
        if not text:
            continue
        by_kind = hard_tokens_by_kind(text)
        for kind in FACT_KINDS:
            for tok in _ordered(by_kind[kind], text):
                facts[_LABELS[kind]].setdefault(tok)
    return {label: list(values) for label, values in facts.items()}


def facts_pass(turns: Sequence[TurnText], summary: str, previous: str = "") -> str:
    """The facts of ``turns`` (and ``previous``) that ``summary`` lost, as a compact list to
    append to it; ``""`` when it kept them all. Hard tokens count as kept when ``summary``
    holds the same hard token; commands and error lines when it holds them verbatim."""
    kept = hard_tokens(summary)
    missing: list[tuple[str, list[str]]] = []
    budget = _MAX_FACTS
    for label, values in facts_of(turns, previous).items():
        if label in ("commands", "errors"):
            lost = [v for v in values if v not in summary]
        else:
            lost = [v for v in values if v not in kept][: max(budget, 0)]
            budget -= len(lost)
        if lost:
            missing.append((label, lost))
    if not missing:
        return ""
    lines = [FACTS_HEADER]
    for label, values in missing:
        if label in ("commands", "errors"):
            lines.append(f"- {label}:")
            lines.extend(f"  - {v}" for v in values)
        else:
            lines.append(f"- {label}: " + " ".join(values))
    return "\n".join(lines)
