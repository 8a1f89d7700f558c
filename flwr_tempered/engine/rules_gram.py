"""Rules that need only distances and weighted sums, computed without gathering vectors.

Gossip, mean, ClippedGossip and BALANCE aggregate a node's neighbourhood as a weighted
sum whose weights depend only on the mixing weights and on distances from the node's own
model. When the run's models are few compared with the slots to aggregate (a dense
graph, or the seed's 20-node dumbbell), both come cheapest from matrix products over the
stacked models: distances from one Gram matrix of the centred models (in float64, so the
cancellation of ``|a|^2 + |b|^2 - 2 a.b`` stays far below the rules' decisions), and
every node's result from one ``[R, M] x [M, d]`` product. No ``[R, K, d]`` copy of the
neighbourhoods is made.

Each rule here mirrors its gathering version in :mod:`flwr_tempered.engine.rules_averaging`
(same statistics, same non-finite policy); the engine picks this path when it is cheaper.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flwr_tempered.aggregators import Balance, ClippedGossip, Gossip, Mean, Rule
from flwr_tempered.aggregators.base import finite_rows
from flwr_tempered.aggregators.linalg import BLOCK_ELEMENTS

from .contracts import BatchedStats
from .rules_averaging import BatchedClippedGossip, clip_scales


@dataclass
class SlotGeometry:
    """A chunk of ``R`` aggregating nodes seen through distances only.

    Attributes:
        kept: ``[R, K]`` bool: present slots holding a finite vector.
        dirty: ``[R, K]`` bool: present slots holding a non-finite vector.
        weights: ``[R, K + 1]`` own's mixing weight then the slots' (model dtype).
        refused: ``[R]`` inputs refused upstream.
        distances: ``[R, K]`` distance from own to each kept slot's vector (0 elsewhere).
        own_norms: ``[R]`` ``||own||``.
        round: the round index.
    """

    kept: Tensor
    dirty: Tensor
    weights: Tensor
    refused: Tensor
    distances: Tensor
    own_norms: Tensor
    round: int

    @property
    def count(self) -> Tensor:
        """Kept rows per node."""
        return self.kept.sum(dim=1)

    @property
    def aggregated(self) -> Tensor:
        """Nodes with at least one kept row (the others keep their own model)."""
        return self.count > 0

    @property
    def slot_weights(self) -> Tensor:
        """The kept slots' mixing weights (zero elsewhere)."""
        return torch.where(self.kept, self.weights[:, 1:], 0.0)

    def common_stats(self, present: Tensor) -> BatchedStats:
        """``received``, ``rejected_nonfinite`` and (where > 0) ``refused``."""
        refused = self.refused.double()
        stats: BatchedStats = {"received": present.sum(dim=1).double(),
                               "rejected_nonfinite": self.dirty.sum(dim=1).double()}
        if bool((refused > 0).any()):
            stats["refused"] = torch.where(refused > 0, refused,
                                           torch.full_like(refused, math.nan))
        return stats


def _only_where(values: Tensor, rows: Tensor) -> Tensor:
    values = values.double()
    return torch.where(rows, values, torch.full_like(values, math.nan))


class GramRule(ABC):
    """A rule as coefficients over own and the slots, from a :class:`SlotGeometry`."""

    #: The per-node rule adds a step to own (``x_i + sum_j c_j (x_j - x_i)``) rather than
    #: mixing (``c_0 x_i + sum_j c_j x_j``): combined in that form, the float rounding
    #: follows the per-node rule's.
    relative: bool = False

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        #: ``[R, K]`` bool after a call, as :attr:`BatchedRule.accepted_slots`.
        self.accepted_slots: Tensor | None = None

    @abstractmethod
    def coefficients(self, geometry: SlotGeometry) -> tuple[Tensor, BatchedStats]:
        """``[R, K + 1]`` coefficients (own first; zero on slots that are not kept) whose
        combination of own and the slots' vectors is each node's result, and the rule's
        own statistics (NaN where the node kept no row)."""


class GramMean(GramRule):
    """Weighted mean over own and the kept rows (own kept when the total weight is 0)."""

    def coefficients(self, geometry: SlotGeometry) -> tuple[Tensor, BatchedStats]:
        slots = geometry.slot_weights
        own = geometry.weights[:, :1]
        total = own + slots.sum(dim=1, keepdim=True)
        positive = total > 0
        safe = torch.where(positive, total, torch.ones_like(total))
        coefficients = torch.cat([own, slots], dim=1) / safe
        keep_own = torch.cat([torch.ones_like(own), torch.zeros_like(slots)], dim=1)
        return torch.where(positive & geometry.aggregated.unsqueeze(1), coefficients,
                           keep_own), {}


class GramGossip(GramRule):
    """``(1 - sum_j W_ij) x_i + sum_j W_ij x_j`` over the kept rows."""

    def coefficients(self, geometry: SlotGeometry) -> tuple[Tensor, BatchedStats]:
        slots = geometry.slot_weights
        return torch.cat([1.0 - slots.sum(dim=1, keepdim=True), slots], dim=1), {}


class GramClippedGossip(GramRule):
    """``x_i + sum_j W_ij clip(x_j - x_i, tau)``: coefficient ``W_ij min(1, tau/d_ij)``
    per slot and the rest on own; fixed or adaptive ``tau`` as the per-node rule."""

    relative = True

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        assert isinstance(rule, ClippedGossip)
        self.params = rule
        self._radius = BatchedClippedGossip(rule, 1, torch.device("cpu"))

    def coefficients(self, geometry: SlotGeometry) -> tuple[Tensor, BatchedStats]:
        slots = geometry.slot_weights
        distances = geometry.distances
        tau: Tensor | float
        if self.params.tau is None:
            tau_rows = self._radius.adaptive_radius(geometry, distances)  # type: ignore[arg-type]
            tau = tau_rows.unsqueeze(1)
        else:
            tau = self.params.tau
            tau_rows = torch.full_like(geometry.own_norms, tau)
        scaled = torch.where(geometry.kept, slots * clip_scales(distances, tau), 0.0)
        coefficients = torch.cat([1.0 - scaled.sum(dim=1, keepdim=True), scaled], dim=1)
        clipped = (geometry.kept & (distances > tau)).sum(dim=1)
        return coefficients, {"clipped": _only_where(clipped, geometry.aggregated),
                              "tau": _only_where(tau_rows, geometry.aggregated)}


class GramBalance(GramRule):
    """BALANCE: accept the kept rows within ``gamma exp(-kappa t/T) ||x_i||``; own gets
    ``alpha`` and each accepted row ``(1 - alpha) / accepted`` (own alone if none)."""

    def __init__(self, rule: Rule) -> None:
        super().__init__(rule)
        assert isinstance(rule, Balance)
        self.params = rule

    def coefficients(self, geometry: SlotGeometry) -> tuple[Tensor, BatchedStats]:
        params = self.params
        dtype = geometry.weights.dtype
        decay = math.exp(-params.kappa * geometry.round / params.total_rounds)
        radius = (params.gamma * decay) * geometry.own_norms.double()
        accepted = geometry.kept & (geometry.distances <= radius.to(dtype).unsqueeze(1))
        self.accepted_slots = accepted
        count = accepted.sum(dim=1)
        share = ((1.0 - params.alpha) / count.clamp(min=1).double()).to(dtype)
        some = (count > 0).unsqueeze(1)
        slots = torch.where(accepted, share.unsqueeze(1), 0.0)
        own = torch.where(some, torch.full_like(slots[:, :1], params.alpha),
                          torch.ones_like(slots[:, :1]))
        total = (geometry.count + geometry.dirty.sum(dim=1) + geometry.refused.to(
            geometry.count.device)).double()
        aggregated = geometry.aggregated
        return torch.cat([own, slots], dim=1), {
            "accepted": _only_where(count, aggregated),
            "acceptance_rate": _only_where(count.double() / total.clamp(min=1), aggregated),
            "radius": _only_where(radius, aggregated),
        }


_GRAM_RULES: dict[type[Rule], Callable[[Rule], GramRule]] = {
    Mean: GramMean, Gossip: GramGossip, ClippedGossip: GramClippedGossip, Balance: GramBalance,
}


def gram_rule_for(rule: Rule) -> GramRule | None:
    """The distance-only version of ``rule`` (exact class), or ``None``."""
    factory = _GRAM_RULES.get(type(rule))
    return None if factory is None else factory(rule)


class StackedGeometry:
    """Distances between the rows of the stacked models ``sources [M, d]``, from one
    float64 Gram matrix of the finite rows centred at their mean, accumulated over
    column blocks (so no ``[M, d]`` float64 copy is made)."""

    def __init__(self, sources: Tensor) -> None:
        self.sources = sources
        self.finite = finite_rows(sources)
        m, d = sources.shape
        rows = self.finite.nonzero().flatten()
        self.rows = rows
        clean = sources[rows] if rows.numel() < m else sources
        gram = torch.zeros(m, m, dtype=torch.float64, device=sources.device)
        squares = torch.zeros(m, dtype=torch.float64, device=sources.device)
        width = max(1, BLOCK_ELEMENTS // max(m, 1))
        index = rows.unsqueeze(1)
        for lo in range(0, d, width):
            block = clean[:, lo:lo + width].double()
            squares.index_add_(0, rows, (block * block).sum(dim=1))
            block -= block.mean(dim=0)  # centred: distances do not change, precision does
            gram[index, rows] += block @ block.T
        self.gram = gram
        self.norms = squares.sqrt()

    def distances(self, own_rows: Tensor, slot_rows: Tensor) -> Tensor:
        """``[R, K]``: ``||sources[slot_rows[r, k]] - sources[own_rows[r]]||``."""
        diagonal = self.gram.diagonal()
        squared = (diagonal[own_rows].unsqueeze(1) + diagonal[slot_rows]
                   - 2.0 * self.gram[own_rows.unsqueeze(1), slot_rows])
        return squared.clamp(min=0.0).sqrt()

    def combine(self, own_rows: Tensor, slot_rows: Tensor, coefficients: Tensor,
                kept: Tensor, relative: bool = False, out: Tensor | None = None) -> Tensor:
        """``[R, d]``: ``coefficients[r, 0] * own + sum_k coefficients[r, k + 1] *
        sources[slot_rows[r, k]]`` over kept slots, as one matrix product; with
        ``relative``, ``own + (sum_k c_k x_k - (sum_k c_k) own)`` (the slots' coefficients
        only, the per-node ClippedGossip's order of operations).

        ``out`` (``[R, d]``, sources' dtype, not overlapping ``sources``) receives the
        result without any ``[R, d]`` temporary: on a CPU every fresh tensor above 32 MiB
        is mapped and faulted in anew, which cost more than the product itself."""
        sources = self.sources
        slots = torch.where(kept, coefficients[:, 1:], 0.0).to(sources.dtype)
        weights = torch.zeros(coefficients.shape[0], sources.shape[0],
                              dtype=sources.dtype, device=sources.device)
        if not relative:
            weights.scatter_add_(1, own_rows.unsqueeze(1),
                                 coefficients[:, :1].to(sources.dtype))
        weights.scatter_add_(1, slot_rows, slots)
        if out is None:
            out = sources.new_empty((coefficients.shape[0], sources.shape[1]))
        if self.rows.numel() < sources.shape[0]:
            torch.matmul(weights[:, self.rows], sources[self.rows], out=out)
        else:
            torch.matmul(weights, sources, out=out)
        if not relative:
            return out
        first = int(own_rows[0])
        contiguous = int(own_rows[-1]) - first + 1 == own_rows.numel()
        own = sources[first:first + own_rows.numel()] if contiguous else sources[own_rows]
        # own + (mixed - s * own), done in place.
        out.addcmul_(own, slots.sum(dim=1, keepdim=True), value=-1.0)
        return out.add_(own)
