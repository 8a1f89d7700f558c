"""What an attack costs in simulation: the server_assisted app, clean and attacked.

Runs simulations/server_assisted (its ServerApp and ClientApp, unchanged) in one process
with ``run_locally`` (10 SuperNodes, 20 % attackers) and prints per attack the wall time,
the process CPU time and how many times the app's honest training ran, of ``--repeats``
interleaved runs the one of least CPU time. The training count is the number to watch: an
omniscient colluding attack needs every honest model of the round, and
``malicious_clientapp`` should get them without training any partition twice (10
trainings per round, as in the clean run). CPU time is less sensitive than wall time to
other load on the machine; an untimed one-round clean run comes first, so that loading the
data counts for no run. Run from the repository root::

    python benchmarks/attacked_clients.py                     # none, alie; 3 rounds
    python benchmarks/attacked_clients.py --attacks none,alie,min_max --rounds 2
    python benchmarks/attacked_clients.py --fraction-train 0.5   # Flower's template sampling
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

APP = Path(__file__).resolve().parents[1] / "simulations" / "server_assisted"
sys.path.insert(0, str(APP))

import server_assisted.client_app as client_module  # noqa: E402
from server_assisted.server_app import app as server_app  # noqa: E402

from flwr_tempered.runtime.local_grid import run_locally  # noqa: E402

NUM_NODES = 10


def measure(attack: str, strategy: str, rounds: int, model: str, out: Path,
            fraction_train: float = 1.0) -> dict[str, Any]:
    """One in-process run: wall and CPU seconds, honest trainings, final accuracy."""
    trainings = 0
    honest_train = client_module.train

    def counted(*args: Any, **kwargs: Any) -> float:
        nonlocal trainings
        trainings += 1
        return honest_train(*args, **kwargs)

    with open(APP / "pyproject.toml", "rb") as file:
        config = dict(tomllib.load(file)["tool"]["flwr"]["app"]["config"])
    results = out / f"{strategy}-{attack}.json"
    config.update({"strategy": strategy, "attack": attack, "num-server-rounds": rounds,
                   "model": model, "results": str(results),
                   "fraction-train": fraction_train})
    client_module.train = counted
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        run_locally(server_app, client_module.app, NUM_NODES, config)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        client_module.train = honest_train
    accuracy = json.loads(results.read_text())["accuracy"]
    return {"attack": attack, "wall_s": wall, "cpu_s": cpu, "trainings": trainings,
            "accuracy": float(accuracy[str(max(int(r) for r in accuracy))])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default="none,alie")
    parser.add_argument("--strategy", default="median")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--fraction-train", type=float, default=1.0,
                        help="FedAvg's fraction of the SuperNodes sampled per round (the "
                             "omniscient view still trains every honest partition)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per attack; the table shows the one of least CPU time")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); one thread keeps idle "
                             "spinning threads of a loaded machine out of the CPU time")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    attacks = args.attacks.split(",")
    samples: dict[str, list[dict[str, Any]]] = {attack: [] for attack in attacks}
    with tempfile.TemporaryDirectory() as out:
        # The first run in a process pays for loading the data and warming torch up.
        measure("none", args.strategy, 1, args.model, Path(out), args.fraction_train)
        for _ in range(args.repeats):  # interleaved, so a burst of load hits every attack
            for attack in attacks:
                samples[attack].append(measure(attack, args.strategy, args.rounds,
                                               args.model, Path(out), args.fraction_train))
                print(samples[attack][-1], file=sys.stderr, flush=True)
    rows = [min(samples[attack], key=lambda row: row["cpu_s"]) for attack in attacks]
    clean = next((row for row in rows if row["attack"] == "none"), None)
    print("| attack | wall (s) | CPU (s) | CPU / clean | trainings | accuracy (%) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['cpu_s'] / clean['cpu_s']:.2f}" if clean else ""
        print(f"| {row['attack']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {ratio} | "
              f"{row['trainings']} | {100 * row['accuracy']:.1f} |")


if __name__ == "__main__":
    main()
