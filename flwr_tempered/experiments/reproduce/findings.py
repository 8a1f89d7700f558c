"""The papers' qualitative findings, checked on an experiment's results files.

Each experiment's check returns :class:`Finding` records (the claim, whether the results
show it, and the numbers behind the verdict). ``flwr-tempered plot`` prints them, the
reproduction doc quotes them, and the tests run them on shortened runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .catalog import Case, get_experiment
from .figures import final_value

Results = list[tuple[Case, list[dict[str, Any]]]]


@dataclass(frozen=True)
class Finding:
    """One claim of a paper and whether our results show it."""

    claim: str
    holds: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'holds' if self.holds else 'FAILS'}] {self.claim}: {self.detail}"


def _final(results: Results, experiment: str, **labels: Any) -> dict[str, float]:
    """Final metric (in %) of every case whose labels include ``labels``, by case key."""
    metric = get_experiment(experiment).metric
    found = {}
    for case, metrics in results:
        if all(case.labels.get(k) == v for k, v in labels.items()):
            value = final_value(metrics, metric)
            if value is not None:
                found[case.key] = 100.0 * value
    return found


def _by(results: Results, experiment: str, label: str, **labels: Any) -> dict[Any, float]:
    """Final metric (in %) by the value of ``label`` among the matching cases."""
    keys = {c.key: c.labels[label] for c, _ in results}
    return {keys[k]: v for k, v in _final(results, experiment, **labels).items()}


def _shown(values: dict[Any, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in values.items())


def optimization_delta(results: Results, noise: float = 2.0) -> list[Finding]:
    """Under dissensus, ClippedGossip's final global accuracy falls as delta_max rises
    (monotone up to ``noise`` points)."""
    curve = dict(sorted(_by(results, "optimization_delta", "delta_max",
                            attack="dissensus1.5").items()))
    values = list(curve.values())
    monotone = len(values) >= 2 and all(b <= a + noise for a, b in pairwise(values))
    falls = len(values) >= 2 and values[0] - values[-1] >= 10.0
    return [Finding("accuracy under dissensus falls as delta_max rises (monotone within "
                    f"{noise:g} points, at least 10 points overall)", monotone and falls,
                    "final global accuracy by delta_max: " + _shown(curve))]


def honest_majority(results: Results, threshold: float = 80.0, chance: float = 20.0
                    ) -> list[Finding]:
    """ClippedGossip above ``threshold`` in all six cells; trimmed mean and RFA near
    chance (at most ``chance``) without a local honest majority under ALIE."""
    clipped = _final(results, "honest_majority", rule="ClippedGossip")
    collapsed = {
        rule: _final(results, "honest_majority", rule=rule, attack="ALIE10",
                     setting="no local honest majority")
        for rule in ("TM", "RFA")
    }
    flat = {k: v for values in collapsed.values() for k, v in values.items()}
    return [
        Finding(f"ClippedGossip (tau 0.1, scaled) above {threshold:g} % in all six cells",
                len(clipped) == 6 and min(clipped.values()) > threshold, _shown(clipped)),
        Finding(f"trimmed mean and RFA near chance (<= {chance:g} %) without local honest "
                "majority under ALIE", len(flat) == 2 and max(flat.values()) <= chance,
                _shown(flat)),
    ]


def _dumbbell_gap(results: Results, experiment: str, margin: float, spread: float,
                  robust: Iterable[str] = ("TM", "RFA", "MOZI")) -> list[Finding]:
    non_iid = _by(results, experiment, "rule", setting="non-IID")
    iid = _by(results, experiment, "rule", setting="IID")
    leaders = [non_iid[r] for r in ("gossip", "ClippedGossip") if r in non_iid]
    others = [non_iid[r] for r in robust if r in non_iid]
    gap = min(leaders) - max(others) if leaders and others else float("nan")
    width = max(iid.values()) - min(iid.values()) if iid else float("nan")
    return [
        Finding(f"non-IID: gossip and ClippedGossip clique-1 accuracy at least {margin:g} "
                "points above " + ", ".join(robust), gap >= margin,
                f"{_shown(non_iid)} (gap {gap:.1f})"),
        Finding(f"IID: every rule within {spread:g} points", width <= spread,
                f"{_shown(iid)} (spread {width:.1f})"),
    ]


def dumbbell(results: Results, margin: float = 10.0, spread: float = 3.0) -> list[Finding]:
    """Server-style robust rules stall at the cut of a non-IID dumbbell; IID all agree."""
    return _dumbbell_gap(results, "dumbbell", margin, spread)


def dumbbell_cifar(results: Results, margin: float = 5.0, spread: float = 3.0
                   ) -> list[Finding]:
    """As dumbbell (the paper: 52-53 % against 43-44 % non-IID, all close IID)."""
    return _dumbbell_gap(results, "dumbbell_cifar", margin, spread, robust=("TM", "RFA"))


def dumbbell_improvement(results: Results) -> list[Finding]:
    """Trimmed mean gains with bucketing plus the random edge."""
    tm = _by(results, "dumbbell_improvement", "setting", rule="TM")
    base, both = tm.get("base"), tm.get("bucketing + edge")
    holds = base is not None and both is not None and both > base
    return [Finding("trimmed mean gains with bucketing plus the random edge", holds,
                    "TM clique-1 accuracy: " + _shown(tm))]


def balance_grid(results: Results, tolerance: float = 5.0) -> list[Finding]:
    """BALANCE's worst-honest error under every attack within ``tolerance`` points of its
    no-attack error."""
    worst = {a: 100.0 - v for a, v in _by(results, "balance_grid", "attack",
                                           rule="BALANCE").items()}
    clean = worst.get("none")
    off = {a: e for a, e in worst.items() if a != "none"}
    failing = {a: e for a, e in off.items() if clean is not None and e > clean + tolerance}
    holds = clean is not None and len(off) == 8 and not failing
    detail = f"no attack {clean:.1f}; " if clean is not None else "no attack: missing; "
    detail += _shown(off) + (f"; beyond: {', '.join(failing)}" if failing else "")
    return [Finding(f"BALANCE's worst honest error under every attack within {tolerance:g} "
                    "points of no attack", holds, detail)]


def consensus(results: Results) -> list[Finding]:
    """Median and trimmed mean stay at error 1e4; ClippedGossip with the oracle radius
    reaches about 0 on the best-connected chains."""
    finals: dict[str, dict[Any, float]] = {}
    for case, metrics in results:
        value = final_value(metrics, "error")
        if value is not None:
            finals.setdefault(case.labels["rule"], {})[case.labels["setting"]] = value
    stuck = [v for rule in ("median", "trimmed_mean") for v in finals.get(rule, {}).values()]
    oracle = finals.get("clipped_gossip_oracle", {})
    strongest = max((s.honest_weight for s in oracle), default=None)
    best = {s.delta_max: v for s, v in oracle.items() if s.honest_weight == strongest}
    best_beta = max((s.beta for s in oracle), default=None)
    return [
        Finding("median and trimmed mean stay at error 1e4 on every chain",
                bool(stuck) and all(abs(v - 1e4) < 1.0 for v in stuck),
                f"{len(stuck)} runs, final errors {min(stuck, default=0):.4g} to "
                f"{max(stuck, default=0):.4g}"),
        Finding("ClippedGossip with the oracle radius reaches about 0 on the best-connected "
                "chain", bool(best) and max(best.values()) < 1.0,
                f"beta {best_beta or 0:.3f}: final error by delta_max "
                + ", ".join(f"{d:g} {v:.2g}" for d, v in sorted(best.items()))),
    ]


CHECKS: dict[str, Callable[[Results], list[Finding]]] = {
    "consensus": consensus, "optimization_delta": optimization_delta,
    "honest_majority": honest_majority, "dumbbell": dumbbell,
    "dumbbell_improvement": dumbbell_improvement, "dumbbell_cifar": dumbbell_cifar,
    "balance_grid": balance_grid,
}


def check(experiment: str, results: Results) -> list[Finding]:
    """The findings of ``experiment`` on ``results``."""
    get_experiment(experiment)
    return CHECKS[experiment](results)
