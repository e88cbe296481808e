"""Gemini's native API (``/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``)."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec

from compressors import tokens
from proxy.exceptions import BadRequest, ProxyHTTPError
from proxy.protocols._base import (
    Adapter,
    Call,
    ModelTurn,
    Prompt,
    RetrievalSniffer,
    Segment,
    SSESplitter,
    StreamSniffer,
    ToolSpec,
    Turn,
    Usage,
    add_usage,
    anchor_digest,
    decode_json_object,
    digest,
    encode_json,
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


class JSONArraySplitter:
    """Splits a streamed top-level JSON array into its elements' bytes as each completes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # next byte to scan
        self._start: int | None = None  # start of the element being read
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._opened = False

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        buf = self._buf
        i = self._pos
        while i < len(buf):
            c = buf[i]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:  # backslash
                    self._escape = True
                elif c == 0x22:
                    self._in_string = False
            elif not self._opened:
                if c == 0x5B:  # the array's [
                    self._opened = True
            elif c == 0x22:
                self._in_string = True
                if self._start is None:
                    self._start = i
            elif c in (0x7B, 0x5B):  # { [
                if self._start is None:
                    self._start = i
                self._depth += 1
            elif c in (0x7D, 0x5D):  # } ]
                if self._depth == 0:  # the array's closing ]
                    i += 1
                    continue
                self._depth -= 1
                if self._depth == 0 and self._start is not None:
                    yield bytes(buf[self._start : i + 1])
                    self._start = None
            i += 1
        if self._start is None:  # nothing pending: drop what was scanned
            del buf[:i]
            i = 0
        self._pos = i


class GeminiRetrievalSniffer(RetrievalSniffer):
    """:class:`RetrievalSniffer` for ``streamGenerateContent``: SSE (``alt=sse``) or a JSON
    array (re-framed as ``[`` + elements joined by ``,\\r\\n`` + ``]``)."""

    def __init__(
        self, tool: str, *, drop_usage_chunk: bool, prior: Mapping[str, Any] | None, allow_round: bool
    ) -> None:
        super().__init__(tool, drop_usage_chunk=drop_usage_chunk, prior=prior, allow_round=allow_round)
        self._sse: bool | None = None
        self._events = SSESplitter()
        self._array = JSONArraySplitter()
        self._emitted = 0  # array elements sent so far
        self._parts: list[Any] = []  # every part of the answer, in order
        self._sep = b"\r\n\r\n"

    def turn(self) -> ModelTurn:
        return ModelTurn(
            message={"role": "model", "parts": list(self._parts)},
            calls=[_call(p) for p in self._parts if _fcall(p) is not None],
            usage=self.usage_raw,
        )

    def ours(self) -> list[Call]:
        return [_call(p) for p in self._parts if _is_ours(p, self.tool)]

    def client_calls(self) -> int:
        return sum(1 for p in self._parts if _fcall(p) is not None and not _is_ours(p, self.tool))

    def client_message(self) -> tuple[str, list[tuple[str, str, str]]]:
        return _client_view(self._parts, self.tool)

    def _observe(self, response: Any) -> None:
        if not isinstance(response, dict):
            return
        meta = response.get("usageMetadata")
        decided: str | None = None
        if isinstance(meta, dict):
            self.usage_raw = meta
            with contextlib.suppress(msgspec.ValidationError):
                self.usage = _to_usage(msgspec.convert(meta, _UsageMeta))
        cands = response.get("candidates")
        if not isinstance(cands, list) or not cands:
            decided = "other"
        cand = _candidate(response)
        for part in _parts_of(cand):
            self._parts.append(part)
            if _fcall(part) is not None:
                decided = decided or ("ours" if _is_ours(part, self.tool) else "call")
            elif isinstance(part, dict) and _visible_text([part]):
                decided = decided or "text"
        if cand is not None and isinstance(cand.get("finishReason"), str):
            self.finish_reasons.append(cand["finishReason"])
            decided = decided or "finish"
        if self.mode == "undecided" and decided is not None:
            self.mode = "consume" if decided == "ours" and self.allow_round else "relay"

    def _rewrite(self, raw: bytes, response: Any) -> bytes | None:
        """One element / event as the client gets it; None: drop it."""
        if not isinstance(response, dict):
            return raw
        changed = False
        cand = _candidate(response)
        parts = _parts_of(cand)
        if any(_is_ours(p, self.tool) for p in parts):
            kept = [p for p in parts if not _is_ours(p, self.tool)]
            finishing = cand is not None and "finishReason" in cand
            if not kept and not finishing:
                return None
            assert cand is not None
            cand["content"]["parts"] = kept or [{"text": ""}]
            changed = True
        meta = response.get("usageMetadata")
        if self.prior and isinstance(meta, dict):
            response["usageMetadata"] = add_usage(meta, self.prior)
            changed = True
        if not changed:
            return raw
        data = encode_json(response)
        return b"data: " + data + self._sep if self._sse else data

    def _release(self, items: list[tuple[bytes, Any]]) -> bytes:
        out = []
        for raw, response in items:
            data = self._rewrite(raw, response)
            if data is None:
                continue
            if not self._sse:
                data = (b"[" if self._emitted == 0 else b",\r\n") + data
                self._emitted += 1
            out.append(data)
        return b"".join(out)

    def _items(self, chunk: bytes) -> Iterator[tuple[bytes, Any]]:
        if self._sse is None and chunk.strip():
            self._sse = chunk.lstrip().startswith(b"data:")
        if self._sse:
            for event in self._events.feed(chunk):
                if b"\r\n\r\n" not in event:
                    self._sep = b"\n\n"
                data = sse_data(event)
                yield event, self._decode(data) if data else None
        elif self._sse is False:
            for element in self._array.feed(chunk):
                yield element, self._decode(element)

    @staticmethod
    def _decode(data: bytes) -> Any:
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError:
            return None

    def _rest(self) -> tuple[bytes, Any] | None:
        if self._sse and (rest := self._events.rest()):
            data = sse_data(rest)
            return rest, self._decode(data) if data else None
        return None

    def _finishing(self, parsed: Any) -> bool:
        return isinstance(c := _candidate(parsed), dict) and "finishReason" in c

    def _end(self) -> bytes:
        if self._sse is False:
            return b"]" if self._emitted else b"[]"
        return b""


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

    def client_message(self, data: bytes, tool: str) -> tuple[str, list[tuple[str, str, str]]]:
        found = self._response(data)
        return _client_view(_parts_of(found[1]), tool) if found else ("", [])

    def follow_up(
        self, body: Mapping[str, Any], turn: ModelTurn, answers: Sequence[tuple[Call, str]]
    ) -> dict[str, Any]:
        parts = [self._response_part(call.name, call.id, text) for call, text in answers]
        return {**body, "contents": [*body["contents"], turn.message, {"role": "user", "parts": parts}]}

    @staticmethod
    def _response_part(name: str, call_id: str | None, text: str) -> dict[str, Any]:
        resp: dict[str, Any] = {"name": name}
        if call_id:
            resp["id"] = call_id
        resp["response"] = {"content": text}
        return {"functionResponse": resp}

    def assistant_anchors(self, body: Mapping[str, Any]) -> list[tuple[int, str]]:
        out = []
        for i, block in enumerate(body["contents"]):
            if block.get("role") == "model":
                text, calls = _client_view(block.get("parts") or [], "")
                out.append((i, anchor_digest(text, calls)))
        return out

    def insert_answers(
        self, body: dict[str, Any], index: int, calls: Sequence[Any], answers: Sequence[str]
    ) -> None:
        contents = body["contents"]
        block = contents[index]
        block["parts"] = [*(block.get("parts") or []), *copy.deepcopy(list(calls))]
        parts = []
        for part, text in zip(calls, answers, strict=True):
            fc = _fcall(part) or {}
            parts.append(self._response_part(str(fc.get("name", "")), fc.get("id"), text))
        nxt = contents[index + 1] if index + 1 < len(contents) else None
        if isinstance(nxt, dict) and nxt.get("role", "user") == "user":
            rest = nxt.get("parts") or []
            n = 0  # after the function responses already there, before the user's own text
            while n < len(rest) and isinstance(rest[n], dict) and "functionResponse" in rest[n]:
                n += 1
            nxt["parts"] = [*rest[:n], *parts, *rest[n:]]
        else:
            contents.insert(index + 1, {"role": "user", "parts": parts})

    def retrieval_sniffer(
        self, tool: str, *, drop_usage_chunk: bool, prior: Mapping[str, Any] | None, allow_round: bool
    ) -> RetrievalSniffer:
        return GeminiRetrievalSniffer(
            tool, drop_usage_chunk=drop_usage_chunk, prior=prior, allow_round=allow_round
        )
