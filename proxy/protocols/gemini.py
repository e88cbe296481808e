"""Gemini's native API (``/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import msgspec

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._base import (
    Adapter,
    Prompt,
    Segment,
    SSESplitter,
    StreamSniffer,
    Turn,
    Usage,
    decode_json_object,
    digest,
    sse_data,
)

_STATUS_NAMES: Mapping[int, str] = {
    400: "INVALID_ARGUMENT",
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


class GeminiSniffer(StreamSniffer):
    """Reads usage from ``streamGenerateContent``: SSE (``alt=sse``) or a streamed JSON array.
    Every chunk is forwarded unchanged as it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self._events = SSESplitter()
        self._sse: bool | None = None
        self._array: list[bytes] = []

    def _record(self, response: _Response) -> None:
        if response.usageMetadata is not None:
            self.usage = _to_usage(response.usageMetadata)
        for cand in response.candidates:
            reason = cand.get("finishReason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)

    def feed(self, chunk: bytes) -> bytes:
        if self._sse is None and chunk.strip():
            self._sse = chunk.lstrip().startswith(b"data:")
        if self._sse:
            for event in self._events.feed(chunk):
                data = sse_data(event)
                if data and (b"usageMetadata" in data or b"finishReason" in data):
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        self._record(_response_decoder.decode(data))
        else:
            self._array.append(chunk)
        return chunk

    def close(self) -> bytes:
        if self._array:
            try:
                for response in _array_decoder.decode(b"".join(self._array)):
                    self._record(response)
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
        return b""


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class GeminiAdapter(Adapter):
    """Adapter for Gemini ``generateContent`` / ``streamGenerateContent``."""

    protocol: ClassVar[Literal["openai", "gemini"]] = "gemini"

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

    def summary_message(self, text: str) -> dict[str, Any]:
        return {"role": "user", "parts": [{"text": text}]}

    def usage(self, body: bytes) -> Usage:
        try:
            return _to_usage(_response_decoder.decode(body).usageMetadata)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Usage()

    def sniffer(self, body: Mapping[str, Any], injected_usage: bool) -> StreamSniffer:
        return GeminiSniffer()

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
