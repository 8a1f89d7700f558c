"""The :class:`Topology` value object and the mixing-matrix / spectral helpers.

A topology is a communication graph on nodes ``0..n-1``, a set of Byzantine node ids and a
row-stochastic mixing (gossip) matrix ``W``. Honest node ``i`` averages its neighbours'
models with the weights ``W[i, j]``; Byzantine rows are carried along only so that ``W`` is
a complete stochastic matrix, the attacks never read them. The graph is undirected, or
directed (a ``networkx.DiGraph``) for pull-based gossip: an arc ``(i, j)`` means that ``i``
pulls ``j``'s model, so the arcs out of ``i`` are exactly the support of row ``i`` of ``W``.
A topology whose graph changes every round is a
:class:`~flwr_tempered.topology.dynamic.DynamicTopology`; a :class:`Topology` is the same
in every round (:meth:`Topology.at_round` returns itself).

The quantities the robustness analyses of decentralized learning are stated in (e.g. He,
Karimireddy & Jaggi, "Byzantine-Robust Decentralized Learning via ClippedGossip", 2022) are
computed here:

* the **spectral gap** of the honest block of ``W`` — honest rows and columns, with the
  weight each honest row puts on Byzantine neighbours folded back into its diagonal so the
  block stays row-stochastic — as ``1 - |lambda_2|`` (second-largest absolute eigenvalue);
* ``delta_max``, the largest total weight that an honest node puts on Byzantine neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from numbers import Integral
from typing import TYPE_CHECKING, Any, ClassVar

import networkx as nx
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Absolute tolerance used when checking that a mixing matrix is row-stochastic.
ROW_SUM_TOLERANCE = 1e-9

FloatMatrix = NDArray[np.float64]
#: A node id as accepted from callers (numpy integers included, e.g. from ``rng.choice``).
NodeId = int | np.integer[Any]
#: The ``byzantine`` argument of the constructors: a count or explicit node ids.
ByzantineSpec = NodeId | Iterable[NodeId]


def metropolis_weights(graph: nx.Graph) -> FloatMatrix:
    """Metropolis–Hastings mixing matrix of ``graph`` (nodes must be ``0..n-1``).

    ``W[i, j] = 1 / (1 + max(deg_i, deg_j))`` on every edge and
    ``W[i, i] = 1 - sum_{j != i} W[i, j]`` (Xiao & Boyd, "Fast linear iterations for
    distributed averaging", 2004). The result is symmetric, doubly stochastic and has a
    strictly positive diagonal, so gossip with it converges on any connected graph.
    """
    n = graph.number_of_nodes()
    _check_node_labels(graph)
    W = np.zeros((n, n), dtype=np.float64)
    degree = dict(graph.degree())
    for i, j in graph.edges():
        if i == j:
            continue
        w = 1.0 / (1.0 + max(degree[i], degree[j]))
        W[i, j] = w
        W[j, i] = w
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def uniform_weights(graph: nx.Graph, weight: float) -> FloatMatrix:
    """Mixing matrix with the same ``weight`` on every edge and ``1 - row sum`` on the diagonal.

    Raises ``ValueError`` if some node's degree makes its diagonal negative.
    """
    _check_node_labels(graph)
    n = graph.number_of_nodes()
    W = nx.to_numpy_array(graph, nodelist=range(n), weight=None, dtype=np.float64) * weight
    np.fill_diagonal(W, 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    if np.any(np.diag(W) < -ROW_SUM_TOLERANCE):
        raise ValueError(f"edge weight {weight} is too large for the maximum degree of the graph")
    return W


def lazy_normalize(W: FloatMatrix, w_min: float) -> FloatMatrix:
    """Lazy normalisation ``W <- (W + (1 - w_min) I) / (2 - w_min)``.

    Adds self weight so that, with ``w_min`` the smallest (honest) self-weight of ``W``,
    every node keeps at least half of its mass on itself afterwards; the result stays
    row-stochastic (and symmetric when ``W`` is).
    """
    if not 0.0 <= w_min <= 1.0:
        raise ValueError(f"w_min must lie in [0, 1], got {w_min}")
    n = W.shape[0]
    return (W + (1.0 - w_min) * np.eye(n)) / (2.0 - w_min)


def honest_block(mixing: FloatMatrix, byzantine: Iterable[int]) -> FloatMatrix:
    """Honest rows and columns of ``mixing``, Byzantine weight folded into the diagonal.

    Row ``i`` of the result sums to one: the weight ``i`` put on Byzantine neighbours is
    added to ``W[i, i]``, as if those neighbours had sent ``i``'s own model back.
    """
    byz = set(byzantine)
    honest = [i for i in range(mixing.shape[0]) if i not in byz]
    block = mixing[np.ix_(honest, honest)].copy()
    if byz:
        folded = mixing[np.ix_(honest, sorted(byz))].sum(axis=1)
        block[np.diag_indices_from(block)] += folded
    return block


def spectral_gap(matrix: FloatMatrix) -> float:
    """``1 - |lambda_2|`` of a row-stochastic matrix (second-largest absolute eigenvalue).

    Zero when the graph behind ``matrix`` is disconnected (1 is then a repeated
    eigenvalue); a 1x1 matrix is trivially mixed and has gap 1.
    """
    if matrix.shape[0] < 2:
        return 1.0
    if np.allclose(matrix, matrix.T, atol=1e-12):
        eig = np.abs(np.linalg.eigvalsh(matrix))
    else:
        eig = np.abs(np.linalg.eigvals(matrix))
    eig = np.sort(eig)[::-1]
    return float(max(0.0, 1.0 - eig[1]))


def check_int(name: str, value: int, minimum: int) -> int:
    """Validate an integer parameter, raising ``ValueError`` that names it and its value."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_node_labels(graph: nx.Graph) -> None:
    n = graph.number_of_nodes()
    if set(graph.nodes()) != set(range(n)):
        raise ValueError("graph nodes must be labelled 0..n-1")


def resolve_byzantine(n: int, byzantine: ByzantineSpec, rng: np.random.Generator) -> frozenset[int]:
    """Turn a Byzantine count (placed uniformly at random with ``rng``) or ids into a set.

    At least one node must stay honest. Raises ``ValueError`` naming the offending value.
    """
    if isinstance(byzantine, bool):
        raise ValueError(f"byzantine must be a count or node ids, got {byzantine!r}")
    if isinstance(byzantine, int | np.integer):
        count = int(byzantine)
        if count < 0:
            raise ValueError(f"byzantine count must be >= 0, got {count}")
        if count >= n:
            raise ValueError(
                f"byzantine count {count} leaves no honest node in a graph of {n} nodes"
            )
        return frozenset(int(i) for i in rng.choice(n, size=count, replace=False))
    ids: set[int] = set()
    for node in byzantine:
        if isinstance(node, bool) or not isinstance(node, Integral):
            raise ValueError(f"byzantine node ids must be integers, got {node!r}")
        if not 0 <= int(node) < n:
            raise ValueError(f"byzantine node id {node} is not in 0..{n - 1}")
        ids.add(int(node))
    if len(ids) >= n:
        raise ValueError(f"byzantine ids {sorted(ids)} leave no honest node among {n}")
    return frozenset(ids)


def byzantine_param(byzantine: ByzantineSpec) -> int | list[int]:
    """JSON-friendly form of a ``byzantine`` argument for :attr:`Topology.params`."""
    if isinstance(byzantine, int | np.integer):
        return int(byzantine)
    return sorted(int(i) for i in byzantine)


@dataclass(frozen=True, eq=False)
class Topology:
    """A communication graph, its Byzantine nodes and its mixing matrix (immutable).

    Attributes:
        graph: ``networkx.Graph`` on nodes ``0..n-1``, or a ``networkx.DiGraph`` whose arc
            ``(i, j)`` says that ``i`` receives ``j``'s model.
        byzantine: ids of the Byzantine nodes.
        mixing: ``n x n`` row-stochastic, non-negative float64 matrix, zero off the edges
            (read-only).
        name: registry name of the construction that produced it.
        params: the construction's arguments (JSON-friendly), for run configs.
        groups: group name -> sorted honest node ids; always holds ``"all"``.
    """

    graph: nx.Graph
    byzantine: frozenset[int]
    mixing: FloatMatrix
    name: str = "custom"
    params: Mapping[str, Any] = field(default_factory=dict)
    groups: Mapping[str, list[int]] = field(default_factory=dict)

    #: Whether the graph changes between rounds (see :meth:`at_round`).
    dynamic: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_node_labels(self.graph)
        n = self.graph.number_of_nodes()
        if n < 1:
            raise ValueError("a topology needs at least one node")
        byz = frozenset(int(i) for i in self.byzantine)
        bad = sorted(i for i in byz if not 0 <= i < n)
        if bad:
            raise ValueError(f"byzantine ids {bad} are not nodes of the graph (0..{n - 1})")
        if len(byz) >= n:
            raise ValueError("a topology needs at least one honest node")
        W = np.array(self.mixing, dtype=np.float64)
        if W.shape != (n, n):
            raise ValueError(f"mixing matrix has shape {W.shape}, expected ({n}, {n})")
        if np.any(W < -ROW_SUM_TOLERANCE):
            raise ValueError("mixing matrix has negative entries")
        if not np.allclose(W.sum(axis=1), 1.0, atol=ROW_SUM_TOLERANCE, rtol=0.0):
            raise ValueError("mixing matrix rows must sum to 1")
        adjacency = nx.to_numpy_array(self.graph, nodelist=range(n), weight=None) > 0
        off_edge = ~adjacency & ~np.eye(n, dtype=bool)
        if np.any(W[off_edge] != 0.0):
            raise ValueError("mixing matrix has weight between nodes that are not neighbours")
        W = np.clip(W, 0.0, None)
        W.setflags(write=False)
        honest = [i for i in range(n) if i not in byz]
        groups = {str(k): sorted(int(i) for i in v) for k, v in self.groups.items()}
        for key, members in groups.items():
            if any(i in byz or not 0 <= i < n for i in members):
                raise ValueError(f"group {key!r} must list honest node ids only, got {members}")
        groups.setdefault("all", honest)
        object.__setattr__(self, "byzantine", byz)
        object.__setattr__(self, "mixing", W)
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "groups", groups)

    # ------------------------------------------------------------------ sizes and sets
    @property
    def n(self) -> int:
        """Total number of nodes, honest and Byzantine."""
        return int(self.graph.number_of_nodes())

    @property
    def f(self) -> int:
        """Number of Byzantine nodes."""
        return len(self.byzantine)

    @cached_property
    def honest(self) -> list[int]:
        """Sorted ids of the honest nodes."""
        return [i for i in range(self.n) if i not in self.byzantine]

    def is_byzantine(self, i: int) -> bool:
        """Whether node ``i`` is Byzantine."""
        self._check_node(i)
        return i in self.byzantine

    def at_round(self, round: int) -> Topology:
        """The topology of round ``round``: this one, in every round."""
        return self

    @property
    def directed(self) -> bool:
        """Whether the graph is directed (pull-based: see :attr:`graph`)."""
        return bool(self.graph.is_directed())

    def neighbors(self, i: int) -> list[int]:
        """Sorted neighbours of node ``i``, the nodes it receives from (itself excluded)."""
        self._check_node(i)
        return sorted(int(j) for j in self.graph.neighbors(i) if j != i)

    def recipients(self, i: int) -> list[int]:
        """Sorted nodes that receive node ``i``'s model: its neighbours in an undirected
        graph, the nodes that pull from it in a directed one."""
        if not self.directed:
            return self.neighbors(i)
        self._check_node(i)
        return sorted(int(j) for j in self.graph.predecessors(i) if j != i)

    @cached_property
    def degree_bound(self) -> int:
        """The most neighbours any node receives from."""
        return max(len(self.neighbors(i)) for i in range(self.n))

    @cached_property
    def byzantine_edge_bound(self) -> int:
        """How many (Byzantine node, recipient) pairs there are."""
        return sum(len(self.recipients(a)) for a in self.byzantine)

    def honest_neighbors(self, i: int) -> list[int]:
        """Sorted honest neighbours of node ``i``."""
        return [j for j in self.neighbors(i) if j not in self.byzantine]

    def byzantine_neighbors(self, i: int) -> list[int]:
        """Sorted Byzantine neighbours of node ``i``."""
        return [j for j in self.neighbors(i) if j in self.byzantine]

    def byzantine_weight(self, i: int) -> float:
        """Total mixing weight node ``i`` puts on its Byzantine neighbours."""
        self._check_node(i)
        return float(sum(self.mixing[i, j] for j in self.byzantine_neighbors(i)))

    def _check_node(self, i: int) -> None:
        if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= int(i) < self.n:
            raise ValueError(f"node {i!r} is not in 0..{self.n - 1}")

    # ------------------------------------------------------------------ spectral facts
    @cached_property
    def honest_mixing(self) -> FloatMatrix:
        """Honest block of :attr:`mixing`, Byzantine weight folded into the diagonal."""
        block = honest_block(self.mixing, self.byzantine)
        block.setflags(write=False)
        return block

    @cached_property
    def spectral_gap(self) -> float:
        """``1 - |lambda_2|`` of :attr:`honest_mixing` (0 if the honest graph is split)."""
        return spectral_gap(self.honest_mixing)

    @cached_property
    def delta_max(self) -> float:
        """Largest total weight an honest node puts on Byzantine neighbours (0 if none)."""
        return max((self.byzantine_weight(i) for i in self.honest), default=0.0)

    @property
    def is_metropolis(self) -> bool:
        """Whether :attr:`mixing` equals the Metropolis–Hastings matrix of :attr:`graph`."""
        return bool(np.allclose(self.mixing, metropolis_weights(self.graph), atol=1e-12))

    # ------------------------------------------------------------------ presentation
    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (name, params, sizes, spectral gap, delta_max)."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "n": self.n,
            "f": self.f,
            "edges": int(self.graph.number_of_edges()),
            "spectral_gap": self.spectral_gap,
            "delta_max": self.delta_max,
        }

    def plot(self, ax: Axes | None = None, path: str | None = None) -> Figure:
        """Draw the graph (honest and Byzantine nodes in two colours); see
        :func:`flwr_tempered.topology.plotting.plot_topology`."""
        from flwr_tempered.topology.plotting import plot_topology

        return plot_topology(self, ax=ax, path=path)

    def __repr__(self) -> str:
        return f"Topology(name={self.name!r}, n={self.n}, f={self.f}, params={self.params!r})"
