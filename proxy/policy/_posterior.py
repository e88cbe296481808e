"""The posterior of one arm: a Normal-Gamma model of its reward, and Thompson draws from it.

A reward is in tokens (see :mod:`proxy.policy`) and has no natural bound or scale: a request of
a small tool saves tens of tokens, one of a large tool thousands, and one retrieval can cost
more than all of them. So the reward is modelled as Normal with unknown mean *and* unknown
precision (the conjugate Normal-Gamma prior), which makes the draws scale-free: the spread of
a draw comes from the spread the arm's rewards actually showed, not from a constant. The
prior is weak (one hundredth of an observation at 0); each arm is first tried in
``policy.min_sessions`` sessions before draws decide, so no arm is judged on its prior alone.

The sufficient statistics (count, mean, sum of squared deviations) are merged with Welford's
update, so they stay exact over millions of observations.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import msgspec

__all__ = ["ArmStats", "Posterior", "draw", "observe", "posterior"]

MU0 = 0.0
KAPPA0 = 0.01
ALPHA0 = 1.0
BETA0 = 1.0
PRIOR_OBSERVATIONS = 3.0  # the most a content type's pooled rewards count for in one pair's posterior


class ArmStats(msgspec.Struct, kw_only=True):
    """What one arm of one (tool, content type) has seen: ``pulls`` (sessions it was chosen
    for), ``n`` (rewards observed: one per request), their ``mean`` and ``m2`` (sum of squared
    deviations from the mean)."""

    pulls: int = 0
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def total(self) -> float:
        """The sum of the rewards observed."""
        return self.mean * self.n


def observe(stats: ArmStats, reward: float) -> None:
    """Add one reward to ``stats`` (Welford)."""
    stats.n += 1
    delta = reward - stats.mean
    stats.mean += delta / stats.n
    stats.m2 += delta * (reward - stats.mean)


class Posterior(NamedTuple):
    """Normal-Gamma parameters: the mean reward ~ N(mu, 1 / (kappa * precision)), the
    precision ~ Gamma(alpha, rate beta)."""

    mu: float
    kappa: float
    alpha: float
    beta: float


def posterior(stats: ArmStats, prior: ArmStats | None = None) -> Posterior:
    """The posterior of an arm that has seen ``stats``. ``prior``: what the arm saw elsewhere
    (its content type over every tool), counted as at most :data:`PRIOR_OBSERVATIONS`
    observations with that mean and spread, so the arm's own rewards soon outweigh it."""
    n, mean, m2 = float(stats.n), stats.mean, stats.m2
    if prior is not None and prior.n:
        w = min(float(prior.n), PRIOR_OBSERVATIONS)
        pm, pm2 = prior.mean, prior.m2 * w / prior.n
        total = n + w
        delta = mean - pm
        mean, m2 = pm + delta * n / total, m2 + pm2 + delta**2 * n * w / total
        n = total
    kappa = KAPPA0 + n
    return Posterior(
        mu=(KAPPA0 * MU0 + n * mean) / kappa,
        kappa=kappa,
        alpha=ALPHA0 + n / 2,
        beta=BETA0 + m2 / 2 + KAPPA0 * n * (mean - MU0) ** 2 / (2 * kappa),
    )


def draw(stats: ArmStats, rng: random.Random, prior: ArmStats | None = None) -> float:
    """One Thompson draw of the arm's mean reward from its posterior."""
    p = posterior(stats, prior)
    precision = max(rng.gammavariate(p.alpha, 1 / p.beta), 1e-300)
    return rng.gauss(p.mu, 1 / math.sqrt(p.kappa * precision))
