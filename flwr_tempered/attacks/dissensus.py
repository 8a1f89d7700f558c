"""The dissensus attack against gossip-style decentralized averaging."""

from __future__ import annotations

from torch import Tensor

from .base import AttackView, ModelPoisoningAttack, TargetView, check_finite, register_attack


@register_attack("dissensus")
class Dissensus(ModelPoisoningAttack):
    """Dissensus: push each target away from its honest neighbours.

    To target ``t`` every Byzantine neighbour sends::

        x_t - eps * (sum_{j honest in N(t)} W_tj (x_j - x_t)) / byzantine_weight

    He, Karimireddy, Jaggi, "Byzantine-robust decentralized learning via ClippedGossip",
    arXiv:2202.01545. When all Byzantine neighbours of ``t`` send this, ``t``'s gossip step
    ``x_t + sum_j W_tj (x_j - x_t)`` becomes ``x_t + (1 - eps) * P`` with ``P`` the honest
    pull; ``eps = 1.5`` reverses it to ``-0.5 * P``. A target without honest neighbours is
    sent its own model.
    """

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, eps: float = 1.5) -> None:
        super().__init__()
        check_finite(self.name, "eps", eps, minimum=0.0, strict=True)
        self.eps = float(eps)

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        x_t = target.model
        pull = target.honest_weights @ (target.honest_neighbors - x_t)
        return x_t - (self.eps / target.byzantine_weight) * pull
