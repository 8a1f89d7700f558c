"""Min-max and min-sum attacks (AGR-agnostic, full knowledge).

Shejwalkar, Houmansadr, "Manipulating the Byzantine: optimizing model poisoning attacks and
defenses for federated learning", NDSS 2021. To target ``t`` the attacker sends
``mean(H_t) + gamma * p`` with ``gamma`` as large as the paper's binary search finds such that

* min-max: ``max_{i in H_t} ||m - x_i||^2 <= max_{i, j in H_t} ||x_i - x_j||^2``;
* min-sum: ``sum_{i in H_t} ||m - x_i||^2 <= max_{i in H_t} sum_{j in H_t} ||x_i - x_j||^2``.

Perturbation ``p``: ``"std"`` is ``-std(H_t)`` (coordinate-wise population std, the
package's convention); ``"unit"`` is ``-u / ||u||`` and ``"sign"`` is ``-sign(u)`` with ``u``
the honest *update* direction ``mean(H_t) - previous_t`` when the target's ``previous`` is
given, else ``u = mean(H_t)`` (the models themselves, as when the paper's inputs are
gradients).

Search (the paper's): ``gamma = gamma_init``, ``step = gamma_init``; repeat: if ``gamma``
satisfies the constraint remember it and move up by ``step / 2``, else move down by
``step / 2``; halve ``step``; stop when the last success and the current ``gamma`` differ by
at most ``tol``. The search therefore never exceeds ``2 * gamma_init``; ``stats`` reports
the mean ``gamma``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_choice,
    check_finite,
    population_std,
    register_attack,
    squared_distances,
)


class _AgrAgnostic(ModelPoisoningAttack):
    """Shared search of min-max and min-sum; subclasses define the objective."""

    uses_previous = True
    PERTURBATIONS: ClassVar[tuple[str, ...]] = ("std", "unit", "sign")

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, perturbation: str = "std", gamma_init: float = 10.0,
                 tol: float = 1e-5) -> None:
        super().__init__()
        check_choice(self.name, "perturbation", perturbation, self.PERTURBATIONS)
        check_finite(self.name, "gamma_init", gamma_init, minimum=0.0, strict=True)
        check_finite(self.name, "tol", tol, minimum=0.0, strict=True)
        self.perturbation = perturbation
        self.gamma_init = float(gamma_init)
        self.tol = float(tol)
        #: ``gamma`` used for each target in the last call (in target order).
        self.last_gammas: list[float] = []

    def perturbation_vector(self, target: TargetView) -> Tensor:
        """The direction ``p`` for ``target``."""
        honest = target.honest_set()
        if self.perturbation == "std":
            return -population_std(honest)
        direction = honest.mean(dim=0)
        if target.previous is not None:
            direction = direction - target.previous
        if self.perturbation == "sign":
            return -torch.sign(direction)
        norm = torch.linalg.vector_norm(direction)
        if float(norm) == 0.0:
            return torch.zeros_like(direction)
        return -direction / norm

    def objective(self, candidate: Tensor, honest: Tensor) -> float:
        """The quantity compared with :meth:`threshold`."""
        raise NotImplementedError

    def threshold(self, honest: Tensor) -> float:
        """The bound the objective must not exceed."""
        raise NotImplementedError

    def search_gamma(self, mean: Tensor, p: Tensor, honest: Tensor) -> float:
        """The paper's binary search for the largest feasible ``gamma``."""
        bound = self.threshold(honest)
        gamma = self.gamma_init
        step = self.gamma_init
        success = 0.0
        while abs(success - gamma) > self.tol:
            if self.objective(mean + gamma * p, honest) <= bound:
                success = gamma
                gamma = gamma + step / 2
            else:
                gamma = gamma - step / 2
            step /= 2
        return success

    def craft_all(self, view: AttackView) -> Tensor:
        self.last_gammas = []
        out = super().craft_all(view)
        self.stats["gamma_mean"] = sum(self.last_gammas) / len(self.last_gammas)
        return out

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        honest = target.honest_set()
        mean = honest.mean(dim=0)
        p = self.perturbation_vector(target)
        gamma = self.search_gamma(mean, p, honest)
        self.last_gammas.append(gamma)
        return mean + gamma * p


@register_attack("min_max")
class MinMax(_AgrAgnostic):
    """Min-max: the malicious vector's largest squared distance to ``H_t`` stays within the
    largest pairwise squared distance among ``H_t`` (see the module docstring)."""

    def objective(self, candidate: Tensor, honest: Tensor) -> float:
        return float(((honest - candidate) ** 2).sum(dim=1).max())

    def threshold(self, honest: Tensor) -> float:
        return float(squared_distances(honest, honest).max())


@register_attack("min_sum")
class MinSum(_AgrAgnostic):
    """Min-sum: the malicious vector's summed squared distance to ``H_t`` stays within the
    largest summed squared distance of an honest model to ``H_t`` (see the module docstring)."""

    def objective(self, candidate: Tensor, honest: Tensor) -> float:
        return float(((honest - candidate) ** 2).sum())

    def threshold(self, honest: Tensor) -> float:
        return float(squared_distances(honest, honest).sum(dim=1).max())
