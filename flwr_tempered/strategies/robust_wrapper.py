"""``robust(strategy, rule=...)``: any Flower strategy built on ``FedAvg`` (``FedAdam``,
``FedYogi``, ``FedAdagrad``, ``FedAvgM``, ``FedProx`` or a subclass of your own) with its
weighted mean of the clients' models replaced by a robust rule, and everything else kept.

Flower's server optimizers do not average themselves: ``FedAdam.aggregate_train`` calls
``FedAvg.aggregate_train`` (through ``super()``) for the weighted mean, then takes the step
``current + eta * m / (sqrt(v) + tau)`` on the difference between that mean and the current
global model. The robust step therefore belongs exactly where ``FedAvg.aggregate_train``
sits in the strategy's method resolution order, below the optimizer. ``robust`` builds a
subclass whose order is::

    RobustFedAdam -> FedAdam -> FedOpt -> Median -> RobustFedAvg -> FedAvg -> Strategy

so ``FedAdam``'s ``super().aggregate_train`` reaches :class:`RobustFedAvg`'s (malformed
replies dropped, the rule applied around the global model), and its pseudo-gradient,
moments and step are computed from the robust aggregate. The optimizer's state, sampling,
messages, evaluation and summary stay the strategy's own; the rule's summary lines and
:attr:`RobustFedAvg.history` are added. Because the result is still an instance of the
strategy's class (and of ``FedAvg``), Flower's differential-privacy wrappers take it like
any other: ``DifferentialPrivacyServerSideFixedClipping(robust(FedAvg(...)), ...)`` clips
the replies, the rule aggregates them, the wrapper adds the noise.

A strategy whose ``aggregate_train`` does not go through ``FedAvg.aggregate_train``
(Flower's ``FedMedian``, ``Krum``, ``QFedAvg``, ... or a user's override that averages by
itself) has no averaging step to replace: Flower's are refused here, and for others the
first aggregation raises ``RuntimeError`` instead of training without the rule.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

from flwr_tempered.aggregators import Rule, rule_parameters

from .by_name import SERVER_STRATEGIES, available_server_strategies
from .robust_fedavg import RobustFedAvg, RuleSpec

__all__ = ["FLOWER_STRATEGIES", "make_flower_strategy", "robust"]

S = TypeVar("S", bound=FedAvg)

#: Flower's strategies whose own ``aggregate_train`` post-processes FedAvg's mean (through
#: ``super()``); Flower's other strategies that define one aggregate by themselves.
_BUILT_ON_FEDAVG = (FedAvg, FedAdam, FedYogi, FedAdagrad, FedAvgM)

#: Flower's strategies built on FedAvg's mean, by run-config name (see
#: :func:`make_flower_strategy`).
FLOWER_STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM, "fedprox": FedProx,
}

#: The strategy methods that chain through ``super()`` on purpose (the robust class adds
#: its step to them); any other method both classes define would shadow one of them.
_CHAINED = frozenset({"__init__", "configure_train", "aggregate_train", "configure_evaluate",
                      "aggregate_evaluate", "summary", "start"})


class _Configured(FedAvg):
    """Sits between the robust class and ``FedAvg``: the wrapped strategy is already built,
    so the robust class's ``__init__`` must not reset its ``FedAvg`` options."""

    def __init__(self, **unexpected: Any) -> None:
        if unexpected:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(unexpected))}")


class _RuleReached(FedAvg):
    """First in the order: checks that the strategy's ``aggregate_train`` reached the
    robust step (one :attr:`RobustFedAvg.history` entry per call). A ``FedAvg`` subclass
    so that the instance layout, hence ``__class__`` assignment, is the strategy's."""

    history: list[dict[str, Any]]
    _strategy_class: type[FedAvg]
    _robust_class: type[RobustFedAvg]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the two classes, since the combined one is built at run time."""
        return _rebuild, (self._strategy_class, self._robust_class, dict(vars(self)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's ``aggregate_train``; ``RuntimeError`` if it bypassed the rule."""
        before = len(self.history)
        result = super().aggregate_train(server_round, replies)
        if len(self.history) == before:
            raise RuntimeError(
                f"robust: {self._strategy_class.__name__}.aggregate_train did not call "
                "FedAvg.aggregate_train (super().aggregate_train), so round "
                f"{server_round} was aggregated without the robust rule; let it call "
                "super() for the mean it post-processes, or use a robust strategy directly")
        return result


_CLASSES: dict[tuple[type[FedAvg], type[RobustFedAvg]], type[Any]] = {}


def _combined_class(strategy_class: type[FedAvg], robust_class: type[RobustFedAvg]
                    ) -> type[Any]:
    """``strategy_class`` with ``robust_class``'s aggregation below it (cached)."""
    key = (strategy_class, robust_class)
    if key not in _CLASSES:
        name = f"Robust{strategy_class.__name__}"
        # FedAvg itself cannot precede the robust class (its subclass) in the order.
        own = () if strategy_class is FedAvg else (strategy_class,)
        _CLASSES[key] = type(name, (_RuleReached, *own, robust_class, _Configured),
                             {"__module__": __name__, "__qualname__": name,
                              "_strategy_class": strategy_class, "_robust_class": robust_class,
                              "__doc__": f"{strategy_class.__name__} aggregating with "
                                         f"{robust_class.__name__}'s rule (see robust())."})
    return _CLASSES[key]


def _rebuild(strategy_class: type[FedAvg], robust_class: type[RobustFedAvg],
             state: dict[str, Any]) -> Any:
    """Unpickle an instance of ``_combined_class(strategy_class, robust_class)``."""
    instance = object.__new__(_combined_class(strategy_class, robust_class))
    instance.__dict__.update(state)
    return instance


def _defined_below(cls: type, stop: type) -> set[str]:
    """Names defined by the classes of ``cls``'s order above ``stop``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is stop:
            break
        names.update(name for name in vars(klass) if not name.startswith(("__", "_abc_")))
    return names


def _check_strategy(strategy: Any) -> None:
    """``ValueError`` unless ``strategy`` has a ``FedAvg`` averaging step to replace."""
    if not isinstance(strategy, FedAvg):
        hint = ""
        if isinstance(strategy, Strategy) and isinstance(getattr(strategy, "strategy", None),
                                                         FedAvg):
            hint = (f"; {type(strategy).__name__} wraps a strategy: make the inner one robust "
                    f"and wrap that, e.g. {type(strategy).__name__}(robust(FedAvg(...), "
                    "rule='median'), ...)")
        raise ValueError(
            f"robust: expected a Flower strategy derived from FedAvg (FedAvg, FedAdam, "
            f"FedYogi, FedAdagrad, FedAvgM, FedProx or your own subclass), got "
            f"{type(strategy).__name__}{hint}")
    if isinstance(strategy, RobustFedAvg):
        raise ValueError(
            f"robust: {type(strategy).__name__} already aggregates with the robust rule "
            f"{strategy.rule.name!r}; wrap the plain Flower strategy instead")
    for klass in type(strategy).__mro__[:type(strategy).__mro__.index(FedAvg)]:
        if (klass.__module__.startswith("flwr.") and "aggregate_train" in vars(klass)
                and klass not in _BUILT_ON_FEDAVG):
            raise ValueError(
                f"robust: Flower's {type(strategy).__name__} aggregates by itself "
                f"({klass.__name__}.aggregate_train) instead of through FedAvg's weighted "
                "mean, so there is no averaging step to replace; use "
                "robust(FedAvg(...), rule=...) or a named strategy of "
                "flwr_tempered.strategies (Median, TrimmedMean, Krum, MultiKrum, Bulyan, ...)")


def _robust_init(rule: RuleSpec, options: dict[str, Any]
                 ) -> tuple[type[RobustFedAvg], dict[str, Any]]:
    """The robust class for ``rule`` and the keyword arguments of its ``__init__``."""
    if isinstance(rule, str) and rule in SERVER_STRATEGIES:
        factory = SERVER_STRATEGIES[rule]
        if not (isinstance(factory, type) and issubclass(factory, RobustFedAvg)):
            raise ValueError(f"robust: {rule!r} is Flower's own averaging, not a robust rule; "
                             f"choose one of {', '.join(_robust_names())}")
        return factory, options
    device = options.pop("device", None)
    if isinstance(rule, str):
        if rule not in available_server_strategies():
            raise ValueError(f"robust: unknown rule {rule!r}; choose one of "
                             f"{', '.join(_robust_names())}")
        spec: RuleSpec = {"name": rule, **options}
    elif isinstance(rule, Mapping):
        spec = {**rule, **options}
    elif isinstance(rule, Rule) and not options:
        spec = rule
    elif isinstance(rule, Rule):
        raise ValueError(f"robust: options {sorted(options)} were given with the rule object "
                         f"{rule.name!r}; set them when building the rule")
    else:
        raise ValueError(f"robust: rule must be a rule name, a mapping {{'name': ..., **args}}"
                         f" or a Rule, got {rule!r}")
    return RobustFedAvg, {"rule": spec, "device": device}


def _parameters(cls: type) -> set[str]:
    """The named keyword parameters of ``cls.__init__``."""
    return {name for name, parameter in inspect.signature(cls).parameters.items()
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)}


def _robust_names() -> list[str]:
    return [name for name in available_server_strategies() if name != "fedavg"]


def robust(strategy: S, rule: RuleSpec = "median", **rule_options: Any) -> S:
    """A copy of ``strategy`` whose averaging of the clients' models is the robust ``rule``.

    Args:
        strategy: an instance of ``FedAvg`` or of a strategy built on its mean (Flower's
            ``FedAdam``, ``FedYogi``, ``FedAdagrad``, ``FedAvgM``, ``FedProx``, or your own
            subclass whose ``aggregate_train`` calls ``super().aggregate_train``). It is
            not modified; the copy keeps its settings and its server-side step.
        rule: a named robust strategy of :func:`make_server_strategy` (``"median"``,
            ``"trimmed_mean"``, ``"multi_krum"``, ...), any other server rule name
            (``"mda"``), a mapping ``{"name": ..., **args}`` or a :class:`Rule`.
        **rule_options: the named strategy's own arguments with Flower's names
            (``beta=0.2``, ``num_malicious_nodes=2``, ``num_nodes_to_select=4``, ...), a
            rule's arguments (``f=2``) for the other names, and ``device=``. The
            strategy's own options (``fraction_train``, ``eta``, ...) are set on
            ``strategy``, not here.

    Returns:
        An instance of a subclass of ``type(strategy)`` and of :class:`RobustFedAvg`
        (its :attr:`~RobustFedAvg.history`, :meth:`~RobustFedAvg.set_global_model`).

    Raises:
        ValueError: ``strategy`` is not a ``FedAvg`` built on the mean (a
            differential-privacy wrapper: make its inner strategy robust instead; an
            already robust strategy; Flower's ``FedMedian``, ``Krum``, ...), ``rule`` is
            unknown, an option is not the rule's, or the rule's settings would overwrite
            one of the strategy's attributes or methods of the same name.
    """
    _check_strategy(strategy)
    robust_class, init_args = _robust_init(rule, dict(rule_options))
    if robust_class is not RobustFedAvg:
        accepted = _parameters(robust_class)
    else:
        accepted = set(rule_parameters(rule)) if isinstance(rule, str) else set(rule_options)
    misplaced = sorted((set(rule_options) - accepted - {"device"})
                       & _parameters(type(strategy)))
    if misplaced:
        verb = "is an option" if len(misplaced) == 1 else "are options"
        raise ValueError(
            f"robust: {', '.join(misplaced)} {verb} of {type(strategy).__name__}, not of the "
            f"rule {rule!r}; set it where the strategy is built: robust("
            f"{type(strategy).__name__}({misplaced[0]}=...), rule={rule!r})")
    clashes = sorted((_defined_below(robust_class, FedAvg) - _CHAINED)
                     & _defined_below(type(strategy), FedAvg))
    combined = copy.copy(strategy)
    combined.__class__ = _combined_class(type(strategy), robust_class)
    before = dict(vars(combined))
    try:
        robust_class.__init__(cast(RobustFedAvg, combined), **init_args)
    except (TypeError, ValueError) as error:
        raise ValueError(f"robust: rule {rule!r}: {error}") from None
    clashes += sorted(key for key, value in before.items() if vars(combined)[key] is not value)
    if clashes:
        raise ValueError(
            f"robust: {robust_class.__name__} and {type(strategy).__name__} both define "
            f"{', '.join(clashes)}; rename them in {type(strategy).__name__} to combine the two")
    return combined


def make_flower_strategy(name: str, rule_args: Mapping[str, Any] | None = None,
                         **options: Any) -> FedAvg:
    """Flower's strategy ``name`` (a key of :data:`FLOWER_STRATEGIES`) built with
    ``options``, made robust when the name goes on with ``+`` and a rule, so that a run
    config can say ``strategy = "fedadam+median"``: ``make_flower_strategy("fedadam+median",
    eta=0.01)`` is ``robust(FedAdam(eta=0.01), rule="median")``. The rule's own settings
    go in ``rule_args`` (``{"num_malicious_nodes": 2}``), as they would go to
    :func:`robust`. A bad name or option raises ``ValueError`` naming it."""
    base, plus, rule = name.partition("+")
    if base not in FLOWER_STRATEGIES:
        raise ValueError(f"unknown Flower strategy {base!r} in {name!r}; choose one of "
                         f"{', '.join(FLOWER_STRATEGIES)}, optionally followed by '+' and a "
                         "robust rule (e.g. 'fedadam+median')")
    if rule_args and not plus:
        raise ValueError(f"rule_args={dict(rule_args)!r} given for {name!r}, which has no "
                         f"rule; name one, e.g. '{base}+median'")
    try:
        strategy = FLOWER_STRATEGIES[base](**options)
    except TypeError as error:
        raise ValueError(f"strategy {name!r}: {error}") from None
    return robust(strategy, rule=rule, **dict(rule_args or {})) if plus else strategy
