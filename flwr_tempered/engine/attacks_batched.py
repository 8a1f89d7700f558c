"""Batched model-poisoning attacks: every (Byzantine sender, honest target) edge of a round
crafted at once, row for row what the per-node attack objects send.

The batched engine holds every node's half-step model as a row of ``half`` (``[N, d]``)
and describes the round's edges with an :class:`~flwr_tempered.engine.contracts.
AttackInputs` (:func:`build_attack_inputs` builds it from the topology). Each class here
replaces one per-node attack of :mod:`flwr_tempered.attacks` (registered with
:func:`~flwr_tempered.engine.contracts.register_batched_attack`):

* :class:`BatchedDissensus`, :class:`BatchedALIE`, :class:`BatchedIPM` read the target's
  honest set ``H_t``: the statistic they need (dissensus's weighted pull, ALIE's coordinate
  mean and population std, IPM's mean) is computed once per *distinct target* on a padded
  gather ``[T_chunk, H + 1, d]`` with a mask, chunk by chunk so that a gather stays below
  :attr:`~flwr_tempered.engine.contracts.BatchedAttack.max_elements` elements, then
  expanded to the target's edges (several attackers usually share a target);
* :class:`BatchedSignFlip`, :class:`BatchedBitFlip` depend on the attacker alone,
  :class:`BatchedInf` on nothing;
* :class:`BatchedGaussian` replays each attacker's own random stream: the per-node objects
  own seeded CPU generators and persist across rounds, so the noise is drawn from *their*
  generators, attacker by attacker, with the shapes and dtype the per-node
  :meth:`~flwr_tempered.attacks.simple.Gaussian.craft_all` draws, and the streams advance
  exactly as the per-node runtime advances them.

Every knob is read per attacker (``self.attacks[a]``), so attack objects with different
knobs in one run are honoured. None of these attacks reads the target's rule (the per-node
classes do not set ``uses_rule``), so ``target_rule`` is kept but unused. Attack statistics
(``attack.stats``) are not reproduced: the engine does not report them.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import Tensor

from flwr_tempered.aggregators import Rule
from flwr_tempered.attacks import (
    ALIE,
    AttackBase,
    BitFlip,
    Dissensus,
    Gaussian,
    Inf,
    InnerProductManipulation,
    SignFlip,
    alie_default_z,
)
from flwr_tempered.topology import Topology

from .contracts import AttackInputs, BatchedAttack, register_batched_attack

__all__ = [
    "BatchedALIE",
    "BatchedBitFlip",
    "BatchedDissensus",
    "BatchedGaussian",
    "BatchedIPM",
    "BatchedInf",
    "BatchedSignFlip",
    "build_attack_inputs",
]


# ------------------------------------------------------------------------------ inputs
def build_attack_inputs(topology: Topology, half: Tensor, previous: Tensor | None,
                        present: Tensor, round: int, total_rounds: int) -> AttackInputs:
    """The :class:`AttackInputs` of one round, as the per-node runtime would view it.

    Mirrors :func:`flwr_tempered.runtime.inprocess._craft` and
    :meth:`flwr_tempered.node.Node.craft`: every Byzantine node (in sorted order) targets
    its neighbours in topology order that are honest and ``present``; a target that puts
    zero total weight on its Byzantine neighbours cannot be influenced and is skipped. A
    target's honest neighbours are those of the topology that are present (topology
    order), with their mixing weights; ``byzantine_weight`` and ``n_byzantine`` count
    every Byzantine neighbour of the target, present or not, as the per-node view does.

    The attackers' own presence is not checked: the per-node runtime lets every Byzantine
    node craft, so ``half[a]`` must hold the attacker's own model.

    Args:
        topology: the run's topology (graph, Byzantine ids, mixing matrix).
        half: ``Tensor[N, d]``, every node's half-step model.
        previous: ``Tensor[N, d]``, the models at the start of the round, or ``None``.
        present: ``Tensor[N]`` bool: whose half-step model exists this round.
        round, total_rounds: passed through (as in :class:`~flwr_tempered.attacks.
            AttackView`).

    The topology is small next to the models, so the edge lists are built in Python and
    returned as tensors on ``half.device`` (index tensors int64, weights in ``half``'s
    dtype, rounded from the float64 mixing matrix exactly as :meth:`Node.craft` rounds
    them).
    """
    n = topology.n
    if half.dim() != 2 or half.shape[0] != n:
        raise ValueError(f"build_attack_inputs: half must be [N, d] with N = {n}, "
                         f"got {tuple(half.shape)}")
    if previous is not None and previous.shape != half.shape:
        raise ValueError(f"build_attack_inputs: previous must have half's shape "
                         f"{tuple(half.shape)}, got {tuple(previous.shape)}")
    if tuple(present.shape) != (n,):
        raise ValueError(f"build_attack_inputs: present must be [N] = [{n}], "
                         f"got {tuple(present.shape)}")
    here = [bool(p) for p in present.tolist()]
    mixing = topology.mixing
    byzantine = topology.byzantine
    device, dtype = half.device, half.dtype

    weight_of: dict[int, float] = {}
    attackers: list[int] = []
    targets: list[int] = []
    for a in sorted(byzantine):
        for t in topology.recipients(a):
            if t in byzantine or not here[t]:
                continue
            if t not in weight_of:
                row = mixing[t]
                # The same Python sum as Node.craft, so the float64 value is identical.
                weight_of[t] = float(sum(row[k] for k in topology.byzantine_neighbors(t)))
            if weight_of[t] <= 0:
                continue
            attackers.append(a)
            targets.append(t)

    target_nodes = sorted(set(targets))
    row_of = {t: i for i, t in enumerate(target_nodes)}
    honest_lists = [[j for j in topology.honest_neighbors(t) if here[j]] for t in target_nodes]
    width = max((len(h) for h in honest_lists), default=0)
    honest = [h + [0] * (width - len(h)) for h in honest_lists]
    mask = [[True] * len(h) + [False] * (width - len(h)) for h in honest_lists]
    weights = [[float(mixing[t, j]) for j in h] + [0.0] * (width - len(h))
               for t, h in zip(target_nodes, honest_lists, strict=True)]

    def index(values: list[int] | list[list[int]], shape: tuple[int, ...]) -> Tensor:
        return torch.tensor(values, dtype=torch.int64).reshape(shape).to(device)

    count = len(target_nodes)
    return AttackInputs(
        half=half,
        previous=previous,
        attackers=index(attackers, (len(attackers),)),
        targets=index(targets, (len(targets),)),
        target_row=index([row_of[t] for t in targets], (len(targets),)),
        target_nodes=index(target_nodes, (count,)),
        honest=index(honest, (count, width)),
        honest_mask=torch.tensor(mask, dtype=torch.bool).reshape(count, width).to(device),
        honest_weights=torch.tensor(weights, dtype=dtype).reshape(count, width).to(device),
        byzantine_weight=torch.tensor([weight_of[t] for t in target_nodes],
                                      dtype=dtype).to(device),
        n_byzantine=index([len(topology.byzantine_neighbors(t)) for t in target_nodes],
                          (count,)),
        self_weight=torch.tensor([float(mixing[t, t]) for t in target_nodes],
                                 dtype=dtype).to(device),
        round=round,
        total_rounds=total_rounds,
    )


# ----------------------------------------------------------------------------- helpers
AttackT = TypeVar("AttackT", bound=AttackBase)


def _of_type(attacks: Mapping[int, AttackBase], cls: type[AttackT]) -> dict[int, AttackT]:
    """``attacks`` checked to be instances of ``cls`` (``TypeError`` naming a stray one)."""
    typed: dict[int, AttackT] = {}
    for position, attack in attacks.items():
        if not isinstance(attack, cls):
            raise TypeError(f"batched {cls.__name__}: the attack of node {position} is a "
                            f"{type(attack).__name__}")
        typed[position] = attack
    return typed


def _per_position(attacks: Mapping[int, AttackT], knob: Callable[[AttackT], float | None],
                  device: torch.device) -> Tensor:
    """``Tensor[max position + 1]`` float64: ``knob(attack)`` at each attacker's position
    (NaN for ``None`` and for positions without an attack), so a knob is looked up per edge
    with one indexing, ``table[inputs.attackers]``."""
    table = torch.full((max(attacks, default=-1) + 1,), math.nan, dtype=torch.float64)
    for position, attack in attacks.items():
        value = knob(attack)
        table[position] = math.nan if value is None else float(value)
    return table.to(device)


def _attacker_runs(attackers: Tensor) -> list[tuple[int, int, int]]:
    """``(attacker, first edge, edge count)`` for each attacker, in edge order. The
    contract orders edges by attacker; an attacker split into two runs is refused, since
    its per-node object would have crafted all its edges in one call."""
    values, counts = torch.unique_consecutive(attackers, return_counts=True)
    runs: list[tuple[int, int, int]] = []
    start = 0
    for a, k in zip(values.tolist(), counts.tolist(), strict=True):
        runs.append((int(a), start, int(k)))
        start += int(k)
    if len({a for a, _, _ in runs}) != len(runs):
        raise ValueError("AttackInputs: edges must be grouped by attacker")
    return runs


def _honest_sets(inputs: AttackInputs, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """The honest sets ``H_t`` of targets ``start:stop`` as a padded gather: models
    ``Tensor[T_chunk, H + 1, d]`` (the target's own model first, padded slots zeroed) and
    the mask ``Tensor[T_chunk, H + 1]``."""
    own = inputs.target_nodes[start:stop].unsqueeze(1)
    index = torch.cat([own, inputs.honest[start:stop]], dim=1)
    mask = torch.cat([torch.ones_like(own, dtype=torch.bool),
                      inputs.honest_mask[start:stop]], dim=1)
    models = inputs.half[index]
    models.masked_fill_(~mask.unsqueeze(2), 0.0)
    return models, mask


class _PerTargetAttack(BatchedAttack):
    """An attack whose row for edge ``e`` is ``f(statistic of H_t, coefficient_e)``: the
    statistic is computed per distinct target, chunk by chunk, and expanded to the edges
    of the chunk's targets."""

    def __call__(self, inputs: AttackInputs) -> Tensor:
        half = inputs.half
        edges, d = int(inputs.targets.shape[0]), int(half.shape[1])
        out = half.new_empty((edges, d))
        if edges == 0:
            return out
        coefficients = self.coefficients(inputs).to(device=half.device)
        count = int(inputs.target_nodes.shape[0])
        slots = int(inputs.honest.shape[1]) + 1
        step = max(1, self.max_elements // max(1, slots * d))
        order = torch.argsort(inputs.target_row, stable=True)
        rows = inputs.target_row[order]
        starts = list(range(0, count, step))
        cuts = torch.tensor([*starts, count], dtype=rows.dtype, device=rows.device)
        bounds = torch.searchsorted(rows, cuts).tolist()
        for i, start in enumerate(starts):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                continue
            chosen = order[lo:hi]
            out[chosen] = self.craft_chunk(inputs, start, min(count, start + step),
                                           rows[lo:hi] - start, coefficients[chosen])
        return out

    @abstractmethod
    def coefficients(self, inputs: AttackInputs) -> Tensor:
        """``Tensor[E]`` float64: the per-edge scalar of the formula (knob and target)."""

    @abstractmethod
    def craft_chunk(self, inputs: AttackInputs, start: int, stop: int, local: Tensor,
                    coefficients: Tensor) -> Tensor:
        """The rows of the edges whose targets are ``start:stop`` (``local``: the row of
        each edge's target within the chunk; ``coefficients``: each edge's scalar)."""


# ----------------------------------------------------------------------------- attacks
@register_batched_attack(Dissensus)
class BatchedDissensus(_PerTargetAttack):
    """Dissensus, batched: ``x_t - (eps / byzantine_weight_t) * sum_j W_tj (x_j - x_t)``
    (with ``weights="uniform"``: ``x_t - (eps / n_byzantine_t) * sum_j (x_j - x_t)``).

    He, Karimireddy, Jaggi, "Byzantine-robust decentralized learning via ClippedGossip",
    arXiv:2202.01545 (per-node: :class:`~flwr_tempered.attacks.Dissensus`). The honest pull
    is one batched matrix product per chunk of targets; the per-node attack reads the
    topology's mixing weights whatever the target's rule, and so does this one. A target
    without honest neighbours is sent its own model.
    """

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        super().__init__(attacks, device, target_rule)
        typed = _of_type(attacks, Dissensus)
        self.eps = _per_position(typed, lambda a: a.eps, device)
        conventions = {a.weights for a in typed.values()}
        if len(conventions) > 1:
            raise ValueError(f"batched dissensus: the attackers use different weights "
                             f"{sorted(conventions)}")
        self.uniform = conventions == {"uniform"}

    def coefficients(self, inputs: AttackInputs) -> Tensor:
        eps = self.eps.to(inputs.attackers.device)[inputs.attackers]
        if self.uniform:
            return eps / inputs.n_byzantine[inputs.target_row].double()
        return eps / inputs.byzantine_weight[inputs.target_row].double()

    def craft_chunk(self, inputs: AttackInputs, start: int, stop: int, local: Tensor,
                    coefficients: Tensor) -> Tensor:
        x_t = inputs.half[inputs.target_nodes[start:stop]]
        mask = inputs.honest_mask[start:stop]
        neighbours = inputs.half[inputs.honest[start:stop]]
        neighbours.sub_(x_t.unsqueeze(1)).masked_fill_(~mask.unsqueeze(2), 0.0)
        weights = mask.to(neighbours.dtype) if self.uniform else \
            inputs.honest_weights[start:stop].masked_fill(~mask, 0.0)
        pull = torch.bmm(weights.unsqueeze(1), neighbours).squeeze(1)
        scale = coefficients.to(x_t.dtype).unsqueeze(1)
        return x_t[local] - scale * pull[local]


@register_batched_attack(ALIE)
class BatchedALIE(_PerTargetAttack):
    """A little is enough, batched: ``mu_t - z * sigma_t`` coordinate-wise over ``H_t``
    (``ddof`` and ``z_from`` as the per-node attack's).

    Baruch, Baruch, Goldberg, "A little is enough: circumventing defenses for distributed
    learning", NeurIPS 2019 (per-node: :class:`~flwr_tempered.attacks.ALIE`). ``mu_t`` and
    the *population* std ``sigma_t`` are masked reductions over the padded honest set.
    ``z=None`` uses :func:`~flwr_tempered.attacks.alie_default_z` with
    ``n = |H_t| + n_byzantine_t`` (``|H_t|``: the target and its *present* honest
    neighbours) and ``m = n_byzantine_t``, evaluated once per distinct ``(n, m)`` pair.
    """

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        super().__init__(attacks, device, target_rule)
        typed = _of_type(attacks, ALIE)
        # A run's explicit z, else its run-wide z_max (z_from="run"), else NaN: per target.
        self.z = _per_position(typed, lambda a: a.z if a.z is not None else a.run_z, device)
        ddofs = {a.ddof for a in typed.values()}
        if len(ddofs) > 1:
            raise ValueError(f"batched ALIE: the attackers use different ddof {sorted(ddofs)}")
        self.ddof = ddofs.pop() if ddofs else 0

    def coefficients(self, inputs: AttackInputs) -> Tensor:
        z = self.z.to(inputs.attackers.device)[inputs.attackers]
        default = z.isnan()
        if bool(default.any()):
            m = inputs.n_byzantine
            n = inputs.honest_mask.sum(dim=1) + 1 + m
            pairs, inverse = torch.unique(torch.stack([n, m], dim=1), dim=0,
                                          return_inverse=True)
            values = torch.tensor([alie_default_z(int(a), int(b)) for a, b in pairs.tolist()],
                                  dtype=torch.float64, device=z.device)
            z = torch.where(default, values[inverse][inputs.target_row], z)
        return z

    def craft_chunk(self, inputs: AttackInputs, start: int, stop: int, local: Tensor,
                    coefficients: Tensor) -> Tensor:
        models, mask = _honest_sets(inputs, start, stop)
        size = mask.sum(dim=1, keepdim=True).to(models.dtype)
        mean = models.sum(dim=1) / size
        models.sub_(mean.unsqueeze(1)).masked_fill_(~mask.unsqueeze(2), 0.0).square_()
        # ddof = 1 on a single vector: no spread (ALIE.craft's convention), not NaN.
        std = (models.sum(dim=1) / (size - self.ddof).clamp(min=1)).sqrt_()
        z = coefficients.to(models.dtype).unsqueeze(1)
        return mean[local] - z * std[local]


@register_batched_attack(InnerProductManipulation)
class BatchedIPM(_PerTargetAttack):
    """Inner-product manipulation, batched: ``-eps * mean(H_t)``.

    Xie, Koyejo, Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner product
    manipulation", UAI 2019 (per-node: :class:`~flwr_tempered.attacks.
    InnerProductManipulation`). The mean is a masked reduction over the padded honest set.
    """

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        super().__init__(attacks, device, target_rule)
        self.eps = _per_position(_of_type(attacks, InnerProductManipulation),
                                 lambda a: a.eps, device)

    def coefficients(self, inputs: AttackInputs) -> Tensor:
        return -self.eps.to(inputs.attackers.device)[inputs.attackers]

    def craft_chunk(self, inputs: AttackInputs, start: int, stop: int, local: Tensor,
                    coefficients: Tensor) -> Tensor:
        models, mask = _honest_sets(inputs, start, stop)
        mean = models.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(models.dtype)
        return coefficients.to(models.dtype).unsqueeze(1) * mean[local]


@register_batched_attack(SignFlip)
class BatchedSignFlip(BatchedAttack):
    """Sign flip, batched: ``own_previous - scale * (own - own_previous)`` to every target
    (per-node: :class:`~flwr_tempered.attacks.SignFlip`), with ``own = half[a]`` and
    ``own_previous = previous[a]``; computed once per attacker, then repeated on its
    edges."""

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        super().__init__(attacks, device, target_rule)
        self.scale = _per_position(_of_type(attacks, SignFlip), lambda a: a.scale, device)

    def __call__(self, inputs: AttackInputs) -> Tensor:
        half = inputs.half
        if inputs.targets.shape[0] == 0:
            return half.new_empty((0, half.shape[1]))
        if inputs.previous is None:
            raise ValueError("sign_flip: needs AttackInputs.previous (the attacker's model at "
                             "the start of the round), got None")
        attackers, inverse = torch.unique(inputs.attackers, return_inverse=True)
        own, previous = half[attackers], inputs.previous[attackers]
        scale = self.scale.to(attackers.device)[attackers].to(half.dtype).unsqueeze(1)
        vectors = previous - scale * (own - previous)
        return vectors[inverse]


@register_batched_attack(BitFlip)
class BatchedBitFlip(BatchedAttack):
    """Bit flip, batched: ``-own`` to every target (per-node:
    :class:`~flwr_tempered.attacks.BitFlip`), ``own = half[a]``."""

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        super().__init__(attacks, device, target_rule)
        _of_type(attacks, BitFlip)

    def __call__(self, inputs: AttackInputs) -> Tensor:
        return -inputs.half[inputs.attackers]


@register_batched_attack(Inf)
class BatchedInf(BatchedAttack):
    """Infinity, batched: ``+inf`` on every coordinate of every edge (per-node:
    :class:`~flwr_tempered.attacks.Inf`)."""

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        super().__init__(attacks, device, target_rule)
        _of_type(attacks, Inf)

    def __call__(self, inputs: AttackInputs) -> Tensor:
        half = inputs.half
        return half.new_full((int(inputs.targets.shape[0]), int(half.shape[1])), math.inf)


@register_batched_attack(Gaussian)
class BatchedGaussian(BatchedAttack):
    """Gaussian noise, batched: ``mean + sigma * N(0, I)`` (``around="zero"``) or
    ``own + (mean + sigma * N(0, I))`` (``around="own"``), an independent draw per edge
    (per-node: :class:`~flwr_tempered.attacks.Gaussian`).

    The noise is the per-node objects' own stream: for each attacker (few), one
    ``torch.randn((k, d))`` in the model dtype from ``self.attacks[a].generator`` on the
    CPU, ``k`` its number of targets this round — the single draw the per-node
    ``craft_all`` makes (none when ``k = 0``) — shifted and scaled with the same
    operations, then moved to the device. The generators advance as in the per-node
    runtime, so the next round continues the same streams.
    """

    def __init__(self, attacks: Mapping[int, AttackBase], device: torch.device,
                 target_rule: Rule | None) -> None:
        super().__init__(attacks, device, target_rule)
        self.gaussians = _of_type(attacks, Gaussian)

    def __call__(self, inputs: AttackInputs) -> Tensor:
        half = inputs.half
        d = int(half.shape[1])
        out = half.new_empty((int(inputs.targets.shape[0]), d))
        for a, first, k in _attacker_runs(inputs.attackers):
            attack = self.gaussians[a]
            noise = attack.mean + attack.sigma * torch.randn(
                (k, d), generator=attack.generator, dtype=half.dtype)
            rows = out[first:first + k]
            rows.copy_(noise)
            if attack.around == "own":
                rows.add_(half[a])
        return out
