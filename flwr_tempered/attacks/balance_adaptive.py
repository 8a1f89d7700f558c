"""An adaptive attack on BALANCE that stays just inside its acceptance radius."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_finite,
    check_int,
    register_attack,
    require_previous,
)


@register_attack("balance_adaptive")
class BalanceAdaptive(ModelPoisoningAttack):
    """Send ``x_t + r * u`` to target ``t``, just inside BALANCE's acceptance ball.

    BALANCE (Fang, Zhang, Ye, Yang, Gong, "Byzantine-robust decentralized federated learning",
    ACM CCS 2024) accepts a neighbour's model ``v`` at node ``t`` in round ``k`` iff
    ``||x_t - v|| <= gamma * exp(-kappa * k / T) * ||x_t||``. The attack sends a vector at
    distance ``r = (1 - margin) * radius`` from ``x_t`` in direction ``u``, the unit vector
    opposite to the honest update direction ``mean(H_t) - previous_t`` (if that direction is
    zero, ``u = -x_t / ||x_t||``; if ``x_t = 0`` too, ``x_t`` itself is sent).

    The radius comes from, in order: ``target.rule.acceptance_radius(x_t, round)`` when the
    rule has that method; the rule's ``gamma``, ``kappa`` and ``total_rounds`` attributes
    when it has all three; else this attack's ``gamma`` and ``kappa`` with ``T`` =
    ``view.total_rounds``, falling back to this attack's ``total_rounds`` (``ValueError`` if
    neither is set).
    """

    needs_previous = True
    uses_previous = True
    uses_rule = True

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' models and neighbourhoods alone."""
        return False

    def __init__(self, margin: float = 0.05, gamma: float = 0.3, kappa: float = 1.0,
                 total_rounds: int | None = None) -> None:
        super().__init__()
        check_finite(self.name, "margin", margin, minimum=0.0)
        if margin >= 1:
            raise ValueError(f"{self.name}: margin must lie in [0, 1), got {margin!r}")
        check_finite(self.name, "gamma", gamma, minimum=0.0, strict=True)
        check_finite(self.name, "kappa", kappa, minimum=0.0)
        if total_rounds is not None:
            check_int(self.name, "total_rounds", total_rounds, 1)
        self.margin = float(margin)
        self.gamma = float(gamma)
        self.kappa = float(kappa)
        self.total_rounds = total_rounds
        #: Acceptance radius assumed for each target in the last call (in target order).
        self.last_radii: list[float] = []

    def radius(self, view: AttackView, target: TargetView) -> float:
        """BALANCE's acceptance radius at ``target`` in ``view.round``."""
        rule = target.rule
        method = getattr(rule, "acceptance_radius", None)
        if callable(method):
            return float(method(target.model, view.round))
        attrs = [getattr(rule, a, None) for a in ("gamma", "kappa", "total_rounds")]
        if rule is not None and all(a is not None for a in attrs):
            gamma, kappa, total = (float(a) for a in attrs)  # type: ignore[arg-type]
        else:
            gamma, kappa = self.gamma, self.kappa
            total_rounds = view.total_rounds if view.total_rounds is not None else (
                self.total_rounds)
            if total_rounds is None:
                raise ValueError(
                    f"{self.name}: the number of rounds T is unknown for target node "
                    f"{target.node}: set AttackView.total_rounds, the attack's total_rounds, or "
                    "pass a BALANCE rule as TargetView.rule"
                )
            total = float(total_rounds)
        norm = float(torch.linalg.vector_norm(target.model))
        return gamma * math.exp(-kappa * view.round / total) * norm

    def craft_all(self, view: AttackView) -> Tensor:
        self.last_radii = []
        out = super().craft_all(view)
        self.stats["radius_mean"] = sum(self.last_radii) / len(self.last_radii)
        return out

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        previous = require_previous(self.name, target)
        x_t = target.model
        radius = self.radius(view, target)
        self.last_radii.append(radius)
        direction = target.honest_set().mean(dim=0) - previous
        norm = torch.linalg.vector_norm(direction)
        if float(norm) == 0.0:
            direction, norm = x_t, torch.linalg.vector_norm(x_t)
            if float(norm) == 0.0:
                return x_t.clone()
        u = -direction / norm
        return x_t + (1.0 - self.margin) * radius * u
