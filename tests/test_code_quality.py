"""The linters configured in pyproject.toml stay clean: ruff on the tree, mypy on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
        check=False, timeout=600,
    )


def test_ruff_reports_no_problem() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_reports_no_problem() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
