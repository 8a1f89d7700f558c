"""The experiments of the two seed papers, as lists of runs per preset.

ClippedGossip: L. He, S. P. Karimireddy, M. Jaggi, "Byzantine-Robust Decentralized
Learning via ClippedGossip", arXiv 2202.01545 (its experiment menu: optimization_delta,
honest_majority, dumbbell, dumbbell_improvement, dumbbell_CIFAR, and the consensus
notebook). BALANCE: M. Fang et al., "Byzantine-Robust Decentralized Federated Learning",
ACM CCS 2024, arXiv 2406.10416 (our grid of rules x attacks on its setting).

Presets:

* ``full``: the published settings (full MNIST or CIFAR-10 through flwr-datasets, the
  papers' models and numbers of steps; meant for a GPU).
* ``cpu``: the same topology, partition, rules, attacks and hyper-parameters, with the
  offline MNIST-5k, the small CNN and fewer steps, so each experiment completes in
  minutes on two cores.

One step of the papers is one local SGD step followed by one exchange: a run has
``local_steps = 1`` and ``rounds`` = steps. "Epoch" in the MNIST settings is 30 steps
(evaluation once per epoch in the full presets; the cpu presets evaluate 8-10 times per
run, as evaluating every node is a third of their cost).

ClippedGossip's radius ``tau`` is a Euclidean length in parameter space, so it belongs to
the model. Under attack it bounds the Byzantine push per round, which must stay below what
training moves the model: the cpu presets of the attacked experiments (optimization_delta,
honest_majority) scale it by ``sqrt(d_cpu / d_published)`` (per-coordinate steps of
similar size give norms that grow as the square root of the dimension): 1 -> 0.155 and
0.1 -> 0.0155 against the MNIST CNN. With the unscaled ``tau = 0.1`` the small CNN never
leaves chance under ALIE in honest_majority (measured: 10 % after 300 steps). The
dumbbells have no attacker; there the radius only decides how much of the difference
across the cut passes, and the published ``tau`` is kept (scaled to 0.155, ClippedGossip
stalled at the cut like trimmed mean: 49.2 % clique-1 accuracy at 600 steps, non-IID).
The dumbbell's cpu preset keeps all 900 steps: information crosses its cut slowly
(spectral gap 0.015), and at 600 steps gossip led trimmed mean by 7 points, not yet 10.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from flwr_tempered.node import RunConfig

PRESETS = ("cpu", "full")

#: Steps per "epoch" in the ClippedGossip MNIST experiments (evaluation interval).
MNIST_EPOCH = 30


@dataclass(frozen=True)
class Case:
    """One run of an experiment: its folder name, its config, and the labels the figure
    and tables group it by (rule, attack, setting, ...)."""

    key: str
    config: RunConfig
    labels: Mapping[str, Any]


@dataclass(frozen=True)
class Experiment:
    """An experiment: how to build its runs for a preset, and what it measures."""

    name: str
    title: str
    #: preset -> runs
    cases: Callable[[str], list[Case]]
    #: The metrics.jsonl key the paper reports (e.g. the clique-1 average model).
    metric: str
    #: What the metric is called in figures and tables.
    metric_label: str
    #: The paper's figure: which label colours lines and which one makes panels.
    colour_by: str
    panel_by: str | None
    style_by: str | None = None
    #: Published numbers, for docs/reproduction.md: (labels subset, value in %).
    published: tuple[tuple[Mapping[str, Any], float], ...] = ()
    #: Whether the runs go through the decentralized runtime (the consensus notebook is
    #: scalar arithmetic, run in-process only).
    training: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")


@cache
def _tau_scale() -> float:
    """``sqrt(d_small_cnn / d_mnist_cnn)``, the cpu presets' factor on ClippedGossip's
    radius (module docstring)."""
    from flwr_tempered.models import mnist_cnn, parameter_count, small_cnn

    return math.sqrt(parameter_count(small_cnn()) / parameter_count(mnist_cnn()))


def scaled_rule_args(rule: str, args: Mapping[str, Any], preset: str) -> dict[str, Any]:
    """``args`` of ``rule`` for ``preset``: under ``cpu``, ClippedGossip's ``tau`` scaled
    from the published MNIST CNN to the small CNN."""
    scaled = dict(args)
    if preset == "cpu" and rule == "clipped_gossip" and scaled.get("tau") is not None:
        scaled["tau"] = round(float(scaled["tau"]) * _tau_scale(), 4)
    return scaled


def _mnist(preset: str, steps_cpu: int, steps_full: int, cpu_eval_every: int = MNIST_EPOCH,
           **values: Any) -> dict[str, Any]:
    """The common MNIST settings of the ClippedGossip paper (batch 32, momentum 0.9, one
    local step per exchange, evaluation once per 30-step epoch), per preset."""
    _check_preset(preset)
    common: dict[str, Any] = {"batch_size": 32, "momentum": 0.9, "local_steps": 1,
                              "eval_every": MNIST_EPOCH, "ledger": False, "seed": 0}
    if preset == "full":
        common.update(dataset="mnist", model="mnist_cnn", rounds=steps_full)
    else:
        common.update(dataset="mnist-5k", model="small_cnn", rounds=steps_cpu,
                      eval_every=cpu_eval_every)
    common.update(values)
    return common


# ------------------------------------------------------------------ optimization_delta
#: delta of two_cliques_with_byzantine(5, 1, delta); delta_max = delta * b / (b + 3).
DELTAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: ALIE with the reference code's sample deviation (``torch.std``), as the papers' runs.
ALIE_REFERENCE: dict[str, Any] = {"z": 10.0, "ddof": 1}
DELTA_ATTACKS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("LF", "label_flip", {}),
    ("ALIE10", "alie", ALIE_REFERENCE),
    ("IPM", "ipm", {"eps": 0.1}),
    ("dissensus1.5", "dissensus", {"eps": 1.5}),
    ("BF", "bit_flip", {}),
)


def _optimization_delta(preset: str) -> list[Case]:
    cases = []
    for delta in DELTAS:
        delta_max = delta * 1 / (1 + 3)
        for label, attack, args in DELTA_ATTACKS:
            config = RunConfig(**_mnist(
                preset, 900, 1500, cpu_eval_every=90, topology="two_cliques_with_byzantine",
                topology_args={"m": 5, "b": 1, "delta": delta}, nodes=12, byzantine=1,
                partition="label_sorted", rule="clipped_gossip",
                rule_args=scaled_rule_args("clipped_gossip", {"tau": 1.0}, preset),
                attack=attack, attack_args=args, lr=1e-3))
            cases.append(Case(f"delta{delta_max:g}-{label}", config,
                              {"rule": "ClippedGossip", "attack": label,
                               "delta_max": delta_max}))
    return cases


# --------------------------------------------------------------------- honest_majority
HM_RULES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ClippedGossip", "clipped_gossip", {"tau": 0.1}),
    ("TM", "trimmed_mean", {"b": 2}),
    ("RFA", "geometric_median", {"iterations": 8}),
    ("MOZI", "mozi", {"rho": 0.4, "alpha": 0.5}),
)
HM_ATTACKS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ALIE10", "alie", ALIE_REFERENCE),
    ("IPM", "ipm", {"eps": 0.1}),
    ("dissensus1.5", "dissensus", {"eps": 1.5}),
)


def reference_attack_args(attack: str, args: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """``args`` with the reference code's conventions: its dissensus gives every
    neighbour the weight ``1 / (degree + 1)`` against a rule that is not a gossip-style
    average (everything but ClippedGossip and gossip here)."""
    adjusted = dict(args)
    if attack == "dissensus" and rule not in ("clipped_gossip", "gossip"):
        adjusted["weights"] = "uniform"
    return adjusted


def _honest_majority(preset: str) -> list[Case]:
    cases = []
    for majority in (False, True):
        nodes, byzantine = (15, 10) if majority else (16, 11)
        setting = "honest majority" if majority else "no local honest majority"
        for rule_label, rule, rule_args in HM_RULES:
            for attack_label, attack, attack_args in HM_ATTACKS:
                config = RunConfig(**_mnist(
                    preset, 240, 900, topology="malicious_ring",
                    topology_args={"g": 5, "honest_majority": majority}, nodes=nodes,
                    byzantine=byzantine, partition="iid", rule=rule,
                    rule_args=scaled_rule_args(rule, rule_args, preset), attack=attack,
                    attack_args=reference_attack_args(attack, attack_args, rule), lr=0.01))
                key = f"hm{int(majority)}-{rule_label}-{attack_label}"
                cases.append(Case(key, config, {"rule": rule_label, "attack": attack_label,
                                                "setting": setting}))
    return cases


# ---------------------------------------------------------------------------- dumbbell
DUMBBELL_RULES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("gossip", "gossip", {}),
    ("ClippedGossip", "clipped_gossip", {"tau": 1.0}),
    ("TM", "trimmed_mean", {"b": 1}),
    ("RFA", "geometric_median", {"iterations": 8}),
    ("MOZI", "mozi", {"rho": 1.0, "alpha": 0.5}),
)
PARTITIONS = (("IID", "iid"), ("non-IID", "clique"))


def _dumbbell_config(preset: str, rule: str, rule_args: Mapping[str, Any], partition: str,
                     r: int = 0, steps_cpu: int = 900) -> RunConfig:
    return RunConfig(**_mnist(
        preset, steps_cpu, 900, cpu_eval_every=steps_cpu // 10, topology="dumbbell",
        topology_args={"q": 10, "qb": 0, "r": r}, nodes=20, byzantine=0, partition=partition,
        rule=rule, rule_args=dict(rule_args), attack="none", attack_args={}, lr=0.01))


def _dumbbell(preset: str) -> list[Case]:
    return [
        Case(f"{part_label}-{rule_label}", _dumbbell_config(preset, rule, args, partition),
             {"rule": rule_label, "setting": part_label})
        for part_label, partition in PARTITIONS
        for rule_label, rule, args in DUMBBELL_RULES
    ]


IMPROVEMENT_RULES = (DUMBBELL_RULES[2], DUMBBELL_RULES[1], DUMBBELL_RULES[0])
IMPROVEMENT_SETTINGS = (("base", False, 0), ("bucketing", True, 0), ("random edge", False, 1),
                        ("bucketing + edge", True, 1))


def _dumbbell_improvement(preset: str) -> list[Case]:
    cases = []
    for rule_label, rule, args in IMPROVEMENT_RULES:
        for setting, bucketing, r in IMPROVEMENT_SETTINGS:
            name, rule_args = rule, dict(args)
            if bucketing:  # bucketing s = 2 around the rule, in the reference's layout
                name, rule_args = "bucketing", {"s": 2, "inner": {"name": rule, **args},
                                                "layout": "reference"}
            config = _dumbbell_config(preset, name, rule_args, "clique", r=r, steps_cpu=450)
            cases.append(Case(f"{rule_label}-{setting.replace(' + ', '+').replace(' ', '_')}",
                              config, {"rule": rule_label, "setting": setting}))
    return cases


# ---------------------------------------------------------------------- dumbbell_cifar
#: CIFAR-10: 50,000 training images over 20 nodes at batch 64 is 40 steps per epoch.
CIFAR_EPOCH = 40
CIFAR_RULES = (DUMBBELL_RULES[0], ("ClippedGossip", "clipped_gossip", {"tau": 10.0}),
               *DUMBBELL_RULES[2:])


def _dumbbell_cifar(preset: str) -> list[Case]:
    _check_preset(preset)
    data: dict[str, Any]
    if preset == "full":
        steps, evaluate = CIFAR_EPOCH * 150, CIFAR_EPOCH
        data = {"dataset": "cifar10", "model": "vgg11_no_bn", "augment": "crop_flip"}
    else:  # crop+flip is an augmentation for CIFAR images (mirrored digits change meaning)
        steps, evaluate = 400, 40
        data = {"dataset": "mnist-5k", "model": "small_cnn", "augment": "none"}
    # lr x0.1 at epochs 80 and 120 of 150: the same fractions of the run in both presets
    milestones = (steps * 80 // 150, steps * 120 // 150)
    cases = []
    for part_label, partition in PARTITIONS:
        for rule_label, rule, args in CIFAR_RULES:
            config = RunConfig(
                topology="dumbbell", topology_args={"q": 10, "qb": 0, "r": 0}, nodes=20,
                byzantine=0, partition=partition, rule=rule,
                rule_args=dict(args),
                attack="none", attack_args={}, batch_size=64, momentum=0.9, local_steps=1,
                lr=0.1, lr_milestones=milestones, lr_gamma=0.1, rounds=steps,
                eval_every=evaluate,
                ledger=False, seed=0, **data)
            cases.append(Case(f"{part_label}-{rule_label}", config,
                              {"rule": rule_label, "setting": part_label}))
    return cases


# ------------------------------------------------------------------------ balance_grid
GRID_RULES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("gossip", "gossip", {}),
    ("median", "median", {}),
    ("TM", "trimmed_mean", {"b": 2}),
    ("Krum", "krum", {"f": 2}),
    # adaptive radius; the farthest neighbours carrying 0.3 of the mixing weight are
    # presumed Byzantine (the default presumes one neighbour, too few at 20 % Byzantine)
    ("ClippedGossip", "clipped_gossip", {"delta": 0.3}),
    # UBAR's rho: the fraction of neighbours presumed honest
    ("MOZI", "mozi", {"rho": 0.8, "alpha": 0.5}),
    ("BALANCE", "balance", {}),
)
GRID_ATTACKS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("none", "none", {}),
    ("Gaussian", "gaussian", {"sigma": 1.0}),
    ("LF", "label_flip", {}),
    ("ALIE", "alie", {}),
    ("IPM", "ipm", {"eps": 0.1}),
    ("Fang-trim", "fang_trim", {}),
    ("Fang-Krum", "fang_krum", {}),
    ("dissensus", "dissensus", {"eps": 1.5}),
    ("BALANCE-adaptive", "balance_adaptive", {}),
)


def _balance_grid(preset: str) -> list[Case]:
    _check_preset(preset)
    data: dict[str, Any]
    if preset == "full":
        data = {"dataset": "mnist", "model": "mnist_cnn", "rounds": 1000, "eval_every": 50}
    else:
        data = {"dataset": "mnist-5k", "model": "small_cnn", "rounds": 100, "eval_every": 25}
    cases = []
    for rule_label, rule, args in GRID_RULES:
        for attack_label, attack, attack_args in GRID_ATTACKS:
            config = RunConfig(
                topology="erdos_renyi", topology_args={"p": 0.5}, nodes=20, byzantine=4,
                partition="dirichlet", partition_args={"alpha": 0.5}, rule=rule,
                rule_args=args, attack=attack, attack_args=attack_args, batch_size=32,
                momentum=0.9, local_steps=1, lr=0.05, ledger=False, seed=0, **data)
            cases.append(Case(f"{rule_label}-{attack_label}", config,
                              {"rule": rule_label, "attack": attack_label}))
    return cases


# ---------------------------------------------------------------------------- registry
EXPERIMENTS: dict[str, Experiment] = {}


def _register(experiment: Experiment) -> None:
    EXPERIMENTS[experiment.name] = experiment


_register(Experiment(
    "consensus", "Scalar average consensus under dissensus (ClippedGossip notebook)",
    cases=lambda preset: [], metric="error", metric_label="squared error to the honest average",
    colour_by="rule", panel_by="setting", training=False,
))
_register(Experiment(
    "optimization_delta", "ClippedGossip under a growing Byzantine weight delta_max",
    cases=_optimization_delta, metric="accuracy_avg_model",
    metric_label="global accuracy (average of honest models)", colour_by="delta_max",
    panel_by="attack",
    published=tuple(({"attack": "dissensus1.5", "delta_max": d}, v) for d, v in
                    ((0.0, 88.71), (0.0625, 77.60), (0.125, 45.49), (0.1875, 20.42),
                     (0.25, 19.36))),
))
_register(Experiment(
    "honest_majority", "Rules with and without a local honest majority (malicious ring)",
    cases=_honest_majority, metric="accuracy_avg_model",
    metric_label="global accuracy (average of honest models)", colour_by="rule",
    panel_by="setting", style_by="attack",
))
_register(Experiment(
    "dumbbell", "Two 10-cliques joined by one edge, no attacker",
    cases=_dumbbell, metric="accuracy_avg_model_clique_1",
    metric_label="clique-1 accuracy (average model)", colour_by="rule", panel_by="setting",
    published=(
        *(({"setting": "non-IID", "rule": r}, v) for r, v in
          (("gossip", 69.0), ("ClippedGossip", 71.4), ("TM", 50.7), ("RFA", 50.7),
           ("MOZI", 50.7))),
    ),
))
_register(Experiment(
    "dumbbell_improvement", "Dumbbell non-IID with bucketing and/or one random edge",
    cases=_dumbbell_improvement, metric="accuracy_avg_model_clique_1",
    metric_label="clique-1 accuracy (average model)", colour_by="setting", panel_by="rule",
    published=tuple(
        ({"rule": rule, "setting": setting}, value)
        for rule, values in (("TM", (50.7, 63.8, 50.8, 73.5)),
                             ("ClippedGossip", (70.7, 71.3, 76.6, 78.5)),
                             ("gossip", (70.2, 71.9, 77.4, 76.5)))
        for (setting, _, _), value in zip(IMPROVEMENT_SETTINGS, values, strict=True)
    ),
))
_register(Experiment(
    "dumbbell_cifar", "Dumbbell with CIFAR-10 and VGG-11 (cpu preset: MNIST-5k)",
    cases=_dumbbell_cifar, metric="accuracy_avg_model_clique_1",
    metric_label="clique-1 accuracy (average model)", colour_by="rule", panel_by="setting",
))
_register(Experiment(
    "balance_grid", "BALANCE grid: rules x attacks on Erdős-Rényi, 20 % Byzantine, label skew",
    cases=_balance_grid, metric="accuracy_min",
    metric_label="worst honest node accuracy", colour_by="rule", panel_by="attack",
))


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; ``ValueError`` lists the valid names."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]
