"""Communication topologies for Byzantine-robust decentralized learning.

A :class:`Topology` bundles a graph on nodes ``0..n-1``, its Byzantine node ids and a
row-stochastic mixing matrix (Metropolis–Hastings unless the construction says otherwise),
together with the spectral gap of the honest block and ``delta_max``, the largest weight
an honest node puts on Byzantine neighbours. Build one directly (:func:`ring`,
:func:`dumbbell`, ...) or by name with :func:`get_topology`. A
:class:`DynamicTopology` (:func:`dynamic_random_regular`, :func:`dynamic_erdos_renyi`,
:func:`peer_sampling`) draws a new graph every round; every topology answers
``at_round(t)`` with the round's :class:`Topology`.
"""

from flwr_tempered.topology.base import (
    Topology,
    honest_block,
    lazy_normalize,
    metropolis_weights,
    spectral_gap,
    uniform_weights,
)
from flwr_tempered.topology.constructions import (
    dumbbell,
    malicious_ring,
    two_cliques_with_byzantine,
)
from flwr_tempered.topology.dynamic import (
    AnyTopology,
    DynamicTopology,
    dynamic_erdos_renyi,
    dynamic_random_regular,
    peer_sampling,
    round_metrics,
)
from flwr_tempered.topology.plotting import plot_topology
from flwr_tempered.topology.registry import available_topologies, get_topology, topology_factory
from flwr_tempered.topology.standard import (
    MAX_CONNECT_ATTEMPTS,
    chain,
    complete,
    erdos_renyi,
    random_regular,
    ring,
    small_world,
    star,
    torus,
)

__all__ = [
    "MAX_CONNECT_ATTEMPTS",
    "AnyTopology",
    "DynamicTopology",
    "Topology",
    "available_topologies",
    "chain",
    "complete",
    "dumbbell",
    "dynamic_erdos_renyi",
    "dynamic_random_regular",
    "erdos_renyi",
    "get_topology",
    "honest_block",
    "lazy_normalize",
    "malicious_ring",
    "metropolis_weights",
    "peer_sampling",
    "plot_topology",
    "random_regular",
    "ring",
    "round_metrics",
    "small_world",
    "spectral_gap",
    "star",
    "topology_factory",
    "torus",
    "two_cliques_with_byzantine",
    "uniform_weights",
]
