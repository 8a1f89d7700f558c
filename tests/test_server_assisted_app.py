"""The server_assisted Flower app: robust strategies against attack clients, end to end.

Every run here is the app's own ServerApp and ClientApp (simulations/server_assisted),
driven in-process by ``run_locally`` (no Ray), 10 SuperNodes of offline MNIST-5k, 2 of
them attackers (the app's default 20 %). The attack settings are the ones of spec §4 where
it gives numbers (ALIE z = 10, Fang trim b = 2); sign flip is scaled by 4.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "simulations" / "server_assisted"
sys.path.insert(0, str(APP))

import robustness_table  # noqa: E402  (simulations/server_assisted/robustness_table.py)

ATTACK_ARGS: dict[str, dict[str, Any]] = {"alie": {"z": 10}, "sign_flip": {"scale": 4}}
#: Of the rules added from ByzFL, three with distinct server paths: a subset selection
#: (MDA), a spectral filter (CAF) and a pre-aggregation that clips around the global model
#: (ARC over a trimmed mean). The others (SMEA, MoNNA, MeaMed, static clipping) also stay
#: within 5 points here (measured with robustness_table.py: worst drops 0.3 to 1.2).
ROBUST = ("median", "trimmed_mean", "geometric_median", "multi_krum", "bulyan",
          "centered_clipping", "nnm", "fltrust", "mda", "caf", "arc")
ATTACKS = tuple(a for a in robustness_table.ATTACKS
                if a != "none" and a not in robustness_table.BYZFL_ATTACKS)


@pytest.fixture(autouse=True)
def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)


def accuracy(strategy: str, attack: str, tmp_path: Path, **config: Any) -> float:
    """Final test accuracy (%) of one in-process run of the app."""
    extra = {"attack-args": json.dumps(ATTACK_ARGS.get(attack, {})), **config}
    rounds = int(extra.pop("num-server-rounds"))
    return 100 * robustness_table.final_accuracy(strategy, attack, rounds, tmp_path, extra)


@pytest.mark.slow
def test_fedavg_visibly_fails_under_alie_fang_trim_and_sign_flip(tmp_path: Path) -> None:
    """Small CNN, 5 rounds: FedAvg loses at least 20 points under each of the three."""
    clean = accuracy("fedavg", "none", tmp_path, **{"num-server-rounds": 5})
    assert clean > 70.0
    for attack in ("alie", "fang_trim", "sign_flip"):
        attacked = accuracy("fedavg", attack, tmp_path, **{"num-server-rounds": 5})
        assert attacked < clean - 20.0, (attack, clean, attacked)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ROBUST)
def test_robust_strategy_stays_within_5_points_of_no_attack_under_every_attack(
        strategy: str, tmp_path: Path) -> None:
    """Logistic regression (a cheap step, so every attack fits in the suite), 5 rounds."""
    settings = {"num-server-rounds": 5, "model": "logistic_regression"}
    clean = accuracy(strategy, "none", tmp_path, **settings)
    assert clean > 80.0
    drops = {attack: clean - accuracy(strategy, attack, tmp_path, **settings)
             for attack in ATTACKS}
    assert max(drops.values()) <= 5.0, drops


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["median", "caf"])
def test_byzfl_attacks_leave_a_robust_strategy_within_5_points_and_wreck_fedavg(
        strategy: str, tmp_path: Path) -> None:
    """ByzFL's attacks (mimic, ALIE and IPM tuned against the server's own rule, +inf)
    in the suite: two strategies hold, and FedAvg does not (the tuned IPM takes it to
    chance: measured 2.6 % against 86.4 % clean, and +inf gives an infinite model)."""
    settings = {"num-server-rounds": 5, "model": "logistic_regression"}
    clean = accuracy(strategy, "none", tmp_path, **settings)
    drops = {attack: clean - accuracy(strategy, attack, tmp_path, **settings)
             for attack in robustness_table.BYZFL_ATTACKS}
    assert max(drops.values()) <= 5.0, drops
    if strategy == "median":
        assert accuracy("fedavg", "optimal_ipm", tmp_path, **settings) < clean - 20.0


@pytest.mark.end_to_end
@pytest.mark.parametrize("strategy", ROBUST)
def test_every_robust_strategy_holds_under_the_byzfl_attacks(strategy: str,
                                                             tmp_path: Path) -> None:
    """The rest of the matrix for ByzFL's attacks (a CI step of its own)."""
    settings = {"num-server-rounds": 5, "model": "logistic_regression"}
    clean = accuracy(strategy, "none", tmp_path, **settings)
    drops = {attack: clean - accuracy(strategy, attack, tmp_path, **settings)
             for attack in robustness_table.BYZFL_ATTACKS}
    assert max(drops.values()) <= 5.0, drops


@pytest.mark.slow
def test_flwr_run_of_the_app_with_a_strategy_and_an_attack(tmp_path: Path,
                                                           flwr_home: Path) -> None:
    """``flwr run simulations/server_assisted`` through Flower's simulation engine."""
    results = tmp_path / "result.json"
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    overrides = (f"num-server-rounds=2 strategy='trimmed_mean' attack='sign_flip' "
                 f"model='logistic_regression' results='{results}'")
    completed = subprocess.run(
        ["flwr", "run", str(APP), "--stream", "--federation-config", "num-supernodes=10",
         "--run-config", overrides],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    summary = json.loads(results.read_text())
    assert (summary["strategy"], summary["attack"]) == ("trimmed_mean", "sign_flip")
    assert sorted(int(r) for r in summary["accuracy"]) == [0, 1, 2]
    assert summary["accuracy"]["2"] > 0.6
