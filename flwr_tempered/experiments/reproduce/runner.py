"""Run an experiment's cases one after another (or a few at a time), resumably.

Each case lands in ``<out>/<experiment>/<preset>/<case>/`` (the usual results folder:
``config.json``, ``metrics.jsonl``, ``timings.json``) plus ``done.json`` once it has
finished. A case with ``done.json`` and the same config is not run again, so an
interrupted sweep resumes where it stopped; a half-written folder is started over.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from flwr_tempered.node import RunConfig
from flwr_tempered.results import CONFIG_FILE, RunResults

from .catalog import Case, get_experiment
from .consensus import CONSENSUS_RULES, ConsensusSetting, consensus_settings, run_setting

DONE_FILE = "done.json"
#: How a run is executed: ``batched`` (every node as one computation,
#: :mod:`flwr_tempered.engine`), ``nodes`` (the per-node loop in this process), ``flower``
#: (Flower's simulation engine). ``inprocess`` is the former name of ``nodes``.
ENGINES = ("batched", "nodes", "flower", "inprocess")
DEFAULT_ROOT = Path("results") / "reproduce"

Printer = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def experiment_folder(root: str | Path, experiment: str, preset: str) -> Path:
    """Where the cases of ``experiment`` under ``preset`` are written."""
    return Path(root) / experiment / preset


def experiment_cases(experiment: str, preset: str, rounds: int | None = None,
                     eval_every: int | None = None) -> list[Case]:
    """The runs of ``experiment`` under ``preset`` (consensus: one per chain and rule);
    ``rounds`` shortens (or lengthens) every run, for a quick look or a test, and
    ``eval_every`` changes how often it evaluates."""
    for name, value in (("rounds", rounds), ("eval_every", eval_every)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if experiment == "consensus":
        return [Case(f"a{s.honest_weight:g}-d{s.delta_max:g}-{rule}", RunConfig(ledger=False),
                     {"rule": rule, "setting": s, "beta": s.beta, "delta_max": s.delta_max})
                for s in consensus_settings(rounds or 100) for rule in CONSENSUS_RULES]
    cases = get_experiment(experiment).cases(preset)
    if rounds is None and eval_every is None:
        return cases
    shortened = []
    for case in cases:
        steps = rounds or case.config.rounds
        every = min(eval_every or case.config.eval_every, steps)
        shortened.append(replace(case, config=replace(case.config, rounds=steps,
                                                      eval_every=every)))
    return shortened


def selected_cases(experiment: str, preset: str, only: Sequence[str] = (),
                   rounds: int | None = None, eval_every: int | None = None) -> list[Case]:
    """The runs a sweep would make: :func:`experiment_cases`, restricted to the cases
    whose key contains one of ``only`` (an error if none does)."""
    cases = experiment_cases(experiment, preset, rounds, eval_every)
    if only:
        cases = [c for c in cases if any(part in c.key for part in only)]
        if not cases:
            raise ValueError(f"no case of {experiment} matches {', '.join(only)}")
    return cases


def describe_plan(experiment: str, preset: str = "cpu", root: str | Path = DEFAULT_ROOT,
                  *, only: Sequence[str] = (), rounds: int | None = None) -> list[str]:
    """What ``reproduce`` would do, one line per run (its settings, and whether it is
    already done), without running anything: to check a preset before paying for it."""
    cases = selected_cases(experiment, preset, only, rounds)
    base = experiment_folder(root, experiment, preset)
    lines = [f"{experiment} ({preset} preset): {len(cases)} runs -> {base}"]
    for case in cases:
        state = "done" if is_done(base / case.key, case) else "to run"
        setting = case.labels.get("setting")
        if isinstance(setting, ConsensusSetting):
            what = f"consensus chain, {setting.rounds} steps, rule {case.labels['rule']}"
        else:
            c = case.config
            what = (f"{c.nodes} nodes on {c.topology}, {c.byzantine} Byzantine ({c.attack}), "
                    f"rule {c.rule}, {c.dataset}/{c.model}, {c.rounds} steps")
        lines.append(f"  {case.key:<40} {what}  [{state}]")
    runs = [c.config for c in cases if not isinstance(c.labels.get("setting"), ConsensusSetting)
            and not is_done(base / c.key, c)]
    if runs:
        from .estimate import describe_estimate

        lines.append(describe_estimate(runs))
    return lines


def _fingerprint(case: Case) -> dict[str, Any]:
    setting = case.labels.get("setting")
    if isinstance(setting, ConsensusSetting):
        return {"consensus": asdict(setting), "rule": case.labels["rule"]}
    return case.config.to_dict()


def is_done(folder: Path, case: Case) -> bool:
    """Whether ``folder`` holds a finished run of exactly ``case``."""
    try:
        done = json.loads((folder / DONE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(done.get("fingerprint") == json.loads(json.dumps(_fingerprint(case))))


def run_case(case: Case, folder: Path, engine: str = "nodes",
             progress: Callable[[dict[str, Any], RunConfig], None] | None = None) -> float:
    """Run one case into ``folder`` (started over); return its wall time in seconds."""
    start = time.perf_counter()
    (folder / DONE_FILE).unlink(missing_ok=True)
    setting = case.labels.get("setting")
    if isinstance(setting, ConsensusSetting):
        results = RunResults(folder)
        results.write_config({"consensus": asdict(setting), "rule": case.labels["rule"],
                              "beta": setting.beta})
        for t, error in enumerate(run_setting(setting, str(case.labels["rule"]))):
            results.append_metrics({"round": t, "error": error})
    elif engine in ("nodes", "inprocess"):
        from flwr_tempered.runtime.inprocess import run_in_process

        run_in_process(case.config, folder, progress=progress, plot=False)
    elif engine == "batched":
        from flwr_tempered.engine import run_batched

        run_batched(case.config, folder, progress=progress, plot=False)
    elif engine == "flower":
        from flwr_tempered.experiments.simulate import simulate

        simulate(case.config, folder, progress=progress)
    else:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    seconds = time.perf_counter() - start
    (folder / DONE_FILE).write_text(json.dumps(
        {"seconds": seconds, "engine": engine, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
         "fingerprint": _fingerprint(case)}, indent=1))
    return seconds


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total} runs"


def _case_worker(case: Case, folder: str, engine: str) -> float:
    """Entry point of a worker process: one torch thread, so jobs do not oversubscribe."""
    import torch

    torch.set_num_threads(1)
    return run_case(case, Path(folder), engine)


def run_experiment(experiment: str, preset: str = "cpu", root: str | Path = DEFAULT_ROOT, *,
                   engine: str = "nodes", jobs: int = 1, only: Sequence[str] = (),
                   rounds: int | None = None, eval_every: int | None = None,
                   echo: Printer = _stderr,
                   round_progress: bool = True) -> Path:
    """Run every unfinished case of ``experiment`` under ``preset``; return its folder.

    ``only`` restricts the sweep to cases whose key contains one of the given strings;
    ``rounds`` and ``eval_every`` override every run's number of steps and evaluation
    interval (a run of another length is another run: it does not count as done).
    ``jobs > 1`` runs that many cases at a time in worker processes (one torch thread
    each); the Flower engine always runs one case at a time (Ray uses every core).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs!r}")
    cases = selected_cases(experiment, preset, only, rounds, eval_every)
    base = experiment_folder(root, experiment, preset)
    base.mkdir(parents=True, exist_ok=True)
    pending = [c for c in cases if not is_done(base / c.key, c)]
    finished = len(cases) - len(pending)
    echo(f"== {experiment} ({preset} preset, {engine} engine): {len(cases)} runs, "
         f"{finished} already done -> {base}")
    started = time.perf_counter()
    if jobs == 1 or engine == "flower" or len(pending) <= 1:
        for case in pending:
            echo(f"{_bar(finished, len(cases))}  running {case.key}")
            progress = None
            if round_progress and not isinstance(case.labels.get("setting"), ConsensusSetting):
                from flwr_tempered.experiments.simulate import print_progress

                progress = print_progress
            seconds = run_case(case, base / case.key, engine, progress)
            finished += 1
            echo(f"{_bar(finished, len(cases))}  {case.key} done in {seconds:.1f} s")
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_case_worker, c, str(base / c.key), engine): c
                       for c in pending}
            for future in as_completed(futures):
                seconds = future.result()
                finished += 1
                echo(f"{_bar(finished, len(cases))}  {futures[future].key} done in "
                     f"{seconds:.1f} s")
    echo(f"== {experiment}: {len(pending)} runs in {time.perf_counter() - started:.0f} s")
    return base


def load_results(experiment: str, preset: str = "cpu", root: str | Path = DEFAULT_ROOT
                 ) -> list[tuple[Case, list[dict[str, Any]]]]:
    """The finished cases of ``experiment`` and their metrics lines (cases not run yet are
    left out), from the results files only (a shortened run counts too: its metrics say
    how many iterations it ran)."""
    from flwr_tempered.results import read_metrics

    base = experiment_folder(root, experiment, preset)
    found = []
    for case in experiment_cases(experiment, preset):
        folder = base / case.key
        if (folder / DONE_FILE).exists() and (folder / CONFIG_FILE).exists():
            found.append((case, read_metrics(folder)))
    return found


def run_seconds(experiment: str, preset: str = "cpu", root: str | Path = DEFAULT_ROOT
                ) -> float:
    """Total wall time of the finished cases (from their ``done.json``)."""
    base = experiment_folder(root, experiment, preset)
    total = 0.0
    for done in base.glob(f"*/{DONE_FILE}"):
        total += float(json.loads(done.read_text()).get("seconds", 0.0))
    return total
