"""``nocp bench holdout``: conversations replayed once through a live nocp with a holdout
experiment; both cohorts come out of nocp's own log, compared per session."""

from __future__ import annotations

from pathlib import Path

from proxy.bench.holdout import markdown, run_holdout
from proxy.bench.scenarios import Scenario, seed_scenario


async def test_holdout_run_reports_both_cohorts_and_the_measured_saving(tmp_path: Path) -> None:
    """Sixteen API sessions through nocp with holdout 0.5: every request is logged with a
    cohort, both cohorts have sessions, the treated cohort is billed less per session (the tool
    outputs are compressed), and the report shows the saving with its interval."""
    convs = tuple(seed_scenario("api", "medium", seed=i).conversations[0] for i in range(16))
    sc = Scenario(name="api-many", family="api", kind="seed", title="api x16", conversations=convs)
    result = await run_holdout([sc], holdout=0.5, folder=tmp_path)
    assert result["http_errors"] == 0 and result["requests"] == sc.requests
    o = result["overall"]
    control, treated = o["cohorts"]["control"], o["cohorts"]["treated"]
    assert control["sessions"] > 0 and treated["sessions"] > 0
    assert control["sessions"] + treated["sessions"] == 16
    assert control["requests"] + treated["requests"] == sc.requests
    cost = o["saving"]["billed_cost_usd"]
    assert cost["treated"] < cost["control"] and cost["share"] > 0
    assert cost["share_ci"][0] is not None and cost["share_ci"][0] <= cost["share"] <= cost["share_ci"][1]
    assert list(result["by_scenario"]) == ["api-many"]
    report = markdown({**result, "notes": []})
    assert f"{cost['share']:.1%} [{cost['share_ci'][0]:.1%}, {cost['share_ci'][1]:.1%}]" in report
    assert f"| **all** | {control['sessions']} / {treated['sessions']} |" in report
