"""Summarizers for the history roll-up: extractive (no LLM), or an LLM call through an upstream.

A summarizer folds newly aged turns into a session's running summary::

    result = await summarizer.summarize(previous, turns, api_key=key)

``previous`` is the summary stored for the session (``""`` for the first roll-up). The result's
``text`` is the whole new summary (without the facts list: the history stage appends the
deterministic facts pass to whatever comes back) and the tokens the call cost, which the
TransactionLog records as compression overhead.

- :class:`ExtractiveSummarizer`: :func:`compressors.summary.extractive_summary`. The new
  summary is the previous one with a new section appended, so it starts with the bytes of the
  old one. Deterministic, free, instant.
- :class:`OpenAISummarizer` (chat completions) and :class:`GeminiSummarizer` (generateContent):
  a small model behind a configured upstream, asked to keep decisions, open tasks, paths,
  commands, numbers, identifiers and errors. The call is one plain JSON POST through the
  proxy's shared :class:`~proxy.upstream.UpstreamClient` (no provider SDK is needed), with the
  upstream's ``api_key_env`` key, else the requesting client's own key. Any failure (connection,
  timeout, non-2xx status, no text) raises, and the history stage fails open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from multidict import CIMultiDict

from compressors.summary import SUMMARY_HEADER, TurnText, extractive_summary, render_transcript
from proxy.config import Settings, UpstreamConfig
from proxy.exceptions import NocpError
from proxy.upstream import UpstreamClient, apply_api_key, upstream_url

__all__ = [
    "SYSTEM_PROMPT",
    "ExtractiveSummarizer",
    "GeminiSummarizer",
    "OpenAISummarizer",
    "Summarizer",
    "SummarizerError",
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

    async def aclose(self) -> None:
        """Nothing to close."""


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


class SummarizerError(NocpError):
    """The summarizer's upstream answered with an error or without a summary."""


_MAX_ERROR_CHARS = 300


def _reasoning_model(model: str) -> bool:
    return model.lower().rsplit("/", 1)[-1].startswith(("o1", "o3", "o4", "gpt-5"))


def _count(value: object) -> int:
    """A token count from a response's usage block (0 when absent or malformed)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI or Gemini error body, else the body's start."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_ERROR_CHARS]
    return body[:_MAX_ERROR_CHARS].decode("utf-8", "replace")


class _LLMSummarizer:
    """An LLM behind ``upstream``, called through an :class:`UpstreamClient`.

    ``http`` is the proxy's shared client. Without one the summarizer makes its own, started
    on first use and closed by :meth:`aclose`.
    """

    name: str
    protocol: str

    def __init__(
        self,
        upstream: UpstreamConfig,
        model: str,
        *,
        max_tokens: int,
        timeout_s: float,
        http: UpstreamClient | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.upstream = upstream
        self.model = model
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self._owned = http is None
        self._http = http if http is not None else UpstreamClient(settings or Settings())
        self._started = not self._owned
        self._start_lock = asyncio.Lock()

    async def _client(self) -> UpstreamClient:
        if not self._started:
            async with self._start_lock:
                if not self._started:
                    await self._http.start()
                    self._started = True
        return self._http

    async def aclose(self) -> None:
        """Close the summarizer's own client, if it made one (a shared one is left open)."""
        if self._owned and self._started:
            self._started = False
            await self._http.close()

    def _request(self, previous: str, turns: Sequence[TurnText]) -> tuple[str, dict[str, Any]]:
        """The path (as a client would send it) and the JSON body of the call."""
        raise NotImplementedError

    def _auth(self, headers: CIMultiDict[str], api_key: str | None) -> None:
        """Put the client's key in ``headers``; the upstream's own key replaces it."""
        raise NotImplementedError

    def _parse(self, payload: Any) -> SummaryResult:
        """The summary and token usage in a successful response body."""
        raise NotImplementedError

    async def summarize(
        self, previous: str, turns: Sequence[TurnText], *, api_key: str | None = None
    ) -> SummaryResult:
        path, body = self._request(previous, turns)
        headers: CIMultiDict[str] = CIMultiDict(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                # The shared session does not decompress (responses are relayed as sent).
                "Accept-Encoding": "identity",
            }
        )
        self._auth(headers, api_key)
        apply_api_key(headers, self.upstream)
        data = json.dumps(body, ensure_ascii=False).encode()
        http = await self._client()
        async with (
            asyncio.timeout(self.timeout_s),
            http.request("POST", upstream_url(self.upstream, path), headers, data) as resp,
        ):
            raw = await resp.read()
            status = resp.status
        if not 200 <= status < 300:
            raise SummarizerError(f"upstream {self.upstream.name} answered {status}: {_error_message(raw)}")
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise SummarizerError(f"upstream {self.upstream.name} answered invalid JSON") from exc
        return self._parse(payload)


class OpenAISummarizer(_LLMSummarizer):
    """An OpenAI-compatible chat model behind ``upstream`` (``POST /v1/chat/completions``)."""

    name = "openai"
    protocol = "openai"

    def _request(self, previous: str, turns: Sequence[TurnText]) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": build_prompt(previous, turns)},
            ],
            "max_completion_tokens": self.max_tokens,
        }
        if not _reasoning_model(self.model):  # reasoning models take only the default
            body["temperature"] = 0.0
        return "/v1/chat/completions", body

    def _auth(self, headers: CIMultiDict[str], api_key: str | None) -> None:
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"

    def _parse(self, payload: Any) -> SummaryResult:
        choices = payload.get("choices") if isinstance(payload, Mapping) else None
        message = choices[0].get("message") if choices and isinstance(choices[0], Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        text = content.strip() if isinstance(content, str) else ""
        if not text:
            raise SummarizerError("the summarizer returned no text")
        usage = payload.get("usage")
        usage = usage if isinstance(usage, Mapping) else {}
        return SummaryResult(
            text=f"{SUMMARY_HEADER}\n{text}",
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),  # reasoning tokens included
            method="llm",
        )


class GeminiSummarizer(_LLMSummarizer):
    """A Gemini model behind ``upstream`` (``POST /v1beta/models/{model}:generateContent``)."""

    name = "gemini"
    protocol = "gemini"

    def _request(self, previous: str, turns: Sequence[TurnText]) -> tuple[str, dict[str, Any]]:
        model = self.model.removeprefix("models/")
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": [{"text": build_prompt(previous, turns)}]}],
            "systemInstruction": {"parts": [{"text": SYSTEM_PROMPT}]},
            "generationConfig": {"temperature": 0.0, "maxOutputTokens": self.max_tokens},
        }
        return f"/v1beta/models/{quote(model, safe='-._~')}:generateContent", body

    def _auth(self, headers: CIMultiDict[str], api_key: str | None) -> None:
        if api_key:
            headers["x-goog-api-key"] = api_key

    def _parse(self, payload: Any) -> SummaryResult:
        candidates = payload.get("candidates") if isinstance(payload, Mapping) else None
        first = candidates[0] if candidates and isinstance(candidates[0], Mapping) else {}
        content = first.get("content")
        parts = content.get("parts") if isinstance(content, Mapping) else None
        texts = [
            p["text"]
            for p in parts or ()
            if isinstance(p, Mapping) and isinstance(p.get("text"), str) and not p.get("thought")
        ]
        text = "".join(texts).strip()
        if not text:
            raise SummarizerError("the summarizer returned no text")
        meta = payload.get("usageMetadata")
        meta = meta if isinstance(meta, Mapping) else {}
        return SummaryResult(
            text=f"{SUMMARY_HEADER}\n{text}",
            prompt_tokens=_count(meta.get("promptTokenCount")),
            # thinking tokens are billed as output too
            completion_tokens=_count(meta.get("candidatesTokenCount"))
            + _count(meta.get("thoughtsTokenCount")),
            method="llm",
        )


def make_summarizer(settings: Settings, upstream: UpstreamClient | None = None) -> Summarizer:
    """The summarizer ``settings.history`` asks for (extractive when no upstream is named).

    An LLM summarizer sends through ``upstream``, the proxy's shared client; without one it
    makes its own on first use (close it with the summarizer's ``aclose``).
    """
    cfg = settings.history
    if not cfg.summarizer_upstream:
        return ExtractiveSummarizer()
    config = next(u for u in settings.upstreams if u.name == cfg.summarizer_upstream)
    cls = GeminiSummarizer if config.protocol == "gemini" else OpenAISummarizer
    return cls(
        config,
        cfg.summarizer_model or "",
        max_tokens=cfg.summarizer_max_tokens,
        timeout_s=cfg.summarizer_timeout_ms / 1000,
        http=upstream,
        settings=settings,
    )
