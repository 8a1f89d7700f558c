"""Pre-aggregation wrappers that improve any inner rule: NNM and bucketing.

NNM: Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan, "Fixing by
mixing: a recipe for optimal Byzantine ML under heterogeneity", AISTATS 2023.
Bucketing: S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-robust learning on heterogeneous
datasets via bucketing", ICLR 2022.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import Rule, check_int_at_least, check_majority, register_rule, resolve_rule
from .linalg import pairwise_sq_distances

RuleSpec = Rule | str | Mapping[str, Any]


def _run_inner(
    inner: Rule, own: Tensor, received: Tensor, weights: Tensor | None, round: int, lost: int
) -> tuple[Tensor, dict[str, float]]:
    """Apply ``inner`` to already-validated inputs, telling it that ``lost`` of its inputs
    were proven faulty (so its Byzantine budget shrinks as in the base policy)."""
    inner.stats = {}
    result = inner._aggregate(own, received, weights, round=round, rejected=lost)
    return result, {f"inner_{key}": value for key, value in inner.stats.items()}


class PreAggregation(Rule):
    """A rule that transforms its inputs, then lets ``inner`` (a rule, a rule name or a
    mapping ``{"name": ..., **params}``) aggregate them: it reads and needs weights exactly
    when the inner rule does, and resetting it resets the inner rule."""

    def __init__(self, inner: RuleSpec) -> None:
        super().__init__()
        self.inner = resolve_rule(inner)

    @property
    def uses_weights(self) -> bool:  # type: ignore[override]
        return self.inner.uses_weights

    @property
    def requires_weights(self) -> bool:  # type: ignore[override]
        return self.inner.requires_weights

    def reset(self) -> None:
        self.inner.reset()

    def _apply_inner(self, own: Tensor, received: Tensor, weights: Tensor | None, round: int,
                     lost: int) -> Tensor:
        """``inner`` on the transformed, already validated inputs, told that ``lost`` of its
        inputs were proven faulty; its stats join this rule's with the prefix ``inner_``."""
        result, inner_stats = _run_inner(self.inner, own, received, weights, round, lost)
        self.stats.update(inner_stats)
        return result

    def _apply_inner_clients(self, reference: Tensor, rows: Tensor, weights: Tensor | None,
                             round: int, refused: int) -> Tensor:
        """Server-side: ``inner.aggregate_clients`` on the transformed clients' models (the
        global model as its reference); its stats join this rule's with ``inner_``."""
        result = self.inner.aggregate_clients(reference, rows, weights, round=round,
                                              refused=refused)
        self.stats.update({f"inner_{key}": value for key, value in self.inner.stats.items()})
        return result


def nearest_neighbor_mix(inputs: Tensor, f: int) -> Tensor:
    """Every row of ``inputs`` replaced by the mean of its ``n - f`` nearest rows (itself
    included); ``f`` is clamped to ``[0, n - 1]``."""
    n = inputs.shape[0]
    f = min(max(f, 0), n - 1)
    nearest = pairwise_sq_distances(inputs).topk(n - f, dim=1, largest=False).indices
    # Row i of ``mixing`` averages input i's n - f nearest inputs: one matrix product.
    mixing = torch.zeros(n, n, dtype=inputs.dtype, device=inputs.device)
    mixing.scatter_(1, nearest, 1.0 / (n - f))
    return mixing @ inputs


@register_rule("nnm")
class NearestNeighborMixing(PreAggregation):
    """Replace every input (own included) by the average of its ``n - f`` nearest inputs
    (itself included), then apply ``inner`` (default: mean). Needs ``n >= 2f + 1``."""

    def __init__(self, f: int, inner: RuleSpec = "mean") -> None:
        check_int_at_least("nnm", "f", f, 0)
        super().__init__(inner)
        self.f = f

    def check_input_count(self, k: int) -> None:
        check_majority(self.name, k + 1, self.f)
        self.inner.check_input_count(k)

    def check_client_count(self, num_clients: int) -> None:
        """Server-side: the mixing runs over the clients' models, then the inner rule's
        server form aggregates all the mixed ones."""
        self.check_input_count(num_clients - 1)
        self.inner.check_client_count(num_clients)

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        inputs = stack_with_own(own, received)
        mixed = nearest_neighbor_mix(inputs, self.f - rejected)
        return self._apply_inner(mixed[0], mixed[1:], weights, round, rejected)

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """Server-side NNM: mix the clients' models among themselves, then let the inner
        rule aggregate the mixed models with the global model as its reference."""
        if updates.shape[0] <= 1:
            return super()._aggregate_clients(
                reference, updates, weights, round=round, refused=refused
            )
        self.check_client_count(updates.shape[0] + refused)
        mixed = nearest_neighbor_mix(updates, self.f - refused)
        self.stats = {"received": float(updates.shape[0]), "rejected_nonfinite": float(refused)}
        return self._apply_inner_clients(reference, mixed, weights, round, refused)


@register_rule("bucketing")
class Bucketing(PreAggregation):
    """Bucketing (Karimireddy, He, Jaggi, ICLR 2022): shuffle, average in buckets of ``s``,
    then apply ``inner``. ``seed`` fixes the shuffling sequence. Two layouts:

    * ``"received"`` (default): the received vectors are shuffled into ``ceil(k / s)``
      buckets; ``inner`` aggregates own and the bucket means. With weights, a bucket
      carries the sum of its members' weights.
    * ``"reference"``: the layout of the ClippedGossip authors' reference code
      (``dumbbell_improvement.py``): own and the received vectors form one list, every
      entry is repeated ``s`` times, the ``s (k + 1)`` entries are shuffled, and
      consecutive groups of ``s`` are averaged into ``k + 1`` buckets; the first bucket
      takes own's place for ``inner`` and the others are its received inputs. Weights, if
      any, stay with the positions (bucket ``j`` gets input ``j``'s weight), as the
      reference's aggregators read them by position. Decentralized only.
    """

    LAYOUTS = ("received", "reference")

    def __init__(self, s: int = 2, inner: RuleSpec = "mean", seed: int = 0,
                 layout: str = "received") -> None:
        check_int_at_least("bucketing", "s", s, 1)
        if layout not in self.LAYOUTS:
            raise ValueError(f"bucketing: layout must be one of {', '.join(self.LAYOUTS)}, "
                             f"got {layout!r}")
        super().__init__(inner)
        self.s = s
        self.seed = seed
        self.layout = layout
        self._generator = torch.Generator().manual_seed(seed)

    def check_input_count(self, k: int) -> None:
        if self.layout == "reference":  # as many buckets as inputs
            self.inner.check_input_count(k)
            return
        self.inner.check_input_count(math.ceil(k / self.s))

    def check_client_count(self, num_clients: int) -> None:
        """Server-side: the clients' models fill ``ceil(n / s)`` buckets, whose means the
        inner rule's server form aggregates; the ``"reference"`` layout has no server form."""
        self.check_input_count(num_clients)
        if self.layout == "reference":
            raise ValueError("bucketing: layout='reference' puts the node's own model in the "
                             "first bucket and has no server form; use layout='received'")
        self.inner.check_client_count(math.ceil(num_clients / self.s))

    def reset(self) -> None:
        self._generator.manual_seed(self.seed)
        super().reset()

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        if self.layout == "reference":
            means = self._reference_buckets(torch.cat([own.unsqueeze(0), received]))
            result, inner_stats = _run_inner(self.inner, means[0], means[1:], weights, round,
                                             rejected)
            self.stats.update(buckets=float(means.shape[0]), **inner_stats)
            return result
        k = received.shape[0]
        means, membership = self._bucket_means(received)
        buckets = means.shape[0]
        bucket_weights = None
        if weights is not None:
            grouped = torch.zeros(buckets, dtype=own.dtype, device=own.device)
            grouped.index_add_(0, membership, weights[1:])
            bucket_weights = torch.cat([weights[:1], grouped])
        lost = math.ceil((k + rejected) / self.s) - buckets
        result, inner_stats = _run_inner(self.inner, own, means, bucket_weights, round, lost)
        self.stats.update(buckets=float(buckets), **inner_stats)
        return result

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """Server-side bucketing (Karimireddy et al., 2022): shuffle every client's model
        into buckets of ``s``, then let the inner rule aggregate the bucket means with the
        global model as its reference."""
        k = updates.shape[0]
        self.check_client_count(k + refused)
        if k == 0:
            self.stats = {"received": 0.0, "rejected_nonfinite": float(refused)}
            return reference.clone()
        means, membership = self._bucket_means(updates)
        buckets = means.shape[0]
        bucket_weights = None
        if weights is not None:
            bucket_weights = torch.zeros(buckets, dtype=weights.dtype, device=weights.device)
            bucket_weights.index_add_(0, membership, weights)
        lost = math.ceil((k + refused) / self.s) - buckets
        result = self.inner.aggregate_clients(
            reference, means, bucket_weights, round=round, refused=lost
        )
        self.stats = {
            "received": float(k),
            "rejected_nonfinite": float(refused),
            "buckets": float(buckets),
            **{f"inner_{key}": value for key, value in self.inner.stats.items()},
        }
        return result

    def _reference_buckets(self, inputs: Tensor) -> Tensor:
        """``[n, d]``: every row of ``inputs`` repeated ``s`` times, shuffled, and each run
        of ``s`` consecutive entries averaged (the reference code's layout)."""
        n = inputs.shape[0]
        entries = torch.arange(n * self.s) % n
        shuffled = entries[torch.randperm(n * self.s, generator=self._generator)]
        bucket = torch.arange(n * self.s) // self.s
        sums = torch.zeros_like(inputs)
        sums.index_add_(0, bucket.to(inputs.device), inputs[shuffled.to(inputs.device)])
        return sums / self.s

    def _bucket_means(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The means of ``rows`` shuffled into buckets of ``s``, and each row's bucket."""
        k = rows.shape[0]
        order = torch.randperm(k, generator=self._generator).to(rows.device)
        buckets = math.ceil(k / self.s)
        membership = torch.empty(k, dtype=torch.long, device=rows.device)
        membership[order] = torch.arange(k, device=rows.device) // self.s
        sums = torch.zeros(buckets, rows.shape[1], dtype=rows.dtype, device=rows.device)
        sums.index_add_(0, membership, rows)
        counts = torch.bincount(membership, minlength=buckets).to(rows.dtype)
        return sums / counts.unsqueeze(1), membership
