"""Reproductions of the seed papers' experiments (ClippedGossip's menu, a BALANCE grid)."""

from .catalog import EXPERIMENTS, PRESETS, Case, Experiment, get_experiment
from .figures import plot_experiment, summary_rows
from .runner import load_results, run_experiment

__all__ = ["EXPERIMENTS", "PRESETS", "Case", "Experiment", "get_experiment", "load_results",
           "plot_experiment", "run_experiment", "summary_rows"]
