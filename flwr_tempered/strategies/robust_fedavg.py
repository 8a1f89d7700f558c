"""``RobustFedAvg``: Flower's ``FedAvg`` with the model aggregation replaced by any robust
rule of :mod:`flwr_tempered.aggregators`.

Everything else is ``FedAvg``'s: sampling, the messages sent, metric aggregation (over the
replies that passed the checks), evaluation. The strategy remembers the global model it
sent in :meth:`configure_train`, because that model is the reference point of the rules
that have one (centered clipping, FLTrust, BALANCE) and the layout every reply must match.

Budget check: before the first round's messages go out (in :meth:`RobustFedAvg.start` and
again in the first :meth:`configure_train`), the strategy works out how many clients
``FedAvg`` samples per round (``max(int(fraction_train * connected), min_train_nodes)``)
and asks the rule whether it can aggregate that many (``start`` first waits for
``min_available_nodes`` to connect, as the sampling would). If not, it raises ``ValueError``
naming the rule's budget (``num_malicious_nodes``, ...), the sample and the fix, instead of
refusing every round and ending with the initial model. Flower's ``MultiKrum`` aggregates
whatever it gets and its ``Bulyan`` skips the round; a run that cannot be robust as
configured is better stopped. Later rounds whose sample shrank (nodes left) only warn.

A reply that is malformed (no or several ``ArrayRecord``s, missing weight key, wrong keys
or shapes, undecodable or non-numeric arrays, NaN or Inf) is dropped with its reason logged
and counted as refused by the rule, which lowers the rule's Byzantine budget as for any
provably faulty input. An error reply (the client reports a failure) is listed and logged
the same way but, like a node that stayed silent, does not count against the budget. If
too few replies are left for the rule, the round keeps the current global model (as
Flower's ``Bulyan`` does) with a warning; the final ``Result.arrays`` of :meth:`start` is
never empty (the initial model when no round aggregated).

Vocabulary: the rules use the papers' letters (``f``, ``m``) and speak of a node's "own
plus received" models; on the server path every option, log line and error message uses
Flower's names instead (``num_malicious_nodes``, ``num_nodes_to_select``, clients and
replies), see :data:`FLOWER_NAMES` and :func:`server_wording`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from flwr_tempered.aggregators import Rule, resolve_rule
from flwr_tempered.aggregators.composition import PreAggregation
from flwr_tempered.aggregators.krum import MultiKrum as MultiKrumRule

from .records import ModelLayout, screen_replies
from .sample_announcement import announce_sample as with_announced_sample

__all__ = [
    "BUDGET_SETTINGS",
    "FLOWER_NAMES",
    "RobustFedAvg",
    "flower_settings",
    "resolve_server_rule",
    "server_wording",
    "train_budget_problem",
    "train_sample_size",
]

RuleSpec = Rule | str | Mapping[str, Any]

#: A rule parameter (the papers' letter) -> the name Flower's strategies give it. Server-side
#: options, summaries and messages use the Flower name.
FLOWER_NAMES: dict[str, str] = {
    "f": "num_malicious_nodes",
    "m": "num_nodes_to_select",
    "selection": "selection_rule",
}

#: Settings (in Flower's names) that set how many clients a rule needs; a budget error
#: suggests lowering them.
BUDGET_SETTINGS = ("num_malicious_nodes", "num_nodes_to_select", "b")

#: How far above the sample :func:`train_budget_problem` looks for a client count that fits.
_SEARCH_SPAN = 10_000

#: Seconds between two looks at the connected nodes while waiting for them.
_NODE_POLL_S = 0.1

#: The rules' decentralized wording -> the server's, applied in order by server_wording.
_SERVER_WORDING: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\s*\(own plus received[^)]*\)"), ""),
    (re.compile(r"\bown plus received\b"), "the clients' models"),
    (re.compile(r"\bneighbou?r(s|'s)?\b"), "client"),
    (re.compile(r"\b(\d+)f\b"), r"\1 * num_malicious_nodes"),
    (re.compile(r"(?<![\w'\"])f(?![\w'\"(])"), "num_malicious_nodes"),
    (re.compile(r"(?<![\w'\"])m(?![\w'\"(])"), "num_nodes_to_select"),
)


# --------------------------------------------------------------------------- vocabulary
def server_wording(text: str) -> str:
    """``text`` (a rule's message) in the server's vocabulary: Flower's parameter names for
    ``f`` and ``m``, and clients instead of a node's own plus received models."""
    for pattern, replacement in _SERVER_WORDING:
        text = pattern.sub(replacement, text)
    return text


def flower_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A rule's :meth:`~flwr_tempered.aggregators.Rule.config` with Flower's parameter
    names (nested rules, such as a wrapper's ``inner``, too)."""
    return {FLOWER_NAMES.get(key, key): (flower_settings(value) if isinstance(value, Mapping)
                                         else value)
            for key, value in config.items()}


def _rule_params(params: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """A rule mapping with Flower's names turned back into the rule's letters."""
    rule_names = {flower: letter for letter, flower in FLOWER_NAMES.items()}
    translated: dict[str, Any] = {}
    for key, value in params.items():
        letter = rule_names.get(key, key)
        if letter in translated:
            raise ValueError(f"{owner}: {FLOWER_NAMES[letter]} is given twice (as "
                             f"{FLOWER_NAMES[letter]} and as {letter}); give it once, as "
                             f"{FLOWER_NAMES[letter]}")
        translated[letter] = _rule_spec(value, owner) if key == "inner" else value
    return translated


def _rule_spec(spec: Any, owner: str) -> Any:
    """``spec`` with the Flower names of a mapping's parameters translated."""
    return _rule_params(spec, owner) if isinstance(spec, Mapping) else spec


def resolve_server_rule(spec: RuleSpec, owner: str) -> Rule:
    """The rule of ``spec`` (a rule, a name, or a mapping whose parameters may use Flower's
    names: ``{"name": "meamed", "num_malicious_nodes": 2}``); a bad spec raises
    ``ValueError`` in the server's vocabulary, prefixed with ``owner``."""
    try:
        return resolve_rule(_rule_spec(spec, owner))
    except ValueError as error:
        message = str(error)
        if message.startswith(f"{owner}:"):
            raise
        raise ValueError(f"{owner}: {server_wording(message)}") from None


# ------------------------------------------------------------------------------ budget
def train_sample_size(strategy: FedAvg, num_nodes: int) -> int:
    """How many of ``num_nodes`` connected nodes ``strategy.configure_train`` samples: as
    in Flower's ``FedAvg``, ``max(int(num_nodes * fraction_train), min_train_nodes)``,
    and none when ``fraction_train`` is 0."""
    if strategy.fraction_train == 0.0:
        return 0
    return max(int(num_nodes * strategy.fraction_train), strategy.min_train_nodes)


def _count_problem(rule_for_round: Callable[[int], Rule], num_clients: int) -> str | None:
    """Why the rule cannot aggregate ``num_clients`` clients' models, or ``None``."""
    try:
        rule_for_round(num_clients).check_client_count(num_clients)
    except ValueError as error:
        return str(error)
    return None


def _clients_needed(rule_for_round: Callable[[int], Rule], above: int) -> int | None:
    """The smallest client count above ``above`` that the rule can aggregate (``None`` if
    none within :data:`_SEARCH_SPAN`)."""
    for count in range(above + 1, above + 1 + _SEARCH_SPAN):
        if _count_problem(rule_for_round, count) is None:
            return count
    return None


def _budget_text(settings: Mapping[str, Any]) -> str:
    """The settings that decide the client count, as ``name = value`` pairs."""
    shown = {k: v for k, v in settings.items() if k in BUDGET_SETTINGS} or {
        k: v for k, v in settings.items() if k != "name"}
    return ", ".join(f"{key} = {value}" for key, value in shown.items()) or "its settings"


def _fraction_for(needed: int, num_nodes: int) -> float:
    """The smallest ``fraction_train`` (in hundredths) that samples ``needed`` of
    ``num_nodes`` nodes, as ``FedAvg`` rounds ``num_nodes * fraction_train`` down."""
    fraction = math.ceil(100 * needed / num_nodes) / 100
    while int(num_nodes * fraction) < needed and fraction < 1.0:
        fraction = round(fraction + 0.01, 2)
    return min(fraction, 1.0)


def train_budget_problem(
    owner: str, strategy: FedAvg, rule_for_round: Callable[[int], Rule],
    settings: Mapping[str, Any], num_nodes: int,
) -> str | None:
    """Why the rule cannot aggregate the clients ``strategy`` samples per round out of
    ``num_nodes`` connected nodes, and how to fix it; ``None`` when it can.

    ``rule_for_round(n)`` is the rule applied to ``n`` clients and ``settings`` its
    settings in Flower's names (for the message).
    """
    sampled = train_sample_size(strategy, num_nodes)
    if sampled == 0:
        return None
    problem = _count_problem(rule_for_round, sampled)
    if problem is None:
        return None
    budget = _budget_text(settings)
    lowered = [key for key in BUDGET_SETTINGS if isinstance(settings.get(key), int)
               and settings[key] > (1 if key == "num_nodes_to_select" else 0)]
    needed = _clients_needed(rule_for_round, sampled)
    sampling = (f"(fraction_train = {strategy.fraction_train:g} of the {num_nodes} "
                f"connected nodes, at least min_train_nodes = {strategy.min_train_nodes})")
    fixes = []
    if needed is None:
        reason = (f"cannot aggregate the {sampled} clients sampled per round {sampling}: "
                  f"{server_wording(problem)}")
    else:
        reason = (f"needs at least {needed} clients per round, but each round samples "
                  f"{sampled} clients {sampling}")
        if needed <= num_nodes:
            fixes.append(f"raise fraction_train to {_fraction_for(needed, num_nodes):g} or "
                         f"min_train_nodes to {needed}")
        else:
            fixes.append(f"raise min_train_nodes to {needed} and connect at least {needed} "
                         f"nodes (only {num_nodes} are connected)")
    if lowered:
        fixes.append(f"lower {' or '.join(lowered)}")
    advice = f"; to fix it, {', or '.join(fixes)}" if fixes else ""
    return f"{owner}: {budget} {reason}{advice}"


def _connected_nodes(grid: Grid, minimum: int) -> int:
    """The number of connected nodes, once at least ``minimum`` are (``FedAvg``'s sampling
    waits for ``min_available_nodes`` too)."""
    waited = False
    while (connected := len(list(grid.get_node_ids()))) < minimum:
        if not waited:
            log(INFO, "Waiting for %d nodes to connect before checking the budget "
                "(%d connected)", minimum, connected)
            waited = True
        time.sleep(_NODE_POLL_S)
    return connected


def _reads_client_weights(rule: Rule) -> bool:
    """Whether the rule's server form weights the clients' models (by ``weighted_by_key``)."""
    if isinstance(rule, MultiKrumRule):  # averages its picks by weight, Krum picks one
        return rule.m > 1
    if isinstance(rule, PreAggregation):
        return _reads_client_weights(rule.inner)
    return bool(rule.uses_weights)


def _log_branches(prefix: str, lines: Sequence[str]) -> None:
    """Log ``lines`` as the branches of one summary node, the last one closing it."""
    for position, line in enumerate(lines):
        log(INFO, "%s%s %s", prefix, "└──" if position == len(lines) - 1 else "├──", line)


# ---------------------------------------------------------------------------- strategy
class RobustFedAvg(FedAvg):
    """``FedAvg`` whose model aggregation is the robust ``rule``.

    Args:
        rule: a rule object, a registered rule name (``"median"``), or a mapping
            ``{"name": "trimmed_mean", "b": 2}`` (budget parameters may take Flower's
            names: ``{"name": "meamed", "num_malicious_nodes": 2}``). Server semantics: the
            rule's statistics run over the clients' models; the current global model is
            the reference point where the rule uses one (see
            :meth:`flwr_tempered.aggregators.Rule.aggregate_clients`). ``"mean"`` gives
            exactly ``FedAvg``.
        device: where the rule runs (``"cuda"``, ``"cuda:1"``, ``"cpu"``; default: the
            CPU). The replies are decoded on the host and the stacked models moved there
            once per round; on a GPU the rule's distances and sorts cost a fraction of
            the decoding.
        **fedavg_options: any keyword argument of ``flwr.serverapp.strategy.FedAvg``
            (``fraction_train``, ``min_available_nodes``, ``weighted_by_key``, ...).

    Raises:
        ValueError: at construction for a bad rule or device; in :meth:`start` and the
            first :meth:`configure_train` when the rule cannot aggregate the number of
            clients sampled per round (see :meth:`check_train_budget`).

    Attributes:
        announce_sample: whether each train message tells the sampled clients the round's
            sampled node ids (default ``True``; see
            :mod:`flwr_tempered.strategies.sample_announcement`: it lets a simulated
            colluding attack train only the sampled honest partitions).
        history: one entry per aggregated round: the round, how many replies were accepted
            and dropped (with reasons), and the rule's statistics (or why it was skipped).
    """

    #: Tell the sampled clients the round's sample (see the class docstring).
    announce_sample: bool = True

    def __init__(self, rule: RuleSpec = "mean", *, device: str | torch.device | None = None,
                 **fedavg_options: Any) -> None:
        super().__init__(**fedavg_options)
        self.rule = resolve_server_rule(rule, type(self).__name__)
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
        self._budget_checked = False
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------- logging
    def rule_settings(self) -> dict[str, Any]:
        """The rule's name and hyper-parameters in Flower's names, as logged by
        :meth:`summary`."""
        return flower_settings(self.rule.config())

    def summary(self) -> None:
        """Log the robust rule and its settings, then the sampling and record keys as
        ``FedAvg`` does; the weight key is shown as the model's weighting only for rules
        that read weights (the others use it for the metrics alone)."""
        settings = self.rule_settings()
        name = settings.get("name")
        log(INFO, "\t├──> Robust aggregation (flwr-tempered): %s", type(self).__name__)
        _log_branches("\t│\t", [f"Rule: {name}", *(f"{key}: {value}" for key, value
                                                    in settings.items() if key != "name")])
        log(INFO, "\t├──> Sampling:")
        _log_branches("\t│\t", [
            f"Fraction: train ({self.fraction_train:.2f}) | evaluate "
            f"({self.fraction_evaluate:.2f})",
            f"Minimum nodes: train ({self.min_train_nodes}) | evaluate "
            f"({self.min_evaluate_nodes})",
            f"Minimum available nodes: {self.min_available_nodes}",
        ])
        weight = (f"Weighted by: '{self.weighted_by_key}'"
                  if _reads_client_weights(self.rule_for_round(self.min_train_nodes))
                  else f"Metrics averaged by: '{self.weighted_by_key}' ({name} ignores "
                       "weights in the model)")
        log(INFO, "\t└──> Keys in records:")
        _log_branches("\t\t", [weight, f"ArrayRecord key: '{self.arrayrecord_key}'",
                               f"ConfigRecord key: '{self.configrecord_key}'"])

    # -------------------------------------------------------------------------- budget
    def check_train_budget(self, num_nodes: int) -> None:
        """Raise ``ValueError`` if the rule cannot aggregate the clients sampled per round
        out of ``num_nodes`` connected nodes (the message names the rule's budget, the
        sample and how to fix it)."""
        problem = train_budget_problem(type(self).__name__, self, self.rule_for_round,
                                       self.rule_settings(), num_nodes)
        if problem is not None:
            raise ValueError(problem)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """``FedAvg``'s ``start``, after checking the budget against the connected nodes
        (before any round); ``Result.arrays`` is the initial model if no round could
        aggregate, never an empty record.

        The check waits until ``min_available_nodes`` nodes are connected, as the first
        round's sampling would: a simulation registers its SuperNodes a moment after the
        ServerApp starts, and a count taken before would be zero.
        """
        self.check_train_budget(_connected_nodes(grid, self.min_available_nodes))
        self._budget_checked = False
        result = super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                               evaluate_config, evaluate_fn)
        if len(result.arrays) == 0:
            log(WARNING, "%s: no round aggregated a model; the result holds the initial "
                "global model", type(self).__name__)
            result.arrays = initial_arrays
        return result

    # -------------------------------------------------------------------------- rounds
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``FedAvg``'s, after remembering ``arrays`` as this round's global model and
        checking the budget against the nodes connected now: the first round configured
        raises ``ValueError`` when it does not fit, later ones warn. The messages carry the
        round's sample when :attr:`announce_sample` is set."""
        problem = train_budget_problem(type(self).__name__, self, self.rule_for_round,
                                       self.rule_settings(), len(list(grid.get_node_ids())))
        if problem is not None and not self._budget_checked:
            raise ValueError(problem)
        if problem is not None:
            log(WARNING, "configure_train: round %d: %s", server_round, problem)
        self._budget_checked = True
        self.set_global_model(arrays)
        messages = super().configure_train(server_round, arrays, config, grid)
        return with_announced_sample(messages) if self.announce_sample else messages

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
        counted = len(screened.accepted) + len(screened.dropped)
        if _count_problem(self.rule_for_round, counted) is not None:
            needed = _clients_needed(self.rule_for_round, counted)
            malformed = (f" ({len(screened.dropped)} of them malformed, which count against "
                         "the budget)" if screened.dropped else "")
            wants = (f"needs at least {needed} replies, got {counted}" if needed is not None
                     else f"cannot aggregate {counted} replies")
            entry["skipped"] = (
                f"{type(self).__name__} cannot aggregate round {server_round}: "
                f"{_budget_text(self.rule_settings())} {wants}{malformed}")
            log(WARNING, "aggregate_train: %s; the global model is kept", entry["skipped"])
            return None, None
        layout = screened.layout
        reference = (layout.to_vector(self.global_arrays) if self.global_arrays is not None
                     and self._layout is layout else screened.models.mean(dim=0))
        rule = self.rule_for_round(counted)
        try:
            aggregate = rule.aggregate_clients(
                reference.to(self.device), screened.models.to(self.device),
                screened.weights.to(self.device), round=max(server_round - 1, 0),
                refused=len(screened.dropped),
            )
        except ValueError as error:
            entry["skipped"] = (f"{type(self).__name__} cannot aggregate round "
                                f"{server_round}: {server_wording(str(error))}")
            log(WARNING, "aggregate_train: %s; the global model is kept", entry["skipped"])
            return None, None
        entry["rule_stats"] = dict(rule.stats)
        if rule.accepted_rows is not None and not bool(rule.accepted_rows.any()):
            # A filter that lets no client in keeps the global model: say so, every round,
            # rather than let the run look like training (BALANCE's shrinking radius).
            log(WARNING, "aggregate_train: %s accepted none of the %d replies in round %d; "
                "the global model is kept", type(self).__name__, len(screened.accepted),
                server_round)
        arrays = layout.to_record(aggregate)
        accepted_contents = [contents[i] for i in screened.accepted]
        metrics = self.train_metrics_aggr_fn(accepted_contents, self.weighted_by_key)
        return arrays, metrics
