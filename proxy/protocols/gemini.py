"""Gemini's native API (``/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._adapter import Adapter, Route
from proxy.protocols._answer import Call, ModelTurn, ToolSpec, Usage, add_usage
from proxy.protocols._codec import decode_json_object, digest, encode_json
from proxy.protocols._prompt import Prompt, Segment, Turn
from proxy.protocols._stream import HopStream, JSONArraySplitter, SSESplitter, StreamEvent, sse_data

__all__ = ["GeminiAdapter", "GeminiStream"]

_GEMINI_PREFIXES = ("/v1beta/", "/v1alpha/", "/upload/")

_STATUS_NAMES: Mapping[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _UsageMeta(msgspec.Struct):
    promptTokenCount: int | None = None
    candidatesTokenCount: int | None = None
    cachedContentTokenCount: int | None = None


class _Response(msgspec.Struct):
    usageMetadata: _UsageMeta | None = None
    candidates: list[dict[str, Any]] = msgspec.field(default_factory=list)


_response_decoder = msgspec.json.Decoder(_Response)
_array_decoder = msgspec.json.Decoder(list[_Response])


def _to_usage(meta: _UsageMeta | None) -> Usage:
    if meta is None:
        return Usage()
    return Usage(
        prompt_tokens=meta.promptTokenCount,
        completion_tokens=meta.candidatesTokenCount,
        cached_tokens=meta.cachedContentTokenCount or 0 if meta.promptTokenCount is not None else None,
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _fcall(part: Any) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        return None
    fc = part.get("functionCall", part.get("function_call"))
    return fc if isinstance(fc, dict) else None


def _is_ours(part: Any, tool: str) -> bool:
    fc = _fcall(part)
    return fc is not None and fc.get("name") == tool


def _call(part: dict[str, Any]) -> Call:
    fc = _fcall(part) or {}
    return Call(
        name=str(fc.get("name", "")),
        arguments=_compact(fc.get("args") or {}),
        id=fc.get("id") if isinstance(fc.get("id"), str) else None,
        raw=part,
    )


def _visible_text(parts: Sequence[Any]) -> str:
    return "".join(
        p["text"]
        for p in parts
        if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
    )


def _client_view(parts: Sequence[Any], tool: str) -> tuple[str, list[tuple[str, str, str]]]:
    calls = [
        ("", str(fc.get("name", "")), _canonical(fc.get("args") or {}))
        for p in parts
        if (fc := _fcall(p)) is not None and fc.get("name") != tool
    ]
    return _visible_text(parts), calls


def _candidate(response: Any) -> dict[str, Any] | None:
    cands = response.get("candidates") if isinstance(response, dict) else None
    if isinstance(cands, list) and len(cands) == 1 and isinstance(cands[0], dict):
        return cands[0]
    return None


def _parts_of(cand: dict[str, Any] | None) -> list[Any]:
    content = cand.get("content") if cand is not None else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _plain_text(part: Any) -> bool:
    return isinstance(part, dict) and part.keys() == {"text"} and isinstance(part["text"], str)


class GeminiStream(HopStream):
    """``streamGenerateContent``: SSE (``alt=sse``) or a streamed JSON array, whose elements
    are re-framed as ``[`` + elements joined by ``,\\r\\n`` + ``]`` when any is rendered anew.
    Each element is a whole response with one candidate; nocp's own ``functionCall`` parts are
    taken out when rendering, and a continuing hop takes the client stream's ``responseId``."""

    def __init__(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> None:
        super().__init__(tool, drop_usage_chunk=drop_usage_chunk, after=after)
        prev = after if isinstance(after, GeminiStream) else None
        self._sse: bool | None = prev._sse if prev is not None else None
        self._sep: bytes = prev._sep if prev is not None else b"\r\n\r\n"
        self._events = SSESplitter()
        self._array = JSONArraySplitter()
        self._raw_array: list[bytes] = []
        self._parts: list[Any] = []  # every part of the answer, in order
        self.response_id: str | None = prev.response_id if prev is not None else None

    def _event(self, raw: bytes, data: bytes | None) -> StreamEvent:
        event, response = self._parsed(raw, data, (b"usageMetadata", b"finishReason"))
        if response is None:
            return event
        if self.response_id is None and isinstance(response.get("responseId"), str):
            self.response_id = response["responseId"]
        meta = response.get("usageMetadata")
        if isinstance(meta, dict):
            event.usage = True
            self.usage_raw = meta
            with contextlib.suppress(msgspec.ValidationError):
                self.usage = _to_usage(msgspec.convert(meta, _UsageMeta))
        cand = _candidate(response)
        calls: list[str] = []
        for part in _parts_of(cand):
            if (fc := _fcall(part)) is not None:
                calls.append(str(fc.get("name", "")))
            elif isinstance(part, dict):
                event.text += _visible_text([part])
            self._parts.append(part)
        event.calls = tuple(calls)
        if cand is not None and isinstance(cand.get("finishReason"), str):
            self.finish_reasons.append(cand["finishReason"])
            event.finishing = True
        return event

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        if self._sse is None and chunk.strip():
            self._sse = chunk.lstrip().startswith(b"data:")
        if self._sse:
            out = []
            for raw in self._events.feed(chunk):
                if b"\r\n\r\n" not in raw:
                    self._sep = b"\n\n"
                out.append(self._event(raw, sse_data(raw)))
            return out
        if self._sse is False:
            if self.passthrough:  # usage only: read the array whole at the end
                self._raw_array.append(chunk)
                return [StreamEvent(chunk)]
            return [self._event(element, element) for element in self._array.feed(chunk)]
        return []

    def close(self) -> list[StreamEvent]:
        if self._sse and (rest := self._events.rest()).strip():
            return [self._event(rest, sse_data(rest))]
        if self._raw_array:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                for response in _array_decoder.decode(b"".join(self._raw_array)):
                    if response.usageMetadata is not None:
                        self.usage = _to_usage(response.usageMetadata)
                    for cand in response.candidates:
                        if isinstance(reason := cand.get("finishReason"), str):
                            self.finish_reasons.append(reason)
        return []

    def calls(self) -> list[Call]:
        return [_call(p) for p in self._parts if _fcall(p) is not None]

    def text(self) -> str:
        return _visible_text(self._parts)

    def turn(self) -> ModelTurn:
        parts: list[Any] = []  # streamed text pieces joined, as a client keeps them
        for part in self._parts:
            if parts and _plain_text(part) and _plain_text(parts[-1]):
                parts[-1] = {"text": parts[-1]["text"] + part["text"]}
            else:
                parts.append(part)
        return ModelTurn(message={"role": "model", "parts": parts}, calls=self.calls(), usage=self.usage_raw)

    def render(self, event: StreamEvent, prior: Mapping[str, Any] | None) -> bytes | None:
        response = event.data
        data: bytes | None = None
        if isinstance(response, dict):
            changed = False
            cand = _candidate(response)
            parts = _parts_of(cand)
            if self.tool is not None and any(_is_ours(p, self.tool) for p in parts):
                kept = [p for p in parts if not _is_ours(p, self.tool)]
                if not kept and not event.finishing and not event.usage:
                    return None
                assert cand is not None
                cand["content"]["parts"] = kept or [{"text": ""}]
                changed = True
            if (
                self.continues
                and self.response_id
                and response.get("responseId") not in (None, self.response_id)
            ):
                response["responseId"] = self.response_id
                changed = True
            meta = response.get("usageMetadata")
            if prior and isinstance(meta, dict):
                response["usageMetadata"] = add_usage(meta, prior)
                changed = True
            if changed:
                data = encode_json(response)
        if self._sse is False and not self.passthrough:  # a re-framed array element
            element = data if data is not None else event.raw
            self.emitted += 1
            return (b"[" if self.emitted == 1 else b",\r\n") + element
        self.emitted += 1
        if data is None:
            return event.raw
        return b"data: " + data + self._sep

    def end(self) -> bytes:
        if self._sse is False and not self.passthrough:
            return b"]" if self.emitted else b"[]"
        return b""


class GeminiAdapter(Adapter):
    """Adapter for Gemini ``generateContent`` / ``streamGenerateContent``."""

    protocol: ClassVar[str] = "gemini"
    upstream_protocol: ClassVar[str] = "gemini"
    routes: ClassVar[tuple[Route, ...]] = (
        (
            "POST",
            r"/{version:v1beta|v1alpha|v1}/models/{model:[^/:]+}:{method:generateContent|streamGenerateContent}",
        ),
    )

    def parse(self, body: bytes, match_info: Mapping[str, str]) -> dict[str, Any]:
        data = decode_json_object(body)
        contents = data.get("contents")
        if not isinstance(contents, list):
            raise BadRequest("'contents' is required and must be an array", param="contents")
        for i, block in enumerate(contents):
            if not isinstance(block, dict) or not isinstance(block.get("parts", []), list):
                raise BadRequest(f"contents[{i}] must be an object with a 'parts' array", param="contents")
        system = data.get("systemInstruction", data.get("system_instruction"))
        if system is not None and not isinstance(system, dict):
            raise BadRequest("'systemInstruction' must be an object", param="systemInstruction")
        return data

    def model(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> str:
        return match_info["model"]

    def is_stream(self, body: Mapping[str, Any], match_info: Mapping[str, str]) -> bool:
        return match_info.get("method") == "streamGenerateContent"

    def prompt(self, body: Mapping[str, Any], *, turns: bool = True) -> Prompt:
        segs: list[Segment] = []
        system_key = "systemInstruction" if "systemInstruction" in body else "system_instruction"
        system = body.get(system_key)
        if isinstance(system, dict):
            for j, part in enumerate(system.get("parts") or ()):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    segs.append(
                        Segment(
                            kind="system",
                            index=-1,
                            path=(system_key, "parts", j, "text"),
                            text=part["text"],
                            role="system",
                        )
                    )
        last_args: dict[str, str] = {}
        turn_list: list[Turn] = []
        for i, block in enumerate(body["contents"]):
            role = str(block.get("role", "user"))
            if turns:
                parts = block.get("parts") or ()
                is_result = any(isinstance(p, dict) and "functionResponse" in p for p in parts)
                turn_list.append(Turn(index=i, role=role, tool_result=is_result, digest=digest(block)))
            for j, part in enumerate(block.get("parts") or ()):
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    kind: Literal["user", "assistant"] = "assistant" if role == "model" else "user"
                    segs.append(
                        Segment(
                            kind=kind,
                            index=i,
                            path=("contents", i, "parts", j, "text"),
                            text=part["text"],
                            role=role,
                        )
                    )
                elif isinstance(part.get("functionCall"), dict):
                    call = part["functionCall"]
                    last_args[str(call.get("name"))] = _compact(call.get("args", {}))
                elif isinstance(part.get("functionResponse"), dict):
                    segs.append(self._response_segment(part["functionResponse"], i, j, role, last_args))
        return Prompt(segments=tuple(segs), turns=tuple(turn_list))

    @staticmethod
    def _response_segment(resp: dict[str, Any], i: int, j: int, role: str, args: dict[str, str]) -> Segment:
        name = str(resp.get("name", ""))
        value = resp.get("response")
        base = ("contents", i, "parts", j, "functionResponse", "response")
        if isinstance(value, dict) and len(value) == 1:
            ((key, inner),) = value.items()
            if isinstance(inner, str):
                return Segment(
                    kind="tool_output",
                    index=i,
                    path=(*base, key),
                    text=inner,
                    role=role,
                    tool_name=name,
                    tool_args=args.get(name, ""),
                )
        return Segment(
            kind="tool_output",
            index=i,
            path=base,
            text=_compact(value),
            role=role,
            tool_name=name,
            tool_args=args.get(name, ""),
            as_json=True,
        )

    turns_key: ClassVar[str] = "contents"
    alternating_turns: ClassVar[bool] = True

    def summary_message(self, text: str) -> dict[str, Any]:
        return {"role": "user", "parts": [{"text": text}]}

    def usage(self, body: bytes) -> Usage:
        try:
            return _to_usage(_response_decoder.decode(body).usageMetadata)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Usage()

    def hop_stream(
        self, tool: str | None, *, drop_usage_chunk: bool = False, after: HopStream | None = None
    ) -> HopStream:
        return GeminiStream(tool, drop_usage_chunk=drop_usage_chunk, after=after)

    def claims(self, path: str, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        return path.startswith(_GEMINI_PREFIXES) or "x-goog-api-key" in headers or "key" in query

    def merge_turns(self, prev: dict[str, Any], nxt: dict[str, Any]) -> dict[str, Any]:
        """Parts joined in order (Gemini rejects same-role turns in a row), the first turn's
        other fields kept."""
        return {**prev, "parts": [*(prev.get("parts") or []), *(nxt.get("parts") or [])]}

    def count_prompt(self, body: Mapping[str, Any], model: str) -> int:
        return tokens.count_gemini_request(body)

    def error_body(self, err: ProxyHTTPError) -> dict[str, Any]:
        return {
            "error": {
                "code": err.status,
                "message": err.message,
                "status": _STATUS_NAMES.get(err.status, "UNKNOWN"),
            }
        }

    # --- retrieval

    def retrieval_blocker(self, body: Mapping[str, Any], tool: str) -> str | None:
        if body.get("cachedContent") or body.get("cached_content"):
            return "cachedContent (its tools are fixed)"
        gen = body.get("generationConfig", body.get("generation_config"))
        if isinstance(gen, dict):
            count = gen.get("candidateCount", gen.get("candidate_count"))
            if isinstance(count, int) and count > 1:
                return "candidateCount > 1"
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            return "tools is not a list"
        for t in tools or ():
            if not isinstance(t, dict) or set(t) - {"functionDeclarations", "function_declarations"}:
                return "built-in tools"
            for decl in t.get("functionDeclarations", t.get("function_declarations")) or ():
                if isinstance(decl, dict) and decl.get("name") == tool:
                    return f"the client has a tool named {tool}"
        config = body.get("toolConfig", body.get("tool_config"))
        fcc = (
            config.get("functionCallingConfig", config.get("function_calling_config"))
            if isinstance(config, dict)
            else None
        )
        if isinstance(fcc, dict):
            if str(fcc.get("mode", "")).upper() == "NONE":
                return "function calling mode NONE"
            if fcc.get("allowedFunctionNames") or fcc.get("allowed_function_names"):
                return "allowedFunctionNames restricts tools"
        return None

    def add_tool(self, body: dict[str, Any], spec: ToolSpec) -> None:
        decl = {
            "name": spec.name,
            "description": spec.description,
            "parameters": {
                "type": "OBJECT",
                "properties": {n: {"type": "STRING", "description": d} for n, d in spec.parameters},
                "required": list(spec.required),
            },
        }
        tools = body.get("tools")
        if isinstance(tools, list):
            for t in tools:
                for key in ("functionDeclarations", "function_declarations"):
                    if isinstance(t, dict) and isinstance(t.get(key), list):
                        t[key] = [*t[key], decl]
                        return
        body["tools"] = [*(tools or []), {"functionDeclarations": [decl]}]

    @staticmethod
    def _response(data: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
        try:
            parsed = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return None
        cand = _candidate(parsed)
        return (parsed, cand) if cand is not None else None

    def model_turn(self, data: bytes) -> ModelTurn | None:
        found = self._response(data)
        if found is None:
            return None
        parsed, cand = found
        parts = _parts_of(cand)
        meta = parsed.get("usageMetadata")
        return ModelTurn(
            message={"role": "model", "parts": list(parts)},
            calls=[_call(p) for p in parts if _fcall(p) is not None],
            usage=meta if isinstance(meta, dict) else None,
        )

    def client_reply(self, data: bytes, tool: str, prior: Mapping[str, Any] | None) -> bytes:
        found = self._response(data)
        if found is None:
            return data
        parsed, cand = found
        parts = _parts_of(cand)
        if any(_is_ours(p, tool) for p in parts):
            cand["content"]["parts"] = [p for p in parts if not _is_ours(p, tool)] or [{"text": ""}]
        if prior and isinstance(parsed.get("usageMetadata"), dict):
            parsed["usageMetadata"] = add_usage(parsed["usageMetadata"], prior)
        return encode_json(parsed)

    def intercepts(self, body: Mapping[str, Any], tool: str) -> bool:
        blocker = self.retrieval_blocker(body, tool)
        return blocker is None or blocker.startswith(("function calling", "allowedFunctionNames", "built-in"))

    def remove_tool(self, body: dict[str, Any], tool: str, *, forbid_calls: bool) -> None:
        tools = []
        for t in body.get("tools") or ():
            if isinstance(t, dict):
                for key in ("functionDeclarations", "function_declarations"):
                    if isinstance(t.get(key), list):
                        decls = [d for d in t[key] if not (isinstance(d, dict) and d.get("name") == tool)]
                        t = {**t, key: decls}
                        if not decls and len(t) == 1:
                            t = {}
            if t:
                tools.append(t)
        if tools:
            body["tools"] = tools
        else:
            body.pop("tools", None)
        if forbid_calls and tools:
            mode = (
                ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
                if isinstance(body.get("toolConfig"), dict)
                else None
            )
            if str(mode or "").upper() != "ANY":
                body["toolConfig"] = {"functionCallingConfig": {"mode": "NONE"}}

    def tool_results(self, answers: Sequence[tuple[Call, str]]) -> list[dict[str, Any]]:
        return [{"role": "user", "parts": [self._response_part(c.name, c.id, text) for c, text in answers]}]

    @staticmethod
    def _response_part(name: str, call_id: str | None, text: str) -> dict[str, Any]:
        resp: dict[str, Any] = {"name": name}
        if call_id:
            resp["id"] = call_id
        resp["response"] = {"content": text}
        return {"functionResponse": resp}

    def client_view(
        self, turns: Sequence[Mapping[str, Any]], tool: str
    ) -> tuple[str, list[tuple[str, str, str]]]:
        return _client_view([p for block in turns for p in block.get("parts") or []], tool)

    def visible_turns(self, text: str, calls: Sequence[Call]) -> list[dict[str, Any]]:
        parts: list[Any] = [{"text": text}] if text else []
        return [{"role": "model", "parts": [*parts, *(c.raw for c in calls)]}]

    def assistant_spans(self, body: Mapping[str, Any]) -> list[tuple[int, int]]:
        return [(i, i + 1) for i, block in enumerate(body["contents"]) if block.get("role") == "model"]
