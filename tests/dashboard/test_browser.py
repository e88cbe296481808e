"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) loads ``/dashboard`` from a proxy that served traffic of
two sessions, and the numbers it renders are those of ``nocp logs stats --json`` on the same log.
A screenshot goes to ``build/dashboard.png``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.auth import hash_key
from proxy.cli import main
from proxy.cohorts import compare
from proxy.translog_cli import iter_records
from tests.helpers import REPO, RunningProxy, read_log_turn

ADMIN = "nocp-dashboard-admin"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = REPO / "build" / "dashboard.png"
SCREENSHOT_HOLDOUT = REPO / "build" / "dashboard-holdout.png"
LOG = "\n".join(
    f"2026-05-0{1 + i % 9}T10:{i % 60:02d}:00Z INFO worker-{i % 7} processed batch {i} in {i * 3 % 97} ms"
    for i in range(400)
)
FIGURES = (  # KPI id on the page = key of `nocp logs stats --json`'s total
    "requests",
    "tokens_saved",
    "saved_share",
    "cost_usd",
    "cost_savings_usd",
    "cache_hit_share",
    "retrieval_rate",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
)


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        message = f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def conversation(turn: int) -> list[Any]:
    """An agent turn with a large read_log output, then ``turn`` more user questions."""
    messages = read_log_turn(LOG)
    for k in range(turn):
        messages.append({"role": "assistant", "content": f"Looked at part {k}."})
        messages.append({"role": "user", "content": "More?"})
    return messages


def render(url: str, shot: Path = SCREENSHOT) -> dict[str, Any]:
    """Load the dashboard in headless Chromium; the rendered figures and tables (runs on a thread:
    the proxy serves the browser from the test's event loop)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        body = driver.find_element(By.TAG_NAME, "body")
        WebDriverWait(driver, 20).until(lambda _: body.get_attribute("data-state") != "loading")
        kpis = {}
        for name in (*FIGURES, "sessions", "measured_saving"):
            value = driver.find_element(By.CSS_SELECTOR, f"#kpi-{name} .value")
            kpis[name] = (value.get_attribute("data-value"), value.text)
        tables = {
            name: [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                   for tr in driver.find_elements(By.CSS_SELECTOR, f"#table-{name} tr")[1:]]
            for name in ("recent", "tools-tokens", "tools-saving", "alerts", "cohorts", "policy")
        }  # fmt: skip
        panels = {p: driver.find_element(By.ID, f"panel-{p}").is_displayed() for p in ("cohorts", "policy")}
        points = len(driver.find_elements(By.CSS_SELECTOR, "#chart-tokens polyline"))
        errors = driver.find_element(By.ID, "error").is_displayed()
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        metrics = {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the whole page
        shot.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(shot))
        return {
            "state": body.get_attribute("data-state"),
            "kpis": kpis,
            "tables": tables,
            "panels": panels,
            "lines": points,
            "error": errors,
        }
    finally:
        driver.quit()


def cli_stats(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()  # the proxy's own process log so far
    assert main(["logs", "stats", "--json", *argv]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


async def traffic(proxy: RunningProxy) -> None:
    """Five requests in two sessions through the OpenAI SDK, a second apart (so the time series,
    in 1-second buckets, has several points)."""
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test-0123456789", max_retries=0)
    for session, turns in (("alpha", 3), ("beta", 2)):
        for turn in range(turns):
            await asyncio.sleep(1.0)
            await client.chat.completions.create(
                model="gpt-4o", messages=conversation(turn), extra_headers={"X-Session-Id": session}
            )
    await client.close()


async def test_dashboard_shows_the_logs_stats_figures(
    make_proxy: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headless Chromium renders the dashboard of a proxy with traffic of two sessions: every
    figure shown equals `nocp logs stats --json` on the same log (value and formatting), the
    recent-requests and tools tables are filled, no cohort or policy panel shows without that
    data, and a screenshot is written to build/dashboard.png."""
    _browser_or_skip()
    monkeypatch.delenv("NOCP_CONFIG", raising=False)
    proxy = await make_proxy(auth={"admin_key_sha256": hash_key(ADMIN)})
    await traffic(proxy)
    assert len(await proxy.log_lines(5)) == 5
    SCREENSHOT.unlink(missing_ok=True)
    page = await asyncio.to_thread(render, f"{proxy.url}/dashboard?key={ADMIN}")

    total = cli_stats(capsys, str(proxy.log_path))["total"]
    sessions = cli_stats(capsys, "--by", "session", str(proxy.log_path))["groups"]
    assert page["state"] == "ready" and not page["error"]
    assert total["requests"] == 5 and total["tokens_saved"] > 0 and total["cost_usd"] > 0
    shown = page["kpis"]
    for name in FIGURES:
        raw = shown[name][0]
        assert raw != "", name
        assert float(raw) == pytest.approx(total[name], rel=1e-12), name
    assert int(shown["sessions"][0]) == len(sessions) == 2
    assert shown["requests"][1] == f"{total['requests']:,}"
    assert shown["tokens_saved"][1] == f"{total['tokens_saved']:,}"
    assert shown["saved_share"][1] == f"{total['saved_share'] * 100:.1f}%"
    assert shown["cost_usd"][1] == f"${total['cost_usd']:.4f}"
    assert shown["latency_p95_ms"][1] == f"{total['latency_p95_ms']:.1f} ms"
    assert shown["measured_saving"] == ("", "-")  # no holdout cohort: nothing measured
    recent = page["tables"]["recent"]
    assert len(recent) == 5 and all(row[1] == "gpt-4o" for row in recent)
    assert page["tables"]["tools-tokens"][0][0] == "read_log"
    assert page["tables"]["alerts"] == [["no open alerts"]]
    assert page["panels"] == {"cohorts": False, "policy": False}
    assert page["lines"] == 3
    assert SCREENSHOT.stat().st_size > 10_000


async def test_dashboard_shows_the_holdout_and_the_learned_policy(
    make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a holdout experiment and the learned policy on, the rendered page shows the measured
    saving of `proxy.cohorts.compare` on the same log, a row per cohort and the policy's arms;
    a screenshot is written to build/dashboard-holdout.png."""
    _browser_or_skip()
    monkeypatch.delenv("NOCP_CONFIG", raising=False)
    proxy = await make_proxy(
        auth={"admin_key_sha256": hash_key(ADMIN)},
        experiment={"name": "ab", "holdout": 0.5},
        policy={"enabled": True, "seed": 3},
        pipeline={"workers": 0},
    )
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test-0123456789", max_retries=0)
    async with client:
        for i in range(10):
            await client.chat.completions.create(
                model="gpt-4o", messages=conversation(0), extra_headers={"X-Session-Id": f"s{i}"}
            )
    lines = await proxy.log_lines(10)
    assert {line["cohort"] for line in lines} == {"control", "treated"}
    SCREENSHOT_HOLDOUT.unlink(missing_ok=True)
    page = await asyncio.to_thread(render, f"{proxy.url}/dashboard?key={ADMIN}", SCREENSHOT_HOLDOUT)

    records = list(iter_records([proxy.log_path]))
    share = compare(records)["saving"]["billed_cost_usd"]["share"]
    assert page["state"] == "ready" and not page["error"]
    assert page["panels"] == {"cohorts": True, "policy": True}
    assert float(page["kpis"]["measured_saving"][0]) == pytest.approx(share, rel=1e-12)
    assert sorted(row[0] for row in page["tables"]["cohorts"]) == ["control", "treated"]
    assert any("read_log" in row for row in page["tables"]["policy"])
    assert SCREENSHOT_HOLDOUT.stat().st_size > 10_000
