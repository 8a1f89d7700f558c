"""FLTrust: trust bootstrapping from a small root data set.

X. Cao, M. Fang, J. Liu, N. Z. Gong, "FLTrust: Byzantine-robust federated learning via
trust bootstrapping", NDSS 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import Rule, register_rule
from .linalg import centred_norms_and_dots

#: Maps the current model to the model after training on the trusted root data set.
ReferenceFunction = Callable[[Tensor], Tensor]


@register_rule("fltrust")
class FLTrust(Rule):
    """Updates ``g_i = x_i - own`` get trust ``ReLU(cos(g_i, g0))`` against the trusted
    update ``g0 = reference - own``, are rescaled to ``||g0||``, and are averaged with
    their trust as weights; the result is ``own`` plus that average (``own`` when no update
    is trusted).

    The trusted model comes from ``reference_fn(own)`` (e.g. a few steps on the server's
    root data) or from :meth:`set_reference` before the call.
    """

    server_reference = True

    def __init__(self, reference_fn: ReferenceFunction | None = None) -> None:
        super().__init__()
        if reference_fn is not None and not callable(reference_fn):
            raise ValueError(f"fltrust: reference_fn must be callable, got {reference_fn!r}")
        self.reference_fn = reference_fn
        self._reference: Tensor | None = None

    def __call__(
        self,
        own: Tensor,
        received: Tensor,
        weights: Tensor | None = None,
        *,
        round: int = 0,
        refused: int = 0,
    ) -> Tensor:
        """Aggregate as :class:`Rule` does; a reference set for this call never outlives it
        (not even when every received vector is rejected)."""
        try:
            return super().__call__(own, received, weights, round=round, refused=refused)
        finally:
            self._reference = None

    def set_reference(self, trusted_model: Tensor) -> None:
        """Use ``trusted_model`` (the model trained on root data) for the next call."""
        if not isinstance(trusted_model, Tensor) or trusted_model.dim() != 1:
            raise ValueError("fltrust: the trusted reference must be a Tensor[d]")
        if not torch.isfinite(trusted_model).all():
            raise ValueError("fltrust: the trusted reference holds non-finite values")
        self._reference = trusted_model

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        if self.reference_fn is not None:
            self.set_reference(self.reference_fn(own))
        if self._reference is None:
            raise ValueError("fltrust: no trusted reference; pass reference_fn= or call "
                             "set_reference() before aggregating")
        if self._reference.shape != own.shape:
            raise ValueError(
                f"fltrust: reference has shape {tuple(self._reference.shape)}, "
                f"own has {tuple(own.shape)}"
            )
        g0 = self._reference.to(device=own.device, dtype=own.dtype) - own
        g0_norm = g0.norm()
        norms, dots = centred_norms_and_dots(received, own, g0)  # ||g_i||, g_i . g0
        tiny = torch.finfo(own.dtype).tiny
        cosine = dots / torch.clamp(norms * g0_norm, min=tiny)
        trust = torch.relu(cosine)
        self.stats.update(accepted=float((trust > 0).sum()))
        total = trust.sum()
        if float(total) <= 0.0:
            return own.clone()
        # sum_i c_i (x_i - own) with c_i = trust_i / total * ||g0|| / ||g_i||, streamed.
        coefficients = (trust / total) * g0_norm / torch.clamp(norms, min=tiny)
        return own + coefficients @ received - coefficients.sum() * own
