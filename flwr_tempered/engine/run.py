"""The batched engine: a whole decentralized run as tensors on one device.

Every node's parameters and momentum are rows of ``[N, d]`` tensors; the graph is a
padded neighbour table with mixing weights (rebuilt every round for a time-varying
topology, see :meth:`BatchedEngine.use_round`); the data stays on the device and each
node's batches are gathered by index. A round does what the per-node runtime
(:func:`~flwr_tempered.runtime.inprocess.run_in_process`) does, in its order, for all
nodes at once:

1. honest nodes aggregate what they received (a batched rule, chunk by chunk);
2. on evaluation rounds, honest nodes and the averages of their models are tested;
3. every node takes its local SGD steps (vmap or a node loop, see
   :mod:`~flwr_tempered.engine.functional`), data-poisoning attackers on poisoned
   batches;
4. model-poisoning attackers craft one vector per (attacker, target) edge from the
   omniscient view (index operations on the stacked tensors).

Rules and attacks without a batched version fall back to the per-node objects (same
results by construction). Nothing leaves the device between rounds except the metrics
of evaluation rounds. The results folder is the per-node runtime's: ``config.json``,
``metrics.jsonl``, ``timings.json`` and ``accuracy.png``.

Equivalence with the per-node engine holds up to float rounding for models without
dropout. With dropout, the nodes' dropout masks can come from the global generator in
another order (vmap draws every node's masks in one call; the per-node engine draws them
node after node), so the two engines' runs can differ like two seeds of dropout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flwr_tempered.aggregators import Rule
from flwr_tempered.aggregators.base import finite_rows
from flwr_tempered.attacks import (
    AttackBase,
    AttackView,
    DataPoisoningAttack,
    ModelPoisoningAttack,
    TargetView,
)
from flwr_tempered.models import default_device
from flwr_tempered.node import RunConfig, build_world
from flwr_tempered.node.node import build_attack, build_rule
from flwr_tempered.node.summary import metrics_line
from flwr_tempered.node.task import AUGMENT_SEED_OFFSET
from flwr_tempered.results import RunResults, plot_run
from flwr_tempered.topology import round_metrics
from flwr_tempered.training import CropFlip

from . import attacks_batched, rules_averaging, rules_order  # noqa: F401  (registration)
from .attacks_batched import build_attack_inputs
from .contracts import (
    AttackInputs,
    BatchedAttack,
    BatchedRule,
    PerNodeRule,
    RuleInputs,
    batched_attack_class,
    batched_rule_class,
    finite_slots,
)
from .functional import FlatModel, choose_step_mode
from .memory import MemoryPlan, activation_elements, default_budget, plan_memory
from .rules_gram import SlotGeometry, StackedGeometry, gram_rule_for
from .samplers import StackedSamplers

#: The distance-and-weight rules take the Gram path when the stacked models are few
#: compared with the slots to aggregate: ``M^2 <= GRAM_RATIO * R * K`` (a dense Gram
#: matrix costs ``M^2 d``, gathering the neighbourhoods a few passes over ``R K d``).
GRAM_RATIO = 4

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any], RunConfig], None]


@dataclass(frozen=True)
class EngineOptions:
    """How the batched engine runs (none of it changes the results).

    Attributes:
        device: where the run lives (default: CUDA when available, else the CPU).
        step_mode: ``auto``, ``vmap`` or ``loop`` (see
            :func:`~flwr_tempered.engine.functional.choose_step_mode`).
        memory_budget: bytes the run may plan with (default: 80 % of the device's free
            memory); nodes are processed in chunks that fit it.
        fallback: ``True`` to force the per-node rule and attack objects (for checks).
        aggregation: ``auto``, ``gram`` or ``gather``: how distance-and-weight rules
            (gossip, mean, ClippedGossip, BALANCE) aggregate: from a Gram matrix of the
            stacked models, or on gathered neighbourhoods (``auto``: the cheaper one,
            see :data:`GRAM_RATIO`; other rules always gather).
    """

    device: torch.device | str | None = None
    step_mode: str = "auto"
    memory_budget: int | None = None
    fallback: bool = False
    aggregation: str = "auto"

    def __post_init__(self) -> None:
        if self.aggregation not in ("auto", "gram", "gather"):
            raise ValueError(f"aggregation must be auto, gram or gather, got "
                             f"{self.aggregation!r}")


class BatchedEngine:
    """One run of ``config`` with every node stepped as one computation.

    ``hosted`` restricts the engine to a group of topology positions (a Flower ClientApp
    that hosts several graph nodes, see :mod:`flwr_tempered.runtime.group_client`): only
    they aggregate, train and attack; the other rows only carry what their hosts sent.
    By default the engine hosts every node and :meth:`run` drives the whole run.
    """

    def __init__(self, config: RunConfig, options: EngineOptions | None = None, *,
                 hosted: Sequence[int] | None = None) -> None:
        if config.ledger or config.faults:
            raise ValueError("the batched engine has no messages to sign or corrupt: set "
                             "ledger=False and no faults, or run through Flower (simulate)")
        options = options or EngineOptions()
        self.config = config
        self.options = options
        self.device = torch.device(options.device) if options.device is not None \
            else default_device()
        world = build_world(config)
        self.world = world
        #: The run's topology, and the graph of the round the tables hold.
        self.schedule = world.topology
        self.topology = topology = self.schedule.at_round(0)
        self.graph_round = 0
        self.n = topology.n
        self.byzantine = sorted(topology.byzantine)
        self.honest_mask = torch.ones(self.n, dtype=torch.bool, device=self.device)
        self.honest_mask[self.byzantine] = False
        self.hosted = list(range(self.n)) if hosted is None else sorted(set(hosted))
        if not self.hosted or not all(0 <= p < self.n for p in self.hosted):
            raise ValueError(f"hosted positions must lie in 0..{self.n - 1}, got {hosted!r}")
        self.local = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        self.local[self.hosted] = True
        dataset = world.dataset
        self.train_images = dataset.train_images.to(self.device)
        self.train_labels = dataset.train_labels.to(self.device)
        self.test_images = dataset.test_images.to(self.device)
        self.test_labels = dataset.test_labels.to(self.device)
        self._build_shards(world.partitions)
        self.flat = FlatModel(world.new_model(), self.device)
        self.mode = choose_step_mode(self.flat.model, self.device, options.step_mode)
        initial = world.initial_parameters.to(self.device)
        self.params = initial.unsqueeze(0).repeat(self.n, 1)
        self.momentum = torch.zeros_like(self.params)
        self.rounds_trained = torch.zeros(self.n, dtype=torch.int64)
        self._build_graph()
        self._build_rule(options.fallback)
        self._build_attacks(options.fallback)
        self.plan = self._plan_memory(options.memory_budget)
        logger.info("batched engine on %s, %s steps; %s", self.device, self.mode,
                    self.plan.describe())

    # -------------------------------------------------------------------- set-up
    def _build_shards(self, partitions: tuple[Any, ...]) -> None:
        sizes = [len(p) for p in partitions]
        width = max(sizes)
        shards = torch.zeros(self.n, width, dtype=torch.int64)
        for node, part in enumerate(partitions):
            shards[node, :len(part)] = torch.as_tensor(part, dtype=torch.int64)
        self.shards = shards.to(self.device)
        seeds = [self.config.seed * 100_003 + p for p in range(self.n)]
        self.samplers = StackedSamplers(sizes, self.config.batch_size, seeds)
        self.augmenters: list[CropFlip] | None = None
        if self.config.augment == "crop_flip":
            self.augmenters = [CropFlip(seed=s + AUGMENT_SEED_OFFSET) for s in seeds]

    def use_round(self, round: int) -> None:
        """Hold the graph of round ``round`` (the one whose messages are aggregated in
        that round) in the neighbour tables; a no-op for a static topology."""
        if self.schedule.dynamic and round != self.graph_round:
            self.topology = self.schedule.at_round(round)
            self.graph_round = round
            self._build_graph()

    def _build_graph(self) -> None:
        """The padded neighbour table (topology order), its mask and mixing weights."""
        topology = self.topology
        lists = [topology.neighbors(p) for p in range(self.n)]
        self.max_degree = max(1, max(len(row) for row in lists))
        neighbours = torch.zeros(self.n, self.max_degree, dtype=torch.int64)
        mask = torch.zeros(self.n, self.max_degree, dtype=torch.bool)
        weights = torch.zeros(self.n, self.max_degree, dtype=torch.float64)
        mixing = torch.tensor(np.array(topology.mixing), dtype=torch.float64)
        for p, row in enumerate(lists):
            neighbours[p, :len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[p, :len(row)] = True
            weights[p, :len(row)] = mixing[p, row]
        self.neighbours = neighbours.to(self.device)
        self.neighbour_mask = mask.to(self.device)
        self.neighbour_weights = weights.to(self.device)

    def _build_rule(self, fallback: bool) -> None:
        config = self.config
        self.count_rule = build_rule(config)
        batched = None if fallback else batched_rule_class(self.count_rule)
        self.rule: BatchedRule
        self.gram_rule = None if fallback else gram_rule_for(self.count_rule)
        if batched is not None:
            try:
                self.rule = batched(build_rule(config), self.n, self.device, self._losses)
                return
            except NotImplementedError:
                pass
        self.rule = PerNodeRule(self._per_node_rule, self.n, self.device)

    def _per_node_rule(self, position: int) -> Rule:
        rule = build_rule(self.config)
        if hasattr(rule, "bind_loss") and position >= 0:
            rule.bind_loss(lambda vector: float(self._losses(
                torch.tensor([position], device=self.device),
                vector.to(self.device).reshape(1, 1, -1))[0, 0]))
        return rule

    def _build_attacks(self, fallback: bool) -> None:
        config = self.config
        self.attacks: dict[int, AttackBase] = {}
        if config.byzantine > 0 and config.attack != "none":
            self.attacks = {a: build_attack(config, a) for a in self.byzantine
                            if a in self.hosted}
        kinds = [build_attack(config, self.byzantine[0])] if self.byzantine and \
            config.attack != "none" else []
        first = next(iter(self.attacks.values()), kinds[0] if kinds else None)
        self.poisoning = isinstance(first, ModelPoisoningAttack)
        # Attackers whose attack never reads their own model skip local training (as
        # Node.train does): it could not change what they send.
        self.trainees = self.honest_mask.clone()
        if first is None or first.reads_own_model:
            self.trainees[self.byzantine] = True
        self.data_poisoners = {a: attack for a, attack in self.attacks.items()
                               if isinstance(attack, DataPoisoningAttack)}
        self.crafter: BatchedAttack | None = None
        self.needs_previous = False
        self.target_rule: Rule | None = None
        self.attacker_rules: dict[int, Rule] = {}
        if first is None or not self.poisoning:
            return
        try:
            self.target_rule = build_rule(config)
        except ValueError:
            self.target_rule = None
        target_rule = self.target_rule
        self.needs_previous = bool(first.uses_previous or first.needs_previous
                                   or first.needs_own_previous)
        batched = None if fallback else batched_attack_class(first)
        if batched is not None and self.attacks:
            try:
                self.crafter = batched(self.attacks, self.device, target_rule)
            except NotImplementedError:
                self.crafter = None

    def _plan_memory(self, budget: int | None) -> MemoryPlan:
        element = self.params.element_size()
        sample = self.train_images[:1]
        activations = activation_elements(self.flat.model, sample)
        data_bytes = sum(t.numel() * t.element_size() for t in (
            self.train_images, self.train_labels, self.test_images, self.test_labels,
            self.shards))
        # Bounds over every round for a time-varying topology.
        edges = self.schedule.byzantine_edge_bound if self.poisoning else 0
        max_degree = max(1, self.schedule.degree_bound)
        plan = plan_memory(
            num_nodes=self.n, dimension=self.flat.dimension, element_size=element,
            max_degree=max_degree, edges=edges, batch_size=self.config.batch_size,
            activations_per_sample=activations, data_bytes=data_bytes,
            budget=budget if budget is not None else default_budget(self.device),
            device_type=self.device.type)
        if self.crafter is not None:
            # The attack gathers [targets, H + 1, d]: as large as a chunk of
            # neighbourhoods may be (on a CPU, as small as one).
            self.crafter.max_elements = max(
                self.flat.dimension * (max_degree + 1),
                plan.gather_chunk * plan.per_node // element)
        return plan

    # ------------------------------------------------------------------ the loop
    def run(self, out: str | Path | None = None, *, progress: ProgressCallback | None = None,
            plot: bool = True) -> list[dict[str, Any]]:
        """Run every round; return the metrics lines (and write the results folder)."""
        config = self.config
        results = RunResults(out) if out is not None else None
        if results is not None:
            results.write_config(config.to_dict())
        sources: Tensor | None = None        # [N + E, d] what was sent last round
        slot_source: Tensor | None = None    # [N, K] row of ``sources`` per slot, -1 none
        history: list[dict[str, Any]] = []
        timings: list[dict[str, float]] = []
        for message_round in range(1, config.rounds + 2):
            t = message_round - 1
            evaluate = t == 0 or t % config.eval_every == 0 or t == config.rounds
            train = message_round <= config.rounds
            start = time.perf_counter()
            self.use_round(t)
            node_metrics, dropped = self.aggregate(sources, slot_source, t, evaluate)
            sources = slot_source = None
            active = ~dropped
            previous = self.params.clone() if train and self.needs_previous else None
            audit: dict[str, float] = {}
            if evaluate:
                self.evaluate_nodes(active, node_metrics)
                audited = (active & self.honest_mask).nonzero().flatten()
                audit = self.audit(audited.tolist(), self.params[audited])
            if train:
                self.train(active, node_metrics, evaluate)
                crafted, attackers, targets = self.craft(active & self.honest_mask, previous,
                                                         t + 1)
                slot_source = self.slot_sources(active, attackers, targets)
                sources = torch.cat([self.params, crafted.to(self.params.dtype)])
            timings.append({"round": float(t), "total_s": time.perf_counter() - start})
            if evaluate:
                line = self._metrics_line(t, node_metrics, dropped, audit)
                history.append(line)
                if results is not None:
                    results.append_metrics(line)
                if progress is not None:
                    progress(line, config)
            if not train:
                break
        if results is not None:
            results.write_timings(timings)
            if plot:
                plot_run(results.folder)
        return history

    # -------------------------------------------------------------- aggregation
    def aggregate(self, sources: Tensor | None, slot_source: Tensor | None, round: int,
                  evaluate: bool) -> tuple[dict[int, dict[str, float]], Tensor]:
        """Honest hosted nodes aggregate what they received: row ``slot_source[p, k]`` of
        ``sources`` in neighbour slot ``k`` of node ``p`` (-1: nothing arrived; ``None``
        in the first round). Returns the hosted nodes' metrics so far and the mask of
        nodes dropped for the round (the rule refused their input count, or their own
        model is not finite: the per-node rule would raise)."""
        node_metrics: dict[int, dict[str, float]] = {p: {"received": 0.0} for p in self.hosted}
        dropped = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        if sources is None or slot_source is None:
            return node_metrics, dropped
        present = (slot_source >= 0) & self.neighbour_mask
        counts = present.sum(dim=1)
        candidates = self.honest_mask & (counts > 0) & self.local
        for count in counts[candidates].unique().tolist():
            try:
                self.count_rule.check_input_count(int(count))
            except ValueError:
                dropped |= candidates & (counts == count)
        finite_own = finite_rows(self.params)
        dropped |= candidates & ~finite_own
        aggregating = (candidates & ~dropped).nonzero().flatten()
        counts_list = counts.tolist()
        for p in self.hosted:
            node_metrics[p]["received"] = float(counts_list[p])
            if counts_list[p] and p not in self.topology.byzantine:
                node_metrics[p]["rejected_malformed"] = 0.0
        if aggregating.numel():
            cheaper = sources.shape[0] ** 2 <= GRAM_RATIO * aggregating.numel() * \
                self.max_degree
            wanted = self.options.aggregation
            if self.gram_rule is not None and (wanted == "gram" or (wanted == "auto"
                                                                     and cheaper)):
                self._aggregate_by_gram(sources, slot_source, present, aggregating, round,
                                        node_metrics, evaluate)
            else:
                self._aggregate_by_gathering(sources, slot_source, present, aggregating,
                                             round, node_metrics, evaluate)
        for p in dropped.nonzero().flatten().tolist():
            node_metrics.pop(p, None)
        return node_metrics, dropped

    def _weights(self, nodes: Tensor, mask: Tensor) -> Tensor:
        """Own's mixing weight then each present slot's, as
        :meth:`~flwr_tempered.node.Node.mixing_row` makes them (float64, then cast)."""
        slot_weights = torch.where(mask, self.neighbour_weights[nodes],
                                   torch.zeros_like(self.neighbour_weights[nodes]))
        return torch.cat([1.0 - slot_weights.sum(dim=1, keepdim=True), slot_weights],
                         dim=1).to(self.params.dtype)

    def _aggregate_by_gathering(self, sources: Tensor, slot_source: Tensor, present: Tensor,
                                aggregating: Tensor, round: int,
                                node_metrics: dict[int, dict[str, float]], evaluate: bool
                                ) -> None:
        """The batched rule on gathered ``[R, K, d]`` neighbourhoods, chunk by chunk
        (padded slots read an appended zero row)."""
        padded = torch.cat([sources, sources.new_zeros((1, sources.shape[1]))])
        zero_row = sources.shape[0]
        refused = torch.zeros(self.n, dtype=torch.int64, device=self.device)
        chunk = self.plan.gather_chunk
        for lo in range(0, aggregating.numel(), chunk):
            nodes = aggregating[lo:lo + chunk]
            mask = present[nodes]
            index = torch.where(mask, slot_source[nodes], torch.full_like(mask, zero_row,
                                                                          dtype=torch.int64))
            inputs = RuleInputs(nodes=nodes, own=self.params[nodes], received=padded[index],
                                present=mask, weights=self._weights(nodes, mask),
                                refused=refused[nodes], round=round)
            result, stats = self.rule(inputs)
            self.params[nodes] = result.to(self.params.dtype)
            if evaluate:
                if self.rule.accepted_slots is not None:
                    stats.update(self._acceptance_split(
                        nodes, mask, finite_slots(inputs.received, mask),
                        self.rule.accepted_slots))
                self._record_stats(nodes, stats, node_metrics)

    def _aggregate_by_gram(self, sources: Tensor, slot_source: Tensor, present: Tensor,
                           aggregating: Tensor, round: int,
                           node_metrics: dict[int, dict[str, float]], evaluate: bool) -> None:
        """Distance-and-weight rules from one Gram matrix of the stacked models and one
        matrix product per chunk (:mod:`~flwr_tempered.engine.rules_gram`)."""
        assert self.gram_rule is not None
        geometry = StackedGeometry(sources)
        refused = torch.zeros(self.n, dtype=torch.int64, device=self.device)
        chunk = self.plan.chunk
        for lo in range(0, aggregating.numel(), chunk):
            nodes = aggregating[lo:lo + chunk]
            mask = present[nodes]
            slot_rows = slot_source[nodes].clamp(min=0)
            finite = geometry.finite[slot_rows]
            kept, dirty = mask & finite, mask & ~finite
            distances = torch.where(kept, geometry.distances(nodes, slot_rows), 0.0)
            shape = SlotGeometry(kept=kept, dirty=dirty, weights=self._weights(nodes, mask),
                                 refused=refused[nodes],
                                 distances=distances.to(self.params.dtype),
                                 own_norms=geometry.norms[nodes], round=round)
            coefficients, rule_stats = self.gram_rule.coefficients(shape)
            first, last = int(nodes[0]), int(nodes[-1])
            if last - first + 1 == nodes.numel():  # a run of rows: write in place
                geometry.combine(nodes, slot_rows, coefficients, kept,
                                 relative=self.gram_rule.relative,
                                 out=self.params[first:last + 1])
            else:
                self.params[nodes] = geometry.combine(
                    nodes, slot_rows, coefficients, kept,
                    relative=self.gram_rule.relative).to(self.params.dtype)
            if evaluate:
                stats = shape.common_stats(mask)
                stats.update(rule_stats)
                if self.gram_rule.accepted_slots is not None:
                    stats.update(self._acceptance_split(nodes, mask, kept,
                                                        self.gram_rule.accepted_slots))
                self._record_stats(nodes, stats, node_metrics)

    def _acceptance_split(self, nodes: Tensor, present: Tensor, kept: Tensor,
                          accepted: Tensor) -> dict[str, Tensor]:
        """``acceptance_honest`` and ``acceptance_byzantine`` per node, as the per-node
        runtime reports them (:func:`~flwr_tempered.node.summary.acceptance_split`): the
        fraction of the present slots of each kind that entered the average, NaN where
        the node had no such input or kept no row (the per-node rule decided nothing)."""
        from_attacker = ~self.honest_mask[self.neighbours[nodes]]
        decided = kept.any(dim=1)
        split: dict[str, Tensor] = {}
        for key, kind in (("acceptance_honest", present & ~from_attacker),
                          ("acceptance_byzantine", present & from_attacker)):
            count = kind.sum(dim=1)
            rate = (accepted.to(kind.device) & kind).sum(dim=1).double() / \
                count.clamp(min=1).double()
            split[key] = torch.where(decided & (count > 0), rate,
                                     torch.full_like(rate, math.nan))
        return split

    @staticmethod
    def _record_stats(nodes: Tensor, stats: dict[str, Tensor],
                      node_metrics: dict[int, dict[str, float]]) -> None:
        columns = {key: value.double().cpu().tolist() for key, value in stats.items()}
        for r, p in enumerate(nodes.tolist()):
            for key, values in columns.items():
                if not math.isnan(values[r]):
                    node_metrics[p][f"rule_{key}"] = values[r]

    def _losses(self, nodes: Tensor, candidates: Tensor) -> Tensor:
        """MOZI's check: eval-mode loss of each candidate on its node's next batch."""
        indices, valid = self.samplers.peek_batches()
        nodes_cpu = nodes.cpu()
        batch = indices[nodes_cpu].to(self.device)
        keep = valid[nodes_cpu].to(self.device)
        samples = self.shards[nodes.to(self.device)].gather(1, batch)
        images, labels = self.train_images[samples], self.train_labels[samples]
        r, c, d = candidates.shape
        flat = candidates.reshape(r * c, d).to(self.params.dtype)
        expand = torch.arange(r, device=self.device).repeat_interleave(c)
        return self.flat.batch_losses(flat, images[expand], labels[expand], keep[expand],
                                      self.mode).reshape(r, c)

    # --------------------------------------------------------------- evaluation
    def _accuracy(self, params: Tensor) -> Tensor:
        """Test accuracy ``[R]`` of each row of ``params``."""
        accuracies = []
        chunk = max(1, self.plan.chunk)
        for lo in range(0, params.shape[0], chunk):
            predicted = self.flat.predictions(params[lo:lo + chunk], self.test_images, self.mode)
            accuracies.append((predicted == self.test_labels).sum(dim=1).double()
                              / self.test_labels.shape[0])
        return torch.cat(accuracies)

    def evaluate_nodes(self, active: Tensor, node_metrics: dict[int, dict[str, float]]
                       ) -> None:
        """Test accuracy of every active honest hosted node, into its metrics."""
        nodes = (self.honest_mask & active & self.local).nonzero().flatten()
        if nodes.numel() == 0:
            return
        for p, accuracy in zip(nodes.tolist(), self._accuracy(self.params[nodes]).tolist(),
                               strict=True):
            node_metrics[p]["accuracy"] = accuracy

    def audit(self, positions: Sequence[int], models: Tensor) -> dict[str, float]:
        """The audit of the honest ``models`` (row ``i`` is the model of node
        ``positions[i]``): the average models' accuracy per topology group and the
        consensus distance (reproduction spec §1, step 5)."""
        audit: dict[str, float] = {"audited_models": float(len(positions))}
        if not positions:
            return audit
        models = models.to(device=self.device, dtype=self.params.dtype)
        row_of = {p: i for i, p in enumerate(positions)}
        average = models.mean(dim=0)
        audit["consensus_distance"] = float(((models - average) ** 2).sum(dim=1).mean())
        names, averages = [], []
        for group, members in self.topology.groups.items():
            rows = [row_of[m] for m in members if m in row_of]
            if rows:
                names.append(group)
                averages.append(models[rows].mean(dim=0))
        for group, accuracy in zip(names, self._accuracy(torch.stack(averages)).tolist(),
                                   strict=True):
            suffix = "" if group == "all" else "_" + group.replace(" ", "_")
            audit[f"accuracy_avg_model{suffix}"] = accuracy
        return audit

    # ----------------------------------------------------------------- training
    def train(self, active: Tensor, node_metrics: dict[int, dict[str, float]],
              evaluate: bool) -> None:
        """``local_steps`` SGD steps with heavy-ball momentum for every active hosted
        node (Byzantine nodes too: they disguise themselves with an honest model)."""
        config = self.config
        active = active & self.local & self.trainees
        rows = active.nonzero().flatten()
        lr = torch.tensor([config.lr_at(int(r)) for r in self.rounds_trained.tolist()],
                          dtype=self.params.dtype, device=self.device)
        losses = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        everyone = bool(active.all())
        if rows.numel() == 0:
            return
        for _ in range(config.local_steps):
            indices, valid = self.samplers.next_batches(active)
            batch = indices.to(self.device)
            mask = valid.to(self.device)
            samples = self.shards.gather(1, batch)
            images, labels = self.train_images[samples], self.train_labels[samples]
            images, labels = self._transform(images, labels, mask, active)
            step_losses = torch.zeros(self.n, dtype=torch.float64, device=self.device)
            for lo in range(0, rows.numel(), self.plan.chunk):
                chunk = rows[lo:lo + self.plan.chunk]
                span = slice(int(chunk[0]), int(chunk[-1]) + 1)
                contiguous = everyone or span.stop - span.start == chunk.numel()
                params = self.params[span] if contiguous else self.params[chunk]
                grads, chunk_losses = self.flat.gradients(
                    params, images[chunk], labels[chunk], mask[chunk], self.mode)
                step_losses[chunk] = chunk_losses.double()
                if contiguous:
                    self.momentum[span].mul_(config.momentum).add_(grads)
                    self.params[span].addcmul_(lr[span].unsqueeze(1), self.momentum[span],
                                               value=-1.0)
                else:
                    momentum = self.momentum[chunk].mul_(config.momentum).add_(grads)
                    self.momentum[chunk] = momentum
                    # The contiguous branch's arithmetic, so that results do not depend
                    # on how the rows fall into chunks.
                    self.params[chunk] = params.addcmul_(lr[chunk].unsqueeze(1), momentum,
                                                         value=-1.0)
            losses += step_losses
        self.rounds_trained[active.cpu()] += 1
        if evaluate:
            mean_losses = (losses / config.local_steps).cpu().tolist()
            lrs = lr.cpu().tolist()
            for p in rows.tolist():
                node_metrics[p]["train_loss"] = mean_losses[p]
                node_metrics[p]["lr"] = lrs[p]

    def _transform(self, images: Tensor, labels: Tensor, mask: Tensor, active: Tensor
                   ) -> tuple[Tensor, Tensor]:
        """Augmentation (each node's own generator) then the data-poisoning attackers'
        transforms, on each node's real (unpadded) batch."""
        if self.augmenters is None and not self.data_poisoners:
            return images, labels
        images, labels = images.clone(), labels.clone()
        nodes = active.nonzero().flatten().tolist() if self.augmenters is not None \
            else [a for a in self.data_poisoners if bool(active[a])]
        for p in nodes:
            keep = mask[p]
            xb, yb = images[p][keep], labels[p][keep]
            if self.augmenters is not None:
                xb, yb = self.augmenters[p](xb, yb)
            poisoner = self.data_poisoners.get(p)
            if poisoner is not None:
                xb, yb = poisoner.poison(xb, yb)
            images[p][keep] = xb.to(images.dtype)
            labels[p][keep] = yb.to(labels.dtype)
        return images, labels

    # ------------------------------------------------------------------ sending
    def craft(self, published: Tensor, previous: Tensor | None, round: int
              ) -> tuple[Tensor, Tensor, Tensor]:
        """The vectors the hosted model-poisoning attackers send: ``(crafted [E, d],
        attackers [E], targets [E])``, from the omniscient view of the half-step models in
        :attr:`params` of the ``published`` honest nodes (and their start-of-round models
        ``previous`` for attacks that read them), for the targets to aggregate in round
        ``round`` (whose graph the tables then hold). Empty without such attackers."""
        self.use_round(round)
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        if not self.poisoning or not self.attacks:
            return self.params.new_zeros((0, self.params.shape[1])), empty, empty
        inputs = build_attack_inputs(self.topology, self.params, previous, published, round,
                                     self.config.rounds)
        if len(self.attacks) < len(self.byzantine):
            inputs = _edges_of(inputs, self.local[inputs.attackers])
        crafted = (self.crafter(inputs) if self.crafter is not None
                   else self._craft_per_node(inputs))
        return crafted, inputs.attackers, inputs.targets

    def slot_sources(self, sent: Tensor, attackers: Tensor, targets: Tensor) -> Tensor:
        """Which row of ``cat([half-step models [N, d], crafted [E, d]])`` arrives in each
        neighbour slot next round (-1: nothing): a Byzantine neighbour of a
        model-poisoning run sends its crafted vector for the edge (``attackers[e]``,
        ``targets[e]``), any other neighbour its half-step model if it ``sent`` one."""
        slot_source = torch.where(sent[self.neighbours], self.neighbours,
                                  torch.full_like(self.neighbours, -1))
        if not self.poisoning:
            return slot_source
        lookup = torch.full((self.n * self.n,), -1, dtype=torch.int64, device=self.device)
        lookup[attackers.to(self.device) * self.n + targets.to(self.device)] = torch.arange(
            attackers.numel(), device=self.device)
        receivers = torch.arange(self.n, device=self.device).unsqueeze(1)
        edge = lookup[self.neighbours * self.n + receivers]
        from_attacker = ~self.honest_mask[self.neighbours]
        return torch.where(from_attacker, torch.where(edge >= 0, self.n + edge, edge),
                           slot_source)

    def _craft_per_node(self, inputs: AttackInputs) -> Tensor:
        """The fallback: each attacker's per-node attack object on the views the per-node
        runtime builds."""
        half, previous = inputs.half.cpu(), None if inputs.previous is None \
            else inputs.previous.cpu()
        rows: list[Tensor] = []
        attackers = inputs.attackers.tolist()
        targets = inputs.targets.tolist()
        target_rows = inputs.target_row.tolist()
        for attacker in sorted(set(attackers)):
            edges = [e for e, a in enumerate(attackers) if a == attacker]
            target_rule = self._attacker_copy_of_rule(attacker)
            views = []
            for e in edges:
                i = target_rows[e]
                keep = inputs.honest_mask[i].cpu()
                honest = inputs.honest[i].cpu()[keep]
                views.append(TargetView(
                    node=targets[e], model=half[targets[e]].clone(),
                    honest_neighbors=half[honest].clone(),
                    honest_weights=inputs.honest_weights[i].cpu()[keep].to(half.dtype),
                    byzantine_weight=float(inputs.byzantine_weight[i]),
                    n_byzantine=int(inputs.n_byzantine[i]),
                    self_weight=float(inputs.self_weight[i]),
                    previous=None if previous is None else previous[targets[e]].clone(),
                    rule=target_rule))
            view = AttackView(own=half[attacker].clone(), targets=views, round=inputs.round,
                              total_rounds=inputs.total_rounds,
                              own_previous=None if previous is None else previous[attacker])
            rows.append(self.attacks[attacker](view))
        if not rows:
            return self.params.new_zeros((0, self.params.shape[1]))
        return torch.cat(rows).to(self.device)

    def _attacker_copy_of_rule(self, attacker: int) -> Rule | None:
        """The honest nodes' rule as attacker ``attacker`` runs it to craft its vectors
        (as the per-node runtime: a copy of its own, MOZI's loss on its own data)."""
        if self.target_rule is None:
            return None
        if attacker not in self.attacker_rules:
            self.attacker_rules[attacker] = self._per_node_rule(attacker)
        return self.attacker_rules[attacker]

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What the hosted nodes keep between rounds (CPU tensors and plain values), so a
        ClientApp can persist it in ``context.state``."""
        rows = torch.tensor(self.hosted, dtype=torch.int64)
        device_rows = rows.to(self.device)
        samplers = self.samplers
        state: dict[str, Any] = {
            "params": self.params[device_rows].cpu(),
            "momentum": self.momentum[device_rows].cpu(),
            "rounds_trained": self.rounds_trained[rows].clone(),
            "orders": samplers.orders[rows].clone(),
            "positions": samplers.positions[rows].clone(),
            "epochs": samplers.epochs[rows].clone(),
            "generators": {str(p): samplers.generators[p].get_state() for p in self.hosted},
            "rule": self.rule.state_dict(self.hosted),
            "attacks": {str(a): attack.state_dict() for a, attack in self.attacks.items()},
        }
        if self.augmenters is not None:
            state["augment"] = {str(p): self.augmenters[p].state_dict()["generator"]
                                for p in self.hosted}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the hosted nodes from :meth:`state_dict` output."""
        rows = torch.tensor(self.hosted, dtype=torch.int64)
        device_rows = rows.to(self.device)
        self.params[device_rows] = torch.as_tensor(state["params"]).to(self.device,
                                                                        self.params.dtype)
        self.momentum[device_rows] = torch.as_tensor(state["momentum"]).to(self.device,
                                                                            self.params.dtype)
        self.rounds_trained[rows] = torch.as_tensor(state["rounds_trained"])
        samplers = self.samplers
        samplers.orders[rows] = torch.as_tensor(state["orders"])
        samplers.positions[rows] = torch.as_tensor(state["positions"])
        samplers.epochs[rows] = torch.as_tensor(state["epochs"])
        for p in self.hosted:
            samplers.generators[p].set_state(
                torch.as_tensor(state["generators"][str(p)], dtype=torch.uint8))
        self.rule.load_state_dict(state.get("rule", {}), self.hosted)
        for a, attack in self.attacks.items():
            if str(a) in state.get("attacks", {}):
                attack_state = dict(state["attacks"][str(a)])
                attack_state["generator"] = torch.as_tensor(attack_state["generator"],
                                                            dtype=torch.uint8)
                attack.load_state_dict(attack_state)
        if self.augmenters is not None:
            for p in self.hosted:
                self.augmenters[p].load_state_dict({"generator": state["augment"][str(p)]})

    # ------------------------------------------------------------------ metrics
    def _metrics_line(self, round: int, node_metrics: dict[int, dict[str, float]],
                      dropped: Tensor, audit: dict[str, float]) -> dict[str, Any]:
        return {**metrics_line(round, self.schedule.at_round(round), node_metrics,
                               dropped.nonzero().flatten().tolist(), audit),
                **round_metrics(self.schedule, round)}


def _edges_of(inputs: AttackInputs, keep: Tensor) -> AttackInputs:
    """``inputs`` restricted to the edges ``keep`` selects (a group's own attackers)."""
    return replace(inputs, attackers=inputs.attackers[keep], targets=inputs.targets[keep],
                   target_row=inputs.target_row[keep])


def run_batched(config: RunConfig, out: str | Path | None = None, *,
                progress: ProgressCallback | None = None, plot: bool = True,
                options: EngineOptions | None = None) -> list[dict[str, Any]]:
    """Run ``config`` with the batched engine; return the metrics lines. With ``out``,
    write the results folder (the per-node runtime's files). ``options`` choose the
    device, the step mode and the memory budget (see :class:`EngineOptions`)."""
    return BatchedEngine(config, options).run(out, progress=progress, plot=plot)
