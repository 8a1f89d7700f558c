"""Scalar average consensus under the dissensus attack (the ClippedGossip notebook).

Four honest nodes on a chain ``0 - 1 - 2 - 3`` start at 0, 0, 200, 200 (average 100);
two Byzantine nodes, one on each middle node, send every round the dissensus value
``x_t - eps * sum_{honest j} W_tj (x_j - x_t) / sum_{Byzantine k} W_tk`` (spec §4) and
every honest node aggregates synchronously with the library's rules. The error is the
mean squared distance of the honest values to 100. He, Karimireddy & Jaggi,
arXiv 2202.01545: robust rules built for a server (median, trimmed mean) never move the
two halves together; ClippedGossip with the oracle radius reaches consensus when the
chain is well connected and the Byzantine weight small.

The chain's honest edge weight ``a`` sets the spectral gap beta; the Byzantine edge
weight is delta_max. Scalars need no training, so this runs in-process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flwr_tempered.aggregators import get_rule
from flwr_tempered.topology.base import honest_block, spectral_gap

#: Rules of the notebook's figure: the error of each is plotted over rounds.
CONSENSUS_RULES = ("gossip", "median", "trimmed_mean", "clipped_gossip_oracle")
START_VALUES = (0.0, 0.0, 200.0, 200.0)


@dataclass(frozen=True)
class ConsensusSetting:
    """One chain: honest edge weight, Byzantine edge weight, attack strength, rounds."""

    honest_weight: float
    delta_max: float
    eps: float = 0.05
    rounds: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.honest_weight <= 0.5:
            raise ValueError(f"honest_weight must lie in (0, 0.5], got {self.honest_weight!r}")
        if not self.delta_max > 0 or 2 * self.honest_weight + self.delta_max > 1:
            raise ValueError(
                f"delta_max must be > 0 with 2 * honest_weight + delta_max <= 1, got "
                f"{self.delta_max!r} (honest_weight {self.honest_weight!r})")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds!r}")

    @property
    def mixing(self) -> np.ndarray:
        """6x6 weights: chain 0-1-2-3 (weight ``a``), Byzantine 4 on node 1 and 5 on node
        2 (weight delta_max), diagonal = 1 - row sum."""
        return chain_mixing(self.honest_weight, self.delta_max, byzantine_on=(1, 2))

    @property
    def beta(self) -> float:
        """Spectral gap of the honest block (spec §2)."""
        return spectral_gap(honest_block(self.mixing, (4, 5)))


def chain_mixing(honest_weight: float, delta_max: float,
                 byzantine_on: tuple[int, int] = (1, 2)) -> np.ndarray:
    """Mixing matrix of the honest chain 0-1-2-3 with Byzantine node 4 on
    ``byzantine_on[0]`` and 5 on ``byzantine_on[1]``."""
    edges = [(0, 1, honest_weight), (1, 2, honest_weight), (2, 3, honest_weight),
             (byzantine_on[0], 4, delta_max), (byzantine_on[1], 5, delta_max)]
    return mixing_from_edges(6, edges)


def mixing_from_edges(n: int, edges: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Symmetric weights on ``edges``, diagonal = 1 - row sum (``ValueError`` when a row
    would need a negative diagonal)."""
    weights = np.zeros((n, n))
    for a, b, w in edges:
        weights[a, b] = weights[b, a] = w
    np.fill_diagonal(weights, 1.0 - weights.sum(axis=1))
    if (np.diag(weights) < -1e-12).any():
        raise ValueError("edge weights exceed 1 at some node")
    return weights


def scalar_consensus(mixing: np.ndarray, byzantine: Sequence[int], values: Sequence[float],
                     rule: str, rounds: int, eps: float = 0.05) -> list[float]:
    """Run ``rounds`` synchronous rounds of ``rule`` on scalars under dissensus; return
    the error (mean squared distance of the honest values to their initial average) at
    every round, round 0 included.

    ``rule`` is a rule name of :mod:`flwr_tempered.aggregators` or
    ``clipped_gossip_oracle``: ClippedGossip with the paper's oracle radius
    ``tau^2 = sum_{honest j} W_ij (x_j - x_i)^2 / delta_i``. Trimmed mean drops, at each
    node, as many values on each side as the node has Byzantine neighbours (the
    notebook's choice; a chain end with one neighbour trims nothing).
    """
    n = mixing.shape[0]
    byz = set(byzantine)
    honest = [i for i in range(n) if i not in byz]
    if len(values) != len(honest):
        raise ValueError(f"{len(honest)} honest nodes but {len(values)} start values")
    x = dict(zip(honest, (float(v) for v in values), strict=True))
    target = sum(x.values()) / len(x)
    errors = [sum((v - target) ** 2 for v in x.values()) / len(x)]
    for _ in range(rounds):
        x = {i: _aggregate_one(mixing, byz, x, i, rule, eps) for i in honest}
        errors.append(sum((v - target) ** 2 for v in x.values()) / len(x))
    return errors


def _aggregate_one(mixing: np.ndarray, byz: set[int], x: dict[int, float], i: int, rule: str,
                   eps: float) -> float:
    neighbours = [j for j in range(mixing.shape[0]) if j != i and mixing[i, j] > 0]
    honest_nb = [j for j in neighbours if j not in byz]
    delta = float(sum(mixing[i, j] for j in neighbours if j in byz))
    pull = float(sum(mixing[i, j] * (x[j] - x[i]) for j in honest_nb))
    sent = [x[j] if j not in byz else x[i] - eps * pull / delta for j in neighbours]
    own = torch.tensor([x[i]], dtype=torch.float64)
    received = torch.tensor(sent, dtype=torch.float64).unsqueeze(1)
    weights = torch.tensor([mixing[i, i], *(mixing[i, j] for j in neighbours)],
                           dtype=torch.float64)
    if rule == "clipped_gossip_oracle":
        spread = float(sum(mixing[i, j] * (x[j] - x[i]) ** 2 for j in honest_nb))
        tau = 1e12 if delta == 0 else math.sqrt(spread / delta)
        # tau = 0 (the honest neighbours agree with x_i) means "do not move"; the rule
        # needs tau > 0 and a tiny one has the same effect.
        return float(get_rule("clipped_gossip", tau=max(tau, 1e-300))(own, received, weights)[0])
    if rule == "trimmed_mean":
        b = sum(1 for j in neighbours if j in byz)
        return float(get_rule("trimmed_mean", b=b)(own, received)[0])
    return float(get_rule(rule)(own, received, weights)[0])


def run_setting(setting: ConsensusSetting, rule: str) -> list[float]:
    """The error curve of ``rule`` on ``setting``'s chain."""
    return scalar_consensus(setting.mixing, (4, 5), START_VALUES, rule, setting.rounds,
                            setting.eps)


#: The grid of the cpu and full presets (scalars: both are the same).
HONEST_WEIGHTS = (0.05, 0.15, 0.3)
DELTA_MAXES = (0.01, 0.05, 0.2)


def consensus_settings(rounds: int = 100) -> list[ConsensusSetting]:
    """Every (honest weight, delta_max) pair of the grid."""
    return [ConsensusSetting(a, d, rounds=rounds) for a in HONEST_WEIGHTS for d in DELTA_MAXES]
