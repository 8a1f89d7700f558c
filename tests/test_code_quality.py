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


#: Packages below ``experiments``: none of them may import it (layers depend downwards).
LOWER_LAYERS = ("aggregators", "attacks", "topology", "data", "models", "ledger", "node",
                "engine", "runtime", "strategies", "clients")


def _imported_modules(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_lower_layer_imports_the_experiments_package() -> None:
    offenders = []
    for package in LOWER_LAYERS:
        for path in sorted((ROOT / "flwr_tempered" / package).rglob("*.py")):
            upward = sorted(m for m in _imported_modules(path)
                            if m.startswith("flwr_tempered.experiments"))
            if upward:
                offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(upward)}")
    assert not offenders, "\n".join(offenders)
