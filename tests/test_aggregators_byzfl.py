"""The rules ByzFL has that the first rule set lacked (MDA, SMEA, MoNNA, MeaMed, CAF, and
the ARC and static clipping pre-aggregations) on inputs small enough to compute by hand;
their caps, budgets and pivots; and a decentralized run with one of them through the
batched engine's per-node fallback.

Their agreement with the slow references on random inputs, the bad-parameter and
too-few-input errors and the non-finite policy live in ``test_aggregators.py`` with every
other rule's; order invariance in ``test_aggregators_properties.py``; the server form in
``test_server_strategies.py``.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from flwr_tempered.aggregators import get_rule

NAN = float("nan")


def column(*values: float) -> torch.Tensor:
    """Scalars as the received ``Tensor[k, 1]`` of 1-D models (float64)."""
    return torch.tensor([[v] for v in values], dtype=torch.float64)


ZERO = torch.zeros(1, dtype=torch.float64)


# ---------------------------------------------------------------------------- MeaMed
def test_meamed_averages_the_values_closest_to_the_median_by_hand() -> None:
    # 0, 1, 2, 10, 3: median 2; distances 2, 1, 0, 8, 1.
    received = column(1.0, 2.0, 10.0, 3.0)
    assert get_rule("meamed", f=1)(ZERO, received).tolist() == [1.5]  # 0, 1, 2, 3
    assert get_rule("meamed", f=2)(ZERO, received).tolist() == [2.0]  # 1, 2, 3
    # Per coordinate: the second coordinate's outlier is another input (-50).
    own = torch.tensor([0.0, 1.0], dtype=torch.float64)
    rows = torch.tensor([[1.0, -50.0], [2.0, 2.0], [10.0, 3.0], [3.0, 0.0]],
                        dtype=torch.float64)
    rule = get_rule("meamed", f=1)
    # coordinate 2: values 1, -50, 2, 3, 0; median 1; closest four 1, 2, 0, 3.
    assert rule(own, rows).tolist() == [1.5, 1.5]
    assert rule.stats["selected"] == 4.0


# ------------------------------------------------------------------------------- MDA
def test_mda_averages_the_subset_of_smallest_diameter_by_hand() -> None:
    received = column(1.0, 2.5, 10.0, 3.0)  # with own: 0, 1, 2.5, 10, 3
    rule = get_rule("mda", f=1)
    assert rule(ZERO, received).tolist() == [6.5 / 4]  # {0, 1, 2.5, 3}: diameter 3
    assert rule.stats["diameter"] == 3.0 and rule.stats["own_selected"] == 1.0
    # f = 2: {1, 2.5, 3} (diameter 2) beats {0, 1, 2.5} (2.5): own is left out.
    rule = get_rule("mda", f=2)
    assert rule(ZERO, received).tolist() == pytest.approx([6.5 / 3])
    assert rule.stats["diameter"] == 2.0 and rule.stats["own_selected"] == 0.0
    assert rule.stats["selected"] == 3.0


def test_mda_refuses_too_many_subsets_at_once_instead_of_running_for_hours() -> None:
    """C(41, 10) is about 1.1e9 subsets: the cap answers before any arithmetic."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"C\(41, 10\) = 1121099408 subsets exceed "
                                         r"max_subsets = 100000"):
        get_rule("mda", f=10)(torch.zeros(3), torch.randn(40, 3))
    with pytest.raises(ValueError, match=r"smea: C\(n, f\) = C\(40, 10\)"):  # 40 clients
        get_rule("smea", f=10).aggregate_clients(torch.zeros(3), torch.randn(40, 3))
    assert time.perf_counter() - start < 1.0
    # The cap is a parameter: 45 subsets pass with max_subsets = 45.
    assert get_rule("mda", f=2, max_subsets=45)(torch.zeros(3), torch.randn(9, 3)).shape == (3,)


# ------------------------------------------------------------------------------ SMEA
def test_smea_averages_the_subset_of_smallest_variance_by_hand() -> None:
    """1-D: the covariance is the variance (normalised by the subset size, as the paper's
    empirical covariance). f = 2 of 0, 1, 2.5, 10, 3: {1, 2.5, 3} has variance
    ((7/6)^2 + (2/6)^2 + (5/6)^2) / 3 = 78/108, the smallest of the ten triples."""
    rule = get_rule("smea", f=2)
    assert rule(ZERO, column(1.0, 2.5, 10.0, 3.0)).tolist() == pytest.approx([6.5 / 3])
    assert rule.stats["max_eigenvalue"] == pytest.approx(78 / 108)
    assert rule.stats["own_selected"] == 0.0


def test_smea_in_two_dimensions_by_hand() -> None:
    """A square of side 2 and one far point, f = 1: the square's covariance is the
    identity (each coordinate's values sit 1 from their mean), largest eigenvalue 1;
    every other four inputs include the far point."""
    own = torch.zeros(2, dtype=torch.float64)
    received = torch.tensor([[2.0, 0.0], [50.0, 50.0], [0.0, 2.0], [2.0, 2.0]],
                            dtype=torch.float64)
    rule = get_rule("smea", f=1)
    assert rule(own, received).tolist() == pytest.approx([1.0, 1.0])
    assert rule.stats["max_eigenvalue"] == pytest.approx(1.0)
    assert rule.stats["own_selected"] == 1.0


# ----------------------------------------------------------------------------- MoNNA
def test_monna_averages_the_inputs_nearest_to_own_by_hand() -> None:
    own = torch.tensor([0.0, 0.0], dtype=torch.float64)
    received = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0], [-1.0, 0.5]],
                            dtype=torch.float64)
    rule = get_rule("monna", f=1)  # keep 4 of 5: drop [5, 5]
    assert rule(own, received).tolist() == pytest.approx([0.0, 0.625])
    assert rule.stats["selected"] == 4.0


def test_monna_pivots_on_own_even_far_from_the_others() -> None:
    """Own trusts itself: it is always kept, and so are the inputs nearest to it, even
    when the others agree among themselves (0 and 10, 11, 12, 13: drop 13)."""
    assert get_rule("monna", f=1)(ZERO, column(10.0, 11.0, 12.0, 13.0)).tolist() == [8.25]


# ------------------------------------------------------------------------------- CAF
def test_caf_filters_down_to_the_candidate_of_smallest_top_eigenvalue_by_hand() -> None:
    """0, 2, 6 with f = 1 (stop once the total weight is <= n - 2f = 1).
    Step 1: mean 8/3, tau = (64, 4, 100)/9, weights 1 - tau/max = (0.36, 0.96, 0).
    Step 2: mean 16/11, tau over the positive weights = (256, 36)/121: weights (0, 0.825,
    0). Total 0.825 <= 1: the last candidate is the point 2, variance 0, the smallest.
    (Were the maximum taken over every input, 6's tau (2500/121) would stay the maximum
    and step 2 would leave total weight 1.27 > 1.)"""
    rule = get_rule("caf", f=1)
    assert rule(ZERO, column(2.0, 6.0)).tolist() == [2.0]
    assert rule.stats["steps"] == 2.0 and rule.stats["max_eigenvalue"] == 0.0


def test_caf_with_f_zero_is_the_mean_and_a_far_outlier_is_filtered() -> None:
    received = torch.tensor([[0.1, 0.0], [0.0, -0.1], [-0.1, 0.1], [50.0, 50.0]],
                            dtype=torch.float64)
    own = torch.zeros(2, dtype=torch.float64)
    plain = get_rule("caf", f=0)
    assert torch.allclose(plain(own, received), torch.cat([own[None], received]).mean(0))
    assert plain.stats["steps"] == 0.0
    robust = get_rule("caf", f=1)(own, received)
    assert float(robust.abs().max()) < 0.1  # the outlier's weight went to zero


# ------------------------------------------------------------------ ARC, static clipping
def test_arc_clips_the_largest_differences_to_the_next_norm_by_hand() -> None:
    own = torch.tensor([0.0, 0.0], dtype=torch.float64)
    received = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [1.0, 0.0]],
                            dtype=torch.float64)  # norms 5, 1, 10, 1 (own: 0); n = 5
    rule = get_rule("arc", f=1)  # k = floor(2 * 1/5 * 4) = 1: [6, 8] -> [3, 4]
    assert rule(own, received).tolist() == pytest.approx([7 / 5, 9 / 5])
    assert rule.stats["clipped"] == 1.0 and rule.stats["clip_radius"] == 5.0
    rule = get_rule("arc", f=2)  # k = floor(2 * 2/5 * 3) = 2: both to norm 1
    assert rule(own, received).tolist() == pytest.approx([2.2 / 5, 2.6 / 5])
    assert rule.stats["clipped"] == 2.0 and rule.stats["clip_radius"] == 1.0
    # A rejected row lowers f to 0: k = 0, nothing clipped, the mean of own and the rest.
    poisoned = torch.cat([received, torch.full((1, 2), NAN, dtype=torch.float64)])
    rule = get_rule("arc", f=1)
    assert rule(own, poisoned).tolist() == pytest.approx([2.0, 2.6])
    assert rule.stats["clipped"] == 0.0


def test_arc_reproduces_the_byzfl_documentation_example() -> None:
    """ByzFL's ARC(f=1) on (1, 2, 3), (4, 5, 6), (7, 8, 9) clips the last to the second's
    norm: (4.41004009, 5.04004582, 5.67005155). Here the three are own's neighbours and
    own is the origin (n = 4, still k = 1), so the mean is over own, the first two and the
    documented clipped vector."""
    received = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],
                            dtype=torch.float64)
    result = get_rule("arc", f=1)(torch.zeros(3, dtype=torch.float64), received)
    documented = torch.tensor([4.41004009, 5.04004582, 5.67005155], dtype=torch.float64)
    expected = (received[0] + received[1] + documented) / 4
    assert torch.allclose(result, expected, atol=1e-8)


def test_static_clipping_clips_every_difference_from_own_by_hand() -> None:
    own = torch.tensor([1.0, 1.0], dtype=torch.float64)
    received = torch.tensor([[4.0, 5.0], [1.0, 2.0]], dtype=torch.float64)  # (3,4), (0,1)
    rule = get_rule("static_clipping", c=2.0)  # (3, 4) -> (1.2, 1.6)
    assert rule(own, received).tolist() == pytest.approx([4.2 / 3, 5.6 / 3])
    assert rule.stats["clipped"] == 1.0
    median = get_rule("static_clipping", c=2.0, inner="median")  # of 1, 2.2, 1 and 1, 2.6, 2
    assert median(own, received).tolist() == pytest.approx([1.0, 2.0])
    assert median.config() == {"name": "static_clipping", "c": 2.0, "inner": {"name": "median"}}


# --------------------------------------------------------------- budgets lowered by NaN
def test_rejected_rows_lower_the_budget_of_the_new_rules() -> None:
    """One NaN row of five received lowers f = 1 to 0: each rule then averages the five
    inputs left (MDA, SMEA, MoNNA, MeaMed keep n - 0 of them; CAF stops at once)."""
    received = column(1.0, 2.0, NAN, 10.0, 3.0)
    for name in ("mda", "smea", "monna", "meamed", "caf"):
        rule = get_rule(name, f=1)
        assert rule(ZERO, received).tolist() == [3.2], name
        assert rule.stats["rejected_nonfinite"] == 1.0, name
    # refused inputs count the same way, and towards n >= 2f + 1
    with pytest.raises(ValueError, match=r"mda: needs n >= 2f \+ 1.*n = 3, f = 2"):
        get_rule("mda", f=2)(ZERO, column(1.0, 2.0))
    assert get_rule("mda", f=2)(ZERO, column(1.0, 2.0), refused=2).tolist() == [1.0]


# ------------------------------------------------------------------- batched engine
def test_a_decentralized_run_with_mda_goes_through_the_per_node_fallback() -> None:
    """The batched engine has no batched MDA: it runs the per-node rule objects, and the
    rule's statistics reach the metrics (6 nodes, complete graph: n = 6, f = 1)."""
    from flwr_tempered.engine import BatchedEngine, EngineOptions
    from flwr_tempered.engine.contracts import PerNodeRule
    from flwr_tempered.node import RunConfig

    config = RunConfig(topology="complete", topology_args={}, nodes=6, byzantine=1,
                       rule="mda", rule_args={"f": 1}, attack="sign_flip", attack_args={},
                       dataset="digits", model="logistic_regression", rounds=1, eval_every=1,
                       local_steps=1, batch_size=16, lr=0.1, ledger=False)
    engine = BatchedEngine(config, EngineOptions(device="cpu"))
    assert isinstance(engine.rule, PerNodeRule)
    last = engine.run(plot=False)[-1]
    assert last["round"] == 1 and last["dropped_nodes"] == 0
    assert last["rule_selected"] == 5.0 and last["rule_received"] == 5.0
    assert math.isfinite(last["rule_diameter"]) and math.isfinite(last["accuracy_mean"])
