"""Compress tool outputs: OpenAI ``role: "tool"`` messages and Gemini ``functionResponse`` parts.

Each tool output goes through :func:`compressors.compress` with the tool's name, the call's
arguments and the last user message before it as context. Command output that a text-mode agent
sends back as a user message (SWE-agent, mini-swe-agent: see :mod:`proxy.stages.observations`)
counts as a tool output of its action's command word, unless ``compression.text_observations``
is ``never``; every other user message is left alone. Results are deterministic and cached by
content, so a tool output resent on the next turn becomes the same bytes again and the
provider's prompt cache keeps working. Large requests are compressed in a worker process
(:class:`~proxy.workers.CompressPool`), so the event loop keeps serving other requests and the
work stops when the stage's time budget runs out; without a pool, on a thread. Per request at
most ``max_analysis_chars`` characters not already cached are analysed (oldest outputs first);
the outputs past that budget go as they were sent. With the learned compression policy on
(``ctx.arms``, see :mod:`proxy.policy`), the outputs it decides are compressed with the config
of their session's arm.

With retrieval on (``ctx.retrieval``), lossy markers carry the original's content id and each
lossy cut is recorded there (its original is stored once the request is ready to go). A cut
keeps its bytes on every turn, also after the model retrieved from it (what it retrieved is
put back beside it, see :mod:`proxy.toolloop`), and the retrieval tool's own results are
never compressed.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog

from compressors import (
    CompressionConfig,
    CompressionContext,
    CompressionResult,
    ToolPolicy,
    cached,
    compress,
    remember,
)
from proxy.pipeline import StageContext
from proxy.protocols import Prompt, Segment
from proxy.stages.observations import OBSERVATIONS, observations_of
from proxy.translog import SegmentRecord
from proxy.workers import CompressPool, run_jobs

_THREAD_CHARS = 64 * 1024  # below this, a thread hop costs more than the work
_log = structlog.get_logger("nocp.stages")


class ToolOutputStage:
    """The tool-output compression stage."""

    name = "tool_output"

    def __init__(
        self,
        config: CompressionConfig,
        *,
        pool: CompressPool | None = None,
        max_analysis_chars: int | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.max_analysis_chars = max_analysis_chars
        self._with_ids: dict[str, CompressionConfig] = {}  # per marker key
        self._lossless_only: dict[str | None, CompressionConfig] = {}  # per marker key

    async def _large(
        self, jobs: list[tuple[str, CompressionContext]], config: CompressionConfig, budget: int | None
    ) -> tuple[list[CompressionResult | None], int | None]:
        """Cached results first (hashing off the loop), then what ``budget`` (characters to
        analyse) allows of the rest, in a worker process; None for the outputs past the budget.
        Also what is left of the budget."""

        def lookup() -> list[CompressionResult | None]:  # too large to analyse: cheap, done here
            return [
                compress(text, c, config) if len(text) > config.max_input_chars else cached(text, c, config)
                for text, c in jobs
            ]

        results = await asyncio.to_thread(lookup)
        todo: list[int] = []
        for i, ((text, _), hit) in enumerate(zip(jobs, results, strict=True)):
            if hit is None and (budget is None or len(text) <= budget):
                todo.append(i)
                budget = None if budget is None else budget - len(text)
        left = sum(1 for r in results if r is None) - len(todo)
        if left:
            _log.warning("analysis_budget_reached", outputs_left=left, max_chars=self.max_analysis_chars)
        if todo:
            run = [jobs[i] for i in todo]
            done = await (
                self.pool.run(run, config) if self.pool else asyncio.to_thread(run_jobs, run, config)
            )

            def keep() -> None:
                for (text, c), result in zip(run, done, strict=True):
                    remember(text, c, config, result)

            await asyncio.to_thread(keep)
            for i, result in zip(todo, done, strict=True):
                results[i] = result
        return results, budget

    def _lossless(self, config: CompressionConfig) -> CompressionConfig:
        """``config`` (this stage's, with or without marker ids) with every tool's policy at most
        ``lossless-only`` (one per marker key, reused)."""
        key = config.marker_key if config.marker_ids else None
        found = self._lossless_only.get(key)
        if found is None:
            never, lossless = ToolPolicy.NEVER, ToolPolicy.LOSSLESS_ONLY
            found = self._lossless_only[key] = msgspec.structs.replace(
                config,
                default_policy=never if config.default_policy is never else lossless,
                tool_policies={t: never if p is never else lossless for t, p in config.tool_policies.items()},
            )
        return found

    def _ids_config(self, key: str) -> CompressionConfig:
        """The config with id-carrying markers keyed with ``key`` (one per key, reused)."""
        config = self._with_ids.get(key)
        if config is None:
            config = self._with_ids[key] = msgspec.structs.replace(
                self.config, marker_ids=True, marker_key=key
            )
        return config

    async def __call__(self, prompt: Prompt, ctx: StageContext) -> Prompt:
        # Each tool output is judged against the last user message *before* it, never the
        # latest one: that context is fixed once the output is in the history, so the output
        # compresses to the same bytes on every later turn and the prompt cache keeps hitting.
        # Outputs in turns rolled up into a summary are not sent at all and are skipped.
        # A text-mode agent's observation (command output sent as a user message, see
        # proxy.stages.observations) is compressed like a tool output of its action's command,
        # and, not being the user's words, never becomes the query.
        r = prompt.rollup
        retrieval = ctx.retrieval
        own_tool = retrieval.tool_name if retrieval is not None else None
        actions = observations_of(prompt) if self.config.text_observations == "auto" else {}
        ctx.extras[OBSERVATIONS] = actions  # for observation aging: found on the uncompressed text
        work: list[tuple[int, Segment, str]] = []
        query = ""
        for i, seg in enumerate(prompt.segments):
            if r is not None and r.start <= seg.index < r.end:
                if seg.kind == "user" and seg.index not in actions:
                    query = seg.text
                continue
            if seg.kind == "user":
                action = actions.get(seg.index)
                if action is None:
                    query = seg.text
                elif seg.text:
                    seg = msgspec.structs.replace(seg, tool_name=action.command, tool_args=action.text)
                    work.append((i, seg, query))
            elif seg.kind == "tool_output" and seg.text and (own_tool is None or seg.tool_name != own_tool):
                work.append((i, seg, query))
        if not work:
            return prompt
        config = self.config if retrieval is None else self._ids_config(retrieval.marker_key)
        if ctx.policy == "lossless-only":
            config = self._lossless(config)
        jobs = [
            (seg.text, CompressionContext(model=ctx.model, query=query, tool_name=seg.tool_name,
                                          tool_args=seg.tool_args))
            for _, seg, query in work
        ]  # fmt: skip
        # The learned policy (when on) gives the outputs it decides their session's arm: each
        # group of outputs with the same config is compressed together.
        arms = ctx.arms
        chosen = (
            await arms.configs([(i, seg.tool_name, seg.text) for i, seg, _ in work], config) if arms else {}
        )
        groups: dict[str, list[int]] = {}
        for n, (i, _, _) in enumerate(work):
            groups.setdefault(chosen[i][0] if i in chosen else "", []).append(n)
        results: list[CompressionResult | None] = [None] * len(jobs)
        budget = self.max_analysis_chars
        large = sum(len(text) for text, _ in jobs) > _THREAD_CHARS
        for arm, members in groups.items():
            group_config = chosen[work[members[0]][0]][1] if arm else config
            group = [jobs[n] for n in members]
            if large:
                done, budget = await self._large(group, group_config, budget)
            else:
                done = list(run_jobs(group, group_config))
            for n, result in zip(members, done, strict=True):
                results[n] = result
        record = ctx.record
        for (i, seg, _), result in zip(work, results, strict=True):
            if result is None:  # past the analysis budget: sent as it was
                continue
            if i in chosen and arms is not None:
                arms.compressed(i, result)
            record.segments.append(
                SegmentRecord(
                    kind="observation" if seg.kind == "user" else seg.kind,
                    index=seg.index,
                    tool=seg.tool_name,
                    method=result.method,
                    tokens_before=result.tokens_before,
                    tokens_after=result.tokens_after,
                    lossless=result.lossless,
                )
            )
            if result.ref is not None and retrieval is not None:
                retrieval.add_cut(
                    result.ref,
                    seg.text,
                    tool=seg.tool_name,
                    content_type=result.content_type.value,
                    kind="tool_output",
                )
            if result.changed:
                prompt = prompt.with_text(i, result.text)
                if result.method not in record.input_compression_methods:
                    record.input_compression_methods.append(result.method)
                record.compression_justified = True
        return prompt
