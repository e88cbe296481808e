"""Typed settings: a YAML file, then ``NOCP_*`` environment overrides, validated by msgspec.

Environment overrides:

- ``NOCP_CONFIG``: path of the YAML file.
- ``NOCP_HOST``, ``NOCP_PORT``, ``NOCP_LOG_DIR``: shortcuts for ``server.host``,
  ``server.port`` and ``log.dir``.
- ``NOCP_MODE``: the top-level ``mode`` (``normal`` or ``shadow``).
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

Protocol = Literal["openai", "gemini", "anthropic"]

OPENAI_PUBLIC = "https://api.openai.com/v1"
GEMINI_PUBLIC = "https://generativelanguage.googleapis.com"
ANTHROPIC_PUBLIC = "https://api.anthropic.com"


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServerConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the proxy listens and how much it accepts."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 32 * 1024 * 1024
    admin_host: str = "127.0.0.1"  # with admin_port: /metrics and /v1/nocp/* only there
    admin_port: int | None = None


class AuthKeyConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One client key nocp accepts: its SHA-256 (hex), its tenant, its own limits (None: the
    section's; 0: none)."""

    tenant: str
    key_sha256: str
    requests_per_min: float | None = None
    tokens_per_min: float | None = None


class AuthConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Client keys (see :mod:`proxy.auth`). With ``keys``, every proxied request needs one;
    ``requests_per_min`` / ``tokens_per_min`` are per-key limits (0: none).
    ``admin_key_sha256`` guards ``/metrics`` and ``/v1/nocp/*``. An upstream with
    ``api_key_env`` and no ``keys`` is refused unless ``allow_open_relay``."""

    keys: tuple[AuthKeyConfig, ...] = ()
    requests_per_min: float = 0.0
    tokens_per_min: float = 0.0
    admin_key_sha256: str | None = None
    allow_open_relay: bool = False

    def __post_init__(self) -> None:
        hashes = [k.key_sha256.lower() for k in self.keys]
        for i, h in enumerate([*hashes, (self.admin_key_sha256 or "0" * 64).lower()]):
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                where = f"auth.keys[{i}].key_sha256" if i < len(hashes) else "auth.admin_key_sha256"
                raise ConfigError(f"{where}: must be 64 hex digits (nocp auth hash-key)")
        if len(set(hashes)) != len(hashes):
            raise ConfigError("auth.keys: the same key_sha256 twice")
        for i, k in enumerate(self.keys):
            if not k.tenant or len(k.tenant) > 64:
                raise ConfigError(f"auth.keys[{i}].tenant: 1-64 characters")
            if min(k.requests_per_min or 0, k.tokens_per_min or 0) < 0:
                raise ConfigError(f"auth.keys[{i}]: limits must be >= 0")
        if min(self.requests_per_min, self.tokens_per_min) < 0:
            raise ConfigError("auth: limits must be >= 0")


class UpstreamConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One provider endpoint.

    ``base_url`` is what you would give that provider's own SDK as its base URL: for
    ``openai`` it ends in ``/v1`` (the client's ``/v1/...`` path is appended after it), for
    ``gemini`` and ``anthropic`` it is the host root (the client's ``/v1beta/...`` or
    ``/v1/messages`` path is appended; a trailing ``/v1`` is tolerated for ``anthropic``).
    ``api_key_env`` names an environment variable whose key replaces the client's; without
    it the client's own ``Authorization`` / ``x-goog-api-key`` / ``x-api-key`` is passed
    through.
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
    """The pipeline's fail-open guard: a stage running longer than ``stage_timeout_ms`` is
    abandoned. Large compression jobs run in ``workers`` processes (killed when their stage's
    time is up; 0: on a thread, which runs on). At most ``max_analysis_chars`` characters of
    tool output not already compressed (cached) are analysed per request; the rest go as sent."""

    stage_timeout_ms: float = 2000.0
    workers: int = 1
    max_analysis_chars: int = 4_000_000

    def __post_init__(self) -> None:
        if self.workers < 0 or self.max_analysis_chars < 0:
            raise ConfigError("pipeline: workers and max_analysis_chars must be >= 0")


class StagesConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which pipeline stages run, in their fixed order."""

    tool_output: bool = True


class SessionsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where session state (history summaries and cut points) lives.

    ``sqlite`` (default): one embedded file, ``sqlite_path`` (empty: ``sessions.sqlite3`` in
    ``log.dir``). ``redis``: shared by several replicas, at ``redis_url``, keys prefixed with
    ``redis_prefix``. Sessions idle for ``ttl_s`` seconds are forgotten. Every Redis call has
    ``redis_timeout_ms``; after ``redis_breaker_failures`` failures in a row Redis is skipped
    for ``redis_breaker_cooldown_s`` (requests go on without stored state).
    """

    backend: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: str = ""
    sqlite_max_bytes: int = 1 << 30  # past it the least recently used rows go; 0: no bound
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "nocp:session:"
    ttl_s: float = 24 * 3600.0
    redis_timeout_ms: float = 250.0
    redis_breaker_failures: int = 3
    redis_breaker_cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ConfigError("sessions.ttl_s: must be > 0")
        if self.redis_timeout_ms <= 0 or self.redis_breaker_cooldown_s < 0 or self.redis_breaker_failures < 1:
            raise ConfigError("sessions: redis_timeout_ms > 0, redis_breaker_failures >= 1, cooldown >= 0")


class HistoryModelConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-model overrides of the history roll-up (unset fields keep the section's value)."""

    context_window: int | None = None
    threshold_fraction: float | None = None
    threshold_tokens: int | None = None
    keep_last_messages: int | None = None
    cut_step_tokens: int | None = None


class HistoryConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The conversation-history roll-up stage.

    A prompt over ``threshold_tokens`` (else ``threshold_fraction`` of the model's context
    window, from a built-in table or ``context_window`` / ``default_context_window``) has its
    older turns replaced by one summary message. Kept verbatim: system/developer messages,
    the first user message (``keep_first_user_message``) and the last ``keep_last_messages``.
    The cut advances only when at least ``cut_step_tokens`` have aged since the last one.
    ``summarizer_upstream`` / ``summarizer_model`` name an upstream and a (small) model for an
    LLM summary; without them an extractive summary (no LLM) is used. ``stage_timeout_ms`` is
    this stage's own budget in the pipeline (it may wait for a summarizer call).
    ``models`` maps model-name globs to overrides; the first match wins.
    """

    enabled: bool = True
    threshold_fraction: float = 0.6
    threshold_tokens: int | None = None
    default_context_window: int = 128_000
    keep_last_messages: int = 6
    keep_first_user_message: bool = True
    cut_step_tokens: int = 4096
    summarizer_upstream: str | None = None
    summarizer_model: str | None = None
    summarizer_timeout_ms: float = 20_000.0
    summarizer_max_tokens: int = 1024
    stage_timeout_ms: float = 30_000.0
    models: dict[str, HistoryModelConfig] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        checks: list[tuple[str, HistoryConfig | HistoryModelConfig]] = [("history", self)]
        checks.extend((f"history.models[{k}]", v) for k, v in self.models.items())
        for where, cfg in checks:
            frac = cfg.threshold_fraction
            if frac is not None and not 0 < frac <= 1:
                raise ConfigError(f"{where}.threshold_fraction: must be in (0, 1]")
            keep = cfg.keep_last_messages
            if keep is not None and keep < 1:
                raise ConfigError(f"{where}.keep_last_messages: must be >= 1")
            for name in ("threshold_tokens", "cut_step_tokens"):
                value = getattr(cfg, name)
                if value is not None and value < 0:
                    raise ConfigError(f"{where}.{name}: must be >= 0")
        if self.summarizer_upstream and not self.summarizer_model:
            raise ConfigError("history.summarizer_model: required when summarizer_upstream is set")
        if self.summarizer_timeout_ms <= 0 or self.stage_timeout_ms <= 0:
            raise ConfigError("history: timeouts must be > 0")


class RetrievalConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Reversible compression: the model can fetch what a lossy cut removed.

    Every lossy cut (tool output, history summary) stores its original in the session store,
    content-addressed, forgotten ``ttl_s`` seconds after its last use, and its markers carry
    the id. A request sent upstream with at least one such marker gets one extra tool,
    ``tool_name``; nocp answers its calls itself and sends the conversation on, at most
    ``max_rounds`` times per request. A tool result holds at most ``max_result_chars``
    characters (the model can ask for a part with ``query``).

    A client that sets prompt-cache breakpoints of its own (Anthropic) and whose session went
    without the tool gets it only when the cuts of that request pay for rewriting its cache:
    the tokens they remove now and over the next ``cache_horizon_turns`` turns against the
    whole prompt written again; otherwise those cuts are undone (sent whole).

    ``offer_to_agents`` offers the tool on every request of an agent (one that carries client
    tools, tool calls or tool results), before any cut: the tool list, which providers render
    ahead of the messages, then stays the same from the agent's first turns on, so the first
    cut does not cost one whole uncached prompt. Off by default: the tool is offered only
    with a marker to fetch (measured: offering it from the first request cost more on short
    agent sessions than the one mid-session miss it avoids, also with observation aging on).
    """

    enabled: bool = True
    offer_to_agents: bool = False
    ttl_s: float = 3600.0
    max_rounds: int = 3
    tool_name: str = "nocp_retrieve"
    max_result_chars: int = 200_000
    secret: str = ""  # marker ids are keyed with it; empty: generated once (see proxy.secret)
    cache_horizon_turns: int = 10  # at most this many later turns weigh a new tool's cache miss

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ConfigError("retrieval.ttl_s: must be > 0")
        if self.max_rounds < 1:
            raise ConfigError("retrieval.max_rounds: must be >= 1")
        if self.max_result_chars < 1000:
            raise ConfigError("retrieval.max_result_chars: must be >= 1000")
        name = self.tool_name
        if not name or len(name) > 64 or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
            raise ConfigError("retrieval.tool_name: 1-64 characters of a-z, A-Z, 0-9, _ and -")


class DriftConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Drift detection: the latest ``window`` records against the ``window`` before, per model
    and overall. ``*_warning`` / ``*_critical`` are how much worse a figure may get before an
    alert: a rise of the input compression ratio (sent / raw, absolute), a relative drop of net
    tokens saved per request, a drop of the cache hit share (absolute), a relative rise of the
    p50 proxy overhead and upstream latency, a rise of the error and fail-open rates (absolute).
    An episode clears when the change has stayed below ``clear_fraction`` of its warning
    threshold for ``quiet_s`` seconds (by the records' timestamps); a new crossing before then
    continues the episode, so a noisy figure writes one alert per episode, not one per swing.
    """

    enabled: bool = True
    window: int = 100
    max_models: int = 50
    clear_fraction: float = 0.5
    quiet_s: float = 60.0
    alerts_file: str = "alerts.jsonl"
    compression_ratio_warning: float = 0.10
    compression_ratio_critical: float = 0.25
    token_savings_warning: float = 0.25
    token_savings_critical: float = 0.50
    token_savings_min_delta: float = 10.0
    cache_hit_share_warning: float = 0.10
    cache_hit_share_critical: float = 0.30
    latency_warning: float = 0.50
    latency_critical: float = 1.00
    latency_min_delta_ms: float = 2.0
    error_rate_warning: float = 0.05
    error_rate_critical: float = 0.20
    fail_open_rate_warning: float = 0.05
    fail_open_rate_critical: float = 0.20

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if not 0 <= self.clear_fraction <= 1:
            raise ValueError("clear_fraction must be between 0 and 1")
        if self.quiet_s < 0:
            raise ValueError("quiet_s must be >= 0")
        for kind in ("compression_ratio", "token_savings", "cache_hit_share", "latency", "error_rate",
                     "fail_open_rate"):  # fmt: skip
            warning, critical = getattr(self, f"{kind}_warning"), getattr(self, f"{kind}_critical")
            if not 0 < warning <= critical:
                raise ValueError(f"{kind}: need 0 < {kind}_warning <= {kind}_critical")


class AgingModelConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-model overrides of observation aging (unset fields keep the section's value)."""

    enabled: bool | None = None
    keep_last_turns: int | None = None
    step_turns: int | None = None
    min_tokens: int | None = None
    horizon_turns: int | None = None
    horizon_share: float | None = None
    min_cached_share: float | None = None


class AgingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Observation aging (see ``proxy.stages.aging``): tool outputs of at least ``min_tokens``
    older than the last ``keep_last_turns`` assistant turns become a digest with a retrievable
    marker; the boundary moves every ``step_turns`` turns, and a step is taken only when the
    tokens it removes now and over the turns the session is expected to still have
    (``horizon_share`` times as many as it has had, at most ``horizon_turns``) pay for the one
    cache miss it causes. Each step's decision is kept ``decision_ttl_s``. Only for models whose
    cached input costs at least ``min_cached_share`` of the input price (from the pricing
    table; unknown: 0.5): measured on the real traces, aging pays where a cache miss costs
    little more than a cached read (gpt-4o, 50%) and can cost more than it saves on short
    sessions where it costs 4-10x (gpt-4.1, gpt-5, Claude). ``models`` maps model-name globs
    to overrides (the first match wins); outputs of the tools matching ``keep_tools`` (name
    globs) never age."""

    enabled: bool = True
    keep_last_turns: int = 3
    step_turns: int = 3
    min_cached_share: float = 0.5
    min_tokens: int = 200
    horizon_turns: int = 10
    horizon_share: float = 1.0  # later turns expected: this share of the turns so far
    decision_ttl_s: float = 24 * 3600.0
    keep_tools: tuple[str, ...] = ()
    models: dict[str, AgingModelConfig] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        checks: list[tuple[str, AgingConfig | AgingModelConfig]] = [("aging", self)]
        checks.extend((f"aging.models[{k}]", v) for k, v in self.models.items())
        for where, cfg in checks:
            for name in ("keep_last_turns", "step_turns", "min_tokens"):
                value = getattr(cfg, name)
                if value is not None and value < 1:
                    raise ConfigError(f"{where}.{name}: must be >= 1")
            for name in ("horizon_turns", "horizon_share", "min_cached_share"):
                value = getattr(cfg, name)
                if value is not None and value < 0:
                    raise ConfigError(f"{where}.{name}: must be >= 0")

    @property
    def any_enabled(self) -> bool:
        """Whether aging is on for some model (the section or an override)."""
        return self.enabled or any(m.enabled for m in self.models.values())

    def for_model(self, model: str) -> AgingConfig:
        """The section with the first matching model override applied."""
        over = next((o for g, o in self.models.items() if fnmatch.fnmatchcase(model, g)), None)
        if over is None:
            return self
        changes = {f: v for f in over.__struct_fields__ if (v := getattr(over, f)) is not None}
        return msgspec.structs.replace(self, **changes, models={})


class PolicyArmConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One arm of the learned compression policy: ``budget_tokens`` for lossy compression (the
    ``compression.budget_tokens`` of the outputs it is chosen for), or none: lossless only."""

    name: str
    budget_tokens: int | None = None


def _default_arms() -> tuple[PolicyArmConfig, ...]:
    return (
        PolicyArmConfig(name="lossless"),
        PolicyArmConfig(name="budget-1500", budget_tokens=1500),
        PolicyArmConfig(name="budget-600", budget_tokens=600),
    )


class PolicyConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The learned compression policy (see ``proxy.policy``): per tenant, tool and content type,
    Thompson sampling over ``arms``. The reward of a request is the tokens its cuts saved minus,
    per retrieval of one of them, ``retrieval_penalty_tokens`` and the tokens the retrieval
    cost. Each arm is first tried in ``min_sessions`` sessions; posteriors are kept ``ttl_s``
    after their last use, at most ``max_keys`` (tool, content type) pairs per tenant. ``seed``
    makes the choices reproducible (tests, benchmarks). Needs retrieval (its only signal of a
    cut that took something needed)."""

    enabled: bool = False
    arms: tuple[PolicyArmConfig, ...] = msgspec.field(default_factory=_default_arms)
    retrieval_penalty_tokens: int = 500
    min_sessions: int = 3
    ttl_s: float = 30 * 24 * 3600.0
    max_keys: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if not names or len(set(names)) != len(names):
            raise ConfigError("policy.arms: at least one arm, names unique")
        for a in self.arms:
            if not a.name or len(a.name) > 64:
                raise ConfigError("policy.arms: names of 1-64 characters")
            if a.budget_tokens is not None and a.budget_tokens < 1:
                raise ConfigError(f"policy.arms[{a.name}].budget_tokens: must be >= 1")
        if self.retrieval_penalty_tokens < 0 or self.min_sessions < 0 or self.max_keys < 1 or self.ttl_s <= 0:
            raise ConfigError("policy: retrieval_penalty_tokens, min_sessions >= 0; max_keys >= 1; ttl_s > 0")


class AnthropicConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Anthropic Messages. Anthropic caches a prompt only up to explicit ``cache_control``
    breakpoints, which most clients other than Claude Code never set. ``auto_cache``: on a
    request with no breakpoint of the client's, nocp adds them (the end of the tools, the end
    of the system prompt, and the last message, so each turn reads what the one before it
    wrote; none whose prefix is below the model's minimum), with ``cache_ttl`` (``5m``, or
    ``1h`` at twice the write price). A request with breakpoints of its own is left as it is.
    """

    auto_cache: bool = True
    cache_ttl: Literal["5m", "1h"] = "5m"


class OpenAIConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """OpenAI Chat Completions and Responses. ``prompt_cache_key``: a request without one gets
    a key per tenant and session, so a session's requests reach the same prompt cache (off by
    default: it also separates sessions that share a long prefix, and every request then
    differs from what the client sent)."""

    prompt_cache_key: bool = False


class OutputConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The output side (see :mod:`proxy.output`), off by default. ``toon_models``: model globs
    whose structured answers (a ``json_schema`` response format) are asked for in TOON when the
    schema is tabular enough and TOON is expected at least ``toon_min_saving`` shorter; nocp
    decodes, validates and returns JSON (else retries once with the original request).
    ``verbosity``: model glob -> ``low``/``medium``/``high``, set where the client did not;
    for models without a verbosity parameter, with ``verbosity_instruction``, a short
    instruction appended after the cached prefix instead. ``verbosity_models``: globs of the
    models that take the parameter."""

    toon_models: tuple[str, ...] = ()
    toon_min_saving: float = 0.1
    verbosity: dict[str, Literal["low", "medium", "high"]] = msgspec.field(default_factory=dict)
    verbosity_instruction: bool = False
    verbosity_models: tuple[str, ...] = ("gpt-5*",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.toon_min_saving < 1.0:
            raise ConfigError("output.toon_min_saving: must be in [0, 1)")


class MetricsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``GET /metrics``: at most ``max_models`` distinct ``model`` label values (then ``other``)."""

    max_models: int = 100


class ModelPriceConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per 1M tokens: fresh input, cached input (default: the input price), output."""

    input: float
    output: float
    cached_input: float | None = None


class PricingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Prices for the TransactionLog's cost fields (see :mod:`proxy.pricing`). ``models`` maps
    model-name globs to prices and is tried before the built-in table, first match wins.
    ``enabled: false`` leaves the cost fields null."""

    enabled: bool = True
    models: dict[str, ModelPriceConfig] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for pattern, price in self.models.items():
            values = (price.input, price.output, price.cached_input or 0.0)
            if any(v < 0 for v in values):
                raise ConfigError(f"pricing.models[{pattern}]: prices must be >= 0")


class ExperimentConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A holdout experiment (see :mod:`proxy.treatment`): a stable ``holdout`` share of sessions
    (by a hash of the experiment ``name``, the tenant and the session id) goes through unchanged
    as the ``control`` cohort, the rest is ``treated``; every log line names both. ``holdout: 0``
    (default): no experiment, no cohort."""

    name: str = "holdout"
    holdout: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.holdout <= 1:
            raise ConfigError("experiment.holdout: must be between 0 and 1")
        if not self.name or len(self.name) > 64 or not self.name.isprintable():
            raise ConfigError("experiment.name: 1-64 printable characters")


def _default_upstreams() -> tuple[UpstreamConfig, ...]:
    return (
        UpstreamConfig(name="openai", base_url=OPENAI_PUBLIC, protocol="openai"),
        UpstreamConfig(name="gemini", base_url=GEMINI_PUBLIC, protocol="gemini"),
        UpstreamConfig(name="anthropic", base_url=ANTHROPIC_PUBLIC, protocol="anthropic"),
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
    sessions: SessionsConfig = msgspec.field(default_factory=SessionsConfig)
    history: HistoryConfig = msgspec.field(default_factory=HistoryConfig)
    retrieval: RetrievalConfig = msgspec.field(default_factory=RetrievalConfig)
    aging: AgingConfig = msgspec.field(default_factory=AgingConfig)
    anthropic: AnthropicConfig = msgspec.field(default_factory=AnthropicConfig)
    openai: OpenAIConfig = msgspec.field(default_factory=OpenAIConfig)
    drift: DriftConfig = msgspec.field(default_factory=DriftConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    pricing: PricingConfig = msgspec.field(default_factory=PricingConfig)
    output: OutputConfig = msgspec.field(default_factory=OutputConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    experiment: ExperimentConfig = msgspec.field(default_factory=ExperimentConfig)
    # shadow: every stage runs and the log says what it would have saved, the original is sent
    mode: Literal["normal", "shadow"] = "normal"
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)

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
        if self.server.admin_port is not None and not 0 < self.server.admin_port < 65536:
            raise ConfigError("server.admin_port: must be between 1 and 65535")
        keyed = [u.name for u in self.upstreams if u.api_key_env]
        if keyed and not self.auth.keys and not self.auth.allow_open_relay:
            raise ConfigError(
                f"upstreams {keyed} have api_key_env but auth.keys is empty: anyone reaching the port "
                "would use the operator's key. Add client keys (auth.keys; `nocp auth new-key`) or "
                "accept an open relay with auth.allow_open_relay: true (--allow-open-relay)"
            )
        if self.policy.enabled and not self.retrieval.enabled:
            raise ConfigError(
                "policy.enabled: needs retrieval.enabled (a retrieval is its signal of a bad cut)"
            )
        summarizer = self.history.summarizer_upstream
        if summarizer and summarizer not in names:
            raise ConfigError(f"history.summarizer_upstream: no upstream named {summarizer!r}")

    def upstream_for(self, protocol: str, model: str | None) -> UpstreamConfig | None:
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
    if "NOCP_MODE" in env:
        raw["mode"] = env["NOCP_MODE"]
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
