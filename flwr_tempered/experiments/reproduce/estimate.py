"""How long a preset will take with the batched engine on this machine's device, from the
per-iteration figures ``benchmarks/engine.py --save`` measured.

The figures (``engine_figures.json`` beside this module, written by the benchmark) give
the batched engine's seconds per iteration for a few settings (one local step per
iteration). Per model and device kind they become a cost per node and local step; a run
is then estimated as ``rounds x local_steps x nodes x cost`` (scaled by the batch size
against the benchmark's 32). Evaluation rounds and start-up are not counted, so the
estimate is a floor, meant to tell minutes from hours before paying for a preset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from flwr_tempered.node import RunConfig, topology_of

#: The benchmark's output the estimates read.
FIGURES_FILE = Path(__file__).with_name("engine_figures.json")
#: The batch size of the benchmark's settings.
BENCHMARK_BATCH = 32


def load_figures(path: Path = FIGURES_FILE) -> dict[str, Any]:
    """The saved benchmark figures (empty when the file is missing)."""
    return json.loads(path.read_text()) if path.exists() else {}


def device_kind() -> str:
    """``cuda`` when a GPU is visible (the batched engine's default device), else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def step_costs(figures: Mapping[str, Any], kind: str) -> dict[str, float]:
    """Seconds per node and local step of the batched engine, per model, on ``kind``."""
    samples: dict[str, list[float]] = {}
    for setting in figures.get("settings", {}).values():
        seconds = setting.get("seconds_per_iteration", {}).get("batched", {}).get(kind)
        if seconds is not None and setting.get("nodes"):
            samples.setdefault(setting["model"], []).append(seconds / setting["nodes"])
    return {model: sum(values) / len(values) for model, values in samples.items()}


def estimate_seconds(config: RunConfig, costs: Mapping[str, float]) -> float | None:
    """The estimated training time of ``config`` (``None`` without a figure for its
    model)."""
    cost = costs.get(config.model)
    if cost is None:
        return None
    nodes = topology_of(config).n
    return config.rounds * config.local_steps * nodes * cost * config.batch_size \
        / BENCHMARK_BATCH


def duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_estimate(configs: Iterable[RunConfig], figures: Mapping[str, Any] | None = None,
                      kind: str | None = None) -> str:
    """One line: the estimated wall time of ``configs`` with the batched engine on this
    device, or which figure is missing."""
    figures = load_figures() if figures is None else figures
    kind = device_kind() if kind is None else kind
    costs = step_costs(figures, kind)
    total = 0.0
    missing = set()
    for config in configs:
        seconds = estimate_seconds(config, costs)
        if seconds is None:
            missing.add(config.model)
        else:
            total += seconds
    if missing:
        return (f"estimated wall time: no {kind} figure for {', '.join(sorted(missing))} "
                f"(run `python benchmarks/engine.py --model MODEL --save "
                f"{FIGURES_FILE.name}` on this machine and merge it into {FIGURES_FILE})")
    machine = figures.get("machine", "the benchmark machine")
    return (f"estimated wall time with the batched engine on {kind}: about {duration(total)} "
            f"(training steps only, from benchmarks/engine.py figures measured on {machine})")
