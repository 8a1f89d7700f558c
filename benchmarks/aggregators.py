"""Time per call of every aggregation rule against the memory-pass floor.

Prints a Markdown table: for each k (received vectors) and d (dimension), the median time
of one call of each rule on float32 inputs on the CPU (or, with ``--device cuda``, on the
GPU: inputs are created there and every timing synchronises CUDA before reading the clock),
next to the time of ``received.sum(0)`` (one pass over the input memory), and the ratio.
Run::

    python benchmarks/aggregators.py            # k in {8, 32, 128}, d in {1e4, 1e6}
    python benchmarks/aggregators.py --k 8 --d 10000 --repeats 3
    python benchmarks/aggregators.py --device cuda

MOZI's loss callback here is a vector norm, so its row measures the rule's own overhead,
not the cost of evaluating models on data.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from machine import describe_machine

from flwr_tempered.aggregators import FLTrust, Rule, available_rules, get_rule

CPU = torch.device("cpu")


def rule_parameters_for(name: str, k: int) -> dict[str, Any]:
    """Valid, representative hyper-parameters of rule ``name`` for ``k`` received vectors."""
    f = max(1, k // 8)
    return {
        "trimmed_mean": {"b": max(1, k // 4)},
        "krum": {"f": f},
        "multi_krum": {"f": f, "m": (k + 1) // 2},
        "bulyan": {"f": f},
        "centered_clipping": {"tau": 1.0},
        "clipped_gossip": {"tau": 1.0},
        "balance": {"total_rounds": 100},
        "mozi": {"rho": 0.5, "alpha": 0.5, "loss_fn": lambda v: float(v.norm())},
        "nnm": {"f": f, "inner": "mean"},
        "bucketing": {"s": 2, "inner": {"name": "trimmed_mean", "b": 1}},
        # MDA and SMEA examine C(k + 1, f) subsets: f = 2 keeps k = 128 at 8,256 (under
        # the default cap), and SMEA's eigenvalues of (k - 1) x (k - 1) matrices per
        # subset make f = 1 (k + 1 subsets) its representative setting.
        "mda": {"f": min(f, 2)},
        "smea": {"f": 1},
        "monna": {"f": f},
        "meamed": {"f": f},
        "caf": {"f": f},
        "arc": {"f": f, "inner": "mean"},
        "static_clipping": {"c": 1.0, "inner": "mean"},
    }.get(name, {})


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(call: Callable[[], object], repeats: int,
                device: torch.device = CPU) -> float:
    """Median wall time of ``call`` in seconds over ``repeats`` runs after one warm-up,
    synchronising ``device`` before each reading of the clock."""
    call()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_floor(received: torch.Tensor) -> Callable[[], object]:
    """One pass over the input memory: the floor any rule's time is compared with."""
    return lambda: received.sum(0)


def make_call(
    rule: Rule, own: torch.Tensor, received: torch.Tensor, weights: torch.Tensor,
    reference: torch.Tensor,
) -> Callable[[], object]:
    """One aggregation call as the runtime would make it (FLTrust gets its reference)."""

    def call() -> object:
        if isinstance(rule, FLTrust):
            rule.set_reference(reference)
        return rule(own, received, weights if rule.uses_weights else None)

    return call


def benchmark(ks: list[int], ds: list[int], repeats: int,
              device: torch.device = CPU) -> list[dict[str, Any]]:
    """Measure every rule for every (k, d) on inputs on ``device``; one row per
    (rule, k, d). The inputs are drawn from one seeded CPU generator (the same values on
    every device) and moved to ``device`` before any timing."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for d in ds:
        for k in ks:
            own = torch.randn(d, generator=generator)
            received = (own + 0.1 * torch.randn(k, d, generator=generator)).to(device)
            own = own.to(device)
            weights = torch.full((k + 1,), 1.0 / (k + 1), device=device)
            floor = median_time(make_floor(received), repeats, device)
            for name in available_rules():
                rule = get_rule(name, **rule_parameters_for(name, k))
                reference = own + 0.1 * torch.randn(d, generator=generator).to(device)
                call = make_call(rule, own, received, weights, reference)
                seconds = median_time(call, repeats, device)
                rows.append(
                    {"rule": name, "k": k, "d": d, "ms": seconds * 1e3,
                     "floor_ms": floor * 1e3, "ratio": seconds / floor}
                )
                print(f"  k={k:<4} d={d:<8} {name:<18} {seconds * 1e3:9.2f} ms", flush=True)
    return rows


def print_table(rows: list[dict[str, Any]], ks: list[int], ds: list[int]) -> None:
    """One row per rule; per (k, d) the time in ms and the multiple of the floor."""
    columns = [(k, d) for d in ds for k in ks]
    header = "| rule | " + " | ".join(f"k={k}, d={d:.0e}" for k, d in columns) + " |"
    print(header)
    print("|" + "---|" * (len(columns) + 1))
    floors = {(r["k"], r["d"]): r["floor_ms"] for r in rows}
    print("| floor `received.sum(0)` | "
          + " | ".join(f"{floors[c]:.2f} ms" for c in columns) + " |")
    by_rule: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for row in rows:
        by_rule.setdefault(row["rule"], {})[(row["k"], row["d"])] = row
    for name, cells in sorted(by_rule.items()):
        shown = [f"{cells[c]['ms']:.2f} ms ({cells[c]['ratio']:.1f}x)" for c in columns]
        print(f"| {name} | " + " | ".join(shown) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--d", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the inputs live and the rules run (default: cpu)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available (torch "
                     f"{torch.__version__} sees no GPU); run with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = f"CUDA ({torch.cuda.get_device_name(device)})" if device.type == "cuda" \
        else "CPU"
    print(f"machine: {describe_machine()}, {where} float32")
    rows = benchmark(args.k, args.d, args.repeats, device)
    print()
    print_table(rows, args.k, args.d)


if __name__ == "__main__":
    main()
