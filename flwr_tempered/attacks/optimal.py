"""ALIE and IPM with the attack factor tuned, per target, against the target's own rule.

ByzFL's ``Optimal_ALittleIsEnough`` and ``Optimal_InnerProductManipulation`` (González,
Guerraoui, Pinot, Rizk, Stephan, Taïani, "ByzFL: research framework for robust federated
learning", arXiv:2505.24802) choose the factor of ALIE (Baruch, Baruch, Goldberg,
NeurIPS 2019) or IPM (Xie, Koyejo, Gupta, UAI 2019) that does the most damage to the
aggregation rule. Here, for target ``t`` with honest set ``H_t = {x_t} ∪ {x_j}`` and ``c``
Byzantine neighbours, the candidate is linear in the factor ``a``:

* ``optimal_alie``: ``v(a) = mu_t - a * sigma_t`` (coordinate-wise mean and deviation of
  ``H_t``, as :class:`~flwr_tempered.attacks.ALIE`);
* ``optimal_ipm``: ``v(a) = -a * mu_t``.

Damage: ``D(a) = ||R(a) - r_t||``. ``R(a) = rule(x_t, [x_j..., c copies of v(a)], w,
round=view.round)`` is what ``t``'s rule outputs when every Byzantine neighbour sends
``v(a)``; rules that read weights get ``w = [w_own, W_tj..., c times byzantine_weight /
c]`` with ``w_own = 1 - sum_j W_tj - byzantine_weight``, as the node builds its mixing row
(the weight of absent neighbours stays on ``t``). The reference ``r_t`` is

* ``"mean"`` (default): ``mean(H_t)``, the honest average (ByzFL's objective);
* ``"gossip"``: ``x_t + sum_j W_tj (x_j - x_t)``, the target's gossip step had its
  Byzantine neighbours sent ``x_t`` (stayed silent).

Search: ``grid`` evenly spaced factors over ``[low, high]`` (both ends included), then
``refine`` golden-section evaluations inside ``[a_{i-1}, a_{i+1}]`` around the best grid
factor ``a_i``; the factor with the largest ``D`` among all ``grid + refine`` evaluations
is sent (ties: the first evaluated, so the lowest grid factor). A global grid comes first
because ``D`` is neither smooth nor unimodal for selection rules (Krum's ``D`` collapses
once the copies stop being selected), so a purely local line search can stop on a
plateau; the result is never worse than the best grid factor.

Cost: each evaluation runs the rule once on ``|H_t| - 1 + c`` inputs, so ``grid + refine``
rule calls per target, attacker and round (31 by default). The rule object is the
runtime's copy for attackers; its state (:meth:`~flwr_tempered.aggregators.Rule.
state_dict`) and stats are restored after every evaluation, so stateful rules (centered
clipping) are evaluated from the same state and left as they were. Randomised rules
(bucketing) draw from their own stream at every evaluation, which makes ``D`` noisy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .alie import alie_std
from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_choice,
    check_finite,
    check_int,
    register_attack,
)

#: ``1 / golden ratio``.
_INVERSE_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def line_search(objective: Callable[[float], float], low: float, high: float, grid: int,
                refine: int) -> tuple[float, float]:
    """``(a, objective(a))`` for the best ``a`` seen: ``grid`` evenly spaced points of
    ``[low, high]``, then ``refine`` golden-section evaluations in the bracket around the
    best grid point (see the module docstring). A NaN objective counts as ``-inf``."""
    best_a, best_value = low, -math.inf

    def evaluate(a: float) -> float:
        nonlocal best_a, best_value
        value = objective(a)
        value = -math.inf if math.isnan(value) else value
        if value > best_value:
            best_a, best_value = a, value
        return value

    points = [low + (high - low) * i / (grid - 1) for i in range(grid)]
    values = [evaluate(a) for a in points]
    i = max(range(grid), key=lambda k: (values[k], -k))
    a, b = points[max(i - 1, 0)], points[min(i + 1, grid - 1)]
    c, d = b - _INVERSE_PHI * (b - a), a + _INVERSE_PHI * (b - a)
    f_c: float | None = None
    f_d: float | None = None
    for _ in range(refine):  # one evaluation per pass
        if f_c is None:
            f_c = evaluate(c)
        elif f_d is None:
            f_d = evaluate(d)
        elif f_c >= f_d:  # the maximum lies in [a, d]: d's new inner point is c
            b, d, f_d = d, c, f_c
            c = b - _INVERSE_PHI * (b - a)
            f_c = evaluate(c)
        else:  # in [c, b]: c's new inner point is d
            a, c, f_c = c, d, f_d
            d = a + _INVERSE_PHI * (b - a)
            f_d = evaluate(d)
    return best_a, best_value


def mixing_weights(target: TargetView) -> Tensor:
    """``[w_own, W_tj..., byzantine_weight / c x c]`` summing to one, for the inputs
    ``[x_t, x_j..., Byzantine x c]`` (the weight of absent neighbours stays on ``t``)."""
    c = target.n_byzantine
    model = target.model
    share = torch.full((c,), target.byzantine_weight / c, dtype=model.dtype, device=model.device)
    others = torch.cat([target.honest_weights, share])
    total = float(others.sum())
    if total > 1.0:  # an inconsistent view: give t nothing and renormalise
        return torch.cat([others.new_zeros(1), others / total])
    return torch.cat([others.new_full((1,), 1.0 - total), others])


class _OptimalFactor(ModelPoisoningAttack):
    """The search shared by ``optimal_alie`` and ``optimal_ipm``; subclasses give the
    candidate line ``v(a) = base + a * step``."""

    needs_rule = True
    uses_rule = True
    REFERENCES = ("mean", "gossip")

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods and rules alone."""
        return False

    def __init__(self, low: float, high: float, grid: int, refine: int,
                 reference: str) -> None:
        super().__init__()
        check_finite(self.name, "low", low)
        check_finite(self.name, "high", high)
        if not low < high:
            raise ValueError(f"{self.name}: low must be smaller than high, got low={low!r}, "
                             f"high={high!r}")
        check_int(self.name, "grid", grid, 2)
        check_int(self.name, "refine", refine, 0)
        check_choice(self.name, "reference", reference, self.REFERENCES)
        self.low = float(low)
        self.high = float(high)
        self.grid = grid
        self.refine = refine
        self.reference = reference
        #: The factor sent to each target in the last call (in target order).
        self.last_factors: list[float] = []
        #: The damage ``D`` of that factor, per target.
        self.last_damages: list[float] = []

    def line(self, target: TargetView) -> tuple[Tensor, Tensor]:
        """``(base, step)``: the candidate for factor ``a`` is ``base + a * step``."""
        raise NotImplementedError

    def reference_point(self, target: TargetView) -> Tensor:
        """``r_t``: what the damage is measured from."""
        if self.reference == "mean":
            return target.honest_set().mean(dim=0)
        pull = target.honest_weights @ (target.honest_neighbors - target.model)
        return target.model + pull

    def damage(self, target: TargetView, vector: Tensor, reference: Tensor,
               round: int) -> float:
        """``D`` of sending ``vector`` to ``target``: how far its rule's output lands from
        ``reference`` (the rule's state and stats are restored afterwards)."""
        rule = target.rule
        assert rule is not None  # checked by check_view
        received = torch.cat([target.honest_neighbors,
                              vector.unsqueeze(0).expand(target.n_byzantine, -1)])
        weights = mixing_weights(target) if rule.uses_weights else None
        state, stats = rule.state_dict(), dict(rule.stats)
        try:
            output = rule(target.model, received, weights, round=round)
        finally:
            rule.load_state_dict(state)
            rule.stats = stats
        return float(torch.linalg.vector_norm(output - reference))

    def craft_all(self, view: AttackView) -> Tensor:
        self.last_factors, self.last_damages = [], []
        out = super().craft_all(view)
        self.stats["factor_mean"] = sum(self.last_factors) / len(self.last_factors)
        self.stats["damage_mean"] = sum(self.last_damages) / len(self.last_damages)
        return out

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        base, step = self.line(target)
        reference = self.reference_point(target)
        factor, damage = line_search(
            lambda a: self.damage(target, base + a * step, reference, view.round),
            self.low, self.high, self.grid, self.refine)
        self.last_factors.append(factor)
        self.last_damages.append(damage)
        return base + factor * step


@register_attack("optimal_alie")
class OptimalALIE(_OptimalFactor):
    """ALIE with ``z`` searched in ``[low, high]`` for the most damage to the target's rule.

    Sends ``mu - z * sigma`` over ``H_t``, ``z`` maximising the distance of the target's
    rule's output from the honest reference (see the module docstring).

    Args:
        low, high: the range of ``z`` (default ``[0, 20]``: the reproduction's ALIE10 and
            the classical ``z = 1`` lie on the default grid).
        grid: evenly spaced ``z`` values tried, ends included (>= 2).
        refine: golden-section evaluations around the best grid value (>= 0).
        reference: ``"mean"`` (the honest average, ByzFL's) or ``"gossip"``.
        ddof: ``sigma``'s divisor ``|H_t| - ddof``, as :class:`~flwr_tempered.attacks.ALIE`.
    """

    def __init__(self, low: float = 0.0, high: float = 20.0, grid: int = 21, refine: int = 10,
                 reference: str = "mean", ddof: int = 0) -> None:
        super().__init__(low, high, grid, refine, reference)
        if isinstance(ddof, bool) or ddof not in (0, 1):
            raise ValueError(f"{self.name}: ddof must be 0 or 1, got {ddof!r}")
        self.ddof = int(ddof)

    def line(self, target: TargetView) -> tuple[Tensor, Tensor]:
        honest = target.honest_set()
        return honest.mean(dim=0), -alie_std(honest, self.ddof)


@register_attack("optimal_ipm")
class OptimalIPM(_OptimalFactor):
    """IPM with ``eps`` searched in ``[low, high]`` for the most damage to the target's rule.

    Sends ``-eps * mean(H_t)``, ``eps`` maximising the distance of the target's rule's
    output from the honest reference (see the module docstring).

    Args:
        low, high: the range of ``eps`` (default ``[0, 10]``; ByzFL's search starts at 0
            with step 10).
        grid: evenly spaced ``eps`` values tried, ends included (>= 2).
        refine: golden-section evaluations around the best grid value (>= 0).
        reference: ``"mean"`` (the honest average, ByzFL's) or ``"gossip"``.
    """

    def __init__(self, low: float = 0.0, high: float = 10.0, grid: int = 21, refine: int = 10,
                 reference: str = "mean") -> None:
        super().__init__(low, high, grid, refine, reference)

    def line(self, target: TargetView) -> tuple[Tensor, Tensor]:
        mean = target.honest_set().mean(dim=0)
        return torch.zeros_like(mean), -mean
