"""The transport-free node: screening, aggregation with mixing weights, custom tasks."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn

from flwr_tempered.node import FunctionTask, Node, RunConfig, build_world, screen

CONFIG = RunConfig(topology="ring", topology_args={}, nodes=5, byzantine=1, dataset="digits",
                   rule="gossip", attack="ipm", rounds=3, local_steps=2)


def test_screen_rejects_missing_wrong_shape_and_wrong_dtype() -> None:
    good = np.zeros(4, dtype=np.float32)
    vectors = [good, None, np.zeros(3, dtype=np.float32), np.zeros(4, dtype=np.float64), good]
    kept, reasons = screen(vectors, 4, np.dtype(np.float32))
    assert kept == [0, 4]
    assert reasons == ["missing", "shape (3,) != (4,)", "dtype float64 != float32"]


def test_honest_node_gossips_with_its_row_of_the_mixing_matrix() -> None:
    world = build_world(CONFIG)
    honest = next(p for p in range(5) if p not in world.topology.byzantine)
    node = Node(honest, world)
    d = node.state.params.shape[0]
    senders = node.neighbors
    vectors = [np.full(d, float(i + 1), dtype=np.float32) for i in range(len(senders))]
    before = node.state.params.clone()
    metrics = node.aggregate(senders, vectors, round=1)
    row = world.topology.mixing[honest]
    expected = row[honest] * before + sum(
        row[s] * torch.from_numpy(v) for s, v in zip(senders, vectors, strict=True))
    torch.testing.assert_close(node.state.params, expected.float())
    assert metrics["rejected_malformed"] == 0


def test_a_malformed_neighbour_leaves_its_weight_on_the_node() -> None:
    world = build_world(CONFIG)
    honest = next(p for p in range(5) if p not in world.topology.byzantine)
    node = Node(honest, world)
    d = node.state.params.shape[0]
    senders = node.neighbors
    vectors: list[np.ndarray | None] = [np.ones(d, dtype=np.float32), np.ones(d + 1, np.float32)]
    before = node.state.params.clone()
    metrics = node.aggregate(senders, vectors, round=1)
    w = float(world.topology.mixing[honest, senders[0]])
    torch.testing.assert_close(node.state.params, (1 - w) * before + w * torch.ones(d))
    assert metrics["rejected_malformed"] == 1


def test_messages_refused_upstream_lower_the_rule_budget_instead_of_crashing() -> None:
    """Trimmed mean with b = 1 needs two inputs besides own; with three of four neighbours'
    messages refused by the ledger the node still aggregates (budget lowered to 0)."""
    config = RunConfig(topology="complete", topology_args={}, nodes=5, byzantine=1,
                       dataset="digits", rule="trimmed_mean", rule_args={"b": 1},
                       attack="none", rounds=3, local_steps=2)
    world = build_world(config)
    honest = next(p for p in range(5) if p not in world.topology.byzantine)
    node = Node(honest, world)
    d = node.state.params.shape[0]
    before = node.state.params.clone()
    metrics = node.aggregate(node.neighbors[:1], [np.ones(d, dtype=np.float32)], round=1,
                             refused=3)
    assert metrics["rule_refused"] == 3.0 and metrics["received"] == 4.0
    torch.testing.assert_close(node.state.params, (before + 1.0) / 2)


def _model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def _train(model: nn.Module, partition_id: int, transform: object) -> Mapping[str, float]:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0 + partition_id)
    return {"steps": 1.0}


def _evaluate(model: nn.Module, partition_id: int) -> Mapping[str, float]:
    total = sum(float(p.sum()) for p in model.parameters())
    return {"accuracy": 0.5, "loss": total}


def test_function_task_turns_user_code_into_a_node() -> None:
    world = build_world(CONFIG)
    tasks = [FunctionTask(_model, _train, _evaluate, partition_id=p, seed=3) for p in range(2)]
    start = [t.initial_parameters() for t in tasks]
    torch.testing.assert_close(start[0], start[1])  # same seed: same starting model
    node = Node(0 if 0 not in world.topology.byzantine else 1, world, task=tasks[1])
    before = node.state.params.clone()
    metrics = node.train(round=0)
    assert metrics == {"steps": 1.0}
    torch.testing.assert_close(node.state.params, before + 2.0)
    assert node.evaluate()["accuracy"] == pytest.approx(0.5)


def test_sign_flip_attacker_reverses_its_own_update_across_a_state_round_trip() -> None:
    """Sign flip needs the model the attacker started training from; it must survive the
    node state's trip through Flower records between the train and attack messages."""
    from flwr.app import RecordDict

    from flwr_tempered.node import TargetInputs
    from flwr_tempered.runtime.state import load_node_state, save_node_state

    config = RunConfig(topology="ring", topology_args={}, nodes=4, byzantine=1,
                       model="logistic_regression",
                       model_args={"in_features": 784, "num_classes": 10},
                       attack="sign_flip", attack_args={"scale": 2.0}, rule="gossip",
                       rounds=2, ledger=False)
    world = build_world(config)
    attacker_position = sorted(world.topology.byzantine)[0]
    attacker = Node(attacker_position, world)
    start = attacker.state.params.clone()
    attacker.train(round=0)
    trained = attacker.state.params.clone()
    assert not torch.equal(start, trained)
    records = RecordDict()
    save_node_state(attacker.save_state(), records)
    resumed = Node(attacker_position, world)
    resumed.load_state(load_node_state(records))
    target = world.topology.neighbors(attacker_position)[0]
    honest = [j for j in world.topology.neighbors(target) if j not in world.topology.byzantine]
    zeros = np.zeros_like(trained.numpy())
    crafted = resumed.craft([TargetInputs(node=target, model=zeros, honest_neighbors=honest,
                                          honest_models=[zeros] * len(honest))], round=0)
    assert torch.allclose(crafted[target], start - 2.0 * (trained - start),
                          atol=1e-6)


@pytest.mark.parametrize(("attack", "trains"), [("ipm", False), ("label_flip", True)])
def test_an_attacker_trains_only_when_its_attack_reads_its_own_model(attack: str,
                                                                      trains: bool) -> None:
    world = build_world(RunConfig(**{**CONFIG.to_dict(), "attack": attack,
                                     "attack_args": {}}))
    attacker = Node(sorted(world.topology.byzantine)[0], world)
    start = attacker.state.params.clone()
    metrics = attacker.train(round=0)
    assert torch.equal(attacker.state.params, start) is not trains
    assert ("train_loss" in metrics) is trains


def test_the_batched_engine_leaves_untrained_attackers_as_they_were() -> None:
    from flwr_tempered.engine import BatchedEngine

    engine = BatchedEngine(RunConfig(**{**CONFIG.to_dict(), "ledger": False,
                                        "attack_args": {}}))
    attackers = sorted(engine.topology.byzantine)
    start = engine.params.clone()
    engine.train(torch.ones(CONFIG.nodes, dtype=torch.bool), {}, evaluate=False)
    assert torch.equal(engine.params[attackers], start[attackers])
    honest = [p for p in range(CONFIG.nodes) if p not in attackers]
    assert not torch.equal(engine.params[honest], start[honest])
