"""Prompt-cache economics: when a change to an already cached prompt pays for its cache miss.

A provider caches a prompt's prefix; changing anything in it (aging old outputs, a new tool in
the tool list) makes everything from the change on miss once: billed uncached (or written again
where the cache sits at breakpoints, Anthropic's 1.25x) instead of read at the cached price.
The change pays when the tokens it removes, now and on every later turn that resends them (at
the cached price, since they would have been cached reads), outweigh that one miss. How many
later turns: the turns the session is expected to still have. Without more to go on, a session
that has lasted ``n`` turns is expected to last about ``n`` more (the median of the remaining
length of a process observed at a random point), capped by the caller's configured horizon;
so a short session is not charged a miss that only a long one would pay back.

One definition of the weighing, used by observation aging (:mod:`proxy.stages.aging`, over the
expected remaining turns) and by the retrieval tool's mid-session offer (:mod:`proxy.toolloop`,
over a fixed number of turns).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.pricing import PriceTable

__all__ = ["BREAKPOINT_WRITE", "MissDecision", "cached_ratio", "decide_miss", "expected_remaining_turns"]

BREAKPOINT_WRITE = 1.25  # a prompt-cache write, relative to the input price (Anthropic's breakpoints)
_UNKNOWN_CACHED = 0.5  # cached share of the input price for a model without a price


def cached_ratio(prices: PriceTable | None, model: str) -> float:
    """The cached-input price as a share of the input price (0.5 when the model is unknown)."""
    price = prices.lookup(model) if prices is not None else None
    if price is None or not price.input:
        return _UNKNOWN_CACHED
    return price.cached_input / price.input


def expected_remaining_turns(turns_so_far: int, cap: int, share: float = 1.0) -> int:
    """Turns a session that has had ``turns_so_far`` assistant turns is expected to still have:
    ``share`` times as many again (1.0: the median of a length observed at a random point),
    at most ``cap``."""
    return max(0, min(cap, int(turns_so_far * share)))


@dataclass(frozen=True, slots=True)
class MissDecision:
    """A weighed cache miss, in input-price-token units (for the log)."""

    gain: float  # what the removed tokens save, now and over the horizon
    cost: float  # the one-time miss
    horizon: int  # later turns counted

    @property
    def pays(self) -> bool:
        """Whether the change is worth its miss."""
        return self.gain > self.cost


def decide_miss(*, removed: int, miss_tokens: int, cached: float, write: float, horizon: int) -> MissDecision:
    """Weigh removing ``removed`` tokens against ``miss_tokens`` tokens of cached prompt that
    miss once: this turn each removed token saves ``write`` (it is no longer billed at the miss
    price) and each later turn ``cached``; the miss costs ``write - cached`` per token."""
    gain = removed * (write + cached * horizon)
    cost = miss_tokens * (write - cached)
    return MissDecision(gain=gain, cost=cost, horizon=horizon)
