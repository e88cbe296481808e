"""Observation aging: old tool outputs replaced by a short digest, in coarse steps.

Agents resend every old observation on every turn. Tool outputs (and a text-mode agent's
observations, see :mod:`proxy.stages.observations`) older than the last
``aging.keep_last_turns`` assistant turns are replaced by a digest — the call that produced
the output, its size, its first and last lines, the hard tokens it mentions (paths, ids,
numbers, errors) — ending with a retrievable marker, so nothing is lost: the model can fetch
the original with ``nocp_retrieve``. The boundary moves only every ``aging.step_turns`` turns,
so the prompt's prefix changes at most once per step (one cache miss), and a step is taken
only when it pays: the tokens it removes now and on the turns the session is expected to still
have (as many as it has had, at most ``aging.horizon_turns``; at the cached price) against the
one-time cost of the prompt from the first aged output on being billed uncached instead of
cached — at the model's prices (``proxy.pricing``; the rule is :mod:`proxy.cacheecon`'s). Each decision is
stored per tenant, session and step (the same on every request of the step) and logged.

Without retrieval (no place to keep originals) nothing is aged: a digest is a lossy cut.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from typing import Final

import structlog

from compressors import tokens
from compressors.hardtokens import hard_tokens
from compressors.markers import content_id, marker_id, omitted_marker
from proxy.cacheecon import BREAKPOINT_WRITE, cached_ratio, decide_miss, expected_remaining_turns
from proxy.config import AgingConfig
from proxy.pipeline import StageContext
from proxy.pricing import PriceTable
from proxy.protocols import Prompt, Segment
from proxy.sessions import SessionStore
from proxy.stages.observations import OBSERVATIONS, Action, observations_of
from proxy.translog import SegmentRecord

__all__ = ["AgingStage", "digest_of"]

_log = structlog.get_logger("nocp.aging")
_MENTIONS: Final = 12
_LINE_CHARS: Final = 160


def digest_of(text: str, tool: str | None, args: str) -> str:
    """The digest that stands for an aged output (the marker is added inside ``marker_id``)."""
    lines = text.splitlines() or [""]
    first = lines[0].strip()[:_LINE_CHARS]
    last = lines[-1].strip()[:_LINE_CHARS] if len(lines) > 1 else ""
    found = hard_tokens(text)
    order = {t: text.find(t) for t in found if not any(t != o and t in o for o in found)}
    mentions = sorted(order, key=lambda t: (order[t], t))[:_MENTIONS]
    call = f"{tool or 'tool'}({args[:_LINE_CHARS]})" if args else (tool or "tool")
    parts = [f"aged output of {call}: {len(lines)} lines", f"first: {first}"]
    if last:
        parts.append(f"last: {last}")
    if mentions:
        parts.append("mentions: " + ", ".join(mentions))
    return omitted_marker("; ".join(parts))


def _call(seg: Segment, actions: Mapping[int, Action]) -> tuple[str | None, str]:
    """The call that produced an output: the tool call's, or a text-mode observation's action."""
    action = actions.get(seg.index) if seg.kind == "user" else None
    return (action.command, action.text) if action is not None else (seg.tool_name, seg.tool_args)


def _kept(tool: str | None, globs: Sequence[str]) -> bool:
    """Whether a tool's outputs never age (``aging.keep_tools``)."""
    return tool is not None and any(fnmatch.fnmatchcase(tool, g) for g in globs)


def _digest(call: tuple[str | None, str], original: str, key: str) -> tuple[str, str]:
    ref = content_id(original, key)
    with marker_id(ref):
        return ref, digest_of(original, *call)


class AgingStage:
    """The observation-aging stage (see the module docstring)."""

    name = "aging"

    def __init__(
        self, config: AgingConfig, store: SessionStore, prices: PriceTable, *, text_observations: bool = True
    ) -> None:
        self.config = config
        self.text_observations = text_observations  # age text-mode observations too
        self.store = store
        self.prices = prices

    async def __call__(self, prompt: Prompt, ctx: StageContext) -> Prompt:
        cuts = ctx.retrieval
        if cuts is None or ctx.policy != "auto":  # a digest is a lossy cut
            return prompt
        cfg = self.config.for_model(ctx.model)
        if not cfg.enabled or cached_ratio(self.prices, ctx.model) < cfg.min_cached_share:
            return prompt
        assistant = [t.index for t in prompt.turns if t.role in ("assistant", "model")]
        aged_turns = (len(assistant) - cfg.keep_last_turns) // cfg.step_turns * cfg.step_turns
        if aged_turns <= 0:
            return prompt
        limit = assistant[aged_turns]  # the outputs of the aged turns come before this message
        r = prompt.rollup
        own = cuts.tool_name
        actions = self._observations(prompt, ctx)
        candidates = [
            i
            for i, seg in enumerate(prompt.segments)
            if (seg.kind == "tool_output" or (seg.kind == "user" and seg.index in actions))
            and seg.index < limit
            and seg.tool_name != own
            and not (r is not None and r.start <= seg.index < r.end)
            and len(seg.text) >= cfg.min_tokens  # a token is at least one character
        ]
        if not candidates:
            return prompt
        calls = {i: _call(prompt.segments[i], actions) for i in candidates}
        candidates = [i for i in candidates if not _kept(calls[i][0], cfg.keep_tools)]
        counts = {i: tokens.count(prompt.segments[i].text, ctx.model) for i in candidates}
        candidates = [i for i in candidates if counts[i] >= cfg.min_tokens]
        if not candidates:
            return prompt
        # The stage runs after tool-output compression: the sizes are what would be sent, and
        # the digest is made from (and fetches back) the original the compressor cut, if any.
        originals = {
            i: cuts.original_of(prompt.segments[i].text) or prompt.segments[i].text for i in candidates
        }
        digests = {i: _digest(calls[i], originals[i], cuts.marker_key) for i in candidates}
        removed = sum(counts[i] - tokens.count(digests[i][1], ctx.model) for i in candidates)
        if removed <= 0:
            return prompt
        turns = len(assistant)
        if not await self._decided(prompt, ctx, cfg, candidates, aged_turns, removed, assistant[-1], turns):
            return prompt
        for i in candidates:
            seg = prompt.segments[i]
            ref, text = digests[i]
            cuts.add_cut(ref, originals[i], tool=calls[i][0], content_type="observation", kind="tool_output")
            prompt = prompt.with_text(i, text)
            ctx.record.segments.append(
                SegmentRecord(
                    kind="tool_output" if seg.kind == "tool_output" else "observation",
                    index=seg.index,
                    tool=calls[i][0],
                    method="aged",
                    tokens_before=counts[i],
                    tokens_after=tokens.count(text, ctx.model),
                    lossless=False,
                )
            )
        if "aged" not in ctx.record.input_compression_methods:
            ctx.record.input_compression_methods.append("aged")
        ctx.record.compression_justified = True
        return prompt

    def _observations(self, prompt: Prompt, ctx: StageContext) -> Mapping[int, Action]:
        """The text-mode observations (user messages that are command output), by message
        index: as the tool-output stage found them on the client's text, else found here."""
        if not self.text_observations:
            return {}
        found = ctx.extras.get(OBSERVATIONS)
        return found if isinstance(found, dict) else observations_of(prompt)

    async def _decided(
        self,
        prompt: Prompt,
        ctx: StageContext,
        cfg: AgingConfig,
        candidates: Sequence[int],
        step: int,
        removed: int,
        last: int,
        turns: int,
    ) -> bool:
        """Whether this step ages: stored per tenant, session and step, so that every request
        of the step does the same; decided the first time by the cache economics."""
        session = ctx.record.session_id or "-"
        key = "g:" + hashlib.blake2b(f"{ctx.tenant}\0{session}\0{step}".encode(), digest_size=16).hexdigest()
        try:
            (stored,) = await self.store.get_blobs([key], ttl_s=cfg.decision_ttl_s)
        except Exception as exc:  # decided afresh: at worst a step's prefix changes twice
            _log.warning("aging_decision_unreadable", error=type(exc).__name__)
            stored = None
        if stored is not None:
            return stored == b"1"
        # The miss: what the previous request had cached from the first aged output on (the
        # turn's new messages are uncached either way) is billed uncached this once; the gain:
        # the removed tokens, now and, at the cached price, over the turns the session is
        # expected to still have (see proxy.cacheecon).
        first = min(prompt.segments[i].index for i in candidates)
        suffix = sum(tokens.count(s.text, ctx.model) for s in prompt.segments if first <= s.index <= last)
        cached = cached_ratio(self.prices, ctx.model)
        write = BREAKPOINT_WRITE if ctx.protocol == "anthropic" else 1.0  # written again at breakpoints
        horizon = expected_remaining_turns(turns, cfg.horizon_turns, cfg.horizon_share)
        decision = decide_miss(
            removed=removed, miss_tokens=suffix, cached=cached, write=write, horizon=horizon
        )
        worth = decision.pays
        _log.info(
            "aging_decision",
            step=step,
            removed_tokens=removed,
            suffix_tokens=suffix,
            cached_price=round(cached, 3),
            horizon_turns=horizon,
            gain=round(decision.gain),
            miss_cost=round(decision.cost),
            age=worth,
        )
        try:
            await self.store.put_blobs({key: b"1" if worth else b"0"}, ttl_s=cfg.decision_ttl_s)
        except Exception as exc:
            _log.warning("aging_decision_not_stored", error=type(exc).__name__)
        return worth
