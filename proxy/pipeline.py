"""The ordered stages a rewritable request goes through, each under a fail-open guard.

A stage is any async callable ``stage(prompt, ctx) -> Prompt``: it receives the request's
segments and returns them, changed or not. It never talks HTTP; what it needs comes from the
:class:`StageContext` (or is given to it when it is built, like the history stage's session
store and summarizer). A stage may set its own time budget with a ``timeout_s`` attribute
(seconds); the others get the pipeline's ``stage_timeout_s``. When a stage raises, overruns
its time budget or returns something that is not a same-shaped ``Prompt``, its result is
discarded (the prompt it received goes on to the next stage), whatever it added to the log is
rolled back, and the failure is recorded in the TransactionLog's ``fail_open`` list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from compressors import CompressionConfig, CompressionResult
from proxy.protocols import Prompt
from proxy.translog import FailOpen, TransactionLog

_log = structlog.get_logger("nocp.pipeline")


class CutRecorder(Protocol):
    """Where a lossy stage records its cuts when they are reversible (the retrieval tool
    loop): the original of each cut whose markers carry ``ref``."""

    tool_name: str
    marker_key: str  # the server secret marker ids are keyed with

    def add_cut(self, ref: str, text: str, *, tool: str | None, content_type: str, kind: str) -> None:
        """A stage made a lossy cut whose markers carry ``ref``; ``text`` is the original."""

    def original_of(self, text: str) -> str | None:
        """The original of a cut this request made, whose marker ``text`` carries (else None)."""


class ArmChooser(Protocol):
    """Where the tool-output stage gets, per output, the arm of the learned compression policy
    (see :mod:`proxy.policy`) and reports what compressing it under that arm gave."""

    async def configs(
        self, outputs: Sequence[tuple[int, str | None, str]], base: CompressionConfig
    ) -> dict[int, tuple[str, CompressionConfig]]:
        """Per output ``(position, tool, text)`` the policy decides: its arm and config."""
        ...

    def compressed(self, position: int, result: CompressionResult) -> None:
        """The output at ``position`` was compressed under its arm to ``result``."""


@dataclass(slots=True)
class StageContext:
    """What a stage may read (and the log record it may add segment details to).

    ``retrieval`` is set when reversible compression is on: a lossy stage then makes
    id-carrying markers and records each cut's original there (see :mod:`proxy.toolloop`);
    outputs of the retrieval tool itself (``tool_name``) are left alone.

    ``policy`` is what the stages may do (``X-Nocp-Policy``, see :mod:`proxy.treatment`):
    ``auto``; ``lossless-only``: lossless transformations only (no lossy cut, no aging, no
    history roll-up); ``never``: nothing (the pipeline runs no stage). ``arms`` is set when
    the learned compression policy is on: under ``auto``, the tool-output stage compresses each
    output it decides with the config of its arm."""

    model: str
    protocol: str
    record: TransactionLog
    query: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    retrieval: CutRecorder | None = None
    tenant: str = "-"  # who sent the request: what a stage stores is scoped by it and the session
    policy: Literal["auto", "lossless-only", "never"] = "auto"
    arms: ArmChooser | None = None  # the learned compression policy, when on


Stage = Callable[[Prompt, StageContext], Awaitable[Prompt]]


def stage_name(stage: Stage) -> str:
    """A stage's name for logs: its ``name`` attribute, function name or class name."""
    name = getattr(stage, "name", None) or getattr(stage, "__name__", None)
    return str(name or type(stage).__name__)


def _same_shape(before: Prompt, after: object) -> bool:
    if not isinstance(after, Prompt) or after.turns != before.turns:
        return False
    if len(after.segments) != len(before.segments):
        return False
    if not all(a.path == b.path for a, b in zip(after.segments, before.segments, strict=True)):
        return False
    r = after.rollup
    return r is None or r == before.rollup or (0 <= r.start < r.end <= len(before.turns))


class Pipeline:
    """Runs stages in order; a failing stage is skipped, never the request."""

    def __init__(self, stages: Sequence[Stage] = (), *, stage_timeout_s: float = 2.0) -> None:
        self.stages = tuple(stages)
        self.stage_timeout_s = stage_timeout_s

    def __bool__(self) -> bool:
        return bool(self.stages)

    def budget(self, stage: Stage) -> float:
        """Seconds ``stage`` may run: its own ``timeout_s`` attribute (a stage that waits for
        a summarizer call needs more), else the pipeline's ``stage_timeout_s``."""
        own = getattr(stage, "timeout_s", None)
        return float(own) if isinstance(own, int | float) and own > 0 else self.stage_timeout_s

    async def run(self, prompt: Prompt, ctx: StageContext) -> Prompt:
        """Pass ``prompt`` through every stage; return the last good result (``prompt`` itself
        under the policy ``never``)."""
        if ctx.policy == "never":
            return prompt
        for stage in self.stages:
            mark = len(ctx.record.segments)
            try:
                async with asyncio.timeout(self.budget(stage)):  # no extra task, unlike wait_for
                    result = await stage(prompt, ctx)
                if not _same_shape(prompt, result):
                    raise TypeError("stage returned a prompt of a different shape")
            except Exception as exc:  # fail open: the request must go through
                reason = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                del ctx.record.segments[mark:]
                ctx.record.fail_open.append(FailOpen(stage=stage_name(stage), reason=reason[:500]))
                _log.warning("stage_failed_open", stage=stage_name(stage), reason=reason[:500])
                continue
            assert isinstance(result, Prompt)
            prompt = result
        return prompt
