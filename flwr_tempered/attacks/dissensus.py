"""The dissensus attack against gossip-style decentralized averaging."""

from __future__ import annotations

from torch import Tensor

from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_choice,
    check_finite,
    register_attack,
)


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

    Args:
        eps: the push factor.
        weights: ``"mixing"`` (default) uses the target's row of the mixing matrix;
            ``"uniform"`` gives every neighbour the weight ``1 / (degree + 1)``, which is
            what the ClippedGossip authors' reference code uses against a rule that is
            not a gossip-style average (trimmed mean, median, RFA, Krum). The push then
            becomes ``x_t - eps * sum_j (x_j - x_t) / n_byzantine``.
    """

    WEIGHTS = ("mixing", "uniform")

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, eps: float = 1.5, weights: str = "mixing") -> None:
        super().__init__()
        check_finite(self.name, "eps", eps, minimum=0.0, strict=True)
        check_choice(self.name, "weights", weights, self.WEIGHTS)
        self.eps = float(eps)
        self.weights = weights

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        x_t = target.model
        if self.weights == "uniform":
            # Every neighbour weighs 1 / (degree + 1); the weight cancels in the ratio.
            pull = (target.honest_neighbors - x_t).sum(dim=0)
            return x_t - (self.eps / target.n_byzantine) * pull
        pull = target.honest_weights @ (target.honest_neighbors - x_t)
        return x_t - (self.eps / target.byzantine_weight) * pull
