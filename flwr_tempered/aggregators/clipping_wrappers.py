"""Pre-aggregation clipping that improves any inner rule: static clipping and adaptive
robust clipping (ARC).

The clipping papers clip *gradients*; the inputs here are *models*, so what is clipped is
each input's difference from a centre: from own in decentralized use (own's difference is
zero, so own is never changed) and from the current global model server-side (the clients'
models are clipped around it, then the inner rule aggregates the clipped models with the
global model as its reference). An input ``x`` becomes ``centre + (x - centre) * min(1,
radius / ||x - centre||)``.

* Static clipping: a fixed ``radius = c`` (``byzfl.Clipping``).
* ARC: Y. Allouah, R. Guerraoui, N. Gupta, A. Jellouli, G. Rizk, J. Stephan, "Adaptive
  gradient clipping for robust federated learning", ICLR 2025, arXiv:2405.14432 (earlier
  versions: "Boosting robustness by clipping gradients in distributed learning", "The
  vital role of gradient clipping in Byzantine-resilient distributed learning"). Of the ``n``
  inputs, the ``k = floor(2 (f / n) (n - f))`` with the largest differences are clipped to
  the norm of the ``(k + 1)``-th largest (``k = 0``: nothing is clipped).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from .base import check_int_at_least, check_majority, check_positive, register_rule
from .clipping import clip_scales
from .composition import PreAggregation, RuleSpec
from .linalg import row_distances


def clip_around(centre: Tensor, rows: Tensor, norms: Tensor, radius: float) -> Tensor:
    """Every row moved to ``centre + (row - centre) * min(1, radius / norm)``, given the
    rows' distances ``norms`` to ``centre`` (a row within the radius is returned as is)."""
    scales = clip_scales(norms, radius).unsqueeze(1)
    return rows * scales + centre * (1.0 - scales)


class ClippingPreAggregation(PreAggregation):
    """Clip every input's difference from the centre to :meth:`radius`, then apply
    ``inner`` (see the module docstring). ``stats``: ``clipped`` (inputs shortened),
    ``clip_radius``, and the inner rule's statistics prefixed with ``inner_``."""

    def check_input_count(self, k: int) -> None:
        self.check_own_count(k + 1)
        self.inner.check_input_count(k)

    def check_own_count(self, n: int) -> None:
        """Raise ``ValueError`` if the clipping itself cannot run on ``n`` inputs."""

    def check_client_count(self, num_clients: int) -> None:
        """Server-side: the clipping runs over the clients' models, then the inner rule's
        server form aggregates all of them."""
        self.check_own_count(num_clients)
        self.inner.check_client_count(num_clients)

    @abstractmethod
    def radius(self, norms: Tensor, lost: int) -> float:
        """The clipping radius for inputs at distances ``norms`` from the centre, ``lost``
        inputs having been proven faulty."""

    def _clip(self, centre: Tensor, rows: Tensor, norms: Tensor, lost: int) -> Tensor:
        """``rows`` clipped around ``centre``, the radius taken from ``norms`` (the
        distances of every input, possibly more than ``rows``); records the stats."""
        radius = self.radius(norms, lost)
        distances = norms[norms.shape[0] - rows.shape[0]:]
        self.stats.update(clipped=float((distances > radius).sum()), clip_radius=radius)
        return clip_around(centre, rows, distances, radius)

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        # own is one of the n inputs, with difference zero.
        norms = torch.cat([own.new_zeros(1), row_distances(received, own)])
        clipped = self._clip(own, received, norms, rejected)
        return self._apply_inner(own, clipped, weights, round, rejected)

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """Server-side: clip the clients' models around the global model, then let the inner
        rule aggregate the clipped models with the global model as its reference."""
        k = updates.shape[0]
        self.check_client_count(k + refused)
        self.stats = {"received": float(k), "rejected_nonfinite": float(refused)}
        if k == 0:
            return reference.clone()
        clipped = self._clip(reference, updates, row_distances(updates, reference), refused)
        return self._apply_inner_clients(reference, clipped, weights, round, refused)


@register_rule("static_clipping")
class StaticClipping(ClippingPreAggregation):
    """Static clipping: clip every input's difference from own (server: from the global
    model) to norm at most ``c``, then apply ``inner`` (default: mean)."""

    def __init__(self, c: float, inner: RuleSpec = "mean") -> None:
        check_positive("static_clipping", "c", c)
        super().__init__(inner)
        self.c = c

    def radius(self, norms: Tensor, lost: int) -> float:
        return float(self.c)


@register_rule("arc")
class AdaptiveRobustClipping(ClippingPreAggregation):
    """ARC: clip the ``floor(2 (f/n) (n - f))`` largest differences from own (server: from
    the global model) to the next largest one's norm, then apply ``inner`` (default:
    mean). Needs ``n >= 2f + 1``."""

    def __init__(self, f: int, inner: RuleSpec = "mean") -> None:
        check_int_at_least("arc", "f", f, 0)
        super().__init__(inner)
        self.f = f

    def check_own_count(self, n: int) -> None:
        check_majority(self.name, n, self.f)

    @staticmethod
    def clipped_count(n: int, f: int) -> int:
        """``k = floor(2 (f / n) (n - f))``, in exact integer arithmetic."""
        return (2 * f * (n - f)) // n

    def radius(self, norms: Tensor, lost: int) -> float:
        n = norms.shape[0]
        k = self.clipped_count(n, max(self.f - lost, 0))
        return float(torch.topk(norms, k + 1).values[k])
