"""Bad requests get a 4xx in the protocol's own error shape and never reach the upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from proxy.testing import FakeUpstream

OPENAI_PATH = "/v1/chat/completions"
GEMINI_PATH = "/v1beta/models/gemini-2.5-flash:generateContent"


def _assert_openai_error(body: Any) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]


def _assert_gemini_error(body: Any, status: int) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "status"}
    assert body["error"]["code"] == status


CASES = [
    pytest.param(OPENAI_PATH, b"{not json", 400, id="openai-not-json"),
    pytest.param(OPENAI_PATH, b"[1, 2]", 400, id="openai-not-object"),
    pytest.param(OPENAI_PATH, b'{"model": "gpt-4o", "messages": "hi"}', 400, id="openai-messages-string"),
    pytest.param(OPENAI_PATH, b'{"model": "gpt-4o"}', 400, id="openai-messages-missing"),
    pytest.param(
        OPENAI_PATH,
        b'{"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}',
        400,
        id="openai-content-int",
    ),
    pytest.param(OPENAI_PATH, b'{"model": 4, "messages": []}', 400, id="openai-model-not-string"),
    pytest.param(OPENAI_PATH, b"\xff\xfe\x00garbage", 400, id="openai-binary"),
    pytest.param(GEMINI_PATH, b"{not json", 400, id="gemini-not-json"),
    pytest.param(GEMINI_PATH, b'{"contents": {"parts": []}}', 400, id="gemini-contents-object"),
    pytest.param(GEMINI_PATH, b'{"contents": [{"parts": "x"}]}', 400, id="gemini-parts-string"),
]


@pytest.mark.parametrize(("path", "body", "status"), CASES)
async def test_bad_body_rejected_in_protocol_shape(
    fake: FakeUpstream, make_proxy: Any, path: str, body: bytes, status: int
) -> None:
    """A malformed body gets a 400 in the protocol's error shape and never reaches the upstream."""
    proxy = await make_proxy()
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.url + path, data=body, headers={"Content-Type": "application/json"}) as r,
    ):
        assert r.status == status
        payload = await r.json()
    if path == OPENAI_PATH:
        _assert_openai_error(payload)
    else:
        _assert_gemini_error(payload, status)
    assert fake.requests == []
    (line,) = await proxy.log_lines(1)
    assert line["outcome"] == "client_error" and line["status"] == status


@pytest.mark.parametrize("path", [OPENAI_PATH, GEMINI_PATH])
async def test_oversized_body_gets_413(fake: FakeUpstream, make_proxy: Any, path: str) -> None:
    """A body over server.max_body_bytes gets a 413 and never reaches the upstream."""
    proxy = await make_proxy(server={"max_body_bytes": 1000})
    big = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
    async with aiohttp.ClientSession() as s, s.post(proxy.url + path, data=big) as r:
        assert r.status == 413
        payload = await r.json()
    assert "limit" in payload["error"]["message"]
    assert fake.requests == []


async def test_oversized_chunked_body_gets_413(fake: FakeUpstream, make_proxy: Any) -> None:
    """A chunked body without Content-Length is cut off at the limit with a 413."""
    proxy = await make_proxy(server={"max_body_bytes": 1000})

    async def gen() -> Any:
        for _ in range(10):
            yield b"x" * 500

    async with aiohttp.ClientSession() as s, s.post(proxy.url + OPENAI_PATH, data=gen()) as r:
        assert r.status == 413
    assert fake.requests == []


async def test_unknown_model_gets_404_naming_it(fake: FakeUpstream, make_proxy: Any) -> None:
    """A model no upstream serves gets a 404 that names the model."""
    proxy = await make_proxy(upstreams=[{"name": "o", "base_url": f"{fake.url}/v1", "models": ["gpt-*"]}])
    body = {"model": "llama-3-70b", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(proxy.url + OPENAI_PATH, json=body) as r:
        assert r.status == 404
        payload = await r.json()
    _assert_openai_error(payload)
    assert "llama-3-70b" in payload["error"]["message"]
    assert payload["error"]["code"] == "model_not_found"
    async with aiohttp.ClientSession() as s, s.post(proxy.url + GEMINI_PATH, json={"contents": []}) as r:
        assert r.status == 404
        _assert_gemini_error(await r.json(), 404)
    assert fake.requests == []


async def test_lone_surrogate_escape_is_accepted(fake: FakeUpstream, make_proxy: Any) -> None:
    """A body with a lone UTF-16 surrogate escape (a cut emoji) is forwarded for the upstream to judge."""
    proxy = await make_proxy()
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "cut \\ud83d emoji"}]}'
    async with aiohttp.ClientSession() as s:
        async with s.post(fake.url + OPENAI_PATH, data=body) as r:
            direct = r.status, await r.read()
        async with s.post(proxy.url + OPENAI_PATH, data=body) as r:
            assert (r.status, await r.read()) == direct
    assert len(fake.requests) == 2 and fake.requests[-1].body == body
    (line,) = await proxy.log_lines(1)
    assert line["raw_input_tokens"] > 0 and line["outcome"] != "client_error"
