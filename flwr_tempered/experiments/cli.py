"""The ``flwr-tempered`` command line.

``flwr-tempered list`` prints every aggregation rule, attack and topology with its
parameters; ``flwr-tempered topology NAME --topology-arg KEY=VALUE`` builds one topology
and prints its numbers (nodes, Byzantine nodes, spectral gap, largest Byzantine weight),
optionally drawing it.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

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

    topo = get_topology(name, **params)
    honest_degrees = [len(topo.neighbors(i)) for i in topo.honest]
    print(f"topology      {topo.name} {topo.params}")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flwr-tempered``."""
    parser = argparse.ArgumentParser(
        prog="flwr-tempered",
        description="Byzantine-robust decentralized federated learning on Flower.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
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
        elif args.command == "topology":
            params = parse_key_values(args.topology_arg, "--topology-arg")
            _describe_topology(args.name, params, args.plot)
    except ValueError as error:
        print(f"flwr-tempered: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
