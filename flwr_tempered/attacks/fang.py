"""Fang et al.'s full-knowledge local model poisoning attacks on trimmed mean and Krum.

Fang, Cao, Jia, Gong, "Local model poisoning attacks to Byzantine-robust federated
learning", USENIX Security 2020. In the decentralized setting each target ``t`` plays the
server: its honest set ``H_t`` are the "before-attack local models", ``previous_t`` is the
"current global model", and the honest change direction of coordinate ``j`` is
``s_j = sign(mean(H_t) - previous_t)_j``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flwr_tempered.aggregators.krum import krum_scores

from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_finite,
    register_attack,
    require_previous,
    squared_distances,
)


def honest_direction(target: TargetView, name: str) -> Tensor:
    """``s = sign(mean(H_t) - previous_t)``, the estimated honest change direction."""
    previous = require_previous(name, target)
    return torch.sign(target.honest_set().mean(dim=0) - previous)


@register_attack("fang_trim")
class FangTrim(ModelPoisoningAttack):
    """Fang et al.'s full-knowledge attack on trimmed mean / median.

    With ``w_max,j`` and ``w_min,j`` the coordinate-wise max and min over ``H_t``, each
    coordinate is drawn uniformly from

    * ``s_j = -1`` (honest models decrease): between ``w_max,j`` and ``b * w_max,j`` if
      ``w_max,j > 0``, else between ``w_max,j / b`` and ``w_max,j``; the value is ``>= w_max,j``.
    * ``s_j = +1``: between ``w_min,j / b`` and ``w_min,j`` if ``w_min,j > 0``, else between
      ``b * w_min,j`` and ``w_min,j``; the value is ``<= w_min,j``.
    * ``s_j = 0`` (no honest change, e.g. a frozen coordinate): the honest mean is sent
      unchanged, since there is no direction to push against.

    Every target gets its own draws from the instance generator (seeded with ``seed``; give
    each Byzantine node its own seed so that they draw different values).
    """

    needs_previous = True
    uses_previous = True

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, b: float = 2.0, seed: int = 0) -> None:
        super().__init__(seed)
        check_finite(self.name, "b", b, minimum=1.0, strict=True)
        self.b = float(b)

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        honest = target.honest_set()
        s = honest_direction(target, self.name)
        mean = honest.mean(dim=0)
        w_max = honest.max(dim=0).values
        w_min = honest.min(dim=0).values
        b = self.b
        # Interval endpoints; the draw is ``start + (end - start) * u`` with u ~ U[0, 1).
        up_end = torch.where(w_max > 0, b * w_max, w_max / b)  # other end from w_max, >= w_max
        down_end = torch.where(w_min > 0, w_min / b, b * w_min)  # other end from w_min, <= w_min
        u = self._rand((target.dim,), target.model)
        push_up = w_max + (up_end - w_max) * u
        push_down = w_min + (down_end - w_min) * u
        return torch.where(s < 0, push_up, torch.where(s > 0, push_down, mean))


@register_attack("fang_krum")
class FangKrum(ModelPoisoningAttack):
    """Fang et al.'s full-knowledge attack on Krum: ``previous_t - lambda * s``.

    With ``c = n_byzantine`` and ``n = |H_t| + c``, ``lambda`` starts at Fang's upper bound::

        lambda_up = 1 / ((n - 2c - 1) sqrt(d)) * min_{i in H_t} sum_{l in Γ_i} ||x_l - x_i||
                    + 1 / sqrt(d) * max_{i in H_t} ||x_i - previous_t||

    (``Γ_i``: the ``n - c - 2`` honest models closest to ``x_i``) and is halved until Krum
    with ``f = c`` over ``H_t`` plus ``c`` copies of the malicious vector selects a copy
    (strictly smaller score than every honest input, so no tie-break is involved). If
    ``lambda`` drops below ``lambda_threshold`` first, the vector is sent with that last
    (sub-threshold) ``lambda``, as in the paper.

    When ``n < 2c + 3`` Krum with ``f = c`` is undefined at ``t`` (and the bound's first term
    has a non-positive denominator): the attack then sends ``previous_t - lambda * s`` with
    ``lambda`` = the bound's second term, without search. ``stats`` reports the mean
    ``lambda`` and how many targets' Krum selected the malicious vector.
    """

    needs_previous = True
    uses_previous = True

    @property
    def reads_own_model(self) -> bool:
        """Crafted from the targets' honest neighbourhoods alone."""
        return False

    def __init__(self, lambda_threshold: float = 1e-5) -> None:
        super().__init__()
        check_finite(self.name, "lambda_threshold", lambda_threshold, minimum=0.0, strict=True)
        self.lambda_threshold = float(lambda_threshold)
        #: ``lambda`` used for each target in the last call (in target order).
        self.last_lambdas: list[float] = []
        #: Whether Krum selected the malicious vector, per target, in the last call.
        self.last_selected: list[bool] = []

    def craft_all(self, view: AttackView) -> Tensor:
        self.last_lambdas = []
        self.last_selected = []
        out = super().craft_all(view)
        self.stats["lambda_mean"] = sum(self.last_lambdas) / len(self.last_lambdas)
        self.stats["selected"] = float(sum(self.last_selected))
        return out

    def upper_bound(self, target: TargetView) -> float:
        """Fang's ``lambda_up`` for ``target`` (only the second term when ``n < 2c + 3``)."""
        previous = require_previous(self.name, target)
        honest = target.honest_set()
        n_h, d = honest.shape
        c = target.n_byzantine
        n = n_h + c
        deviation = float(torch.linalg.vector_norm(honest - previous, dim=1).max())
        bound = deviation / math.sqrt(d)
        if n < 2 * c + 3:
            return bound
        k = n - c - 2  # |Γ_i| <= n_h - 1 always
        dist = squared_distances(honest, honest).clamp_min(0).sqrt()
        dist.fill_diagonal_(float("inf"))
        closest = torch.topk(dist, k, dim=1, largest=False).values.sum(dim=1)
        return bound + float(closest.min()) / ((n - 2 * c - 1) * math.sqrt(d))

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        previous = require_previous(self.name, target)
        s = honest_direction(target, self.name)
        honest = target.honest_set()
        n_h = honest.shape[0]
        c = target.n_byzantine
        lam = self.upper_bound(target)
        selected = False
        if n_h + c >= 2 * c + 3 and lam > 0:
            while lam >= self.lambda_threshold:
                malicious = previous - lam * s
                inputs = torch.cat([honest, malicious.unsqueeze(0).expand(c, -1)])
                scores = krum_scores(inputs, c)
                if bool(scores[n_h:].min() < scores[:n_h].min()):
                    selected = True
                    break
                lam /= 2
        self.last_lambdas.append(lam)
        self.last_selected.append(selected)
        return previous - lam * s
