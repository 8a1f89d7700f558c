"""The benchmark scripts still run (on tiny sizes; their numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flwr_tempered.aggregators import available_rules

ROOT = Path(__file__).resolve().parent.parent


def test_aggregator_benchmark_prints_a_row_for_every_rule() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/aggregators.py", "--k", "8", "--d", "100",
         "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    for name in available_rules():
        assert any(line.startswith(f"| {name} |") for line in rows), name
    assert result.stdout.startswith("machine: ")
