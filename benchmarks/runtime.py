"""Per-round wall time of decentralized runs through Flower's simulation engine.

Prints a Markdown table: for each scenario, the median wall time of a training round
(evaluation rounds excluded), split into what the nodes spent (local training,
aggregation, fetching and publishing models, summed over nodes) and the relay overhead
(wall time not explained by node work spread over the Ray workers), and that overhead per
message. Scenarios:

* ``default``: the embedded default run (16 nodes, Erdős–Rényi, 3 ALIE nodes, BALANCE,
  small CNN, 5 local steps);
* ``ring64``: a 64-node ring, gossip, no attack, small CNN, one local step;
* ``dumbbell``: the ClippedGossip paper's heaviest CPU setting: dumbbell(10,0,0), 20 nodes,
  the MNIST CNN of reproduction.md §5 (1.2M parameters), batch 32, one local step and one
  exchange per round, ClippedGossip tau = 1.

Run ``python benchmarks/runtime.py [--rounds 6] [--only dumbbell]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe_machine

from flwr_tempered.experiments.simulate import simulate
from flwr_tempered.node import RunConfig


def scenarios(rounds: int) -> dict[str, RunConfig]:
    """The benchmarked runs; only evaluated at the first and the last round."""
    common: dict[str, Any] = {"rounds": rounds, "eval_every": rounds}
    return {
        "default": RunConfig(**common),
        "ring64": RunConfig(topology="ring", topology_args={}, nodes=64, byzantine=0,
                            rule="gossip", attack="none", attack_args={}, local_steps=1,
                            **common),
        "dumbbell": RunConfig(topology="dumbbell", topology_args={"q": 10, "qb": 0, "r": 0},
                              nodes=20, byzantine=0, rule="clipped_gossip",
                              rule_args={"tau": 1.0}, attack="none", attack_args={},
                              model="mnist_cnn", local_steps=1, batch_size=32, lr=0.01,
                              **common),
    }


def measure(name: str, config: RunConfig, folder: Path) -> dict[str, float]:
    """Run ``config`` and summarise the per-round timings of its training rounds."""
    start = time.perf_counter()
    simulate(config, folder / name)
    total = time.perf_counter() - start
    timings = json.loads((folder / name / "timings.json").read_text())
    training = [t for t in timings if 0 < t["round"] < config.rounds]
    workers = max(1, (os.cpu_count() or 1))
    n = len(training) or 1

    def median(key: str) -> float:
        return statistics.median(t.get(key, 0.0) for t in training) if training else 0.0

    wall = median("total_s")
    node_work = {k: median(f"nodes_time_{k}_s") for k in
                 ("train", "aggregate", "fetch", "publish", "evaluate")}
    busy = sum(node_work.values()) / workers
    messages = config.nodes + (config.byzantine if config.attack != "none" else 0)
    overhead = max(0.0, wall - busy)
    return {"wall_s": wall, **{f"{k}_s": v for k, v in node_work.items()},
            "relay_overhead_s": overhead, "per_message_ms": overhead / messages * 1e3,
            "rounds_measured": float(n), "run_total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}, Ray workers = cores (1 CPU per node)")
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, config in scenarios(args.rounds).items():
            if args.only and name not in args.only:
                continue
            rows[name] = measure(name, config, Path(folder))
            print(f"  {name}: {rows[name]}", flush=True)
    print()
    print("| scenario | round wall time | local training (sum over nodes) | aggregation (sum) "
          "| fetch + publish (sum) | relay overhead | per message |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_s']:.2f} s | {r['train_s']:.2f} s | {r['aggregate_s']:.2f} s "
              f"| {r['fetch_s'] + r['publish_s']:.2f} s | {r['relay_overhead_s']:.2f} s "
              f"| {r['per_message_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
