"""Time-varying topologies: a graph and its mixing matrix drawn anew every round.

A :class:`DynamicTopology` keeps the number of nodes, the Byzantine ids and the groups
fixed and answers :meth:`~DynamicTopology.at_round` with the round's
:class:`~flwr_tempered.topology.base.Topology`, a pure function of ``(seed, round)``: every
participant of a run (the relay, each ClientApp, each engine) draws the same graph for
the same round without any message carrying it. A static :class:`Topology` answers
``at_round`` with itself, so runtimes ask every topology for the round's graph.

**Round convention.** The topology of round ``t`` is the graph along which the models
aggregated in round ``t`` travel: they are sent at the end of round ``t - 1`` (after the
local steps) and aggregated with the round's mixing weights at the start of round ``t``.
Round 0 aggregates nothing, so its graph is drawn but never used. The metrics line of
round ``t`` logs the spectral gap of the honest block and ``delta_max`` of round ``t``'s
graph (``spectral_gap``, ``delta_max``: :func:`round_metrics`).

The constructions:

* :func:`dynamic_random_regular`: a connected random ``degree``-regular graph per round,
  Metropolis-Hastings weights (``1 / (degree + 1)`` everywhere: doubly stochastic);
* :func:`dynamic_erdos_renyi`: ``G(n, p)`` per round, Metropolis-Hastings weights. With
  ``connected=True`` (default) disconnected draws are redrawn (at most
  :data:`~flwr_tempered.topology.standard.MAX_CONNECT_ATTEMPTS` times per round, then
  ``ValueError``); with ``connected=False`` they are kept: the round's spectral gap is
  then 0 and an isolated node keeps its own model for the round;
* :func:`peer_sampling`: every node pulls the models of ``k`` peers drawn uniformly
  without replacement from the other ``n - 1`` nodes (Byzantine ones included), a
  directed graph; row ``i`` of ``W`` puts ``1 / (k + 1)`` on ``i`` and on each sampled
  peer. ``W`` is row-stochastic but not doubly stochastic (a node pulled by many peers
  weighs more in the consensus), and one round's pull graph need not be strongly
  connected (its gap can be 0); mixing comes from the rounds changing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any, ClassVar

import networkx as nx
import numpy as np

from flwr_tempered.topology.base import (
    ByzantineSpec,
    FloatMatrix,
    Topology,
    byzantine_param,
    check_int,
    metropolis_weights,
    resolve_byzantine,
)
from flwr_tempered.topology.standard import check_probability, check_regular, connected_sample

#: How many rounds' topologies a :class:`DynamicTopology` keeps (a runtime needs the
#: current round's and the next one's).
CACHED_ROUNDS = 4

#: A round's draw: the graph and its mixing matrix, from the round's generator.
Draw = Callable[[np.random.Generator], tuple[nx.Graph, FloatMatrix]]


class DynamicTopology:
    """A topology whose graph and mixing matrix change every round (see the module doc).

    Attributes:
        n: number of nodes, honest and Byzantine (fixed).
        byzantine: ids of the Byzantine nodes (fixed across rounds).
        name: registry name of the construction.
        params: the construction's arguments (JSON-friendly).
        groups: ``{"all": honest ids}``.
        degree_bound: the most neighbours a node receives from in any round.
        byzantine_edge_bound: the most (Byzantine node, recipient) pairs in any round.
    """

    #: Whether the graph changes between rounds.
    dynamic: ClassVar[bool] = True

    def __init__(self, n: int, byzantine: frozenset[int], draw: Draw, *, seed: int, name: str,
                 params: Mapping[str, Any], degree_bound: int,
                 byzantine_edge_bound: int) -> None:
        self.n = n
        self.byzantine = frozenset(byzantine)
        self.name = name
        self.params = dict(params)
        self.seed = seed
        self.honest = [i for i in range(n) if i not in self.byzantine]
        self.groups: dict[str, list[int]] = {"all": list(self.honest)}
        self.degree_bound = degree_bound
        self.byzantine_edge_bound = byzantine_edge_bound
        self._draw = draw
        self._rounds: OrderedDict[int, Topology] = OrderedDict()

    @property
    def f(self) -> int:
        """Number of Byzantine nodes."""
        return len(self.byzantine)

    def is_byzantine(self, i: int) -> bool:
        """Whether node ``i`` is Byzantine."""
        return i in self.byzantine

    def at_round(self, round: int) -> Topology:
        """The topology of round ``round`` (``>= 0``), the same for the same seed and
        round in every process."""
        if isinstance(round, bool) or not isinstance(round, Integral) or round < 0:
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        round = int(round)
        topology = self._rounds.get(round)
        if topology is None:
            rng = np.random.default_rng([self.seed, round])
            graph, mixing = self._draw(rng)
            topology = Topology(graph, self.byzantine, mixing, name=self.name,
                                params={**self.params, "round": round})
            self._rounds[round] = topology
            if len(self._rounds) > CACHED_ROUNDS:
                self._rounds.popitem(last=False)
        else:
            self._rounds.move_to_end(round)
        return topology

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (name, params, sizes); spectral facts are per round."""
        return {"name": self.name, "params": dict(self.params), "n": self.n, "f": self.f,
                "dynamic": True}

    def __repr__(self) -> str:
        return (f"DynamicTopology(name={self.name!r}, n={self.n}, f={self.f}, "
                f"params={self.params!r})")


#: A topology of a run: the same graph every round, or one per round.
AnyTopology = Topology | DynamicTopology


def round_metrics(topology: AnyTopology, round: int) -> dict[str, float]:
    """The round's graph facts for its metrics line: the spectral gap of the honest block
    and ``delta_max`` of a time-varying topology's round ``round``; nothing for a static
    topology (its numbers do not change; ``flwr-tempered topology`` prints them)."""
    if not topology.dynamic:
        return {}
    current = topology.at_round(round)
    return {"spectral_gap": current.spectral_gap, "delta_max": current.delta_max}


def _seed(seed: int) -> int:
    return check_int("seed", seed, 0)


def _dynamic(n: int, byzantine: ByzantineSpec, seed: int, draw: Draw, name: str,
             params: dict[str, Any], degree_bound: int, edge_bound: Callable[[int], int]
             ) -> DynamicTopology:
    """Place the Byzantine nodes (seeded, once for all rounds), check that round 0 can be
    drawn, and wrap ``draw``. ``edge_bound(f)``: the most (Byzantine node, recipient)
    pairs a round can have with ``f`` Byzantine nodes."""
    byz = resolve_byzantine(n, byzantine, np.random.default_rng(seed))
    topology = DynamicTopology(
        n, byz, draw, seed=seed, name=name,
        params={**params, "seed": seed, "byzantine": byzantine_param(byzantine)},
        degree_bound=degree_bound, byzantine_edge_bound=edge_bound(len(byz)))
    topology.at_round(0)
    return topology


def dynamic_random_regular(n: int, degree: int, seed: int = 0, byzantine: ByzantineSpec = 0
                           ) -> DynamicTopology:
    """A connected random ``degree``-regular graph drawn anew every round (``n * degree``
    even), Metropolis-Hastings mixing."""
    n, degree = check_regular(n, degree)
    seed = _seed(seed)
    what = f"dynamic_random_regular(n={n}, degree={degree})"

    def draw(rng: np.random.Generator) -> tuple[nx.Graph, FloatMatrix]:
        graph = connected_sample(lambda s: nx.random_regular_graph(degree, n, seed=s), rng,
                                 what)
        return graph, metropolis_weights(graph)

    return _dynamic(n, byzantine, seed, draw, "dynamic_random_regular",
                    {"n": n, "degree": degree}, degree, lambda f: f * degree)


def dynamic_erdos_renyi(n: int, p: float, seed: int = 0, byzantine: ByzantineSpec = 0,
                        connected: bool = True) -> DynamicTopology:
    """An Erdős–Rényi ``G(n, p)`` graph drawn anew every round, Metropolis-Hastings
    mixing; ``connected`` redraws disconnected graphs (bounded, then ``ValueError``),
    otherwise they are kept (spectral gap 0 that round)."""
    n = check_int("n", n, 2)
    p = check_probability(p)
    seed = _seed(seed)
    if not isinstance(connected, bool):
        raise ValueError(f"connected must be True or False, got {connected!r}")
    what = f"dynamic_erdos_renyi(n={n}, p={p})"

    def sample(s: int) -> nx.Graph:
        return nx.gnp_random_graph(n, p, seed=s)

    def draw(rng: np.random.Generator) -> tuple[nx.Graph, FloatMatrix]:
        graph = connected_sample(sample, rng, what) if connected else sample(
            int(rng.integers(2**31 - 1)))
        return graph, metropolis_weights(graph)

    return _dynamic(n, byzantine, seed, draw, "dynamic_erdos_renyi",
                    {"n": n, "p": p, "connected": connected}, n - 1, lambda f: f * (n - 1))


def peer_sampling(n: int, k: int, seed: int = 0, byzantine: ByzantineSpec = 0
                  ) -> DynamicTopology:
    """Every node pulls ``k`` peers drawn uniformly anew every round (a directed graph);
    weight ``1 / (k + 1)`` on itself and on each sampled peer (row-stochastic)."""
    n = check_int("n", n, 2)
    k = check_int("k", k, 1)
    if k >= n:
        raise ValueError(f"k must be < n = {n}, got {k}")
    seed = _seed(seed)

    def draw(rng: np.random.Generator) -> tuple[nx.Graph, FloatMatrix]:
        graph = nx.DiGraph()
        graph.add_nodes_from(range(n))
        mixing = np.eye(n) / (k + 1)
        for i in range(n):
            peers = rng.choice(n - 1, size=k, replace=False)
            peers = peers + (peers >= i)  # skip i itself
            graph.add_edges_from((i, int(j)) for j in peers)
            mixing[i, peers] = 1.0 / (k + 1)
        return graph, mixing

    # Every node pulls at most min(k, f) Byzantine peers.
    return _dynamic(n, byzantine, seed, draw, "peer_sampling", {"n": n, "k": k}, k,
                    lambda f: n * min(k, f))
