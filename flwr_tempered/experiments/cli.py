"""The ``flwr-tempered`` command line.

``flwr-tempered list`` prints every aggregation rule, attack and topology with its
parameters; ``flwr-tempered topology NAME --topology-arg KEY=VALUE`` builds one topology
and prints its numbers (nodes, Byzantine nodes, spectral gap, largest Byzantine weight),
optionally drawing it; ``flwr-tempered run`` runs a decentralized training;
``flwr-tempered ledger verify|show PATH`` checks and reads a run's ledger;
``flwr-tempered reproduce [EXPERIMENT]`` and ``flwr-tempered plot EXPERIMENT`` run and
draw the seed papers' experiments; ``flwr-tempered new APP`` writes a ready Flower app with
a robust strategy (and optionally an attack).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .deploy_cli import add_deploy_parsers, run_deploy_command
from .ledger_cli import add_ledger_parser, run_ledger_command
from .new_app import add_new_parser, run_new_command
from .peer_cli import add_peer_parser, run_peer_command
from .reproduce.cli import add_reproduce_parsers, run_reproduce_command

#: The engines ``flwr-tempered run --engine`` offers.
RUN_ENGINES = ("flower", "batched", "nodes")

#: What ``flwr-tempered list`` can print.
SECTIONS = ("rules", "attacks", "topologies")


def parse_key_values(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """Turn ``["b=1", "inner=median"]`` into ``{"b": 1, "inner": "median"}``.

    Values are read as Python literals (numbers, booleans, None, lists, dicts) and fall
    back to plain strings.
    """
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            parsed[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            parsed[key] = raw
    return parsed


def _format_signature(function: Callable[..., Any]) -> str:
    """``name=default, required`` for a constructor's parameters (self omitted)."""
    parts = []
    for param in inspect.signature(function).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if param.default is inspect.Parameter.empty:
            parts.append(param.name)
        else:
            parts.append(f"{param.name}={param.default!r}")
    return ", ".join(parts)


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def catalogue() -> dict[str, list[tuple[str, str, str]]]:
    """Every registered rule, attack and topology as ``(name, parameters, summary)``."""
    from flwr_tempered import attacks, topology
    from flwr_tempered.aggregators import available_rules, rule_class

    rules = [
        (name, _format_signature(rule_class(name).__init__), _first_line(rule_class(name)))
        for name in available_rules()
    ]
    attack_rows = []
    for name in attacks.available_attacks():
        cls = attacks.attack_class(name)
        attack_rows.append((name, _format_signature(cls.__init__), _first_line(cls)))
    topology_rows = []
    for name in topology.available_topologies():
        factory = topology.topology_factory(name)
        topology_rows.append((name, _format_signature(factory), _first_line(factory)))
    return {"rules": rules, "attacks": attack_rows, "topologies": topology_rows}


def _print_catalogue(sections: Sequence[str]) -> None:
    table = catalogue()
    for section in sections:
        rows = table[section]
        print(f"{section} ({len(rows)}):")
        width = max(len(name) for name, _, _ in rows)
        for name, params, summary in rows:
            print(f"  {name:<{width}}  ({params})")
            if summary:
                print(f"  {'':<{width}}  {summary}")
        print()


def _describe_topology(name: str, params: dict[str, Any], plot: str | None) -> None:
    from flwr_tempered.topology import get_topology

    built = get_topology(name, **params)
    topo = built.at_round(0)  # a time-varying topology: its round-0 graph
    honest_degrees = [len(topo.neighbors(i)) for i in topo.honest]
    print(f"topology      {topo.name} {topo.params}"
          + (" (a new graph every round; round 0 shown)" if built.dynamic else ""))
    print(f"nodes         {topo.n} ({len(topo.honest)} honest, {len(topo.byzantine)} Byzantine)")
    print(f"edges         {topo.graph.number_of_edges()}")
    print(f"honest degree min {min(honest_degrees)}, max {max(honest_degrees)}")
    print(f"spectral gap  {topo.spectral_gap:.6f} (honest block)")
    print(f"delta_max     {topo.delta_max:.6f} (largest Byzantine weight at an honest node)")
    for group, members in topo.groups.items():
        print(f"group {group!r}: {members}")
    if plot:
        topo.plot(path=plot)
        print(f"drawing written to {plot}")


def _add_run_parser(commands: Any) -> None:
    from flwr_tempered.aggregators import available_rules
    from flwr_tempered.attacks import available_attacks
    from flwr_tempered.data import available_datasets, available_partitioners
    from flwr_tempered.node import RunConfig
    from flwr_tempered.topology import available_topologies

    defaults = RunConfig()
    run = commands.add_parser(
        "run", help="run a decentralized training (Flower simulation or a local engine)",
        description="Run a Byzantine-robust decentralized training through Flower's "
                    "simulation engine and write a results folder.",
    )
    run.add_argument("--topology", default=defaults.topology,
                     help=f"one of: {', '.join(available_topologies())}")
    run.add_argument("--nodes", type=int, default=defaults.nodes)
    run.add_argument("--byzantine", type=int, default=defaults.byzantine)
    run.add_argument("--rule", default=defaults.rule,
                     help=f"one of: {', '.join(available_rules())}")
    run.add_argument("--attack", default=defaults.attack,
                     help=f"'none' or one of: {', '.join(available_attacks())}")
    run.add_argument("--dataset", default=defaults.dataset,
                     help=f"one of: {', '.join(available_datasets())}")
    run.add_argument("--partition", default=defaults.partition,
                     help=f"one of: {', '.join(available_partitioners())}")
    run.add_argument("--model", default=defaults.model)
    run.add_argument("--rounds", type=int, default=defaults.rounds)
    run.add_argument("--local-steps", type=int, default=defaults.local_steps)
    run.add_argument("--batch-size", type=int, default=defaults.batch_size)
    run.add_argument("--lr", type=float, default=defaults.lr)
    run.add_argument("--eval-every", type=int, default=defaults.eval_every)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--exchange", choices=["shared", "inline"], default=defaults.exchange)
    run.add_argument("--no-ledger", action="store_true",
                     help="do not sign messages or keep ledger.sqlite")
    run.add_argument("--ledger-f", type=int, default=defaults.ledger_f,
                     help="faulty validators tolerated; blocks need 2f+1 endorsements "
                          "(default: the largest f with nodes >= 3f+1)")
    run.add_argument("--equivocators", choices=["keep", "exclude"],
                     default=defaults.equivocators,
                     help="what honest nodes do with a node the ledger proved to equivocate")
    for kind in ("rule", "attack", "topology", "partition", "model"):
        run.add_argument(f"--{kind}-arg", action="append", default=[], metavar="KEY=VALUE",
                         help=f"a {kind} parameter (repeatable)")
    run.add_argument("--out", help="results folder (default: results/<names>-<time>)")
    run.add_argument("--compare", default="gossip",
                     help="also run this rule under the same attack and print both "
                          "(default gossip; 'none' to skip)")
    run.add_argument("--baseline", choices=["local", "none"], default="local",
                     help="also run the no-collaboration baseline: every honest node trains "
                          "on its shard alone for the same steps (rule 'local', run "
                          "in-process: there is nothing to exchange); default local")
    run.add_argument("--engine", choices=RUN_ENGINES, default="flower",
                     help="flower (default): one simulated Flower SuperNode per node, with "
                          "the ledger; batched: every node stepped as one computation on one "
                          "device (no messages, so no ledger); nodes: the per-node loop in "
                          "this process (no ledger)")
    run.add_argument("--device", default=None,
                     help="batched engine: cpu, cuda or cuda:N (default: cuda when present)")
    run.add_argument("--step-mode", choices=["auto", "vmap", "loop"], default="auto",
                     help="batched engine: how local steps are taken (auto: vmap on a GPU "
                          "and for models without convolutions, a node loop otherwise)")
    run.add_argument("--nodes-per-client", type=int, default=1, metavar="K",
                     help="flower engine: graph nodes hosted by one SuperNode, stepped by the "
                          "batched engine (K > 1: a large graph needs few SuperNodes and Ray "
                          "actors; no ledger)")
    run.add_argument("--num-cpus", type=float, default=1.0,
                     help="Ray CPUs per SuperNode")
    run.add_argument("--num-gpus", type=float, default=0.0,
                     help="Ray GPUs per SuperNode (fractions share a GPU)")


def _run(args: argparse.Namespace) -> None:
    from flwr_tempered.node import RunConfig
    from flwr_tempered.node.config import default_rule_args
    from flwr_tempered.results import COMPARISON_FILE, plot_comparison, read_metrics
    from flwr_tempered.runtime.server import default_results_folder

    config = RunConfig(
        topology=args.topology,
        topology_args=parse_key_values(args.topology_arg, "--topology-arg") or (
            dict(RunConfig().topology_args) if args.topology == RunConfig().topology else {}),
        nodes=args.nodes, byzantine=args.byzantine, rule=args.rule,
        rule_args=parse_key_values(args.rule_arg, "--rule-arg") or default_rule_args(args.rule),
        attack=args.attack,
        attack_args=parse_key_values(args.attack_arg, "--attack-arg") or (
            dict(RunConfig().attack_args) if args.attack == RunConfig().attack else {}),
        dataset=args.dataset,
        partition=args.partition,
        partition_args=parse_key_values(args.partition_arg, "--partition-arg"),
        model=args.model, model_args=parse_key_values(args.model_arg, "--model-arg"),
        rounds=args.rounds, local_steps=args.local_steps, batch_size=args.batch_size,
        lr=args.lr, eval_every=args.eval_every, seed=args.seed, exchange=args.exchange,
        node_cpus=args.num_cpus, node_gpus=args.num_gpus,
        ledger=not args.no_ledger and args.engine == "flower" and args.nodes_per_client == 1,
        nodes_per_client=args.nodes_per_client if args.engine == "flower" else 1,
        ledger_f=args.ledger_f, equivocators=args.equivocators,
    )
    _check_buildable(config)
    if args.engine != "flower" and not args.no_ledger:
        print(f"note: the {args.engine} engine passes no messages, so the run keeps no "
              "ledger (use --engine flower for one)", file=sys.stderr)
    elif args.nodes_per_client > 1 and not args.no_ledger:
        print("note: SuperNodes that host several graph nodes sign nothing, so the run "
              "keeps no ledger (use --nodes-per-client 1 for one)", file=sys.stderr)
    out = Path(args.out) if args.out else default_results_folder(config)
    runs = {config.rule: (config, out)}
    if args.compare not in ("none", config.rule):
        compare = replace(config, rule=args.compare, rule_args={})
        _check_buildable(compare)
        runs[args.compare] = (compare, out.parent / f"{out.name}-{args.compare}")
    if args.baseline == "local" and "local" not in runs:
        runs["local"] = (replace(config, rule="local", rule_args={}, ledger=False),
                         out.parent / f"{out.name}-local")
    finals = {}
    for name, (run_config, folder) in runs.items():
        if name == "local" and name != config.rule:
            engine = "nodes" if args.engine == "flower" else args.engine
            print(f"== baseline local: the {run_config.nodes - run_config.byzantine} honest "
                  f"nodes train alone, {run_config.rounds} rounds, engine {engine} (nothing "
                  f"to exchange, so not through Flower) -> {folder}", file=sys.stderr,
                  flush=True)
            _execute(argparse.Namespace(**{**vars(args), "engine": engine}), run_config,
                     folder)
        else:
            print(f"== rule {name}: {run_config.nodes} nodes on {run_config.topology}, "
                  f"{run_config.byzantine} Byzantine ({run_config.attack}), "
                  f"{run_config.rounds} rounds -> {folder}", file=sys.stderr, flush=True)
            _execute(args, run_config, folder)
        finals[name] = read_metrics(folder)[-1]
    _print_summary(finals, runs)
    if len(runs) > 1:
        picture = plot_comparison({name: folder for name, (_, folder) in runs.items()},
                                  out / COMPARISON_FILE)
        print(f"accuracy of the {len(runs)} runs: {picture}")


def _execute(args: argparse.Namespace, config: Any, folder: Path) -> None:
    """Run ``config`` into ``folder`` with the engine ``args`` chose."""
    from flwr_tempered.experiments.simulate import print_progress, simulate

    if args.engine == "flower":
        simulate(config, folder, progress=print_progress)
    elif args.engine == "nodes":
        from flwr_tempered.runtime.inprocess import run_in_process

        run_in_process(config, folder, progress=print_progress)
    else:
        from flwr_tempered.engine import EngineOptions, run_batched

        run_batched(config, folder, progress=print_progress,
                    options=EngineOptions(device=args.device, step_mode=args.step_mode))


def _check_buildable(config: Any) -> None:
    """Fail before starting Flower if a name or parameter is wrong: build what every node
    will build (topology, rule, a Byzantine node's attack) and check the dataset name."""
    from flwr_tempered.data import available_datasets
    from flwr_tempered.node import build_attack, build_rule, topology_of

    topology_of(config)
    build_rule(config)
    if config.attack != "none":
        build_attack(config, position=0)
    if config.dataset not in available_datasets():
        raise ValueError(f"unknown dataset {config.dataset!r}; available datasets: "
                         f"{', '.join(available_datasets())}")


def _print_summary(finals: dict[str, dict[str, Any]], runs: dict[str, Any]) -> None:
    def shown(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3e}" if abs(value) >= 1e4 else f"{value:.4f}"
        return str(value)

    keys = ["accuracy_mean", "accuracy_min", "accuracy_avg_model", "consensus_distance",
            "dropped_nodes", "rule_acceptance_rate", "rule_acceptance_honest",
            "rule_acceptance_byzantine", "rejected_malformed", "rule_rejected_nonfinite"]
    names = list(finals)
    print()
    print(f"{'final round':<26}" + "".join(f"{n:>16}" for n in names))
    for key in keys:
        if any(key in finals[n] for n in names):
            print(f"{key:<26}" + "".join(f"{shown(finals[n].get(key)):>16}" for n in names))
    local = finals.get("local")
    if local is not None and local.get("accuracy_mean") is not None:
        for name in names:
            final = finals[name]
            if name == "local" or final.get("accuracy_mean") is None:
                continue
            print(f"{name} against training alone: mean "
                  f"{final['accuracy_mean'] - local['accuracy_mean']:+.4f}, worst honest node "
                  f"{final['accuracy_min'] - local['accuracy_min']:+.4f}")
    for name in names:
        print(f"results ({name}): {runs[name][1]}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flwr-tempered``."""
    parser = argparse.ArgumentParser(
        prog="flwr-tempered",
        description="Byzantine-robust decentralized federated learning on Flower.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(commands)
    listing = commands.add_parser("list", help="print the available rules, attacks, topologies")
    listing.add_argument(
        "what", nargs="*", metavar="SECTION",
        help=f"sections to print: {', '.join(SECTIONS)} (default: all)",
    )
    topo = commands.add_parser("topology", help="build a topology and print its numbers")
    topo.add_argument("name", help="topology name (see `flwr-tempered list topologies`)")
    topo.add_argument(
        "--topology-arg", action="append", default=[], metavar="KEY=VALUE",
        help="a topology parameter (repeatable), e.g. --topology-arg q=10",
    )
    topo.add_argument("--plot", metavar="PNG", help="also draw the topology to this PNG file")
    add_ledger_parser(commands)
    add_reproduce_parsers(commands)
    add_new_parser(commands)
    add_peer_parser(commands)
    add_deploy_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flwr-tempered`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            unknown = [section for section in args.what if section not in SECTIONS]
            if unknown:
                raise ValueError(
                    f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
                )
            _print_catalogue(args.what or list(SECTIONS))
        elif args.command == "run":
            _run(args)
        elif args.command == "ledger":
            return run_ledger_command(args)
        elif args.command in ("reproduce", "plot"):
            return run_reproduce_command(args)
        elif args.command == "new":
            return run_new_command(args)
        elif args.command == "peer":
            return run_peer_command(args)
        elif args.command in ("clientapp", "supernode"):
            return run_deploy_command(args)
        elif args.command == "topology":
            params = parse_key_values(args.topology_arg, "--topology-arg")
            _describe_topology(args.name, params, args.plot)
    except ValueError as error:
        print(f"flwr-tempered: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
