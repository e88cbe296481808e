"""What a benchmark run measured per scenario, and the success criteria judged from it.

The criteria of the original plan, each evaluated from the measured totals of the baseline
run (client -> provider) and the nocp run (client -> nocp -> provider), never assumed:

========================  ==================================================================
``input_reduction``       billed input tokens (prompt, cached included) fall by more than 50%
``output_reduction``      billed output tokens fall by more than 30%; only for scenarios that
                          ask for structured output (``response_format``), else ``N/A``
``latency``               end-to-end latency through nocp is under 2x the baseline's
``cost_reduction``        cost with cached-input prices (plus summarizer overhead) falls by
                          more than 40%
``cost_not_higher``       that cost is never higher than the baseline's (ours: a compressor
                          that breaks the provider's prefix cache can make the bill larger)
========================  ==================================================================

A figure with no baseline to compare with (zero tokens, zero cost) is ``N/A``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal

__all__ = [
    "CRITERIA",
    "Criterion",
    "Fidelity",
    "Totals",
    "evaluate",
    "reduction",
    "suite_verdict",
]

Status = Literal["PASS", "FAIL", "N/A"]

# key -> (label, threshold, description); the thresholds are the plan's, the outcome is measured.
CRITERIA: Final[dict[str, tuple[str, float, str]]] = {
    "input_reduction": ("input > 50%", 0.50, "billed input tokens reduced by more than 50%"),
    "output_reduction": (
        "output > 30%",
        0.30,
        "billed output tokens reduced by more than 30% (structured output)",
    ),
    "latency": ("latency < 2x", 2.0, "end-to-end latency under 2x the baseline"),
    "cost_reduction": ("cost > 40%", 0.40, "cache-weighted cost reduced by more than 40%"),
    "cost_not_higher": ("cost <= baseline", 0.0, "cache-weighted cost not higher than the baseline"),
}


@dataclass(slots=True)
class Totals:
    """Sums over the requests of one run of a scenario, as the provider billed them."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # written to the provider's cache (Anthropic), billed above input
    cache_write_1h_tokens: int = 0  # of those, written for an hour
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    cost_uncached_usd: float = 0.0
    overhead_tokens: int = 0
    overhead_cost_usd: float = 0.0
    errors: int = 0

    def add(self, other: Totals) -> None:
        """Add ``other``'s sums to this one's."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def total_cost_usd(self) -> float:
        """Provider cost plus the summarizer's (compression overhead)."""
        return self.cost_usd + self.overhead_cost_usd

    @property
    def cached_share(self) -> float | None:
        """Cached / billed prompt tokens."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_cost_usd"] = self.total_cost_usd
        out["cached_share"] = self.cached_share
        return out


@dataclass(slots=True)
class Fidelity:
    """Hard tokens that later turns use and that were in the tool outputs of a request's prompt
    (``needed``), and how many of them were still in what nocp sent (``kept``), summed over
    requests."""

    needed: int = 0
    kept: int = 0
    requests_full: int = 0
    requests: int = 0
    missed_examples: list[str] = field(default_factory=list)
    # Retrieval rounds a model would need: one per request whose answer uses a value of an
    # observation in its prompt that nocp sent only behind a marker; what each would bill (the
    # round's call and prompt, the fetched original, and both resent on the later turns).
    rounds: int = 0
    round_cost_usd: float = 0.0

    def add(self, other: Fidelity) -> None:
        self.needed += other.needed
        self.kept += other.kept
        self.requests_full += other.requests_full
        self.requests += other.requests
        self.rounds += other.rounds
        self.round_cost_usd += other.round_cost_usd

    @property
    def recall(self) -> float | None:
        return self.kept / self.needed if self.needed else None


@dataclass(frozen=True, slots=True)
class Criterion:
    """One criterion judged on one scenario (or a group of them)."""

    key: str
    label: str
    status: Status
    value: float | None
    threshold: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reduction(before: float, after: float) -> float | None:
    """``1 - after / before``: 0.6 means 60% less; negative means more. None without a baseline."""
    return 1 - after / before if before > 0 else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def evaluate(base: Totals, nocp: Totals, *, structured_output: bool) -> list[Criterion]:
    """Judge every criterion of :data:`CRITERIA` from the two runs' totals."""
    out: list[Criterion] = []

    def judge(key: str, value: float | None, ok: bool | None, detail: str) -> None:
        label, threshold, _ = CRITERIA[key]
        status: Status = "N/A" if ok is None else "PASS" if ok else "FAIL"
        out.append(Criterion(key, label, status, value, threshold, detail))

    threshold = CRITERIA["input_reduction"][1]
    r = reduction(base.prompt_tokens, nocp.prompt_tokens)
    judge(
        "input_reduction",
        r,
        None if r is None else r > threshold,
        f"{base.prompt_tokens} -> {nocp.prompt_tokens} input tokens ({_pct(r)} less)",
    )
    threshold = CRITERIA["output_reduction"][1]
    if structured_output:
        r = reduction(base.completion_tokens, nocp.completion_tokens)
        judge(
            "output_reduction",
            r,
            None if r is None else r > threshold,
            f"{base.completion_tokens} -> {nocp.completion_tokens} output tokens ({_pct(r)} less)",
        )
    else:
        judge("output_reduction", None, None, "no structured output in this scenario")
    threshold = CRITERIA["latency"][1]
    ratio = nocp.latency_s / base.latency_s if base.latency_s > 0 else None
    judge(
        "latency",
        ratio,
        None if ratio is None else ratio < threshold,
        f"{base.latency_s * 1000:.1f} -> {nocp.latency_s * 1000:.1f} ms in all"
        + (f" ({ratio:.2f}x)" if ratio is not None else ""),
    )
    threshold = CRITERIA["cost_reduction"][1]
    r = reduction(base.total_cost_usd, nocp.total_cost_usd)
    judge(
        "cost_reduction",
        r,
        None if r is None else r > threshold,
        f"${base.total_cost_usd:.6f} -> ${nocp.total_cost_usd:.6f} ({_pct(r)} less)",
    )
    higher = nocp.total_cost_usd - base.total_cost_usd
    judge(
        "cost_not_higher",
        higher,
        None if base.requests == 0 else higher <= 1e-12,
        f"nocp {'+' if higher > 0 else '-'}${abs(higher):.6f} vs baseline",
    )
    return out


def suite_verdict(per_scenario: Iterable[tuple[str, Sequence[Criterion]]]) -> Criterion:
    """``cost_not_higher`` across every scenario: PASS only when no scenario failed it."""
    failed: list[str] = []
    judged = 0
    for name, criteria in per_scenario:
        for c in criteria:
            if c.key == "cost_not_higher" and c.status != "N/A":
                judged += 1
                if c.status == "FAIL":
                    failed.append(name)
    status: Status = "N/A" if judged == 0 else "FAIL" if failed else "PASS"
    detail = (
        f"higher in {len(failed)} of {judged} scenarios: {', '.join(failed)}"
        if failed
        else f"not higher in any of {judged} scenarios"
    )
    return Criterion(
        "cost_never_higher", "cost never higher (all scenarios)", status, float(len(failed)), 0.0, detail
    )
