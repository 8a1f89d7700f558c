"""``reproduce --dry-run`` estimates a preset's wall time from the engine benchmark's
per-iteration figures."""

from __future__ import annotations

import pytest

from flwr_tempered.experiments.reproduce.estimate import (
    FIGURES_FILE,
    describe_estimate,
    duration,
    estimate_seconds,
    load_figures,
    step_costs,
)
from flwr_tempered.experiments.reproduce.runner import describe_plan
from flwr_tempered.node import RunConfig

FIGURES = {"machine": "test machine", "rounds": 6, "settings": {
    "seed": {"model": "mnist_cnn", "nodes": 20,
             "seconds_per_iteration": {"batched": {"cpu": 2.0, "cuda": 0.02},
                                       "nodes": {"cpu": 3.0}}},
    "rr1000": {"model": "mnist_cnn", "nodes": 1000,
               "seconds_per_iteration": {"batched": {"cuda": 0.4}}},
    "er100": {"model": "small_cnn", "nodes": 100,
              "seconds_per_iteration": {"batched": {"cpu": 1.0}}},
}}


def test_step_costs_are_per_node_and_step_averaged_over_settings() -> None:
    assert step_costs(FIGURES, "cpu") == {"mnist_cnn": pytest.approx(0.1),
                                          "small_cnn": pytest.approx(0.01)}
    assert step_costs(FIGURES, "cuda") == {"mnist_cnn": pytest.approx((0.001 + 0.0004) / 2)}


def test_a_run_costs_rounds_times_steps_times_nodes_scaled_by_the_batch() -> None:
    config = RunConfig(model="small_cnn", nodes=16, rounds=10, local_steps=5, batch_size=64,
                       ledger=False)
    assert estimate_seconds(config, {"small_cnn": 0.01}) == pytest.approx(10 * 5 * 16 * 0.02)
    assert estimate_seconds(config, {"mnist_cnn": 0.1}) is None


def test_the_estimate_line_names_the_device_or_the_missing_figure() -> None:
    config = RunConfig(model="small_cnn", nodes=16, rounds=100, local_steps=1, ledger=False)
    line = describe_estimate([config, config], FIGURES, "cpu")
    assert "about 32 s" in line and "test machine" in line and "on cpu" in line
    missing = describe_estimate([config], FIGURES, "cuda")
    assert "no cuda figure for small_cnn" in missing


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (42, 600, 9000)] == ["42 s", "10 min", "2.5 h"]


def test_the_dry_run_ends_with_an_estimate_from_the_shipped_figures(tmp_path: object) -> None:
    assert load_figures(FIGURES_FILE)["settings"], "the package ships the benchmark's figures"
    lines = describe_plan("dumbbell", "full", str(tmp_path))
    assert lines[-1].startswith("estimated wall time"), lines[-1]
