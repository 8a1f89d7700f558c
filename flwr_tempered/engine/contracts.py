"""The contracts between the batched engine and its batched rules and attacks.

The batched engine (:mod:`flwr_tempered.engine`) holds every node of a run as rows of one
``[N, d]`` tensor on one device. A *batched rule* aggregates a chunk of honest nodes at
once; a *batched attack* crafts the vectors of every (Byzantine sender, honest target)
pair at once. Both must give, row for row, what the per-node objects
(:class:`~flwr_tempered.aggregators.Rule`, :class:`~flwr_tempered.attacks.AttackBase`)
give on the same inputs, statistics included, so a run's ``metrics.jsonl`` does not
depend on the engine (up to float rounding).

Neighbourhoods differ in size: they are padded to the largest one in the chunk and a
boolean mask says which slots hold a vector. No Python loop over nodes on the hot path;
where a per-node random stream must be replayed exactly (bucketing's shuffles, Gaussian
noise) a loop draws the random numbers on the CPU and the arithmetic stays batched.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from flwr_tempered.aggregators import Rule
from flwr_tempered.attacks import AttackBase

#: ``losses(nodes, candidates)``: loss of each candidate model ``candidates[r, c]``
#: (``Tensor[R, C, d]``) on node ``nodes[r]``'s next local batch, in eval mode, as
#: ``Tensor[R, C]`` (what :meth:`~flwr_tempered.node.task.SupervisedTask.loss` gives per
#: node). MOZI's performance check uses it.
BatchedLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class RuleInputs:
    """What a chunk of ``R`` honest nodes aggregates in one round (padded to ``K`` slots).

    Attributes:
        nodes: ``Tensor[R]`` (int64, on the device): the topology positions.
        own: ``Tensor[R, d]``: each node's own (half-step) model; all finite.
        received: ``Tensor[R, K, d]``: the received vectors, slot order = the order the
            per-node runtime passes them (the topology's neighbour order, skipping
            neighbours that sent nothing). Padded slots hold zeros. Rows may hold NaN/Inf.
        present: ``Tensor[R, K]`` bool: the slot holds a received vector. Every row has at
            least one present slot (nodes that received nothing are not aggregated).
        weights: ``Tensor[R, K + 1]``: own's mixing weight then each slot's (zero on padded
            slots); own's weight is ``1 - sum(slot weights)``, as
            :meth:`~flwr_tempered.node.Node.mixing_row` makes it.
        refused: ``Tensor[R]`` int64: inputs already refused upstream (malformed); they
            count towards the rule's input count and lower its budget, as ``refused=`` of
            :meth:`Rule.__call__` does.
        round: the round index passed to the per-node rule.
    """

    nodes: Tensor
    own: Tensor
    received: Tensor
    present: Tensor
    weights: Tensor
    refused: Tensor
    round: int

    @property
    def chunk(self) -> int:
        """``R``, the number of nodes in the chunk."""
        return int(self.own.shape[0])

    @property
    def slots(self) -> int:
        """``K``, the padded neighbourhood size."""
        return int(self.received.shape[1])


#: Per-node statistics of one call: ``stats[key]`` is ``Tensor[R]`` (float64 or the
#: model dtype, on any device), NaN where the per-node rule would not have set ``key``.
#: Keys and values equal the per-node rule's ``rule.stats`` after the same call
#: (``received``, ``rejected_nonfinite``, ``refused`` when > 0, and the rule's own).
BatchedStats = dict[str, Tensor]


def finite_slots(received: Tensor, present: Tensor) -> Tensor:
    """``Tensor[R, K]`` bool: present slots whose vector holds only finite values (the
    rows a per-node rule keeps after its non-finite filter). As
    :func:`~flwr_tempered.aggregators.base.finite_rows`: one cheap sum per slot, and the
    exact check only where the sum is not finite."""
    finite = torch.isfinite(received.sum(dim=2))
    suspects = (present & ~finite).nonzero()
    if suspects.numel():  # a NaN, an Inf, or a finite row whose sum overflows
        rows, slots = suspects[:, 0], suspects[:, 1]
        finite[rows, slots] = torch.isfinite(received[rows, slots]).all(dim=1)
    return present & finite


def common_stats(inputs: RuleInputs, finite: Tensor) -> BatchedStats:
    """The statistics every per-node rule sets in :meth:`Rule.__call__`: ``received``
    (present slots), ``rejected_nonfinite`` and, where > 0, ``refused``."""
    received = inputs.present.sum(dim=1).double()
    rejected = (inputs.present & ~finite).sum(dim=1).double()
    refused = inputs.refused.double()
    stats: BatchedStats = {"received": received, "rejected_nonfinite": rejected}
    if bool((refused > 0).any()):
        stats["refused"] = torch.where(refused > 0, refused, torch.full_like(refused, math.nan))
    return stats


class BatchedRule(ABC):
    """A rule for a chunk of nodes at once, built from the per-node rule object of the
    run (which has validated the hyper-parameters). Subclasses are registered for the
    per-node rule class they replace with :func:`register_batched_rule`.

    The per-node contract holds row by row: non-finite received rows are dropped and
    counted, budgets (``b``, ``f``) are lowered by the rows rejected and refused, a node
    whose every received row was rejected keeps a copy of its own model. Nodes whose
    input count the per-node rule refuses (``check_input_count``) never reach a batched
    rule: the engine drops them for the round, as the per-node runtime does.

    State kept between rounds (centered clipping's centre, bucketing's generators) lives
    in the batched rule, indexed by topology position, for the ``num_nodes`` positions.
    """

    def __init__(self, rule: Rule, num_nodes: int, device: torch.device,
                 loss: BatchedLoss | None = None) -> None:
        self.rule = rule
        self.num_nodes = num_nodes
        self.device = device
        self.loss = loss
        #: ``[R, K]`` bool after a call: the slots that entered each node's average, for
        #: rules that accept or reject whole inputs (the per-node ``Rule.accepted_rows``);
        #: ``None`` for the others. The engine splits it into honest and Byzantine inputs.
        self.accepted_slots: Tensor | None = None

    @abstractmethod
    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        """The aggregated models ``Tensor[R, d]`` (own's dtype) and the per-node stats."""

    def state_dict(self, positions: Sequence[int]) -> dict[str, Any]:
        """The state kept for ``positions`` between rounds (nested dicts of tensors and
        plain values), so a ClientApp hosting those nodes can persist it. Stateless rules
        keep nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any], positions: Sequence[int]) -> None:
        """Restore what :meth:`state_dict` returned for ``positions``."""

    #: Whether the batched rule needs every received vector at once (coordinate-wise
    #: rules) rather than distances and weights; the engine sizes chunks with it.
    gathers: ClassVar[bool] = True


class PerNodeRule(BatchedRule):
    """The fallback for rules without a batched version: one per-node rule object per
    position, called node by node (same results by construction)."""

    def __init__(self, rule_factory: Callable[[int], Rule], num_nodes: int,
                 device: torch.device) -> None:
        self.rules: dict[int, Rule] = {}
        self.rule_factory = rule_factory
        super().__init__(rule_factory(-1), num_nodes, device)

    def rule_of(self, position: int) -> Rule:
        """The per-node rule object of ``position`` (built on first use)."""
        if position not in self.rules:
            self.rules[position] = self.rule_factory(position)
        return self.rules[position]

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        results = []
        rows: list[dict[str, float]] = []
        accepted = torch.zeros_like(inputs.present)
        any_accepted = False
        for r, position in enumerate(inputs.nodes.tolist()):
            rule = self.rule_of(int(position))
            present = inputs.present[r]
            received = inputs.received[r][present]
            weights = torch.cat([inputs.weights[r, :1], inputs.weights[r, 1:][present]])
            results.append(rule(inputs.own[r], received, weights, round=inputs.round,
                                refused=int(inputs.refused[r])))
            rows.append(dict(rule.stats))
            if rule.accepted_rows is not None:
                accepted[r, present] = rule.accepted_rows.to(accepted.device)
                any_accepted = True
        self.accepted_slots = accepted if any_accepted else None
        keys = sorted({k for row in rows for k in row})
        stats = {k: torch.tensor([row.get(k, math.nan) for row in rows], dtype=torch.float64)
                 for k in keys}
        return torch.stack(results), stats

    def state_dict(self, positions: Sequence[int]) -> dict[str, Any]:
        return {str(p): self.rules[p].state_dict() for p in positions if p in self.rules}

    def load_state_dict(self, state: Mapping[str, Any], positions: Sequence[int]) -> None:
        for p in positions:
            if str(p) in state:
                self.rule_of(p).load_state_dict(state[str(p)])


_BATCHED_RULES: dict[type[Rule], type[BatchedRule]] = {}


def register_batched_rule(rule_class: type[Rule]) -> Callable[[type[BatchedRule]],
                                                               type[BatchedRule]]:
    """Class decorator: the batched version of the per-node ``rule_class`` (exact class:
    a user's subclass of a built-in rule falls back to the per-node objects)."""

    def decorate(cls: type[BatchedRule]) -> type[BatchedRule]:
        _BATCHED_RULES[rule_class] = cls
        return cls

    return decorate


def batched_rule_class(rule: Rule) -> type[BatchedRule] | None:
    """The batched version of ``rule``'s class, or ``None`` (use :class:`PerNodeRule`).
    A batched class may refuse a configuration it does not cover by raising
    ``NotImplementedError`` from its constructor; the engine then falls back too."""
    return _BATCHED_RULES.get(type(rule))


# --------------------------------------------------------------------------- attacks
@dataclass(frozen=True)
class AttackInputs:
    """The omniscient view of every Byzantine node of a run in one round.

    Models are rows of ``half`` (every node's half-step model: what honest nodes send;
    the Byzantine rows hold their own honestly trained models). The per-node view of
    attacker ``a`` and target ``t`` (:class:`~flwr_tempered.attacks.TargetView`) is, for
    edge ``e`` with ``attackers[e] = a`` and ``targets[e] = t``, and ``i = target_row[e]``:

    - ``model``: ``half[t]``; ``honest_neighbors``: ``half[honest[i, :][honest_mask[i]]]``
      with weights ``honest_weights[i][honest_mask[i]]`` (topology order);
    - ``byzantine_weight``, ``n_byzantine``, ``self_weight``: ``[i]`` of those tensors;
    - ``previous``: ``previous[t]`` (``None`` when ``previous`` is ``None``);
    - the attacker's ``own``: ``half[a]``; ``own_previous``: ``previous[a]``.

    Edges are ordered by attacker, then by the attacker's neighbour order (the order of
    the per-node ``view.targets``), and list only targets that give their Byzantine
    neighbours a positive weight and whose models are present.

    Attributes:
        half: ``Tensor[N, d]``.
        previous: ``Tensor[N, d]`` (models at the start of the round) or ``None``.
        attackers, targets, target_row: ``Tensor[E]`` int64.
        target_nodes: ``Tensor[T]`` int64: the distinct targets, row ``i`` of the
            per-target tensors below.
        honest, honest_mask, honest_weights: ``Tensor[T, H]`` (padded, int64 / bool /
            model dtype).
        byzantine_weight, self_weight: ``Tensor[T]`` (model dtype); ``n_byzantine``:
            ``Tensor[T]`` int64.
        round, total_rounds: as in :class:`~flwr_tempered.attacks.AttackView`.
    """

    half: Tensor
    previous: Tensor | None
    attackers: Tensor
    targets: Tensor
    target_row: Tensor
    target_nodes: Tensor
    honest: Tensor
    honest_mask: Tensor
    honest_weights: Tensor
    byzantine_weight: Tensor
    n_byzantine: Tensor
    self_weight: Tensor
    round: int
    total_rounds: int


class BatchedAttack(ABC):
    """A model-poisoning attack for every Byzantine node at once, built from the per-node
    attack objects of the run (one per Byzantine position, already seeded: their
    generators are the random streams to replay). Registered for the per-node class with
    :func:`register_batched_attack`."""

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        self.attacks = attacks
        self.device = device
        self.target_rule = target_rule
        #: Largest temporary (in tensor elements) the attack may gather at once, e.g.
        #: ``[chunk of targets, H + 1, d]``; the engine sets it from the device budget.
        self.max_elements = 1 << 27

    @abstractmethod
    def __call__(self, inputs: AttackInputs) -> Tensor:
        """``Tensor[E, d]``: row ``e`` is what ``attackers[e]`` sends ``targets[e]``."""


_BATCHED_ATTACKS: dict[type[AttackBase], type[BatchedAttack]] = {}


def register_batched_attack(attack_class: type[AttackBase]) -> Callable[
        [type[BatchedAttack]], type[BatchedAttack]]:
    """Class decorator: the batched version of the per-node ``attack_class`` (exact
    class)."""

    def decorate(cls: type[BatchedAttack]) -> type[BatchedAttack]:
        _BATCHED_ATTACKS[attack_class] = cls
        return cls

    return decorate


def batched_attack_class(attack: AttackBase) -> type[BatchedAttack] | None:
    """The batched version of ``attack``'s class, or ``None`` (per-node fallback)."""
    return _BATCHED_ATTACKS.get(type(attack))


def describe(mapping: Mapping[str, Any]) -> str:
    """``key=value`` pairs for error messages."""
    return ", ".join(f"{k}={v}" for k, v in mapping.items())
