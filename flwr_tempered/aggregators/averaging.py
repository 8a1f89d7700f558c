"""Plain averaging rules: the non-robust baselines every robust rule is compared with."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Rule, register_rule


def stack_with_own(own: Tensor, received: Tensor) -> Tensor:
    """All inputs of a decentralized rule as one ``Tensor[k+1, d]``, own first."""
    return torch.cat([own.unsqueeze(0), received], dim=0)


@register_rule("mean")
class Mean(Rule):
    """Average of own and the received vectors; with ``weights``, the weighted average
    (normalised over the inputs that survived the non-finite filter), i.e. FedAvg."""

    uses_weights = True

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        if weights is None:
            return (own + received.sum(dim=0)) / (received.shape[0] + 1)
        total = weights.sum()
        if float(total) <= 0.0:
            return own.clone()
        return (weights[0] * own + weights[1:] @ received) / total


@register_rule("gossip")
class Gossip(Rule):
    """Plain gossip averaging ``x_i <- sum_j W_ij x_j`` over self and neighbours.

    Own's weight is computed as ``1 - sum_{j in N(i)} W_ij`` so that the weight of a
    neighbour whose vector was rejected stays on the node itself.
    """

    uses_weights = True
    requires_weights = True
    server_reference = True

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        assert weights is not None  # guaranteed by requires_weights
        neighbour_weights = weights[1:]
        return (1.0 - neighbour_weights.sum()) * own + neighbour_weights @ received


@register_rule("local")
class Local(Rule):
    """No collaboration: every node keeps its own model and ignores what it received.

    The baseline a robust rule must beat to be worth running: an honest node that trains
    on its shard alone cannot be poisoned, so a rule whose honest nodes end below
    ``local`` has cost them more than the attack it stopped. Decentralized only; a server
    has no model of its own to keep.
    """

    server_form = False

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        self._note_accepted(torch.zeros(received.shape[0], dtype=torch.bool,
                                        device=received.device))
        return own.clone()

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        raise ValueError("local: the no-collaboration baseline keeps each node's own model "
                         "and has no server form; use fedavg or a robust rule on a server")
