"""MOZI / UBAR: distance screening followed by a performance check on local data.

S. Guo, T. Zhang, X. Xie, L. Ma, T. Xiang, Y. Liu, "Towards Byzantine-resilient learning in
decentralized systems" (MOZI), arXiv 2002.08569; S. Guo et al., "Byzantine-resilient
decentralized stochastic gradient descent" (UBAR), IEEE TCSVT 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .base import Rule, check_fraction, register_rule
from .linalg import row_distances

#: Loss of a flat model vector on a fresh local batch (lower is better).
LossFunction = Callable[[Tensor], float]


@register_rule("mozi")
class Mozi(Rule):
    """Keep the ``max(1, floor(rho * |N(i)|))`` neighbours closest to ``x_i``; of those keep
    the ones whose loss on a fresh local batch is at most the node's own loss (none: keep
    the single closest); ``x_i <- alpha * x_i + (1 - alpha) * mean(kept)``.

    The loss needs the node's data, so the node binds a callback: pass ``loss_fn`` here or
    call :meth:`bind_loss` later. The callback should evaluate every candidate of one call
    on the same batch (draw a fresh batch per call, not per candidate).
    """

    server_reference = True

    def __init__(
        self, rho: float = 0.5, alpha: float = 0.5, loss_fn: LossFunction | None = None
    ) -> None:
        super().__init__()
        check_fraction("mozi", "rho", rho, open_low=True)
        check_fraction("mozi", "alpha", alpha)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"mozi: loss_fn must be callable, got {loss_fn!r}")
        self.rho = rho
        self.alpha = alpha
        self.loss_fn = loss_fn

    #: A server has no local data to take MOZI's loss on.
    server_form = False

    def bind_loss(self, loss_fn: LossFunction) -> None:
        """Attach the node's local-loss callback (a model vector -> loss on a fresh batch)."""
        if not callable(loss_fn):
            raise ValueError(f"mozi: loss_fn must be callable, got {loss_fn!r}")
        self.loss_fn = loss_fn

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        if self.loss_fn is None:
            raise ValueError("mozi: no local loss callback; pass loss_fn= or call bind_loss()")
        k_total = received.shape[0] + rejected
        keep = min(max(1, math.floor(self.rho * k_total)), received.shape[0])
        distances = row_distances(received, own)
        closest = torch.argsort(distances, stable=True)[:keep]
        own_loss = float(self.loss_fn(own))
        losses = torch.tensor([float(self.loss_fn(received[j])) for j in closest.tolist()])
        good = closest[(losses <= own_loss).to(closest.device)]
        if good.numel() == 0:
            good = closest[:1]
        mask = torch.zeros(received.shape[0], dtype=torch.bool, device=received.device)
        mask[good] = True
        self._note_accepted(mask)
        self.stats.update(
            accepted=float(good.numel()),
            acceptance_rate=good.numel() / k_total,
            distance_passed=float(keep),
        )
        return self.alpha * own + (1.0 - self.alpha) * received[good].mean(dim=0)
