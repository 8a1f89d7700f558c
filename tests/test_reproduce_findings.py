"""Each experiment's qualitative finding, on a shortened run of its cpu preset.

Shortened: fewer steps, evaluation only at the start and the end, and only the runs the
finding compares. Where a finding needs the full length to reach the paper's margin (the
dumbbells: information crosses a cut with spectral gap 0.015 slowly), the test asserts
the direction at its length and says so; the full-strength check runs on the cpu preset
results (``flwr-tempered plot``) and is recorded in docs/reproduction.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flwr_tempered.experiments.reproduce.findings import honest_majority, optimization_delta
from flwr_tempered.experiments.reproduce.runner import load_results, run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.reproduction]


def shortened(root: Path, experiment: str, rounds: int, only: list[str]
              ) -> list[tuple[object, list[dict[str, float]]]]:
    run_experiment(experiment, "cpu", root, rounds=rounds, eval_every=rounds, only=only,
                   echo=lambda _: None, round_progress=False)
    results = load_results(experiment, "cpu", root)
    assert sorted(c.key for c, _ in results) == sorted(only)
    assert all(m[-1]["round"] == rounds for _, m in results)
    return results  # type: ignore[return-value]


def final(results: list[tuple[object, list[dict[str, float]]]], key: str,
          metric: str) -> float:
    return next(m[-1][metric] for c, m in results if c.key == key)  # type: ignore[attr-defined]


def test_optimization_delta_accuracy_falls_with_delta_max(tmp_path: Path) -> None:
    """450 of 1,500 steps, delta_max 0 and 0.25 under dissensus."""
    results = shortened(tmp_path, "optimization_delta", 450,
                        ["delta0-dissensus1.5", "delta0.25-dissensus1.5"])
    finding = optimization_delta(results)[0]  # type: ignore[arg-type]
    assert finding.holds, finding


def test_honest_majority_clipped_gossip_without_majority_tm_rfa_collapse(
        tmp_path: Path) -> None:
    """ClippedGossip in the three cells without local honest majority (the harder half;
    all six are checked on the cpu preset) at 180 of 900 steps; trimmed mean and RFA
    there under ALIE at 60 steps (they never leave chance)."""
    cells = [f"hm0-ClippedGossip-{a}" for a in ("ALIE10", "IPM", "dissensus1.5")]
    clipped = shortened(tmp_path / "cg", "honest_majority", 180, cells)
    broken = shortened(tmp_path / "tm", "honest_majority", 60,
                       ["hm0-TM-ALIE10", "hm0-RFA-ALIE10"])
    for _, metrics in clipped:
        assert metrics[-1]["accuracy_avg_model"] > 0.8, metrics[-1]
    chance = honest_majority(clipped + broken)[1]  # type: ignore[arg-type]
    assert chance.holds, chance


def test_dumbbell_robust_rules_stall_at_the_cut(tmp_path: Path) -> None:
    """Non-IID at 400 of 900 steps: gossip's clique-1 model has started to learn clique
    2's labels, trimmed mean's stays at clique 1's five labels (under 50 %). The paper's
    10-point margin needs the full length (12 points at 900 steps: see
    docs/reproduction.md)."""
    results = shortened(tmp_path, "dumbbell", 400, ["non-IID-gossip", "non-IID-TM"])
    gossip = final(results, "non-IID-gossip", "accuracy_avg_model_clique_1")
    trimmed = final(results, "non-IID-TM", "accuracy_avg_model_clique_1")
    assert gossip > trimmed + 0.02, (gossip, trimmed)
    assert trimmed < 0.5


def test_dumbbell_improvement_bucketing_and_edge_help_clipped_gossip(
        tmp_path: Path) -> None:
    """ClippedGossip gains with bucketing plus the random edge (paper: 70.7 -> 78.5 %),
    at 270 of 900 steps. Trimmed mean's gain (paper: 50.7 -> 73.5 %) shows at the cpu
    preset's 450 steps with the reference bucketing layout (docs/reproduction.md)."""
    results = shortened(tmp_path, "dumbbell_improvement", 270,
                        ["ClippedGossip-base", "ClippedGossip-bucketing+edge"])
    base = final(results, "ClippedGossip-base", "accuracy_avg_model_clique_1")
    both = final(results, "ClippedGossip-bucketing+edge", "accuracy_avg_model_clique_1")
    assert both > base + 0.015, (base, both)


def test_dumbbell_cifar_cpu_preset_clipped_gossip_above_trimmed_mean(tmp_path: Path) -> None:
    """The cpu preset (MNIST-5k, small CNN, batch 64, lr 0.1 with its step schedule) at
    150 of 400 steps, non-IID: ClippedGossip's clique-1 model above trimmed mean's."""
    results = shortened(tmp_path, "dumbbell_cifar", 150,
                        ["non-IID-ClippedGossip", "non-IID-TM"])
    clipped = final(results, "non-IID-ClippedGossip", "accuracy_avg_model_clique_1")
    trimmed = final(results, "non-IID-TM", "accuracy_avg_model_clique_1")
    assert clipped > trimmed + 0.1, (clipped, trimmed)


def test_balance_keeps_its_worst_honest_error_except_under_the_adaptive_attack(
        tmp_path: Path) -> None:
    """The cpu preset's 100 rounds, BALANCE with no attack, under dissensus (which wrecks
    gossip) and under the adaptive attack built against it (vectors just inside its
    acceptance radius). The other six attacks are checked on the cpu preset."""
    keys = ["BALANCE-none", "BALANCE-dissensus", "BALANCE-BALANCE-adaptive"]
    results = shortened(tmp_path, "balance_grid", 100, keys)
    error = {key: 1.0 - final(results, key, "accuracy_min") for key in keys}
    assert error["BALANCE-none"] < 0.2, error
    assert error["BALANCE-dissensus"] <= error["BALANCE-none"] + 0.05, error
    assert error["BALANCE-BALANCE-adaptive"] > error["BALANCE-none"] + 0.5, error
