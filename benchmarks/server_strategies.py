"""Time ``aggregate_train`` of the server-side robust strategies against Flower's own.

For ``k`` clients and a float32 model of ``d`` parameters in several named arrays (by
default the MNIST CNN's eight arrays, 1,199,882 parameters), the script builds ``k``
training reply Messages once, then times ``aggregate_train`` end to end: from the reply
Messages to the returned ``ArrayRecord``, decoding and encoding included. Flower's
strategies pop arrays out of the replies they aggregate, so every call (Flower's and ours)
gets a fresh deep copy of the replies, made outside the timed region. Our strategies are
told the global model first (``configure_train`` does that in a run), also untimed.

Prints a Markdown table: per strategy and ``k``, the median time of Flower's strategy and of
ours, the speed-up, and the largest difference between the two models returned. A call
faster than a second gets one untimed warm-up call first; sampling stops after
``--repeats`` samples or once ``--budget`` seconds were spent on one strategy (at least one
sample), so that Flower's Bulyan (tens of seconds at k = 128) is timed once. Run::

    python benchmarks/server_strategies.py                 # k in {32, 128}, the MNIST CNN
    python benchmarks/server_strategies.py --k 16 --d 1000 --repeats 1
    python benchmarks/server_strategies.py --k 128 --device cuda   # our rules on the GPU

Differences from Flower: the Krum family's can be large with nearly equal Krum scores,
because Flower computes distances in float32 as ``|a|^2 + |b|^2 - 2 a.b`` on the raw
models, whose rounding error (about ``1e-7 |a|^2``) can exceed the gap between the best
scores and pick another winner; ours centres the rows first (checked against float64 here:
ours picks the exact float64 winner). The repeated Bulyan differs by design.

The Byzantine budget is ``f = k // 8`` (capped so that Bulyan's ``k >= 4f + 3`` holds),
Multi-Krum selects ``m = k // 2``, the trimmed means cut ``beta = 0.2``. The clients'
models are the global model plus independent noise, so every rule has work to do and no
Krum score ties.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower
from flwr.supercore.task_identity import TaskIdentity
from machine import describe_machine

from flwr_tempered import strategies as ours

#: The MNIST CNN's arrays (two 3x3 convolutions, two fully connected layers).
MNIST_CNN: dict[str, tuple[int, ...]] = {
    "conv1.weight": (32, 1, 3, 3),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 3, 3),
    "conv2.bias": (64,),
    "fc1.weight": (128, 9216),
    "fc1.bias": (128,),
    "fc2.weight": (10, 128),
    "fc2.bias": (10,),
}
MNIST_CNN_PARAMETERS = sum(math.prod(shape) for shape in MNIST_CNN.values())
#: Scale of the clients' deviation from the global model.
NOISE = 0.01

StrategyFactory = Callable[[int, int, int], Any]  # (k, f, d) -> strategy
#: A call faster than this gets an untimed warm-up call before it is sampled.
WARM_UP_BELOW_S = 1.0


@dataclass(frozen=True)
class Case:
    """One table row: our strategy, and Flower's strategy of the same rule if it has one."""

    name: str
    ours: StrategyFactory
    flower: StrategyFactory | None = None




def _flower_bulyan(k: int, f: int, d: int) -> Any:
    return flower.Bulyan(num_malicious_nodes=f)


CASES: list[Case] = [
    Case("RobustFedAvg(mean) vs FedAvg",
         lambda k, f, d: ours.RobustFedAvg("mean"), lambda k, f, d: flower.FedAvg()),
    Case("Median vs FedMedian",
         lambda k, f, d: ours.Median(), lambda k, f, d: flower.FedMedian()),
    Case("TrimmedMean(beta=0.2) vs FedTrimmedAvg(beta=0.2)",
         lambda k, f, d: ours.TrimmedMean(beta=0.2),
         lambda k, f, d: flower.FedTrimmedAvg(beta=0.2)),
    Case("Krum",
         lambda k, f, d: ours.Krum(num_malicious_nodes=f),
         lambda k, f, d: flower.Krum(num_malicious_nodes=f)),
    Case("MultiKrum(m=k/2)",
         lambda k, f, d: ours.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=k // 2),
         lambda k, f, d: flower.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=k // 2)),
    Case("Bulyan(selection=multi_krum) vs Bulyan",
         lambda k, f, d: ours.Bulyan(num_malicious_nodes=f, selection="multi_krum"),
         _flower_bulyan),
    Case("Bulyan(selection=repeated) vs Bulyan",  # Flower's Bulyan is timed once per k
         lambda k, f, d: ours.Bulyan(num_malicious_nodes=f), _flower_bulyan),
    Case("GeometricMedian", lambda k, f, d: ours.GeometricMedian()),
    # tau about the length of one client's deviation: roughly half the clients are clipped.
    Case("CenteredClipping", lambda k, f, d: ours.CenteredClipping(tau=NOISE * math.sqrt(d))),
]


def model_shapes(d: int) -> dict[str, tuple[int, ...]]:
    """The MNIST CNN's arrays when ``d`` is its size, else four arrays totalling ``d``."""
    if d == MNIST_CNN_PARAMETERS:
        return dict(MNIST_CNN)
    if d < 4:
        raise ValueError(f"--d must be at least 4, got {d}")
    sizes = [d // 2, d // 4, d // 8]
    sizes.append(d - sum(sizes))
    return {f"layer{i}.weight": (size,) for i, size in enumerate(sizes)}


def byzantine_budget(k: int) -> int:
    """``f = k // 8``, at least one, and small enough for Bulyan (``k >= 4f + 3``)."""
    if k < 7:
        raise ValueError(f"--k must be at least 7 (Bulyan with f = 1), got {k}")
    return min(max(1, k // 8), (k - 3) // 4)


def make_replies(
    k: int, shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> tuple[ArrayRecord, list[Message]]:
    """The global model and ``k`` training replies (global model plus noise)."""
    rng = np.random.default_rng(seed)
    global_model = {key: rng.standard_normal(shape, dtype=np.float32)
                    for key, shape in shapes.items()}
    replies = []
    for node_id in range(1, k + 1):
        arrays = ArrayRecord({
            key: Array(value + NOISE * rng.standard_normal(value.shape, dtype=np.float32))
            for key, value in global_model.items()
        })
        metrics = MetricRecord({"num-examples": int(rng.integers(50, 500)),
                                "loss": float(rng.random())})
        request = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
        replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}),
                               reply_to=request))
    record = ArrayRecord({key: Array(value) for key, value in global_model.items()})
    return record, replies


def timed_call(strategy: Any, replies: list[Message]) -> tuple[float, ArrayRecord | None]:
    """Seconds of one ``strategy.aggregate_train`` on a fresh deep copy of ``replies``
    (copied, and garbage collected, before the clock starts), and the model returned."""
    fresh = copy.deepcopy(replies)
    gc.collect()
    start = time.perf_counter()
    arrays, _ = strategy.aggregate_train(1, fresh)
    seconds = time.perf_counter() - start
    del fresh
    return seconds, arrays


def time_aggregation(
    strategy: Any, replies: list[Message], repeats: int, budget_s: float
) -> tuple[float, ArrayRecord | None]:
    """Median seconds of ``strategy.aggregate_train`` over up to ``repeats`` calls (fewer
    once ``budget_s`` is spent, at least one), and the first call's model. The first call
    is a warm-up, not sampled, when it is faster than ``WARM_UP_BELOW_S``."""
    first, arrays = timed_call(strategy, replies)
    times = [first] if first >= WARM_UP_BELOW_S else []
    spent = first
    while len(times) < repeats and (not times or spent < budget_s):
        seconds, _ = timed_call(strategy, replies)
        times.append(seconds)
        spent += seconds
    return statistics.median(times), arrays


def max_difference(a: ArrayRecord | None, b: ArrayRecord | None) -> float:
    """Largest absolute difference between two models with the same arrays."""
    if a is None or b is None:
        return math.nan
    return max(float(np.abs(a[key].numpy().astype(np.float64)
                            - b[key].numpy().astype(np.float64)).max()) for key in b)


def benchmark(ks: list[int], d: int, repeats: int, budget_s: float,
              device: str = "cpu") -> list[dict[str, Any]]:
    """Measure every case for every ``k``; one row per (case, k)."""
    shapes = model_shapes(d)
    d = sum(math.prod(shape) for shape in shapes.values())
    rows = []
    for k in ks:
        f = byzantine_budget(k)
        global_record, replies = make_replies(k, shapes)
        flower_done: dict[StrategyFactory, tuple[float, ArrayRecord | None]] = {}
        for case in CASES:
            strategy = case.ours(k, f, d)
            strategy.device = torch.device(device)
            strategy.set_global_model(global_record)
            ours_s, ours_arrays = time_aggregation(strategy, replies, repeats, budget_s)
            flower_s, difference = math.nan, math.nan
            if case.flower is not None:
                if case.flower not in flower_done:
                    flower_done[case.flower] = time_aggregation(
                        case.flower(k, f, d), replies, repeats, budget_s)
                flower_s, flower_arrays = flower_done[case.flower]
                difference = max_difference(ours_arrays, flower_arrays)
            rows.append({"strategy": case.name, "k": k, "f": f, "d": d,
                         "flower_ms": flower_s * 1e3, "ours_ms": ours_s * 1e3,
                         "difference": difference})
            print(f"  k={k:<4} f={f:<3} {case.name:<50} Flower {flower_s * 1e3:9.1f} ms"
                  f"   ours {ours_s * 1e3:9.1f} ms", flush=True)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """One row per (strategy, k)."""
    print("| strategy | k | f | Flower ms | ours ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        has_flower = not math.isnan(row["flower_ms"])
        flower_ms = f"{row['flower_ms']:.1f}" if has_flower else "-"
        speed_up = f"{row['flower_ms'] / row['ours_ms']:.2f}x" if has_flower else "-"
        difference = f"{row['difference']:.1e}" if has_flower else "-"
        print(f"| {row['strategy']} | {row['k']} | {row['f']} | {flower_ms} | "
              f"{row['ours_ms']:.1f} | {speed_up} | {difference} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[32, 128], help="clients")
    parser.add_argument("--d", type=int, default=MNIST_CNN_PARAMETERS,
                        help="parameters (default: the MNIST CNN, 1,199,882)")
    parser.add_argument("--repeats", type=int, default=3, help="samples per strategy")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="seconds per strategy after which sampling stops")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where our strategies' rules run (Flower's run on the CPU "
                        "with numpy)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    # Messages need a task identity outside a Flower run; Flower's per-call INFO lines
    # would drown the table.
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0
    logging.getLogger("flwr").setLevel(logging.WARNING)
    where = "CPU" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"machine: {describe_machine()}, our rules on {where}, float32, d = {args.d:,}")
    rows = benchmark(args.k, args.d, args.repeats, args.budget, args.device)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
