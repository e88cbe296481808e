"""Shared fixtures: where the evaluation data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def eval_data_root() -> Path:
    """``NOCP_EVAL_DATA`` or ``../shared/eval-data`` beside the checkout."""
    return Path(os.environ.get("NOCP_EVAL_DATA", REPO.parent / "shared" / "eval-data"))


@pytest.fixture(scope="session")
def eval_data() -> Path:
    """The evaluation data folder; skips when absent, but fails in CI where it must exist."""
    root = eval_data_root()
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"evaluation data not found at {root} (set NOCP_EVAL_DATA)")
        pytest.skip(f"evaluation data not found at {root} (set NOCP_EVAL_DATA)")
    return root
