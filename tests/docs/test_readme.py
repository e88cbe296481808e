"""The README's promises: its first two commands, its size, and config examples that actually load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy import load_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
YAML_BLOCKS = [
    (page, block) for page in PAGES for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)
]
BENCH_BLOCK = re.compile(r"<!-- bench:start.*?<!-- bench:end -->", re.S)


def test_readme_starts_with_run_and_test() -> None:
    """The first command block of the README is `make run` then `make test`."""
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


def test_readme_stays_a_front_door() -> None:
    """Outside the headline block that `nocp bench` writes, the README is under 8,000 characters."""
    text = README.read_text()
    assert len(BENCH_BLOCK.sub("", text)) < 8000


def test_readme_keeps_the_bench_markers() -> None:
    """The README holds exactly one `nocp bench` headline block, start marker before end marker."""
    text = README.read_text()
    assert text.count("<!-- bench:start") == 1
    assert text.count("<!-- bench:end -->") == 1
    assert BENCH_BLOCK.search(text) is not None


@pytest.mark.parametrize(
    ("page", "block"),
    YAML_BLOCKS,
    ids=[f"{page.name}-yaml-{i}" for i, (page, _) in enumerate(YAML_BLOCKS)],
)
def test_config_examples_load(
    page: Path, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every YAML example in the README and docs/ is a valid nocp config."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    path = tmp_path / "nocp.yaml"
    path.write_text(block)
    load_settings(path, env={"OPENAI_API_KEY": "sk-example"})
