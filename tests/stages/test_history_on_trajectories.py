"""The history roll-up on real agent trajectories (eval-data): retention targets and prefix stability."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.bench import history as bench
from proxy.config import HistoryConfig


@pytest.mark.evaldata
async def test_swe_agent_rollups_keep_facts_and_prefix(eval_data: Path, tmp_path: Path) -> None:
    """Replaying the SWE-agent trajectories, roll-ups keep >= 95% of paths, commands, numbers and ids
    of the summarized turns, and every request not at a cut step keeps the previous prompt as prefix."""
    config = HistoryConfig(threshold_tokens=4000, keep_last_messages=6, cut_step_tokens=2000)
    result = await bench.run_swe(eval_data, config, tmp_path)
    retention, stability = result["retention"], result["stability"]
    assert stability.rolled > 20 and stability.cut_steps > 5
    assert stability.unstable_other == 0
    for kind in bench.TARGET_KINDS:
        assert retention.total[kind] > 0
        assert retention.share(kind) >= bench.TARGET, (kind, retention.misses[kind][:5])
    assert result["tokens"].sent < result["tokens"].raw
