"""The hand-built topologies of the seed papers' experiments and lower bounds.

* :func:`dumbbell` and :func:`two_cliques_with_byzantine` follow the graphs of He,
  Karimireddy & Jaggi, "Byzantine-Robust Decentralized Learning via ClippedGossip" (2022):
  two well-mixed cliques joined by a bottleneck, so the spectral gap is small and the
  Byzantine nodes sit exactly where information has to flow.
* :func:`malicious_ring` is a sparse ring in which every honest node has Byzantine
  neighbours, optionally with one honest node that loses its local honest majority — the
  regime studied by breakdown-point analyses of robust gossip.

The exact weights are those of the project's reproduction spec (§2); the docstrings state
them so a test can check them.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from flwr_tempered.topology.base import (
    ROW_SUM_TOLERANCE,
    Topology,
    check_int,
    lazy_normalize,
    metropolis_weights,
    uniform_weights,
)


def _two_cliques(size: int) -> nx.Graph:
    """Disjoint union of two ``size``-cliques on ``0..size-1`` and ``size..2*size-1``."""
    return nx.disjoint_union(nx.complete_graph(size), nx.complete_graph(size))


def dumbbell(q: int, qb: int = 0, r: int = 0, seed: int = 0) -> Topology:
    """Two ``q``-cliques joined by one bridge, Byzantine nodes at both bridge ends.

    * clique 1 is ``0..q-1``, clique 2 is ``q..2q-1``; the bridge is the edge ``(0, 2q-1)``;
    * ``qb`` Byzantine nodes hang off EACH bridge end: ``2q..2q+qb-1`` off node ``0`` and
      ``2q+qb..2q+2qb-1`` off node ``2q-1`` (``2 * qb`` Byzantine nodes in total);
    * ``r`` extra inter-clique edges, drawn uniformly without replacement (seeded) among the
      ``q * q - 1`` clique-1/clique-2 pairs other than the bridge.

    Every edge gets the same weight ``w = 1 / (q + qb + 1 + r)`` and each diagonal is
    ``1 - row sum`` (no node has more than ``q + qb + r`` neighbours, so the diagonal stays
    positive). ``dumbbell(10)`` has ``w = 1/11`` and a spectral gap of about 0.0154.
    """
    q = check_int("q", q, 2)
    qb = check_int("qb", qb, 0)
    r = check_int("r", r, 0)
    if r > q * q - 1:
        raise ValueError(f"r must be <= q*q - 1 = {q * q - 1} extra inter-clique edges, got {r}")
    graph = _two_cliques(q)
    left, right = 0, 2 * q - 1
    graph.add_edge(left, right)
    byzantine = list(range(2 * q, 2 * q + 2 * qb))
    for k, node in enumerate(byzantine):
        graph.add_edge(node, left if k < qb else right)
    candidates = [(i, j) for i in range(q) for j in range(q, 2 * q) if (i, j) != (left, right)]
    rng = np.random.default_rng(seed)
    for idx in sorted(rng.choice(len(candidates), size=r, replace=False).tolist()):
        graph.add_edge(*candidates[idx])
    weight = 1.0 / (q + qb + 1 + r)
    return Topology(
        graph,
        frozenset(byzantine),
        uniform_weights(graph, weight),
        name="dumbbell",
        params={"q": q, "qb": qb, "r": r, "seed": seed},
        groups={"clique 1": list(range(q)), "clique 2": list(range(q, 2 * q))},
    )


def two_cliques_with_byzantine(m: int, b: int, delta: float) -> Topology:
    """Two ``m``-cliques linked through a central node that has ``b`` Byzantine leaves.

    * clique 1 is ``0..m-1``, clique 2 is ``m..2m-1``; the central node ``c = 2m`` is linked
      to nodes ``0`` and ``2m-1``; the Byzantine leaves ``2m+1..2m+b`` hang off ``c``;
      ``n = 2m + 1 + b``.
    * Metropolis–Hastings weights everywhere except row ``c``, where each Byzantine edge
      gets ``delta / (b + 3)`` (``delta`` times its Metropolis weight), each of the two
      honest edges keeps its Metropolis weight ``w_h = 1/(1 + max(m, b + 2))`` — which is
      ``1/(m+1)`` whenever ``m >= b + 2`` — and ``c`` keeps the rest,
      ``1 - delta * b/(b+3) - 2 * w_h``, on itself.

    Keeping the honest edges of ``c`` Metropolis keeps the honest block symmetric (rows of
    nodes ``0`` and ``2m-1`` are unchanged Metropolis rows), so ``delta`` moves only the
    weight on Byzantine edges: ``delta_max = delta * b / (b + 3)``. ``delta`` must lie in
    ``[0, (1 - 2 w_h)(b + 3)/b]`` so that the central self weight stays non-negative.
    """
    m = check_int("m", m, 2)
    b = check_int("b", b, 0)
    delta = float(delta)
    if not np.isfinite(delta) or delta < 0.0:
        raise ValueError(f"delta must be a finite number >= 0, got {delta}")
    graph = _two_cliques(m)
    center = 2 * m
    graph.add_edge(0, center)
    graph.add_edge(2 * m - 1, center)
    byzantine = list(range(2 * m + 1, 2 * m + 1 + b))
    graph.add_edges_from((center, node) for node in byzantine)
    W = metropolis_weights(graph)
    honest_edge = W[center, 0]  # = 1 / (1 + max(m, b + 2))
    if b:
        delta_limit = (1.0 - 2.0 * honest_edge) * (b + 3) / b
        if delta > delta_limit + ROW_SUM_TOLERANCE:
            raise ValueError(
                f"delta must be <= {delta_limit:.6g} for m={m}, b={b} "
                f"(central self weight would be negative), got {delta}"
            )
        W[center, byzantine] = delta / (b + 3)
    W[center, center] = max(0.0, 1.0 - delta * b / (b + 3) - 2.0 * honest_edge)
    return Topology(
        graph,
        frozenset(byzantine),
        W,
        name="two_cliques_with_byzantine",
        params={"m": m, "b": b, "delta": delta},
        groups={"clique 1": list(range(m)), "clique 2": list(range(m, 2 * m))},
    )


def malicious_ring(g: int, honest_majority: bool = True) -> Topology:
    """Ring of ``g`` honest nodes, each with two Byzantine leaves, lazily normalised.

    * honest nodes ``0..g-1`` form a cycle; honest node ``i`` has Byzantine leaves
      ``g + 2i`` and ``g + 2i + 1``;
    * if ``honest_majority`` is False, node ``0`` gets one more Byzantine leaf ``3g`` and then
      has as many Byzantine neighbours (3) as honest nodes in its closed neighbourhood
      (itself and its 2 ring neighbours): no local honest majority.

    The mixing matrix is Metropolis–Hastings followed by the lazy normalisation
    ``W <- (W + (1 - w_min) I) / (2 - w_min)`` with ``w_min`` the smallest honest
    self-weight of the Metropolis matrix. For ``g = 5`` without honest majority
    (``n = 16``, ``f = 11``) node 0 has Metropolis weights ``1/6`` on each of its 5 edges and
    ``w_min = 1/6``, hence ``1/11`` per edge after normalisation: ``3/11 ≈ 0.2727`` in total
    on its Byzantine neighbours and ``2/11 ≈ 0.1818`` on its honest ones.
    """
    g = check_int("g", g, 3)
    if not isinstance(honest_majority, bool | np.bool_):
        raise ValueError(f"honest_majority must be a bool, got {honest_majority!r}")
    graph = nx.cycle_graph(g)
    byzantine: list[int] = []
    for i in range(g):
        for leaf in (g + 2 * i, g + 2 * i + 1):
            graph.add_edge(i, leaf)
            byzantine.append(leaf)
    if not honest_majority:
        graph.add_edge(0, 3 * g)
        byzantine.append(3 * g)
    W = metropolis_weights(graph)
    w_min = float(np.min(np.diag(W)[:g]))
    return Topology(
        graph,
        frozenset(byzantine),
        lazy_normalize(W, w_min),
        name="malicious_ring",
        params={"g": g, "honest_majority": bool(honest_majority)},
    )
