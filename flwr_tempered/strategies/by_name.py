"""Server-assisted strategies by name, so that a run config can say ``strategy = "median"``.

``make_server_strategy("fedavg")`` is Flower's own ``FedAvg``; the named robust strategies
take their own keyword arguments in Flower's names (``beta``, ``num_malicious_nodes``,
``num_nodes_to_select``, ``tau``, ...); any other name of
:func:`flwr_tempered.aggregators.available_rules` gives ``RobustFedAvg`` with that rule, its
arguments taken from ``rule_args``. A rule's letter given as an option
(``make_server_strategy("multi_krum", f=2)``) is refused with the Flower name to use.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvg

from flwr_tempered.aggregators import available_rules, rule_class

from . import robust_named
from .robust_fedavg import FLOWER_NAMES, RobustFedAvg

#: Flower's names of the rules' budget parameters, accepted as plain options of a rule
#: strategy (they go to the rule).
BUDGET_NAMES = ("num_malicious_nodes", "num_nodes_to_select")

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


#: Flower's strategies with a server-side step of their own, by the names
#: ``make_flower_strategy`` takes (``"fedadam"``, or ``"fedadam+median"`` made robust).
_FLOWER_OPTIMIZERS = ("fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedprox")


def _server_rules() -> list[str]:
    """The registered rules that have a server-side form."""
    return [name for name in available_rules() if rule_class(name).server_form]


def _options_of(factory: Callable[..., FedAvg]) -> list[str]:
    """The keyword options ``factory`` accepts: its own, and ``FedAvg``'s when it passes
    the rest on."""
    own = inspect.signature(factory).parameters.values()
    names = [p.name for p in own if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if any(p.kind is p.VAR_KEYWORD for p in own):
        names += [name for name in inspect.signature(FedAvg).parameters if name not in names]
    return names


def _unknown_options(name: str, options: Mapping[str, Any], accepted: list[str]) -> None:
    """Raise ``ValueError`` naming the options of ``options`` that strategy ``name`` does
    not take; a rule's letter (``f``, ``m``) is pointed to its Flower name."""
    unknown = [key for key in options if key not in accepted]
    if not unknown:
        return
    hints = [f"{FLOWER_NAMES[key]}={options[key]!r} instead of {key}={options[key]!r}"
             for key in unknown if key in FLOWER_NAMES and FLOWER_NAMES[key] in accepted]
    hint = f"; the server strategies take Flower's names: {', '.join(hints)}" if hints else ""
    raise ValueError(f"strategy {name!r} has no option {', '.join(map(repr, unknown))}{hint}"
                     f"; its options: {', '.join(accepted)}")


def make_server_strategy(name: str, rule_args: Mapping[str, Any] | None = None,
                         **options: Any) -> FedAvg:
    """The strategy called ``name``; ``options`` go to its constructor (the ``FedAvg``
    options included), in Flower's names (``num_malicious_nodes``, ``num_nodes_to_select``).

    For a rule strategy (a rule name without a named strategy) the rule's parameters go in
    ``rule_args``, where the budget may be given as ``f`` or by its Flower name; the Flower
    names are also accepted as plain options (``make_server_strategy("meamed",
    num_malicious_nodes=2)``). An unknown name or option raises ``ValueError`` naming it (and
    the Flower name to use for a rule's letter such as ``f``).
    """
    if name in SERVER_STRATEGIES:
        if rule_args:
            raise ValueError(f"strategy {name!r} takes its settings as keyword arguments, "
                             f"not rule_args={dict(rule_args)!r}")
        factory = SERVER_STRATEGIES[name]
        _unknown_options(name, options, _options_of(factory))
        try:
            return factory(**options)
        except TypeError as error:  # e.g. a required option left out
            raise ValueError(f"strategy {name!r}: {error}") from None
    if name in _server_rules():
        fedavg_options = {key: value for key, value in options.items()
                          if key not in BUDGET_NAMES}
        accepted = [key for key in _options_of(RobustFedAvg) if key != "rule"]
        _unknown_options(name, fedavg_options, [*accepted, *BUDGET_NAMES])
        budget = {key: value for key, value in options.items() if key in BUDGET_NAMES}
        return RobustFedAvg({"name": name, **dict(rule_args or {}), **budget},
                            **fedavg_options)
    if name.partition("+")[0] in _FLOWER_OPTIMIZERS:
        from .robust_wrapper import make_flower_strategy  # a lazy import: it imports us

        return make_flower_strategy(name, rule_args, **options)
    if name in available_rules():
        raise ValueError(f"rule {name!r} has no server form (it is decentralized only: it "
                         f"needs each node's own model or data); "
                         f"choose one of {', '.join(available_server_strategies())}")
    raise ValueError(f"unknown server strategy {name!r}; choose one of "
                     f"{', '.join(available_server_strategies())}")
