"""Flower strategies.

Server-assisted (drop-in replacements for ``flwr.serverapp.strategy.FedAvg``): the generic
:class:`RobustFedAvg` taking any rule of :mod:`flwr_tempered.aggregators`, and the named
:class:`Median`, :class:`TrimmedMean`, :class:`GeometricMedian`, :class:`Krum`,
:class:`MultiKrum`, :class:`Bulyan`, :class:`CenteredClipping`, :class:`NNMRobust` and
:class:`FLTrust`.

Decentralized: :class:`DecentralizedStrategy` (neighbour exchange over a Grid).
"""

from .by_name import SERVER_STRATEGIES, available_server_strategies, make_server_strategy
from .decentralized import DecentralizedStrategy
from .robust_fedavg import RobustFedAvg
from .robust_named import (
    Bulyan,
    CenteredClipping,
    FLTrust,
    GeometricMedian,
    Krum,
    Median,
    MultiKrum,
    NNMRobust,
    TrimmedMean,
)

__all__ = [
    "SERVER_STRATEGIES",
    "Bulyan",
    "CenteredClipping",
    "DecentralizedStrategy",
    "FLTrust",
    "GeometricMedian",
    "Krum",
    "Median",
    "MultiKrum",
    "NNMRobust",
    "RobustFedAvg",
    "TrimmedMean",
    "available_server_strategies",
    "make_server_strategy",
]
