"""Server-assisted strategies by name, so that a run config can say ``strategy = "median"``.

``make_server_strategy("fedavg")`` is Flower's own ``FedAvg``; the named robust strategies
take their own keyword arguments (``beta``, ``num_malicious_nodes``, ``tau``, ...); any other
name of :func:`flwr_tempered.aggregators.available_rules` gives ``RobustFedAvg`` with that
rule, its arguments taken from ``rule_args``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvg

from flwr_tempered.aggregators import available_rules, rule_class

from . import robust_named
from .robust_fedavg import RobustFedAvg

__all__ = ["SERVER_STRATEGIES", "available_server_strategies", "make_server_strategy"]

#: Strategy name -> class (``fedavg`` is Flower's FedAvg).
SERVER_STRATEGIES: dict[str, Callable[..., FedAvg]] = {
    "fedavg": FedAvg,
    "median": robust_named.Median,
    "trimmed_mean": robust_named.TrimmedMean,
    "geometric_median": robust_named.GeometricMedian,
    "krum": robust_named.Krum,
    "multi_krum": robust_named.MultiKrum,
    "bulyan": robust_named.Bulyan,
    "centered_clipping": robust_named.CenteredClipping,
    "nnm": robust_named.NNMRobust,
    "fltrust": robust_named.FLTrust,
}


def available_server_strategies() -> list[str]:
    """Names accepted by :func:`make_server_strategy`: the named strategies, then every
    other registered rule (as ``RobustFedAvg``)."""
    named = list(SERVER_STRATEGIES)
    return named + sorted(set(_server_rules()) - set(named))


def _server_rules() -> list[str]:
    """The registered rules that have a server-side form."""
    return [name for name in available_rules() if rule_class(name).server_form]


def make_server_strategy(name: str, rule_args: Mapping[str, Any] | None = None,
                         **options: Any) -> FedAvg:
    """The strategy called ``name``; ``options`` go to its constructor (the ``FedAvg``
    options included). An unknown name or option raises ``ValueError`` naming it."""
    if name in SERVER_STRATEGIES:
        if rule_args:
            raise ValueError(f"strategy {name!r} takes its settings as keyword arguments, "
                             f"not rule_args={dict(rule_args)!r}")
        factory = SERVER_STRATEGIES[name]
        try:
            return factory(**options)
        except TypeError as error:
            raise ValueError(f"strategy {name!r}: {error}") from None
    if name in _server_rules():
        return RobustFedAvg({"name": name, **dict(rule_args or {})}, **options)
    if name in available_rules():
        raise ValueError(f"rule {name!r} has no server form (it keeps each node's own model); "
                         f"choose one of {', '.join(available_server_strategies())}")
    raise ValueError(f"unknown server strategy {name!r}; choose one of "
                     f"{', '.join(available_server_strategies())}")
