"""The in-process runtime steps the same nodes as a Flower run and reports the same
metrics (to float rounding); the reproduction sweeps rely on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flwr_tempered.experiments.simulate import simulate
from flwr_tempered.node import RunConfig
from flwr_tempered.results import read_metrics
from flwr_tempered.runtime.inprocess import run_in_process

#: Two Byzantine nodes on a sparse graph, so honest nodes receive crafted vectors from
#: different attackers and the omniscient view matters.
CASE: dict[str, Any] = {
    "topology": "erdos_renyi", "topology_args": {"p": 0.5}, "nodes": 7, "byzantine": 2,
    "dataset": "digits", "model": "small_cnn", "rounds": 4, "eval_every": 2,
    "local_steps": 3, "lr": 0.1, "ledger": False, "partition": "dirichlet",
    "partition_args": {"alpha": 0.5},
}


def assert_same_metrics(local: list[dict[str, Any]], flower: list[dict[str, Any]]) -> None:
    """Same keys and values; floats to rounding, as Ray's workers run torch on one thread
    and this process on all cores (reductions add in another order)."""
    assert len(local) == len(flower)
    for mine, theirs in zip(local, flower, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, float):
                assert mine[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
            else:
                assert mine[key] == value, key


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "rule_args", "attack", "attack_args"), [
    ("clipped_gossip", {"tau": 1.0}, "alie", {"z": 10.0}),
    ("trimmed_mean", {"b": 1}, "fang_krum", {}),  # uses the targets' previous models
    ("balance", {}, "label_flip", {}),  # data poisoning: the attacker trains
])
def test_in_process_metrics_equal_a_flower_run(
    tmp_path: Path, rule: str, rule_args: dict[str, Any], attack: str,
    attack_args: dict[str, Any],
) -> None:
    config = RunConfig(**CASE, rule=rule, rule_args=rule_args, attack=attack,
                       attack_args=attack_args)
    flower = read_metrics(simulate(config, tmp_path / "flower"))
    local = run_in_process(config, tmp_path / "local", plot=False)
    assert [m["round"] for m in flower] == [0, 2, 4]
    assert_same_metrics(local, flower)
    assert_same_metrics(read_metrics(tmp_path / "local"), flower)
    # the attack did something: accuracy moved and the rule saw every neighbour
    assert flower[-1]["accuracy_mean"] != flower[0]["accuracy_mean"]


def test_in_process_refuses_what_needs_messages() -> None:
    with pytest.raises(ValueError, match="ledger=False"):
        run_in_process(RunConfig(**{**CASE, "ledger": True}))
    with pytest.raises(ValueError, match="faults"):
        run_in_process(RunConfig(**CASE, faults={"0": {"kind": "nan"}}))


def test_zero_weight_byzantine_edges_carry_nothing(tmp_path: Path) -> None:
    """two_cliques_with_byzantine with delta = 0 (optimization_delta's first point): the
    central node gives its Byzantine leaf weight 0, so the attacker has no one to craft
    for; the run goes on and matches the same run without an attack."""
    base = {"topology": "two_cliques_with_byzantine",
            "topology_args": {"m": 2, "b": 1, "delta": 0.0}, "nodes": 6, "byzantine": 1,
            "dataset": "digits", "model": "small_cnn", "rounds": 3, "eval_every": 1,
            "local_steps": 2, "lr": 0.1, "ledger": False, "rule": "clipped_gossip",
            "rule_args": {"tau": 1.0}}
    attacked = run_in_process(RunConfig(**base, attack="dissensus", attack_args={"eps": 1.5}))
    quiet = run_in_process(RunConfig(**base, attack="none", attack_args={}))
    assert len(attacked) == 4
    for a, q in zip(attacked, quiet, strict=True):
        assert a["accuracy_mean"] == q["accuracy_mean"]
        assert a["consensus_distance"] == pytest.approx(q["consensus_distance"])
