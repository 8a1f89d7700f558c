"""A group of graph nodes hosted by one participant and stepped by the batched engine.

Flower's simulation backend runs one ClientApp per SuperNode; with a group of ``K``
graph nodes per SuperNode, a 1,000-node graph needs only a handful of them (and a
handful of Ray actors), each stepping its nodes as one computation. Between groups only
stacked arrays travel: per round, each group publishes one ``[rows, d]`` array of its
nodes' half-step models (and, for model-poisoning groups, one array of crafted vectors
with its edge list); a group reads the arrays of the groups that host its nodes'
neighbours. The relay moves digests, never models.

:class:`NodeGroup` is transport-free: it takes and returns tensors and plain values, so
the Flower ClientApp (:mod:`flwr_tempered.runtime.group_client`) and the tests can drive
it. Running every group through it gives the in-process batched engine's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flwr_tempered.node import RunConfig
from flwr_tempered.topology import Topology

from .run import BatchedEngine, EngineOptions


def group_positions(num_nodes: int, nodes_per_group: int) -> list[list[int]]:
    """The topology positions of each group: consecutive blocks of ``nodes_per_group``
    (the last group may be smaller)."""
    if nodes_per_group < 1:
        raise ValueError(f"nodes per group must be >= 1, got {nodes_per_group!r}")
    return [list(range(lo, min(lo + nodes_per_group, num_nodes)))
            for lo in range(0, num_nodes, nodes_per_group)]


@dataclass
class Received:
    """What reaches a group at the start of a round (everything from the previous one).

    Attributes:
        halves: position -> the half-step model that node sent (the group's own nodes'
            are read from its state; only neighbours hosted elsewhere are needed).
        sent: positions that sent a half-step model.
        crafted: ``[E, d]`` every crafted vector of the round, all groups' concatenated.
        attackers, targets: ``[E]`` the edge of each crafted row.
    """

    halves: Mapping[int, Tensor] = field(default_factory=dict)
    sent: Sequence[int] = ()
    crafted: Tensor | None = None
    attackers: Sequence[int] = ()
    targets: Sequence[int] = ()


@dataclass
class GroupReply:
    """What a group reports after its part of a round."""

    metrics: dict[int, dict[str, float]]
    dropped: list[int]
    #: The hosted nodes that trained (and so sent a half-step model).
    half_positions: list[int]
    #: The half-step models other groups read (:attr:`NodeGroup.exported`), in the row
    #: order of ``exported_positions``; ``None`` when no other group reads any.
    half: Tensor | None
    exported_positions: list[int]
    #: The hosted honest nodes' models after aggregation (evaluation rounds, or every
    #: round for attacks that read the targets' start-of-round models).
    model_positions: list[int]
    models: Tensor | None


class NodeGroup:
    """The graph nodes at ``hosted`` positions of the run ``config``."""

    def __init__(self, config: RunConfig, hosted: Sequence[int],
                 options: EngineOptions | None = None) -> None:
        self.engine = BatchedEngine(config, options, hosted=hosted)
        self.config = config
        self.hosted = self.engine.hosted
        #: The hosted nodes' models at the start of the round's training (attacks that
        #: reverse their own update or read the targets' previous models need them).
        self.previous: Tensor | None = None
        #: What :meth:`_exported` gives for the graph of the next exchange (the same in
        #: every round for a static topology).
        self.exported = self._exported(self.engine.schedule.at_round(1))
        #: Labels the state this object last saved for a ClientApp (``None``: unsaved,
        #: or changed since); see :mod:`flwr_tempered.runtime.group_client`.
        self.state_token: str | None = None

    def _exported(self, topology: Topology) -> set[int]:
        """Hosted positions whose half-step models another group reads over the graph
        ``topology``: the neighbours of honest nodes hosted elsewhere and, where attackers
        hosted elsewhere craft from the omniscient view, their honest targets and those
        targets' honest neighbours. The other half-step models never leave the group
        (with one group, none do)."""
        hosted, byzantine = set(self.hosted), set(topology.byzantine)
        read: set[int] = set()
        for q in range(topology.n):
            if q in hosted:
                continue
            if q not in byzantine:
                read.update(topology.neighbors(q))
            elif self.engine.poisoning:
                for target in topology.recipients(q):
                    if target not in byzantine:
                        read.add(target)
                        read.update(topology.neighbors(target))
        return read & hosted

    def needs(self, round: int) -> set[int]:
        """Positions hosted elsewhere whose half-step models this group aggregates in
        round ``round``."""
        topology = self.engine.schedule.at_round(round)
        return {q for p in self.hosted if p not in topology.byzantine
                for q in topology.neighbors(p)} - set(self.hosted)

    def train_round(self, round: int, received: Received | None, *, evaluate: bool,
                    train: bool, publish_model: bool) -> GroupReply:
        """Aggregate what arrived, publish the models if asked, evaluate, train: the
        hosted nodes' part of round ``round`` (the per-node ClientApp's order)."""
        engine = self.engine
        engine.use_round(round)
        sources = slot_source = None
        if received is not None:
            params = engine.params.clone()
            hosted = set(self.hosted)
            for position, model in received.halves.items():
                if position not in hosted:
                    params[position] = model.to(device=params.device, dtype=params.dtype)
            crafted = received.crafted if received.crafted is not None else \
                params.new_zeros((0, params.shape[1]))
            sent = torch.zeros(engine.n, dtype=torch.bool, device=engine.device)
            sent[list(received.sent)] = True
            slot_source = engine.slot_sources(
                sent, torch.tensor(list(received.attackers), dtype=torch.int64),
                torch.tensor(list(received.targets), dtype=torch.int64))
            sources = torch.cat([params, crafted.to(device=params.device, dtype=params.dtype)])
        metrics, dropped = engine.aggregate(sources, slot_source, round, evaluate)
        active = ~dropped & engine.local
        model_positions: list[int] = []
        models = None
        if publish_model:
            rows = (active & engine.honest_mask).nonzero().flatten()
            model_positions, models = rows.tolist(), engine.params[rows].clone()
        if evaluate:
            engine.evaluate_nodes(active, metrics)
        half_positions: list[int] = []
        exported: list[int] = []
        half = None
        if train:
            self.previous = engine.params[self.hosted].clone() if engine.needs_previous \
                else None
            engine.train(active, metrics, evaluate)
            if engine.schedule.dynamic:
                self.exported = self._exported(engine.schedule.at_round(round + 1))
            half_positions = active.nonzero().flatten().tolist()
            exported = [p for p in half_positions if p in self.exported]
            if exported:
                half = engine.params[exported].clone()
        return GroupReply(metrics=metrics, dropped=dropped.nonzero().flatten().tolist(),
                          half_positions=half_positions, half=half,
                          exported_positions=exported, model_positions=model_positions,
                          models=models)

    def craft_round(self, round: int, halves: Mapping[int, Tensor], published: Sequence[int],
                    previous: Mapping[int, Tensor]) -> tuple[Tensor, list[int], list[int]]:
        """The hosted attackers' vectors for round ``round``: ``(crafted, attackers,
        targets)``, from the half-step models of the ``published`` honest nodes (and the
        targets' start-of-round ``previous`` models, for attacks that read them)."""
        engine = self.engine
        half = engine.params.clone()
        hosted = set(self.hosted)
        for position, model in halves.items():
            if position not in hosted:
                half[position] = model.to(device=half.device, dtype=half.dtype)
        start = None
        if engine.needs_previous:
            start = half.clone()
            for position, model in previous.items():
                start[position] = model.to(device=start.device, dtype=start.dtype)
            if self.previous is not None:
                start[self.hosted] = self.previous.to(start.device)
        mask = torch.zeros(engine.n, dtype=torch.bool, device=engine.device)
        mask[list(published)] = True
        saved = engine.params
        engine.params = half
        try:
            crafted, attackers, targets = engine.craft(mask, start, round)
        finally:
            engine.params = saved
        return crafted, attackers.tolist(), targets.tolist()

    def audit(self, models: Mapping[int, Tensor]) -> dict[str, float]:
        """The audit of the honest models (every group's, by position)."""
        positions = sorted(models)
        if not positions:
            return {"audited_models": 0.0}
        return self.engine.audit(positions, torch.stack([models[p] for p in positions]))

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The hosted nodes' state (see :meth:`BatchedEngine.state_dict`)."""
        state = self.engine.state_dict()
        if self.previous is not None:
            state["previous"] = self.previous.cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` output."""
        self.engine.load_state_dict(state)
        previous = state.get("previous")
        self.previous = None if previous is None else torch.as_tensor(previous).to(
            self.engine.device)
