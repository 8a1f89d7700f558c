"""CAF: the covariance-bound agnostic filter.

Y. Allouah, R. Guerraoui, J. Stephan, "Towards trustworthy federated learning with
untrusted participants", ICML 2025 (arXiv:2505.01874); the filter follows the spectral
filtering of robust mean estimation (I. Diakonikolas, G. Kamath, D. Kane, J. Li, A. Moitra,
A. Stewart, "Robust estimators in high dimensions without the computational
intractability", FOCS 2016). ByzFL (``byzfl.CAF``) names it "Covariance-bound Agnostic
Filter".

Every input starts with weight ``c_i = 1``. One step computes the weighted mean ``mu``, the
top eigenpair ``(lambda, v)`` of the weighted covariance
``sum_i c_i (x_i - mu)(x_i - mu)^T / sum_i c_i`` and the squared projections
``tau_i = ((x_i - mu)^T v)^2``, then sets ``c_i <- c_i (1 - tau_i / max_j tau_j)``.

Stopping rule implemented here: every weight vector the filter reaches (the initial one
included) is a candidate; the filter stops at the first candidate whose total weight is
at most ``n - 2f``, or when no input with positive weight has a positive projection (all
of them coincide along ``v``: ``lambda = 0``). The result is the weighted mean of the
candidate with the smallest ``lambda`` (the earliest on ties). ``max_j`` runs over the
inputs that still have positive weight (over all inputs, an input already at weight zero
could keep the maximum and stall the filter); so every step sets at least one positive
weight to exactly zero, and the filter stops after at most ``n`` steps.

The eigenpair is exact (``torch.linalg.eigh``; ByzFL uses the power method) and computed
on ``n x n`` matrices whatever the dimension: with ``Y`` the centred inputs and ``w`` the
normalised weights, the covariance ``Y^T diag(w) Y`` has the non-zero spectrum of
``diag(w)^(1/2) Y Y^T diag(w)^(1/2)``, and ``Y Y^T`` is a double centring of one Gram
matrix of the inputs (float64, around their plain mean); the projections follow from the
same matrices up to a common factor, which ``tau_i / max_j tau_j`` cancels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import HonestMajorityRule, register_rule
from .linalg import centred_gram


@dataclass(frozen=True)
class FilterResult:
    """What :func:`covariance_filter` found: the normalised weights of the returned mean,
    its covariance's largest eigenvalue, and how many down-weighting steps ran."""

    weights: Tensor
    max_eigenvalue: float
    steps: int


def covariance_filter(inputs: Tensor, f: int) -> FilterResult:
    """Run CAF (see the module docstring) on the rows of ``inputs`` with budget ``f``
    (``n - 2f >= 1``); the mean it returns is ``result.weights @ inputs``."""
    n = inputs.shape[0]
    gram = centred_gram(inputs, inputs.mean(dim=0), torch.float64)
    c = torch.ones(n, dtype=torch.float64, device=inputs.device)
    best_weights, best_eigenvalue, steps = c / n, float("inf"), 0
    for _ in range(n + 1):
        w = c / c.sum()
        # Gram matrix of the inputs centred at the weighted mean: (I - 1 w^T) K (I - w 1^T)
        kw = gram @ w
        centred = gram - kw.unsqueeze(0) - kw.unsqueeze(1) + w @ kw
        root = w.sqrt()
        eigenvalues, eigenvectors = torch.linalg.eigh(root.unsqueeze(1) * centred * root)
        eigenvalue = max(float(eigenvalues[-1]), 0.0)
        if eigenvalue < best_eigenvalue:
            best_weights, best_eigenvalue = w, eigenvalue
        if float(c.sum()) <= n - 2 * f:
            break
        # Projection of input i on the top eigenvector, up to one common factor.
        tau = (centred @ (root * eigenvectors[:, -1])) ** 2
        tau_max = tau[c > 0].max()
        if float(tau_max) <= 0.0:
            break
        c = torch.clamp(c * (1.0 - tau / tau_max), min=0.0)
        steps += 1
    return FilterResult(best_weights, best_eigenvalue, steps)


@register_rule("caf")
class CovarianceFilter(HonestMajorityRule):
    """CAF: iteratively down-weight the inputs along the top eigenvector of their weighted
    covariance; the weighted mean of smallest top eigenvalue (needs ``n >= 2f + 1``)."""

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        inputs = stack_with_own(own, received)
        found = covariance_filter(inputs, self.budget(rejected))
        self.stats.update(steps=float(found.steps), max_eigenvalue=found.max_eigenvalue)
        return found.weights.to(inputs.dtype) @ inputs
