"""BALANCE: Byzantine-robust averaging through local similarity in decentralization.

M. Fang, Z. Zhang, Hairi, P. Khanduri, J. Liu, S. Lu, Y. Liu, N. Gong, "Byzantine-Robust
Decentralized Federated Learning", ACM CCS 2024 (arXiv 2406.10416).

A node accepts neighbour j iff ``||x_i - x_j|| <= gamma * exp(-kappa * t / T) * ||x_i||``
and sets ``x_i <- alpha * x_i + (1 - alpha) * mean(accepted)``; with none accepted it keeps
``x_i``. The acceptance rate is exposed in ``stats`` for metrics.
"""

from __future__ import annotations

import math

from torch import Tensor

from .base import Rule, check_fraction, check_int_at_least, check_positive, register_rule
from .linalg import row_distances


@register_rule("balance")
class Balance(Rule):
    """BALANCE with threshold ``gamma``, decay ``kappa``, self weight ``alpha`` and the
    run's ``total_rounds`` ``T`` (round ``t`` is the call's ``round`` argument)."""

    server_reference = True

    def __init__(
        self, total_rounds: int, gamma: float = 0.3, kappa: float = 1.0, alpha: float = 0.5
    ) -> None:
        super().__init__()
        check_int_at_least("balance", "total_rounds", total_rounds, 1)
        check_positive("balance", "gamma", gamma)
        if not (isinstance(kappa, int | float) and kappa >= 0 and math.isfinite(kappa)):
            raise ValueError(f"balance: kappa must be a finite number >= 0, got {kappa!r}")
        check_fraction("balance", "alpha", alpha)
        self.total_rounds = total_rounds
        self.gamma = gamma
        self.kappa = kappa
        self.alpha = alpha

    def acceptance_radius(self, own: Tensor, round: int) -> float:
        """``gamma * exp(-kappa * round / total_rounds) * ||own||``: the largest distance
        from ``own`` at which a neighbour's model is still accepted in ``round``."""
        decay = math.exp(-self.kappa * round / self.total_rounds)
        return self.gamma * decay * float(own.norm())

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        radius = self.acceptance_radius(own, round)
        accepted = row_distances(received, own) <= radius
        count = int(accepted.sum())
        self._note_accepted(accepted)
        k = received.shape[0] + rejected
        self.stats.update(
            accepted=float(count),
            acceptance_rate=count / k,
            radius=radius,
        )
        if count == 0:
            return own.clone()
        # Mean of the accepted rows as one matrix-vector product (no copy of the rows).
        selection = accepted.to(own.dtype) * ((1.0 - self.alpha) / count)
        return self.alpha * own + selection @ received
