"""``nocp bench`` as a user command: ``nocp bench NAME`` runs one benchmark of the package, and a
run without ``--out`` writes to ``./nocp-bench`` in the current directory, nothing into the
source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.bench.cli import BENCHMARKS
from proxy.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
# not the source tree: the virtual environment, git's own files, caches of tools and of Python
NOT_SOURCE = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` (but :data:`NOT_SOURCE`), with its modification time."""
    files: dict[str, int] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_SOURCE and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder) / name
            files[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return files


def _nocp(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_bench_without_out_writes_to_the_current_directory_only(tmp_path: Path) -> None:
    """``nocp bench --quick`` (the suite, then the overhead benchmark on its own) run from another
    folder writes its files to ``./nocp-bench`` there, and nothing in the checkout changes."""
    before = _tree(REPO)
    suite = _nocp(tmp_path, "--quick", "--no-overhead", "--scenarios", "api-small", "--protocols", "chat")
    assert suite.returncode == 0, suite.stderr[-2000:]
    overhead = _nocp(tmp_path, "overhead", "--quick", "--requests", "10", "--time-cap", "2")
    assert overhead.returncode == 0, overhead.stderr[-2000:]
    after = _tree(REPO)
    changed = sorted(p for p in after if before.get(p) != after[p])
    assert not changed, f"written into the checkout: {changed}"
    assert [p.name for p in tmp_path.iterdir()] == ["nocp-bench"]
    written = {p.name for p in (tmp_path / "nocp-bench").iterdir()}
    assert {"bench-quick.json", "bench-quick.md", "overhead-quick.json"} <= written


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_bench_name_runs_that_benchmark(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``nocp bench NAME --help`` reaches the benchmark's own options (everything after NAME is its)."""
    args = build_parser().parse_args(["bench", name, "--help"])
    assert (args.benchmark, args.argv) == (name, ["--help"])
    with pytest.raises(SystemExit) as exc:
        main(["bench", name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: nocp bench {name} ")


def test_bench_without_name_is_the_suite() -> None:
    args = build_parser().parse_args(["bench", "--quick", "--out", "x"])
    assert args.benchmark is None and args.quick and args.out == Path("x") and args.update_readme is None


def test_update_readme_needs_a_full_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A quick run never writes the README's headline block, even when asked."""
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert main(["bench", "--quick", "--update-readme", str(readme), "--out", str(tmp_path / "out")]) == 2
    assert "--update-readme" in capsys.readouterr().err
    assert readme.read_text() == "# x\n" and not (tmp_path / "out").exists()
