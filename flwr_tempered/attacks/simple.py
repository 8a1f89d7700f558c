"""Simple model-poisoning attacks: bit flip, Gaussian noise, infinity, sign flip and IPM."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_choice,
    check_finite,
    register_attack,
)


@register_attack("bit_flip")
class BitFlip(ModelPoisoningAttack):
    """Send the attacker's own model with every sign flipped: ``-own`` to every target."""

    uses_targets_models = False

    def __init__(self) -> None:
        super().__init__()

    def craft_all(self, view: AttackView) -> Tensor:
        return (-view.own).unsqueeze(0).expand(len(view.targets), -1).clone()


@register_attack("gaussian")
class Gaussian(ModelPoisoningAttack):
    """Send Gaussian noise ``N(mean, sigma^2 I)``, alone or added to the attacker's model.

    ``around="zero"`` sends the noise, ``around="own"`` sends ``own + N(mean, sigma^2 I)``.
    ``around="zero"`` with ``mean`` and ``sigma`` is ByzFL's ``Gaussian(mu, sigma)`` attack
    (González, Guerraoui, Pinot, Rizk, Stephan, Taïani, "ByzFL: research framework for
    robust federated learning", arXiv:2505.24802). With ``around="own"`` the noise keeps
    its mean, so the attacker's own model is shifted by ``mean`` on every coordinate too.

    Every target receives an independent draw (a Byzantine node may equivocate), taken
    from the instance generator seeded with ``seed``: ``mean + sigma * N(0, 1)`` from one
    ``torch.randn((targets, d))`` a call.
    """

    uses_targets_models = False

    AROUND = ("zero", "own")

    @property
    def reads_own_model(self) -> bool:
        """Only noise around the attacker's own model reads it."""
        return self.around == "own"

    def __init__(self, sigma: float = 1.0, around: str = "zero", seed: int = 0,
                 mean: float = 0.0) -> None:
        super().__init__(seed)
        check_finite(self.name, "sigma", sigma, minimum=0.0)
        check_choice(self.name, "around", around, self.AROUND)
        check_finite(self.name, "mean", mean)
        self.sigma = float(sigma)
        self.around = around
        self.mean = float(mean)

    def craft_all(self, view: AttackView) -> Tensor:
        noise = self.mean + self.sigma * self._randn((len(view.targets), view.own.shape[0]),
                                                     view.own)
        if self.around == "own":
            return view.own.unsqueeze(0) + noise
        return noise


@register_attack("inf")
class Inf(ModelPoisoningAttack):
    """Send ``+inf`` on every coordinate to every target (ByzFL's ``Inf`` attack).

    González et al., "ByzFL: research framework for robust federated learning",
    arXiv:2505.24802.
    The package's rules drop non-finite rows before aggregating (see
    :mod:`flwr_tempered.aggregators.base`), so against them this attack amounts to the
    attacker staying silent; it checks that no runtime or rule lets an infinity through.
    """

    uses_targets_models = False

    @property
    def reads_own_model(self) -> bool:
        """A constant vector: the attacker's model is never read."""
        return False

    def __init__(self) -> None:
        super().__init__()

    def craft_all(self, view: AttackView) -> Tensor:
        return torch.full((len(view.targets), view.own.shape[0]), float("inf"),
                          dtype=view.own.dtype, device=view.own.device)


@register_attack("sign_flip")
class SignFlip(ModelPoisoningAttack):
    """Send the attacker's own honest update reversed and scaled:
    ``own_previous - scale * (own - own_previous)`` (needs ``view.own_previous``)."""

    uses_targets_models = False

    needs_own_previous = True

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        check_finite(self.name, "scale", scale, minimum=0.0, strict=True)
        self.scale = float(scale)

    def craft_all(self, view: AttackView) -> Tensor:
        assert view.own_previous is not None  # checked by check_view
        prev = view.own_previous
        vec = prev - self.scale * (view.own - prev)
        return vec.unsqueeze(0).expand(len(view.targets), -1).clone()


@register_attack("ipm")
class InnerProductManipulation(ModelPoisoningAttack):
    """Inner-product manipulation: ``-eps * mean(H_t)`` to target ``t``.

    Xie, Koyejo, Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner product
    manipulation", UAI 2019 (there applied to gradients; here to the exchanged models).
    """

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        check_finite(self.name, "eps", eps, minimum=0.0, strict=True)
        self.eps = float(eps)

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        return -self.eps * target.honest_set().mean(dim=0)
