"""Client keys, per-key limits, admin endpoints and the open-relay guard (issue 14, item 2)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import cli
from proxy.auth import LocalLimiter, hash_key, strip_credentials
from proxy.config import load_settings
from proxy.exceptions import ConfigError
from proxy.pipeline import StageContext
from proxy.protocols import Prompt
from proxy.testing import FakeUpstream
from tests.helpers import RedisProcess, free_port

KEY_A, KEY_A2, KEY_B, ADMIN = "nocp-key-a", "nocp-key-a2", "nocp-key-b", "nocp-admin"
OPERATOR = "sk-operator-own"
CHAT: Any = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
GEMINI: Any = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
AV = {"anthropic-version": "2023-06-01"}
ANTHROPIC: Any = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


def auth_section(**extra: Any) -> dict[str, Any]:
    keys = [
        {"tenant": "team-a", "key_sha256": hash_key(KEY_A)},
        {"tenant": "team-a", "key_sha256": hash_key(KEY_A2)},
        {"tenant": "team-b", "key_sha256": hash_key(KEY_B)},
    ]
    return {"keys": keys, "admin_key_sha256": hash_key(ADMIN), **extra}


def upstreams(fake: FakeUpstream, keyed: bool = True) -> list[dict[str, Any]]:
    own = {"api_key_env": "NOCP_TEST_OPERATOR_KEY"} if keyed else {}
    return [
        {"name": "o", "base_url": f"{fake.url}/v1", "protocol": "openai", **own},
        {"name": "g", "base_url": fake.url, "protocol": "gemini", **own},
        {"name": "a", "base_url": fake.url, "protocol": "anthropic", **own},
    ]


@pytest.fixture
def operator_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("NOCP_TEST_OPERATOR_KEY", OPERATOR)
    yield


class TenantProbe:
    """A stage that records the tenant of each request."""

    name = "tenant_probe"

    def __init__(self) -> None:
        self.tenants: list[str] = []

    async def __call__(self, prompt: Prompt, ctx: StageContext) -> Prompt:
        self.tenants.append(ctx.tenant)
        return prompt


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    key: str | None = None,
    how: str = "bearer",
    **kw: Any,
) -> tuple[int, Any, Any]:
    headers = dict(kw.pop("headers", {}))
    if key is not None and how == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    elif key is not None:
        headers[how] = key
    async with http.request(method, url, headers=headers, **kw) as resp:
        body = (
            await resp.json(content_type=None)
            if resp.content_type == "application/json"
            else await resp.read()
        )
        return resp.status, body, resp.headers


async def test_no_or_unknown_key_gets_401_in_each_protocols_shape(
    fake: FakeUpstream, make_proxy: Any, operator_key: None
) -> None:
    """With client keys configured, a request with no key or an unknown one gets 401 in its
    protocol's error shape, on rewritten, passthrough and WebSocket paths; none reaches the upstream."""
    proxy = await make_proxy(upstreams=upstreams(fake), auth=auth_section())
    u = proxy.url
    async with aiohttp.ClientSession() as http:
        for key in (None, "sk-wrong"):
            status, body, _ = await call(http, "POST", f"{u}/v1/chat/completions", key=key, json=CHAT)
            assert status == 401 and body["error"]["code"] in ("missing_api_key", "invalid_api_key")
            assert body["error"]["type"] == "invalid_request_error"
            status, body, _ = await call(http, "GET", f"{u}/v1/files", key=key)
            assert status == 401 and "message" in body["error"]
            status, body, _ = await call(http, "DELETE", f"{u}/v1/files/file-1", key=key)
            assert status == 401 and "message" in body["error"]
            status, body, _ = await call(
                http, "POST", f"{u}/v1/messages", key=key, how="x-api-key", json=ANTHROPIC, headers=AV
            )
            assert status == 401 and body["type"] == "error"
            assert body["error"]["type"] == "authentication_error"
            status, body, _ = await call(
                http, "POST", f"{u}/v1beta/models/gemini-2.5-flash:generateContent", key=key,
                how="x-goog-api-key", json=GEMINI,
            )  # fmt: skip
            assert status == 401 and body["error"]["code"] == 401 and body["error"]["message"]
            status, body, _ = await call(http, "GET", f"{u}/v1beta/files?key={key or ''}")
            assert status == 401 and body["error"]["code"] == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{u}/v1/responses")
        assert err.value.status == 401
    assert fake.requests == []


async def test_known_key_maps_to_tenant_and_upstream_gets_operator_key(
    fake: FakeUpstream, make_proxy: Any, operator_key: None
) -> None:
    """A known key passes: its tenant scopes the request (two keys of one tenant share it), and
    the upstream gets the operator's key, never nocp's (headers and ``?key=`` alike)."""
    probe = TenantProbe()
    proxy = await make_proxy(stages=[probe], upstreams=upstreams(fake), auth=auth_section())
    u = proxy.url
    async with aiohttp.ClientSession() as http:
        for key in (KEY_A, KEY_A2, KEY_B):
            status, _, _ = await call(http, "POST", f"{u}/v1/chat/completions", key=key, json=CHAT)
            assert status == 200
        assert fake.requests[-1].headers["Authorization"] == f"Bearer {OPERATOR}"
        status, _, _ = await call(
            http,
            "POST",
            f"{u}/v1beta/models/gemini-2.5-flash:generateContent?key={KEY_B}&alt=json",
            json=GEMINI,
        )
        assert status == 200
        gemini = fake.requests[-1]
        assert gemini.headers["x-goog-api-key"] == OPERATOR and gemini.query_string == "alt=json"
        status, _, _ = await call(
            http, "POST", f"{u}/v1/messages", key=KEY_A, how="x-api-key", json=ANTHROPIC, headers=AV
        )
        assert status == 200 and fake.requests[-1].headers["x-api-key"] == OPERATOR
        status, _, _ = await call(http, "GET", f"{u}/v1/models", key=KEY_B)
        assert status == 200 and fake.requests[-1].headers["Authorization"] == f"Bearer {OPERATOR}"
    assert probe.tenants == ["team-a", "team-a", "team-b", "team-b", "team-a"]
    sent = [v for r in fake.requests for k, v in r.headers.items() if k.lower() != "host"]
    assert not any(key in v for v in sent for key in (KEY_A, KEY_A2, KEY_B))


async def test_zero_config_passes_clients_own_key(fake: FakeUpstream, make_proxy: Any) -> None:
    """With no api_key_env and no auth section, the client's own key goes upstream and the
    admin endpoints are open, as before."""
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as http:
        status, _, _ = await call(
            http, "POST", f"{proxy.url}/v1/chat/completions", key="sk-client", json=CHAT
        )
        assert status == 200 and fake.requests[-1].headers["Authorization"] == "Bearer sk-client"
        status, _, _ = await call(http, "GET", f"{proxy.url}/v1beta/files?key=AIza-client")
        assert status == 200 and fake.requests[-1].query_string == "key=AIza-client"
        for path in ("/metrics", "/v1/nocp/alerts"):
            async with http.get(proxy.url + path) as resp:
                assert resp.status == 200


def test_refuses_open_relay_unless_allowed(
    tmp_path: Path, operator_key: None, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream with api_key_env and no client keys does not start (a clear error naming the
    fix), unless auth.allow_open_relay or --allow-open-relay says so."""
    keyed = [{"name": "o", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "NOCP_TEST_OPERATOR_KEY"}]
    with pytest.raises(ConfigError, match="allow_open_relay"):
        load_settings(env={}, overrides={"upstreams": keyed})
    assert load_settings(env={}, overrides={"upstreams": keyed, "auth": {"allow_open_relay": True}})
    assert load_settings(env={}, overrides={"upstreams": keyed, "auth": auth_section()})
    config = tmp_path / "nocp.yaml"
    config.write_text(
        "upstreams: [{name: o, base_url: 'http://127.0.0.1:1/v1', api_key_env: NOCP_TEST_OPERATOR_KEY}]\n"
    )
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert "auth.keys" in capsys.readouterr().err
    started: list[Any] = []
    monkeypatch.setattr(cli.web, "run_app", lambda app, **kw: started.append(kw))
    monkeypatch.setattr(cli, "configure_logging", lambda: None)  # leave the process's logging alone
    argv = ["serve", "--config", str(config), "--allow-open-relay", "--log-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert started and started[0]["port"] == 8080


def test_bad_auth_config_names_the_key() -> None:
    """A key hash that is not 64 hex digits, or the same key twice, fails naming the key."""
    with pytest.raises(ConfigError, match=r"auth.keys\[0\].key_sha256"):
        load_settings(env={}, overrides={"auth": {"keys": [{"tenant": "a", "key_sha256": "abc"}]}})
    twice = [{"tenant": t, "key_sha256": hash_key("k")} for t in ("a", "b")]
    with pytest.raises(ConfigError, match="twice"):
        load_settings(env={}, overrides={"auth": {"keys": twice}})
    with pytest.raises(ConfigError, match="admin_key_sha256"):
        load_settings(env={}, overrides={"auth": {"admin_key_sha256": "xyz"}})


def test_hash_key_cli_and_new_key(capsys: Any) -> None:
    """``nocp auth hash-key`` prints the SHA-256 nocp compares; ``new-key`` prints a key and an
    auth.keys entry whose hash is that key's."""
    assert cli.main(["auth", "hash-key", "nocp-abc"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"nocp-abc").hexdigest()
    assert cli.main(["auth", "new-key", "--tenant", "team-x"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert len(key) > 30 and f"key_sha256: {hash_key(key)}" in out.err and "tenant: team-x" in out.err


def test_strip_credentials_removes_only_the_key() -> None:
    """The client's key leaves headers, query and raw path; everything else stays as sent."""
    from multidict import CIMultiDict

    headers = CIMultiDict(
        {"Authorization": "Bearer k", "x-api-key": "k", "x-goog-api-key": "k", "X-Other": "1"}
    )
    out, query, raw = strip_credentials(
        headers, {"key": "k", "alt": "sse"}, "/v1beta/x?key=k&alt=sse&keyword=2"
    )
    assert dict(out) == {"X-Other": "1"} and dict(query) == {"alt": "sse"}
    assert raw == "/v1beta/x?alt=sse&keyword=2"
    assert strip_credentials(headers, {"key": "k"}, "/p?key=k")[2] == "/p"


def test_local_token_bucket_refills() -> None:
    """A bucket of N per minute admits N at once, then one more per 60/N seconds, and says how
    long to wait; a cost above the capacity needs a full bucket."""
    now = [0.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    assert [limiter.take_now("k", [("requests", 3, 1)]) for _ in range(3)] == [0, 0, 0]
    assert limiter.take_now("k", [("requests", 3, 1)]) == pytest.approx(20.0)
    now[0] = 20.0
    assert limiter.take_now("k", [("requests", 3, 1)]) == 0
    assert limiter.take_now("other", [("tokens", 100, 500)]) == 0  # a full bucket
    assert limiter.take_now("other", [("tokens", 100, 1)]) == pytest.approx(0.6)


async def test_rate_limits_answer_429_with_retry_after(
    fake: FakeUpstream, make_proxy: Any, operator_key: None
) -> None:
    """Over its requests/min a key gets 429 with Retry-After in its protocol's shape; another
    key is not affected; a body over the tokens/min budget is limited too."""
    section = auth_section(requests_per_min=2)
    section["keys"][2]["tokens_per_min"] = 1000  # team-b: ~4 KB of body a minute
    proxy = await make_proxy(upstreams=upstreams(fake), auth=section)
    u = proxy.url
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            assert (await call(http, "POST", f"{u}/v1/chat/completions", key=KEY_A, json=CHAT))[0] == 200
        status, body, headers = await call(http, "POST", f"{u}/v1/chat/completions", key=KEY_A, json=CHAT)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert body["error"]["code"] == "rate_limit_exceeded"
        status, body, headers = await call(
            http, "POST", f"{u}/v1/messages", key=KEY_A, json=ANTHROPIC, headers=AV
        )
        assert status == 429 and body["error"]["type"] == "rate_limit_error" and "Retry-After" in headers
        status, body, _ = await call(http, "GET", f"{u}/v1beta/files?key={KEY_A}")
        assert status == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"
        big: Any = {**CHAT, "messages": [{"role": "user", "content": "x" * 8000}]}
        assert (await call(http, "POST", f"{u}/v1/chat/completions", key=KEY_B, json=big))[0] == 200
        status, _, headers = await call(http, "POST", f"{u}/v1/chat/completions", key=KEY_B, json=big)
        assert status == 429 and int(headers["Retry-After"]) >= 30


async def test_rate_limits_shared_by_replicas_through_redis(
    fake: FakeUpstream, make_proxy: Any, operator_key: None, redis_proc: RedisProcess
) -> None:
    """With sessions.backend redis, two replicas draw on one bucket per key: 3 requests a
    minute in all, whichever replica serves them."""
    settings: Any = {
        "upstreams": upstreams(fake),
        "auth": auth_section(requests_per_min=3),
        "sessions": {"backend": "redis", "redis_url": redis_proc.url},
    }
    replicas = [await make_proxy(**settings), await make_proxy(**settings)]
    statuses = []
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            url = replicas[i % 2].url
            statuses.append((await call(http, "POST", f"{url}/v1/chat/completions", key=KEY_A, json=CHAT))[0])
    assert statuses == [200, 200, 200, 429, 429]


async def test_admin_endpoints_need_admin_key_or_admin_port(
    fake: FakeUpstream, make_proxy: Any, operator_key: None
) -> None:
    """/metrics and /v1/nocp/* need the admin key (a client key is not enough), are closed with
    client keys and no admin key, and with server.admin_port are served only there; /healthz
    and /readyz stay open."""
    guarded = await make_proxy(upstreams=upstreams(fake), auth=auth_section())
    no_admin = await make_proxy(upstreams=upstreams(fake), auth={"keys": auth_section()["keys"]})
    port = free_port()
    separate = await make_proxy(
        upstreams=upstreams(fake), auth=auth_section(), server={"admin_host": "127.0.0.1", "admin_port": port}
    )
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/v1/nocp/alerts"):
            assert (await call(http, "GET", guarded.url + path))[0] == 401
            assert (await call(http, "GET", guarded.url + path, key=KEY_A))[0] == 401
            assert (await call(http, "GET", guarded.url + path, key=ADMIN))[0] == 200
            assert (await call(http, "GET", no_admin.url + path, key=KEY_A))[0] == 401
            assert (await call(http, "GET", separate.url + path, key=ADMIN))[0] == 404
            assert (await call(http, "GET", f"http://127.0.0.1:{port}{path}"))[0] == 200
        assert (await call(http, "GET", separate.url + "/v1/nocp/other", key=KEY_A))[0] == 404
        for proxy_url in (guarded.url, no_admin.url, separate.url, f"http://127.0.0.1:{port}"):
            for path in ("/healthz", "/readyz"):
                assert (await call(http, "GET", proxy_url + path))[0] == 200
    assert fake.requests == []


async def test_websocket_with_known_key_carries_tenant_not_key(
    fake: FakeUpstream, make_proxy: Any, operator_key: None
) -> None:
    """A WebSocket opened with a nocp key: its requests are scoped by the key's tenant, and the
    upstream socket gets the operator's key, never nocp's."""
    probe = TenantProbe()
    proxy = await make_proxy(stages=[probe], upstreams=upstreams(fake), auth=auth_section())
    ws_url = proxy.url.replace("http://", "ws://") + "/v1/responses"
    create = {"type": "response.create", "model": "gpt-4.1", "input": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, headers={"Authorization": f"Bearer {KEY_B}"}) as ws,
    ):
        await ws.send_str(json.dumps(create))
        got: list[dict[str, Any]] = []
        while not got or got[-1]["type"] not in ("response.completed", "error"):
            got.append(json.loads((await ws.receive(timeout=10)).data))
    assert got[-1]["type"] == "response.completed"
    assert probe.tenants == ["team-b"]
    frames = [r for r in fake.requests if r.method == "WS"]
    assert frames and all(r.headers["Authorization"] == f"Bearer {OPERATOR}" for r in frames)
    assert not any(KEY_B in v for r in fake.requests for v in r.headers.values())
