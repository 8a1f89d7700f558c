"""The batched averaging-family rules (mean, gossip, ClippedGossip, centered clipping,
BALANCE, MOZI) give, row for row, what the per-node rule objects give, statistics included.

Each test builds a chunk of nodes with different neighbourhood sizes (1 to K present slots,
scattered among zero-padded ones), some received rows non-finite, some inputs refused
upstream, and calls one per-node rule object per position the way the per-node runtime
does (:class:`~flwr_tempered.engine.contracts.PerNodeRule`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import flwr_tempered.engine.rules_averaging
from flwr_tempered.aggregators import Rule, get_rule
from flwr_tempered.engine.contracts import (
    BatchedLoss,
    BatchedRule,
    PerNodeRule,
    RuleInputs,
    batched_rule_class,
)

rules_averaging = flwr_tempered.engine.rules_averaging

NUM_NODES = 30
SLOTS = 7
DIM = 5
DTYPES = [torch.float32, torch.float64]
COMMON = {"received", "rejected_nonfinite", "refused"}
#: Required hyper-parameters of the rules that have some.
EXTRA_PARAMS: dict[str, dict[str, Any]] = {"balance": {"total_rounds": 5},
                                           "centered_clipping": {"tau": 1.0}}


# ----------------------------------------------------------------------------- inputs
def make_inputs(generator: torch.Generator, dtype: torch.dtype, *, rows: int = 16,
                nodes: Tensor | None = None, round: int = 2,
                all_rejected: tuple[int, ...] = (0,)) -> RuleInputs:
    """A random chunk: degrees cycle through 1..SLOTS on scattered slots, neighbours at
    log-uniform distances from own (so radii and clipping thresholds split them), about
    one received row in five non-finite, about a third of the nodes with refused inputs,
    and the rows in ``all_rejected`` with every received row non-finite."""
    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    if nodes is None:
        nodes = torch.randperm(NUM_NODES, generator=generator)[:rows]
    own = torch.randn(rows, DIM, generator=generator, dtype=torch.float64) + 1.0
    received = torch.zeros(rows, SLOTS, DIM, dtype=torch.float64)
    present = torch.zeros(rows, SLOTS, dtype=torch.bool)
    weights = torch.zeros(rows, SLOTS + 1, dtype=torch.float64)
    refused = torch.zeros(rows, dtype=torch.long)
    for r in range(rows):
        degree = 1 + (r * 3) % SLOTS
        slots = torch.randperm(SLOTS, generator=generator)[:degree]
        present[r, slots] = True
        spread = torch.exp(uniform(degree, 1) * 4.0 - 3.0)
        direction = torch.randn(degree, DIM, generator=generator, dtype=torch.float64)
        vectors = own[r] + spread * direction / direction.norm(dim=1, keepdim=True)
        bad = (torch.ones(degree, dtype=torch.bool) if r in all_rejected
               else uniform(degree) < 0.2)
        for j in bad.nonzero().flatten().tolist():
            column = int(torch.randint(0, DIM, (), generator=generator))
            vectors[j, column] = (math.nan, math.inf, -math.inf)[(r + j) % 3]
        received[r, slots] = vectors
        slot_weights = uniform(degree) + 0.05
        weights[r, 1:][slots] = slot_weights / slot_weights.sum() * (0.3 + 0.6 * float(uniform(1)))
        weights[r, 0] = 1.0 - weights[r, 1:].sum()
        refused[r] = int(torch.randint(0, 3, (), generator=generator)) if r % 3 == 1 else 0
    return RuleInputs(nodes=nodes, own=own.to(dtype), received=received.to(dtype),
                      present=present, weights=weights.to(dtype), refused=refused,
                      round=round)


# ------------------------------------------------------------------------- comparison
def per_node(rules: dict[int, Rule], inputs: RuleInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """What one per-node rule object per position gives, called as the runtime calls it:
    ``rule(own[r], received[r][present[r]], cat(weights[r, :1], weights[r, 1:][present[r]]),
    round=..., refused=...)`` (``PerNodeRule`` does exactly that)."""
    fallback = PerNodeRule(lambda _: get_rule("mean"), NUM_NODES, torch.device("cpu"))
    fallback.rules = rules
    return fallback(inputs)


def assert_matches(batched: tuple[Tensor, dict[str, Tensor]],
                   expected: tuple[Tensor, dict[str, Tensor]], dtype: torch.dtype) -> None:
    """Outputs equal up to rounding, every statistic equal (NaN-aware: NaN exactly where
    the per-node rule did not set it); a key only the batched rule has must be all NaN."""
    result, stats = batched
    expected_result, expected_stats = expected
    assert result.dtype == dtype
    assert result.shape == expected_result.shape
    assert bool(torch.isfinite(result).all())
    tolerance = 2e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(result, expected_result, rtol=tolerance, atol=tolerance)
    for key, value in expected_stats.items():
        assert key in stats, f"missing statistic {key}"
        assert stats[key].shape == value.shape, key
        torch.testing.assert_close(stats[key].double().cpu(), value, rtol=tolerance,
                                   atol=tolerance, equal_nan=True, msg=f"statistic {key}")
    for key in set(stats) - set(expected_stats):
        assert bool(stats[key].isnan().all()), f"unexpected statistic {key}"


def build(name: str, params: dict[str, Any], loss: BatchedLoss | None = None,
          per_node_params: Callable[[int], dict[str, Any]] | None = None,
          ) -> tuple[BatchedRule, dict[int, Rule]]:
    """The batched rule (checked to be this module's class) and one per-node rule object
    per position (``per_node_params(position)`` adds per-position parameters)."""
    rule = get_rule(name, **params)
    batched_class = batched_rule_class(rule)
    assert batched_class is not None, f"no batched version of {name}"
    assert batched_class.__module__ == rules_averaging.__name__
    batched = batched_class(rule, NUM_NODES, torch.device("cpu"), loss)
    extra = per_node_params or (lambda _: {})
    rules = {p: get_rule(name, **params, **extra(p)) for p in range(NUM_NODES)}
    return batched, rules


# ------------------------------------------------------------------------ MOZI's loss
class LinearLoss:
    """A deterministic stand-in for a node's local loss: ``a . v + b[node]``, the same
    numbers per node (``loss_fn``) and batched (``losses``), computed in float64."""

    def __init__(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.a = torch.randn(DIM, generator=generator, dtype=torch.float64)
        self.b = torch.randn(NUM_NODES, generator=generator, dtype=torch.float64)
        self.per_node_calls = 0
        self.batched_nodes: list[list[int]] = []

    def loss_fn(self, position: int) -> Callable[[Tensor], float]:
        def loss(vector: Tensor) -> float:
            self.per_node_calls += 1
            return float(vector.double() @ self.a + self.b[position])

        return loss

    def losses(self, nodes: Tensor, candidates: Tensor) -> Tensor:
        assert nodes.shape[0] == candidates.shape[0]
        self.batched_nodes.append(nodes.tolist())
        products = (candidates.double() * self.a).sum(dim=2)
        return products + self.b[nodes].unsqueeze(1)


# ------------------------------------------------------------------------------ tests
CASES: list[tuple[str, dict[str, Any]]] = [
    ("mean", {}),
    ("gossip", {}),
    ("clipped_gossip", {"tau": 0.4}),
    ("clipped_gossip", {"tau": 3.0}),
    ("clipped_gossip", {}),
    ("clipped_gossip", {"delta": 0.15}),
    ("clipped_gossip", {"delta": 0.0}),
    ("clipped_gossip", {"delta": 1.0}),
    ("clipped_gossip", {"adaptive": "second_largest"}),
    ("balance", {"total_rounds": 10}),
    ("balance", {"total_rounds": 4, "gamma": 1.0, "kappa": 0.5, "alpha": 0.2}),
    ("centered_clipping", {"tau": 0.5}),
    ("centered_clipping", {"tau": 2.0, "iterations": 3}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "params"), CASES, ids=lambda c: str(c))
def test_matches_per_node_rules(name: str, params: dict[str, Any], dtype: torch.dtype) -> None:
    batched, rules = build(name, params)
    for seed in range(3):
        generator = torch.Generator().manual_seed(1000 * seed + len(name))
        inputs = make_inputs(generator, dtype, round=seed)
        assert_matches(batched(inputs), per_node(rules, inputs), dtype)


def test_statistics_are_exercised() -> None:
    """The comparisons above are not vacuous: thresholds split the rows, refused inputs
    and non-finite rows occur, and the outputs move away from own."""
    inputs = make_inputs(torch.Generator().manual_seed(7), torch.float64)
    clipped = build("clipped_gossip", {"tau": 0.4})[0](inputs)[1]["clipped"]
    kept_counts = build("mean", {})[0](inputs)[1]
    assert float(clipped.nansum()) > 0
    assert bool((clipped[~clipped.isnan()] < 7).any())
    assert float(kept_counts["rejected_nonfinite"].sum()) > 2
    assert "refused" in kept_counts
    accepted = build("balance", {"total_rounds": 10})[0](inputs)[1]["accepted"]
    received = kept_counts["received"] - kept_counts["rejected_nonfinite"]
    assert bool((accepted > 0).any()) and bool((accepted < received).any())
    result = build("gossip", {})[0](inputs)[0]
    assert float((result - inputs.own).abs().max()) > 0.1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("params", [{"rho": 0.5}, {"rho": 1.0, "alpha": 0.3}, {"rho": 0.2}],
                         ids=str)
def test_mozi_matches_per_node(params: dict[str, Any], dtype: torch.dtype) -> None:
    loss = LinearLoss(seed=int(params["rho"] * 10))
    batched, rules = build("mozi", params, loss.losses,
                           per_node_params=lambda p: {"loss_fn": loss.loss_fn(p)})
    for seed in range(3):
        inputs = make_inputs(torch.Generator().manual_seed(50 + seed), dtype, round=seed)
        loss.batched_nodes.clear()
        result = batched(inputs)
        assert_matches(result, per_node(rules, inputs), dtype)
        # One loss call per chunk, never on the node whose every row was rejected.
        assert len(loss.batched_nodes) == 1
        stats = result[1]
        aggregated = (stats["received"] > stats["rejected_nonfinite"]).tolist()
        assert not aggregated[0]
        assert loss.batched_nodes[0] == inputs.nodes[torch.tensor(aggregated)].tolist()
    accepted, passed = result[1]["accepted"], result[1]["distance_passed"]
    assert bool((accepted[1:] < passed[1:]).any()) or params["rho"] == 0.2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mozi_distance_ties_follow_slot_order(dtype: torch.dtype) -> None:
    """Own at the origin and two received rows ``v`` and ``-v`` (same distance exactly):
    MOZI keeps the one in the earlier kept slot, as the per-node stable argsort does, even
    when a rejected row sits in an earlier slot or a padded slot in between."""
    loss = LinearLoss(seed=3)
    batched, rules = build("mozi", {"rho": 0.2}, loss.losses,
                           per_node_params=lambda p: {"loss_fn": loss.loss_fn(p)})
    v = torch.arange(1.0, DIM + 1.0, dtype=torch.float64)
    own = torch.zeros(3, DIM, dtype=torch.float64)
    received = torch.zeros(3, SLOTS, DIM, dtype=torch.float64)
    present = torch.zeros(3, SLOTS, dtype=torch.bool)
    for r, (first, second, bad) in enumerate([(1, 4, 0), (5, 2, 3), (0, 6, 1)]):
        received[r, first], received[r, second] = v, -v
        received[r, bad, 0] = math.inf
        present[r, [first, second, bad]] = True
    weights = torch.zeros(3, SLOTS + 1, dtype=torch.float64)
    weights[:, 1:][present] = 0.2
    weights[:, 0] = 1.0 - weights[:, 1:].sum(dim=1)
    inputs = RuleInputs(nodes=torch.tensor([4, 9, 2]), own=own.to(dtype),
                        received=received.to(dtype), present=present,
                        weights=weights.to(dtype), refused=torch.tensor([0, 2, 1]), round=0)
    result = batched(inputs)
    assert_matches(result, per_node(rules, inputs), dtype)
    expected_sign = torch.tensor([1.0, -1.0, 1.0], dtype=dtype)
    torch.testing.assert_close(result[0], 0.5 * expected_sign.unsqueeze(1) * v.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mozi_overflowing_distance_stays_among_kept_rows(dtype: torch.dtype) -> None:
    """A kept row whose distance overflows to +inf still sorts before the rejected rows
    (which the per-node rule never sees), even when a rejected row sits in an earlier
    slot."""
    big = 2e19 if dtype == torch.float32 else 1e160
    loss = LinearLoss(seed=4)
    batched, rules = build("mozi", {"rho": 1.0}, loss.losses,
                           per_node_params=lambda p: {"loss_fn": loss.loss_fn(p)})
    own = torch.zeros(2, DIM, dtype=dtype)
    received = torch.zeros(2, 4, DIM, dtype=dtype)
    received[:, 0, 1] = math.nan
    received[:, 1, 0] = big
    received[:, 2] = 0.5
    received[1, 3] = -0.25
    present = torch.tensor([[True, True, True, False], [True, True, True, True]])
    weights = torch.zeros(2, 5, dtype=dtype)
    weights[:, 1:][present] = 0.2
    weights[:, 0] = 1.0 - weights[:, 1:].sum(dim=1)
    inputs = RuleInputs(nodes=torch.tensor([1, 2]), own=own, received=received,
                        present=present, weights=weights, refused=torch.tensor([0, 0]),
                        round=0)
    result = batched(inputs)
    assert float((received[0, 1] - own[0]).norm()) == math.inf  # yet a finite row
    assert_matches(result, per_node(rules, inputs), dtype)


def test_mozi_compares_losses_in_float32() -> None:
    """The per-node rule collects the candidates' losses in a float32 tensor and compares
    own's loss against it there: a candidate whose loss exceeds own's by less than float32
    resolves is accepted (so is an equal loss), as in the batched rule."""
    def loss_fn(vector: Tensor) -> float:
        return float(vector[0].double())

    def losses(nodes: Tensor, candidates: Tensor) -> Tensor:
        return candidates[..., 0].double()

    batched, rules = build("mozi", {"rho": 1.0, "alpha": 0.0}, losses,
                           per_node_params=lambda p: {"loss_fn": loss_fn})
    own = torch.zeros(1, DIM, dtype=torch.float64)
    own[0, 0] = 1.0
    received = torch.zeros(1, 3, DIM, dtype=torch.float64)
    received[0, 0] = own[0]
    received[0, 0, 0] += 1e-9  # closest, loss 1 + 1e-9: equal to own's in float32
    received[0, 0, 1] = 0.01
    received[0, 1, 1] = 5.0  # far, loss 0: accepted
    received[0, 2] = own[0]
    received[0, 2, 1] = -0.02  # loss 1: equal to own's exactly
    present = torch.ones(1, 3, dtype=torch.bool)
    weights = torch.tensor([[0.4, 0.2, 0.2, 0.2]], dtype=torch.float64)
    inputs = RuleInputs(nodes=torch.tensor([0]), own=own, received=received, present=present,
                        weights=weights, refused=torch.tensor([0]), round=0)
    result, stats = batched(inputs)
    assert_matches((result, stats), per_node(rules, inputs), torch.float64)
    assert float(stats["accepted"][0]) == 3
    torch.testing.assert_close(result[0], received[0].mean(dim=0))


def test_mozi_without_loss_raises() -> None:
    batched, _ = build("mozi", {})
    inputs = make_inputs(torch.Generator().manual_seed(1), torch.float64)
    with pytest.raises(ValueError, match="loss"):
        batched(inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("params", [{"tau": 0.3}, {"tau": 1.5, "iterations": 2}], ids=str)
def test_centered_clipping_keeps_centres_over_rounds(params: dict[str, Any],
                                                     dtype: torch.dtype) -> None:
    """Three rounds on overlapping subsets of positions: each position's centre is its
    previous aggregate, kept only where it aggregated (a position whose every row was
    rejected keeps its old centre, or none)."""
    batched, rules = build("centered_clipping", params)
    assert isinstance(batched, rules_averaging.BatchedCenteredClipping)
    generator = torch.Generator().manual_seed(11)
    order = torch.randperm(NUM_NODES, generator=generator)
    subsets = [order[:12], order[6:20], order[:20].flip(0)]
    rejected_rows = [(0, 3), (2,), (1, 5)]
    for round, (nodes, rejected) in enumerate(zip(subsets, rejected_rows, strict=True)):
        inputs = make_inputs(generator, dtype, rows=nodes.numel(), nodes=nodes, round=round,
                             all_rejected=rejected)
        assert_matches(batched(inputs), per_node(rules, inputs), dtype)
        assert batched.has_centre is not None and batched.centres is not None
        for position, rule in rules.items():
            centre = getattr(rule, "centre", None)
            assert bool(batched.has_centre[position]) == (centre is not None), position
            if centre is not None:
                tolerance = 2e-5 if dtype == torch.float32 else 1e-11
                torch.testing.assert_close(batched.centres[position], centre,
                                           rtol=tolerance, atol=tolerance)
        if round == 0:  # rows 0 and 3 rejected everything: no centre yet
            assert not bool(batched.has_centre[order[[0, 3]]].any())
    # Row 3 of round 0 aggregated in round 2 (starting from own): it has a centre now.
    assert batched.has_centre is not None
    assert bool(batched.has_centre[int(order[3])])
    batched.reset()
    assert (batched.centres, batched.has_centre) == (None, None)


@pytest.mark.parametrize("name", ["mean", "gossip", "clipped_gossip", "balance",
                                  "centered_clipping", "mozi"])
def test_every_row_rejected_gives_own_and_common_stats(name: str) -> None:
    params = EXTRA_PARAMS.get(name, {})
    loss = LinearLoss(seed=0)
    batched, rules = build(name, params, loss.losses if name == "mozi" else None,
                           per_node_params=(lambda p: {"loss_fn": loss.loss_fn(p)})
                           if name == "mozi" else None)
    inputs = make_inputs(torch.Generator().manual_seed(5), torch.float64,
                         all_rejected=(0, 4, 7))
    result, stats = batched(inputs)
    assert_matches((result, stats), per_node(rules, inputs), torch.float64)
    for r in (0, 4, 7):
        assert torch.equal(result[r], inputs.own[r])
        present = int(inputs.present[r].sum())
        assert float(stats["received"][r]) == present
        assert float(stats["rejected_nonfinite"][r]) == present
        for key, values in stats.items():
            if key not in COMMON:
                assert math.isnan(float(values[r])), (name, key)
    rule_keys = set(stats) - COMMON
    if name not in ("mean", "gossip"):
        assert rule_keys, "the rule-specific statistics must be reported elsewhere"
        for key in rule_keys:
            assert not math.isnan(float(stats[key][1])), key
    if name == "centered_clipping":
        assert isinstance(batched, rules_averaging.BatchedCenteredClipping)
        assert batched.has_centre is not None
        assert not bool(batched.has_centre[int(inputs.nodes[0])])
        assert bool(batched.has_centre[int(inputs.nodes[1])])


@pytest.mark.parametrize(("name", "params"), [("mean", {}), ("gossip", {}),
                                              ("clipped_gossip", {}),
                                              ("clipped_gossip", {"delta": 0.0})], ids=str)
def test_weight_left_on_self_and_zero_total(name: str, params: dict[str, Any]) -> None:
    """Row 0: own weight 0, all weight on a rejected row: mean's total is zero (own kept);
    gossip leaves the rejected weight on the node (own again); ClippedGossip's adaptive
    delta (the largest kept weight) is zero: no clipping (radius inf). Row 1: a rejected
    row's weight stays on own in gossip and is dropped from mean's normalisation."""
    own = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    received = torch.zeros(2, 3, 2, dtype=torch.float64)
    received[0, 0] = torch.tensor([math.nan, 0.0])
    received[0, 2] = torch.tensor([5.0, 5.0])
    received[1, 1] = torch.tensor([math.inf, 1.0])
    received[1, 2] = torch.tensor([4.0, 3.0])
    present = torch.tensor([[True, False, True], [False, True, True]])
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.2, 0.0, 0.5, 0.3]], dtype=torch.float64)
    inputs = RuleInputs(nodes=torch.tensor([3, 8]), own=own, received=received,
                        present=present, weights=weights, refused=torch.tensor([0, 0]),
                        round=0)
    batched, rules = build(name, params)
    result = batched(inputs)
    assert_matches(result, per_node(rules, inputs), torch.float64)
    assert torch.equal(result[0][0], own[0])
    if name == "clipped_gossip":
        assert float(result[1]["tau"][0]) == math.inf
        return
    second = (0.2 * own[1] + 0.3 * received[1, 2]) / 0.5 if name == "mean" else (
        0.7 * own[1] + 0.3 * received[1, 2])
    torch.testing.assert_close(result[0][1], second)


@pytest.mark.parametrize("name", ["clipped_gossip", "balance", "centered_clipping"])
def test_distances_in_slot_blocks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny block size the distances are computed over blocks of slots: same
    results."""
    monkeypatch.setattr(rules_averaging, "BLOCK_ELEMENTS", 2 * DIM * 16)
    params = EXTRA_PARAMS.get(name, {})
    batched, rules = build(name, params)
    inputs = make_inputs(torch.Generator().manual_seed(9), torch.float32)
    assert_matches(batched(inputs), per_node(rules, inputs), torch.float32)


def test_registered_for_the_per_node_classes() -> None:
    expected = {
        "mean": rules_averaging.BatchedMean,
        "gossip": rules_averaging.BatchedGossip,
        "clipped_gossip": rules_averaging.BatchedClippedGossip,
        "centered_clipping": rules_averaging.BatchedCenteredClipping,
        "balance": rules_averaging.BatchedBalance,
        "mozi": rules_averaging.BatchedMozi,
    }
    for name, cls in expected.items():
        assert batched_rule_class(get_rule(name, **EXTRA_PARAMS.get(name, {}))) is cls


def test_a_finite_row_whose_sum_overflows_is_kept_as_by_the_per_node_rule() -> None:
    from flwr_tempered.aggregators import get_rule
    from flwr_tempered.engine.contracts import RuleInputs, batched_rule_class

    rule = get_rule("gossip")
    own = torch.zeros(4)
    received = torch.stack([torch.full((4,), 3e38), torch.ones(4)])
    weights = torch.tensor([0.5, 0.25, 0.25])
    expected = rule(own, received, weights)
    batched_class = batched_rule_class(rule)
    assert batched_class is not None
    batched = batched_class(rule, 1, torch.device("cpu"))
    result, stats = batched(RuleInputs(
        nodes=torch.tensor([0]), own=own[None], received=received[None],
        present=torch.ones(1, 2, dtype=torch.bool), weights=weights[None],
        refused=torch.zeros(1, dtype=torch.int64), round=0))
    assert torch.allclose(result[0], expected)
    assert float(stats["rejected_nonfinite"][0]) == 0.0 == rule.stats["rejected_nonfinite"]
