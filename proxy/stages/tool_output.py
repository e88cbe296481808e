"""Compress tool outputs: OpenAI ``role: "tool"`` messages and Gemini ``functionResponse`` parts.

Each tool output goes through :func:`compressors.compress` with the tool's name, the call's
arguments and the last user message before it as context. Results are deterministic and cached by
content, so a tool output resent on the next turn becomes the same bytes again and the
provider's prompt cache keeps working. Large requests are compressed on a worker thread so
the event loop keeps serving other requests and the stage's time budget can take effect.

With retrieval on (``ctx.retrieval``), lossy markers carry the original's content id and each
lossy cut is recorded there (its original is stored once the request is ready to go). A cut
keeps its bytes on every turn, also after the model retrieved from it (what it retrieved is
put back beside it, see :mod:`proxy.toolloop`), and the retrieval tool's own results are
never compressed.
"""

from __future__ import annotations

import asyncio

import msgspec

from compressors import CompressionConfig, CompressionContext, CompressionResult, compress
from proxy.pipeline import StageContext
from proxy.protocols import Prompt, Segment
from proxy.translog import SegmentRecord

_THREAD_CHARS = 64 * 1024  # below this, a thread hop costs more than the work


class ToolOutputStage:
    """The tool-output compression stage."""

    name = "tool_output"

    def __init__(self, config: CompressionConfig) -> None:
        self.config = config
        self._with_ids: dict[str, CompressionConfig] = {}  # per marker key

    def _run(
        self, work: list[tuple[int, Segment, str]], model: str, config: CompressionConfig
    ) -> list[CompressionResult]:
        return [
            compress(
                seg.text,
                CompressionContext(
                    model=model, query=query, tool_name=seg.tool_name, tool_args=seg.tool_args
                ),
                config,
            )
            for _, seg, query in work
        ]

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
        r = prompt.rollup
        retrieval = ctx.retrieval
        own_tool = retrieval.tool_name if retrieval is not None else None
        work: list[tuple[int, Segment, str]] = []
        query = ""
        for i, seg in enumerate(prompt.segments):
            if seg.kind == "user":
                query = seg.text
            elif (
                seg.kind == "tool_output"
                and seg.text
                and not (r is not None and r.start <= seg.index < r.end)
                and (own_tool is None or seg.tool_name != own_tool)
            ):
                work.append((i, seg, query))
        if not work:
            return prompt
        config = self.config if retrieval is None else self._ids_config(retrieval.marker_key)
        if sum(len(s.text) for _, s, _ in work) > _THREAD_CHARS:
            results = await asyncio.to_thread(self._run, work, ctx.model, config)
        else:
            results = self._run(work, ctx.model, config)
        record = ctx.record
        for (i, seg, _), result in zip(work, results, strict=True):
            record.segments.append(
                SegmentRecord(
                    kind=seg.kind,
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
