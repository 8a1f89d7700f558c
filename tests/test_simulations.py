"""The Flower apps under simulations/: one per experiment, in sync with the catalog, and
runnable with ``flwr run`` (with ``--run-config`` overrides)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flwr_tempered.experiments.reproduce.runner import experiment_cases
from flwr_tempered.node import RunConfig
from flwr_tempered.results import read_metrics

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "simulations"))

import sync  # noqa: E402  (simulations/sync.py)


@pytest.mark.parametrize("experiment", sorted(sync.HEADLINE))
def test_each_app_runs_its_experiments_headline_case(experiment: str) -> None:
    path = REPO / "simulations" / experiment / "pyproject.toml"
    assert path.read_text() == sync.app_text(experiment), (
        f"{path} is out of date: run `python simulations/sync.py`")
    app = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]
    assert app["components"]["serverapp"] == "flwr_tempered.runtime.apps:server_app"
    values = {k: v for k, v in app["config"].items() if k != "out"}
    case = next(c for c in experiment_cases(experiment, "cpu")
                if c.key == sync.HEADLINE[experiment])
    assert RunConfig.from_mapping(values) == case.config


@pytest.mark.slow
def test_flwr_run_of_an_app_with_run_config_overrides(tmp_path: Path, flwr_home: Path
                                                      ) -> None:
    """``flwr run simulations/optimization_delta`` on a fresh Flower home, two steps, with
    the rule overridden: the relay writes the results folder of that run."""
    out = tmp_path / "run"
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    overrides = f"rounds=2 eval-every=1 rule='trimmed_mean' rule-args='{{\"b\": 1}}' out='{out}'"
    result = subprocess.run(
        ["flwr", "run", str(REPO / "simulations" / "optimization_delta"), "--stream",
         "--federation-config", "num-supernodes=12", "--run-config", overrides],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["rule"], config["rule_args"], config["rounds"]) == (
        "trimmed_mean", {"b": 1}, 2)
    assert config["topology"] == "two_cliques_with_byzantine"
    metrics = read_metrics(out)
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert all(m["dropped_nodes"] == 0 for m in metrics)
