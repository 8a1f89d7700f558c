"""MoNNA: the mean of the inputs nearest to a trusted pivot.

S. Farhadkhani, R. Guerraoui, N. Gupta, L.-N. Hoang, R. Pinot, J. Stephan, "Robust
collaborative learning with linear gradient overhead", ICML 2023.

The pivot is an input the aggregating party trusts: in decentralized use the node's own
model (which is therefore always among the nearest), server-side the current global model
(which is not a candidate: the ``n - f`` nearest clients are averaged).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import HonestMajorityRule, register_rule
from .linalg import row_distances


def mean_of_nearest(rows: Tensor, pivot: Tensor, count: int) -> Tensor:
    """The mean of the ``count`` rows of ``rows`` nearest to ``pivot`` (on equal distances
    the earlier row)."""
    order = torch.argsort(row_distances(rows, pivot), stable=True)
    return rows[order[:count]].mean(dim=0)


@register_rule("monna")
class MoNNA(HonestMajorityRule):
    """MoNNA: the mean of the ``n - f`` inputs nearest to own (own included), needs
    ``n >= 2f + 1``; server-side the ``n - f`` clients nearest to the global model."""

    server_reference = True

    def check_client_count(self, num_clients: int) -> None:
        """Server-side the ``n`` inputs are the clients only (the global model is the pivot,
        not an input)."""
        self.check_input_count(num_clients - 1)

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        inputs = stack_with_own(own, received)  # own first: at distance 0, always kept
        kept = inputs.shape[0] - self.budget(rejected)
        self.stats.update(selected=float(kept))
        return mean_of_nearest(inputs, own, kept)

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """Server-side MoNNA: the ``n - f`` of the ``n`` clients' models nearest to the
        global model (the trusted pivot, not itself averaged)."""
        k = updates.shape[0]
        self.check_client_count(k + refused)  # n = the clients, refused ones included
        self.stats = {"received": float(k), "rejected_nonfinite": float(refused)}
        if k == 0:
            return reference.clone()
        kept = k - self.budget(refused)
        self.stats.update(selected=float(kept))
        return mean_of_nearest(updates, reference, kept)
