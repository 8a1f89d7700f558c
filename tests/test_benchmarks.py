"""The benchmark scripts still run (on tiny sizes; their numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flwr_tempered.aggregators import available_rules

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str) -> list[str]:
    """Run ``script`` (a path in the repository) with ``args``; return its table rows (it
    must exit 0 and start by describing the machine)."""
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("machine: ")
    return [line for line in result.stdout.splitlines() if line.startswith("| ")]


def test_aggregator_benchmark_prints_a_row_for_every_rule() -> None:
    rows = run_benchmark("benchmarks/aggregators.py", "--k", "8", "--d", "100", "--repeats", "1")
    for name in available_rules():
        assert any(line.startswith(f"| {name} |") for line in rows), name


def test_server_strategy_benchmark_prints_a_row_for_every_strategy() -> None:
    rows = run_benchmark("benchmarks/server_strategies.py", "--k", "8", "--d", "64",
                         "--repeats", "1")
    for name in ["RobustFedAvg(mean) vs FedAvg", "Median vs FedMedian",
                 "TrimmedMean(beta=0.2) vs FedTrimmedAvg(beta=0.2)", "Krum",
                 "MultiKrum(m=k/2)", "Bulyan(selection=multi_krum) vs Bulyan",
                 "Bulyan(selection=repeated) vs Bulyan", "GeometricMedian",
                 "CenteredClipping"]:
        assert any(line.startswith(f"| {name} | 8 |") for line in rows), name
    # The coordinate-wise rules return Flower's model (the Krum family may pick another
    # winner where Flower's float32 distances round: see the benchmark's docstring).
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0].split()[0] in ("RobustFedAvg(mean)", "Median", "TrimmedMean(beta=0.2)"):
            assert float(cells[6]) < 1e-5, line


def _engine_rows(rows: list[str], setting: str) -> dict[str, float]:
    """Engine label -> seconds per iteration of ``setting``'s rows in the engine table."""
    found = {}
    for line in rows:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == setting:
            found[cells[3]] = float(cells[6])
    return found


def test_engine_benchmark_times_both_engines_on_the_seed_setting(tmp_path: Path) -> None:
    import json

    saved = tmp_path / "engine.json"
    rows = run_benchmark("benchmarks/engine.py", "--only", "seed", "--model",
                         "logistic_regression", "--nodes", "6", "--rounds", "3",
                         "--save", str(saved))
    seconds = _engine_rows(rows, "seed")
    assert set(seconds) == {"batched", "per-node"}, rows
    assert all(value > 0 for value in seconds.values()), rows
    figures = json.loads(saved.read_text())["settings"]["seed"]
    assert figures["model"] == "logistic_regression" and figures["nodes"] == 6
    assert figures["seconds_per_iteration"]["batched"]["cpu" if not _cuda() else "cuda"] > 0


def test_engine_benchmark_times_both_engines_on_a_small_er100() -> None:
    rows = run_benchmark("benchmarks/engine.py", "--only", "er100", "--nodes", "12",
                         "--rounds", "3")
    seconds = _engine_rows(rows, "er100")
    assert set(seconds) == {"batched", "per-node"}, rows
    assert all(value > 0 for value in seconds.values()), rows


def test_engine_benchmark_refuses_a_missing_reference_checkout(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkout"
    result = subprocess.run([sys.executable, "benchmarks/engine.py", "--only", "seed",
                             "--reference", str(missing)], cwd=ROOT, capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode != 0
    assert str(missing) in result.stderr, result.stderr


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_aggregator_benchmark_on_cuda_or_a_clear_refusal() -> None:
    if _cuda():
        rows = run_benchmark("benchmarks/aggregators.py", "--device", "cuda", "--k", "8",
                             "--d", "100", "--repeats", "1")
        for name in available_rules():
            assert any(line.startswith(f"| {name} |") for line in rows), name
        return
    result = subprocess.run([sys.executable, "benchmarks/aggregators.py", "--device", "cuda",
                             "--k", "8", "--d", "100", "--repeats", "1"], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr, result.stderr
    assert "| " not in result.stdout
