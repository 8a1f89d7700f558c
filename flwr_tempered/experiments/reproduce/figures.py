"""Figures and tables of the reproductions, drawn from the results files only.

Each experiment gets the panels of the paper's figure: accuracy of a group of honest
nodes over iterations, coloured by rule (or delta_max, or setting), one panel per
setting or attack; optimization_delta adds the final accuracy against delta_max;
consensus plots the error over rounds per chain; balance_grid is a heat map of the
worst honest node's test error (rule x attack).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .catalog import Case, get_experiment
from .consensus import ConsensusSetting
from .runner import DEFAULT_ROOT, DONE_FILE, experiment_folder, load_results

LINE_STYLES = ("-", "--", ":", "-.")
Results = list[tuple[Case, list[dict[str, Any]]]]


def _label_text(value: Any) -> str:
    if isinstance(value, ConsensusSetting):
        return f"beta {value.beta:.3f}, delta_max {value.delta_max:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _ordered(values: Sequence[Any]) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def final_value(metrics: list[dict[str, Any]], key: str) -> float | None:
    """The metric at the last evaluated round (``None`` when it was never measured)."""
    for line in reversed(metrics):
        if line.get(key) is not None:
            return float(line[key])
    return None


def _curve(metrics: list[dict[str, Any]], key: str, scale: float) -> tuple[list[int], list[float]]:
    points = [(m["round"], m[key] * scale) for m in metrics if m.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _colours(values: Sequence[Any]) -> dict[Any, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {v: palette(i % 10) for i, v in enumerate(values)}


def _curves_figure(experiment: str, results: Results, title: str) -> Figure:
    """One panel per ``panel_by`` value; lines coloured by ``colour_by`` and styled by
    ``style_by``; y = the experiment's metric in %."""
    spec = get_experiment(experiment)
    panels = _ordered([c.labels.get(spec.panel_by) for c, _ in results]) if spec.panel_by \
        else [None]
    colours = _colours(_ordered([c.labels[spec.colour_by] for c, _ in results]))
    styles = {v: LINE_STYLES[i % len(LINE_STYLES)] for i, v in enumerate(
        _ordered([c.labels[spec.style_by] for c, _ in results]))} if spec.style_by else {}
    extra = 1 if experiment == "optimization_delta" else 0
    columns = min(3, len(panels) + extra)
    rows = -(-(len(panels) + extra) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for case, metrics in results:
            if spec.panel_by and case.labels.get(spec.panel_by) != panel:
                continue
            xs, ys = _curve(metrics, spec.metric, 100.0)
            label = _label_text(case.labels[spec.colour_by])
            if spec.style_by:
                label += f" · {case.labels[spec.style_by]}"
            ax.plot(xs, ys, color=colours[case.labels[spec.colour_by]],
                    linestyle=styles.get(case.labels.get(spec.style_by or ""), "-"), label=label,
                    linewidth=1.4)
        ax.set_title(_label_text(panel) if panel is not None else spec.title, fontsize=10)
        ax.set_xlabel("iterations")
        ax.set_ylabel(f"{spec.metric_label} (%)", fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    if extra:
        _delta_panel(axes[len(panels)], results)
    for ax in axes[len(panels) + extra:]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def _delta_panel(ax: Axes, results: Results) -> None:
    """optimization_delta's second panel: final accuracy against delta_max per attack."""
    spec = get_experiment("optimization_delta")
    attacks = _ordered([c.labels["attack"] for c, _ in results])
    colours = _colours(attacks)
    for attack in attacks:
        points = sorted((c.labels["delta_max"], final_value(m, spec.metric))
                        for c, m in results if c.labels["attack"] == attack)
        points = [(d, v * 100) for d, v in points if v is not None]
        if points:
            bold = attack.startswith("dissensus")
            ax.plot(*zip(*points, strict=True), marker="o", color=colours[attack], label=attack,
                    linewidth=2.4 if bold else 1.0)
    ax.set_xlabel("delta_max")
    ax.set_ylabel("final global accuracy (%)", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_title("final accuracy vs delta_max", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)


def _consensus_figure(results: Results, title: str) -> Figure:
    settings = _ordered([c.labels["setting"] for c, _ in results])
    weights = _ordered([s.honest_weight for s in settings])
    deltas = _ordered([s.delta_max for s in settings])
    rules = _ordered([c.labels["rule"] for c, _ in results])
    colours = _colours(rules)
    figure = Figure(figsize=(4.0 * len(deltas), 3.2 * len(weights)))
    axes = figure.subplots(len(weights), len(deltas), squeeze=False)
    for case, metrics in results:
        setting: ConsensusSetting = case.labels["setting"]
        ax = axes[weights.index(setting.honest_weight)][deltas.index(setting.delta_max)]
        xs, ys = _curve(metrics, "error", 1.0)
        ax.plot(xs, [max(y, 1e-16) for y in ys], color=colours[case.labels["rule"]],
                label=case.labels["rule"])
        ax.set_yscale("log")
        ax.set_title(f"beta {setting.beta:.3f}, delta_max {setting.delta_max:g}", fontsize=9)
        ax.set_xlabel("rounds")
        ax.set_ylabel("error", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def grid_matrix(results: Results, key: str = "accuracy_min") -> tuple[list[str], list[str],
                                                                      list[list[float | None]]]:
    """balance_grid: rules, attacks, and the test error (%) of ``key`` per (rule, attack)."""
    rules = _ordered([c.labels["rule"] for c, _ in results])
    attacks = _ordered([c.labels["attack"] for c, _ in results])
    values: list[list[float | None]] = [[None] * len(attacks) for _ in rules]
    for case, metrics in results:
        accuracy = final_value(metrics, key)
        if accuracy is not None:
            values[rules.index(case.labels["rule"])][attacks.index(case.labels["attack"])] = \
                100.0 * (1.0 - accuracy)
    return rules, attacks, values


def _grid_figure(results: Results, title: str) -> Figure:
    rules, attacks, values = grid_matrix(results)
    figure = Figure(figsize=(1.0 * len(attacks) + 2.5, 0.5 * len(rules) + 1.8))
    ax = figure.subplots()
    shown = [[v if v is not None else float("nan") for v in row] for row in values]
    image = ax.imshow(shown, cmap="RdYlGn_r", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rules)), rules, fontsize=8)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value is not None:
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=ax, label="worst honest node test error (%)")
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_experiment(experiment: str, preset: str = "cpu", root: str | Path = DEFAULT_ROOT,
                    path: str | Path | None = None) -> Path:
    """Draw ``experiment``'s figure from its results files; return the PNG's path
    (default ``<root>/<experiment>/<preset>/<experiment>.png``). ``ValueError`` when no
    run has finished yet."""
    results = load_results(experiment, preset, root)
    if not results:
        raise ValueError(
            f"no finished run of {experiment} ({preset}) under "
            f"{experiment_folder(root, experiment, preset)}; run `flwr-tempered reproduce "
            f"{experiment}` first")
    spec = get_experiment(experiment)
    total = len(get_experiment(experiment).cases(preset)) if spec.training else None
    done = f"{len(results)}" + (f" of {total}" if total else "") + " runs"
    title = f"{spec.title} — {preset} preset, {done}"
    if experiment == "consensus":
        figure = _consensus_figure(results, title)
    elif experiment == "balance_grid":
        figure = _grid_figure(results, title)
    else:
        figure = _curves_figure(experiment, results, title)
    target = Path(path) if path is not None else (
        experiment_folder(root, experiment, preset) / f"{experiment}.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=80)
    return target


def summary_rows(experiment: str, preset: str = "cpu", root: str | Path = DEFAULT_ROOT
                 ) -> list[dict[str, Any]]:
    """One row per finished case: its labels, the final value of the experiment's metric
    (in % for accuracies), mean and worst honest accuracy, and its wall time."""
    spec = get_experiment(experiment)
    base = experiment_folder(root, experiment, preset)
    rows = []
    for case, metrics in load_results(experiment, preset, root):
        seconds = json.loads((base / case.key / DONE_FILE).read_text()).get("seconds")
        value = final_value(metrics, spec.metric)
        row: dict[str, Any] = {"case": case.key}
        row.update({k: _label_text(v) for k, v in case.labels.items()
                    if not isinstance(v, ConsensusSetting)})
        if spec.training:
            row[spec.metric] = None if value is None else round(100 * value, 2)
            for key in ("accuracy_mean", "accuracy_min"):
                final = final_value(metrics, key)
                row[key] = None if final is None else round(100 * final, 2)
            row["iterations"] = metrics[-1]["round"] if metrics else 0
        else:
            row["final_error"] = value
        row["seconds"] = round(float(seconds), 1) if seconds is not None else None
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table."""
    if not rows:
        return "(no finished runs)"
    keys = _ordered([k for row in rows for k in row])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key)
            cells.append("-" if value is None else (f"{value:.3g}" if isinstance(value, float)
                                                    and abs(value) < 1e-2 else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_table(experiment_root: str | Path = DEFAULT_ROOT, preset: str = "cpu",
               key: str = "accuracy_min") -> str:
    """balance_grid's heat-map table (worst honest test error in %, rule x attack) as
    Markdown."""
    rules, attacks, values = grid_matrix(load_results("balance_grid", preset, experiment_root),
                                         key)
    lines = ["| rule | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for rule, row in zip(rules, values, strict=True):
        cells = ["-" if v is None else f"{v:.1f}" for v in row]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
