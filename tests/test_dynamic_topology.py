"""Time-varying topologies: a new graph every round, drawn from the seed, used by every
runtime (per-node loop, batched engine, Flower relay with one node or a group of nodes per
SuperNode), with each round's spectral gap in the metrics."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
from test_inprocess import assert_same_metrics

from flwr_tempered.engine import EngineOptions, run_batched
from flwr_tempered.experiments.cli import main
from flwr_tempered.ledger import verify_ledger
from flwr_tempered.node import Node, RunConfig, build_world, topology_of
from flwr_tempered.results import read_metrics
from flwr_tempered.runtime.client import make_client_app
from flwr_tempered.runtime.inprocess import run_in_process
from flwr_tempered.runtime.local_grid import run_locally
from flwr_tempered.runtime.server import make_server_app
from flwr_tempered.topology import (
    DynamicTopology,
    Topology,
    get_topology,
    ring,
    round_metrics,
)

DYNAMIC: list[tuple[str, dict[str, Any]]] = [
    ("dynamic_random_regular", {"degree": 3}),
    ("dynamic_erdos_renyi", {"p": 0.5}),
    ("peer_sampling", {"k": 3}),
]

#: A small run with a model-poisoning attack, so crafted vectors follow the graph too.
RUN: dict[str, Any] = {
    "nodes": 8, "byzantine": 2, "dataset": "digits", "model": "logistic_regression",
    "rounds": 3, "eval_every": 1, "local_steps": 2, "batch_size": 16, "lr": 0.1,
    "ledger": False, "rule": "trimmed_mean", "rule_args": {"b": 1}, "attack": "alie",
    "attack_args": {"z": 2.0},
}


def _edges(topology: Topology) -> set[tuple[int, int]]:
    return {(i, j) for i in range(topology.n) for j in topology.neighbors(i)}


@pytest.mark.parametrize(("name", "args"), DYNAMIC, ids=[d[0] for d in DYNAMIC])
def test_the_graph_changes_every_round_and_is_reproducible_from_the_seed(
        name: str, args: dict[str, Any]) -> None:
    topology = get_topology(name, n=12, byzantine=3, seed=5, **args)
    assert isinstance(topology, DynamicTopology) and topology.dynamic
    rounds = [_edges(topology.at_round(t)) for t in range(6)]
    assert all(a != b for a, b in pairwise(rounds))
    again = get_topology(name, n=12, byzantine=3, seed=5, **args)
    assert [_edges(again.at_round(t)) for t in range(6)] == rounds
    assert again.at_round(3).mixing.tolist() == topology.at_round(3).mixing.tolist()
    other = get_topology(name, n=12, byzantine=3, seed=6, **args)
    assert [_edges(other.at_round(t)) for t in range(6)] != rounds
    # the Byzantine nodes stay put
    assert all(topology.at_round(t).byzantine == topology.byzantine for t in range(6))
    assert len(topology.byzantine) == 3 and topology.honest == topology.groups["all"]


@pytest.mark.parametrize(("name", "args"), DYNAMIC, ids=[d[0] for d in DYNAMIC])
def test_each_round_mixing_matrix_is_row_stochastic_on_the_round_graph(
        name: str, args: dict[str, Any]) -> None:
    topology = get_topology(name, n=10, byzantine=2, seed=1, **args)
    for t in range(5):
        current = topology.at_round(t)
        W = current.mixing
        assert np.allclose(W.sum(axis=1), 1.0) and (W >= 0).all()
        support = {(i, j) for i in range(10) for j in range(10) if i != j and W[i, j] > 0}
        assert support == _edges(current)
        assert (np.diag(W) > 0).all()
        if name == "peer_sampling":  # k pulled peers, 1 / (k + 1) each and on itself
            assert current.directed
            assert all(len(current.neighbors(i)) == 3 for i in range(10))
            assert np.allclose(W[W > 0], 1 / 4)
            assert sum(len(current.recipients(i)) for i in range(10)) == 30
        else:
            assert not current.directed and np.allclose(W, W.T)
            assert nx.is_connected(current.graph)
            if name == "dynamic_random_regular":
                assert all(len(current.neighbors(i)) == 3 for i in range(10))
        assert len(current.neighbors(0)) <= topology.degree_bound


def test_dynamic_erdos_renyi_keeps_disconnected_draws_only_when_asked() -> None:
    loose = get_topology("dynamic_erdos_renyi", n=10, p=0.15, seed=0, connected=False)
    rounds = [loose.at_round(t) for t in range(8)]
    assert any(not nx.is_connected(r.graph) for r in rounds)
    split = next(r for r in rounds if not nx.is_connected(r.graph))
    assert split.spectral_gap == pytest.approx(0.0, abs=1e-9)
    tight = get_topology("dynamic_erdos_renyi", n=10, p=0.15, seed=0)
    assert all(nx.is_connected(tight.at_round(t).graph) for t in range(8))


@pytest.mark.parametrize(("name", "args", "match"), [
    ("dynamic_random_regular", {"n": 7, "degree": 3}, "even"),
    ("dynamic_erdos_renyi", {"n": 7, "p": 0.0}, "p must lie"),
    ("dynamic_erdos_renyi", {"n": 7, "p": 0.5, "connected": "yes"}, "connected"),
    ("peer_sampling", {"n": 7, "k": 7}, "k must be < n"),
    ("peer_sampling", {"n": 7, "k": 2, "seed": -1}, "seed"),
    ("peer_sampling", {"n": 7, "k": 2, "byzantine": 7}, "no honest node"),
])
def test_bad_parameters_are_refused_with_the_value(name: str, args: dict[str, Any],
                                                    match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_topology(name, **args)


def test_a_flower_run_config_names_a_time_varying_topology() -> None:
    config = RunConfig.from_mapping({"topology": "peer_sampling", "topology-args": '{"k": 3}',
                                     "nodes": 8, "byzantine": 2, "seed": 4})
    topology = topology_of(config)
    assert isinstance(topology, DynamicTopology)
    assert topology.params == {"n": 8, "k": 3, "seed": 4, "byzantine": 2}
    assert RunConfig.from_mapping(config.to_flower()) == config


def test_a_static_topology_is_its_own_topology_in_every_round() -> None:
    static = ring(6, byzantine=1)
    assert not static.dynamic and static.at_round(7) is static
    assert round_metrics(static, 3) == {}
    assert static.recipients(2) == static.neighbors(2)


def test_nodes_aggregate_exactly_what_their_round_neighbours_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(**RUN, topology="peer_sampling", topology_args={"k": 2})
    seen: dict[tuple[int, int], list[int]] = {}
    aggregate = Node.aggregate

    def spy(self: Node, senders: list[int], vectors: list[Any], round: int,
            **kwargs: Any) -> dict[str, float]:
        seen[(self.position, round)] = list(senders)
        return aggregate(self, senders, vectors, round, **kwargs)

    monkeypatch.setattr(Node, "aggregate", spy)
    lines = run_in_process(config, plot=False)
    topology = topology_of(config)
    for t in range(1, config.rounds + 1):
        for p in topology.honest:  # attackers craft for honest recipients only
            assert seen[(p, t)] == topology.at_round(t).neighbors(p), (p, t)
    # the round's spectral gap and delta_max are in its metrics line
    for line in lines:
        current = topology.at_round(line["round"])
        assert line["spectral_gap"] == pytest.approx(current.spectral_gap)
        assert line["delta_max"] == pytest.approx(current.delta_max)
    assert len({round(line["spectral_gap"], 9) for line in lines}) > 1
    with pytest.raises(ValueError, match="neighbors_at"):
        _ = Node(0, build_world(config)).neighbors


@pytest.mark.parametrize(("name", "args"), DYNAMIC, ids=[d[0] for d in DYNAMIC])
def test_the_batched_engine_gives_the_per_node_metrics(name: str,
                                                       args: dict[str, Any]) -> None:
    config = RunConfig(**RUN, topology=name, topology_args=args)
    local = run_in_process(config, plot=False)
    assert_same_metrics(run_batched(config, plot=False, options=EngineOptions(device="cpu")),
                        local)
    assert "spectral_gap" in local[0]


def test_a_flower_relay_gives_the_in_process_metrics(tmp_path: Path) -> None:
    config = RunConfig(**RUN, topology="dynamic_erdos_renyi", topology_args={"p": 0.5})
    run_locally(make_server_app(config, tmp_path), make_client_app(config), num_nodes=8)
    assert_same_metrics(run_in_process(config, plot=False), read_metrics(tmp_path))


def test_flower_groups_give_the_in_process_batched_metrics(tmp_path: Path) -> None:
    config = RunConfig(**RUN, topology="peer_sampling", topology_args={"k": 3},
                       nodes_per_client=3)
    run_locally(make_server_app(config, tmp_path), make_client_app(config), num_nodes=3)
    whole = run_batched(config, plot=False, options=EngineOptions(device="cpu"))
    assert_same_metrics(read_metrics(tmp_path), whole)


def test_a_ledger_run_on_a_time_varying_graph_commits_every_round(tmp_path: Path) -> None:
    config = RunConfig(**{**RUN, "ledger": True, "rounds": 2, "attack": "none",
                          "attack_args": {}}, topology="peer_sampling", topology_args={"k": 3})
    run_locally(make_server_app(config, tmp_path), make_client_app(config), num_nodes=8)
    report = verify_ledger(tmp_path)
    assert report.rounds == [1, 2] and report.rejections == [] and report.evidence == []
    assert all("spectral_gap" in line for line in read_metrics(tmp_path))


def test_the_command_line_runs_a_time_varying_topology(tmp_path: Path) -> None:
    """The README's ``flwr-tempered run --engine nodes --topology dynamic_random_regular``,
    with fewer nodes and rounds."""
    out = tmp_path / "run"
    code = main(["run", "--engine", "nodes", "--compare", "none",
                 "--topology", "dynamic_random_regular", "--topology-arg", "degree=3",
                 "--nodes", "8", "--byzantine", "1",
                 "--dataset", "digits", "--model", "logistic_regression", "--rounds", "2",
                 "--eval-every", "1", "--local-steps", "1", "--rule", "trimmed_mean",
                 "--rule-arg", "b=1", "--attack", "alie", "--no-ledger", "--out", str(out)])
    assert code in (0, None)
    config = json.loads((out / "config.json").read_text())
    assert config["topology"] == "dynamic_random_regular"
    assert config["topology_args"] == {"degree": 3}
    assert all("spectral_gap" in line for line in read_metrics(out))


@pytest.mark.end_to_end
def test_flower_simulation_gives_the_in_process_metrics(tmp_path: Path) -> None:
    from flwr_tempered.experiments.simulate import simulate

    config = RunConfig(**RUN, topology="dynamic_random_regular", topology_args={"degree": 3})
    simulate(config, tmp_path)
    assert_same_metrics(run_in_process(config, plot=False), read_metrics(tmp_path))
