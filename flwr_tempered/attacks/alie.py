"""A Little Is Enough (ALIE)."""

from __future__ import annotations

import math
from statistics import NormalDist

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
    learning", NeurIPS 2019. ``mu`` and ``sigma`` are the coordinate-wise mean and standard
    deviation of the target's honest set ``H_t`` (the target and its honest neighbours).

    Args:
        z: the attack factor; ``None`` uses the paper's ``z_max`` (:func:`alie_default_z`).
        ddof: ``0`` (default) divides the variance by ``|H_t|``: the population deviation
            of Baruch et al.'s own code, defined (0) for a single vector. ``1`` divides by
            ``|H_t| - 1``, as ``torch.std`` in the ClippedGossip authors' reference code
            (He, Karimireddy, Jaggi, arXiv:2202.01545); a single vector then gets
            ``sigma = 0`` here, where ``torch.std`` would give NaN.
        z_from: where ``z_max``'s ``n`` and ``m`` come from when ``z`` is ``None``:
            ``"target"`` (default) ``n = |H_t| + n_byzantine`` and ``m = n_byzantine`` per
            target (note ``z_max`` is negative for small neighbourhoods, e.g. ``n = 4,
            m = 1``, exactly as the formula gives); ``"run"`` the run's node count and
            Byzantine count, as the reference code does (a run builds the attack with
            them; by hand, give ``n`` and ``f``).
        n, f: the run's node and Byzantine counts, for ``z_from="run"``.
    """

    Z_FROM = ("target", "run")

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, z: float | None = None, ddof: int = 0, z_from: str = "target",
                 n: int | None = None, f: int | None = None) -> None:
        super().__init__()
        if z is not None:
            check_finite(self.name, "z", z)
        if isinstance(ddof, bool) or ddof not in (0, 1):
            raise ValueError(f"{self.name}: ddof must be 0 or 1, got {ddof!r}")
        check_choice(self.name, "z_from", z_from, self.Z_FROM)
        self.z = None if z is None else float(z)
        self.ddof = int(ddof)
        self.z_from = z_from
        self.n = n
        self.f = f
        #: ``z_max`` from the run's counts (``z_from="run"`` without a ``z``), else None.
        self.run_z: float | None = None
        if z is None and z_from == "run":
            if n is None or f is None:
                raise ValueError(f"{self.name}: z_from='run' needs the run's node count n "
                                 f"and Byzantine count f, got n={n!r}, f={f!r}")
            self.run_z = alie_default_z(int(n), int(f))

    def z_for(self, target: TargetView) -> float:
        """The ``z`` used for ``target``."""
        if self.z is not None:
            return self.z
        if self.run_z is not None:
            return self.run_z
        return alie_default_z(target.n_inputs, target.n_byzantine)

    def craft_all(self, view: AttackView) -> Tensor:
        zs = [self.z_for(target) for target in view.targets]
        self.stats["z_mean"] = sum(zs) / len(zs)
        return super().craft_all(view)

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        honest = target.honest_set()
        return honest.mean(dim=0) - self.z_for(target) * alie_std(honest, self.ddof)


def alie_std(honest: Tensor, ddof: int) -> Tensor:
    """Coordinate-wise deviation of ``honest[h, d]`` dividing by ``h - ddof`` (0 when that
    is not positive: one vector has no spread)."""
    if ddof == 0 or honest.shape[0] > 1:
        return honest.std(dim=0, correction=ddof)
    return torch.zeros_like(honest[0])
