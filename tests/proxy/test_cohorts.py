"""The measured saving: cohorts compared per session with bootstrap intervals, in
``proxy.cohorts.compare`` and ``nocp logs stats --by cohort``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from proxy.cli import main
from proxy.cohorts import METRICS, compare
from proxy.translog import TransactionLog


def sessions(
    n_control: int, n_treated: int, *, saving: float, seed: int = 1, experiment: str = "exp"
) -> list[TransactionLog]:
    """Lines of sessions of 2-6 turns whose requests cost about 0.01 $ (control) or
    ``(1 - saving)`` of it (treated), with noise; a treated line carries a per-request estimate."""
    rng = random.Random(seed)
    lines: list[TransactionLog] = []
    for cohort, n in (("control", n_control), ("treated", n_treated)):
        factor = 1.0 if cohort == "control" else 1 - saving
        for i in range(n):
            for _ in range(rng.randint(2, 6)):
                prompt = int(rng.uniform(800, 1200) * factor)
                cost = prompt * 1e-5
                lines.append(
                    TransactionLog(
                        session_id=f"{cohort}-{i}",
                        experiment=experiment,
                        cohort=cohort,  # type: ignore[arg-type]
                        prompt_tokens=prompt,
                        cached_tokens=prompt // 2,
                        completion_tokens=50,
                        estimated_cost_usd=cost,
                        baseline_cost_usd=cost / factor,
                        cost_savings_usd=cost / factor - cost,
                    )
                )
    rng.shuffle(lines)
    return lines


def test_measured_saving_is_found_with_its_interval() -> None:
    """A 30% cheaper treated cohort: the saving share is near 0.3, its interval holds 0.3 and
    excludes 0, and the comparison is conclusive; each cohort's figures have intervals around
    their means."""
    out = compare(sessions(150, 150, saving=0.3))
    s = out["saving"]["billed_cost_usd"]
    assert abs(s["share"] - 0.3) < 0.05
    assert s["share_ci"][0] < 0.3 < s["share_ci"][1] and s["share_ci"][0] > 0
    assert s["difference_ci"][0] > 0
    per_request = out["saving"]["billed_cost_usd_per_request"]
    assert abs(per_request["share"] - 0.3) < 0.05
    assert per_request["share_ci"][0] < 0.3 < per_request["share_ci"][1]
    assert out["conclusive"] is True and out["reason"] is None
    for cohort in ("control", "treated"):
        c = out["cohorts"][cohort]
        assert c["sessions"] == 150 and c["errors"] == 0
        for m in METRICS:
            low, high = c["per_session"][m]["ci"]
            assert low <= c["per_session"][m]["mean"] <= high
    assert abs(out["estimated_saving_share"] - 0.3) < 0.01  # the estimate, beside the measurement


def test_small_sample_is_not_conclusive() -> None:
    """With fewer sessions than the minimum per cohort the comparison says so."""
    out = compare(sessions(5, 40, saving=0.3))
    assert out["conclusive"] is False and "too few sessions" in out["reason"]
    assert "control has 5" in out["reason"]


def test_no_difference_is_not_conclusive() -> None:
    """Cohorts that cost the same: the interval of the saving includes 0."""
    out = compare(sessions(100, 100, saving=0.0))
    low, high = out["saving"]["billed_cost_usd"]["difference_ci"]
    assert low < 0 < high
    assert out["conclusive"] is False and "includes 0" in out["reason"]


def test_deterministic_json_and_experiment_choice() -> None:
    """The same lines give the same result (a seeded bootstrap), it is plain JSON, lines of
    other experiments and without a cohort are left out, and the latest experiment is the default."""
    lines = [TransactionLog(session_id="x"), *sessions(30, 30, saving=0.2, experiment="old")]
    lines += sessions(25, 25, saving=0.2, seed=2, experiment="new")
    first, second = compare(lines), compare(lines)
    assert first == second and json.loads(json.dumps(first)) == first
    assert (first["experiment"], first["experiments"]) == ("new", ["old", "new"])
    assert first["cohorts"]["control"]["sessions"] == 25
    assert compare(lines, experiment="old")["cohorts"]["treated"]["sessions"] == 30


def test_error_rate_and_no_experiment() -> None:
    """The error rate is errors per request; without any cohort line nothing is concluded."""
    lines = sessions(20, 20, saving=0.1)
    for line in lines[:10]:
        line.outcome = "upstream_error"
    out = compare(lines)
    errors = sum(out["cohorts"][c]["errors"] for c in ("control", "treated"))
    requests = sum(out["cohorts"][c]["requests"] for c in ("control", "treated"))
    assert (errors, requests) == (10, len(lines))
    none = compare([TransactionLog(session_id="a")])
    assert none["experiment"] is None and none["conclusive"] is False


@pytest.fixture
def cohort_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A log of a holdout experiment and lines from before it (no cohort)."""
    monkeypatch.delenv("NOCP_CONFIG", raising=False)
    lines = [TransactionLog(session_id="before"), *sessions(40, 40, saving=0.25)]
    path = tmp_path / "transactions.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in lines))
    return path


def test_logs_stats_by_cohort_json(cohort_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--by cohort --json: one group per cohort (and one for lines without) plus the comparison,
    the same as compare() over the file."""
    assert main(["logs", "stats", "--by", "cohort", "--json", str(cohort_log)]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert sorted(g["key"] for g in out["groups"]) == ["(none)", "control", "treated"]
    records = [
        msgspec.json.decode(line, type=TransactionLog) for line in cohort_log.read_bytes().splitlines()
    ]
    assert out["cohorts"] == json.loads(json.dumps(compare(records)))


def test_logs_stats_by_cohort_table(cohort_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--by cohort prints both cohorts' figures, the measured saving with its interval and the
    per-request estimate labelled as an estimate."""
    assert main(["logs", "stats", "--by", "cohort", str(cohort_log)]) == 0
    text = capsys.readouterr().out
    saving = compare(
        [msgspec.json.decode(line, type=TransactionLog) for line in cohort_log.read_bytes().splitlines()]
    )["saving"]["billed_cost_usd"]
    assert "control (40 sessions)" in text and "treated (40 sessions)" in text
    assert f"measured saving, billed cost per session: {saving['share']:.1%}" in text
    assert f"[{saving['share_ci'][0]:.1%}, {saving['share_ci'][1]:.1%}]" in text
    assert "an estimate, not measured" in text and "conclusive" in text
