"""Hypothesis properties of the aggregation rules: invariance to the order of the received
vectors, the coordinate-wise hull, and the breakdown point of median and trimmed mean."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flwr_tempered.aggregators import Rule, get_rule

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------- permutation invariance
@dataclass(frozen=True)
class Invariant:
    """A rule that must not depend on the order of the received vectors, on inputs with
    at least ``min_k`` received. ``generic`` inputs are drawn from a continuous
    distribution (selection rules: no ties, almost surely); otherwise from Hypothesis'
    floats, ties and repeated values included."""

    id: str
    make: Callable[[], Rule]
    min_k: int = 1
    generic: bool = False
    weights: bool = False


INVARIANT_RULES = [
    Invariant("mean", lambda: get_rule("mean")),
    Invariant("mean_weighted", lambda: get_rule("mean"), weights=True),
    Invariant("gossip", lambda: get_rule("gossip"), weights=True),
    Invariant("median", lambda: get_rule("median")),
    Invariant("trimmed_mean_b1", lambda: get_rule("trimmed_mean", b=1), min_k=2),
    Invariant("trimmed_mean_b2", lambda: get_rule("trimmed_mean", b=2), min_k=4),
    Invariant("geometric_median", lambda: get_rule("geometric_median"), generic=True),
    # Krum scores of two mutually nearest inputs tie when a single distance is summed
    # (n - f - 2 = 1), so generic inputs need n - f - 2 >= 2.
    Invariant("krum_f1", lambda: get_rule("krum", f=1), min_k=5, generic=True),
    Invariant("krum_f2", lambda: get_rule("krum", f=2), min_k=7, generic=True),
    Invariant("multi_krum_f1_m3", lambda: get_rule("multi_krum", f=1, m=3), min_k=5,
              generic=True),
    # Bulyan's repeated Krum ends on 2f + 1 inputs scoring n' - f - 2 = f - 1 distances:
    # for f in {1, 2} its last picks are ties by construction (see the report), so order
    # invariance is a property of f = 0 and f >= 3 only.
    Invariant("bulyan_f0", lambda: get_rule("bulyan", f=0), min_k=2, generic=True),
    Invariant("bulyan_f3", lambda: get_rule("bulyan", f=3), min_k=14, generic=True),
    Invariant("balance", lambda: get_rule("balance", total_rounds=10, gamma=1.0),
              generic=True),
    Invariant("centered_clipping", lambda: get_rule("centered_clipping", tau=1.0,
                                                    iterations=2), generic=True),
    Invariant("clipped_gossip_tau", lambda: get_rule("clipped_gossip", tau=1.0),
              generic=True),
    Invariant("clipped_gossip_adaptive", lambda: get_rule("clipped_gossip"), generic=True),
    Invariant("clipped_gossip_weighted", lambda: get_rule("clipped_gossip", tau=1.0),
              generic=True, weights=True),
    Invariant("nnm_f1_mean", lambda: get_rule("nnm", f=1), min_k=2, generic=True),
    Invariant("nnm_f2_trimmed_mean", lambda: get_rule("nnm", f=2, inner={
        "name": "trimmed_mean", "b": 2}), min_k=4, generic=True),
    # (not NNM + Krum: NNM maps every input with the same n - f nearest set to the same
    # mixed vector, and Krum then meets exact ties between groups of duplicates.)
    Invariant("fltrust", lambda: get_rule(
        "fltrust", reference_fn=lambda own: own + torch.linspace(-1, 1, own.shape[0],
                                                                  dtype=own.dtype)),
              generic=True),
    # Selections and filters decide by comparing distances, variances or projections:
    # order invariant on generic inputs (MeaMed too: two values equally far from the
    # median at the cut are an order-dependent tie).
    Invariant("mda_f1", lambda: get_rule("mda", f=1), min_k=2, generic=True),
    Invariant("mda_f2", lambda: get_rule("mda", f=2), min_k=4, generic=True),
    Invariant("smea_f2", lambda: get_rule("smea", f=2), min_k=4, generic=True),
    Invariant("monna_f2", lambda: get_rule("monna", f=2), min_k=4, generic=True),
    Invariant("meamed_f2", lambda: get_rule("meamed", f=2), min_k=4, generic=True),
    Invariant("caf_f2", lambda: get_rule("caf", f=2), min_k=4, generic=True),
    Invariant("arc_f2_median", lambda: get_rule("arc", f=2, inner="median"), min_k=4,
              generic=True),
    Invariant("static_clipping_weighted", lambda: get_rule(
        "static_clipping", c=1.0, inner="gossip"), generic=True, weights=True),
]


@st.composite
def invariance_inputs(draw: st.DrawFn, spec: Invariant) -> dict[str, Any]:
    k = draw(st.integers(max(spec.min_k, 1), max(spec.min_k, 1) + 6))
    d = draw(st.integers(1, 5))
    if spec.generic:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        own = rng.standard_normal(d)
        received = own + rng.uniform(0.3, 3.0, size=(k, 1)) * rng.standard_normal((k, d))
    else:
        values = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
        own = draw(arrays(np.float64, d, elements=values))
        received = draw(arrays(np.float64, (k, d), elements=values))
    weights = None
    if spec.weights:
        raw = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=k + 1, max_size=k + 1)))
        weights = raw / raw.sum()
    return {
        "own": torch.tensor(own),
        "received": torch.tensor(received),
        "weights": None if weights is None else torch.tensor(weights),
        "permutation": draw(st.permutations(range(k))),
    }


@pytest.mark.parametrize("spec", INVARIANT_RULES, ids=[s.id for s in INVARIANT_RULES])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_result_does_not_depend_on_the_order_of_received(spec: Invariant, data: Any) -> None:
    x = data.draw(invariance_inputs(spec))
    order = torch.tensor(x["permutation"], dtype=torch.long)
    weights = x["weights"]
    permuted_weights = None
    if weights is not None:
        permuted_weights = torch.cat([weights[:1], weights[1:][order]])
    rule = spec.make()
    first = rule(x["own"], x["received"], weights)
    first_stats = dict(rule.stats)
    again = spec.make()(x["own"], x["received"][order], permuted_weights)
    scale = 1.0 + float(torch.cat([x["own"][None], x["received"]]).abs().max())
    torch.testing.assert_close(again, first, rtol=1e-9, atol=1e-9 * scale)
    assert rule.stats == first_stats  # the stats of a call do not change afterwards


def test_bucketing_does_depend_on_the_shuffle() -> None:
    """Bucketing is the one rule whose result varies with the order (the shuffle is not
    a function of the values): two seeds give different buckets here."""
    own = torch.zeros(1, dtype=torch.float64)
    received = torch.tensor([[0.0], [1.0], [10.0], [100.0], [1000.0], [1e4]],
                            dtype=torch.float64)
    results = {
        float(get_rule("bucketing", s=2, inner="median", seed=seed)(own, received)[0])
        for seed in range(6)
    }
    assert len(results) > 1


# ----------------------------------------------------------------------------- hull
def finfo_eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


@st.composite
def matrices(draw: st.DrawFn, min_k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    k = draw(st.integers(min_k, 9))
    d = draw(st.integers(1, 6))
    values = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False, width=32)
    own = draw(arrays(np.float64, d, elements=values))
    received = draw(arrays(np.float64, (k, d), elements=values))
    return own, received


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@PROPERTY_SETTINGS
@given(inputs=matrices(), data=st.data())
def test_median_and_trimmed_mean_stay_in_the_coordinatewise_hull(
    inputs: tuple[np.ndarray, np.ndarray], data: Any, dtype: torch.dtype, device: str
) -> None:
    own_np, received_np = inputs
    k = received_np.shape[0]
    b = data.draw(st.integers(0, k // 2), label="b")  # 2b < k + 1
    own = torch.tensor(own_np, dtype=dtype, device=device)
    received = torch.tensor(received_np, dtype=dtype, device=device)
    everything = torch.cat([own[None], received]).double().cpu()
    low, high = everything.min(dim=0).values, everything.max(dim=0).values
    # an average of values inside [low, high] may round a few ulps outside it
    slack = 4 * finfo_eps(dtype) * everything.abs().max(dim=0).values
    for rule in (get_rule("median"), get_rule("trimmed_mean", b=b)):
        result = rule(own, received).double().cpu()
        assert bool(((result >= low - slack) & (result <= high + slack)).all()), (
            rule, result, low, high)


# ------------------------------------------------------------------------- breakdown
@st.composite
def contaminated(draw: st.DrawFn) -> dict[str, Any]:
    """Honest own and received within [-10, 10], plus f < (k+1)/2 received outliers of
    norm 1e6 in arbitrary directions and positions."""
    k = draw(st.integers(1, 10))
    n = k + 1
    f = draw(st.integers(0, min(k, (n - 1) // 2)))  # 2f < n
    d = draw(st.integers(1, 5))
    honest_values = st.floats(-10, 10, allow_nan=False, width=32)
    honest = draw(arrays(np.float64, (n - f, d), elements=honest_values))
    directions = draw(arrays(np.float64, (f, d), elements=st.floats(-1, 1, width=32)))
    outliers = np.empty((f, d))
    for row in range(f):
        length = np.linalg.norm(directions[row])
        outliers[row] = (directions[row] / length if length > 1e-3 else np.eye(d)[0]) * 1e6
    received = np.concatenate([honest[1:], outliers])
    order = draw(st.permutations(range(k)))
    return {"own": honest[0], "received": received[list(order)], "f": f, "honest": honest}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@PROPERTY_SETTINGS
@given(x=contaminated())
def test_median_and_trimmed_mean_resist_a_minority_of_huge_outliers(
    x: dict[str, Any], dtype: torch.dtype, device: str
) -> None:
    own = torch.tensor(x["own"], dtype=dtype, device=device)
    received = torch.tensor(x["received"], dtype=dtype, device=device)
    honest = torch.tensor(x["honest"], dtype=dtype).double()
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    slack = 1e-12 if dtype == torch.float64 else 1e-5
    for rule in (get_rule("median"), get_rule("trimmed_mean", b=x["f"])):
        result = rule(own, received).double().cpu()
        assert bool(((result >= low - slack) & (result <= high + slack)).all()), (
            rule, result, low, high)


def test_breakdown_needs_an_honest_majority() -> None:
    """The property above is tight: with f = (k+1)/2 outliers the median follows them."""
    own = torch.zeros(1, dtype=torch.float64)
    received = torch.tensor([[1.0], [1e6], [1e6]], dtype=torch.float64)
    assert float(get_rule("median")(own, received)[0]) > 10.0
    assert float(get_rule("trimmed_mean", b=1)(own, received)[0]) > 10.0  # mean(1, 1e6)


# ------------------------------------------------------------------ misc. invariances
@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(3, 8),
    shift=st.floats(-100, 100, allow_nan=False),
)
def test_translation_equivariance_of_the_distance_based_rules(
    seed: int, k: int, shift: float
) -> None:
    """Rules defined through differences commute with a common translation."""
    rng = np.random.default_rng(seed)
    own = torch.tensor(rng.standard_normal(3))
    received = own + torch.tensor(rng.uniform(0.3, 3.0, (k, 1)) * rng.standard_normal((k, 3)))
    for make in (
        lambda: get_rule("median"),
        lambda: get_rule("trimmed_mean", b=1),
        lambda: get_rule("geometric_median"),
        lambda: get_rule("clipped_gossip", tau=1.0),
        lambda: get_rule("centered_clipping", tau=1.0),
        lambda: get_rule("nnm", f=1),
        lambda: get_rule("multi_krum", f=0, m=2),
        lambda: get_rule("mda", f=1),
        lambda: get_rule("smea", f=1),
        lambda: get_rule("monna", f=1),
        lambda: get_rule("meamed", f=1),
        lambda: get_rule("caf", f=1),
        lambda: get_rule("arc", f=1, inner={"name": "trimmed_mean", "b": 1}),
        lambda: get_rule("static_clipping", c=1.0),
    ):
        moved = make()(own + shift, received + shift)
        torch.testing.assert_close(moved, make()(own, received) + shift, rtol=1e-9,
                                   atol=1e-9 * (1 + abs(shift)))


def test_identical_inputs_are_a_fixed_point_of_every_rule() -> None:
    """Consensus is stable: if every input equals x, every rule returns x."""
    x = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    received = x.repeat(7, 1)
    weights = torch.full((8,), 1.0 / 8, dtype=torch.float64)
    rules = [
        get_rule("mean"), get_rule("gossip"), get_rule("median"),
        get_rule("trimmed_mean", b=2), get_rule("geometric_median"), get_rule("krum", f=2),
        get_rule("multi_krum", f=1, m=3), get_rule("bulyan", f=1),
        get_rule("centered_clipping", tau=0.1), get_rule("clipped_gossip"),
        get_rule("balance", total_rounds=5), get_rule("mozi", loss_fn=lambda v: 0.0),
        get_rule("nnm", f=2), get_rule("bucketing", inner="median"),
        get_rule("fltrust", reference_fn=lambda own: own + 1.0),
        get_rule("mda", f=3), get_rule("smea", f=2), get_rule("monna", f=3),
        get_rule("meamed", f=3), get_rule("caf", f=3), get_rule("arc", f=3),
        get_rule("static_clipping", c=0.1, inner="median"),
    ]
    for rule in rules:
        assert math.isclose(float((rule(x, received, weights) - x).abs().max()), 0.0,
                            abs_tol=1e-12), rule
