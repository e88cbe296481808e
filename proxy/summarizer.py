"""Summarizers for the history roll-up: extractive (no LLM), or an LLM call through an upstream.

A summarizer folds newly aged turns into a session's running summary::

    result = await summarizer.summarize(previous, turns, api_key=key)

``previous`` is the summary stored for the session (``""`` for the first roll-up). The result's
``text`` is the whole new summary (without the facts list: the history stage appends the
deterministic facts pass to whatever comes back) and the tokens the call cost, which the
TransactionLog records as compression overhead.

- :class:`ExtractiveSummarizer`: :func:`compressors._summary.extractive_summary`. The new
  summary is the previous one with a new section appended, so it starts with the bytes of the
  old one. Deterministic, free, instant.
- :class:`OpenAISummarizer` (``openai`` SDK) and :class:`GeminiSummarizer` (``google-genai``):
  a small model behind a configured upstream, asked to keep decisions, open tasks, paths,
  commands, numbers, identifiers and errors. A client is made per call (roll-ups are rare)
  with the upstream's ``api_key_env`` key, else the requesting client's own key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from compressors._summary import SUMMARY_HEADER, TurnText, extractive_summary, render_transcript
from proxy.config import Settings, UpstreamConfig

__all__ = [
    "SYSTEM_PROMPT",
    "ExtractiveSummarizer",
    "GeminiSummarizer",
    "OpenAISummarizer",
    "Summarizer",
    "SummaryResult",
    "build_prompt",
    "make_summarizer",
]

SYSTEM_PROMPT = """\
You maintain the running summary of a conversation between a user and an AI assistant \
(often a coding agent that calls tools). The summary replaces the original messages, so the \
assistant must be able to continue the work from it alone.

Keep, verbatim where they are exact values:
- the user's goals, requirements and constraints, and decisions made (with the reason);
- open tasks and next steps, and what was already tried;
- file paths, commands run and their outcome, numbers with their units, identifiers, IDs, \
URLs, version numbers;
- error messages and failing tests, quoted exactly.
Drop greetings, repetition and content that no longer matters. Never invent anything.
Answer with the updated summary only: plain text, short bullet points, no preamble."""

_MAX_TURN_CHARS = 6000  # per turn in the transcript: head and tail of longer texts


@dataclass(frozen=True, slots=True)
class SummaryResult:
    """A new summary and what producing it cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    method: str = "extractive"

    @property
    def overhead_tokens(self) -> int:
        """Tokens billed for producing the summary."""
        return self.prompt_tokens + self.completion_tokens


class Summarizer(Protocol):
    """Folds newly aged turns into the running summary."""

    name: str

    async def summarize(
        self, previous: str, turns: Sequence[TurnText], *, api_key: str | None = None
    ) -> SummaryResult:
        """The new summary of ``previous`` plus ``turns``."""
        ...


class ExtractiveSummarizer:
    """No LLM: the previous summary with an extractive section for the new turns appended."""

    name = "extractive"

    async def summarize(
        self, previous: str, turns: Sequence[TurnText], *, api_key: str | None = None
    ) -> SummaryResult:
        section = extractive_summary(turns)
        text = f"{previous}\n\n{section}" if previous else f"{SUMMARY_HEADER}\n{section}"
        return SummaryResult(text=text, method="extractive")


def _clip_turn(turn: TurnText) -> TurnText:
    text = turn.text
    if len(text) <= _MAX_TURN_CHARS:
        return turn
    head, tail = text[: _MAX_TURN_CHARS * 2 // 3], text[-_MAX_TURN_CHARS // 3 :]
    cut = len(text) - len(head) - len(tail)
    clipped = f"{head}\n[... {cut} characters omitted ...]\n{tail}"
    return TurnText(
        index=turn.index, role=turn.role, text=clipped, calls=turn.calls, tool_name=turn.tool_name
    )


def build_prompt(previous: str, turns: Sequence[TurnText]) -> str:
    """The user message of a summarizer call: the previous summary and the new turns."""
    transcript = render_transcript([_clip_turn(t) for t in turns])
    prior = previous.strip() or "(none yet)"
    return (
        f"Previous summary:\n{prior}\n\n"
        f"New messages to fold into the summary:\n{transcript}\n\n"
        "Write the updated summary."
    )


def _key(upstream: UpstreamConfig, client_key: str | None) -> str:
    if upstream.api_key_env:
        return os.environ.get(upstream.api_key_env, "")
    return client_key or "nocp-no-key"


def _reasoning_model(model: str) -> bool:
    return model.lower().rsplit("/", 1)[-1].startswith(("o1", "o3", "o4", "gpt-5"))


class _LLMSummarizer:
    """What both LLM summarizers are configured with."""

    def __init__(self, upstream: UpstreamConfig, model: str, *, max_tokens: int, timeout_s: float) -> None:
        self.upstream = upstream
        self.model = model
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s


class OpenAISummarizer(_LLMSummarizer):
    """An OpenAI-compatible chat model behind ``upstream`` (the ``openai`` SDK)."""

    name = "openai"
    protocol = "openai"

    async def summarize(
        self, previous: str, turns: Sequence[TurnText], *, api_key: str | None = None
    ) -> SummaryResult:
        from openai import AsyncOpenAI, omit

        async with AsyncOpenAI(
            base_url=self.upstream.base_url,
            api_key=_key(self.upstream, api_key),
            max_retries=0,
            timeout=self.timeout_s,
        ) as client:
            resp = await client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": build_prompt(previous, turns)},
                ],
                max_completion_tokens=self.max_tokens,
                temperature=omit if _reasoning_model(self.model) else 0.0,
            )
        text = (resp.choices[0].message.content or "").strip() if resp.choices else ""
        if not text:
            raise ValueError("the summarizer returned no text")
        usage = resp.usage
        return SummaryResult(
            text=f"{SUMMARY_HEADER}\n{text}",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            method="llm",
        )


class GeminiSummarizer(_LLMSummarizer):
    """A Gemini model behind ``upstream`` (the ``google-genai`` SDK)."""

    name = "gemini"
    protocol = "gemini"

    async def summarize(
        self, previous: str, turns: Sequence[TurnText], *, api_key: str | None = None
    ) -> SummaryResult:
        from google import genai
        from google.genai import types

        client = genai.Client(
            api_key=_key(self.upstream, api_key),
            http_options=types.HttpOptions(
                base_url=self.upstream.base_url, timeout=int(self.timeout_s * 1000)
            ),
        )
        try:
            resp = await client.aio.models.generate_content(
                model=self.model,
                contents=build_prompt(previous, turns),
                config=types.GenerateContentConfig(
                    system_instruction=SYSTEM_PROMPT, temperature=0.0, max_output_tokens=self.max_tokens
                ),
            )
        finally:
            await client.aio.aclose()
        text = (resp.text or "").strip()
        if not text:
            raise ValueError("the summarizer returned no text")
        meta = resp.usage_metadata
        return SummaryResult(
            text=f"{SUMMARY_HEADER}\n{text}",
            prompt_tokens=(meta.prompt_token_count or 0) if meta else 0,
            completion_tokens=(meta.candidates_token_count or 0) if meta else 0,
            method="llm",
        )


def make_summarizer(settings: Settings) -> Summarizer:
    """The summarizer ``settings.history`` asks for (extractive when no upstream is named)."""
    cfg = settings.history
    if not cfg.summarizer_upstream:
        return ExtractiveSummarizer()
    upstream = next(u for u in settings.upstreams if u.name == cfg.summarizer_upstream)
    model = cfg.summarizer_model or ""
    timeout_s = cfg.summarizer_timeout_ms / 1000
    if upstream.protocol == "gemini":
        return GeminiSummarizer(upstream, model, max_tokens=cfg.summarizer_max_tokens, timeout_s=timeout_s)
    return OpenAISummarizer(upstream, model, max_tokens=cfg.summarizer_max_tokens, timeout_s=timeout_s)
