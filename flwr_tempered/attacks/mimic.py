"""The mimic attack: every attacker sends a copy of one honest vector."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    AttackView,
    ModelPoisoningAttack,
    TargetView,
    check_choice,
    check_int,
    register_attack,
)


@register_attack("mimic")
class Mimic(ModelPoisoningAttack):
    """Mimic: send target ``t`` a copy of one vector of its honest set ``H_t``.

    Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via
    bucketing", ICLR 2022. Under heterogeneous data, over-representing one honest worker
    biases the aggregate towards that worker's data while every Byzantine vector looks
    honest (it *is* an honest vector). Every Byzantine neighbour of ``t`` computes the same
    choice, so they all send the same copy.

    The candidates are ``H_t = [x_t, x_1, ..., x_h]`` (the target's own model first, then
    its honest neighbours in view order; in the server-assisted use, the honest clients).
    ``choice`` picks one:

    * ``"max_variance"`` (default): the paper's heuristic, per round and per target. With
      ``C`` the rows of ``H_t`` minus their mean and ``z`` the top principal direction of
      ``C`` (the direction of maximal variance of the honest vectors), copy the ``x_i``
      maximising ``|<z, x_i - mean(H_t)>|``. (The paper fixes ``i`` after a warm-up and
      tracks ``z`` across rounds with a power iteration; here ``z`` is the exact top
      eigenvector of ``C C^T`` each round, no state kept.) Projections are sign-free, since
      the sign of an eigenvector is arbitrary.
    * ``"farthest"``: the ``x_i`` farthest (Euclidean) from ``mean(H_t)``.
    * ``"index"``: ``H_t[index mod |H_t|]``, ByzFL's fixed index (its ``epsilon``; González
      et al., arXiv:2505.24802). ``index = 0`` is the target's own model; ``1`` its first
      honest neighbour.

    Ties go to the lowest position. A target whose honest vectors all coincide (or that has
    no honest neighbour) is sent ``H_t[0] = x_t`` by the two heuristics.
    """

    CHOICES = ("max_variance", "farthest", "index")

    @property
    def reads_own_model(self) -> bool:
        """Copies a vector of the target's honest set, never the attacker's own model."""
        return False

    def __init__(self, choice: str = "max_variance", index: int = 0) -> None:
        super().__init__()
        check_choice(self.name, "choice", choice, self.CHOICES)
        check_int(self.name, "index", index, 0)
        self.choice = choice
        self.index = int(index)
        #: Position in ``H_t`` copied for each target in the last call (in target order).
        self.last_positions: list[int] = []

    def craft_all(self, view: AttackView) -> Tensor:
        self.last_positions = []
        return super().craft_all(view)

    def position(self, honest: Tensor) -> int:
        """The row of ``honest`` (``H_t``, ``Tensor[h+1, d]``) that is copied."""
        if self.choice == "index":
            return self.index % honest.shape[0]
        centred = honest - honest.mean(dim=0)
        if self.choice == "farthest":
            score = torch.linalg.vector_norm(centred, dim=1)
        else:
            # The projections of the rows on the top right singular vector of ``centred``
            # are proportional to the top eigenvector of the small Gram matrix C C^T.
            gram = (centred @ centred.T).double()
            if float(gram.diagonal().sum()) == 0.0:
                return 0
            _, vectors = torch.linalg.eigh(gram)
            score = vectors[:, -1].abs()
        return int(torch.argmax(score))

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        honest = target.honest_set()
        position = self.position(honest)
        self.last_positions.append(position)
        return honest[position].clone()
