"""The prompt-cache economics shared by observation aging and the retrieval tool's offer."""

from __future__ import annotations

import pytest

from proxy.cacheecon import BREAKPOINT_WRITE, cached_ratio, decide_miss, expected_remaining_turns
from proxy.config import PricingConfig
from proxy.pricing import PriceTable


def test_expected_remaining_turns_is_the_turns_so_far_capped() -> None:
    """A session that has had n turns is expected to have n more, at most the cap, never < 0."""
    assert [expected_remaining_turns(n, 10) for n in (0, 1, 4, 10, 37)] == [0, 1, 4, 10, 10]
    assert expected_remaining_turns(-3, 10) == 0
    assert [expected_remaining_turns(n, 10, share=0.5) for n in (3, 8, 40)] == [1, 4, 10]  # a share of them


def test_cached_ratio_follows_the_model_price() -> None:
    """gpt-4o caches at 50%, gpt-4.1 at 25%, gpt-5 at 10% of the input price; unknown: 50%."""
    prices = PriceTable.from_config(PricingConfig())
    got = [cached_ratio(prices, m) for m in ("gpt-4o", "gpt-4.1", "gpt-5", "no-such-model")]
    assert got == pytest.approx([0.5, 0.25, 0.1, 0.5])
    assert cached_ratio(None, "gpt-4o") == 0.5


def test_a_miss_pays_only_when_the_removed_tokens_outweigh_it() -> None:
    """1,000 tokens removed against a 10,000-token miss at a 50% cached price: not worth it with
    2 later turns (gain 2,000 vs cost 5,000), worth it with 10 (6,000 vs 5,000)."""
    short = decide_miss(removed=1000, miss_tokens=10_000, cached=0.5, write=1.0, horizon=2)
    long = decide_miss(removed=1000, miss_tokens=10_000, cached=0.5, write=1.0, horizon=10)
    assert (short.gain, short.cost, short.pays) == (2000.0, 5000.0, False)
    assert (long.gain, long.cost, long.pays) == (6000.0, 5000.0, True)


def test_a_cheaper_cache_makes_a_miss_dearer_and_later_savings_smaller() -> None:
    """At a 10% cached price the same change that pays at 50% does not: the miss costs more
    (0.9 per token) and each later turn saves less (0.1 per removed token)."""
    at50 = decide_miss(removed=1000, miss_tokens=10_000, cached=0.5, write=1.0, horizon=10)
    at10 = decide_miss(removed=1000, miss_tokens=10_000, cached=0.1, write=1.0, horizon=10)
    assert at50.pays and not at10.pays


def test_breakpoint_caches_are_written_again_at_their_write_price() -> None:
    """Where the provider caches at breakpoints the miss is a write at 1.25x: a change is
    weighed with that price on both sides."""
    d = decide_miss(removed=100, miss_tokens=1000, cached=0.1, write=BREAKPOINT_WRITE, horizon=0)
    assert d.gain == pytest.approx(125.0) and d.cost == pytest.approx(1150.0)
