"""One folder per run: the resolved config, per-round metrics as JSON lines, and plots.

The plotting code reads only these files, so a finished run can be re-plotted (or
compared with others) without re-running anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TIMINGS_FILE = "timings.json"
PLOT_FILE = "accuracy.png"


class RunResults:
    """Writer of a run's results folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / METRICS_FILE).write_text("")

    def write_config(self, config: dict[str, Any]) -> None:
        """The resolved run config, as JSON."""
        (self.folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))

    def append_metrics(self, line: dict[str, Any]) -> None:
        """One evaluated round (NaN becomes null so the file stays valid JSON)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in line.items()}
        with (self.folder / METRICS_FILE).open("a") as stream:
            stream.write(json.dumps(clean, sort_keys=True) + "\n")

    def write_timings(self, timings: list[dict[str, float]]) -> None:
        """Wall-clock times per round (kept apart from the metrics so that the metrics of
        two runs with the same seed are identical)."""
        (self.folder / TIMINGS_FILE).write_text(json.dumps(timings, indent=1))


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The metrics lines of a results folder, in order."""
    lines = (Path(folder) / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_run(folder: str | Path, path: str | Path | None = None) -> Path:
    """Accuracy (honest mean, worst, average model, groups) and consensus distance over
    rounds, from ``metrics.jsonl`` only; returns the PNG's path."""
    from matplotlib.figure import Figure

    metrics = read_metrics(folder)
    rounds = [m["round"] for m in metrics]
    figure = Figure(figsize=(10, 4))
    accuracy_axes, consensus_axes = figure.subplots(1, 2)
    series = ["accuracy_mean", "accuracy_min", "accuracy_avg_model"]
    series += sorted({k for m in metrics for k in m
                      if k.startswith(("accuracy_mean_", "accuracy_avg_model_"))})
    for key in series:
        points = [(r, m[key]) for r, m in zip(rounds, metrics, strict=True)
                  if m.get(key) is not None]
        if points:
            accuracy_axes.plot(*zip(*points, strict=True), marker="o", label=key)
    accuracy_axes.set_xlabel("round")
    accuracy_axes.set_ylabel("test accuracy (honest nodes)")
    accuracy_axes.set_ylim(0, 1)
    accuracy_axes.legend(fontsize=7)
    points = [(r, m["consensus_distance"]) for r, m in zip(rounds, metrics, strict=True)
              if m.get("consensus_distance") is not None]
    if points:
        consensus_axes.plot(*zip(*points, strict=True), marker="o", color="tab:red")
        if all(v > 0 for _, v in points):
            consensus_axes.set_yscale("log")
    consensus_axes.set_xlabel("round")
    consensus_axes.set_ylabel("consensus distance")
    config_path = Path(folder) / CONFIG_FILE
    if config_path.exists():
        config = json.loads(config_path.read_text())
        figure.suptitle(f"{config.get('topology')} · rule {config.get('rule')} · "
                        f"attack {config.get('attack')} · {config.get('byzantine')} Byzantine")
    figure.tight_layout()
    target = Path(path) if path is not None else Path(folder) / PLOT_FILE
    figure.savefig(target, dpi=100)
    return target


COMPARISON_FILE = "comparison.png"


def plot_comparison(folders: Mapping[str, str | Path], path: str | Path) -> Path:
    """The honest nodes' mean (solid) and worst (dashed) test accuracy of several runs on
    one axis, labelled by the mapping's keys, from their ``metrics.jsonl`` only; returns
    the PNG's path. This is the picture that says whether a rule held: the runs should
    differ only in what the labels name."""
    from matplotlib.figure import Figure

    if not folders:
        raise ValueError("plot_comparison needs at least one results folder")
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    title = ""
    for index, (label, folder) in enumerate(folders.items()):
        colour = f"C{index}"
        metrics = [m for m in read_metrics(folder) if m.get("accuracy_mean") is not None]
        if not metrics:
            raise ValueError(f"no evaluated round in {Path(folder) / METRICS_FILE}")
        rounds = [m["round"] for m in metrics]
        axes.plot(rounds, [100 * m["accuracy_mean"] for m in metrics], color=colour,
                  marker="o", markersize=3, label=f"{label}, mean")
        axes.plot(rounds, [100 * m["accuracy_min"] for m in metrics], color=colour,
                  linestyle="--", label=f"{label}, worst")
        config_path = Path(folder) / CONFIG_FILE
        if not title and config_path.exists():
            config = json.loads(config_path.read_text())
            title = (f"{config.get('nodes')} nodes on {config.get('topology')}, "
                     f"{config.get('byzantine')} Byzantine ({config.get('attack')})")
    axes.set_xlabel("round")
    axes.set_ylabel("test accuracy of the honest nodes (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=100)
    return target
