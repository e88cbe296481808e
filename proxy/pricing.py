"""Token prices, and the cost fields of the TransactionLog.

Prices are USD per 1M tokens: fresh (uncached) input, cached input, output. The built-in
table (:data:`DEFAULT_PRICES`) holds the public list prices of a few current models
(standard tier, no batch discount; Gemini at its <= 200k-token prompt tier); the ``pricing``
section of the settings adds or overrides entries::

    pricing:
      models:
        "gpt-4o*": {input: 2.5, cached_input: 1.25, output: 10}
        "my-local-*": {input: 0, output: 0}

Model names match glob patterns, case-insensitively, after any ``provider/`` or ``models/``
prefix is removed; the configured entries are tried first, then the built-in ones, first
match wins (so ``gpt-4o-mini*`` is listed before ``gpt-4o*``). A model with no price leaves
the cost fields null.

The cost model of one request (:meth:`CostModel.apply`), with the upstream's own usage:

- ``estimated_cost_usd`` = ``(prompt - cached) * input + cached * cached_input +
  completion * output``: what the provider bills for the request nocp sent.
- ``baseline_cost_usd``: what the request would have cost had nocp never run. Its prompt is
  the upstream's ``prompt_tokens`` plus the tokens nocp removed (``raw_input_tokens -
  optimized_input_tokens``; both counted locally with the same tokenizer, so the difference is
  exact even where the upstream counts framing or tool definitions a little differently); its
  cached part is ``baseline_cached_tokens``: what the provider would have cached for the raw
  prompt, given the session's previous raw prompt (:mod:`proxy.cachebaseline`: the longest
  shared prefix in the provider's steps; Anthropic: at the client's own breakpoints, with
  ``baseline_cache_write_tokens`` written). When nocp changed nothing the raw prompt is the
  one sent, and the upstream's own cache use is taken where it read at least as much (a
  prefix other sessions cached too); so with nothing changed in the session, baseline ==
  estimated. Its completion is the real one (nocp does not change the answer).
- ``baseline_same_share_cost_usd``: the earlier estimate, kept for comparison: the raw prompt
  assumed cached (and cache-written) for the *same share* as the real request
  (``cached / prompt``); with no cache at all when nocp added the only breakpoints. It does
  not show the cost of a broken prefix cache: a stage that changes an earlier part of the
  prompt lowers the real cached share, and this baseline's with it.
- ``cost_savings_usd`` = ``baseline - estimated - overhead``, where overhead is the
  summarizer's ``compression_overhead_tokens`` priced at the summarizer model's fresh-input
  price (the log keeps only the sum of the summary call's prompt and completion tokens, so
  its completion part is priced as input: an underestimate of a few percent of the overhead).
  Without a cache estimate (no session fingerprint kept: ``CostModel(baselines=None)``) the
  baseline is the same-share one.

``nocp bench`` measures the saving directly, with both versions of every request billed by
the fake provider's prefix-cache simulation, and reports the gap to this estimate.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.cachebaseline import BaselineCache, BaselineEstimate
from proxy.config import PricingConfig, Settings
from proxy.translog import TransactionLog

__all__ = [
    "DEFAULT_PRICES",
    "PRICES_AS_OF",
    "CostModel",
    "Price",
    "PriceTable",
    "baseline_cost",
    "cache_baseline_cost",
    "request_cost",
]

_log = structlog.get_logger("nocp.pricing")
PRICES_AS_OF = "2025-11 (OpenAI, Gemini); 2026-12 (Anthropic)"
_PER = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens. Prompt-cache writes (Anthropic) cost ``cache_write`` (5-minute TTL,
    default 1.25x input) or ``cache_write_1h`` (default 2x input)."""

    input: float
    cached_input: float
    output: float
    cache_write: float | None = None
    cache_write_1h: float | None = None

    @property
    def write_5m(self) -> float:
        """USD per 1M tokens written to the cache for 5 minutes."""
        return self.cache_write if self.cache_write is not None else self.input * 1.25

    @property
    def write_1h(self) -> float:
        """USD per 1M tokens written to the cache for 1 hour."""
        return self.cache_write_1h if self.cache_write_1h is not None else self.input * 2.0

    def cost(self, prompt: int, cached: int, completion: int, written: int = 0, written_1h: int = 0) -> float:
        """USD for ``prompt`` input tokens of which ``cached`` were cached and ``written`` written
        to the cache (``written_1h`` of those for 1 hour), and ``completion``."""
        return request_cost(self, prompt, cached, completion, written, written_1h)


# First match wins: more specific names before their prefixes.
DEFAULT_PRICES: tuple[tuple[str, Price], ...] = (
    ("gpt-4o-mini*", Price(0.15, 0.075, 0.60)),
    ("gpt-4o*", Price(2.50, 1.25, 10.00)),
    ("chatgpt-4o*", Price(5.00, 5.00, 15.00)),
    ("gpt-4.1-nano*", Price(0.10, 0.025, 0.40)),
    ("gpt-4.1-mini*", Price(0.40, 0.10, 1.60)),
    ("gpt-4.1*", Price(2.00, 0.50, 8.00)),
    ("gpt-5-nano*", Price(0.05, 0.005, 0.40)),
    ("gpt-5-mini*", Price(0.25, 0.025, 2.00)),
    ("gpt-5*", Price(1.25, 0.125, 10.00)),
    ("o4-mini*", Price(1.10, 0.275, 4.40)),
    ("o3-mini*", Price(1.10, 0.55, 4.40)),
    ("o3-pro*", Price(20.00, 20.00, 80.00)),
    ("o3*", Price(2.00, 0.50, 8.00)),
    ("o1-mini*", Price(1.10, 0.55, 4.40)),
    ("o1*", Price(15.00, 7.50, 60.00)),
    ("gemini-2.5-pro*", Price(1.25, 0.125, 10.00)),
    ("gemini-2.5-flash-lite*", Price(0.10, 0.01, 0.40)),
    ("gemini-2.5-flash*", Price(0.30, 0.03, 2.50)),
    ("gemini-2.0-flash-lite*", Price(0.075, 0.075, 0.30)),
    ("gemini-2.0-flash*", Price(0.10, 0.025, 0.40)),
    # Anthropic (platform.claude.com pricing, 2026-12): cache reads as listed, writes 1.25x
    # (5 minutes) and 2x (1 hour) the input price.
    ("claude-fable-5-1*", Price(10.00, 0.25, 50.00)),
    ("claude-fable-5*", Price(10.00, 1.00, 50.00)),
    ("claude-opus-5-5*", Price(4.00, 0.20, 20.00)),
    ("claude-opus-5*", Price(5.00, 0.50, 25.00)),
    ("claude-opus-4-[5-9]*", Price(5.00, 0.50, 25.00)),
    ("claude-opus-4*", Price(15.00, 1.50, 75.00)),
    ("claude-sonnet-5-5*", Price(2.00, 0.10, 10.00)),
    ("claude-sonnet-5*", Price(2.00, 0.20, 10.00)),
    ("claude-sonnet-4*", Price(3.00, 0.30, 15.00)),
    ("claude-3-7-sonnet*", Price(3.00, 0.30, 15.00)),
    ("claude-haiku-5-5*", Price(0.10, 0.01, 0.50)),
    ("claude-haiku-4*", Price(1.00, 0.10, 5.00)),
    ("claude-3-5-haiku*", Price(0.80, 0.08, 4.00)),
)


def request_cost(
    price: Price, prompt: int, cached: int, completion: int, written: int = 0, written_1h: int = 0
) -> float:
    """USD billed for one request: uncached input, cached input, cache writes (5-minute and
    1-hour) and output at their prices. ``prompt`` counts every input token."""
    cached = max(0, min(cached, prompt))
    written = max(0, min(written, prompt - cached))
    written_1h = max(0, min(written_1h, written))
    fresh = prompt - cached - written
    usd = fresh * price.input + cached * price.cached_input + completion * price.output
    usd += (written - written_1h) * price.write_5m + written_1h * price.write_1h
    return usd / _PER


def baseline_cost(
    price: Price,
    prompt: int,
    cached: int,
    completion: int,
    raw_input: int,
    optimized_input: int,
    written: int = 0,
    written_1h: int = 0,
    *,
    uncached: bool = False,
) -> float:
    """USD the request would have cost unchanged: ``prompt`` plus the tokens removed
    (``raw_input - optimized_input``), cached and cache-written for the same shares as the
    real request; ``uncached``: with no cache at all (nocp added the only breakpoints)."""
    base_prompt = max(0, prompt + raw_input - optimized_input)
    if uncached:
        return request_cost(price, base_prompt, 0, completion)
    share = min(1.0, cached / prompt) if prompt > 0 else 0.0
    wshare = min(1.0, written / prompt) if prompt > 0 else 0.0
    hshare = min(1.0, written_1h / written) if written > 0 else 0.0
    base_written = round(base_prompt * wshare)
    return request_cost(
        price, base_prompt, round(base_prompt * share), completion, base_written, round(base_written * hshare)
    )


def cache_baseline_cost(
    price: Price,
    prompt: int,
    completion: int,
    raw_input: int,
    optimized_input: int,
    cached: int,
    written: int = 0,
) -> tuple[float, int]:
    """USD the request would have cost had nocp never run, and the cached tokens priced:
    ``prompt`` plus the tokens removed, ``cached`` of them read from the cache and ``written``
    written to it (5-minute TTL)."""
    base_prompt = max(0, prompt + raw_input - optimized_input)
    cached = max(0, min(cached, base_prompt))
    return request_cost(price, base_prompt, cached, completion, written), cached


def _bare(model: str) -> str:
    name = model.strip().lower()
    for prefix in ("models/",):
        name = name.removeprefix(prefix)
    return name.rsplit("/", 1)[-1]


class PriceTable:
    """Model-name globs -> :class:`Price`, first match wins."""

    def __init__(self, entries: Iterable[tuple[str, Price]]) -> None:
        self.entries = tuple((pattern.lower(), price) for pattern, price in entries)

    @classmethod
    def from_config(cls, config: PricingConfig) -> PriceTable:
        """The configured entries, then the built-in ones."""
        own = [
            (
                pattern,
                Price(p.input, p.cached_input if p.cached_input is not None else p.input, p.output),
            )
            for pattern, p in config.models.items()
        ]
        return cls([*own, *DEFAULT_PRICES])

    def lookup(self, model: str | None) -> Price | None:
        """The price of ``model``, or None when no pattern matches."""
        if not model:
            return None
        name = _bare(model)
        for pattern, price in self.entries:
            if fnmatch.fnmatchcase(name, pattern):
                return price
        return None

    def as_dict(self) -> Mapping[str, Price]:
        """Patterns and prices, in lookup order (the first of duplicate patterns)."""
        out: dict[str, Price] = {}
        for pattern, price in self.entries:
            out.setdefault(pattern, price)
        return out


def _round(usd: float) -> float:
    return round(usd, 10)


class CostModel:
    """Fills the cost fields of TransactionLog records (see the module docstring)."""

    def __init__(
        self,
        table: PriceTable,
        *,
        summarizer_model: str | None = None,
        baselines: BaselineCache | None = None,
    ) -> None:
        self.table = table
        self.summarizer_model = summarizer_model
        self.baselines = baselines  # each session's latest raw prompt (None: same-share baseline)

    @classmethod
    def from_settings(cls, settings: Settings) -> CostModel | None:
        """The cost model ``settings`` describe, or None when pricing is switched off."""
        if not settings.pricing.enabled:
            return None
        history = settings.history
        summarizer = history.summarizer_model if history.summarizer_upstream else None
        return cls(
            PriceTable.from_config(settings.pricing), summarizer_model=summarizer, baselines=BaselineCache()
        )

    def observe(
        self,
        tenant: str,
        session: str | None,
        adapter: Any,
        raw_body: Mapping[str, Any],
        model: str,
        record: TransactionLog,
        *,
        changed: bool = True,
    ) -> BaselineEstimate | None:
        """The raw prompt's estimated cache use (the session's fingerprint is updated); None
        without a fingerprint store, a price, or a successful answer. Runs on the log
        writer's thread (it counts tokens)."""
        if self.baselines is None or record.outcome != "ok" or record.prompt_tokens is None:
            return None
        if self.table.lookup(record.model) is None:
            return None
        try:
            return self.baselines.observe(tenant, session, adapter, raw_body, model, changed=changed)
        except Exception:  # an estimate must never lose the line: fall back to same-share
            _log.exception("cache_baseline_failed")
            return None

    def apply(self, record: TransactionLog, cache: BaselineEstimate | None = None) -> None:
        """Set the cost fields of a finished record (usage and token counts filled in):
        ``estimated_cost_usd``, ``baseline_cost_usd`` (from ``cache``, the raw prompt's
        estimated cache use, when given; else the same-share baseline),
        ``baseline_same_share_cost_usd``, ``baseline_cached_tokens``,
        ``baseline_cache_write_tokens`` and ``cost_savings_usd``. Unknown model or no usage
        from the upstream: the fields stay null."""
        price = self.table.lookup(record.model)
        if price is None or record.prompt_tokens is None:
            return
        prompt = record.prompt_tokens
        cached = record.cached_tokens or 0
        completion = record.completion_tokens or 0
        written = record.cache_creation_input_tokens or 0
        written_1h = record.cache_creation_1h_input_tokens or 0
        estimated = request_cost(price, prompt, cached, completion, written, written_1h)
        same_share = baseline_cost(
            price,
            prompt,
            cached,
            completion,
            record.raw_input_tokens,
            record.optimized_input_tokens,
            written,
            written_1h,
            uncached=record.cache_breakpoints_added > 0,
        )
        overhead = 0.0
        if record.compression_overhead_tokens:
            summarizer = self.table.lookup(self.summarizer_model) if self.summarizer_model else None
            overhead = record.compression_overhead_tokens * (summarizer or price).input / _PER
        baseline = same_share
        if cache is not None:
            base_cached, base_written = cache.cached, cache.written
            sent_raw = record.raw_input_tokens == record.optimized_input_tokens
            if sent_raw and record.cache_breakpoints_added == 0 and cached >= base_cached:
                base_cached, base_written = cached, written  # the raw prompt was sent: as billed
            # later upstream calls (retrieval rounds) count as they were billed
            base_cached += sum(h.cached_tokens or 0 for h in record.retrieval_hops[1:])
            baseline, base_cached = cache_baseline_cost(
                price,
                prompt,
                completion,
                record.raw_input_tokens,
                record.optimized_input_tokens,
                base_cached,
                base_written,
            )
            record.baseline_cached_tokens = base_cached
            record.baseline_cache_write_tokens = base_written
        record.estimated_cost_usd = _round(estimated)
        record.baseline_cost_usd = _round(baseline)
        record.baseline_same_share_cost_usd = _round(same_share)
        record.cost_savings_usd = _round(baseline - estimated - overhead)
