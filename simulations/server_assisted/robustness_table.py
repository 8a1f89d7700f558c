"""Final global accuracy of every strategy under every attack, as a Markdown table.

Runs the server_assisted app (its ServerApp and ClientApp, unchanged) in one process with
``flwr_tempered.runtime.local_grid.run_locally`` (no Ray), 10 SuperNodes, 20 % attackers.
Run from the repository root::

    python simulations/server_assisted/robustness_table.py             # everything
    python simulations/server_assisted/robustness_table.py --rounds 5 \\
        --strategies fedavg,median --attacks none,alie

A cell is the global model's test accuracy (%) after the last round; the last column of
each row is the largest drop from the "none" column among the attacks, i.e. whether the
strategy stays within 5 points.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parent
sys.path.insert(0, str(APP))

from server_assisted.client_app import app as client_app  # noqa: E402
from server_assisted.server_app import app as server_app  # noqa: E402

from flwr_tempered.runtime.local_grid import run_locally  # noqa: E402

STRATEGIES = ("fedavg", "median", "trimmed_mean", "geometric_median", "multi_krum",
              "bulyan", "centered_clipping", "nnm", "fltrust", "mda", "smea", "monna",
              "meamed", "caf", "arc", "static_clipping",
              # Flower's FedAdam (its defaults: eta 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3)
              # and robust(FedAdam(), rule="median"): the server-optimizer path.
              "fedadam", "fedadam+median")
ATTACKS = ("none", "label_flip", "backdoor", "gaussian", "sign_flip", "alie", "ipm",
           "fang_trim", "fang_krum", "min_max", "min_sum", "mimic", "optimal_alie",
           "optimal_ipm", "inf")
#: ByzFL's attacks, added after the suite's matrix was sized; the suite runs them against
#: a few strategies and the end-to-end step against every one.
BYZFL_ATTACKS = ("mimic", "optimal_alie", "optimal_ipm", "inf")
NUM_NODES = 10
#: Strategy settings for 10 clients with 2 attackers.
STRATEGY_ARGS: dict[str, dict[str, Any]] = {
    "multi_krum": {"num_malicious_nodes": 2, "num_nodes_to_select": 4},
    "bulyan": {"num_malicious_nodes": 1},
    "nnm": {"num_malicious_nodes": 2},
    "centered_clipping": {"tau": 1.0, "iterations": 3},
    # Rules without a named strategy: RobustFedAvg with the rule's own arguments.
    "mda": {"rule_args": {"f": 2}},
    "smea": {"rule_args": {"f": 2}},
    "monna": {"rule_args": {"f": 2}},
    "meamed": {"rule_args": {"f": 2}},
    "caf": {"rule_args": {"f": 2}},
    "arc": {"rule_args": {"f": 2, "inner": {"name": "trimmed_mean", "b": 2}}},
    "static_clipping": {"rule_args": {"c": 1.0, "inner": "median"}},
}


def default_run_config() -> dict[str, Any]:
    """The app's run config from its pyproject.toml."""
    with open(APP / "pyproject.toml", "rb") as file:
        return dict(tomllib.load(file)["tool"]["flwr"]["app"]["config"])


def final_accuracy(strategy: str, attack: str, rounds: int, out: Path,
                   extra: dict[str, Any] | None = None) -> float:
    """Run the app once in-process; the global model's final test accuracy in [0, 1]."""
    results = out / f"{strategy}-{attack}.json"
    config = {**default_run_config(), "strategy": strategy, "attack": attack,
              "num-server-rounds": rounds, "results": str(results),
              "strategy-args": json.dumps(STRATEGY_ARGS.get(strategy, {})), **(extra or {})}
    run_locally(server_app, client_app, NUM_NODES, config)
    accuracy = json.loads(results.read_text())["accuracy"]
    return float(accuracy[str(max(int(r) for r in accuracy))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--model", default="small_cnn",
                        help="small_cnn or logistic_regression")
    parser.add_argument("--attack-args", default="{}",
                        help='JSON per attack, e.g. \'{"alie": {"z": 10}}\'')
    parser.add_argument("--out", default="results/server_assisted")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    strategies, attacks = args.strategies.split(","), args.attacks.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for strategy in strategies:
        cells = {}
        for attack in attacks:
            start = time.perf_counter()
            extra = {"model": args.model, "attack-args": json.dumps(
                json.loads(args.attack_args).get(attack, {}))}
            cells[attack] = 100 * final_accuracy(strategy, attack, args.rounds, out, extra)
            print(f"  {strategy:18s} {attack:12s} {cells[attack]:5.1f} %  "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        rows.append((strategy, cells))
    print(f"| strategy | {' | '.join(attacks)} | worst drop |")
    print(f"|---|{'---|' * len(attacks)}---|")
    for strategy, cells in rows:
        drops = [cells["none"] - cells[a] for a in attacks if a != "none"] if (
            "none" in cells) else []
        worst = f"{max(drops):.1f}" if drops else ""
        print(f"| {strategy} | {' | '.join(f'{cells[a]:.1f}' for a in attacks)} | {worst} |")


if __name__ == "__main__":
    main()
