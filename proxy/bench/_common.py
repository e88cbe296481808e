"""What the benchmarks share: where they write by default, where the LiteLLM peer is installed,
and the source checkout the package may run from (read only: its git state, the evaluation data
beside it).

No benchmark writes into the source tree unless told to: output goes to ``--out`` (default
:data:`DEFAULT_OUT`, ``./nocp-bench`` in the current directory); ``make bench`` passes
``--out benchmarks/results`` to refresh the committed results.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["DEFAULT_OUT", "checkout", "default_peer_venv", "git", "shown"]

DEFAULT_OUT = Path("nocp-bench")


def checkout() -> Path | None:
    """The source checkout this package runs from (an editable install), if any.

    Only read: for the git state a result records and the evaluation data found beside the
    checkout (``../shared/eval-data``). Nothing is written there."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "proxy" / "bench").is_dir():
        return root
    return None


def git(root: Path | None, *args: str) -> str:
    """``git ARGS`` in ``root``, stdout stripped; empty when there is no checkout or no git."""
    if root is None:
        return ""
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def default_peer_venv() -> Path:
    """Where the LiteLLM peer is installed (once, then reused): ``$XDG_CACHE_HOME/nocp/litellm-venv``
    (``~/.cache/nocp/litellm-venv``). ``make bench`` passes ``--peer-venv build/litellm-venv``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nocp" / "litellm-venv"


def shown(path: Path) -> str:
    """``path`` relative to the current directory when it is inside it, else as given."""
    here = Path.cwd().resolve()
    full = path.resolve()
    return str(full.relative_to(here)) if full.is_relative_to(here) else str(path)
