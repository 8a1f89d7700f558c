"""Name registry of the topology constructors, for run configs and the CLI.

``get_topology("dumbbell", q=10)`` builds a topology from a name and keyword parameters;
misspelt names and parameters fail early with a ``ValueError`` that lists what is valid.
The ``dynamic_*`` and ``peer_sampling`` names build time-varying topologies
(:class:`~flwr_tempered.topology.dynamic.DynamicTopology`, one graph per round).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr_tempered.registry import Registry
from flwr_tempered.topology import constructions, dynamic, standard
from flwr_tempered.topology.dynamic import AnyTopology

TOPOLOGIES: Registry[Callable[..., AnyTopology]] = Registry("topology")
for _factory in (
    standard.ring,
    standard.chain,
    standard.complete,
    standard.star,
    standard.torus,
    standard.erdos_renyi,
    standard.random_regular,
    standard.small_world,
    constructions.dumbbell,
    constructions.two_cliques_with_byzantine,
    constructions.malicious_ring,
    dynamic.dynamic_random_regular,
    dynamic.dynamic_erdos_renyi,
    dynamic.peer_sampling,
):
    TOPOLOGIES.add(_factory.__name__, _factory)


def available_topologies() -> list[str]:
    """Sorted names accepted by :func:`get_topology`."""
    return TOPOLOGIES.names()


def topology_factory(name: str) -> Callable[..., AnyTopology]:
    """The constructor registered as ``name``; ``ValueError`` listing the valid names."""
    return TOPOLOGIES.factory(name)


def get_topology(name: str, **params: Any) -> AnyTopology:
    """Build the topology registered as ``name`` with keyword ``params``.

    Raises ``ValueError`` for an unknown name (listing the valid ones), for an unknown or
    missing parameter (listing the accepted ones), and for invalid parameter values.
    """
    topology: AnyTopology = TOPOLOGIES.build(name, **params)
    return topology
