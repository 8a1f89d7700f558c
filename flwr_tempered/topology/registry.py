"""Name registry of the topology constructors, for run configs and the CLI.

``get_topology("dumbbell", q=10)`` builds a topology from a name and keyword parameters;
misspelt names and parameters fail early with a ``ValueError`` that lists what is valid.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from flwr_tempered.topology import constructions, standard
from flwr_tempered.topology.base import Topology

_REGISTRY: dict[str, Callable[..., Topology]] = {
    "ring": standard.ring,
    "chain": standard.chain,
    "complete": standard.complete,
    "star": standard.star,
    "torus": standard.torus,
    "erdos_renyi": standard.erdos_renyi,
    "random_regular": standard.random_regular,
    "small_world": standard.small_world,
    "dumbbell": constructions.dumbbell,
    "two_cliques_with_byzantine": constructions.two_cliques_with_byzantine,
    "malicious_ring": constructions.malicious_ring,
}


def available_topologies() -> list[str]:
    """Sorted names accepted by :func:`get_topology`."""
    return sorted(_REGISTRY)


def topology_factory(name: str) -> Callable[..., Topology]:
    """The constructor registered as ``name``; ``ValueError`` listing the valid names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown topology {name!r}; valid names: {', '.join(available_topologies())}"
        ) from None


def get_topology(name: str, **params: Any) -> Topology:
    """Build the topology registered as ``name`` with keyword ``params``.

    Raises ``ValueError`` for an unknown name (listing the valid ones), for an unknown or
    missing parameter (listing the accepted ones), and for invalid parameter values.
    """
    factory = topology_factory(name)
    signature = inspect.signature(factory)
    accepted = list(signature.parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for topology {name!r}; "
            f"accepted: {', '.join(accepted)}"
        )
    try:
        signature.bind(**params)
    except TypeError as exc:
        raise ValueError(
            f"topology {name!r}: {exc}; accepted parameters: {', '.join(accepted)}"
        ) from None
    return factory(**params)
