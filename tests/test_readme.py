"""The README's promises: its first two commands, and config examples that actually load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy import load_settings

README = Path(__file__).resolve().parent.parent / "README.md"
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)


def test_readme_starts_with_run_and_test() -> None:
    """The first command block of the README is `make run` then `make test`."""
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[f"yaml-{i}" for i in range(len(YAML_BLOCKS))])
def test_readme_config_examples_load(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every YAML example in the README is a valid nocp config."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    path = tmp_path / "nocp.yaml"
    path.write_text(block)
    load_settings(path, env={"OPENAI_API_KEY": "sk-example"})
