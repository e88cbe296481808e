"""Typed settings: a YAML file, then ``NOCP_*`` environment overrides, validated by msgspec.

Environment overrides:

- ``NOCP_CONFIG``: path of the YAML file.
- ``NOCP_HOST``, ``NOCP_PORT``, ``NOCP_LOG_DIR``: shortcuts for ``server.host``,
  ``server.port`` and ``log.dir``.
- ``NOCP_UPSTREAM_URL``: replace the upstream list with one OpenAI-compatible upstream that
  serves every model (a local vLLM or Ollama server, say).
- ``NOCP_<SECTION>__<KEY>``: any scalar setting, e.g. ``NOCP_TIMEOUTS__CONNECT=2``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from compressors import CompressionConfig
from proxy.exceptions import ConfigError

Protocol = Literal["openai", "gemini"]

OPENAI_PUBLIC = "https://api.openai.com/v1"
GEMINI_PUBLIC = "https://generativelanguage.googleapis.com"


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServerConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the proxy listens and how much it accepts."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 32 * 1024 * 1024


class UpstreamConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One provider endpoint.

    ``base_url`` is what you would give that provider's own SDK as its base URL: for
    ``openai`` it ends in ``/v1`` (the client's ``/v1/...`` path is appended after it), for
    ``gemini`` it is the host root (the client's ``/v1beta/...`` path is appended).
    ``api_key_env`` names an environment variable whose key replaces the client's; without
    it the client's own ``Authorization`` / ``x-goog-api-key`` is passed through.
    ``models`` are glob patterns of the model names this upstream serves.
    """

    name: str
    base_url: str
    protocol: Protocol = "openai"
    api_key_env: str | None = None
    models: tuple[str, ...] = ("*",)

    def serves(self, model: str) -> bool:
        """True when one of ``models`` matches ``model``."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class TimeoutConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Upstream timeouts in seconds: to connect, and between two reads of the response."""

    connect: float = 10.0
    read: float = 300.0


class LogConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The TransactionLog: where, how big before rotation, and what it may contain."""

    dir: str = "logs"
    file: str = "transactions.jsonl"
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5
    queue_size: int = 10_000
    user_query_chars: int = 200

    @property
    def path(self) -> Path:
        """Full path of the current log file."""
        return Path(self.dir) / self.file


class PipelineConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The pipeline's fail-open guard: a stage running longer than this is abandoned."""

    stage_timeout_ms: float = 2000.0


class StagesConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which pipeline stages run, in their fixed order."""

    tool_output: bool = True


def _default_upstreams() -> tuple[UpstreamConfig, ...]:
    return (
        UpstreamConfig(name="openai", base_url=OPENAI_PUBLIC, protocol="openai"),
        UpstreamConfig(name="gemini", base_url=GEMINI_PUBLIC, protocol="gemini"),
    )


class Settings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the proxy is configured with."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    upstreams: tuple[UpstreamConfig, ...] = msgspec.field(default_factory=_default_upstreams)
    timeouts: TimeoutConfig = msgspec.field(default_factory=TimeoutConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    stages: StagesConfig = msgspec.field(default_factory=StagesConfig)
    compression: CompressionConfig = msgspec.field(default_factory=CompressionConfig)

    def __post_init__(self) -> None:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ConfigError(f"upstreams: names must be unique, got {names}")
        if not self.upstreams:
            raise ConfigError("upstreams: at least one upstream is required")
        for i, up in enumerate(self.upstreams):
            if not up.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"upstreams[{i}].base_url: must start with http:// or https://")
            if up.api_key_env is not None and not os.environ.get(up.api_key_env):
                raise ConfigError(
                    f"upstreams[{i}].api_key_env: environment variable {up.api_key_env} is not set"
                )
        if not 0 < self.server.port < 65536:
            raise ConfigError("server.port: must be between 1 and 65535")

    def upstream_for(self, protocol: Protocol, model: str | None) -> UpstreamConfig | None:
        """The first upstream of ``protocol`` that serves ``model`` (any, when model is None)."""
        for up in self.upstreams:
            if up.protocol == protocol and (model is None or up.serves(model)):
                return up
        return None


_SHORTCUTS: Mapping[str, tuple[str, str]] = {
    "NOCP_HOST": ("server", "host"),
    "NOCP_PORT": ("server", "port"),
    "NOCP_LOG_DIR": ("log", "dir"),
}


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, (section, key) in _SHORTCUTS.items():
        if var in env:
            raw.setdefault(section, {})[key] = env[var]
    for var, value in env.items():
        if var.startswith("NOCP_") and "__" in var:
            section, _, key = var[5:].lower().partition("__")
            target = raw.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{var}: {section} is not a section")
            target[key] = value
    if env.get("NOCP_UPSTREAM_URL"):
        raw["upstreams"] = [{"name": "default", "base_url": env["NOCP_UPSTREAM_URL"], "models": ["*"]}]


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from ``path`` (or ``$NOCP_CONFIG``), then the environment, then
    ``overrides`` (``{"server": {"port": 9000}}``-shaped, used by the CLI flags).

    Raises :class:`ConfigError` naming the offending key.
    """
    env = os.environ if env is None else env
    path = path or env.get("NOCP_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            loaded = msgspec.yaml.decode(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from exc
        except msgspec.DecodeError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        raw = loaded or {}
    _apply_env(raw, env)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
