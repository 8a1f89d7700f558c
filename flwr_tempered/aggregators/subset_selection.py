"""Subset-selection rules: minimum diameter averaging (MDA) and smallest maximum eigenvalue
averaging (SMEA).

Both look at every subset of ``n - f`` of the ``n`` inputs (own plus received; server-side,
the clients), keep the most concentrated one and return its mean. They differ in what
"concentrated" means:

* MDA: the smallest diameter (largest pairwise distance). E. M. El Mhamdi, R. Guerraoui,
  S. Rouault, "Fast and robust distributed learning in high dimension", SRDS 2020, and
  E. M. El Mhamdi, R. Guerraoui, A. Guirguis, L.-N. Hoang, S. Rouault, "Genuinely
  distributed Byzantine machine learning", PODC 2020.
* SMEA: the smallest largest eigenvalue of the subset's empirical covariance. Y. Allouah,
  R. Guerraoui, N. Gupta, R. Pinot, G. Rizk, "Robust distributed learning: tight error
  bounds and breakdown point under data heterogeneity", NeurIPS 2023.

There are ``C(n, f)`` subsets: a rule refuses, with a ``ValueError`` naming the count, to
run when that exceeds ``max_subsets`` rather than run for hours.

Ties: subsets often share their diameter (every subset that keeps the same farthest pair
has it), so MDA breaks them by the smaller sum of squared pairwise distances, which makes
its result independent of the order of the inputs (the definition leaves ties open;
ByzFL takes the first subset in its enumeration order). Any tie left after that (not
generic) goes to the first subset in lexicographic order of the left-out indices (own is
input 0).
"""

from __future__ import annotations

import itertools
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import HonestMajorityRule, check_int_at_least, register_rule
from .linalg import BLOCK_ELEMENTS, centred_gram, pairwise_sq_distances

#: Default cap on the number of subsets a subset-selection rule may examine per call.
DEFAULT_MAX_SUBSETS = 100_000

#: Maps the membership masks of subsets (``BoolTensor[s, n]``, ``True`` = kept) to their
#: scores ``Tensor[s, c]``, compared lexicographically (column 0 first; lower is better).
SubsetScore = Callable[[Tensor], Tensor]


def subsets_in_chunks(n: int, f: int, chunk: int, device: torch.device) -> Iterator[Tensor]:
    """Every subset of ``range(n)`` that leaves ``f`` indices out, as membership masks
    (``BoolTensor[<= chunk, n]`` on ``device``), in lexicographic order of the left-out
    indices (only those are enumerated in Python: ``f`` is small where ``C(n, f)`` is)."""
    left_out = itertools.combinations(range(n), f)
    while True:
        rows = list(itertools.islice(left_out, chunk))
        if not rows:
            return
        keep = torch.ones(len(rows), n, dtype=torch.bool, device=device)
        if f:
            keep.scatter_(1, torch.tensor(rows, dtype=torch.long, device=device), False)
        yield keep


def lexicographic_argmin(scores: Tensor) -> int:
    """The first row of ``scores`` (``Tensor[s, c]``) that is lexicographically smallest."""
    candidates = torch.arange(scores.shape[0], device=scores.device)
    for column in scores.T:
        values = column[candidates]
        candidates = candidates[values == values.min()]
    return int(candidates[0])


def best_subset(n: int, f: int, score: SubsetScore, device: torch.device
                ) -> tuple[Tensor, list[float]]:
    """The membership mask of the subset of ``n - f`` of ``range(n)`` with the
    lexicographically lowest scores (the first one enumerated on ties), and those scores.
    Subsets are scored in chunks of about ``BLOCK_ELEMENTS / n^2`` so that a score's
    ``[s, n, n]``-sized temporaries stay small."""
    chunk = max(1, BLOCK_ELEMENTS // max(n * n, 1))
    best: Tensor | None = None
    best_scores: list[float] = []
    for keep in subsets_in_chunks(n, f, chunk, device):
        scores = score(keep)
        position = lexicographic_argmin(scores)
        values = scores[position].tolist()
        if best is None or values < best_scores:
            best, best_scores = keep[position], values
    assert best is not None  # C(n, f) >= 1 subsets
    return best, best_scores


def diameter_score(inputs: Tensor) -> SubsetScore:
    """Scores subsets by their diameter (the largest pairwise distance), then by the sum
    of their squared pairwise distances.

    The pairs are sorted by distance once; a subset's diameter is the first pair in that
    order with both ends kept, which lies among the first ``f (n - 1) + 1`` pairs (at most
    ``f (n - 1)`` pairs touch the ``f`` left-out inputs). So a subset costs ``O(f n)``,
    not the ``O(n^2)`` of its distance block.
    """
    distances = pairwise_sq_distances(inputs)
    distances = torch.maximum(distances, distances.T)  # exactly symmetric
    n = distances.shape[0]
    first, second = torch.triu_indices(n, n, 1, device=distances.device)
    order = torch.argsort(distances[first, second], descending=True)
    first, second = first[order], second[order]
    ranked = distances[first, second]

    def score(keep: Tensor) -> Tensor:
        kept = int(keep[0].sum())
        members = keep.to(distances.dtype)
        spread = ((members @ distances) * members).sum(dim=1)
        if kept < 2:  # a single input has diameter 0
            return torch.stack([torch.zeros_like(spread), spread], dim=1)
        depth = min(ranked.shape[0], (n - kept) * (n - 1) + 1)
        both_kept = keep[:, first[:depth]] & keep[:, second[:depth]]
        widest = torch.argmax(both_kept.to(torch.uint8), dim=1)  # the first kept pair
        return torch.stack([ranked[widest].sqrt(), spread], dim=1)

    return score


def max_eigenvalue_score(inputs: Tensor) -> SubsetScore:
    """Scores subsets by the largest eigenvalue of their empirical covariance
    ``(1/m) sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T``.

    That ``d x d`` matrix is ``C^T C / m`` with ``C`` the subset's centred rows, whose
    non-zero eigenvalues are those of the ``m x m`` matrix ``C C^T / m``; and ``C C^T`` is
    the doubly centred block ``P K_S P`` (``P = I - 11^T / m``) of the Gram matrix ``K`` of
    the inputs around any common point. So one ``n x n`` Gram matrix (float64, around the
    inputs' mean) serves every subset, whatever ``d``.
    """
    gram = centred_gram(inputs, inputs.mean(dim=0), torch.float64)

    def score(keep: Tensor) -> Tensor:
        s, m = keep.shape[0], int(keep[0].sum())
        rows = keep.nonzero()[:, 1].view(s, m)
        block = gram[rows.unsqueeze(2), rows.unsqueeze(1)]
        row_means = block.mean(dim=2, keepdim=True)
        centred = block - row_means - row_means.transpose(1, 2) + block.mean(dim=(1, 2),
                                                                             keepdim=True)
        return (torch.linalg.eigvalsh(centred)[:, -1] / m).unsqueeze(1)

    return score


class SubsetSelection(HonestMajorityRule):
    """Mean of the best subset of ``n - f`` inputs by :meth:`scorer` (see the module
    docstring). Needs ``n >= 2f + 1`` and at most ``max_subsets`` subsets, ``C(n, f)``."""

    #: Name of the winning subset's score in ``stats``.
    score_name = "score"

    def __init__(self, f: int, max_subsets: int = DEFAULT_MAX_SUBSETS) -> None:
        super().__init__(f)
        check_int_at_least(self.name, "max_subsets", max_subsets, 1)
        self.max_subsets = max_subsets

    def check_input_count(self, k: int) -> None:
        super().check_input_count(k)
        n = k + 1
        count = math.comb(n, self.f)
        if count > self.max_subsets:
            raise ValueError(
                f"{self.name}: C(n, f) = C({n}, {self.f}) = {count} subsets exceed "
                f"max_subsets = {self.max_subsets}; lower f or raise max_subsets"
            )

    @abstractmethod
    def scorer(self, inputs: Tensor) -> SubsetScore:
        """The scores of the subsets of ``inputs`` (lower is better)."""

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        inputs = stack_with_own(own, received)
        n = inputs.shape[0]
        f = self.budget(rejected)
        if f == 0:  # one subset: every input
            self.stats.update(selected=float(n), own_selected=1.0)
            return inputs.mean(dim=0)
        keep, values = best_subset(n, f, self.scorer(inputs), inputs.device)
        self.stats.update(selected=float(n - f), own_selected=float(bool(keep[0])),
                          **{self.score_name: values[0]})
        return inputs[keep].mean(dim=0)

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """Server-side: the best subset of the clients' models (the global model is no
        candidate); ``own_selected`` has no meaning there and is not reported."""
        result = super()._aggregate_clients(reference, updates, weights, round=round,
                                            refused=refused)
        self.stats.pop("own_selected", None)
        return result


@register_rule("mda")
class MinimumDiameterAveraging(SubsetSelection):
    """MDA: the mean of the ``n - f`` inputs with the smallest diameter (largest pairwise
    distance; ties: the smaller sum of squared pairwise distances). Needs ``n >= 2f + 1``
    and ``C(n, f) <= max_subsets``."""

    score_name = "diameter"

    def scorer(self, inputs: Tensor) -> SubsetScore:
        return diameter_score(inputs)


@register_rule("smea")
class SmallestMaxEigenvalueAveraging(SubsetSelection):
    """SMEA: the mean of the ``n - f`` inputs whose empirical covariance has the smallest
    largest eigenvalue. Needs ``n >= 2f + 1`` and ``C(n, f) <= max_subsets``."""

    score_name = "max_eigenvalue"

    def scorer(self, inputs: Tensor) -> SubsetScore:
        return max_eigenvalue_score(inputs)
