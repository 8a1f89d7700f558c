"""The batched attacks of the engine send, edge for edge, what the per-node attacks send.

The reference is the per-node runtime itself: :func:`flwr_tempered.runtime.inprocess._craft`
builds each attacker's :class:`~flwr_tempered.attacks.AttackView` through
:meth:`flwr_tempered.node.Node.craft` (targets = honest, present neighbours with a positive
Byzantine weight; honest neighbours = the present ones, weights from the mixing row) and
calls the attack. :func:`~flwr_tempered.engine.attacks_batched.build_attack_inputs` must
describe the same views, and every batched attack must give the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch
from torch import Tensor

import flwr_tempered.engine.attacks_batched as batched_attacks
from flwr_tempered.aggregators import Rule, get_rule
from flwr_tempered.attacks import (
    AttackBase,
    AttackView,
    ModelPoisoningAttack,
    get_attack,
)
from flwr_tempered.engine.attacks_batched import build_attack_inputs
from flwr_tempered.engine.contracts import AttackInputs, BatchedAttack, batched_attack_class
from flwr_tempered.node import Node
from flwr_tempered.node.node import NodeState
from flwr_tempered.runtime.inprocess import _craft
from flwr_tempered.topology import Topology, get_topology, metropolis_weights

D = 7
ROUNDS = 10


# ----------------------------------------------------------------------------- settings
def hand_made() -> Topology:
    """9 nodes, Byzantine {0, 4, 7}. Node 8's only neighbours are Byzantine (H = 0); node 5
    puts zero weight on its only Byzantine neighbour 7 (skipped); 0 and 4 are adjacent."""
    edges = [(0, 1), (0, 2), (0, 8), (4, 8), (4, 3), (4, 6), (7, 5), (7, 6), (7, 1), (1, 2),
             (2, 3), (3, 5), (5, 6), (6, 1), (0, 4), (2, 6)]
    graph = nx.Graph()
    graph.add_nodes_from(range(9))
    graph.add_edges_from(edges)
    mixing = metropolis_weights(graph).copy()
    mixing[5, 5] += mixing[5, 7]
    mixing[5, 7] = 0.0
    return Topology(graph=graph, byzantine=frozenset({0, 4, 7}), mixing=mixing)


def random_graph() -> Topology:
    return get_topology("erdos_renyi", n=9, p=0.5, byzantine=3, seed=3)


TOPOLOGIES = {"hand_made": hand_made, "erdos_renyi": random_graph}


def presence(topology: Topology, absent: bool) -> Tensor:
    """Every node present, or all but one honest node that has honest neighbours."""
    present = torch.ones(topology.n, dtype=torch.bool)
    if absent:
        present[next(i for i in topology.honest if topology.honest_neighbors(i))] = False
    return present


def models(seed: int, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Random half-step and previous models ``[n, D]``."""
    generator = torch.Generator().manual_seed(seed)
    previous = torch.randn((n, D), generator=generator, dtype=torch.float64)
    half = previous + 0.3 * torch.randn((n, D), generator=generator, dtype=torch.float64)
    return half.to(dtype), previous.to(dtype)


# ---------------------------------------------------------------- the per-node reference
def attacker_node(topology: Topology, position: int, attack: AttackBase, half: Tensor,
                  previous: Tensor, rule: Rule) -> Node:
    """A Byzantine :class:`Node` with just what ``Node.craft`` and ``_craft`` read."""
    node = Node.__new__(Node)
    node.position = position
    node.world = SimpleNamespace(topology=topology,  # type: ignore[assignment]
                                 config=SimpleNamespace(rounds=ROUNDS))
    node.attack = attack
    node.state = NodeState(params=half[position].clone(), momentum=torch.zeros(D),
                           training_start=previous[position].clone())
    node._honest_rule = rule
    return node


def per_node(topology: Topology, attacks: dict[int, AttackBase], half: Tensor,
             previous: Tensor, present: Tensor, rule: Rule, round: int
             ) -> list[tuple[int, int, np.ndarray]]:
    """``(attacker, target, vector)`` as the in-process runtime crafts them, in order."""
    sent = {p: half[p].numpy().copy() for p in range(topology.n) if bool(present[p])}
    starts = {p: previous[p].numpy().copy() for p in topology.honest}
    rows = []
    for a in sorted(topology.byzantine):
        node = attacker_node(topology, a, attacks[a], half, previous, rule)
        for t, vector in _craft(node, topology, sent, starts, round).items():
            rows.append((a, t, vector))
    return rows


class Recorder(ModelPoisoningAttack):
    """Records the view it is given and sends zeros."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.views: list[AttackView] = []

    def craft_all(self, view: AttackView) -> Tensor:
        self.views.append(view)
        return torch.zeros((len(view.targets), view.own.shape[0]), dtype=view.own.dtype)


def batched(attacks: dict[int, AttackBase], inputs: AttackInputs, rule: Rule,
            max_elements: int | None = None) -> Tensor:
    cls = batched_attack_class(next(iter(attacks.values())))
    assert cls is not None
    attack: BatchedAttack = cls(attacks, inputs.half.device, rule)
    if max_elements is not None:
        attack.max_elements = max_elements
    return attack(inputs)


def compare(rows: list[tuple[int, int, np.ndarray]], inputs: AttackInputs, out: Tensor) -> None:
    edges = list(zip(inputs.attackers.tolist(), inputs.targets.tolist(), strict=True))
    assert edges == [(a, t) for a, t, _ in rows]
    assert out.dtype == inputs.half.dtype and out.device == inputs.half.device
    assert tuple(out.shape) == (len(rows), D)
    if not rows:
        return
    expected = torch.from_numpy(np.stack([v for _, _, v in rows]))
    tol = 1e-10 if expected.dtype == torch.float64 else 2e-6
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(out.cpu(), expected, rtol=tol, atol=tol * scale)


# ----------------------------------------------------------------- build_attack_inputs
@pytest.mark.parametrize("absent", [False, True])
@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_build_attack_inputs_describes_the_per_node_views(name: str, absent: bool) -> None:
    topology = TOPOLOGIES[name]()
    half, previous = models(1, topology.n, torch.float64)
    present = presence(topology, absent)
    rule = get_rule("gossip")
    recorders: dict[int, AttackBase] = {a: Recorder() for a in topology.byzantine}
    rows = per_node(topology, recorders, half, previous, present, rule, round=4)
    inputs = build_attack_inputs(topology, half, previous, present, 4, ROUNDS)
    assert [(a, t) for a, t, _ in rows] == list(zip(inputs.attackers.tolist(),
                                                   inputs.targets.tolist(), strict=True))
    assert inputs.target_nodes[inputs.target_row].tolist() == inputs.targets.tolist()
    e = 0
    for a in sorted(topology.byzantine):
        views = recorders[a].views  # type: ignore[attr-defined]
        for view in views:
            assert view.round == inputs.round == 4
            assert view.total_rounds == inputs.total_rounds == ROUNDS
            assert view.own_previous is not None and inputs.previous is not None
            assert torch.equal(view.own, inputs.half[a])
            assert torch.equal(view.own_previous, inputs.previous[a])
            for target in view.targets:
                assert int(inputs.attackers[e]) == a and int(inputs.targets[e]) == target.node
                i = int(inputs.target_row[e])
                mask = inputs.honest_mask[i]
                assert torch.equal(target.model, inputs.half[target.node])
                assert torch.equal(target.honest_neighbors, inputs.half[inputs.honest[i][mask]])
                assert torch.equal(target.honest_weights, inputs.honest_weights[i][mask])
                assert target.byzantine_weight == float(inputs.byzantine_weight[i])
                assert target.n_byzantine == int(inputs.n_byzantine[i])
                assert target.self_weight == float(inputs.self_weight[i])
                assert target.previous is not None
                assert torch.equal(target.previous, inputs.previous[target.node])
                assert target.rule is rule
                e += 1
    assert e == inputs.targets.shape[0] > 0
    if name == "hand_made":
        assert 5 not in inputs.targets.tolist()  # zero Byzantine weight: skipped
        assert 8 in inputs.target_nodes.tolist()
        assert not bool(inputs.honest_mask[inputs.target_nodes.tolist().index(8)].any())
    if absent:
        gone = int((~present).nonzero()[0])
        assert gone not in inputs.targets.tolist()
        assert gone not in inputs.honest[inputs.honest_mask].tolist()


def test_build_attack_inputs_dtypes_and_an_empty_round() -> None:
    topology = hand_made()
    half, _ = models(2, topology.n, torch.float32)
    present = torch.zeros(topology.n, dtype=torch.bool)
    present[list(topology.byzantine)] = True
    inputs = build_attack_inputs(topology, half, None, present, 0, 1)
    assert inputs.targets.shape == (0,) and inputs.target_nodes.shape == (0,)
    assert inputs.honest.shape == (0, 0)
    assert inputs.byzantine_weight.dtype == torch.float32
    for attack in (get_attack("alie"), get_attack("dissensus"), get_attack("gaussian"),
                   get_attack("bit_flip"), get_attack("sign_flip"), get_attack("ipm"),
                   get_attack("inf")):
        assert tuple(batched({0: attack}, inputs, get_rule("gossip")).shape) == (0, D)
    with pytest.raises(ValueError, match="present"):
        build_attack_inputs(topology, half, None, present[:3], 0, 1)


# ---------------------------------------------------------------------- the attacks
Factory = Callable[[int], AttackBase]

DETERMINISTIC: dict[str, Factory] = {
    "dissensus": lambda a: get_attack("dissensus"),
    "dissensus_eps_0.4": lambda a: get_attack("dissensus", eps=0.4),
    "dissensus_mixed_eps": lambda a: get_attack("dissensus", eps=1.0 + a),
    "dissensus_uniform": lambda a: get_attack("dissensus", eps=1.2, weights="uniform"),
    "alie_default_z": lambda a: get_attack("alie"),
    "alie_z_1.5": lambda a: get_attack("alie", z=1.5),
    "alie_z_-0.3": lambda a: get_attack("alie", z=-0.3),
    "alie_mixed_z": lambda a: get_attack("alie", z=None if a % 2 else 0.7),
    "alie_ddof_1": lambda a: get_attack("alie", ddof=1),
    "alie_ddof_1_z_2": lambda a: get_attack("alie", z=2.0, ddof=1),
    "alie_z_from_run": lambda a: get_attack("alie", z_from="run", n=12, f=3),
    "ipm": lambda a: get_attack("ipm"),
    "ipm_eps_2": lambda a: get_attack("ipm", eps=2.0),
    "sign_flip": lambda a: get_attack("sign_flip"),
    "sign_flip_scale_3": lambda a: get_attack("sign_flip", scale=3.0),
    "bit_flip": lambda a: get_attack("bit_flip"),
}

RULES: dict[str, Callable[[], Rule]] = {
    "gossip": lambda: get_rule("gossip"),
    "trimmed_mean": lambda: get_rule("trimmed_mean", b=1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("absent", [False, True])
@pytest.mark.parametrize("topology_name", sorted(TOPOLOGIES))
@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("attack_name", sorted(DETERMINISTIC))
def test_batched_attack_matches_per_node(attack_name: str, rule_name: str,
                                         topology_name: str, absent: bool,
                                         dtype: torch.dtype, device: str = "cpu") -> None:
    topology = TOPOLOGIES[topology_name]()
    half, previous = models(3, topology.n, dtype)
    present = presence(topology, absent)
    rule = RULES[rule_name]()
    factory = DETERMINISTIC[attack_name]
    attacks = {a: factory(a) for a in topology.byzantine}
    rows = per_node(topology, attacks, half, previous, present, rule, round=2)
    inputs = build_attack_inputs(topology, half.to(device), previous.to(device),
                                 present.to(device), 2, ROUNDS)
    for max_elements in (None, D, 3 * D):  # one chunk, then one or a few targets a chunk
        compare(rows, inputs, batched(attacks, inputs, rule, max_elements))


@pytest.mark.parametrize("attack_name", ["dissensus", "alie_default_z", "ipm"])
def test_target_dependent_attacks_send_different_targets_different_vectors(
        attack_name: str) -> None:
    """Guards the comparison above against a degenerate setting (rows all alike)."""
    topology = hand_made()
    half, previous = models(4, topology.n, torch.float64)
    attacks = {a: DETERMINISTIC[attack_name](a) for a in topology.byzantine}
    inputs = build_attack_inputs(topology, half, previous, presence(topology, False), 0, 1)
    out = batched(attacks, inputs, get_rule("gossip"))
    assert len({tuple(row.tolist()) for row in out}) == inputs.target_nodes.shape[0] > 2
    # Node 8 has no honest neighbour: dissensus, ALIE send it its own model.
    if attack_name != "ipm":
        for e in (inputs.targets == 8).nonzero().flatten().tolist():
            assert torch.equal(out[e], half[8])


def test_sign_flip_needs_previous() -> None:
    topology = hand_made()
    half, _ = models(5, topology.n, torch.float64)
    inputs = build_attack_inputs(topology, half, None, presence(topology, False), 0, 1)
    with pytest.raises(ValueError, match="previous"):
        batched({a: get_attack("sign_flip") for a in topology.byzantine}, inputs,
                get_rule("gossip"))


def test_batched_inf_fills_every_edge_with_plus_infinity() -> None:
    topology = hand_made()
    half, previous = models(6, topology.n, torch.float32)
    present = presence(topology, True)
    attacks: dict[int, AttackBase] = {a: get_attack("inf") for a in topology.byzantine}
    rows = per_node(topology, attacks, half, previous, present, get_rule("gossip"), 1)
    inputs = build_attack_inputs(topology, half, previous, present, 1, ROUNDS)
    out = batched(attacks, inputs, get_rule("gossip"))
    assert [(a, t) for a, t, _ in rows] == list(zip(inputs.attackers.tolist(),
                                                   inputs.targets.tolist(), strict=True))
    assert out.shape == (len(rows), D) and out.dtype == torch.float32
    assert bool((out == float("inf")).all())
    assert all(bool(torch.isposinf(torch.as_tensor(v)).all()) for _, _, v in rows)


def test_a_stray_attack_class_is_refused() -> None:
    with pytest.raises(TypeError, match="node 4"):
        batched_attacks.BatchedALIE({0: get_attack("alie"), 4: get_attack("ipm")},
                                    torch.device("cpu"), None)


GAUSSIAN: dict[str, dict[str, Any]] = {
    "zero": {},
    "own_sigma_0.5": {"around": "own", "sigma": 0.5},
    "zero_sigma_0": {"sigma": 0.0},
    "own_sigma_2": {"around": "own", "sigma": 2.0},
    "zero_mean_3": {"mean": 3.0, "sigma": 0.5},
    "own_mean_-1.5": {"around": "own", "mean": -1.5},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("topology_name", sorted(TOPOLOGIES))
@pytest.mark.parametrize("mode", sorted(GAUSSIAN))
def test_batched_gaussian_replays_the_per_node_streams(mode: str, topology_name: str,
                                                       dtype: torch.dtype,
                                                       device: str = "cpu") -> None:
    """Two rounds (the second with a node absent, so the draw shapes change): the batched
    attack advances the per-node generators exactly as the per-node runtime does."""
    topology = TOPOLOGIES[topology_name]()
    rule = get_rule("gossip")

    def build() -> dict[int, AttackBase]:
        return {a: get_attack("gaussian", seed=1_000 + a, **GAUSSIAN[mode])
                for a in topology.byzantine}

    reference, replayed = build(), build()
    outputs = []
    for round, absent in ((0, False), (1, True), (2, False)):
        half, previous = models(10 + round, topology.n, dtype)
        present = presence(topology, absent)
        rows = per_node(topology, reference, half, previous, present, rule, round)
        inputs = build_attack_inputs(topology, half.to(device), previous.to(device),
                                     present.to(device), round, ROUNDS)
        out = batched(replayed, inputs, rule)
        compare(rows, inputs, out)
        outputs.append(out.cpu())
    for a in topology.byzantine:
        assert torch.equal(reference[a].generator.get_state(), replayed[a].generator.get_state())
    if GAUSSIAN[mode].get("sigma", 1.0) > 0:
        assert not torch.equal(outputs[0][:3], outputs[2][:3])  # the streams moved on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda() -> None:
    """The same comparisons with the batched inputs on the GPU (noise drawn on the CPU)."""
    for attack_name in sorted(DETERMINISTIC):
        for dtype in (torch.float32, torch.float64):
            test_batched_attack_matches_per_node(attack_name, "trimmed_mean", "hand_made",
                                                 True, dtype, "cuda")
    for mode in sorted(GAUSSIAN):
        test_batched_gaussian_replays_the_per_node_streams(mode, "erdos_renyi",
                                                           torch.float32, "cuda")
