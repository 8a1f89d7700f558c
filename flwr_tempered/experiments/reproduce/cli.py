"""``flwr-tempered reproduce`` and ``flwr-tempered plot``: the papers' experiment menu."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .catalog import EXPERIMENTS, PRESETS
from .runner import DEFAULT_ROOT, ENGINES


def add_reproduce_parsers(commands: Any) -> None:
    """Register the ``reproduce`` and ``plot`` subcommands."""
    names = ", ".join(EXPERIMENTS)
    reproduce = commands.add_parser(
        "reproduce", help="run a seed paper's experiment (no name: a numbered menu)",
        description="Run every run of one experiment of the ClippedGossip and BALANCE papers "
                    "(finished runs are kept and not redone), then draw its figure. "
                    f"Experiments: {names}.")
    plot = commands.add_parser(
        "plot", help="draw an experiment's figure from its results files",
        description="Draw an experiment's figure (PNG) and print its table, from the "
                    "results files of `flwr-tempered reproduce` only.")
    reproduce.add_argument("experiment", nargs="?", help=f"one of: {names}")
    plot.add_argument("experiment", help=f"one of: {names}")
    for sub in (reproduce, plot):
        sub.add_argument("--preset", choices=PRESETS, default="cpu",
                         help="cpu: MNIST-5k, small CNN, fewer steps (minutes on a laptop); "
                              "full: the published settings (GPU, network for the data)")
        sub.add_argument("--out", default=str(DEFAULT_ROOT),
                         help=f"results root (default {DEFAULT_ROOT}); runs go to "
                              "OUT/EXPERIMENT/PRESET/RUN")
    reproduce.add_argument("--engine", choices=ENGINES, default="nodes",
                           help="nodes (default, the engine of docs/reproduction.md): the "
                                "per-node loop in this process; batched: every node of a run "
                                "stepped as one computation on one device (faster, same "
                                "metrics to float rounding); flower: each run through "
                                "Flower's simulation engine (inprocess is the former name "
                                "of nodes)")
    reproduce.add_argument("--jobs", type=int, default=1,
                           help="runs at a time (in-process engine; one torch thread each)")
    reproduce.add_argument("--only", action="append", default=[], metavar="TEXT",
                           help="only the runs whose name contains TEXT (repeatable)")
    reproduce.add_argument("--rounds", type=int, default=None, metavar="STEPS",
                           help="override every run's number of steps (a quick look)")
    reproduce.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    reproduce.add_argument("--dry-run", action="store_true",
                           help="list the runs (settings, done or not) without running them")


def _menu() -> tuple[str, str] | None:
    """Print the numbered menu and read a choice from stdin: (action, experiment)."""
    entries = [(action, name) for name in EXPERIMENTS for action in ("run", "plot")]
    print("Experiments of the seed papers (ClippedGossip, BALANCE):")
    for number, (action, name) in enumerate(entries, start=1):
        print(f"  {number:>2}  {action:<4}  {name}  ({EXPERIMENTS[name].title})")
    try:
        answer = input("choose a number (q to quit): ").strip()
    except EOFError:
        answer = "q"
    if answer.lower() in ("", "q", "quit"):
        return None
    if not answer.isdigit() or not 1 <= int(answer) <= len(entries):
        raise ValueError(f"menu: expected a number from 1 to {len(entries)}, got {answer!r}")
    return entries[int(answer) - 1]


def _show(experiment: str, preset: str, root: str) -> None:
    from .figures import grid_table, markdown_table, plot_experiment, summary_rows
    from .findings import check
    from .runner import load_results

    path = plot_experiment(experiment, preset, root)
    print(markdown_table(summary_rows(experiment, preset, root)))
    if experiment == "balance_grid":
        print("\nworst honest node test error (%), rule x attack:")
        print(grid_table(root, preset))
    print("\nfindings of the papers, on these results:")
    for finding in check(experiment, load_results(experiment, preset, root)):
        print(f"  {finding}")
    print(f"\nfigure: {path}")


def run_reproduce_command(args: argparse.Namespace) -> int:
    """Run ``reproduce`` or ``plot``; returns the exit status."""
    from .catalog import get_experiment
    from .runner import run_experiment

    experiment, action = args.experiment, args.command
    if experiment is None:
        choice = _menu()
        if choice is None:
            return 0
        action = "reproduce" if choice[0] == "run" else "plot"
        experiment = choice[1]
    get_experiment(experiment)
    if action == "reproduce" and getattr(args, "dry_run", False):
        from .runner import describe_plan

        print("\n".join(describe_plan(experiment, args.preset, args.out, only=args.only,
                                       rounds=args.rounds)))
        return 0
    if action == "reproduce":
        run_experiment(experiment, args.preset, args.out, engine=getattr(args, "engine",
                       "nodes"), jobs=getattr(args, "jobs", 1),
                       only=getattr(args, "only", []), rounds=getattr(args, "rounds", None))
        if getattr(args, "no_plot", False):
            return 0
    _show(experiment, args.preset, args.out)
    sys.stdout.flush()
    return 0
