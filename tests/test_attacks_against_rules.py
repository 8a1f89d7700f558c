"""Attacks, topologies and rules together: what a Byzantine node does to an honest one.

Each test builds the omniscient view from a real topology, runs a real attack, and feeds
the vectors to a real rule with the topology's mixing weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flwr_tempered.aggregators import Rule, get_rule
from flwr_tempered.attacks import AttackView, TargetView, get_attack
from flwr_tempered.topology import Topology, two_cliques_with_byzantine


def target_view(topo: Topology, t: int, models: Tensor, rule: Rule | None = None,
                previous: Tensor | None = None) -> TargetView:
    honest = topo.honest_neighbors(t)
    return TargetView(
        node=t,
        model=models[t],
        honest_neighbors=models[honest],
        honest_weights=torch.tensor(topo.mixing[t, honest], dtype=models.dtype),
        byzantine_weight=float(topo.mixing[t, topo.byzantine_neighbors(t)].sum()),
        n_byzantine=len(topo.byzantine_neighbors(t)),
        self_weight=float(topo.mixing[t, t]),
        previous=previous,
        rule=rule,
    )


def aggregate_at(topo: Topology, t: int, models: Tensor, sent: dict[int, Tensor],
                 rule: Rule, round: int = 0) -> Tensor:
    """What honest node ``t`` computes: its own model plus every neighbour's vector
    (Byzantine neighbours' vectors from ``sent``), with its row of the mixing matrix."""
    neighbours = topo.neighbors(t)
    received = torch.stack([sent[j] if j in topo.byzantine else models[j] for j in neighbours])
    weights = torch.tensor([topo.mixing[t, t], *topo.mixing[t, neighbours]], dtype=models.dtype)
    return rule(models[t], received, weights, round=round)


def test_dissensus_reverses_the_central_nodes_gossip_pull() -> None:
    topo = two_cliques_with_byzantine(5, 1, 1.0)
    central, attacker = 10, 11
    generator = torch.Generator().manual_seed(0)
    models = torch.randn(topo.n, 6, dtype=torch.float64, generator=generator)
    view = AttackView(own=models[attacker], targets=[target_view(topo, central, models)])
    sent = {attacker: get_attack("dissensus", eps=1.5)(view)[0]}

    after = aggregate_at(topo, central, models, sent, get_rule("gossip"))

    honest = topo.honest_neighbors(central)
    pull = torch.tensor(topo.mixing[central, honest]) @ (models[honest] - models[central])
    torch.testing.assert_close(after - models[central], -0.5 * pull)


def test_clipped_gossip_bounds_what_dissensus_can_do() -> None:
    """ClippedGossip moves the target by at most sum_j W_tj * tau, whatever is sent."""
    topo = two_cliques_with_byzantine(5, 1, 1.0)
    central, attacker = 10, 11
    models = torch.randn(topo.n, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    view = AttackView(own=models[attacker], targets=[target_view(topo, central, models)])
    sent = {attacker: get_attack("dissensus", eps=1000.0)(view)[0]}
    tau = 0.1
    after = aggregate_at(topo, central, models, sent, get_rule("clipped_gossip", tau=tau))
    budget = tau * (1.0 - topo.mixing[central, central])
    assert float((after - models[central]).norm()) <= budget + 1e-12


def test_balance_accepts_the_adaptive_attack_vector_and_rejects_ipm() -> None:
    topo = two_cliques_with_byzantine(5, 1, 1.0)
    central, attacker = 10, 11
    models = 1.0 + 0.01 * torch.randn(topo.n, 8, generator=torch.Generator().manual_seed(2))
    previous = models[central] - 0.01
    balance = get_rule("balance", total_rounds=10)
    view = AttackView(own=models[attacker], round=3,
                      targets=[target_view(topo, central, models, balance, previous)])

    adaptive = {attacker: get_attack("balance_adaptive")(view)[0]}
    aggregate_at(topo, central, models, adaptive, balance, round=3)
    assert balance.stats["accepted"] == len(topo.neighbors(central))

    ipm = {attacker: get_attack("ipm", eps=0.1)(view)[0]}
    aggregate_at(topo, central, models, ipm, balance, round=3)
    assert balance.stats["accepted"] == len(topo.neighbors(central)) - 1


def test_nan_attack_vector_is_rejected_and_the_honest_node_keeps_training() -> None:
    topo = two_cliques_with_byzantine(5, 2, 1.0)
    central = 10
    models = torch.randn(topo.n, 4, generator=torch.Generator().manual_seed(3))
    sent = {k: torch.full((4,), float("nan")) for k in topo.byzantine}
    for name, params in [("gossip", {}), ("trimmed_mean", {"b": 1}), ("krum", {"f": 0}),
                         ("clipped_gossip", {"tau": 1.0}), ("median", {})]:
        rule = get_rule(name, **params)
        after = aggregate_at(topo, central, models, sent, rule)
        assert torch.isfinite(after).all(), name
        assert rule.stats["rejected_nonfinite"] == 2, name
