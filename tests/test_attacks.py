"""Tests of flwr_tempered.attacks: formulas on hand-computable examples and properties."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

from flwr_tempered.aggregators import get_rule
from flwr_tempered.aggregators.balance import Balance
from flwr_tempered.aggregators.krum import krum_scores
from flwr_tempered.attacks import (
    ALIE,
    AttackView,
    Backdoor,
    BalanceAdaptive,
    DataPoisoningAttack,
    Dissensus,
    FangKrum,
    FangTrim,
    Gaussian,
    LabelFlip,
    MinMax,
    MinSum,
    ModelPoisoningAttack,
    TargetView,
    alie_default_z,
    attack_class,
    available_attacks,
    get_attack,
    triggered_test_set,
)

F64 = torch.float64
DTYPES = [torch.float32, torch.float64]


def t(values: Any, dtype: torch.dtype = F64) -> Tensor:
    return torch.tensor(values, dtype=dtype)


def target(
    model: Any,
    neighbors: Any,
    weights: Any = None,
    *,
    byzantine_weight: float = 0.25,
    n_byzantine: int = 1,
    self_weight: float = 0.25,
    previous: Any = None,
    rule: Any = None,
    node: int = 0,
    dtype: torch.dtype = F64,
) -> TargetView:
    x = t(model, dtype)
    nb = t(neighbors, dtype).reshape(-1, x.shape[0])
    w = torch.full((nb.shape[0],), 0.25, dtype=dtype) if weights is None else t(weights, dtype)
    prev = None if previous is None else t(previous, dtype)
    return TargetView(node, x, nb, w, byzantine_weight, n_byzantine, self_weight, prev, rule)


def single(attack: ModelPoisoningAttack, tv: TargetView, **view_kw: Any) -> Tensor:
    """The vector ``attack`` sends to the single target ``tv``."""
    out = attack(AttackView(tv.model.clone(), [tv], **view_kw))
    assert out.shape == (1, tv.dim)
    return out[0]


# Arguments that make every registered attack runnable on a generic view.
ATTACK_KWARGS: dict[str, dict[str, Any]] = {
    "balance_adaptive": {"total_rounds": 10},
}


# ------------------------------------------------------------------------ registry
def test_registry_lists_every_attack_family() -> None:
    expected = {
        "alie", "backdoor", "balance_adaptive", "bit_flip", "dissensus", "fang_krum",
        "fang_trim", "gaussian", "inf", "ipm", "label_flip", "mimic", "min_max", "min_sum",
        "optimal_alie", "optimal_ipm", "sign_flip",
    }
    assert set(available_attacks()) == expected
    assert available_attacks() == sorted(available_attacks())


def test_misspelt_attack_name_raises_listing_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown attack 'alei'.*alie.*dissensus"):
        get_attack("alei")


def test_unknown_parameter_raises_listing_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"no parameter\(s\) epsilon.*its parameters: eps"):
        get_attack("dissensus", epsilon=1.0)


def test_get_attack_passes_parameters_and_sets_name() -> None:
    attack = get_attack("alie", z=10)
    assert isinstance(attack, ALIE) and attack.z == 10.0 and attack.name == "alie"
    assert attack.config() == {"name": "alie", "z": 10.0, "ddof": 0, "z_from": "target",
                               "n": None, "f": None}
    assert attack_class("fang_trim") is FangTrim


@pytest.mark.parametrize(
    ("name", "params", "shown"),
    [
        ("dissensus", {"eps": -1.0}, "-1.0"),
        ("dissensus", {"eps": float("nan")}, "nan"),
        ("alie", {"z": float("inf")}, "inf"),
        ("ipm", {"eps": 0}, "0"),
        ("gaussian", {"sigma": -0.5}, "-0.5"),
        ("gaussian", {"around": "mean"}, "'mean'"),
        ("gaussian", {"seed": 1.5}, "1.5"),
        ("gaussian", {"mean": float("nan")}, "nan"),
        ("mimic", {"choice": "random"}, "'random'"),
        ("mimic", {"index": -1}, "-1"),
        ("optimal_alie", {"low": 5.0, "high": 1.0}, "5.0"),
        ("optimal_alie", {"high": float("inf")}, "inf"),
        ("optimal_alie", {"grid": 1}, "1"),
        ("optimal_alie", {"refine": -1}, "-1"),
        ("optimal_alie", {"ddof": 2}, "2"),
        ("optimal_ipm", {"reference": "median"}, "'median'"),
        ("optimal_ipm", {"low": 3.0, "high": 3.0}, "3.0"),
        ("sign_flip", {"scale": 0.0}, "0.0"),
        ("fang_trim", {"b": 1.0}, "1.0"),
        ("fang_krum", {"lambda_threshold": 0.0}, "0.0"),
        ("min_max", {"perturbation": "gauss"}, "'gauss'"),
        ("min_sum", {"gamma_init": -1.0}, "-1.0"),
        ("balance_adaptive", {"margin": 1.0}, "1.0"),
        ("balance_adaptive", {"gamma": 0.0}, "0.0"),
        ("balance_adaptive", {"total_rounds": 0}, "0"),
        ("label_flip", {"num_classes": 1}, "1"),
        ("backdoor", {"fraction": 1.5}, "1.5"),
        ("backdoor", {"corner": "middle"}, "'middle'"),
        ("backdoor", {"size": 0}, "0"),
        ("backdoor", {"trigger": "pattern"}, "'pattern'"),
        ("backdoor", {"target_label": -1}, "-1"),
    ],
)
def test_bad_knob_raises_value_error_naming_the_value(
    name: str, params: dict[str, Any], shown: str
) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(params))}.*{shown}"):
        get_attack(name, **params)


# ------------------------------------------------------------------------ views
def test_view_rejects_neighbor_matrix_with_wrong_dimension() -> None:
    with pytest.raises(ValueError, match=r"honest_neighbors.*d = 3.*\(2, 4\)"):
        TargetView(0, torch.zeros(3), torch.zeros(2, 4), torch.zeros(2), 0.5, 1, 0.5)


def test_view_rejects_weights_not_matching_neighbors() -> None:
    with pytest.raises(ValueError, match=r"honest_weights.*\(2,\).*\(3,\)"):
        TargetView(0, torch.zeros(3), torch.zeros(2, 3), torch.zeros(3), 0.5, 1, 0.5)


def test_view_rejects_mixed_dtypes() -> None:
    with pytest.raises(ValueError, match=r"float64.*float32"):
        TargetView(0, torch.zeros(3), torch.zeros(2, 3, dtype=F64), torch.zeros(2), 0.5, 1, 0.5)


def test_view_rejects_previous_of_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"previous.*\(3,\).*\(4,\)"):
        TargetView(0, torch.zeros(3), torch.zeros(0, 3), torch.zeros(0), 0.5, 1, 0.5,
                   previous=torch.zeros(4))


@pytest.mark.parametrize(
    ("field", "value"), [("byzantine_weight", 0.0), ("n_byzantine", 0), ("self_weight", -0.1)]
)
def test_view_rejects_bad_scalars(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {"byzantine_weight": 0.5, "n_byzantine": 1, "self_weight": 0.5}
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        TargetView(0, torch.zeros(3), torch.zeros(0, 3), torch.zeros(0), **kwargs)


def test_attack_view_rejects_target_of_other_dimension_or_dtype() -> None:
    tv = target([1.0, 2.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        AttackView(torch.zeros(3, dtype=F64), [tv])
    with pytest.raises(ValueError, match=r"float64.*float32"):
        AttackView(torch.zeros(2), [tv])
    with pytest.raises(ValueError, match=r"own_previous.*\(2,\).*\(5,\)"):
        AttackView(torch.zeros(2, dtype=F64), [tv], own_previous=torch.zeros(5, dtype=F64))


@pytest.mark.parametrize("name", ["fang_trim", "fang_krum", "balance_adaptive"])
def test_missing_previous_raises_naming_the_field(name: str) -> None:
    attack = get_attack(name, **ATTACK_KWARGS.get(name, {}))
    assert isinstance(attack, ModelPoisoningAttack) and attack.needs_previous
    tv = target([1.0, 2.0], [[0.0, 0.0]], node=7)
    with pytest.raises(ValueError, match=r"TargetView.previous.*node 7"):
        attack(AttackView(tv.model, [tv]))


def test_sign_flip_without_own_previous_raises() -> None:
    attack = get_attack("sign_flip")
    assert isinstance(attack, ModelPoisoningAttack) and attack.needs_own_previous
    tv = target([1.0, 2.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="own_previous"):
        attack(AttackView(tv.model, [tv]))


def test_requirement_flags_say_what_a_runtime_must_pass() -> None:
    flags = {
        name: (cls.needs_previous, cls.needs_own_previous, cls.uses_rule)
        for name in available_attacks()
        for cls in [attack_class(name)]
        if issubclass(cls, ModelPoisoningAttack | DataPoisoningAttack)
    }
    assert flags["fang_trim"] == (True, False, False)
    assert flags["sign_flip"] == (False, True, False)
    assert flags["balance_adaptive"] == (True, False, True)
    assert flags["dissensus"] == (False, False, False)
    assert flags["optimal_alie"] == flags["optimal_ipm"] == (False, False, True)
    assert attack_class("optimal_alie").needs_rule and attack_class("optimal_ipm").needs_rule
    assert not any(attack_class(n).needs_rule for n in ("mimic", "inf", "alie", "ipm"))
    assert attack_class("min_max").uses_previous  # type: ignore[attr-defined]


# ---------------------------------------------------------- shapes and dtypes (all)
def generic_view(dtype: torch.dtype, d: int = 4) -> AttackView:
    gen = torch.Generator().manual_seed(0)
    targets = []
    for node, h in enumerate([3, 4, 0]):
        x = torch.randn(d, generator=gen, dtype=dtype)
        nb = torch.randn(h, d, generator=gen, dtype=dtype)
        w = torch.full((h,), 0.1, dtype=dtype)
        targets.append(TargetView(node, x, nb, w, 0.2, 2, 1.0 - 0.1 * h - 0.2,
                                  torch.randn(d, generator=gen, dtype=dtype),
                                  get_rule("median")))
    own = torch.randn(d, generator=gen, dtype=dtype)
    return AttackView(own, targets, own_previous=torch.zeros(d, dtype=dtype), round=3,
                      total_rounds=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(set(available_attacks())))
def test_output_has_one_row_per_target_with_own_dtype(name: str, dtype: torch.dtype) -> None:
    view = generic_view(dtype)
    attack = get_attack(name, **ATTACK_KWARGS.get(name, {}))
    out = attack(view)
    assert out.shape == (3, 4)
    assert out.dtype == dtype and out.device == view.own.device
    assert torch.isfinite(out).all() or name == "inf"
    empty = attack(AttackView(view.own, [], own_previous=view.own_previous, total_rounds=10))
    assert empty.shape == (0, 4)


@pytest.mark.parametrize("name", sorted(set(available_attacks())))
def test_attacks_that_skip_training_send_the_same_whatever_their_own_model(name: str) -> None:
    """``reads_own_model = False`` lets the runtimes skip an attacker's training; that is
    only sound when another own model (and own previous model) changes nothing sent."""
    kwargs = ATTACK_KWARGS.get(name, {})
    view = generic_view(F64)
    other = AttackView(view.own + 3.0, view.targets, own_previous=view.own_previous - 1.0,
                       round=view.round, total_rounds=view.total_rounds)
    first, second = get_attack(name, **kwargs), get_attack(name, **kwargs)
    if first.reads_own_model:
        if isinstance(first, ModelPoisoningAttack):
            assert not torch.equal(first(view), second(other)), name
        return
    torch.testing.assert_close(first(view), second(other), rtol=0, atol=0)


def test_only_noise_around_own_reads_the_gaussian_attackers_model() -> None:
    assert get_attack("gaussian", around="own").reads_own_model
    assert not get_attack("gaussian", around="zero").reads_own_model
    assert get_attack("label_flip").reads_own_model


# ----------------------------------------------------------------------- dissensus
def test_dissensus_hand_example() -> None:
    # pull = 0.25 * ([3,0]-[1,0]) + 0.25 * ([1,2]-[1,0]) = [0.5, 0.5]
    # sent = [1,0] - 1.5 * [0.5,0.5] / 0.25 = [-2, -3]
    tv = target([1.0, 0.0], [[3.0, 0.0], [1.0, 2.0]], [0.25, 0.25], byzantine_weight=0.25)
    assert torch.equal(single(Dissensus(eps=1.5), tv), t([-2.0, -3.0]))


def test_dissensus_with_uniform_weights_follows_the_reference_code_hand_example() -> None:
    # Degree 4 (two honest, two Byzantine), every weight 1/5; the reference's push is
    # sum_j (1/5)(x_j - x_t) / (2/5) = ([3,0]-[1,0] + [1,2]-[1,0]) / 2 = [1, 1];
    # sent = [1,0] - 1.5 * [1, 1] = [-0.5, -1.5], whatever the mixing row says.
    tv = target([1.0, 0.0], [[3.0, 0.0], [1.0, 2.0]], [0.1, 0.3], byzantine_weight=0.45,
                n_byzantine=2)
    sent = single(Dissensus(eps=1.5, weights="uniform"), tv)
    assert torch.allclose(sent, t([-0.5, -1.5]), atol=1e-12)
    with pytest.raises(ValueError, match="weights"):
        Dissensus(weights="equal")


def gossip_step(tv: TargetView, byzantine_rows: Tensor, byzantine_weights: Tensor) -> Tensor:
    """x_t + sum_j W_tj (x_j - x_t) over honest and Byzantine neighbours, by hand."""
    x = tv.model
    step = x.clone()
    for w, x_j in zip(tv.honest_weights, tv.honest_neighbors, strict=True):
        step = step + w * (x_j - x)
    for w, x_k in zip(byzantine_weights, byzantine_rows, strict=True):
        step = step + w * (x_k - x)
    return step


def test_dissensus_reverses_the_honest_pull_under_gossip_hand_example() -> None:
    tv = target([1.0, 0.0], [[3.0, 0.0], [1.0, 2.0]], [0.25, 0.25], byzantine_weight=0.25)
    sent = single(Dissensus(eps=1.5), tv)
    new = gossip_step(tv, sent.unsqueeze(0), t([0.25]))
    # honest pull [0.5, 0.5] reversed and halved: [1, 0] - 0.5 * [0.5, 0.5]
    assert torch.allclose(new, t([0.75, -0.25]))


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(0, 4),
    n_byz=st.integers(1, 3),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_dissensus_with_eps_1_5_moves_target_by_minus_half_its_honest_pull(
    h: int, n_byz: int, d: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    raw = torch.rand(h + n_byz + 1, generator=gen, dtype=F64) + 0.05
    w = raw / raw.sum()  # self, honest..., Byzantine...
    honest_w, byz_w = w[1 : h + 1], w[h + 1 :]
    tv = TargetView(0, torch.randn(d, generator=gen, dtype=F64),
                    torch.randn(h, d, generator=gen, dtype=F64), honest_w,
                    float(byz_w.sum()), n_byz, float(w[0]))
    sent = single(Dissensus(eps=1.5), tv)
    new = gossip_step(tv, sent.expand(n_byz, d), byz_w)
    pull = honest_w @ (tv.honest_neighbors - tv.model)
    assert torch.allclose(new - tv.model, -0.5 * pull, atol=1e-10)


# ----------------------------------------------------------------------------- ALIE
def test_alie_hand_example_uses_population_std() -> None:
    # H_t = {[1,5], [3,1]}: mu = [2,3], population std = [1,2]; z=2 -> [0,-1]
    tv = target([1.0, 5.0], [[3.0, 1.0]])
    assert torch.allclose(single(ALIE(z=2), tv), t([0.0, -1.0]))


def test_alie_ddof_1_is_the_sample_deviation_of_the_reference_code() -> None:
    # H_t = {0, 2} (target 0, one honest neighbour 2): mean 1; sample std sqrt(2),
    # population std 1.
    tv = target([0.0], [[2.0]])
    sample = single(get_attack("alie", z=1.0, ddof=1), tv)
    population = single(get_attack("alie", z=1.0), tv)
    assert sample.tolist() == pytest.approx([1.0 - math.sqrt(2.0)], abs=1e-12)
    assert population.tolist() == pytest.approx([0.0], abs=1e-12)


def test_alie_ddof_1_gives_a_lone_target_no_spread_instead_of_nan() -> None:
    tv = target([3.0], [])
    assert single(get_attack("alie", z=2.0, ddof=1), tv).tolist() == [3.0]


def test_alie_z_from_run_uses_the_runs_n_and_f_like_the_reference_code() -> None:
    # n = 16, f = 3: s = floor(16/2 + 1) - 3 = 6, z = Phi^-1((16 - 3 - 6) / (16 - 3)).
    expected = NormalDist().inv_cdf(7 / 13)
    attack = get_attack("alie", z_from="run", n=16, f=3)
    small = target([0.0], [[2.0]])   # per target: n = 3, m = 1
    assert attack.z_for(small) == pytest.approx(expected, abs=1e-12)
    assert get_attack("alie").z_for(small) != pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="z_from='run' needs"):
        get_attack("alie", z_from="run")
    with pytest.raises(ValueError, match="z_from"):
        get_attack("alie", z_from="graph")
    with pytest.raises(ValueError, match="ddof must be 0 or 1"):
        get_attack("alie", ddof=2)


def test_a_run_builds_alie_z_from_run_with_its_node_and_byzantine_counts() -> None:
    from flwr_tempered.node import RunConfig, build_attack

    config = RunConfig(topology="ring", topology_args={}, nodes=16, byzantine=3,
                       dataset="digits", attack="alie", attack_args={"z_from": "run"})
    attack = build_attack(config, 0)
    assert (attack.n, attack.f) == (16, 3)  # type: ignore[attr-defined]
    assert attack.z_for(target([0.0], [[2.0]])) == \
        pytest.approx(NormalDist().inv_cdf(7 / 13), abs=1e-12)


def test_alie_default_z_on_known_n_and_m() -> None:
    # n = 9, m = 2: s = floor(5.5) - 2 = 3, z = Phi^-1((9 - 2 - 3) / 7) = Phi^-1(4/7)
    assert alie_default_z(9, 2) == pytest.approx(0.18001237, abs=1e-7)
    # Baruch et al.'s n = 50, m = 12: s = 14, Phi^-1(24/38)
    assert alie_default_z(50, 12) == pytest.approx(NormalDist().inv_cdf(24 / 38))
    # n = 4, m = 1: s = 2, Phi^-1(1/3) < 0 (small neighbourhoods give negative z)
    assert alie_default_z(4, 1) == pytest.approx(-0.43072730, abs=1e-7)


def test_alie_default_z_clamps_out_of_range_fractions() -> None:
    # single honest input (n=2, m=1): fraction 0 clamped to 1/2 -> z = 0
    assert alie_default_z(2, 1) == 0.0
    # Byzantine majority (n=5, m=3): s = 0, fraction 1 clamped to 1 - 1/4
    assert alie_default_z(5, 3) == pytest.approx(NormalDist().inv_cdf(0.75))


@given(n=st.integers(2, 200), data=st.data())
def test_alie_default_z_is_always_finite(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, n - 1))
    assert math.isfinite(alie_default_z(n, m))


def test_alie_default_z_is_applied_per_target() -> None:
    # |H_t| = 7, n_byzantine = 2 -> n = 9, m = 2 -> z = Phi^-1(4/7)
    nbrs = [[float(i), float(-2 * i)] for i in range(1, 7)]
    tv = target([0.0, 0.0], nbrs, [0.1] * 6, n_byzantine=2)
    honest = tv.honest_set()
    z = NormalDist().inv_cdf(4 / 7)
    expected = honest.mean(0) - z * honest.std(0, correction=0)
    attack = ALIE()
    assert torch.allclose(single(attack, tv), expected)
    assert attack.stats["z_mean"] == pytest.approx(z)


# ------------------------------------------------------------------- simple attacks
def test_ipm_hand_example() -> None:
    tv = target([1.0, 2.0], [[3.0, 4.0]])  # mean(H_t) = [2, 3]
    assert torch.allclose(single(get_attack("ipm", eps=0.5), tv), t([-1.0, -1.5]))  # type: ignore[arg-type]


def test_bit_flip_sends_minus_own_to_every_target() -> None:
    tvs = [target([0.0, 0.0, 0.0], [[1.0, 1.0, 1.0]], node=i) for i in range(2)]
    out = get_attack("bit_flip")(AttackView(t([1.0, -2.0, 3.0]), tvs))
    assert torch.equal(out, t([[-1.0, 2.0, -3.0], [-1.0, 2.0, -3.0]]))


def test_sign_flip_hand_example() -> None:
    # own - own_previous = [1, -1]; [1,3] - 2 * [1,-1] = [-1, 5]
    tv = target([0.0, 0.0], [])
    out = get_attack("sign_flip", scale=2.0)(
        AttackView(t([2.0, 2.0]), [tv], own_previous=t([1.0, 3.0]))
    )
    assert torch.equal(out, t([[-1.0, 5.0]]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_noise_has_requested_scale_and_is_seeded(dtype: torch.dtype) -> None:
    d = 20_000
    own = torch.full((d,), 3.0, dtype=dtype)
    tvs = [TargetView(i, torch.zeros(d, dtype=dtype), torch.zeros(0, d, dtype=dtype),
                      torch.zeros(0, dtype=dtype), 0.5, 1, 0.5) for i in range(2)]
    view = AttackView(own, tvs)
    out = Gaussian(sigma=2.0, seed=5)(view)
    assert out.dtype == dtype
    assert abs(float(out.mean())) < 0.05 and abs(float(out.std()) - 2.0) < 0.05
    assert not torch.equal(out[0], out[1])  # independent draws per recipient
    assert torch.equal(out, Gaussian(sigma=2.0, seed=5)(view))
    around = Gaussian(sigma=2.0, around="own", seed=5)(view)
    assert torch.allclose(around - own, out, atol=1e-5)
    assert torch.equal(Gaussian(sigma=0.0, around="own")(view), own.expand(2, d))


def test_generator_state_round_trips() -> None:
    attack = Gaussian(seed=1)
    view = generic_view(F64)
    state = attack.state_dict()
    first = attack(view)
    assert not torch.equal(first, attack(view))  # the stream advances
    attack.load_state_dict(state)
    assert torch.equal(first, attack(view))


# ------------------------------------------------------------------------ Fang trim
# H_t = {x_t, x_1}; previous chosen so that s = [+1, 0, -1, -1, 0, +1].
TRIM_MODEL = [1.0, -1.0, 2.0, -3.0, 5.0, -2.0]
TRIM_NEIGHBOR = [3.0, 1.0, 4.0, -1.0, 5.0, -4.0]
TRIM_PREVIOUS = [0.0, 0.0, 5.0, 0.0, 5.0, -10.0]
# b = 2: s=+1, w_min=1 -> [0.5, 1]; s=0 -> mean 0; s=-1, w_max=4 -> [4, 8];
# s=-1, w_max=-1 -> [-1, -0.5]; s=0 -> mean 5; s=+1, w_min=-4 -> [-8, -4].
TRIM_LOW = [0.5, 0.0, 4.0, -1.0, 5.0, -8.0]
TRIM_HIGH = [1.0, 0.0, 8.0, -0.5, 5.0, -4.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fang_trim_values_lie_in_hand_computed_intervals(dtype: torch.dtype) -> None:
    tvs = [target(TRIM_MODEL, [TRIM_NEIGHBOR], previous=TRIM_PREVIOUS, node=i, dtype=dtype)
           for i in range(50)]
    out = FangTrim(b=2.0, seed=3)(AttackView(tvs[0].model, tvs))
    assert out.dtype == dtype
    low, high = t(TRIM_LOW, dtype), t(TRIM_HIGH, dtype)
    assert bool(((out >= low) & (out <= high)).all())
    # the draws are spread over the intervals, not stuck at an end
    assert float(out[:, 2].max() - out[:, 2].min()) > 2.0
    assert not torch.equal(out[0], out[1])


def test_fang_trim_is_reproducible_per_seed_and_differs_across_seeds() -> None:
    tv = target(TRIM_MODEL, [TRIM_NEIGHBOR], previous=TRIM_PREVIOUS)
    view = AttackView(tv.model, [tv])
    assert torch.equal(FangTrim(seed=1)(view), FangTrim(seed=1)(view))
    assert not torch.equal(FangTrim(seed=1)(view), FangTrim(seed=2)(view))


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(0, 4),
    d=st.integers(1, 5),
    b=st.floats(1.01, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_fang_trim_pushes_against_the_honest_direction(h: int, d: int, b: float,
                                                       seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(h + 1, d, generator=gen, dtype=F64)
    previous = torch.randn(d, generator=gen, dtype=F64)
    tv = TargetView(0, honest[0], honest[1:], torch.full((h,), 0.1, dtype=F64), 0.1, 1, 0.5,
                    previous)
    sent = single(FangTrim(b=b, seed=seed), tv)
    s = torch.sign(honest.mean(0) - previous)
    w_max, w_min = honest.max(0).values, honest.min(0).values
    down, up = s > 0, s < 0
    # s = -1: at least w_max, at most b*w_max (w_max > 0) or w_max/b (w_max <= 0)
    assert bool((sent[up] >= w_max[up]).all())
    assert bool((sent[up] <= torch.where(w_max > 0, b * w_max, w_max / b)[up] + 1e-12).all())
    # s = +1: at most w_min, at least w_min/b (w_min > 0) or b*w_min (w_min <= 0)
    assert bool((sent[down] <= w_min[down]).all())
    assert bool((sent[down] >= torch.where(w_min > 0, w_min / b, b * w_min)[down] - 1e-12).all())
    # the change relative to the honest mean has the sign opposite to s
    assert bool(((sent - honest.mean(0)) * s <= 0).all())


# ------------------------------------------------------------------------ Fang Krum
# x_t = A = [2,0], neighbours B = [0,2], C = [-2,0], D = [0,-1]; previous = 0; c = 1, n = 5.
# mean = [0, 0.25] -> s = [0, 1]. Two closest honest distances: A, C: sqrt5 + sqrt8,
# B: 2 sqrt8, D: 2 sqrt5 (min). lambda_up = 2 sqrt5 / (2 sqrt2) + max||x_i|| / sqrt2
#                                         = sqrt(5/2) + sqrt2.
# Krum rejects lambda_up and lambda_up / 2 and accepts lambda_up / 4 ≈ 0.749:
# malicious M = [0, -0.749], score(M) = |MD|^2 + |MA|^2 ≈ 0.063 + 4.561 < score(D) ≈ 5.063.
KRUM_MODEL = [2.0, 0.0]
KRUM_NEIGHBORS = [[0.0, 2.0], [-2.0, 0.0], [0.0, -1.0]]
KRUM_UP = math.sqrt(2.5) + math.sqrt(2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fang_krum_hand_example(dtype: torch.dtype) -> None:
    tv = target(KRUM_MODEL, KRUM_NEIGHBORS, previous=[0.0, 0.0], dtype=dtype)
    attack = FangKrum()
    assert attack.upper_bound(tv) == pytest.approx(KRUM_UP, rel=1e-6)
    sent = single(attack, tv)
    assert attack.last_lambdas == [pytest.approx(KRUM_UP / 4, rel=1e-6)]
    assert attack.last_selected == [True]
    assert torch.allclose(sent, t([0.0, -KRUM_UP / 4], dtype))


def krum_selects_malicious(honest: Tensor, malicious: Tensor, c: int) -> bool:
    inputs = torch.cat([honest, malicious.expand(c, -1)])
    return int(torch.argmin(krum_scores(inputs, c))) >= honest.shape[0]


@settings(max_examples=40, deadline=None)
@given(h=st.integers(3, 7), c=st.integers(1, 2), d=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_fang_krum_lambda_is_the_largest_halving_that_krum_selects(
    h: int, c: int, d: int, seed: int
) -> None:
    assume(h + 1 + c >= 2 * c + 3)
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(h + 1, d, generator=gen, dtype=F64)
    previous = torch.randn(d, generator=gen, dtype=F64)
    tv = TargetView(0, honest[0], honest[1:], torch.full((h,), 0.05, dtype=F64), 0.05 * c, c,
                    0.5, previous)
    attack = FangKrum()
    sent = single(attack, tv)
    lam, up = attack.last_lambdas[0], attack.upper_bound(tv)
    s = torch.sign(honest.mean(0) - previous)
    assert torch.allclose(sent, previous - lam * s)
    halvings = math.log2(up / lam)
    assert halvings == pytest.approx(round(halvings), abs=1e-9)  # lambda = up / 2^k
    if lam < up:  # the previous, twice larger lambda was not selected
        assert not krum_selects_malicious(honest, previous - 2 * lam * s, c)
    if attack.last_selected[0]:
        assert lam >= attack.lambda_threshold
        assert krum_selects_malicious(honest, sent, c)
    else:
        assert lam < attack.lambda_threshold


def test_fang_krum_without_krum_precondition_uses_the_deviation_bound() -> None:
    # c = 2 and 4 honest: n = 6 < 2c + 3; lambda = max||x_i - prev|| / sqrt(d) = 2 / sqrt2
    tv = target(KRUM_MODEL, KRUM_NEIGHBORS, previous=[0.0, 0.0], n_byzantine=2)
    attack = FangKrum()
    sent = single(attack, tv)
    assert attack.last_lambdas == [pytest.approx(math.sqrt(2.0))]
    assert torch.allclose(sent, t([0.0, -math.sqrt(2.0)]))


# ---------------------------------------------------------------- min-max / min-sum
# H_t = {[0,0], [1,0], [5,0]}: mean [2,0]. "unit" without previous: p = -[1,0].
# min-max: max pairwise 25, (2 + gamma - 0)... farthest is [5,0]: (3 + gamma)^2 <= 25 -> 2.
# min-sum: threshold max(26, 17, 41) = 41; 14 + 3 gamma^2 <= 41 -> gamma = 3.
AGR_MODEL = [0.0, 0.0]
AGR_NEIGHBORS = [[1.0, 0.0], [5.0, 0.0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("cls", "perturbation", "previous", "expected"),
    [
        (MinMax, "unit", None, [0.0, 0.0]),
        (MinSum, "unit", None, [-1.0, 0.0]),
        (MinMax, "sign", None, [0.0, 0.0]),
        (MinSum, "sign", None, [-1.0, 0.0]),
        # previous [3,0]: update direction mean - previous = [-1,0] -> p = [1,0];
        # min-max: (2 + gamma)^2 <= 25 -> gamma = 3 -> [5,0]; min-sum: gamma = 3 -> [5,0]
        (MinMax, "unit", [3.0, 0.0], [5.0, 0.0]),
        (MinSum, "sign", [3.0, 0.0], [5.0, 0.0]),
    ],
)
def test_min_max_and_min_sum_hand_examples(
    cls: type[MinMax], perturbation: str, previous: Any, expected: list[float],
    dtype: torch.dtype,
) -> None:
    tv = target(AGR_MODEL, AGR_NEIGHBORS, [0.3, 0.3], previous=previous, dtype=dtype)
    sent = single(cls(perturbation=perturbation), tv)
    assert sent.dtype == dtype
    assert torch.allclose(sent, t(expected, dtype), atol=1e-4)


def closed_form_gamma(kind: str, honest: Tensor, p: Tensor) -> float:
    """The exact largest feasible gamma (the constraints are quadratics in gamma)."""
    mean = honest.mean(0)
    diffs = mean - honest
    a = float(p @ p)
    dist = ((honest[:, None, :] - honest[None, :, :]) ** 2).sum(-1)
    c_i = (diffs**2).sum(1)
    if kind == "min_max":
        bound = float(dist.max())
        b_i = diffs @ p
        roots = (-b_i + torch.sqrt(b_i**2 - a * (c_i - bound))) / a
        return float(roots.min())
    bound = float(dist.sum(1).max())
    return math.sqrt((bound - float(c_i.sum())) / (honest.shape[0] * a))


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["min_max", "min_sum"]),
    perturbation=st.sampled_from(["std", "unit", "sign"]),
    h=st.integers(1, 5),
    d=st.integers(1, 4),
    with_previous=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_min_max_min_sum_gamma_is_feasible_and_maximal(
    kind: str, perturbation: str, h: int, d: int, with_previous: bool, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(h + 1, d, generator=gen, dtype=F64)
    previous = torch.randn(d, generator=gen, dtype=F64) if with_previous else None
    tv = TargetView(0, honest[0], honest[1:], torch.full((h,), 0.1, dtype=F64), 0.1, 1, 0.5,
                    previous)
    attack = get_attack(kind, perturbation=perturbation)
    assert isinstance(attack, MinMax | MinSum)
    sent = single(attack, tv)
    gamma = attack.last_gammas[0]
    p = attack.perturbation_vector(tv)
    assume(float(p.norm()) > 1e-6)
    mean = honest.mean(0)
    assert torch.allclose(sent, mean + gamma * p)
    bound = attack.threshold(honest)
    assert attack.objective(sent, honest) <= bound
    exact = closed_form_gamma(kind, honest, p)
    cap = 2 * attack.gamma_init
    assert gamma == pytest.approx(min(exact, cap), abs=1e-4)
    if exact < cap - 1e-3:  # maximal: a slightly larger gamma violates the constraint
        # The search stops within tol of the exact gamma, so step past it by more.
        larger = max(gamma * (1 + 1e-3), gamma + 2 * attack.tol)
        assert attack.objective(mean + larger * p, honest) > bound


# ------------------------------------------------------------------ BALANCE-adaptive
def test_balance_adaptive_hand_example() -> None:
    # x_t = [3,4] (norm 5); mean(H_t) = [3,3]; previous [3,5] -> update [0,-2] -> u = [0,1]
    # radius = 0.3 * exp(0) * 5 = 1.5; margin 0.05 -> r = 1.425
    tv = target([3.0, 4.0], [[3.0, 2.0]], previous=[3.0, 5.0])
    attack = BalanceAdaptive(margin=0.05, gamma=0.3, kappa=1.0)
    sent = single(attack, tv, round=0, total_rounds=10)
    assert torch.allclose(sent, t([3.0, 5.425]))


def test_balance_adaptive_reads_the_rules_acceptance_radius() -> None:
    # BALANCE(gamma=0.2, kappa=2, T=10) at round 5: 0.2 * e^-1 * 5 = e^-1 (attack knobs unused)
    rule = Balance(total_rounds=10, gamma=0.2, kappa=2.0)
    tv = target([3.0, 4.0], [[3.0, 2.0]], previous=[3.0, 5.0], rule=rule)
    attack = BalanceAdaptive(margin=0.0, gamma=0.9, kappa=0.0)
    sent = single(attack, tv, round=5)
    assert torch.allclose(sent, t([3.0, 4.0 + math.exp(-1.0)]))


def test_balance_adaptive_without_total_rounds_raises() -> None:
    tv = target([3.0, 4.0], [[3.0, 2.0]], previous=[3.0, 5.0])
    with pytest.raises(ValueError, match="total_rounds"):
        BalanceAdaptive()(AttackView(tv.model, [tv]))
    # the attack's own total_rounds is the fallback
    assert BalanceAdaptive(total_rounds=4)(AttackView(tv.model, [tv])).shape == (1, 2)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(0, 4),
    d=st.integers(1, 6),
    gamma=st.floats(0.01, 2.0),
    kappa=st.floats(0.0, 3.0),
    total=st.integers(1, 100),
    data=st.data(),
    use_rule=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_balance_adaptive_vector_passes_balances_acceptance_check(
    h: int, d: int, gamma: float, kappa: float, total: int, data: st.DataObject,
    use_rule: bool, seed: int,
) -> None:
    round_ = data.draw(st.integers(0, total))
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(h + 1, d, generator=gen, dtype=F64)
    previous = torch.randn(d, generator=gen, dtype=F64)
    rule = Balance(total_rounds=total, gamma=gamma, kappa=kappa) if use_rule else None
    tv = TargetView(0, honest[0], honest[1:], torch.full((h,), 0.1, dtype=F64), 0.1, 1, 0.5,
                    previous, rule)
    attack = BalanceAdaptive(margin=0.05, gamma=gamma, kappa=kappa)
    sent = single(attack, tv, round=round_, total_rounds=total)
    radius = gamma * math.exp(-kappa * round_ / total) * float(honest[0].norm())
    distance = float((honest[0] - sent).norm())
    assert distance <= radius
    assert distance == pytest.approx(0.95 * radius, rel=1e-9, abs=1e-12)
    if use_rule and radius > 0:
        assert rule is not None
        rule(honest[0], sent.unsqueeze(0), round=round_)
        assert rule.stats["accepted"] == 1.0


# -------------------------------------------------------------------- data poisoning
def test_label_flip_maps_y_to_c_minus_1_minus_y() -> None:
    images = torch.arange(12.0).reshape(3, 2, 2)
    labels = torch.tensor([0, 3, 9])
    new_images, new_labels = LabelFlip(num_classes=10).poison(images, labels)
    assert torch.equal(new_labels, torch.tensor([9, 6, 0]))
    assert torch.equal(new_images, images)
    with pytest.raises(ValueError, match=r"\[0, 10\).*\[0, 10\]"):
        LabelFlip(num_classes=10).poison(images, torch.tensor([0, 3, 10]))


def test_backdoor_poisons_exactly_the_fraction_with_a_corner_patch() -> None:
    images = torch.zeros(4, 2, 5, 5)
    images[1, 0, 0, 0] = 0.7  # the batch max is used as trigger value
    labels = torch.tensor([1, 2, 3, 4])
    attack = Backdoor(target_label=0, size=3, fraction=0.5, seed=0)
    new_images, new_labels = attack.poison(images, labels)
    changed = [i for i in range(4) if not torch.equal(new_images[i], images[i])]
    assert len(changed) == 2
    assert torch.equal(new_labels == 0, torch.tensor([i in changed for i in range(4)]))
    expected = images[changed[0]].clone()
    expected[:, 2:5, 2:5] = 0.7  # bottom-right 3x3 in every channel
    assert torch.equal(new_images[changed[0]], expected)
    assert float(images.max()) == pytest.approx(0.7)  # inputs untouched
    assert torch.equal(labels, torch.tensor([1, 2, 3, 4]))


@pytest.mark.parametrize(
    ("corner", "rows", "cols"),
    [("top_left", (0, 2), (0, 2)), ("top_right", (0, 2), (2, 4)),
     ("bottom_left", (2, 4), (0, 2)), ("bottom_right", (2, 4), (2, 4))],
)
def test_backdoor_trigger_location_on_hw_images(
    corner: str, rows: tuple[int, int], cols: tuple[int, int]
) -> None:
    attack = Backdoor(size=2, value=1.0, corner=corner, fraction=1.0)
    images = torch.zeros(2, 4, 4)
    stamped = attack.apply_trigger(images)
    expected = torch.zeros(2, 4, 4)
    expected[:, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    assert torch.equal(stamped, expected)
    poisoned, labels = attack.poison(images, torch.tensor([3, 4]))
    assert torch.equal(poisoned, expected) and torch.equal(labels, torch.tensor([0, 0]))


def test_backdoor_fraction_zero_changes_nothing_and_oversized_trigger_raises() -> None:
    images, labels = torch.rand(3, 1, 4, 4), torch.tensor([1, 2, 3])
    out_images, out_labels = Backdoor(fraction=0.0).poison(images, labels)
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)
    with pytest.raises(ValueError, match=r"size 5.*4x4"):
        Backdoor(size=5).poison(images, labels)
    with pytest.raises(ValueError, match=r"labels.*\(3,\).*\(2,\)"):
        Backdoor().poison(images, torch.tensor([1, 2]))


def test_triggered_test_set_keeps_non_target_samples_triggered_and_relabelled() -> None:
    attack = Backdoor(target_label=2, size=1, value=9.0, corner="top_left")
    images = torch.zeros(4, 1, 3, 3)
    images[:, 0, 2, 2] = torch.arange(4.0)  # tag each image
    labels = torch.tensor([2, 0, 2, 5])
    out_images, out_labels = triggered_test_set(images, labels, attack)
    assert torch.equal(out_labels, torch.tensor([2, 2]))
    assert torch.equal(out_images[:, 0, 2, 2], torch.tensor([1.0, 3.0]))
    assert bool((out_images[:, 0, 0, 0] == 9.0).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_data_poisoning_attack_sends_its_own_model_to_every_target(dtype: torch.dtype) -> None:
    view = generic_view(dtype)
    out = LabelFlip()(view)
    assert out.dtype == dtype and torch.equal(out, view.own.expand(3, -1))
