"""The arms' posteriors: exact running statistics, Thompson draws that favour the better arm and
follow the rewards' own scale, and a pooled prior that the arm's own rewards outweigh."""

from __future__ import annotations

import random
import statistics

from proxy.policy import ArmStats, draw, observe, posterior


def _stats(rewards: list[float]) -> ArmStats:
    stats = ArmStats()
    for r in rewards:
        observe(stats, r)
    return stats


def test_observe_keeps_the_exact_mean_and_spread() -> None:
    """Welford's update gives the same mean and variance as computing them from all rewards."""
    rng = random.Random(3)
    rewards = [rng.gauss(1500, 400) for _ in range(500)]
    stats = _stats(rewards)
    assert stats.n == 500
    assert abs(stats.mean - statistics.fmean(rewards)) < 1e-6
    assert abs(stats.m2 / (stats.n - 1) - statistics.variance(rewards)) < 1e-3
    assert abs(stats.total - sum(rewards)) < 1e-3


def test_draws_favour_the_arm_with_the_higher_mean() -> None:
    """With enough rewards, the better arm wins nearly every Thompson draw."""
    rng = random.Random(5)
    good = _stats([rng.gauss(1000, 600) for _ in range(60)])
    bad = _stats([rng.gauss(600, 600) for _ in range(60)])
    wins = sum(draw(good, rng) > draw(bad, rng) for _ in range(400))
    assert wins > 380


def test_draws_follow_the_scale_of_the_rewards() -> None:
    """The spread of the draws comes from the rewards: scaled by 1000, the draws scale too."""
    rng = random.Random(11)
    rewards = [rng.gauss(10, 4) for _ in range(20)]
    small, large = _stats(rewards), _stats([r * 1000 for r in rewards])
    spread_small = statistics.stdev(draw(small, random.Random(i)) for i in range(300))
    spread_large = statistics.stdev(draw(large, random.Random(i)) for i in range(300))
    assert 700 < spread_large / spread_small < 1300


def test_a_pooled_prior_counts_for_a_few_observations_only() -> None:
    """An arm with no rewards of its own starts at the pooled mean; many of its own outweigh it."""
    pooled = _stats([2000.0 + (i % 7) * 10 for i in range(1000)])
    assert abs(posterior(ArmStats(), pooled).mu - pooled.mean) < 0.01 * pooled.mean
    own = _stats([-500.0 + (i % 5) for i in range(200)])
    mu = posterior(own, pooled).mu
    assert -500 < mu < -400  # 200 own observations against at most 3 pooled ones
