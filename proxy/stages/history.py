"""Roll up old conversation turns into one summary message, cache-stably.

When a prompt is over the model's threshold, turns from the first summarizable one (after
the system/developer messages and, by default, the first user message) up to a cut point are
replaced by one summary message; the last ``keep_last_messages`` messages stay verbatim, and
a cut never falls between a tool call and its results (a cut lands only on a turn that is not
a tool result: OpenAI ``role: tool`` / ``function``, Gemini ``functionResponse`` contents).

The cut and the summary are stored per session (see :mod:`proxy.sessions`) and reused on
every following request whose history still matches (the digests of the summarized turns),
so consecutive requests start with byte-identical bytes and the provider's prefix cache
keeps working. The cut moves only when the prompt is over the threshold again *and* at
least ``cut_step_tokens`` have aged past the old cut; then the old summary plus the newly
aged turns become the new summary (turns are never summarized twice), and a deterministic
facts pass appends the hard facts (commands, errors, paths, URLs, ids, numbers) that the
summary lost. A history that diverged from the stored one (edited, truncated) starts over.

A summarizer that fails or times out leaves the request unsummarized beyond the stored cut
(fail-open, recorded in ``fail_open``); its tokens are compression overhead in the log.

With retrieval on, the summary sent ends with a marker whose id fetches the replaced messages
back (:func:`original_text`); it is added when the state is applied, not stored, so stored
summaries stay byte-stable.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from compressors import tokens
from compressors.markers import content_id, marker_id, omitted_marker
from compressors.summary import TurnText, facts_pass
from proxy.config import HistoryConfig, Settings
from proxy.pipeline import StageContext
from proxy.protocols import Prompt, Segment
from proxy.sessions import SessionState, SessionStore, open_store
from proxy.summarizer import Summarizer, SummaryResult, make_summarizer
from proxy.translog import FailOpen, SegmentRecord, log_session_id, redact
from proxy.upstream import UpstreamClient

__all__ = ["CONTEXT_WINDOWS", "HistoryStage", "Policy", "context_window", "original_text", "policy_for"]

_log = structlog.get_logger("nocp.history")

# Context windows (input + output tokens) by model-name glob, first match wins.
CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4o*", 128_000),
    ("chatgpt-4o*", 128_000),
    ("gpt-4.1*", 1_047_576),
    ("gpt-4.5*", 128_000),
    ("gpt-5*", 400_000),
    ("gpt-oss*", 131_072),
    ("o1-mini*", 128_000),
    ("o1*", 200_000),
    ("o3*", 200_000),
    ("o4*", 200_000),
    ("gpt-4-turbo*", 128_000),
    ("gpt-4-1106*", 128_000),
    ("gpt-4-0125*", 128_000),
    ("gpt-4-32k*", 32_768),
    ("gpt-4*", 8_192),
    ("gpt-3.5-turbo*", 16_385),
    ("gemini-1.5-pro*", 2_097_152),
    ("gemini-*", 1_048_576),
    ("claude-*", 200_000),
    ("llama-3*", 128_000),
    ("llama3*", 128_000),
    ("qwen*", 32_768),
    ("mistral*", 32_768),
)
_FRAME = 4  # tokens of message framing, roughly
_SYSTEM_ROLES = frozenset({"system", "developer"})


def context_window(model: str) -> int | None:
    """The built-in context window of ``model``, or None when the table does not know it."""
    name = model.lower().rsplit("/", 1)[-1]
    for pattern, window in CONTEXT_WINDOWS:
        if fnmatch.fnmatchcase(name, pattern):
            return window
    return None


@dataclass(frozen=True, slots=True)
class Policy:
    """The roll-up settings in force for one model."""

    threshold: int
    keep_last: int
    cut_step: int
    keep_first_user: bool


def policy_for(cfg: HistoryConfig, model: str) -> Policy:
    """Settings for ``model``: its first matching ``models`` override, then the section.
    The threshold is, first found: the override's tokens, its fraction of the window, the
    section's tokens, the section's fraction of the window."""
    over = next((o for g, o in cfg.models.items() if fnmatch.fnmatchcase(model, g)), None)
    window = (over.context_window if over else None) or context_window(model) or cfg.default_context_window
    if over is not None and over.threshold_tokens is not None:
        threshold = over.threshold_tokens
    elif over is not None and over.threshold_fraction is not None:
        threshold = int(window * over.threshold_fraction)
    elif cfg.threshold_tokens is not None:
        threshold = cfg.threshold_tokens
    else:
        threshold = int(window * cfg.threshold_fraction)
    keep = over.keep_last_messages if over and over.keep_last_messages is not None else None
    step = over.cut_step_tokens if over and over.cut_step_tokens is not None else None
    return Policy(
        threshold=threshold,
        keep_last=keep if keep is not None else cfg.keep_last_messages,
        cut_step=step if step is not None else cfg.cut_step_tokens,
        keep_first_user=cfg.keep_first_user_message,
    )


# ------------------------------------------------------------------------------ the view


@dataclass(slots=True)
class _View:
    """The conversation as the stage reasons about it: one entry per turn."""

    turns: list[TurnText]
    tokens: list[int]
    roles: list[str]
    tool_result: list[bool]
    attached: list[bool]  # must stay with the turn before it
    digests: list[bytes]
    total: int


def _role(role: str, tool_result: bool) -> str:
    if tool_result or role in ("tool", "function"):
        return "tool"
    if role in ("assistant", "model"):
        return "assistant"
    return role if role in _SYSTEM_ROLES else "user"


def _build_view(prompt: Prompt, model: str) -> _View:
    by_turn: dict[int, list[Segment]] = {}
    extra = 0
    for seg in prompt.segments:
        if seg.index < 0:  # Gemini systemInstruction
            extra += tokens.count(seg.text, model)
        else:
            by_turn.setdefault(seg.index, []).append(seg)
    texts: list[TurnText] = []
    counts: list[int] = []
    for turn in prompt.turns:
        segs = by_turn.get(turn.index, [])
        role = _role(turn.role, turn.tool_result)
        body = "\n".join(s.text for s in segs if s.kind != "tool_call")
        calls = tuple((s.tool_name or "", s.text) for s in segs if s.kind == "tool_call")
        tool_name = next((s.tool_name for s in segs if s.kind == "tool_output" and s.tool_name), None)
        n = _FRAME + sum(tokens.count(s.text, model) for s in segs)
        n += sum(_FRAME + tokens.count(name, model) for name, _ in calls)
        texts.append(TurnText(index=turn.index, role=role, text=body, calls=calls, tool_name=tool_name))
        counts.append(n)
    # Gemini: a model turn's functionCall parts are not segments; take the calls (and their
    # size) from the tool results that follow it.
    for i in range(len(texts) - 1):
        t, nxt = texts[i], prompt.turns[i + 1]
        if t.role == "assistant" and not t.calls and nxt.tool_result:
            calls = tuple(
                (s.tool_name or "", s.tool_args)
                for s in by_turn.get(nxt.index, [])
                if s.kind == "tool_output" and s.tool_args
            )
            if calls:
                texts[i] = TurnText(index=t.index, role=t.role, text=t.text, calls=calls)
                counts[i] += sum(_FRAME + tokens.count(a, model) for _, a in calls)
    return _View(
        turns=texts,
        tokens=counts,
        roles=[t.role for t in texts],
        tool_result=[t.tool_result for t in prompt.turns],
        attached=[t.tool_result or t.attached for t in prompt.turns],
        digests=[t.digest for t in prompt.turns],
        total=extra + sum(counts),
    )


def _chain(digests: Sequence[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for d in digests:
        h.update(d)
    return h.hexdigest()


def first_summarizable(view: _View, keep_first_user: bool) -> int | None:
    """Index of the first turn a roll-up may start at, or None."""
    n = len(view.roles)
    i = 0
    while i < n and view.roles[i] in _SYSTEM_ROLES:
        i += 1
    if keep_first_user and i < n and view.roles[i] == "user":
        i += 1
    return i if i < n else None


def next_cut(view: _View, start: int, old_end: int, policy: Policy) -> int | None:
    """Where a new roll-up would end (exclusive), or None when the cut must not move: the
    latest turn that keeps the last ``keep_last`` messages, does not split a tool call from
    its results, does not swallow a later system message, and ages at least ``cut_step``
    tokens past ``old_end``."""
    n = len(view.roles)
    limit = n - policy.keep_last
    for i in range(max(start, old_end), n):
        if view.roles[i] in _SYSTEM_ROLES:
            limit = min(limit, i)
            break
    for end in range(limit, old_end, -1):
        if end < n and view.attached[end]:
            continue
        if sum(view.tokens[old_end:end]) < policy.cut_step:
            return None
        return end
    return None


def _valid(state: SessionState, view: _View, start: int, keep_last: int) -> bool:
    """True when ``state`` summarizes exactly this request's turns ``start`` to ``end - 1``
    and still leaves its last ``keep_last`` messages verbatim."""
    return (
        state.start == start
        and start < state.end <= len(view.digests) - keep_last
        and _chain(view.digests[state.start : state.end]) == state.digest
    )


def _store_key(session: str, protocol: str, root: bytes) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{protocol}\0{session}\0".encode("utf-8", "surrogatepass"))
    h.update(root)
    return h.hexdigest()


# ------------------------------------------------------------------------------ the stage


class HistoryStage:
    """The history roll-up stage (see the module docstring)."""

    name = "history"

    def __init__(
        self,
        config: HistoryConfig,
        store: SessionStore,
        summarizer: Summarizer,
    ) -> None:
        self.config = config
        self.store = store
        self.summarizer = summarizer
        self.summarizer_timeout_s = config.summarizer_timeout_ms / 1000
        # The pipeline reads this as the stage's own budget: a summarizer call may need more
        # than the default stage budget, and the stage must outlive its summarizer's timeout.
        self.timeout_s = max(config.stage_timeout_ms / 1000, self.summarizer_timeout_s + 2.0)

    @classmethod
    def from_settings(
        cls, settings: Settings, store: SessionStore | None = None, upstream: UpstreamClient | None = None
    ) -> HistoryStage:
        """The stage with the configured store (or ``store``, shared) and summarizer (both
        connect on first use). An LLM summarizer calls through ``upstream``, the proxy's shared
        client; without one it makes its own, closed by :meth:`aclose`."""
        return cls(settings.history, store or open_store(settings), make_summarizer(settings, upstream))

    async def aclose(self) -> None:
        """Close the summarizer's own upstream client (if it made one) and the session store."""
        close = getattr(self.summarizer, "aclose", None)
        try:
            if close is not None:
                await close()
        finally:
            await self.store.aclose()

    async def __call__(self, prompt: Prompt, ctx: StageContext) -> Prompt:
        if len(prompt.turns) < 2 or ctx.policy != "auto":  # a roll-up is a lossy cut
            return prompt
        policy = policy_for(self.config, ctx.model)
        # Cheap bound first: a token is at least one UTF-8 byte, a character at most four.
        if sum(len(s.text) for s in prompt.segments) * 4 + 8 * len(prompt.turns) <= policy.threshold:
            return prompt
        view = await asyncio.to_thread(_build_view, prompt, ctx.model)
        if view.total <= policy.threshold:
            return prompt
        start = first_summarizable(view, policy.keep_first_user)
        if start is None:
            return prompt
        # State is per (session, conversation): its first non-system message names the latter.
        root = next(d for d, r in zip(view.digests, view.roles, strict=True) if r not in _SYSTEM_ROLES)
        key = _store_key(f"{ctx.tenant}\0{ctx.record.session_id or '-'}", ctx.protocol, root)
        stored = await self.store.get(key)
        valid = stored if stored is not None and _valid(stored, view, start, policy.keep_last) else None
        if stored is not None and valid is None:
            _log.info("history_diverged", session=log_session_id(ctx.record.session_id), cut=stored.end)
        old_end = valid.end if valid else start
        effective = view.total
        if valid is not None:
            effective += valid.summary_tokens - sum(view.tokens[valid.start : valid.end])
        end = next_cut(view, start, old_end, policy) if effective > policy.threshold else None
        if end is None:
            return self._apply(prompt, ctx, valid, reused=True)
        aged = view.turns[old_end:end]
        previous = valid.summary if valid else ""
        # The client's own key is good only for an upstream of the protocol it called.
        same = getattr(self.summarizer, "protocol", ctx.protocol) == ctx.protocol
        api_key = ctx.extras.get("api_key") if same else None
        try:
            async with asyncio.timeout(self.summarizer_timeout_s):
                result = await self.summarizer.summarize(previous, aged, api_key=api_key)
        except Exception as exc:  # fail open: keep what was stored, summarize nothing new
            reason = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            ctx.record.fail_open.append(FailOpen(stage="history.summarizer", reason=reason[:500]))
            session = log_session_id(ctx.record.session_id)
            _log.warning("history_summarizer_failed", reason=redact(reason[:500]), session=session)
            return self._apply(prompt, ctx, valid, reused=True)
        ctx.record.compression_overhead_tokens += result.overhead_tokens  # billed either way
        state = await asyncio.to_thread(
            self._new_state, result, previous, aged, view, start, end, stored, ctx.model
        )
        if state is None:  # the summary would not save anything
            return self._apply(prompt, ctx, valid, reused=True)
        if not await self.store.put(key, state, expected_version=stored.version if stored else 0):
            # Another request of this session rolled up first: use its state if it fits.
            other = await self.store.get(key)
            if other is not None and _valid(other, view, start, policy.keep_last):
                return self._apply(prompt, ctx, other, reused=True)
        return self._apply(prompt, ctx, state, reused=False)

    @staticmethod
    def _new_state(
        result: SummaryResult,
        previous: str,
        aged: Sequence[TurnText],
        view: _View,
        start: int,
        end: int,
        stored: SessionState | None,
        model: str,
    ) -> SessionState | None:
        facts = facts_pass(aged, result.text, previous)
        text = f"{result.text}\n\n{facts}" if facts else result.text
        summary_tokens = _FRAME + tokens.count(text, model)
        covered = sum(view.tokens[start:end])
        if summary_tokens >= covered:
            return None
        return SessionState(
            version=(stored.version if stored else 0) + 1,
            start=start,
            end=end,
            digest=_chain(view.digests[start:end]),
            summary=text,
            summary_tokens=summary_tokens,
            covered_tokens=covered,
            method=result.method,
            updated_at=time.time(),
        )

    @staticmethod
    def _apply(prompt: Prompt, ctx: StageContext, state: SessionState | None, *, reused: bool) -> Prompt:
        if state is None:
            return prompt
        record = ctx.record
        record.segments.append(
            SegmentRecord(
                kind="history",
                index=state.start,
                method="history_reused" if reused else f"history_rollup:{state.method}",
                tokens_before=state.covered_tokens,
                tokens_after=state.summary_tokens,
                lossless=False,
            )
        )
        if "history_rollup" not in record.input_compression_methods:
            record.input_compression_methods.append("history_rollup")
        record.compression_justified = True
        summary = state.summary
        if ctx.retrieval is not None:
            # Reversible: the messages the summary replaces can be fetched back by id. The
            # marker is appended here, not stored, so the stored summary (and a following
            # roll-up that extends it) stays byte-stable; it is the same on every request
            # that applies this state, since the summarized turns are checked by digest.
            original = original_text(prompt, state.start, state.end, skip_tool=ctx.retrieval.tool_name)
            ref = content_id(original, ctx.retrieval.marker_key)
            ctx.retrieval.add_cut(ref, original, tool=None, content_type="history", kind="history")
            with marker_id(ref):
                marker = omitted_marker(f"the {state.end - state.start} messages this summary replaces")
            summary = f"{summary}\n\n{marker}"
        return prompt.with_rollup(state.start, state.end, summary)


def original_text(prompt: Prompt, start: int, end: int, *, skip_tool: str | None = None) -> str:
    """The messages ``start`` to ``end - 1`` as plain text: each message's role, its texts,
    its tool calls and tool outputs, in order. What a history marker's id fetches back.
    Outputs of ``skip_tool`` (the retrieval tool: copies of stored originals, fetched again by
    the id in its call) are left out, so fetching history never nests whole originals."""
    by_turn: dict[int, list[Segment]] = {}
    for seg in prompt.segments:
        by_turn.setdefault(seg.index, []).append(seg)
    blocks: list[str] = []
    for turn in prompt.turns[start:end]:
        segs = by_turn.get(turn.index, [])
        tool = next((s.tool_name for s in segs if s.kind == "tool_output" and s.tool_name), None)
        head = f"[message {turn.index}, {turn.role}" + (f", output of {tool}" if tool else "") + "]"
        lines = [head]
        for seg in segs:
            if seg.kind == "tool_call":
                lines.append(f"call {seg.tool_name}({seg.text})")
            else:
                if (
                    seg.kind == "tool_output"
                    and seg.tool_args
                    and not any(s.kind == "tool_call" for s in segs)
                ):
                    lines.append(f"call {seg.tool_name}({seg.tool_args})")
                if seg.kind == "tool_output" and skip_tool is not None and seg.tool_name == skip_tool:
                    lines.append(f"[{skip_tool} result: fetch its id again]")
                else:
                    lines.append(seg.text)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
