"""Generic communication graphs with Metropolis–Hastings mixing.

Every constructor takes ``byzantine``: either a count (the Byzantine nodes are then chosen
uniformly at random with the seeded RNG) or an explicit iterable of node ids. Random graphs
are resampled with the same seeded RNG until they are connected, so a given ``seed``
always yields the same topology.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np

from flwr_tempered.topology.base import (
    ByzantineSpec,
    Topology,
    byzantine_param,
    check_int,
    metropolis_weights,
    resolve_byzantine,
)

#: How many times a random generator is re-drawn before giving up on connectivity.
MAX_CONNECT_ATTEMPTS = 1000

Byzantine = ByzantineSpec


def _build(
    graph: nx.Graph,
    name: str,
    params: dict[str, object],
    byzantine: Byzantine,
    rng: np.random.Generator,
) -> Topology:
    graph = nx.convert_node_labels_to_integers(graph, ordering="sorted")
    byz = resolve_byzantine(graph.number_of_nodes(), byzantine, rng)
    params = {**params, "byzantine": byzantine_param(byzantine)}
    return Topology(graph, byz, metropolis_weights(graph), name=name, params=params)


def check_probability(p: float) -> float:
    """Validate an edge probability ``p`` in ``(0, 1]``."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
        raise ValueError(f"p must lie in (0, 1], got {p!r}")
    return float(p)


def check_regular(n: int, degree: int) -> tuple[int, int]:
    """Validate the size and degree of a connected random regular graph."""
    n = check_int("n", n, 2)
    degree = check_int("degree", degree, 1)
    if degree >= n:
        raise ValueError(f"degree must be < n = {n}, got {degree}")
    if (n * degree) % 2:
        raise ValueError(f"n * degree must be even, got n={n}, degree={degree}")
    if degree == 1 and n > 2:
        raise ValueError(f"a 1-regular graph on n={n} > 2 nodes is never connected")
    return n, degree


def connected_sample(
    draw: Callable[[int], nx.Graph], rng: np.random.Generator, what: str
) -> nx.Graph:
    """Draw graphs with fresh seeds from ``rng`` until one is connected."""
    for _ in range(MAX_CONNECT_ATTEMPTS):
        graph = draw(int(rng.integers(2**31 - 1)))
        if nx.is_connected(graph):
            return graph
    raise ValueError(
        f"{what}: no connected graph in {MAX_CONNECT_ATTEMPTS} attempts; "
        "increase the edge probability or degree"
    )


def ring(n: int, byzantine: Byzantine = 0, seed: int = 0) -> Topology:
    """Cycle on ``n >= 3`` nodes (each node has two neighbours)."""
    n = check_int("n", n, 3)
    rng = np.random.default_rng(seed)
    return _build(nx.cycle_graph(n), "ring", {"n": n, "seed": seed}, byzantine, rng)


def chain(n: int, byzantine: Byzantine = 0, seed: int = 0) -> Topology:
    """Path ``0 - 1 - ... - n-1`` on ``n >= 2`` nodes."""
    n = check_int("n", n, 2)
    rng = np.random.default_rng(seed)
    return _build(nx.path_graph(n), "chain", {"n": n, "seed": seed}, byzantine, rng)


def complete(n: int, byzantine: Byzantine = 0, seed: int = 0) -> Topology:
    """Complete graph on ``n >= 2`` nodes (Metropolis then is uniform averaging)."""
    n = check_int("n", n, 2)
    rng = np.random.default_rng(seed)
    return _build(nx.complete_graph(n), "complete", {"n": n, "seed": seed}, byzantine, rng)


def star(n: int, byzantine: Byzantine = 0, seed: int = 0) -> Topology:
    """Star on ``n >= 2`` nodes with hub ``0`` and leaves ``1..n-1``."""
    n = check_int("n", n, 2)
    rng = np.random.default_rng(seed)
    return _build(nx.star_graph(n - 1), "star", {"n": n, "seed": seed}, byzantine, rng)


def torus(rows: int, cols: int, byzantine: Byzantine = 0, seed: int = 0) -> Topology:
    """Periodic ``rows x cols`` grid (both ``>= 3``, so every node has four neighbours).

    Node ``r * cols + c`` sits at row ``r``, column ``c``.
    """
    rows = check_int("rows", rows, 3)
    cols = check_int("cols", cols, 3)
    grid = nx.grid_2d_graph(rows, cols, periodic=True)
    graph = nx.relabel_nodes(grid, {(r, c): r * cols + c for r, c in grid.nodes()})
    rng = np.random.default_rng(seed)
    params: dict[str, object] = {"rows": rows, "cols": cols, "seed": seed}
    return _build(graph, "torus", params, byzantine, rng)


def erdos_renyi(n: int, p: float, seed: int = 0, byzantine: Byzantine = 0) -> Topology:
    """Connected Erdős–Rényi ``G(n, p)`` graph, ``n >= 2``, ``p`` in ``(0, 1]``.

    Disconnected draws are rejected and redrawn with the seeded RNG (at most
    :data:`MAX_CONNECT_ATTEMPTS` times, then ``ValueError``), i.e. the result is ``G(n, p)``
    conditioned on connectivity.
    """
    n = check_int("n", n, 2)
    check_probability(p)
    rng = np.random.default_rng(seed)
    graph = connected_sample(
        lambda s: nx.gnp_random_graph(n, p, seed=s), rng, f"erdos_renyi(n={n}, p={p})"
    )
    return _build(graph, "erdos_renyi", {"n": n, "p": p, "seed": seed}, byzantine, rng)


def random_regular(n: int, degree: int, seed: int = 0, byzantine: Byzantine = 0) -> Topology:
    """Connected random ``degree``-regular graph on ``n`` nodes (``n * degree`` even).

    Disconnected draws are redrawn as in :func:`erdos_renyi`.
    """
    n, degree = check_regular(n, degree)
    rng = np.random.default_rng(seed)
    graph = connected_sample(
        lambda s: nx.random_regular_graph(degree, n, seed=s),
        rng,
        f"random_regular(n={n}, degree={degree})",
    )
    params: dict[str, object] = {"n": n, "degree": degree, "seed": seed}
    return _build(graph, "random_regular", params, byzantine, rng)


def small_world(n: int, k: int, p: float, seed: int = 0, byzantine: Byzantine = 0) -> Topology:
    """Connected Watts–Strogatz small-world graph (``networkx.connected_watts_strogatz_graph``).

    A ring lattice where each node links to its ``k`` nearest neighbours (``k`` even,
    ``2 <= k < n``), each edge rewired with probability ``p`` in ``[0, 1]``.
    """
    n = check_int("n", n, 3)
    k = check_int("k", k, 2)
    if k >= n or k % 2:
        raise ValueError(f"k must be even and < n = {n}, got {k}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    rng = np.random.default_rng(seed)
    try:
        graph = nx.connected_watts_strogatz_graph(
            n, k, p, tries=MAX_CONNECT_ATTEMPTS, seed=int(rng.integers(2**31 - 1))
        )
    except nx.NetworkXException as exc:  # pragma: no cover - needs a pathological p
        raise ValueError(f"small_world(n={n}, k={k}, p={p}): {exc}") from exc
    params: dict[str, object] = {"n": n, "k": k, "p": p, "seed": seed}
    return _build(graph, "small_world", params, byzantine, rng)
