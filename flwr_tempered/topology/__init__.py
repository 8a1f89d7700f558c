"""Communication topologies for Byzantine-robust decentralized learning.

A :class:`Topology` bundles a graph on nodes ``0..n-1``, its Byzantine node ids and a
row-stochastic mixing matrix (Metropolis–Hastings unless the construction says otherwise),
together with the spectral gap of the honest block and ``delta_max``, the largest weight
an honest node puts on Byzantine neighbours. Build one directly (:func:`ring`,
:func:`dumbbell`, ...) or by name with :func:`get_topology`.
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
    "Topology",
    "available_topologies",
    "chain",
    "complete",
    "dumbbell",
    "erdos_renyi",
    "get_topology",
    "honest_block",
    "lazy_normalize",
    "malicious_ring",
    "metropolis_weights",
    "plot_topology",
    "random_regular",
    "ring",
    "small_world",
    "spectral_gap",
    "star",
    "topology_factory",
    "torus",
    "two_cliques_with_byzantine",
    "uniform_weights",
]
