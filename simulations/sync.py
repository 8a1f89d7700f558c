"""Write ``simulations/<experiment>/pyproject.toml``: one Flower app per experiment of
``flwr-tempered reproduce``, whose run config is that experiment's headline run under the
cpu preset. Run it after changing the catalog (``python simulations/sync.py``);
``tests/test_simulations.py`` fails while an app is out of date.

Any other run of the experiment is a ``--run-config`` override away, e.g.
``flwr run simulations/dumbbell --run-config "rule='trimmed_mean' rule-args='{\\"b\\": 1}'"``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flwr_tempered.experiments.reproduce.runner import experiment_cases
from flwr_tempered.node import topology_of

HERE = Path(__file__).resolve().parent

#: The run each app starts with: the one the paper's headline is about.
HEADLINE = {
    "optimization_delta": "delta0.25-dissensus1.5",
    "honest_majority": "hm0-ClippedGossip-ALIE10",
    "dumbbell": "non-IID-ClippedGossip",
    "dumbbell_improvement": "TM-bucketing+edge",
    "dumbbell_cifar": "non-IID-ClippedGossip",
    "balance_grid": "BALANCE-ALIE",
}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    return f"'{text}'" if '"' in text and "'" not in text else json.dumps(text)


def app_text(experiment: str) -> str:
    """The pyproject.toml of ``experiment``'s app."""
    case = next(c for c in experiment_cases(experiment, "cpu") if c.key == HEADLINE[experiment])
    nodes = topology_of(case.config).n
    config = {**case.config.to_flower(), "out": ""}
    lines = [
        f"# Flower app of `flwr-tempered reproduce {experiment}` (written by simulations/sync.py).",
        f"# Run: FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run simulations/{experiment} "
        f"--stream --federation-config \"num-supernodes={nodes}\"",
        "# The topology needs exactly that many SuperNodes (more are left idle).",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f'name = "{experiment.replace("_", "-")}"',
        'version = "0.1.0"',
        f'description = "{case.key} of the {experiment} reproduction (cpu preset)"',
        'dependencies = ["flwr[simulation]==1.41.*", "flwr-tempered"]',
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["."]',
        "",
        "[tool.flwr.app]",
        'publisher = "flwr-tempered"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "flwr_tempered.runtime.apps:server_app"',
        'clientapp = "flwr_tempered.runtime.apps:client_app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in config.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    for experiment in HEADLINE:
        folder = HERE / experiment
        folder.mkdir(exist_ok=True)
        (folder / "pyproject.toml").write_text(app_text(experiment))
        print(f"wrote {folder / 'pyproject.toml'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
