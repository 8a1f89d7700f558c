"""Clipping rules: centered clipping and ClippedGossip (self-centered clipping).

Centered clipping: S. P. Karimireddy, L. He, M. Jaggi, "Learning from history for
Byzantine robust optimization", ICML 2021.
ClippedGossip / SCClip: L. He, S. P. Karimireddy, M. Jaggi, "Byzantine-robust
decentralized learning via ClippedGossip", arXiv 2202.01545.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .base import Rule, check_fraction, check_int_at_least, check_positive, register_rule
from .linalg import row_distances


def clip_scales(norms: Tensor, tau: float) -> Tensor:
    """Per-row factors ``min(1, tau / ||v||)`` that clip vectors of the given norms to
    ``tau`` (zero-length vectors keep factor 1)."""
    tiny = torch.finfo(norms.dtype).tiny
    return torch.clamp(tau / torch.clamp(norms, min=tiny), max=1.0)


def clip_rows(vectors: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Scale each row ``v`` to ``v * min(1, tau / ||v||)``; also return which rows were
    shortened."""
    norms = vectors.norm(dim=1)
    return vectors * clip_scales(norms, tau).unsqueeze(1), norms > tau


def clipped_step(
    centre: Tensor, rows: Tensor, coefficients: Tensor, tau: float
) -> tuple[Tensor, Tensor]:
    """``sum_j coefficients_j * clip(rows_j - centre, tau)`` and which rows were clipped.

    Computed as ``(c * s) @ rows - sum(c * s) * centre`` (``s`` the clip factors) so that the
    only full-size temporary is the one the distances need.
    """
    norms = row_distances(rows, centre)
    scaled = coefficients * clip_scales(norms, tau)
    return scaled @ rows - scaled.sum() * centre, norms > tau


@register_rule("centered_clipping")
class CenteredClipping(Rule):
    """Centered clipping: ``v <- v + mean_k clip(x_k - v, tau)`` over own and received,
    ``iterations`` times, with the centre ``v`` kept between calls (the node's previous
    aggregate; the first call starts from ``own``)."""

    def __init__(self, tau: float, iterations: int = 1) -> None:
        super().__init__()
        check_positive("centered_clipping", "tau", tau)
        check_int_at_least("centered_clipping", "iterations", iterations, 1)
        self.tau = tau
        self.iterations = iterations
        self.centre: Tensor | None = None

    def reset(self) -> None:
        self.centre = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self.centre is None else {"centre": self.centre.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        centre = state.get("centre")
        self.centre = None if centre is None else torch.as_tensor(centre).clone()

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        centre = own if self.centre is None or self.centre.shape != own.shape else self.centre
        centre = centre.to(device=own.device, dtype=own.dtype)
        n = received.shape[0] + 1
        uniform = torch.full((n - 1,), 1.0 / n, dtype=own.dtype, device=own.device)
        clipped_any = torch.zeros(n, dtype=torch.bool, device=own.device)
        for _ in range(self.iterations):
            step, was_clipped = clipped_step(centre, received, uniform, self.tau)
            own_step, own_clipped = clip_rows((own - centre).unsqueeze(0), self.tau)
            centre = centre + step + own_step[0] / n
            clipped_any[1:] |= was_clipped
            clipped_any[0] |= own_clipped[0]
        self.centre = centre.detach().clone()
        self.stats.update(clipped=float(clipped_any.sum()))
        return centre

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """Server-side centered clipping (Karimireddy et al., 2021): starting from the global
        model, ``v <- v + mean_i clip(x_i - v, tau)`` over the clients only."""
        self.check_input_count(updates.shape[0] + refused)
        k = updates.shape[0]
        self.stats = {"received": float(k), "rejected_nonfinite": float(refused)}
        centre = reference.clone()
        if k == 0:
            return centre
        uniform = torch.full((k,), 1.0 / k, dtype=reference.dtype, device=reference.device)
        clipped_any = torch.zeros(k, dtype=torch.bool, device=reference.device)
        for _ in range(self.iterations):
            step, was_clipped = clipped_step(centre, updates, uniform, self.tau)
            centre = centre + step
            clipped_any |= was_clipped
        self.centre = centre.detach().clone()
        self.stats.update(clipped=float(clipped_any.sum()))
        return centre


@register_rule("clipped_gossip")
class ClippedGossip(Rule):
    """ClippedGossip: ``x_i <- x_i + sum_{j in N(i)} W_ij clip(x_j - x_i, tau)``.

    ``weights`` default to uniform ``1 / (k + 1)``. With ``tau=None`` the radius adapts per
    call, in one of two ways (``adaptive``):

    * ``"oracle"`` (default): the farthest neighbours carrying mixing weight ``delta``
      (the assumed Byzantine weight; default the largest single neighbour weight) are
      presumed Byzantine and the radius is the paper's oracle choice ``tau^2 = (1/delta)
      sum_{j presumed honest} W_ij ||x_j - x_i||^2`` computed on the rest (our plug-in).
      ``delta = 0`` means no clipping (gossip).
    * ``"second_largest"``: the second-largest distance ``||x_j - x_i||`` over the
      neighbours received (the largest when there is one), the rule of the ClippedGossip
      authors' reference code (He, Karimireddy, Jaggi, arXiv:2202.01545).
    """

    ADAPTIVE = ("oracle", "second_largest")

    uses_weights = True
    server_reference = True

    def __init__(self, tau: float | None = None, delta: float | None = None,
                 adaptive: str = "oracle") -> None:
        super().__init__()
        if adaptive not in self.ADAPTIVE:
            raise ValueError(f"clipped_gossip: adaptive must be one of "
                             f"{', '.join(self.ADAPTIVE)}, got {adaptive!r}")
        if tau is not None:
            check_positive("clipped_gossip", "tau", tau)
            if delta is not None:
                raise ValueError(
                    f"clipped_gossip: delta only applies to the adaptive radius (tau=None), "
                    f"got tau = {tau} and delta = {delta}"
                )
            if adaptive != "oracle":
                raise ValueError(f"clipped_gossip: adaptive={adaptive!r} only applies to the "
                                 f"adaptive radius (tau=None), got tau = {tau}")
        if delta is not None:
            check_fraction("clipped_gossip", "delta", delta)
            if adaptive != "oracle":
                raise ValueError("clipped_gossip: delta belongs to the oracle radius, not to "
                                 f"adaptive={adaptive!r}")
        self.tau = tau
        self.delta = delta
        self.adaptive = adaptive

    def adaptive_radius(self, distances: Tensor, neighbour_weights: Tensor) -> float:
        """The adaptive radius described in the class docstring."""
        if self.adaptive == "second_largest":
            ordered = torch.sort(distances, descending=True).values
            return float(ordered[1] if ordered.shape[0] >= 2 else ordered[0])
        delta = float(neighbour_weights.max()) if self.delta is None else self.delta
        if delta <= 0.0:
            return float("inf")
        order = torch.argsort(distances, descending=True)
        cumulative = torch.cumsum(neighbour_weights[order].double(), dim=0)
        # Slack for the rounding of weights that sum to exactly delta in the input dtype.
        slack = (cumulative.shape[0] + 1) * torch.finfo(neighbour_weights.dtype).eps
        presumed_byzantine = cumulative <= delta + slack
        honest = order[~presumed_byzantine]
        spread = (neighbour_weights[honest] * distances[honest] ** 2).sum()
        return float(torch.sqrt(spread / delta))

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        k_total = received.shape[0] + rejected
        if weights is None:
            neighbour_weights = torch.full(
                (received.shape[0],), 1.0 / (k_total + 1), dtype=own.dtype, device=own.device
            )
        else:
            neighbour_weights = weights[1:]
        if self.tau is None:
            distances = row_distances(received, own)
            tau = self.adaptive_radius(distances, neighbour_weights)
        else:
            tau = self.tau
        step, was_clipped = clipped_step(own, received, neighbour_weights, tau)
        self.stats.update(clipped=float(was_clipped.sum()), tau=tau)
        return own + step
