"""Simple model-poisoning attacks: bit flip, Gaussian noise, sign flip and IPM."""

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
    """Send Gaussian noise ``N(0, sigma^2 I)`` (``around="zero"``) or
    ``own + N(0, sigma^2 I)`` (``around="own"``).

    Every target receives an independent draw (a Byzantine node may equivocate), taken
    from the instance generator seeded with ``seed``.
    """

    uses_targets_models = False

    AROUND = ("zero", "own")

    @property
    def reads_own_model(self) -> bool:
        """Only noise around the attacker's own model reads it."""
        return self.around == "own"

    def __init__(self, sigma: float = 1.0, around: str = "zero", seed: int = 0) -> None:
        super().__init__(seed)
        check_finite(self.name, "sigma", sigma, minimum=0.0)
        check_choice(self.name, "around", around, self.AROUND)
        self.sigma = float(sigma)
        self.around = around

    def craft_all(self, view: AttackView) -> Tensor:
        noise = self.sigma * self._randn((len(view.targets), view.own.shape[0]), view.own)
        if self.around == "own":
            return view.own.unsqueeze(0) + noise
        return noise


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
