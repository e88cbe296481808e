"""Settings: YAML file, NOCP_* overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import load_settings
from proxy.config import GEMINI_PUBLIC, OPENAI_PUBLIC
from proxy.exceptions import ConfigError
from proxy.upstream import upstream_url

YAML = """
server: {host: 0.0.0.0, port: 9100}
timeouts: {connect: 1.5, read: 30}
log: {dir: /tmp/nocp-logs, max_bytes: 5000}
upstreams:
  - name: local
    base_url: http://127.0.0.1:8000/v1
    models: ["llama-*", "qwen*"]
  - name: cloud
    base_url: https://api.openai.com/v1
    models: ["gpt-*"]
  - name: google
    base_url: https://generativelanguage.googleapis.com
    protocol: gemini
    models: ["gemini-*"]
"""


def test_yaml_file_loads_into_typed_settings(tmp_path: Path) -> None:
    """A YAML config becomes typed settings, and models route to the upstream whose globs match."""
    path = tmp_path / "nocp.yaml"
    path.write_text(YAML)
    s = load_settings(path, env={})
    assert (s.server.host, s.server.port, s.timeouts.connect, s.log.max_bytes) == ("0.0.0.0", 9100, 1.5, 5000)
    assert s.upstream_for("openai", "llama-3-8b").name == "local"  # type: ignore[union-attr]
    assert s.upstream_for("openai", "gpt-4o").name == "cloud"  # type: ignore[union-attr]
    assert s.upstream_for("gemini", "gemini-2.5-pro").name == "google"  # type: ignore[union-attr]
    assert s.upstream_for("openai", "claude-3") is None


def test_env_overrides_file(tmp_path: Path) -> None:
    """NOCP_PORT, NOCP_LOG_DIR, NOCP_<SECTION>__<KEY> and NOCP_UPSTREAM_URL override the file."""
    path = tmp_path / "nocp.yaml"
    path.write_text(YAML)
    env = {
        "NOCP_CONFIG": str(path),
        "NOCP_PORT": "9200",
        "NOCP_LOG_DIR": "/var/log/nocp",
        "NOCP_TIMEOUTS__READ": "12.5",
        "NOCP_UPSTREAM_URL": "http://127.0.0.1:11434/v1",
    }
    s = load_settings(env=env)
    assert (s.server.port, s.log.dir, s.timeouts.read) == (9200, "/var/log/nocp", 12.5)
    assert [u.base_url for u in s.upstreams] == ["http://127.0.0.1:11434/v1"]
    assert s.upstream_for("openai", "anything") is not None


def test_defaults_without_config() -> None:
    """With no config, OpenAI's, Gemini's and Anthropic's public APIs are the upstreams, client keys kept."""
    s = load_settings(env={})
    assert [(u.protocol, u.base_url, u.api_key_env) for u in s.upstreams] == [
        ("openai", OPENAI_PUBLIC, None),
        ("gemini", GEMINI_PUBLIC, None),
        ("anthropic", "https://api.anthropic.com", None),
    ]
    assert (s.server.host, s.server.port, s.server.max_body_bytes) == ("127.0.0.1", 8080, 32 * 1024 * 1024)


@pytest.mark.parametrize(
    ("yaml", "key"),
    [
        ("server: {port: abc}", "$.server.port"),
        ("server: {prot: 1}", "prot"),
        ("upstreams: [{name: a}]", "base_url"),
        ("upstreams: [{name: a, base_url: ftp://x}]", "upstreams[0].base_url"),
        ("upstreams: [{name: a, base_url: 'http://x', protocol: grpc}]", "$.upstreams[0].protocol"),
        ("upstreams: [{name: a, base_url: 'http://x', api_key_env: NOCP_MISSING_KEY}]", "api_key_env"),
        ("timeouts: {connect: fast}", "$.timeouts.connect"),
        ("- a\n- b", "top level"),
        ("policy: {enabled: true}\nretrieval: {enabled: false}", "policy.enabled"),
        ("policy: {arms: [{name: a}, {name: a}]}", "policy.arms"),
        ("policy: {arms: [{name: a, budget_tokens: 0}]}", "budget_tokens"),
        ("aging: {step_turns: 0}", "aging.step_turns"),
        ("aging: {models: {'gpt-5': {keep_last_turns: 0}}}", "aging.models[gpt-5].keep_last_turns"),
        ("aging: {models: {'gpt-5': {horizon_share: -1}}}", "aging.models[gpt-5].horizon_share"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml: str, key: str) -> None:
    """An invalid config fails with a message that names the offending key."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=key.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]")):
        load_settings(path, env={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is reported, not a traceback."""
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_upstream_url_joins_paths() -> None:
    """OpenAI base URLs ending in /v1 take the client path after /v1; Gemini ones take it whole."""
    s = load_settings(env={})
    openai_up, gemini_up, anthropic_up = s.upstreams
    assert str(upstream_url(anthropic_up, "/v1/messages")) == "https://api.anthropic.com/v1/messages"
    assert str(upstream_url(openai_up, "/v1/chat/completions?x=1")) == f"{OPENAI_PUBLIC}/chat/completions?x=1"
    assert (
        str(upstream_url(gemini_up, "/v1beta/models/g:generateContent?alt=sse"))
        == f"{GEMINI_PUBLIC}/v1beta/models/g:generateContent?alt=sse"
    )


def test_output_side_is_off_by_default_and_checked() -> None:
    """``output`` is off by default; a verbosity level outside low/medium/high or a saving
    outside [0, 1) stops start-up naming the key."""
    out = load_settings(env={}).output
    assert out.toon_models == () and out.verbosity == {}
    with pytest.raises(ConfigError, match="verbosity"):
        load_settings(env={}, overrides={"output": {"verbosity": {"gpt-5*": "tiny"}}})
    with pytest.raises(ConfigError, match="toon_min_saving"):
        load_settings(env={}, overrides={"output": {"toon_min_saving": 1.5}})
