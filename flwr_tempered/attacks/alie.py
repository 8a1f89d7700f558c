"""A Little Is Enough (ALIE)."""

from __future__ import annotations

import math
from statistics import NormalDist

from torch import Tensor

from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_finite,
    population_std,
    register_attack,
)


def alie_default_z(n: int, m: int) -> float:
    """Baruch et al.'s ``z_max`` for ``n`` inputs of which ``m`` are Byzantine.

    ``s = floor(n/2 + 1) - m`` honest inputs must be "won over" for a majority and
    ``z = Φ^{-1}((n - m - s) / (n - m))``.

    Clamping: the fraction is clipped to ``[1/(2(n-m)), 1 - 1/(2(n-m))]``, i.e. ``s`` to
    ``[1/2, n-m-1/2]`` (half an honest input inside the attainable range). It leaves that
    range only when the Byzantine inputs are already a majority (``s <= 0``, fraction >= 1,
    ``Φ^{-1}`` would be +inf) or when the target has a single honest input (``n - m = 1``,
    fraction <= 0, -inf); the clip keeps ``z`` finite. With one honest input the clip gives
    ``z = 0``, and in that case ``sigma = 0`` anyway.
    """
    if m < 1 or n - m < 1:
        raise ValueError(f"alie: need m >= 1 Byzantine and n - m >= 1 honest inputs, got n={n}, "
                         f"m={m}")
    honest = n - m
    s = math.floor(n / 2 + 1) - m
    fraction = (honest - s) / honest
    low = 1.0 / (2 * honest)
    fraction = min(max(fraction, low), 1.0 - low)
    return NormalDist().inv_cdf(fraction)


@register_attack("alie")
class ALIE(ModelPoisoningAttack):
    """A little is enough: coordinate-wise ``mu - z * sigma`` over ``H_t``.

    Baruch, Baruch, Goldberg, "A little is enough: circumventing defenses for distributed
    learning", NeurIPS 2019. ``mu`` and ``sigma`` are the coordinate-wise mean and
    *population* standard deviation (divide by ``|H_t|``) of the target's honest set
    ``H_t``, so ``sigma`` is defined (0) for a target without honest neighbours.

    ``z=None`` uses the paper's ``z_max`` per target (:func:`alie_default_z`) with
    ``n = |H_t| + n_byzantine`` and ``m = n_byzantine``; note it is negative for small
    neighbourhoods (e.g. ``n = 4, m = 1``), exactly as the formula gives.
    """

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, z: float | None = None) -> None:
        super().__init__()
        if z is not None:
            check_finite(self.name, "z", z)
        self.z = None if z is None else float(z)

    def z_for(self, target: TargetView) -> float:
        """The ``z`` used for ``target``."""
        if self.z is not None:
            return self.z
        return alie_default_z(target.n_inputs, target.n_byzantine)

    def craft_all(self, view: AttackView) -> Tensor:
        zs = [self.z_for(target) for target in view.targets]
        self.stats["z_mean"] = sum(zs) / len(zs)
        return super().craft_all(view)

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        honest = target.honest_set()
        return honest.mean(dim=0) - self.z_for(target) * population_std(honest)
