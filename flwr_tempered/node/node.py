"""What one participant does in a round, free of any transport.

An honest node aggregates its own model with what its neighbours sent (a robust rule),
evaluates, then takes local SGD steps with heavy-ball momentum (reproduction spec §1).
A Byzantine node trains too (it needs an honest model to disguise itself), then either
sends that model trained on poisoned data (data poisoning) or crafts one vector per
recipient from an omniscient view (model poisoning).

Received vectors are screened before any arithmetic: a missing vector, a wrong shape or a
wrong dtype is rejected and counted (``rejected_malformed``); NaN and Inf are rejected by
the rule itself (``rejected_nonfinite``). A rejected neighbour's mixing weight stays on
the node, as if it had been silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flwr_tempered.aggregators import Rule, get_rule
from flwr_tempered.attacks import (
    AttackBase,
    AttackView,
    DataPoisoningAttack,
    ModelPoisoningAttack,
    TargetView,
    attack_parameters,
    get_attack,
)

from .config import RunConfig
from .summary import acceptance_split
from .task import SupervisedTask, TrainingTask
from .world import World


@dataclass
class NodeState:
    """What a node keeps between rounds (in simulation: in the ClientApp's context.state)."""

    params: Tensor
    momentum: Tensor
    sampler: dict[str, Any] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)
    attack: dict[str, Any] = field(default_factory=dict)
    #: The model the node started its latest local training from, kept only for attacks
    #: that reverse the node's own update (``needs_own_previous``, e.g. sign flip).
    training_start: Tensor | None = None


#: A model as it travels: a numpy array (Flower messages, the shared store) or a tensor
#: (the in-process runtime, which keeps models on the nodes' device).
Vector = np.ndarray | Tensor


@dataclass(frozen=True)
class TargetInputs:
    """What a Byzantine node is told about one recipient (models already fetched)."""

    node: int
    model: Vector
    honest_neighbors: Sequence[int]
    honest_models: Sequence[Vector]
    previous: Vector | None = None


def as_tensor(vector: Vector, like: Tensor) -> Tensor:
    """A private copy of ``vector`` in ``like``'s dtype and on its device (fetched numpy
    models may be shared and read-only; tensors from other nodes must not be aliased)."""
    if isinstance(vector, Tensor):
        return vector.detach().to(device=like.device, dtype=like.dtype, copy=True)
    return torch.from_numpy(np.array(vector)).to(device=like.device, dtype=like.dtype)


def _dtype_name(vector: Vector) -> str:
    return str(vector.dtype).removeprefix("torch.")


def build_rule(config: RunConfig) -> Rule:
    """The honest nodes' rule of ``config`` (BALANCE's horizon defaults to the run's
    rounds). MOZI's loss callback is bound by the node that owns the rule."""
    args = dict(config.rule_args)
    if config.rule == "balance":
        args.setdefault("total_rounds", config.rounds)
    return get_rule(config.rule, **args)


def build_attack(config: RunConfig, position: int) -> AttackBase:
    """The attack of the Byzantine node at ``position`` (seeded per node, so that colluding
    nodes do not draw the same noise)."""
    args = dict(config.attack_args)
    parameters = attack_parameters(config.attack)
    if "seed" in parameters:
        args.setdefault("seed", config.seed * 1_000 + position)
    if args.get("z_from") == "run" and "n" in parameters and "f" in parameters:
        args.setdefault("n", config.nodes)  # ALIE's z_max from the run's counts
        args.setdefault("f", config.byzantine)
    return get_attack(config.attack, **args)


def screen(
    vectors: Sequence[Vector | None], dimension: int, dtype: np.dtype[Any]
) -> tuple[list[int], list[str]]:
    """Indices of the acceptable vectors (numpy arrays or tensors of shape ``(dimension,)``
    and dtype ``dtype``) and a reason for each rejected one."""
    kept: list[int] = []
    reasons: list[str] = []
    for index, vector in enumerate(vectors):
        if vector is None:
            reasons.append("missing")
        elif not isinstance(vector, np.ndarray | Tensor) or tuple(vector.shape) != (dimension,):
            shape = getattr(vector, "shape", None)
            reasons.append(f"shape {shape} != ({dimension},)")
        elif _dtype_name(vector) != str(dtype):
            reasons.append(f"dtype {_dtype_name(vector)} != {dtype}")
        else:
            kept.append(index)
    return kept, reasons


class Node:
    """One participant of a decentralized run, at topology position ``position``."""

    def __init__(self, position: int, world: World, task: TrainingTask | None = None) -> None:
        config = world.config
        self.position = position
        self.world = world
        self.task: TrainingTask = task if task is not None else SupervisedTask(world, position)
        self.byzantine = position in world.topology.byzantine
        self.rule: Rule | None = None if self.byzantine else self._make_rule()
        self.attack: AttackBase | None = None
        if self.byzantine and config.attack != "none":
            self.attack = build_attack(config, position)
        self._honest_rule: Rule | None = None
        initial = self.task.initial_parameters()
        self.state = NodeState(params=initial, momentum=torch.zeros_like(initial))

    # ------------------------------------------------------------------ construction
    def _make_rule(self) -> Rule:
        rule = build_rule(self.world.config)
        if hasattr(rule, "bind_loss"):
            rule.bind_loss(self.task.loss)
        return rule

    # ------------------------------------------------------------------------ state
    def load_state(self, state: NodeState) -> None:
        """Resume from what :meth:`save_state` returned in an earlier round."""
        self.state = state
        self.task.load_state_dict(state.sampler)
        if self.rule is not None and state.rule:
            self.rule.load_state_dict(state.rule)
        if self.attack is not None and state.attack:
            self.attack.load_state_dict(state.attack)

    def save_state(self) -> NodeState:
        """The node's state to persist until the next round."""
        self.state.sampler = self.task.state_dict()
        if self.rule is not None:
            self.state.rule = self.rule.state_dict()
        if self.attack is not None:
            self.state.attack = self.attack.state_dict()
        return self.state

    @property
    def neighbors(self) -> list[int]:
        """The nodes this node receives from (a static topology; a time-varying one has
        them per round: :meth:`neighbors_at`)."""
        if self.world.topology.dynamic:
            raise ValueError(f"topology {self.world.topology.name!r} changes every round: "
                             "ask for neighbors_at(round)")
        return self.neighbors_at(0)

    def neighbors_at(self, round: int) -> list[int]:
        """The nodes whose models this node aggregates in round ``round``."""
        return self.world.topology.at_round(round).neighbors(self.position)

    # ------------------------------------------------------------------------ round
    def mixing_row(self, senders: Sequence[int], round: int) -> Tensor:
        """Own weight then the senders' weights from the mixing matrix of round
        ``round``; the weight of neighbours that sent nothing usable stays on the node."""
        row = self.world.topology.at_round(round).mixing[self.position]
        neighbour = [float(row[s]) for s in senders]
        own = 1.0 - sum(neighbour)
        return torch.tensor([own, *neighbour], dtype=self.state.params.dtype)

    def aggregate(
        self, senders: Sequence[int], vectors: Sequence[Vector | None], round: int, *,
        refused: int = 0,
    ) -> dict[str, float]:
        """Aggregate own model with the received vectors (Byzantine nodes keep theirs).

        ``refused`` counts messages already refused upstream (the ledger's checks); with
        the malformed ones screened out here they lower the rule's Byzantine budget, so
        faulty neighbours cannot push the rule below its minimum number of inputs.
        """
        metrics: dict[str, float] = {"received": float(len(vectors) + refused)}
        if self.byzantine or not vectors:
            return metrics
        params = self.state.params
        kept, reasons = screen(vectors, params.shape[0], params.detach().cpu()[:0].numpy().dtype)
        metrics["rejected_malformed"] = float(len(reasons))
        if not kept:
            return metrics
        received = torch.stack([as_tensor(vectors[i], params) for i in kept])  # type: ignore[arg-type]
        weights = self.mixing_row([senders[i] for i in kept], round)
        assert self.rule is not None
        self.state.params = self.rule(params, received, weights, round=round,
                                      refused=refused + len(reasons))
        metrics.update({f"rule_{k}": float(v) for k, v in self.rule.stats.items()})
        if self.rule.accepted_rows is not None:
            byzantine = self.world.topology.byzantine
            from_attacker = torch.tensor([senders[i] in byzantine for i in kept])
            metrics.update(acceptance_split(self.rule.accepted_rows.cpu(), from_attacker))
        return metrics

    def train(self, round: int) -> dict[str, float]:
        """Local training from the current model; the result is what the node sends.

        An attacker whose attack never reads its own model (ALIE, IPM, dissensus, ...)
        skips it: its training could not change anything it sends."""
        if self.attack is not None and not self.attack.reads_own_model:
            return {}
        transform = self.attack.poison if isinstance(self.attack, DataPoisoningAttack) else None
        if self.attack is not None and self.attack.needs_own_previous:
            self.state.training_start = self.state.params.detach().clone()
        params, momentum, metrics = self.task.train(self.state.params, self.state.momentum,
                                                    transform)
        self.state.params, self.state.momentum = params, momentum
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Test metrics of the node's current model."""
        return self.task.evaluate(self.state.params)

    # ---------------------------------------------------------------------- attacks
    @property
    def crafts_vectors(self) -> bool:
        """Whether this node sends per-recipient vectors (model poisoning)."""
        return isinstance(self.attack, ModelPoisoningAttack)

    def craft(self, targets: Sequence[TargetInputs], round: int) -> dict[int, Tensor]:
        """The vector for each target, keyed by the target's position, from the omniscient
        view the relay provided, for the targets to aggregate in round ``round`` (whose
        graph and weights apply). A target that gives its Byzantine neighbours zero weight
        (``two_cliques_with_byzantine`` with ``delta = 0``) cannot be influenced and gets
        nothing."""
        assert isinstance(self.attack, ModelPoisoningAttack)
        topology = self.world.topology.at_round(round)
        own = self.state.params
        views = []
        for target in targets:
            row = topology.mixing[target.node]
            byzantine = topology.byzantine_neighbors(target.node)
            byzantine_weight = float(sum(row[k] for k in byzantine))
            if byzantine_weight <= 0:
                continue
            honest_models = (
                torch.stack([as_tensor(m, own) for m in target.honest_models])
                if target.honest_models else own.new_zeros((0, own.shape[0]))
            )
            views.append(TargetView(
                node=target.node,
                model=as_tensor(target.model, own),
                honest_neighbors=honest_models,
                honest_weights=torch.tensor([row[j] for j in target.honest_neighbors],
                                            dtype=own.dtype, device=own.device),
                byzantine_weight=byzantine_weight,
                n_byzantine=len(byzantine),
                self_weight=float(row[target.node]),
                previous=None if target.previous is None else as_tensor(target.previous, own),
                rule=self._target_rule(),
            ))
        if not views:
            return {}
        view = AttackView(own=self.state.params, targets=views, round=round,
                          total_rounds=self.world.config.rounds,
                          own_previous=self.state.training_start)
        crafted = self.attack(view)
        return {v.node: row.detach().clone() for v, row in zip(views, crafted, strict=True)}

    def _target_rule(self) -> Rule | None:
        """The honest nodes' rule (the adversary is omniscient: it knows the config)."""
        if self._honest_rule is None:
            try:
                self._honest_rule = self._make_rule()
            except ValueError:
                return None
        return self._honest_rule
