"""Seconds per iteration of the batched engine against the per-node engine (and Flower, and
the seed's reference code).

Prints a Markdown table: for each setting, engine and device, the median wall time of one
training iteration (aggregate what arrived, one local step, send; rounds ``1..R-1`` of the
run's ``timings.json``: round 0 holds the warm-up and the first evaluation, and only rounds
0 and R evaluate), the fastest and slowest of those rounds, the peak memory of the
measurement and the speed-up over the per-node engine (``nodes time / this time``). Every
(setting, engine) measurement runs in a fresh subprocess of this script (``--worker``), so
the peak resident set size it reports (``ru_maxrss`` after the run minus before it) is that
run's own (for Flower, the driving process's only: Ray's workers are processes of their
own); on CUDA the peak is ``torch.cuda.max_memory_allocated`` after a reset. Under the
table: the settings in words, skipped measurements, and the figures as one JSON line
(``--save PATH`` writes them to a file: setting -> model, nodes and engine -> device ->
seconds per iteration).

On a CPU shared with other busy processes, torch's default of one thread per core makes
every thread wait for the slowest (a run can slow down tenfold while another process holds
a core); ``--threads 1`` gives steadier, if lower, figures. The min - max column shows how
steady a measurement was.

Settings (``ledger=False``, batch 32, momentum 0.9, one local step, lr 0.01, mnist-5k, iid):

* ``seed``: the seed's reference setting: dumbbell(10, 0, 0) (20 nodes), no attack,
  ClippedGossip tau = 1, the MNIST CNN (1,199,882 parameters);
* ``er100``: Erdős–Rényi(100, p = 0.1), 10 ALIE nodes (z = 10), trimmed mean b = 2 (the
  largest b <= 2 every honest node's neighbourhood allows), the small CNN;
* ``rr1000``: random 10-regular graph on 1,000 nodes, 100 ALIE nodes (z = 10),
  ClippedGossip tau = 1, the MNIST CNN.

``--nodes N`` shrinks a setting for quick runs: dumbbell(N // 2, 0, 0); Erdős–Rényi(N) with
the same mean degree (p = 9.9 / (N - 1)) and N // 10 Byzantine nodes; a random
min(10, N - 1)-regular graph with N // 10 Byzantine nodes.

``--reference PATH`` also runs the seed's own code (a checkout of
github.com/epfml/byzantine-robust-decentralized-optimizer) on setting ``seed``: its
``dumbbell.py`` with ``-n 20 -f 0 --graph dumbbell10,0,0 --agg scp1 --noniid 0 --lr 0.01
--momentum 0.9 --batch-size 32``, one step per iteration, for R iterations. Its MNIST comes
from a stand-in ``torchvision`` package generated in a temporary folder and put first on
``PYTHONPATH`` (``datasets.MNIST`` serving this package's offline mnist-5k as uint8 images,
``transforms.Compose/ToTensor/Normalize``), since torchvision is not installed here and
there is no network to download MNIST. Its iterations are timed by wrapping its trainer's
per-batch hooks (from before the gradients to after the models are reloaded from the
aggregates); its evaluation is switched off, its logs go to the temporary folder, and
nothing is written into the checkout. Run::

    python benchmarks/engine.py           # all settings (on a CPU: seed, er100), batched + nodes
    python benchmarks/engine.py --only rr1000 --engines batched --nodes 200
    python benchmarks/engine.py --only seed --reference /tmp/seedref --save engine.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from machine import describe_machine

from flwr_tempered.node import RunConfig

SETTINGS = ("seed", "er100", "rr1000")
ENGINES = ("batched", "nodes", "flower")
MODELS = ("small_cnn", "mnist_cnn", "logistic_regression")
#: Per-node runs above this many nodes with the MNIST CNN on a CPU are skipped unless
#: ``--force`` (rr1000 would take hours).
NODES_ENGINE_CPU_LIMIT = 200


# ------------------------------------------------------------------------------ settings
def setting_config(name: str, rounds: int, model: str | None = None,
                   nodes: int | None = None) -> RunConfig:
    """The RunConfig of setting ``name`` (see the module docstring), evaluated only at the
    first and the last round."""
    common: dict[str, Any] = {
        "rounds": rounds, "eval_every": rounds, "ledger": False, "batch_size": 32,
        "momentum": 0.9, "lr": 0.01, "local_steps": 1, "dataset": "mnist-5k",
        "partition": "iid"}
    if name == "seed":
        q = (nodes or 20) // 2
        if q < 2:
            raise ValueError("setting seed needs --nodes >= 4 (two cliques of >= 2)")
        return RunConfig(topology="dumbbell", topology_args={"q": q, "qb": 0, "r": 0},
                         nodes=2 * q, byzantine=0, attack="none", attack_args={},
                         rule="clipped_gossip", rule_args={"tau": 1.0},
                         model=model or "mnist_cnn", **common)
    if name == "er100":
        n = nodes or 100
        if n < 4:
            raise ValueError("setting er100 needs --nodes >= 4")
        p = 0.1 if n == 100 else min(1.0, 9.9 / (n - 1))
        config = RunConfig(topology="erdos_renyi", topology_args={"p": p}, nodes=n,
                           byzantine=max(1, n // 10), attack="alie",
                           attack_args={"z": 10.0}, rule="trimmed_mean", rule_args={"b": 2},
                           model=model or "small_cnn", **common)
        return RunConfig.from_mapping({**config.to_dict(),
                                       "rule_args": {"b": trimmed_mean_b(config)}})
    if name == "rr1000":
        n = nodes or 1000
        degree = min(10, n - 1)
        if n * degree % 2:
            degree -= 1
        if degree < 2:
            raise ValueError("setting rr1000 needs --nodes >= 3")
        return RunConfig(topology="random_regular", topology_args={"degree": degree},
                         nodes=n, byzantine=n // 10, attack="alie" if n >= 10 else "none",
                         attack_args={"z": 10.0} if n >= 10 else {},
                         rule="clipped_gossip", rule_args={"tau": 1.0},
                         model=model or "mnist_cnn", **common)
    raise ValueError(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)}")


def trimmed_mean_b(config: RunConfig, wanted: int = 2) -> int:
    """The largest ``b <= wanted`` with ``2b < k + 1`` for the smallest number ``k`` of
    vectors an honest node receives (trimmed mean's precondition)."""
    from flwr_tempered.node import topology_of

    topology = topology_of(config)
    smallest = min(len(topology.neighbors(p)) for p in range(topology.n)
                   if p not in topology.byzantine)
    return min(wanted, smallest // 2)


def describe_setting(config: RunConfig) -> str:
    """The setting in a few words, for the notes under the table."""
    args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in config.topology_args.items())
    rule_args = ", ".join(f"{k}={v}" for k, v in config.rule_args.items())
    attack = "no attack" if config.attack == "none" or not config.byzantine \
        else f"{config.byzantine} {config.attack}"
    return (f"{config.topology}({args}), {config.nodes} nodes, {attack}, "
            f"{config.rule}({rule_args}), {config.model}")


# ------------------------------------------------------------------------------- workers
def peak_rss_bytes() -> int:
    """This process's peak resident set size (``ru_maxrss`` is KiB on Linux, bytes on
    macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def median_training_round(folder: Path, rounds: int) -> tuple[float, list[float]]:
    """Median ``total_s`` of rounds ``1..rounds-1`` in ``folder/timings.json`` (and them)."""
    timings = json.loads((folder / "timings.json").read_text())
    training = [float(t["total_s"]) for t in timings if 0 < t["round"] < rounds]
    if not training:
        raise SystemExit("no training round to time: use --rounds >= 2")
    return statistics.median(training), training


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: run the setting with the engine, return
    seconds per iteration and peak memory."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    config = setting_config(spec["setting"], spec["rounds"], spec["model"], spec["nodes"])
    engine = spec["engine"]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_bytes()
    mode = "-"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        if engine == "batched":
            from flwr_tempered.engine import BatchedEngine, EngineOptions

            budget = spec.get("memory_budget")
            runner = BatchedEngine(config, EngineOptions(
                device=spec["device"], step_mode=spec["step_mode"],
                memory_budget=None if budget is None else int(budget * 2**20)))
            device, mode = str(runner.device), runner.mode
            runner.run(out, plot=False)
        elif engine == "nodes":
            from flwr_tempered.models import default_device
            from flwr_tempered.runtime.inprocess import run_in_process

            device = str(default_device())
            run_in_process(config, out, plot=False)
        elif engine == "flower":
            from flwr_tempered.experiments.simulate import simulate
            from flwr_tempered.models import default_device

            if spec.get("nodes_per_client"):
                config = RunConfig.from_mapping({**config.to_dict(),
                                                 "nodes_per_client": spec["nodes_per_client"]})
                mode = f"{config.nodes_per_client} nodes per client"
            device = str(default_device()) if config.node_gpus > 0 else "cpu"
            simulate(config, out)
        else:
            raise ValueError(f"unknown engine {engine!r}")
        seconds, rounds = median_training_round(out, config.rounds)
    cuda_peak = torch.cuda.max_memory_allocated() if cuda and device.startswith("cuda") \
        else None
    return {"setting": spec["setting"], "engine": engine, "device": device.split(":")[0],
            "mode": mode, "model": config.model, "nodes": config.nodes,
            "seconds": seconds, "rounds_s": rounds,
            "rss_growth": max(0, peak_rss_bytes() - before), "cuda_peak": cuda_peak}


def measure(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh subprocess of this script; its last stdout line is JSON."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    return _json_subprocess(command, timeout, f"{spec['setting']}/{spec['engine']}")


def _json_subprocess(command: list[str], timeout: float, what: str,
                     env: dict[str, str] | None = None, cwd: str | None = None
                     ) -> dict[str, Any]:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                check=False, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{what}: no result within {timeout:.0f} s (--timeout)") from None
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{tail}")
    return dict(json.loads(lines[-1]))


# ---------------------------------------------------------------- the seed's reference code
#: What the stand-in ``torchvision`` provides: exactly what the reference imports.
SHIM_INIT = '''"""Offline stand-in for torchvision, for timing the seed's reference code only."""
from . import datasets, transforms  # noqa: F401
'''

SHIM_DATASETS = '''"""``MNIST``: flwr_tempered's offline mnist-5k, as torchvision's MNIST."""
import torch


class MNIST(torch.utils.data.Dataset):
    classes = [f"{d} - {w}" for d, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]

    def __init__(self, root, train=True, transform=None, target_transform=None,
                 download=False):
        from flwr_tempered.data import load_dataset

        data = load_dataset("mnist-5k")
        images = data.train_images if train else data.test_images
        # torchvision keeps MNIST as uint8 [N, 28, 28] and hands out 8-bit images.
        self.data = (images[:, 0] * 255).round().to(torch.uint8)
        self.targets = (data.train_labels if train else data.test_labels).clone()
        self.train = train
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        image, target = self.data[index], int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


class CIFAR10:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("the offline torchvision stand-in has no CIFAR10")
'''

SHIM_TRANSFORMS = '''"""``Compose``, ``ToTensor`` and ``Normalize`` on uint8 image tensors."""
import torch


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


class ToTensor:
    """uint8 ``[H, W]`` (or ``[H, W, C]``) -> float ``[C, H, W]`` in [0, 1]."""

    def __call__(self, image):
        image = torch.as_tensor(image)
        if image.dim() == 2:
            image = image.unsqueeze(-1)
        return image.permute(2, 0, 1).contiguous().float().div(255)


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor):
        return (tensor - self.mean) / self.std


def _unavailable(name):
    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"the offline torchvision stand-in has no {name}")
    return Unavailable


RandomHorizontalFlip = _unavailable("RandomHorizontalFlip")
RandomCrop = _unavailable("RandomCrop")
'''

#: Runs the reference's dumbbell.py in-process with its per-batch hooks timed.
REFERENCE_DRIVER = '''"""Time the seed's dumbbell run (argv: nodes rounds cuda log_dir threads)."""
import json
import resource
import sys
import time

import torch

nodes, rounds, use_cuda, log_dir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1",
                                    sys.argv[4])
if int(sys.argv[5]):
    torch.set_num_threads(int(sys.argv[5]))
sys.argv = ["dumbbell.py", "-n", str(nodes), "-f", "0",
            "--graph", f"dumbbell{nodes // 2},0,0", "--attack", "NA", "--lr", "0.01",
            "--momentum", "0.9", "--batch-size", "32", "--noniid", "0", "--agg", "scp1",
            "--epochs", str(rounds), "--max-batch-size-per-epoch", str(rounds),
            "--identifier", "benchmark", "--log_interval", "1000000000"]
if use_cuda:
    sys.argv.append("--use-cuda")
    torch.cuda.reset_peak_memory_stats()

import dumbbell  # noqa: E402  (the reference, on PYTHONPATH)
from codes import simulator  # noqa: E402


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Done(BaseException):
    pass


starts, ends = [], []
pre, post = (simulator.DecentralizedTrainer._run_pre_batch_hooks,
             simulator.DecentralizedTrainer._run_post_batch_hooks)


def timed_pre(self, epoch, batch):
    starts.append(time.perf_counter())
    pre(self, epoch, batch)


def timed_post(self, epoch, batch):
    post(self, epoch, batch)
    if use_cuda:
        torch.cuda.synchronize()
    ends.append(time.perf_counter())
    if len(ends) >= rounds:
        raise Done


simulator.DecentralizedTrainer._run_pre_batch_hooks = timed_pre
simulator.DecentralizedTrainer._run_post_batch_hooks = timed_post
simulator.AverageEvaluator.evaluate = lambda self, epoch: None   # evaluation is not timed
dumbbell.DumbbellRunner.LOG_DIR_PATTERN = (log_dir + "/{exp_id}/"
                                           + dumbbell.DumbbellRunner.EXP_PATTERN + "/")
before = peak_rss()
runner = dumbbell.DumbbellRunner()
try:
    runner.run()
except Done:
    pass
seconds = [end - start for start, end in zip(starts, ends)]
print(json.dumps({"rounds_s": seconds, "rss_growth": max(0, peak_rss() - before),
                  "cuda_peak": torch.cuda.max_memory_allocated() if use_cuda else None}))
'''


def check_reference(path: str) -> Path:
    """``path`` as a checkout of the seed's code, or exit naming what is missing."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--reference {path}: no such directory (expected a checkout of "
                         "github.com/epfml/byzantine-robust-decentralized-optimizer)")
    missing = [name for name in ("dumbbell.py", "template.py", "codes/simulator.py",
                                 "codes/aggregator.py", "codes/tasks/mnist.py")
               if not (root / name).is_file()]
    if missing:
        raise SystemExit(f"--reference {path}: not a checkout of the seed's code "
                         f"(missing {', '.join(missing)})")
    return root.resolve()


def measure_reference(root: Path, nodes: int, rounds: int, cuda: bool, timeout: float,
                      threads: int | None = None) -> dict[str, Any]:
    """Run the reference's dumbbell experiment for ``rounds`` iterations; median seconds
    per iteration over iterations ``1..rounds-1``."""
    with tempfile.TemporaryDirectory() as folder:
        shim = Path(folder) / "shim" / "torchvision"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text(SHIM_INIT)
        (shim / "datasets.py").write_text(SHIM_DATASETS)
        (shim / "transforms.py").write_text(SHIM_TRANSFORMS)
        driver = Path(folder) / "driver.py"
        driver.write_text(REFERENCE_DRIVER)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(shim.parent), str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                             else []))
        env.setdefault("MPLBACKEND", "Agg")
        result = _json_subprocess(
            [sys.executable, str(driver), str(nodes), str(rounds), "1" if cuda else "0",
             str(Path(folder) / "logs"), str(threads or 0)],
            timeout, "reference (seed code)", env=env, cwd=folder)
    times = result["rounds_s"][1:rounds]
    if not times:
        raise SystemExit("reference (seed code): no training iteration timed")
    return {"setting": "seed", "engine": "reference", "device": "cuda" if cuda else "cpu",
            "mode": "-", "model": "mnist_cnn (seed's Net)", "nodes": nodes,
            "seconds": statistics.median(times), "rounds_s": times,
            "rss_growth": result["rss_growth"], "cuda_peak": result["cuda_peak"]}


# ---------------------------------------------------------------------------------- table
ENGINE_LABELS = {"batched": "batched", "nodes": "per-node", "flower": "Flower",
                 "reference": "reference (seed code)"}


def memory_cell(row: dict[str, Any]) -> str:
    if row.get("cuda_peak") is not None:
        return f"{row['cuda_peak'] / 2**20:,.0f} MiB CUDA"
    return f"{row['rss_growth'] / 2**20:,.0f} MiB RSS"


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| setting | model | nodes | engine | device | steps | s / iteration | min - max "
          "| peak memory | vs per-node | vs reference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        same = [r for r in rows if r["setting"] == row["setting"]]
        nodes = next((r["seconds"] for r in same if r["engine"] == "nodes"), None)
        reference = next((r["seconds"] for r in same if r["engine"] == "reference"), None)
        speedup = f"{nodes / row['seconds']:.2f}x" if nodes and row["engine"] != "reference" \
            else "-"
        versus = f"{reference / row['seconds']:.2f}x" if reference \
            and row["engine"] != "reference" else "-"
        print(f"| {row['setting']} | {row['model']} | {row['nodes']} "
              f"| {ENGINE_LABELS[row['engine']]} | {row['device']} | {row['mode']} "
              f"| {row['seconds']:.4f} | {min(row['rounds_s']):.4f} - {max(row['rounds_s']):.4f} "
              f"| {memory_cell(row)} | {speedup} | {versus} |")


def figures(rows: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """setting -> model, nodes and engine -> device -> seconds per iteration."""
    settings: dict[str, Any] = {}
    for row in rows:
        entry = settings.setdefault(row["setting"], {
            "model": row["model"], "nodes": row["nodes"], "seconds_per_iteration": {}})
        if row["engine"] != "reference":    # the reference row names the seed's own model
            entry["model"] = row["model"]
        entry["seconds_per_iteration"].setdefault(row["engine"], {})[row["device"]] = \
            row["seconds"]
    return {"machine": describe_machine(), "rounds": rounds, "settings": settings}


# ----------------------------------------------------------------------------------- main
def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", action="append", choices=SETTINGS, default=None,
                        help="a setting to run (repeatable; default: all)")
    parser.add_argument("--engines", default="batched,nodes",
                        help="comma-separated: batched, nodes, flower (Flower needs Ray)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                        help="the batched engine's device (auto: cuda when available)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nodes-per-client", type=int, default=None, metavar="K",
                        help="the flower engine hosts K graph nodes per Flower node, "
                        "stepped by the batched engine (default: one per node)")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="the model of every setting (default: each setting's own)")
    parser.add_argument("--nodes", type=int, default=None, help="shrink every setting")
    parser.add_argument("--step-mode", choices=("auto", "vmap", "loop"), default="auto")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="MIB",
                        help="the batched engine's memory budget in MiB (default: its own, "
                             "80 %% of the device's free memory)")
    parser.add_argument("--force", action="store_true",
                        help="run the per-node engine where it would take too long")
    parser.add_argument("--reference", metavar="PATH", default=None,
                        help="a checkout of the seed's code: time it on setting seed")
    parser.add_argument("--save", metavar="PATH", default=None,
                        help="write the seconds per iteration as JSON to PATH")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every measurement (default: torch's own)")
    parser.add_argument("--timeout", type=float, default=7200.0,
                        help="seconds one measurement may take")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        parser.error(f"--engines: unknown {', '.join(unknown) or '(none)'}; choose from "
                     f"{', '.join(ENGINES)}")
    args.engines = engines
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 0 is the warm-up)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    return args


def main() -> None:
    args = parse_arguments()
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    reference = check_reference(args.reference) if args.reference else None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {describe_machine()}, batched engine on {device}, "
          f"{args.rounds} rounds (median of rounds 1..{args.rounds - 1})", flush=True)
    names = [s for s in SETTINGS if s in args.only] if args.only else list(SETTINGS)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if not args.only and device == "cpu" and args.nodes is None:
        names.remove("rr1000")
        notes.append("rr1000 not run by default on a CPU (each [1000, d] copy of the MNIST "
                     "CNNs is 4.8 GB; minutes per iteration): --only rr1000 [--nodes 200] "
                     "runs it")
        print(f"  {notes[-1]}", flush=True)
    for name in names:
        config = setting_config(name, args.rounds, args.model, args.nodes)
        notes.append(f"{name}: {describe_setting(config)}")
        for engine in args.engines:
            if engine == "nodes" and not args.force and not torch.cuda.is_available() \
                    and config.model == "mnist_cnn" and config.nodes > NODES_ENGINE_CPU_LIMIT:
                note = (f"{name}: per-node engine skipped ({config.nodes} nodes of the MNIST "
                        f"CNN on a CPU; --force runs it)")
                print(f"  {note}", flush=True)
                notes.append(note)
                continue
            spec = {"setting": name, "engine": engine, "rounds": args.rounds,
                    "model": args.model, "nodes": args.nodes, "device": device,
                    "step_mode": args.step_mode, "threads": args.threads,
                    "memory_budget": args.memory_budget,
                    "nodes_per_client": args.nodes_per_client}
            row = measure(spec, args.timeout)
            rows.append(row)
            print(f"  {name} {engine} on {row['device']}: {row['seconds']:.4f} s/iteration "
                  f"(rounds: {', '.join(f'{s:.3f}' for s in row['rounds_s'])})", flush=True)
        if name == "seed" and reference is not None:
            row = measure_reference(reference, config.nodes, args.rounds, device == "cuda",
                                    args.timeout, args.threads)
            rows.append(row)
            print(f"  seed reference on {row['device']}: {row['seconds']:.4f} s/iteration "
                  f"(iterations: {', '.join(f'{s:.3f}' for s in row['rounds_s'])})",
                  flush=True)
    if reference is not None and "seed" not in names:
        notes.append("--reference times setting seed only: add --only seed")
    print()
    print_table(rows)
    print()
    for note in notes:
        print(f"- {note}")
    data = figures(rows, args.rounds)
    print()
    print(f"per-iteration: {json.dumps(data['settings'])}")
    if args.save:
        Path(args.save).write_text(json.dumps(data, indent=2) + "\n")
        print(f"written to {args.save}")


if __name__ == "__main__":
    main()
