"""The Krum family: Krum, Multi-Krum and Bulyan.

Krum and Multi-Krum: P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
learning with adversaries: Byzantine tolerant gradient descent", NeurIPS 2017.
Bulyan: E. M. El Mhamdi, R. Guerraoui, S. Rouault, "The hidden vulnerability of distributed
learning in Byzantium", ICML 2018.

In decentralized use the candidate set is own plus received (``n = k + 1``); server-side
the global model plays ``own``.

These follow the papers' definitions: a score sums *squared* distances, and Multi-Krum
returns the *mean* of its ``m`` picks. The ClippedGossip authors' reference code differs
on both (its scores square distances that are already squared, i.e. sum fourth powers,
and its Multi-Krum returns the sum of the picks); with ``m = 1`` both give the same
choice whenever the order of the scores agrees, which the fourth power can change.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import Rule, check_int_at_least, register_rule
from .linalg import pairwise_sq_distances
from .order_statistics import coordinate_median, mean_of_closest


def krum_scores(inputs: Tensor, f: int) -> Tensor:
    """Krum score of every row: the sum of squared distances to its ``n - f - 2`` closest
    other rows (lower is better). Needs ``n - f - 2 >= 1``."""
    return krum_scores_from_distances(pairwise_sq_distances(inputs), f)


def krum_scores_from_distances(distances: Tensor, f: int) -> Tensor:
    """:func:`krum_scores` given the ``Tensor[n, n]`` of squared pairwise distances."""
    n = distances.shape[0]
    closest = n - f - 2
    if closest < 1:
        raise ValueError(f"krum scores need n - f - 2 >= 1, got n = {n}, f = {f}")
    # Row-wise: drop the zero self-distance by adding +inf on the diagonal.
    infinity = torch.full((n,), float("inf"), dtype=distances.dtype, device=distances.device)
    masked = distances + torch.diag(infinity)
    return masked.topk(closest, dim=1, largest=False).values.sum(dim=1)


def multi_krum_select(inputs: Tensor, f: int, m: int) -> Tensor:
    """Indices of the ``m`` rows with the best (lowest) Krum scores, best first."""
    scores = krum_scores(inputs, f)
    return torch.argsort(scores, stable=True)[:m]


def _check_krum_count(rule_name: str, n: int, f: int) -> None:
    if n < 2 * f + 3:
        raise ValueError(
            f"{rule_name}: needs n >= 2f + 3 inputs (own plus received), got n = {n}, f = {f}"
        )


@register_rule("multi_krum")
class MultiKrum(Rule):
    """Average of the ``m`` inputs with the lowest Krum scores (needs ``n >= 2f + 3``).

    Equal scores go to the earlier input (own first, then the received order). If rejected
    non-finite inputs leave fewer than three inputs, no score exists and own is returned.
    """

    def __init__(self, f: int, m: int = 1) -> None:
        super().__init__()
        check_int_at_least(self.name or "multi_krum", "f", f, 0)
        check_int_at_least(self.name or "multi_krum", "m", m, 1)
        self.f = f
        self.m = m

    def check_input_count(self, k: int) -> None:
        n = k + 1
        _check_krum_count(self.name, n, self.f)
        if self.m > n - self.f:
            raise ValueError(
                f"{self.name}: m must be <= n - f = {n - self.f} (n = {n}, f = {self.f}), "
                f"got m = {self.m}"
            )

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        inputs = stack_with_own(own, received)
        n = inputs.shape[0]
        f = max(self.f - rejected, 0)
        if n < 3:  # too few left for a score; own is the only safe choice
            self.stats.update(accepted=1.0, own_selected=1.0)
            return own.clone()
        m = min(self.m, n - f)
        chosen = multi_krum_select(inputs, min(f, n - 3), m)
        self.stats.update(accepted=float(m), own_selected=float(bool((chosen == 0).any())))
        picked = torch.zeros(n, dtype=torch.bool, device=inputs.device)
        picked[chosen] = True
        self._note_accepted(picked[1:])
        return inputs[chosen].mean(dim=0)

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """Server-side Multi-Krum over the clients' models; the ``m`` selected models are
        averaged with the clients' weights when given (as Flower's ``MultiKrum`` does with
        example counts), else uniformly."""
        k = updates.shape[0]
        self.check_client_count(k + refused)
        self.stats = {"received": float(k), "rejected_nonfinite": float(refused)}
        if k < 3:  # too few left for a score; fall back to the unweighted mean
            return updates.mean(dim=0) if k else reference.clone()
        f = max(self.f - refused, 0)
        m = min(self.m, k - f)
        chosen = multi_krum_select(updates, min(f, k - 3), m)
        self.stats.update(accepted=float(m))
        if weights is None or float(weights[chosen].sum()) <= 0.0:
            return updates[chosen].mean(dim=0)
        chosen_weights = weights[chosen] / weights[chosen].sum()
        return chosen_weights @ updates[chosen]


@register_rule("krum")
class Krum(MultiKrum):
    """The single input with the lowest Krum score (Multi-Krum with ``m = 1``)."""

    def __init__(self, f: int) -> None:
        super().__init__(f=f, m=1)


@register_rule("bulyan")
class Bulyan(Rule):
    """Bulyan: pick ``theta = n - 2f`` inputs by repeated Krum, then average per coordinate
    the ``beta = theta - 2f`` values closest to the coordinate median of the picked set.
    Needs ``n >= 4f + 3``.

    ``selection="repeated"`` is the paper's selection (Krum re-run on the remaining inputs
    after each pick); ``selection="multi_krum"`` takes the ``theta`` best Krum scores of one
    pass, which is what Flower's ``Bulyan`` strategy does.
    """

    SELECTIONS = ("repeated", "multi_krum")

    def __init__(self, f: int, selection: str = "repeated") -> None:
        super().__init__()
        check_int_at_least("bulyan", "f", f, 0)
        if selection not in self.SELECTIONS:
            raise ValueError(
                f"bulyan: selection must be one of {self.SELECTIONS}, got {selection!r}"
            )
        self.f = f
        self.selection = selection

    def check_input_count(self, k: int) -> None:
        n = k + 1
        if n < 4 * self.f + 3:
            raise ValueError(
                f"{self.name}: needs n >= 4f + 3 inputs (own plus received), "
                f"got n = {n}, f = {self.f}"
            )

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        inputs = stack_with_own(own, received)
        n = inputs.shape[0]
        f = max(self.f - rejected, 0)
        theta = n - 2 * f
        if self.selection == "multi_krum":
            chosen = multi_krum_select(inputs, min(f, n - 3), theta) if n >= 3 else (
                torch.arange(n, device=inputs.device))
            selected = inputs[chosen]
            self.stats.update(accepted=float(theta), own_selected=float(bool((chosen == 0).any())))
            return mean_of_closest(selected, coordinate_median(selected), theta - 2 * f)
        distances = pairwise_sq_distances(inputs)
        remaining = torch.arange(n, device=inputs.device)
        picked: list[int] = []
        for _ in range(theta):
            count = remaining.shape[0]
            if count - f - 2 >= 1:
                sub = distances[remaining][:, remaining]
                scores = krum_scores_from_distances(sub, f)
                best = int(torch.argmin(scores))
            else:  # too few left to score: take them in order
                best = 0
            picked.append(int(remaining[best]))
            remaining = torch.cat([remaining[:best], remaining[best + 1:]])
        selected = inputs[torch.tensor(picked, device=inputs.device)]
        beta = theta - 2 * f
        self.stats.update(accepted=float(theta), own_selected=float(0 in picked))
        return mean_of_closest(selected, coordinate_median(selected), beta)

