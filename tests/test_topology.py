"""Spec tests for ``flwr_tempered.topology`` (reproduction spec §2: topologies and mixing)."""

from __future__ import annotations

import json
from typing import Any

import matplotlib
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dynamic_topology import DYNAMIC

from flwr_tempered import topology as topo
from flwr_tempered.topology import (
    Topology,
    available_topologies,
    chain,
    complete,
    dumbbell,
    erdos_renyi,
    get_topology,
    malicious_ring,
    metropolis_weights,
    random_regular,
    ring,
    small_world,
    star,
    torus,
    two_cliques_with_byzantine,
)
from flwr_tempered.topology import standard as standard_module

matplotlib.use("Agg")

#: One valid parameter set per registered topology (a new name must be added here).
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "ring": [{"n": 8}, {"n": 10, "byzantine": 3, "seed": 1}],
    "chain": [{"n": 2}, {"n": 7, "byzantine": [0, 3]}],
    "complete": [{"n": 5}, {"n": 9, "byzantine": 2}],
    "star": [{"n": 6}, {"n": 6, "byzantine": [0]}],
    "torus": [{"rows": 3, "cols": 4}, {"rows": 4, "cols": 4, "byzantine": 3, "seed": 2}],
    "erdos_renyi": [{"n": 12, "p": 0.3, "seed": 4}, {"n": 15, "p": 0.5, "byzantine": 3}],
    "random_regular": [{"n": 10, "degree": 3, "seed": 1}, {"n": 9, "degree": 4, "byzantine": 2}],
    "small_world": [{"n": 12, "k": 4, "p": 0.3, "seed": 3}, {"n": 10, "k": 2, "p": 0.0}],
    "dumbbell": [{"q": 10}, {"q": 10, "r": 1}, {"q": 6, "qb": 2, "r": 3, "seed": 5}],
    "two_cliques_with_byzantine": [
        {"m": 5, "b": 1, "delta": 1.0},
        {"m": 3, "b": 4, "delta": 0.5},
        {"m": 4, "b": 0, "delta": 0.0},
    ],
    "malicious_ring": [{"g": 5, "honest_majority": False}, {"g": 5, "honest_majority": True}],
}
#: Constructions whose mixing matrix is by definition Metropolis–Hastings.
METROPOLIS = {
    "ring",
    "chain",
    "complete",
    "star",
    "torus",
    "erdos_renyi",
    "random_regular",
    "small_world",
}

ALL_CASES = [(name, params) for name, cases in EXAMPLES.items() for params in cases]


def _case_id(case: tuple[str, dict[str, Any]]) -> str:
    return f"{case[0]}-{'-'.join(f'{k}={v}' for k, v in case[1].items())}"


def _same(a: Topology, b: Topology) -> bool:
    return (
        sorted(a.graph.edges()) == sorted(b.graph.edges())
        and a.byzantine == b.byzantine
        and np.array_equal(a.mixing, b.mixing)
    )


# --------------------------------------------------------------------------- dumbbell
def test_dumbbell_10_uniform_weight_one_eleventh_and_gap() -> None:
    t = dumbbell(10, 0, 0)
    assert t.n == 20 and t.f == 0
    assert t.graph.has_edge(0, 19)
    assert t.graph.number_of_edges() == 2 * 45 + 1
    for i, j in t.graph.edges():
        assert t.mixing[i, j] == pytest.approx(1 / 11)
        assert t.mixing[j, i] == pytest.approx(1 / 11)
    assert t.spectral_gap == pytest.approx(0.0154, rel=0.01)
    assert t.groups["clique 1"] == list(range(10))
    assert t.groups["clique 2"] == list(range(10, 20))
    assert t.groups["all"] == list(range(20))


def test_dumbbell_extra_edge_weight_one_twelfth() -> None:
    t = dumbbell(10, 0, 1)
    assert t.graph.number_of_edges() == 2 * 45 + 2
    inter = [(i, j) for i, j in t.graph.edges() if (i < 10) != (j < 10)]
    assert len(inter) == 2
    for i, j in t.graph.edges():
        assert t.mixing[i, j] == pytest.approx(1 / 12)


def test_dumbbell_byzantine_hang_off_each_bridge_end() -> None:
    q, qb = 6, 3
    t = dumbbell(q, qb, 2, seed=1)
    assert t.byzantine == frozenset(range(2 * q, 2 * q + 2 * qb))
    assert t.byzantine_neighbors(0) == list(range(2 * q, 2 * q + qb))
    assert t.byzantine_neighbors(2 * q - 1) == list(range(2 * q + qb, 2 * q + 2 * qb))
    assert all(t.neighbors(b) in ([0], [2 * q - 1]) for b in t.byzantine)
    assert t.delta_max == pytest.approx(qb / (q + qb + 1 + 2))
    assert t.honest == list(range(2 * q))


def test_dumbbell_extra_edges_are_seeded() -> None:
    assert _same(dumbbell(8, 1, 5, seed=3), dumbbell(8, 1, 5, seed=3))
    edge_sets = {tuple(sorted(dumbbell(8, 1, 5, seed=s).graph.edges())) for s in range(6)}
    assert len(edge_sets) > 1


# --------------------------------------------------------------- two cliques + centre
@pytest.mark.parametrize("delta", [0.0, 0.25, 0.5, 1.0, 2.0, 8 / 3])
def test_two_cliques_delta_max_is_delta_over_four(delta: float) -> None:
    t = two_cliques_with_byzantine(5, 1, delta)
    assert t.delta_max == pytest.approx(delta / 4)
    assert t.n == 2 * 5 + 1 + 1
    assert t.byzantine == frozenset({11})


def test_two_cliques_central_row_and_metropolis_elsewhere() -> None:
    m, b, delta = 5, 2, 0.8
    t = two_cliques_with_byzantine(m, b, delta)
    c = 2 * m
    assert t.neighbors(c) == [0, 2 * m - 1, *range(2 * m + 1, 2 * m + 1 + b)]
    for node in t.byzantine_neighbors(c):
        assert t.mixing[c, node] == pytest.approx(delta / (b + 3))
    assert t.mixing[c, 0] == pytest.approx(1 / (m + 1))
    assert t.mixing[c, 2 * m - 1] == pytest.approx(1 / (m + 1))
    assert t.mixing[c, c] == pytest.approx(1 - delta * b / (b + 3) - 2 / (m + 1))
    assert t.delta_max == pytest.approx(delta * b / (b + 3))
    metropolis = metropolis_weights(t.graph)
    others = [i for i in range(t.n) if i != c]
    np.testing.assert_allclose(t.mixing[others], metropolis[others])
    np.testing.assert_allclose(t.honest_mixing, t.honest_mixing.T)
    assert t.groups["clique 1"] == list(range(m))
    assert t.groups["clique 2"] == list(range(m, 2 * m))
    assert c in t.groups["all"]


def test_two_cliques_spectral_gap_does_not_depend_on_delta() -> None:
    gaps = [two_cliques_with_byzantine(5, 1, d).spectral_gap for d in (0.0, 1.0, 2.0)]
    assert gaps[0] > 0
    assert gaps == pytest.approx([gaps[0]] * 3)


@pytest.mark.parametrize("delta", [-0.1, 2.7, float("nan")])
def test_two_cliques_rejects_delta_outside_range(delta: float) -> None:
    # m=5, b=1: the central self weight 1 - delta/4 - 1/3 is >= 0 iff delta <= 8/3.
    with pytest.raises(ValueError, match="delta"):
        two_cliques_with_byzantine(5, 1, delta)


# ----------------------------------------------------------------------- malicious ring
def test_malicious_ring_without_honest_majority_weights_at_node_0() -> None:
    t = malicious_ring(5, honest_majority=False)
    assert (t.n, t.f) == (16, 11)
    assert len(t.byzantine_neighbors(0)) == 3
    assert t.honest_neighbors(0) == [1, 4]
    # Metropolis gives 1/6 on each of node 0's five edges and w_min = 1/6; lazy normalisation
    # turns that into 1/11 per edge: 3/11 in total on Byzantine, 2/11 on honest neighbours.
    assert t.byzantine_weight(0) == pytest.approx(0.2727, abs=1e-4)
    assert t.mixing[0, t.honest_neighbors(0)].sum() == pytest.approx(0.1818, abs=1e-4)
    for j in t.neighbors(0):
        assert t.mixing[0, j] == pytest.approx(1 / 11)
    assert t.mixing[0, 0] == pytest.approx(6 / 11)
    # Node 0 has no local honest majority: 3 Byzantine neighbours vs itself + 2 honest.
    assert len(t.byzantine_neighbors(0)) >= 1 + len(t.honest_neighbors(0))


def test_malicious_ring_with_honest_majority() -> None:
    t = malicious_ring(5, honest_majority=True)
    assert (t.n, t.f) == (15, 10)
    for i in t.honest:
        assert len(t.byzantine_neighbors(i)) == 2
        assert 1 + len(t.honest_neighbors(i)) > len(t.byzantine_neighbors(i))
        honest_mass = t.mixing[i, i] + t.mixing[i, t.honest_neighbors(i)].sum()
        assert honest_mass > t.byzantine_weight(i)
    np.testing.assert_allclose(t.mixing, t.mixing.T)
    # The lazy step leaves the smallest honest self weight at exactly one half or more.
    assert min(t.mixing[i, i] for i in t.honest) >= 0.5 - 1e-12


# ------------------------------------------------------------- every topology, generic
def test_examples_cover_the_registry() -> None:
    # the time-varying ones are covered in tests/test_dynamic_topology.py
    assert sorted([*EXAMPLES, *(name for name, _ in DYNAMIC)]) == available_topologies()


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_mixing_is_row_stochastic_nonnegative_and_on_edges(
    case: tuple[str, dict[str, Any]],
) -> None:
    name, params = case
    t = get_topology(name, **params)
    assert t.mixing.dtype == np.float64 and t.mixing.shape == (t.n, t.n)
    np.testing.assert_allclose(t.mixing.sum(axis=1), 1.0, atol=1e-12)
    assert (t.mixing >= 0).all()
    adjacency = nx.to_numpy_array(t.graph, nodelist=range(t.n)) > 0
    assert not t.mixing[~adjacency & ~np.eye(t.n, dtype=bool)].any()
    np.testing.assert_allclose(t.honest_mixing.sum(axis=1), 1.0, atol=1e-12)
    assert 0.0 <= t.spectral_gap <= 1.0
    assert 0.0 <= t.delta_max < 1.0
    assert t.honest == sorted(set(range(t.n)) - t.byzantine)
    assert t.groups["all"] == t.honest
    assert sorted(t.graph.nodes()) == list(range(t.n))
    assert t.name == name
    json.dumps(t.params)  # run configs must be able to store them


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c[0] in METROPOLIS], ids=_case_id)
def test_generic_graphs_use_symmetric_metropolis(case: tuple[str, dict[str, Any]]) -> None:
    t = get_topology(*case[:1], **case[1])
    np.testing.assert_allclose(t.mixing, t.mixing.T)
    np.testing.assert_allclose(t.mixing, metropolis_weights(t.graph))
    assert t.is_metropolis
    assert nx.is_connected(t.graph)


@pytest.mark.parametrize("case", ALL_CASES, ids=_case_id)
def test_params_rebuild_the_same_topology(case: tuple[str, dict[str, Any]]) -> None:
    t = get_topology(case[0], **case[1])
    assert _same(t, get_topology(t.name, **t.params))


def test_metropolis_weights_by_hand_on_a_path() -> None:
    W = metropolis_weights(nx.path_graph(3))
    expected = np.array([[2, 1, 0], [1, 1, 1], [0, 1, 2]]) / 3
    np.testing.assert_allclose(W, expected)


def test_metropolis_weights_degree_rule() -> None:
    W = metropolis_weights(nx.star_graph(4))  # hub degree 4, leaves degree 1
    assert W[0, 1] == pytest.approx(1 / 5)
    assert W[1, 1] == pytest.approx(4 / 5)
    assert W[0, 0] == pytest.approx(1 / 5)


def test_complete_graph_mixes_in_one_step() -> None:
    t = complete(6)
    np.testing.assert_allclose(t.mixing, np.full((6, 6), 1 / 6))
    assert t.spectral_gap == pytest.approx(1.0)


def test_honest_block_folds_byzantine_weight_and_split_graph_has_zero_gap() -> None:
    t = chain(5, byzantine=[2])
    assert t.byzantine_weight(1) == pytest.approx(1 / 3)
    assert t.honest_mixing[1, 1] == pytest.approx(t.mixing[1, 1] + 1 / 3)
    assert t.spectral_gap == pytest.approx(0.0, abs=1e-12)
    assert ring(12).spectral_gap < ring(6).spectral_gap


def test_torus_and_star_shapes() -> None:
    t = torus(3, 5)
    assert t.n == 15 and all(d == 4 for _, d in t.graph.degree())
    assert t.neighbors(0) == [1, 4, 5, 10]
    s = star(5)
    assert s.neighbors(0) == [1, 2, 3, 4] and s.neighbors(3) == [0]


def test_neighbour_accessors() -> None:
    t = ring(6, byzantine=[1, 5])
    assert t.neighbors(0) == [1, 5]
    assert t.byzantine_neighbors(0) == [1, 5]
    assert t.honest_neighbors(0) == []
    assert t.honest_neighbors(2) == [3]
    assert t.delta_max == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="node 6"):
        t.neighbors(6)


def test_topology_is_read_only() -> None:
    t = ring(5)
    with pytest.raises(ValueError):
        t.mixing[0, 0] = 0.5
    with pytest.raises(AttributeError):
        t.name = "other"  # type: ignore[misc]


# ------------------------------------------------------------------ random + Byzantine
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=25),
    p=st.floats(min_value=0.25, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_erdos_renyi_is_always_connected(n: int, p: float, seed: int) -> None:
    t = erdos_renyi(n, p, seed=seed)
    assert t.n == n and nx.is_connected(t.graph)
    assert t.spectral_gap > 0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(min_value=4, max_value=20), seed=st.integers(min_value=0, max_value=10**6))
def test_random_regular_and_small_world_are_connected(n: int, seed: int) -> None:
    degree = 3 if n % 2 == 0 else 2
    rr = random_regular(n, degree, seed=seed)
    assert nx.is_connected(rr.graph) and all(d == degree for _, d in rr.graph.degree())
    sw = small_world(n, 2, 0.5, seed=seed)
    assert nx.is_connected(sw.graph) and sw.graph.number_of_edges() == n


def test_erdos_renyi_gives_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standard_module, "MAX_CONNECT_ATTEMPTS", 5)
    with pytest.raises(ValueError, match="no connected graph"):
        erdos_renyi(40, 0.01, seed=0)


def test_seeded_determinism() -> None:
    assert _same(
        erdos_renyi(20, 0.3, seed=7, byzantine=4), erdos_renyi(20, 0.3, seed=7, byzantine=4)
    )
    assert _same(random_regular(12, 3, seed=2), random_regular(12, 3, seed=2))
    assert _same(small_world(12, 4, 0.4, seed=2), small_world(12, 4, 0.4, seed=2))
    assert _same(ring(10, byzantine=3, seed=5), ring(10, byzantine=3, seed=5))
    graphs = {tuple(sorted(erdos_renyi(20, 0.3, seed=s).graph.edges())) for s in range(5)}
    assert len(graphs) == 5
    placements = {ring(20, byzantine=3, seed=s).byzantine for s in range(5)}
    assert len(placements) > 1


def test_byzantine_count_and_explicit_ids() -> None:
    t = torus(4, 4, byzantine=5, seed=3)
    assert t.f == 5 and len(t.honest) == 11
    t = complete(6, byzantine=(np.int64(4), 1))
    assert t.byzantine == frozenset({1, 4}) and t.params["byzantine"] == [1, 4]


# ------------------------------------------------------------------- registry + errors
def test_registry_lists_every_constructor() -> None:
    names = available_topologies()
    assert names == sorted(names)
    for name in (
        "ring",
        "chain",
        "complete",
        "star",
        "torus",
        "erdos_renyi",
        "random_regular",
        "small_world",
        "dumbbell",
        "two_cliques_with_byzantine",
        "malicious_ring",
    ):
        assert name in names
        assert name in topo.__all__


def test_registry_misspelt_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="dumbell") as info:
        get_topology("dumbell", q=10)
    assert "dumbbell" in str(info.value) and "erdos_renyi" in str(info.value)


def test_registry_unknown_parameter_lists_accepted_ones() -> None:
    with pytest.raises(ValueError, match="nodes") as info:
        get_topology("ring", nodes=5)
    assert "n, byzantine, seed" in str(info.value)


def test_registry_missing_parameter() -> None:
    with pytest.raises(ValueError, match=r"needs parameter\(s\) p; its parameters: n, p"):
        get_topology("erdos_renyi", n=10)


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("ring", {"n": 1}, "n must be >= 3, got 1"),
        ("chain", {"n": 1}, "got 1"),
        ("complete", {"n": 2.5}, "2.5"),
        ("erdos_renyi", {"n": 10, "p": 0.0}, "p must lie in \\(0, 1\\], got 0.0"),
        ("erdos_renyi", {"n": 10, "p": 1.5}, "1.5"),
        ("random_regular", {"n": 5, "degree": 3}, "n=5, degree=3"),
        ("random_regular", {"n": 5, "degree": 5}, "degree must be < n"),
        ("small_world", {"n": 10, "k": 3, "p": 0.1}, "got 3"),
        ("small_world", {"n": 10, "k": 4, "p": -0.1}, "-0.1"),
        ("torus", {"rows": 2, "cols": 4}, "rows must be >= 3, got 2"),
        ("dumbbell", {"q": 1}, "q must be >= 2, got 1"),
        ("dumbbell", {"q": 10, "qb": -1}, "got -1"),
        ("dumbbell", {"q": 3, "r": 9}, "got 9"),
        ("two_cliques_with_byzantine", {"m": 5, "b": -2, "delta": 0.5}, "got -2"),
        ("malicious_ring", {"g": 2}, "g must be >= 3, got 2"),
        ("ring", {"n": 5, "byzantine": -1}, "got -1"),
        ("ring", {"n": 5, "byzantine": 5}, "count 5"),
        ("ring", {"n": 5, "byzantine": [0, 7]}, "id 7"),
        ("ring", {"n": 3, "byzantine": [0, 1, 2]}, "no honest node"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_value(
    name: str, params: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        get_topology(name, **params)


# ----------------------------------------------------------------------------- plotting
def test_plot_writes_png(tmp_path: Any) -> None:
    from matplotlib.figure import Figure

    path = tmp_path / "dumbbell.png"
    fig = dumbbell(5, 1).plot(path=str(path))
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    colours = {
        tuple(row)
        for coll in fig.axes[0].collections
        for row in np.atleast_2d(np.asarray(coll.get_facecolor())).tolist()
    }
    assert len(colours) >= 2  # honest and Byzantine drawn differently


def test_plot_on_given_axes() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert malicious_ring(4).plot(ax=ax) is fig
