"""Named robust strategies: ``RobustFedAvg`` with one rule preset, for the one-line change
``strategy = FedAvg(...)`` -> ``strategy = Median(...)``.

Where Flower has a strategy of the same rule (``FedMedian``, ``FedTrimmedAvg``, ``Krum``,
``MultiKrum``, ``Bulyan``) the parameters keep Flower's names and meaning
(``num_malicious_nodes``, ``num_nodes_to_select``, ``beta``, ``selection_rule``), so the
swap is a rename, and their messages use those names. The strategies with a Byzantine budget
check it against the clients sampled per round before the first round (see
:mod:`flwr_tempered.strategies.robust_fedavg`).

References: median and trimmed mean, Yin et al. (ICML 2018); geometric median / RFA,
Pillutla et al. (IEEE TSP 2022); Krum and Multi-Krum, Blanchard et al. (NeurIPS 2017);
Bulyan, El Mhamdi et al. (ICML 2018); centered clipping, Karimireddy et al. (ICML 2021);
NNM, Allouah et al. (AISTATS 2023); FLTrust, Cao et al. (NDSS 2021).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp.strategy.multikrum import select_multikrum
from torch import Tensor

from flwr_tempered import aggregators
from flwr_tempered.aggregators.base import check_int_at_least

from .robust_fedavg import RobustFedAvg, RuleSpec

__all__ = [
    "Bulyan",
    "CenteredClipping",
    "FLTrust",
    "GeometricMedian",
    "Krum",
    "Median",
    "MultiKrum",
    "NNMRobust",
    "TrimmedMean",
]


class Median(RobustFedAvg):
    """Coordinate-wise median of the clients' models (Flower's ``FedMedian``)."""

    def __init__(self, **fedavg_options: Any) -> None:
        super().__init__("median", **fedavg_options)


class TrimmedMean(RobustFedAvg):
    """Coordinate-wise trimmed mean (Flower's ``FedTrimmedAvg``).

    Args:
        beta: fraction cut from each tail, ``int(beta * n)`` models of the ``n`` replies
            (Flower's meaning; default 0.2). Ignored when ``b`` is given.
        b: a fixed number of models cut from each tail instead (needs ``2b < n`` clients
            per round).
    """

    def __init__(self, beta: float = 0.2, b: int | None = None, **fedavg_options: Any) -> None:
        if b is None and not (isinstance(beta, int | float) and 0.0 <= beta < 0.5):
            raise ValueError(f"TrimmedMean: beta must lie in [0, 0.5), got {beta!r}")
        if b is not None:
            check_int_at_least("TrimmedMean", "b", b, 0)
        super().__init__({"name": "trimmed_mean", "b": 0 if b is None else b},
                         **fedavg_options)
        self.beta = beta
        self.b = b

    def rule_settings(self) -> dict[str, Any]:
        if self.b is not None:
            return {"name": "trimmed_mean", "b": self.b}
        return {"name": "trimmed_mean", "beta": self.beta, "b": "int(beta * replies)"}

    def rule_for_round(self, num_clients: int) -> aggregators.Rule:
        if self.b is not None:
            return self.rule
        return aggregators.TrimmedMean(b=int(self.beta * num_clients))


class GeometricMedian(RobustFedAvg):
    """Geometric median by smoothed Weiszfeld iterations (RFA)."""

    def __init__(self, iterations: int = 8, nu: float = 0.1, **fedavg_options: Any) -> None:
        super().__init__({"name": "geometric_median", "iterations": iterations, "nu": nu},
                         **fedavg_options)


def _check_num_malicious_nodes(owner: str, num_malicious_nodes: int) -> None:
    """Raise ``ValueError`` unless ``num_malicious_nodes`` is an integer >= 0."""
    check_int_at_least(owner, "num_malicious_nodes", num_malicious_nodes, 0)


class MultiKrum(RobustFedAvg):
    """Multi-Krum: average the ``num_nodes_to_select`` models with the best Krum scores,
    weighted by ``weighted_by_key`` (Flower's ``MultiKrum``). Needs at least
    ``2 * num_malicious_nodes + 3`` clients per round, and ``num_nodes_to_select`` at most
    the clients minus ``num_malicious_nodes``; a sampling that gives fewer raises
    ``ValueError`` before the first round."""

    def __init__(self, num_malicious_nodes: int = 0, num_nodes_to_select: int = 1,
                 **fedavg_options: Any) -> None:
        _check_num_malicious_nodes(type(self).__name__, num_malicious_nodes)
        check_int_at_least(type(self).__name__, "num_nodes_to_select", num_nodes_to_select, 1)
        super().__init__({"name": "multi_krum", "f": num_malicious_nodes,
                          "m": num_nodes_to_select}, **fedavg_options)
        self.num_malicious_nodes = num_malicious_nodes
        self.num_nodes_to_select = num_nodes_to_select


class Krum(RobustFedAvg):
    """Krum: the single model with the best Krum score (Flower's ``Krum``). Needs at least
    ``2 * num_malicious_nodes + 3`` clients per round."""

    def __init__(self, num_malicious_nodes: int = 0, **fedavg_options: Any) -> None:
        _check_num_malicious_nodes(type(self).__name__, num_malicious_nodes)
        super().__init__({"name": "krum", "f": num_malicious_nodes}, **fedavg_options)
        self.num_malicious_nodes = num_malicious_nodes


#: ``Bulyan``'s selection rules: the name given -> the rule's ``selection``.
BULYAN_SELECTIONS = {"repeated": "repeated", "multi_krum": "multi_krum"}


def _bulyan_selection(selection_rule: str | Callable[..., Any] | None,
                      selection: str | None) -> str:
    """The ``selection`` of the Bulyan rule for Flower's ``selection_rule`` (or the older
    ``selection``); ``ValueError`` for anything else."""
    if selection_rule is not None and selection is not None:
        raise ValueError("Bulyan: give selection_rule only (selection is its older name), "
                         f"got selection_rule={selection_rule!r} and selection={selection!r}")
    chosen = selection if selection_rule is None else selection_rule
    if chosen is None:
        return "repeated"
    if chosen is select_multikrum:
        return "multi_krum"
    if isinstance(chosen, str) and chosen in BULYAN_SELECTIONS:
        return BULYAN_SELECTIONS[chosen]
    shown = getattr(chosen, "__name__", repr(chosen))
    raise ValueError(
        f"Bulyan: selection_rule must be 'repeated' (the paper's repeated Krum), "
        f"'multi_krum' or Flower's select_multikrum (one Multi-Krum pass, Flower's "
        f"default), got {shown}; a selection function over reply contents is not supported "
        "because the rule selects among the stacked models: write a Rule and pass it to "
        "RobustFedAvg instead"
    )


class Bulyan(RobustFedAvg):
    """Bulyan (Flower's ``Bulyan``). Needs at least ``4 * num_malicious_nodes + 3``
    clients per round; a sampling that gives fewer raises ``ValueError`` before the first
    round.

    Args:
        num_malicious_nodes: the Byzantine budget.
        selection_rule: how the ``n - 2 * num_malicious_nodes`` models are picked before
            the coordinate-wise trimming: ``"repeated"`` (default, the paper: Krum re-run
            after each pick), or ``"multi_krum"`` / Flower's
            ``flwr.serverapp.strategy.multikrum.select_multikrum`` (one pass, the best
            Multi-Krum scores: what Flower's ``Bulyan`` does by default). ``None`` is the
            default. Other selection functions raise ``ValueError``.
        selection: the older name of ``selection_rule`` (same values).
    """

    def __init__(self, num_malicious_nodes: int = 0,
                 selection_rule: str | Callable[..., Any] | None = None, *,
                 selection: str | None = None, **fedavg_options: Any) -> None:
        _check_num_malicious_nodes(type(self).__name__, num_malicious_nodes)
        chosen = _bulyan_selection(selection_rule, selection)
        super().__init__({"name": "bulyan", "f": num_malicious_nodes, "selection": chosen},
                         **fedavg_options)
        self.num_malicious_nodes = num_malicious_nodes
        self.selection_rule = chosen


class CenteredClipping(RobustFedAvg):
    """Centered clipping around the global model: ``v <- v + mean_i clip(x_i - v, tau)``,
    ``iterations`` times. ``tau`` is a length in parameter space (an L2 norm of a model
    difference): pick it from the size of honest updates."""

    def __init__(self, tau: float, iterations: int = 1, **fedavg_options: Any) -> None:
        super().__init__({"name": "centered_clipping", "tau": tau, "iterations": iterations},
                         **fedavg_options)


class NNMRobust(RobustFedAvg):
    """Nearest-neighbour mixing, then ``rule``: each client's model is replaced by the mean
    of its ``n - num_malicious_nodes`` nearest models before ``rule`` aggregates them.
    Needs at least ``2 * num_malicious_nodes + 1`` clients per round (and what ``rule``
    needs)."""

    def __init__(self, num_malicious_nodes: int, rule: RuleSpec = "mean",
                 **fedavg_options: Any) -> None:
        _check_num_malicious_nodes(type(self).__name__, num_malicious_nodes)
        super().__init__({"name": "nnm", "f": num_malicious_nodes, "inner": rule},
                         **fedavg_options)
        self.num_malicious_nodes = num_malicious_nodes


#: Trains the global model on the server's root data: ``(server_round, arrays) -> arrays``.
RootTrainFunction = Callable[[int, ArrayRecord], ArrayRecord]


class FLTrust(RobustFedAvg):
    """FLTrust: the server trains the global model on its small root data set to get a
    trusted update; each client's update is weighted by its positive cosine similarity to
    the trusted one and rescaled to its length.

    Args:
        root_train_fn: ``(server_round, global_arrays) -> trained_arrays``: a few local
            steps on the root data (same keys and shapes). It is called once per round.
    """

    def __init__(self, root_train_fn: RootTrainFunction, **fedavg_options: Any) -> None:
        if not callable(root_train_fn):
            raise ValueError(f"FLTrust: root_train_fn must be callable, got {root_train_fn!r}")
        super().__init__(aggregators.FLTrust(reference_fn=self._trusted_model),
                         **fedavg_options)
        self.root_train_fn = root_train_fn
        self._round = 0

    def rule_settings(self) -> dict[str, Any]:
        return {"name": "fltrust", "root_train_fn": getattr(self.root_train_fn, "__name__",
                                                            repr(self.root_train_fn))}

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        self._round = server_round
        return super().aggregate_train(server_round, replies)

    def _trusted_model(self, global_vector: Tensor) -> Tensor:
        """The global model after the root-data training, as a vector."""
        layout = self._layout
        if layout is None:
            raise ValueError("FLTrust: the global model is unknown; the strategy must send "
                             "it (configure_train) or be told (set_global_model) first")
        trained = self.root_train_fn(self._round, layout.to_record(global_vector))
        if not isinstance(trained, ArrayRecord):
            raise ValueError(f"FLTrust: root_train_fn must return an ArrayRecord, got "
                             f"{type(trained).__name__}")
        problem = layout.mismatch(trained)
        if problem is not None:
            raise ValueError(f"FLTrust: root_train_fn returned a different model: {problem}")
        vector = layout.to_vector(trained)
        return vector.to(dtype=global_vector.dtype, device=global_vector.device)

