"""The cost model: prices by model glob, cached vs uncached input, baseline and savings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from proxy.config import PricingConfig, load_settings
from proxy.exceptions import ConfigError
from proxy.pricing import CostModel, Price, PriceTable, baseline_cost, request_cost
from proxy.translog import TransactionLog

if TYPE_CHECKING:
    from proxy.testing import FakeUpstream
    from tests.helpers import ProxyFactory

GPT_4O = Price(2.50, 1.25, 10.00)
GPT_41 = Price(2.00, 0.50, 8.00)


def _table(**models: Any) -> PriceTable:
    return PriceTable.from_config(PricingConfig(models=models) if models else PricingConfig())


def test_uncached_request_cost() -> None:
    """With nothing cached every prompt token is billed at the input price."""
    # 10,000 * 2.50 + 500 * 10.00 = 30,000 USD per 1M tokens
    assert request_cost(GPT_4O, 10_000, 0, 500) == pytest.approx(0.03)


def test_cached_tokens_are_billed_at_the_cached_price() -> None:
    """Cached prompt tokens cost the cached-input price, the rest the input price."""
    # 5,904 * 2.50 + 4,096 * 1.25 + 500 * 10.00 = 14,760 + 5,120 + 5,000 = 24,880 per 1M
    assert request_cost(GPT_4O, 10_000, 4_096, 500) == pytest.approx(0.02488)


def test_cached_count_is_clamped_to_the_prompt() -> None:
    """A cached count above the prompt (bad usage) never makes the cost negative."""
    assert request_cost(GPT_41, 1_000, 5_000, 0) == pytest.approx(1_000 * 0.50 / 1e6)


def test_baseline_adds_removed_tokens_with_the_same_cached_share() -> None:
    """The baseline bills prompt + (raw - optimized) tokens, cached for the same share."""
    # sent 10,000 (4,000 cached: share 0.4); raw 25,000 vs optimized 9,800 locally: +15,200
    # baseline prompt 25,200, cached round(25,200 * 0.4) = 10,080
    # 15,120 * 2.00 + 10,080 * 0.50 + 500 * 8.00 = 30,240 + 5,040 + 4,000 = 39,280 per 1M
    assert baseline_cost(GPT_41, 10_000, 4_000, 500, 25_000, 9_800) == pytest.approx(0.03928)


def test_cost_model_fills_the_three_fields() -> None:
    """estimated from the upstream's usage, baseline from raw tokens, savings the difference."""
    record = TransactionLog(model="gpt-4.1-2025-04-14", prompt_tokens=10_000, cached_tokens=4_000)
    record.completion_tokens = 500
    record.set_input_tokens(25_000, 9_800)
    CostModel(_table()).apply(record)
    # estimated: 6,000 * 2.00 + 4,000 * 0.50 + 500 * 8.00 = 18,000 per 1M
    assert record.estimated_cost_usd == pytest.approx(0.018)
    assert record.baseline_cost_usd == pytest.approx(0.03928)
    assert record.cost_savings_usd == pytest.approx(0.03928 - 0.018)


def test_unchanged_request_saves_nothing() -> None:
    """When nocp changed nothing the baseline equals the estimate exactly."""
    record = TransactionLog(model="gpt-4o", prompt_tokens=3_000, cached_tokens=1_024, completion_tokens=20)
    record.set_input_tokens(3_000, 3_000)
    CostModel(_table()).apply(record)
    assert record.baseline_cost_usd == record.estimated_cost_usd
    assert record.cost_savings_usd == 0.0


def test_summarizer_overhead_is_subtracted_from_savings() -> None:
    """Summarizer tokens are priced at the summarizer model's input price and subtracted."""
    record = TransactionLog(model="gpt-4o", prompt_tokens=1_000, cached_tokens=0, completion_tokens=0)
    record.compression_overhead_tokens = 2_000
    record.set_input_tokens(5_000, 1_000)
    CostModel(_table(), summarizer_model="gpt-4o-mini").apply(record)
    # estimated 1,000 * 2.50 = 2,500; baseline 5,000 * 2.50 = 12,500; overhead 2,000 * 0.15 = 300
    assert record.estimated_cost_usd == pytest.approx(0.0025)
    assert record.baseline_cost_usd == pytest.approx(0.0125)
    assert record.cost_savings_usd == pytest.approx(0.0125 - 0.0025 - 0.0003)


def test_unknown_model_or_missing_usage_leaves_cost_null() -> None:
    """No price for the model, or no usage from the upstream: the cost fields stay null."""
    for record in (
        TransactionLog(model="my-local-llama", prompt_tokens=100, completion_tokens=5),
        TransactionLog(model="gpt-4o"),
    ):
        CostModel(_table()).apply(record)
        assert (record.estimated_cost_usd, record.baseline_cost_usd, record.cost_savings_usd) == (
            None,
            None,
            None,
        )


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o-mini-2024-07-18", Price(0.15, 0.075, 0.60)),
        ("gpt-4o-2024-08-06", GPT_4O),
        ("openai/gpt-4.1-mini", Price(0.40, 0.10, 1.60)),
        ("GPT-5", Price(1.25, 0.125, 10.00)),
        ("gpt-5-mini", Price(0.25, 0.025, 2.00)),
        ("o4-mini", Price(1.10, 0.275, 4.40)),
        ("models/gemini-2.5-flash", Price(0.30, 0.03, 2.50)),
        ("gemini-2.5-pro", Price(1.25, 0.125, 10.00)),
    ],
)
def test_model_names_match_the_most_specific_glob(model: str, price: Price) -> None:
    """Dated snapshots and provider prefixes find their family's price; minis are not their parents."""
    assert _table().lookup(model) == price


def test_configured_prices_come_before_the_built_in_table() -> None:
    """A configured glob overrides the built-in price; cached input defaults to the input price."""
    from proxy.config import ModelPriceConfig

    table = _table(
        **{
            "gpt-4o*": ModelPriceConfig(input=1.0, output=2.0),
            "llama-*": ModelPriceConfig(input=0.0, output=0.0),
        }
    )
    assert table.lookup("gpt-4o") == Price(1.0, 1.0, 2.0)
    assert table.lookup("llama-3-70b") == Price(0.0, 0.0, 0.0)
    assert table.lookup("gpt-4o-mini") == Price(1.0, 1.0, 2.0)  # the configured glob matches first


def test_pricing_settings_validate_and_switch_off() -> None:
    """Negative prices are rejected naming the key; enabled: false gives no cost model."""
    with pytest.raises(ConfigError, match="pricing"):
        load_settings(env={}, overrides={"pricing": {"models": {"x*": {"input": -1, "output": 1}}}})
    settings = load_settings(env={"NOCP_PRICING__ENABLED": "false"})
    assert CostModel.from_settings(settings) is None
    assert CostModel.from_settings(load_settings(env={})) is not None


async def test_proxy_writes_cost_fields(make_proxy: ProxyFactory, fake: FakeUpstream) -> None:
    """A request through the proxy gets the cost fields filled from the fake's usage."""
    proxy = await make_proxy()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there, how are you?"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        usage = (await resp.json())["usage"]
    (line,) = await proxy.log_lines(1)
    expected = request_cost(GPT_4O, usage["prompt_tokens"], 0, usage["completion_tokens"])
    assert line["estimated_cost_usd"] == pytest.approx(expected)
    assert line["baseline_cost_usd"] == pytest.approx(expected)
    assert line["cost_savings_usd"] == 0.0
