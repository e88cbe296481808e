"""Recognise command output that a text-mode agent sends back as a user message.

Agents such as SWE-agent (text mode), SWE-smith and mini-swe-agent do not use function calling:
the model writes its action as a block at the end of its message (```` ```bash ```` fence,
a bare fence, or ``<command>...</command>``), the agent runs it and sends what it printed as the
next ``user`` message. :func:`observation` decides, from structure alone, whether a user message
is such an *observation*; the tool-output stage then compresses it like a tool output, under the
``compression.text_observations`` policy.

The rule is conservative, both halves must hold:

1. **The message answers an action.** The assistant message right before it *ends* with one
   shell action block (nothing but whitespace after it): a fence whose language is empty,
   ``bash``, ``sh``, ``shell``, ``console`` or ``zsh``, or ``<command>...</command>``, whose
   first word looks like a command (not ``def``, ``class``, ``import``, ...).
2. **The message looks like command output.** Either it carries a text-mode agent's envelope
   (SWE-agent's ``(Current directory: ...)`` / ``bash-$`` footer or ``[File: ... lines total]``
   header, ``OBSERVATION:``, mini-swe-agent's ``<returncode>``, OpenHands' ``EXECUTION RESULT
   of [...]`` / ``[Command finished with exit code N]``), or, without one, at least three
   non-empty lines, most of them output-like (numbered lines, paths, ``file:line:`` hits,
   tracebacks, log levels and timestamps, ``ls -l`` rows, diff hunks, exit codes, indented
   code) and almost none of them prose, with neither its first nor its last line prose.

A user message with no action before it (a question, a pasted log, pasted code) is never an
observation. Everything here is a pure function of the two texts, so the decision is the same
on every turn.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from proxy.protocols import Prompt

__all__ = ["OBSERVATIONS", "Action", "action_block", "looks_like_output", "observation", "observations_of"]

# ``StageContext.extras`` key under which the tool-output stage leaves the observations it
# found (on the text as the client sent it), for observation aging
OBSERVATIONS: Final = "text_observations"

_SHELL_LANGS: Final = frozenset({"", "bash", "sh", "shell", "console", "zsh"})
_FENCE: Final = re.compile(r"^[ \t]*```[ \t]*([^\s`]*)[ \t]*$")
_COMMAND_WORD: Final = re.compile(r"^[A-Za-z_./~][\w./+~-]*$")
_NOT_COMMANDS: Final = frozenset(
    {
        "def", "class", "import", "from", "return", "if", "elif", "else", "for", "while", "try",
        "except", "with", "async", "await", "function", "const", "let", "var", "public",
        "private", "protected", "static", "package", "fn", "func", "struct", "type", "interface",
        "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "select", "insert", "update", "delete",
    }
)  # fmt: skip

# An agent's envelope around command output.
_ENVELOPE_START: Final = re.compile(
    r"\A\s*(?:OBSERVATION:|<returncode>-?\d+</returncode>|EXECUTION RESULT of \[|"
    r"\[File: [^\n]+ \(\d+ lines total\)\])"
)
_SWE_FOOTER: Final = re.compile(r"\(Current directory: [^\n]*\)\s*(?:\n\([^\n]*\)\s*)*\n?bash-\$\s*\Z")
_EXIT_MARK: Final = re.compile(r"\[Command finished with exit code -?\d+\]")

# One line of command output (any of these).
_OUTPUT_LINE: Final = re.compile(
    r"""^\s*\d+(?::|\t|\s*\|)                     # numbered line: cat -n, SWE-agent views
    | (?:^|[\s'"(])(?:~|\.{1,2})?/?[\w.@+-]+(?:/[\w.@+-]+)+  # a path with a slash
    | ^[\w.@+-]+\.[A-Za-z][\w]{0,5}/?$            # a file name alone (ls)
    | ^[\w.@+-]+/$                                # a directory alone (ls -F)
    | :\d+:                                       # file:line: (grep, compilers, linters)
    | ^\s*File\ "[^"]+",\ line\ \d+ | ^Traceback\ \( | ^\s+at\ [\w.$<>]+\(
    | \b\w*(?:Error|Exception|Warning)\b:?       # exceptions and warnings
    | ^\[?\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2} | \b\d{2}:\d{2}:\d{2}\b
    | \b(?:DEBUG|INFO|WARN|WARNING|ERROR|FATAL|CRITICAL|TRACE)\b
    | ^[dlcbps-][rwxsStT-]{9}[@+.]?\s | ^total\ \d+$   # ls -l
    | ^(?:@@\ |\+\+\+\ |---\ |diff\ --git\ |index\ [0-9a-f]{6,})  # diff
    | ^[+-](?![+-])\S
    | \bexit\ (?:code|status)\b | \breturn\s?code\b | ^\$\ \S
    | ^(?:PASSED|FAILED|ERROR|ok|FAIL)\b | ^={3,} | ^-{3,} | \b\d+\ (?:passed|failed)\b
    | ^(?:\s{2,}|\t)\S                            # indented: code, nested output
    | [{}();=<>\[\]].*[{}();=<>\[\]]              # code-ish punctuation
    | ^\S+$                                       # one token alone (ls, ids, numbers)
    """,
    re.VERBOSE,
)
_WORD: Final = re.compile(r"^[\"'(\[]*[A-Za-z][A-Za-z'\u2019-]*[.,;:!?)\"]*$")
# Output signals that no sentence of prose carries: such a line is never counted as prose.
_STRONG: Final = re.compile(
    r"""^\s*\d+(?::|\t|\s*\|) | (?:~|\.{1,2})?/?[\w.@+-]+(?:/[\w.@+-]+){2,} | ^\.{0,2}/\S | :\d+:
    | ^Traceback\ \(
    | ^\s*File\ "[^"]+",\ line\ \d+ | \b\w+(?:Error|Exception)\b
    | \d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2} | \b(?:DEBUG|INFO|WARN|WARNING|ERROR|FATAL|CRITICAL)\b
    | ^[dlcbps-][rwxsStT-]{9}[@+.]?\s | ^total\ \d+$ | ^(?:@@\ |\+\+\+\ |diff\ --git\ )
    | \bexit\ (?:code|status)\b | \breturn\s?code\b | \b\d+\ (?:passed|failed)\b""",
    re.VERBOSE,
)


class Action(msgspec.Struct, frozen=True):
    """The action block that ends an assistant message: its command word and its text."""

    command: str
    text: str


def _command(block: str) -> Action | None:
    lines = [line.strip() for line in block.split("\n") if line.strip()]
    if not lines:
        return None
    words = lines[0].removeprefix("$ ").split()
    if len(words) > 2 and words[0] == "cd" and words[2] == "&&" and len(words) > 3:
        words = words[3:]  # `cd /repo && pytest ...`: the command is pytest
    word = words[0] if words else ""
    if not _COMMAND_WORD.match(word) or word in _NOT_COMMANDS:
        return None
    return Action(command=word, text=block.strip("\n"))


def action_block(text: str) -> Action | None:
    """The shell action block that ends ``text`` (an assistant message), or None.

    Fences nest as SWE-agent reads them: a fence with a language always opens a block, a bare
    fence closes the innermost open one (or opens one when none is open)."""
    body = text.rstrip()
    if body.endswith("</command>"):
        start = body.rfind("<command>")
        return None if start < 0 else _command(body[start + len("<command>") : -len("</command>")])
    if not body.endswith("```"):
        return None
    lines = body.split("\n")
    stack: list[tuple[int, str]] = []
    last: tuple[int, str, int] | None = None
    for n, line in enumerate(lines):
        m = _FENCE.match(line)
        if m is None:
            continue
        lang = m.group(1)
        if stack and not lang:
            start, open_lang = stack.pop()
            if not stack:
                last = (start, open_lang, n)
        else:
            stack.append((n, lang))
    if last is None or stack or last[2] != len(lines) - 1 or last[1].lower() not in _SHELL_LANGS:
        return None
    return _command("\n".join(lines[last[0] + 1 : last[2]]))


def _prose(line: str) -> bool:
    """A sentence a person wrote: five or more words nearly all plain, or a short one of plain
    words ending in ``?.!:``; never a line with a path, a line number, an exception name, a
    timestamp or a log level in it."""
    if _STRONG.search(line):
        return False
    words = line.split()
    plain = sum(1 for w in words if _WORD.match(w))
    if len(words) >= 5:
        return plain >= 0.8 * len(words)
    return len(words) >= 2 and plain == len(words) and line.rstrip()[-1] in "?.!:"


def looks_like_output(text: str) -> bool:
    """Whether ``text`` reads as command output: an agent's envelope, or (without one) mostly
    output-like lines, hardly any prose, and prose neither first nor last."""
    if _ENVELOPE_START.match(text) or _SWE_FOOTER.search(text) or _EXIT_MARK.search(text):
        return True
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 3 or _prose(lines[0]) or _prose(lines[-1]):
        return False
    if not any(_STRONG.search(line) for line in lines):
        return False
    prose = output = 0
    for line in lines:
        if _prose(line):
            prose += 1
        elif _OUTPUT_LINE.search(line):
            output += 1
    return output >= 0.6 * len(lines) and prose <= 0.1 * len(lines)


def observation(assistant_text: str, user_text: str) -> Action | None:
    """The action that ``user_text`` answers when it is a text-mode agent's observation of it
    (``assistant_text`` is the message right before it), else None."""
    action = action_block(assistant_text)
    if action is None or not looks_like_output(user_text):
        return None
    return action


def observations_of(prompt: Prompt) -> dict[int, Action]:
    """The user messages (by index) that are a text-mode agent's observations, each with the
    action it answers: the message right before it is an assistant message with no tool call."""
    texts: dict[int, list[str]] = {}
    kinds: dict[int, set[str]] = {}
    for seg in prompt.segments:
        kinds.setdefault(seg.index, set()).add(seg.kind)
        if seg.kind in ("user", "assistant"):
            texts.setdefault(seg.index, []).append(seg.text)
    found: dict[int, Action] = {}
    for index, kind in kinds.items():
        before = kinds.get(index - 1)
        if kind != {"user"} or before != {"assistant"}:
            continue
        action = observation("\n".join(texts[index - 1]), "\n".join(texts[index]))
        if action is not None:
            found[index] = action
    return found
