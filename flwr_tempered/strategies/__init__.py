"""Flower strategies.

Server-assisted (drop-in replacements for ``flwr.serverapp.strategy.FedAvg``): the generic
:class:`RobustFedAvg` taking any rule of :mod:`flwr_tempered.aggregators`, and the named
:class:`Median`, :class:`TrimmedMean`, :class:`GeometricMedian`, :class:`Krum`,
:class:`MultiKrum`, :class:`Bulyan`, :class:`CenteredClipping`, :class:`NNMRobust` and
:class:`FLTrust`.
:func:`robust` gives any other Flower strategy built on ``FedAvg``'s mean (``FedAdam``,
``FedYogi``, ``FedAdagrad``, ``FedAvgM``, ``FedProx``, a subclass of your own) a robust rule;
:func:`make_flower_strategy` builds them by name (``"fedadam+median"``).

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
from .robust_wrapper import FLOWER_STRATEGIES, make_flower_strategy, robust

__all__ = [
    "FLOWER_STRATEGIES",
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
    "make_flower_strategy",
    "make_server_strategy",
    "robust",
]
