"""``RobustFedAvg``: Flower's ``FedAvg`` with the model aggregation replaced by any robust
rule of :mod:`flwr_tempered.aggregators`.

Everything else is ``FedAvg``'s: sampling, the messages sent, metric aggregation (over the
replies that passed the checks), evaluation. The strategy remembers the global model it
sent in :meth:`configure_train`, because that model is the reference point of the rules
that have one (centered clipping, FLTrust, BALANCE) and the layout every reply must match.

A reply that is malformed (no or several ``ArrayRecord``s, missing weight key, wrong keys
or shapes, undecodable or non-numeric arrays, NaN or Inf) is dropped with its reason logged
and counted as refused by the rule, which lowers the rule's Byzantine budget as for any
provably faulty input. An error reply (the client reports a failure) is listed and logged
the same way but, like a node that stayed silent, does not count against the budget. If
too few replies are left for the rule, the round keeps the current global model (as
Flower's ``Bulyan`` does) instead of failing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from flwr_tempered.aggregators import Rule, resolve_rule

from .records import ModelLayout, screen_replies

__all__ = ["RobustFedAvg"]

RuleSpec = Rule | str | Mapping[str, Any]


class RobustFedAvg(FedAvg):
    """``FedAvg`` whose model aggregation is the robust ``rule``.

    Args:
        rule: a rule object, a registered rule name (``"median"``), or a mapping
            ``{"name": "trimmed_mean", "b": 2}``. Server semantics: the rule's statistics
            run over the clients' models; the current global model is the reference point
            where the rule uses one (see :meth:`flwr_tempered.aggregators.Rule.aggregate_clients`).
            ``"mean"`` gives exactly ``FedAvg``.
        device: where the rule runs (``"cuda"``, ``"cuda:1"``, ``"cpu"``; default: the
            CPU). The replies are decoded on the host and the stacked models moved there
            once per round; on a GPU the rule's distances and sorts cost a fraction of
            the decoding.
        **fedavg_options: any keyword argument of ``flwr.serverapp.strategy.FedAvg``
            (``fraction_train``, ``min_available_nodes``, ``weighted_by_key``, ...).

    Attributes:
        history: one entry per aggregated round: the round, how many replies were accepted
            and dropped (with reasons), and the rule's statistics.
    """

    def __init__(self, rule: RuleSpec = "mean", *, device: str | torch.device | None = None,
                 **fedavg_options: Any) -> None:
        super().__init__(**fedavg_options)
        self.rule = resolve_rule(rule)
        try:
            self.device = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{type(self).__name__}: device {device!r} is not a torch "
                             f"device ({error})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{type(self).__name__}: device {device!r} asked for, but "
                             "torch sees no CUDA device")
        self.global_arrays: ArrayRecord | None = None
        self._layout: ModelLayout | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------- logging
    def rule_settings(self) -> dict[str, Any]:
        """The rule's name and hyper-parameters, as logged by :meth:`summary`."""
        return self.rule.config()

    def summary(self) -> None:
        """Log the robust rule and its settings, then ``FedAvg``'s summary."""
        settings = self.rule_settings()
        log(INFO, "\t├──> Robust aggregation (flwr-tempered): %s", type(self).__name__)
        log(INFO, "\t│\t├── Rule: %s", settings.get("name"))
        items = [(k, v) for k, v in settings.items() if k != "name"]
        for position, (key, value) in enumerate(items):
            branch = "└──" if position == len(items) - 1 else "├──"
            log(INFO, "\t│\t%s %s: %s", branch, key, value)
        super().summary()

    # -------------------------------------------------------------------------- rounds
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``FedAvg``'s, after remembering ``arrays`` as this round's global model."""
        self.set_global_model(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def set_global_model(self, arrays: ArrayRecord) -> None:
        """Use ``arrays`` as the reference point and reply layout of the next aggregation
        (done by :meth:`configure_train`; call it yourself when driving
        :meth:`aggregate_train` by hand)."""
        self.global_arrays = arrays
        self._layout = ModelLayout.of(arrays)

    def rule_for_round(self, num_clients: int) -> Rule:
        """The rule to apply to ``num_clients`` accepted models (subclasses whose settings
        depend on the number of clients override this)."""
        return self.rule

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, aggregate the accepted models with the robust rule, and
        aggregate the accepted replies' metrics as ``FedAvg`` does."""
        replies = list(replies)
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        contents = [message.content for message in valid]
        screened = screen_replies(contents, self._layout, self.weighted_by_key)
        dropped = [(valid[i].metadata.src_node_id, reason) for i, reason in screened.dropped]
        # Error replies (the client failed) are listed too, but like a silent node they do
        # not count against the rule's Byzantine budget.
        dropped += [(message.metadata.src_node_id,
                     f"the reply is an error (code {message.error.code}): "
                     f"{message.error.reason}") for message in errors]
        for node_id, reason in dropped:
            log(WARNING, "aggregate_train: dropped the reply of node %d: %s", node_id, reason)
        entry: dict[str, Any] = {
            "round": server_round,
            "accepted": len(screened.accepted),
            "dropped": dropped,
        }
        self.history.append(entry)
        if not screened.accepted:
            log(WARNING, "aggregate_train: no usable reply in round %d; the global model is "
                "kept", server_round)
            return None, None
        layout = screened.layout
        reference = (layout.to_vector(self.global_arrays) if self.global_arrays is not None
                     and self._layout is layout else screened.models.mean(dim=0))
        rule = self.rule_for_round(len(screened.accepted) + len(screened.dropped))
        try:
            aggregate = rule.aggregate_clients(
                reference.to(self.device), screened.models.to(self.device),
                screened.weights.to(self.device), round=max(server_round - 1, 0),
                refused=len(screened.dropped),
            )
        except ValueError as error:
            log(WARNING, "aggregate_train: %s cannot aggregate round %d (%s); the global "
                "model is kept", rule.name, server_round, error)
            entry["skipped"] = str(error)
            return None, None
        entry["rule_stats"] = dict(rule.stats)
        arrays = layout.to_record(aggregate)
        accepted_contents = [contents[i] for i in screened.accepted]
        metrics = self.train_metrics_aggr_fn(accepted_contents, self.weighted_by_key)
        return arrays, metrics
