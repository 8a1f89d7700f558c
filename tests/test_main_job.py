"""The main job's settings and what they report: BALANCE's constant radius as the default,
the local-only baseline rule, and the acceptance rate of honest and of Byzantine inputs."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from flwr_tempered.aggregators import get_rule
from flwr_tempered.engine import EngineOptions, run_batched
from flwr_tempered.node import RunConfig
from flwr_tempered.node.summary import acceptance_split
from flwr_tempered.results import read_metrics
from flwr_tempered.runtime.inprocess import run_in_process

REPO = Path(__file__).resolve().parent.parent


def test_the_default_run_keeps_balances_radius_constant_and_other_rules_their_own() -> None:
    assert RunConfig().rule == "balance"
    assert dict(RunConfig().rule_args) == {"gamma": 0.5, "kappa": 0.0}
    assert dict(RunConfig(rule="gossip").rule_args) == {}
    # Given settings win, even empty ones: the paper's defaults, as the reproductions use.
    assert dict(RunConfig(rule="balance", rule_args={}).rule_args) == {}
    assert RunConfig.from_mapping(RunConfig().to_flower()) == RunConfig()


def test_the_repository_apps_run_config_is_the_default_run() -> None:
    """``flwr run .`` and ``flwr-tempered run`` run the same main job."""
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    app = {key: value for key, value in app.items() if key != "out"}
    assert RunConfig.from_mapping(app) == RunConfig()
    # ``flwr run . --run-config "rule='median'"`` must not hand BALANCE's settings to the
    # median (the deployment test does exactly this).
    assert dict(RunConfig.from_mapping({**app, "rule": "median"}).rule_args) == {}
    assert dict(RunConfig.from_mapping({**app, "rule-args": "{}"}).rule_args) == {}


def test_local_keeps_its_own_model_and_accepts_nothing() -> None:
    rule = get_rule("local")
    own = torch.tensor([1.0, -2.0, 3.0])
    received = torch.tensor([[9.0, 9.0, 9.0], [float("nan"), 0.0, 0.0]])
    result = rule(own, received)
    assert torch.equal(result, own) and result is not own
    assert rule.accepted_rows is not None and rule.accepted_rows.tolist() == [False, False]
    assert rule.stats["rejected_nonfinite"] == 1.0
    with pytest.raises(ValueError, match=r"local: .*no server form"):
        rule.aggregate_clients(own, received[:1])


def test_acceptance_split_counts_each_kind_of_input_apart() -> None:
    accepted = torch.tensor([True, False, True, True, False])
    from_attacker = torch.tensor([False, False, True, False, True])
    assert acceptance_split(accepted, from_attacker) == {
        "rule_acceptance_honest": pytest.approx(2 / 3),
        "rule_acceptance_byzantine": 0.5,
    }
    # A node with no Byzantine neighbour reports only the honest rate.
    assert acceptance_split(torch.tensor([True, False]), torch.tensor([False, False])) == {
        "rule_acceptance_honest": 0.5}


def test_rules_that_filter_say_which_received_rows_they_took() -> None:
    own = torch.zeros(2, dtype=torch.float64)
    received = torch.tensor([[0.1, 0.0], [float("inf"), 0.0], [5.0, 5.0], [0.0, -0.2]],
                            dtype=torch.float64)
    balance = get_rule("balance", total_rounds=10, gamma=1.0, kappa=0.0)
    balance(own + 1.0, received + 1.0, round=3)  # radius = ||own|| = sqrt(2)
    assert balance.accepted_rows is not None
    assert balance.accepted_rows.tolist() == [True, False, False, True]
    krum = get_rule("multi_krum", f=1, m=2)
    krum(own, received)
    # Of own and the three finite rows, the two lowest Krum scores: own and (0.1, 0).
    assert krum.accepted_rows is not None
    assert krum.accepted_rows.tolist() == [True, False, False, False]
    median = get_rule("median")
    median(own, received)
    assert median.accepted_rows is None


SMALL: dict[str, Any] = {
    "topology": "complete", "topology_args": {}, "nodes": 8, "byzantine": 2,
    "dataset": "digits", "model": "logistic_regression", "rounds": 3, "eval_every": 1,
    "local_steps": 2, "attack": "alie", "attack_args": {"z": 10.0}, "ledger": False,
}


def acceptance(config: RunConfig, folder: Path, engine: str) -> list[tuple[Any, Any]]:
    if engine == "batched":
        run_batched(config, folder, options=EngineOptions(device="cpu"))
    else:
        run_in_process(config, folder)
    return [(line.get("rule_acceptance_honest"), line.get("rule_acceptance_byzantine"))
            for line in read_metrics(folder) if line["round"] > 0]


@pytest.mark.parametrize(("gamma", "expected"), [(1e9, (1.0, 1.0)), (1e-9, (0.0, 0.0))])
def test_balance_reports_what_it_let_in_from_honest_and_byzantine_neighbours(
        tmp_path: Path, gamma: float, expected: tuple[float, float]) -> None:
    """A radius no input can leave takes everything; one no input can enter, nothing.
    (Gaussian noise, not ALIE: an ALIE vector for a target without honest neighbours is
    the target's own model, which any radius lets in.)"""
    settings = {**SMALL, "attack": "gaussian", "attack_args": {"sigma": 1.0}}
    config = RunConfig(**settings, rule="balance", rule_args={"gamma": gamma, "kappa": 0.0})
    for engine in ("batched", "nodes"):
        assert acceptance(config, tmp_path / engine, engine) == [expected] * 3, engine


@pytest.mark.parametrize(("rule", "rule_args"), [
    ("balance", {"gamma": 0.5, "kappa": 0.0}),
    ("multi_krum", {"f": 2, "m": 2}),
    ("mozi", {}),
])
def test_batched_and_per_node_engines_report_the_same_acceptance(
        tmp_path: Path, rule: str, rule_args: dict[str, Any]) -> None:
    config = replace(RunConfig(**SMALL, rule=rule, rule_args=rule_args))
    batched = acceptance(config, tmp_path / "batched", "batched")
    per_node = acceptance(config, tmp_path / "nodes", "nodes")
    assert batched == per_node
    assert all(honest is not None and 0.0 <= honest <= 1.0 for honest, _ in batched)


def test_local_is_not_offered_as_a_server_strategy() -> None:
    from flwr_tempered.strategies.by_name import (
        available_server_strategies,
        make_server_strategy,
    )

    assert "local" not in available_server_strategies()
    with pytest.raises(ValueError, match="'local' has no server form"):
        make_server_strategy("local")


def test_replacing_the_rule_of_the_default_run_drops_balances_settings() -> None:
    config = RunConfig()
    assert dict(replace(config, rule="median").rule_args) == {}
    assert dict(replace(replace(config, rule="median"), rule="balance").rule_args) == {
        "gamma": 0.5, "kappa": 0.0}
    assert dict(replace(config, rule_args={"gamma": 0.3}).rule_args) == {"gamma": 0.3}
    assert type(config.to_dict()["rule_args"]) is dict


def test_mozi_is_not_offered_as_a_server_strategy_either() -> None:
    """MOZI's loss check needs a node's own data, which a server does not have: offered as
    a strategy it kept the global model every round without failing."""
    from flwr_tempered.strategies.by_name import (
        available_server_strategies,
        make_server_strategy,
    )

    assert "mozi" not in available_server_strategies()
    with pytest.raises(ValueError, match="'mozi' has no server form"):
        make_server_strategy("mozi")
