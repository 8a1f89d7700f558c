"""The attacks taken from ByzFL's catalogue: optimal ALIE / IPM (factor searched against the
target's rule), mimic, inf, and Gaussian noise with a mean. Expected values are worked out
by hand in the comments; the searches are checked against brute-force scans."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from flwr_tempered.aggregators import Rule, get_rule
from flwr_tempered.attacks import (
    AttackView,
    Gaussian,
    Mimic,
    ModelPoisoningAttack,
    OptimalALIE,
    OptimalIPM,
    TargetView,
    get_attack,
)
from flwr_tempered.attacks.optimal import line_search
from flwr_tempered.engine import EngineOptions, run_batched
from flwr_tempered.node import RunConfig
from flwr_tempered.runtime.inprocess import run_in_process

F64 = torch.float64


def t(values: Any) -> Tensor:
    return torch.tensor(values, dtype=F64)


def view_of(model: Any, neighbours: Any, *, rule: Rule | None = None, n_byzantine: int = 1,
            weights: Any = None, byzantine_weight: float = 0.25) -> TargetView:
    x = t(model)
    nb = t(neighbours).reshape(-1, x.shape[0])
    w = torch.full((nb.shape[0],), 0.25, dtype=F64) if weights is None else t(weights)
    self_weight = max(0.0, 1.0 - float(w.sum()) - byzantine_weight)
    return TargetView(0, x, nb, w, byzantine_weight, n_byzantine, self_weight, None, rule)


def sent(attack: ModelPoisoningAttack, target: TargetView) -> Tensor:
    return attack(AttackView(torch.zeros_like(target.model), [target]))[0]


# ---------------------------------------------------------------------------- Gaussian
def test_gaussian_mean_shifts_the_noise_and_keeps_the_stream() -> None:
    target = view_of([0.0, 0.0, 0.0], [[1.0, 1.0, 1.0]])
    own = t([1.0, -2.0, 4.0])
    view = AttackView(own, [target, target])
    # sigma = 0: the noise is the mean itself, around zero or around own
    assert torch.equal(Gaussian(sigma=0.0, mean=2.5)(view), torch.full((2, 3), 2.5, dtype=F64))
    assert torch.equal(Gaussian(sigma=0.0, mean=-1.0, around="own")(view),
                       t([[0.0, -3.0, 3.0]] * 2))
    # the same seed draws the same N(0, 1) stream: the mean is a pure shift
    shifted = Gaussian(sigma=2.0, mean=3.0, seed=5)(view)
    plain = Gaussian(sigma=2.0, seed=5)(view)
    torch.testing.assert_close(shifted - plain, torch.full((2, 3), 3.0, dtype=F64))
    assert Gaussian(mean=3.0).config()["mean"] == 3.0


def test_gaussian_mean_is_the_sample_mean_of_many_draws() -> None:
    d = 20_000
    target = TargetView(0, torch.zeros(d), torch.zeros(0, d), torch.zeros(0), 0.5, 1, 0.5)
    out = Gaussian(sigma=0.5, mean=-4.0, seed=1)(AttackView(torch.zeros(d), [target]))
    assert abs(float(out.mean()) + 4.0) < 0.02 and abs(float(out.std()) - 0.5) < 0.02


# --------------------------------------------------------------------------------- inf
def test_inf_sends_plus_infinity_to_every_target() -> None:
    target = view_of([1.0, 2.0], [[0.0, 0.0]])
    out = get_attack("inf")(AttackView(t([5.0, 5.0]), [target, target]))
    assert out.shape == (2, 2) and out.dtype == F64
    assert bool((out == math.inf).all())


@pytest.mark.parametrize(("rule", "received", "weights", "expected"), [
    # mean of own [0, 0] and [3, 0], [0, 3]: the infinite row is dropped -> [1, 1]
    ("mean", [[3.0, 0.0], [0.0, 3.0]], None, [1.0, 1.0]),
    # median of {0, 3, 0, 1} and {0, 0, 3, 1}: (0 + 1) / 2 on both coordinates
    ("median", [[3.0, 0.0], [0.0, 3.0], [1.0, 1.0]], None, [0.5, 0.5]),
    # gossip: the infinite neighbour's 0.25 stays on own: 0.75 * [0, 0] + 0.25 * [4, 4]
    ("gossip", [[4.0, 4.0]], [0.5, 0.25, 0.25], [1.0, 1.0]),
])
def test_an_honest_node_ignores_the_inf_attackers_row(
        rule: str, received: list[list[float]], weights: list[float] | None,
        expected: list[float]) -> None:
    own = t([0.0, 0.0])
    target = view_of(own.tolist(), received)
    infinite = get_attack("inf")(AttackView(own, [target]))
    aggregator = get_rule(rule)
    out = aggregator(own, torch.cat([t(received), infinite]),
                     None if weights is None else t(weights))
    assert torch.equal(out, t(expected))
    assert aggregator.stats["rejected_nonfinite"] == 1.0


# ------------------------------------------------------------------------------- mimic
# H_t: the target [0, 0] and five honest neighbours. The spread is along x (variance 16.86
# against 7.5 along y, no covariance), so the direction of maximal variance is x and the
# largest |x - mean_x| (mean_x = 0) is 2.2, row 1. The farthest row from the mean [0, 0.5]
# is [0, 3] (distance 2.5, against sqrt(2.2^2 + 0.5^2) = 2.26 for row 1), row 5.
MIMIC_NEIGHBOURS = [[2.2, 0.0], [-2.1, 0.0], [1.9, 0.0], [-2.0, 0.0], [0.0, 3.0]]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, [2.2, 0.0]),
    ({"choice": "max_variance"}, [2.2, 0.0]),
    ({"choice": "farthest"}, [0.0, 3.0]),
    ({"choice": "index"}, [0.0, 0.0]),  # ByzFL's default index 0: the target itself
    ({"choice": "index", "index": 2}, [-2.1, 0.0]),
    ({"choice": "index", "index": 8}, [-2.1, 0.0]),  # 8 mod |H_t| = 8 mod 6 = 2
])
def test_mimic_copies_the_chosen_honest_vector(kwargs: dict[str, Any],
                                                expected: list[float]) -> None:
    target = view_of([0.0, 0.0], MIMIC_NEIGHBOURS, weights=[0.1] * 5, byzantine_weight=0.2,
                     n_byzantine=3)
    attack = get_attack("mimic", **kwargs)
    assert torch.equal(sent(attack, target), t(expected))


def test_mimic_chooses_per_target_and_sends_the_target_itself_without_spread() -> None:
    spread = view_of([0.0, 0.0], MIMIC_NEIGHBOURS, weights=[0.1] * 5, byzantine_weight=0.2)
    lonely = view_of([7.0, 7.0], [[7.0, 7.0]])  # H_t has no spread: copy H_t[0]
    alone = view_of([1.0, 2.0], [])  # no honest neighbour
    attack = Mimic()
    out = attack(AttackView(t([9.0, 9.0]), [spread, lonely, alone]))
    assert torch.equal(out, t([[2.2, 0.0], [7.0, 7.0], [1.0, 2.0]]))
    assert attack.last_positions == [1, 0, 0]
    assert not attack.reads_own_model and not attack.needs_rule


# --------------------------------------------------------------------- optimal attacks
def test_line_search_refines_past_the_grid() -> None:
    # f peaks at 1.3; the grid 0, 1, 2 picks 1, and the golden-section steps in [0, 2]
    # approach 1.3 (never worse than the grid's best)
    def peak(a: float) -> float:
        return -abs(a - 1.3)

    a, value = line_search(peak, 0.0, 2.0, 3, 0)
    assert (a, value) == (1.0, peak(1.0))
    a, value = line_search(peak, 0.0, 2.0, 3, 20)
    assert abs(a - 1.3) < 1e-3 and value == peak(a)
    # ties: the first (lowest) grid point wins; a NaN never does
    assert line_search(lambda a: 1.0, -1.0, 1.0, 5, 4) == (-1.0, 1.0)
    assert line_search(lambda a: math.nan if a > 0 else 0.0, -1.0, 1.0, 3, 0) == (-1.0, 0.0)


def test_optimal_ipm_against_the_mean_takes_the_largest_eps() -> None:
    # H_t = {[1, 2], [3, 4]}, mu = [2, 3], one Byzantine copy of v = -eps * mu. The mean
    # reads the mixing row [0.5, 0.25, 0.25]: [0.5 + 0.75, 1 + 1] - 0.25 eps [2, 3], at
    # [-0.75 - 0.5 eps, -1 - 0.75 eps] from mu, growing with eps: eps = high = 10,
    # v = [-20, -30], damage |[-5.75, -8.5]| = sqrt(105.3125).
    target = view_of([1.0, 2.0], [[3.0, 4.0]], rule=get_rule("mean"))
    attack = OptimalIPM()
    assert torch.equal(sent(attack, target), t([-20.0, -30.0]))
    assert attack.last_factors == [10.0]
    assert attack.last_damages[0] == pytest.approx(math.sqrt(105.3125), rel=1e-12)
    assert attack.stats["factor_mean"] == 10.0


def test_optimal_alie_against_the_median_reaches_the_plateau_at_the_first_grid_z() -> None:
    # 1-D: H_t = {0, 2, 4}, mu = 2, sigma = sqrt(8/3) = 1.633, two copies of v = 2 - 1.633 z.
    # Median of {0, 2, 4, v, v}: v while 0 <= v <= 2 (damage 2 - v = 1.633 z), 0 once v <= 0
    # (damage 2, z >= 1.22). The grid 0, 1, 2, ... first reaches 2 at z = 2; the golden steps
    # in [1, 3] only tie it. ALIE's z = 1 does 1.633.
    target = view_of([0.0], [[2.0], [4.0]], rule=get_rule("median"), n_byzantine=2)
    attack = OptimalALIE()
    sigma = math.sqrt(8.0 / 3.0)
    assert float(sent(attack, target)[0]) == pytest.approx(2.0 - 2.0 * sigma, rel=1e-12)
    assert attack.last_factors == [2.0] and attack.last_damages == [pytest.approx(2.0)]
    alie = float(sent(get_attack("alie", z=1.0), target)[0])
    assert alie == pytest.approx(2.0 - sigma) and 2.0 - alie < 2.0


def test_weighted_rules_get_the_mixing_row_and_the_reference_can_be_the_gossip_step() -> None:
    # x_t = 0, one honest neighbour 1 (weight 0.25), one Byzantine (weight 0.5), so the
    # target keeps 0.25. IPM sends v = -eps * mean(H_t) = -0.5 eps; gossip gives
    # 0.25 * 1 + 0.5 * v = 0.25 - 0.25 eps. From the honest mean 0.5: 0.25 (1 + eps), from
    # the gossip step 0.25: 0.25 eps; both largest at eps = 10.
    target = view_of([0.0], [[1.0]], rule=get_rule("gossip"), byzantine_weight=0.5)
    mean_ref, gossip_ref = OptimalIPM(), OptimalIPM(reference="gossip")
    assert torch.equal(sent(mean_ref, target), t([-5.0]))
    assert mean_ref.last_damages == [pytest.approx(2.75)]
    assert torch.equal(sent(gossip_ref, target), t([-5.0]))
    assert gossip_ref.last_damages == [pytest.approx(2.5)]


def rule_damage(rule: Rule, target: TargetView, vector: Tensor) -> float:
    """Distance of the rule's output from the honest mean when every Byzantine neighbour
    sends ``vector`` (computed here, independently of the attack's own bookkeeping)."""
    received = torch.cat([target.honest_neighbors,
                          vector.expand(target.n_byzantine, -1)])
    output = rule(target.model, received)
    return float((output - target.honest_set().mean(dim=0)).norm())


SCAN_RULES = {
    "median": lambda: get_rule("median"),
    "trimmed_mean": lambda: get_rule("trimmed_mean", b=2),
    "krum": lambda: get_rule("krum", f=2),  # D jumps down once the copies lose: the optimum
}                                           # sits on a discontinuity


@pytest.mark.parametrize("attack_name", ["optimal_alie", "optimal_ipm"])
@pytest.mark.parametrize("rule_name", sorted(SCAN_RULES))
def test_the_search_matches_a_brute_force_scan_and_beats_the_fixed_defaults(
        rule_name: str, attack_name: str) -> None:
    generator = torch.Generator().manual_seed(3)
    honest = torch.randn((5, 6), generator=generator, dtype=F64) + 1.0
    rule = SCAN_RULES[rule_name]()
    target = TargetView(0, honest[0], honest[1:], torch.full((4,), 0.15, dtype=F64), 0.3, 2,
                        0.1, None, rule)
    attack = get_attack(attack_name)
    vector = sent(attack, target)  # type: ignore[arg-type]
    found = rule_damage(rule, target, vector)
    assert found == pytest.approx(attack.last_damages[0], rel=1e-12)  # type: ignore[attr-defined]
    mu, sigma = honest.mean(dim=0), honest.std(dim=0, correction=0)
    high = 20.0 if attack_name == "optimal_alie" else 10.0
    grid = [high * i / 2000 for i in range(2001)]
    if attack_name == "optimal_alie":
        scan = [rule_damage(rule, target, mu - z * sigma) for z in grid]
        default = rule_damage(rule, target, mu - 1.0 * sigma)  # ALIE with z = 1
    else:
        scan = [rule_damage(rule, target, -eps * mu) for eps in grid]
        default = rule_damage(rule, target, -0.1 * mu)  # IPM with eps = 0.1
    # 31 evaluations against 2001: within 2 % of the scan's best (exact on plateaus)
    assert found >= 0.98 * max(scan)
    assert found >= default


def test_the_rules_state_and_stats_are_left_as_they_were() -> None:
    rule = get_rule("centered_clipping", tau=0.5)
    rule(t([1.0, 1.0]), t([[2.0, 0.0]]))  # centre = this output, stats of this call
    centre, stats = rule.state_dict()["centre"], dict(rule.stats)
    target = view_of([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], rule=rule)
    sent(OptimalALIE(grid=5, refine=3), target)
    assert torch.equal(rule.state_dict()["centre"], centre) and rule.stats == stats


def test_optimal_attacks_need_the_targets_rule() -> None:
    target = view_of([0.0], [[1.0]])
    for name in ("optimal_alie", "optimal_ipm"):
        attack = get_attack(name)
        assert attack.needs_rule and not attack.reads_own_model  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=r"TargetView.rule.*node 0"):
            sent(attack, target)  # type: ignore[arg-type]


# ----------------------------------------------------------------- runs from a config
TINY: dict[str, Any] = {
    "topology": "erdos_renyi", "topology_args": {"p": 0.6}, "nodes": 6, "byzantine": 2,
    "dataset": "digits", "model": "logistic_regression", "rounds": 2, "eval_every": 1,
    "local_steps": 1, "batch_size": 16, "lr": 0.1, "ledger": False,
}


@pytest.mark.parametrize("attack", ["inf", "optimal_alie", "mimic"])
def test_both_engines_run_the_attack_from_a_run_config(attack: str) -> None:
    """The batched engine (its own ``inf``, the per-node fallback for the others, with the
    rule it gives attackers) and the per-node engine agree, and stay finite."""
    config = RunConfig(**TINY, rule="trimmed_mean", rule_args={"b": 1}, attack=attack,
                       attack_args={})
    batched = run_batched(config, plot=False, options=EngineOptions(device="cpu"))
    nodes = run_in_process(config, plot=False)
    assert [m["round"] for m in batched] == [m["round"] for m in nodes] == [0, 1, 2]
    for mine, theirs in zip(batched, nodes, strict=True):
        for key in ("accuracy_mean", "consensus_distance", "rule_rejected_nonfinite"):
            if key in theirs:
                assert math.isfinite(theirs[key])
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    rejected = sum(m.get("rule_rejected_nonfinite", 0.0) for m in nodes)
    assert (rejected > 0) == (attack == "inf")
