"""The output side as a feature of the exchange: structured answers in TOON, and verbosity.

In one Chat Completions or Responses request:

- **before send**: with ``output.verbosity`` set for the model, the ``verbosity`` parameter is
  set where the client did not (models of ``output.verbosity_models``), or a short instruction
  is appended as the last message (``output.verbosity_instruction``). With the model in
  ``output.toon_models`` and a ``json_schema`` response format that is tabular enough
  (:func:`~proxy.output.plan_for_schema`), the format is taken out and an instruction to answer
  in TOON, with the exact headers, is appended as the last message (after the cached prefix).
  A streamed request is sent unstreamed: the answer must be whole to be decoded.
- **on reply**: the answer is decoded, fixed up and validated against the client's schema and
  returned as the JSON text the provider would have returned (for a stream, in the protocol's
  chunks, all at once). A decode or validation failure (or any failure in here) retries once
  with the request as it was before nocp's TOON change; that answer goes to the client as it
  is and the failed attempt's tokens are counted as overhead. The client never gets TOON.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import structlog

from compressors import tokens
from proxy.config import OutputConfig, Settings
from proxy.exchange import Exchange, FeatureRequest
from proxy.output._render import chat_stream, responses_stream
from proxy.output._schema import ToonPlan, decode_answer, needs_schema, plan_for_schema
from proxy.protocols import encode_json
from proxy.translog import FailOpen

__all__ = ["TOON_MARKER", "OutputFormat", "toon_instruction", "verbosity_note"]

_log = structlog.get_logger("nocp.output")
_CHAT: Final = "openai"
_RESPONSES: Final = "openai-responses"
_OFF_LOOP_CHARS: Final = 64 * 1024
_PLAN_CACHE: Final = 256
_VERBOSITY_NOTES: Final[Mapping[str, str]] = {
    "low": "Keep your answer short: the essentials only, no preamble, no recap.",
    "medium": "Keep your answer focused: no preamble, no recap.",
    "high": "Answer thoroughly, with the detail and explanation the question deserves.",
}
TOON_MARKER: Final = "Token-Oriented Object Notation"  # in every instruction to answer in TOON
TOON_RULES: Final = (
    f"Answer in TOON ({TOON_MARKER}), not JSON, and nothing else (no code "
    "fence). `key: value` lines; nested objects indented 2 spaces; `key[N]{a,b}:` is a table of "
    "N rows, one row per line, values comma-separated in header order; `key[N]: x,y` is a list. "
    'Double-quote a string that contains , : " or edge spaces, or looks like a number, true, '
    'false or null. A cell of strings joined by | holds a list (empty list: ""). Leave out '
    "optional keys you have no value for. Layout:"
)


def toon_instruction(plan: ToonPlan) -> str:
    """The instruction that replaces a response format: the rules, the layout with the exact
    headers, and the schema the values must satisfy."""
    text = f"{TOON_RULES}\n{plan.layout}"
    if needs_schema(plan.schema):
        schema = json.dumps(plan.schema, ensure_ascii=False, separators=(",", ":"))
        text += f"\nThe values must satisfy this JSON Schema: {schema}"
    return text


def verbosity_note(level: str) -> str:
    """The instruction that stands for ``verbosity`` where a model has no such parameter."""
    return _VERBOSITY_NOTES[level]


def _glob(model: str, patterns: Any) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(model, p)), None)


def _schema_of(protocol: str, body: Mapping[str, Any]) -> Any:
    """The client's JSON schema (``response_format`` / ``text.format`` of type json_schema)."""
    if protocol == _CHAT:
        rf = body.get("response_format")
        if isinstance(rf, Mapping) and rf.get("type") == "json_schema":
            js = rf.get("json_schema")
            return js.get("schema") if isinstance(js, Mapping) else None
        return None
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        return fmt.get("schema")
    return None


class OutputFormat:
    """The feature: ``output`` config, and the TOON plans of the schemas seen (bounded)."""

    def __init__(self, config: OutputConfig) -> None:
        self.config = config
        self.plans: OrderedDict[str, ToonPlan | None] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputFormat | None:
        """The feature when ``output.toon_models`` or ``output.verbosity`` is set, else None."""
        out = settings.output
        return cls(out) if out.toon_models or out.verbosity else None

    def plan(self, schema: Any, model: str) -> ToonPlan | None:
        """The TOON plan of ``schema`` for ``model`` (cached by the schema's digest)."""
        try:
            raw = json.dumps(schema, sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError):
            return None
        key = hashlib.blake2b(f"{model}\0{raw}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        if key in self.plans:
            self.plans.move_to_end(key)
            return self.plans[key]
        found = plan_for_schema(schema, model, min_saving=self.config.toon_min_saving)
        self.plans[key] = found
        if len(self.plans) > _PLAN_CACHE:
            self.plans.popitem(last=False)
        return found

    def begin(self, x: Exchange) -> FeatureRequest | None:
        """Its part in ``x``: Chat Completions and Responses requests of configured models."""
        protocol = x.adapter.protocol
        if protocol not in (_CHAT, _RESPONSES):
            return None
        cfg = self.config
        level_glob = _glob(x.model, cfg.verbosity)
        level = cfg.verbosity[level_glob] if level_glob is not None else None
        plan = None
        websocket = x.request.headers.get("Upgrade", "").lower() == "websocket"  # answers are events
        if not websocket and _glob(x.model, cfg.toon_models) is not None and _eligible(protocol, x.body):
            schema = _schema_of(protocol, x.body)
            plan = self.plan(schema, x.model) if schema is not None else None
        if plan is None and level is None:
            return None
        return OutputRequest(self, protocol, plan, level)


def _eligible(protocol: str, body: Mapping[str, Any]) -> bool:
    """Requests whose one answer nocp can decode: one choice, no logprobs, not background."""
    if protocol == _CHAT:
        return body.get("n") in (None, 1) and not body.get("logprobs")
    return not body.get("background") and not body.get("top_logprobs")


class OutputRequest(FeatureRequest):
    """The output side in one request (see the module docstring)."""

    def __init__(self, app: OutputFormat, protocol: str, plan: ToonPlan | None, level: str | None) -> None:
        self.app = app
        self.protocol = protocol
        self.plan = plan
        self.level = level
        self.note: dict[str, Any] | None = None  # the TOON instruction message nocp appended
        self.client_format: Any = None  # response_format, or Responses' text
        self.client_stream = False
        self.include_usage = False
        self.retried = False
        self.overhead = 0

    # ----------------------------------------------------------------- the request

    def _turns(self, x: Exchange) -> list[Any]:
        key = x.adapter.turns_key
        turns = x.body.get(key)
        if isinstance(turns, str):  # Responses: input as one string
            turns = [{"role": "user", "content": turns}]
        turns = list(turns) if isinstance(turns, list) else []
        x.body[key] = turns
        return turns

    def _append(self, x: Exchange, text: str) -> dict[str, Any]:
        message = {"role": "system", "content": text}
        self._turns(x).append(message)
        return message

    def _verbosity(self, x: Exchange) -> bool:
        level, cfg = self.level, self.app.config
        if level is None:
            return False
        if _glob(x.model, cfg.verbosity_models) is not None:
            if self.protocol == _CHAT:
                if "verbosity" in x.body:
                    return False
                x.body["verbosity"] = level
                return True
            text = x.body.get("text")
            text = dict(text) if isinstance(text, Mapping) else {}
            if "verbosity" in text:
                return False
            x.body["text"] = {**text, "verbosity": level}
            return True
        if cfg.verbosity_instruction:
            self._append(x, verbosity_note(level))
            return True
        return False

    def before_send(self, x: Exchange) -> bool:
        client_text = x.body.get("text")  # Responses: the client's own, before nocp's verbosity
        changed = self._verbosity(x)
        plan = self.plan
        if plan is None:
            return changed
        if x.stream:  # the answer must be whole to be decoded: the client gets it as one stream
            self.client_stream = True
            x.stream = False
            x.body.pop("stream", None)
            options = x.body.pop("stream_options", None)
            self.include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        if self.protocol == _CHAT:
            self.client_format = x.body.pop("response_format")
        else:
            self.client_format = client_text
            rest = {k: v for k, v in x.body["text"].items() if k != "format"}
            if rest:
                x.body["text"] = rest
            else:
                del x.body["text"]
        self.note = self._append(x, toon_instruction(plan))
        self.owns_response = True
        return True

    def _retry_body(self, x: Exchange) -> dict[str, Any]:
        """The request as sent, with nocp's TOON change undone (stream stays off)."""
        body = dict(x.body)
        key = x.adapter.turns_key
        body[key] = [m for m in body[key] if m is not self.note]
        if self.protocol == _CHAT:
            body["response_format"] = self.client_format
        else:
            text = body.get("text")
            body["text"] = {**self.client_format, **(text if isinstance(text, Mapping) else {})}
            body["text"]["format"] = self.client_format["format"]
        return body

    # ----------------------------------------------------------------- the answer

    def _answer_text(self, parsed: dict[str, Any]) -> tuple[str | None, Any]:
        """The answer's text and where it goes back (None when there is nothing to decode:
        tool calls, a refusal, no text)."""
        if self.protocol == _CHAT:
            choices = parsed.get("choices")
            if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
                return None, None
            message = choices[0].get("message")
            if not isinstance(message, dict) or message.get("tool_calls") or message.get("refusal"):
                return None, None
            content = message.get("content")
            return (content, message) if isinstance(content, str) else (None, None)
        output = parsed.get("output")
        parts = [
            p
            for item in (output if isinstance(output, list) else ())
            if isinstance(item, dict) and item.get("type") == "message"
            for p in item.get("content") or ()
            if isinstance(p, dict) and p.get("type") in ("output_text", "refusal")
        ]
        calls = any(
            isinstance(i, dict) and i.get("type") != "message" and "call" in str(i.get("type"))
            for i in output or ()
        )
        if calls or len(parts) != 1 or parts[0].get("type") != "output_text":
            return None, None
        text = parts[0].get("text")
        return (text, parts[0]) if isinstance(text, str) else (None, None)

    def _deliver(self, x: Exchange, parsed: dict[str, Any] | None, data: bytes) -> bytes:
        """What the client gets: the provider's shape (Responses echo the client's ``text``),
        as a stream when it asked for one."""
        if parsed is None:
            return data
        if self.protocol == _RESPONSES and "text" in parsed:
            parsed["text"] = self.client_format
        if not self.client_stream:
            return encode_json(parsed)
        if self.protocol == _CHAT:
            return chat_stream(parsed, include_usage=self.include_usage)
        return responses_stream(parsed)

    def _decode(self, text: str, model: str) -> tuple[str, str, int, int]:
        """(JSON text, form, its tokens, the answer's tokens)."""
        assert self.plan is not None
        value, form = decode_answer(text, self.plan.schema)
        out = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return out, form, tokens.count(out, model), tokens.count(text, model)

    async def on_reply(self, x: Exchange, data: bytes) -> tuple[bytes, dict[str, Any] | None]:
        try:
            parsed = json.loads(data)
            if not isinstance(parsed, dict):
                raise ValueError("the answer is not a JSON object")
        except ValueError:
            parsed = None
        if parsed is None and not self.retried:
            return self._retry(x, ValueError("the answer is not a JSON object"))
        if self.retried or parsed is None:  # the retry's answer: as it is
            if parsed is not None:
                text, _ = self._answer_text(parsed)
                if text is not None:
                    n = tokens.count(text, x.model)
                    x.record.set_output_tokens(n, n, "json-retry")
            return self._deliver(x, parsed, data), None
        text, holder = self._answer_text(parsed)
        if text is None:  # tool calls, a refusal: nothing to decode
            return self._deliver(x, parsed, data), None
        try:
            if len(text) > _OFF_LOOP_CHARS:
                out, form, raw, sent = await asyncio.to_thread(self._decode, text, x.model)
            else:
                out, form, raw, sent = self._decode(text, x.model)
        except Exception as exc:
            return self._retry(x, exc)
        x.record.set_output_tokens(raw, sent, form)
        if self.protocol == _CHAT:
            holder["content"] = out
        else:
            holder["text"] = out
        return self._deliver(x, parsed, data), None

    def _retry(self, x: Exchange, exc: BaseException) -> tuple[bytes, dict[str, Any]]:
        """Ask again with the client's format; the failed attempt is overhead."""
        self.retried = True
        hop = x.hops[-1] if x.hops else None
        if hop is not None:
            self.overhead += (hop.prompt_tokens or 0) + (hop.completion_tokens or 0)
        reason = f"TOON answer rejected, retried: {type(exc).__name__}: {exc}"[:500]
        x.record.fail_open.append(FailOpen(stage="output", reason=reason))
        _log.info("toon_answer_rejected", reason=reason)
        return b"", self._retry_body(x)

    def finish(self, x: Exchange) -> None:
        """The failed attempt's tokens into the record's overhead."""
        x.record.compression_overhead_tokens += self.overhead
