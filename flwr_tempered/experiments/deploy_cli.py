"""``flwr-tempered clientapp`` and ``flwr-tempered supernode``: the fast deployment setup
(a warm ClientApp worker per SuperNode, and a SuperNode that polls faster); see
:mod:`flwr_tempered.runtime.warm_clientapp`."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_deploy_parsers", "run_deploy_command"]


def add_deploy_parsers(commands: Any) -> None:
    """Register ``clientapp`` and ``supernode`` on the ``flwr-tempered`` command line."""
    worker = commands.add_parser(
        "clientapp", help="a long-lived ClientApp worker for one SuperNode "
                          "(flower-supernode --isolation process)",
        description="Run the ClientApp of every message a SuperNode receives in this one "
                    "long-lived process (torch, data and model stay loaded). Start one per "
                    "`flower-supernode --isolation process --port PORT`, with "
                    "--runtime-api-address 127.0.0.1:PORT. Uses Flower 1.41 internals.")
    worker.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT",
                        help="the SuperNode's runtime API (its --port)")
    worker.add_argument("--poll", type=float, default=0.02, metavar="SECONDS",
                        help="how often to ask the SuperNode for a task (default 0.02)")
    supernode = commands.add_parser(
        "supernode", help="flower-supernode with its polling sleeps capped",
        description="Flower's SuperNode, given the arguments after --, whose idle sleeps "
                    "(3 s between polls of the SuperLink) are capped at --poll-cap seconds. "
                    "Uses Flower 1.41 internals.")
    supernode.add_argument("--poll-cap", type=float, default=0.1, metavar="SECONDS",
                           help="longest sleep between two polls (default 0.1)")
    supernode.add_argument("supernode_args", nargs=argparse.REMAINDER,
                           help="-- then flower-supernode's own arguments")


def run_deploy_command(args: argparse.Namespace) -> int:
    """Run the worker or the SuperNode until stopped; the exit status."""
    from flwr_tempered.runtime.warm_clientapp import run_fast_supernode, run_warm_clientapp

    if args.command == "clientapp":
        if args.poll <= 0:
            raise ValueError(f"--poll must be > 0, got {args.poll}")
        run_warm_clientapp(args.runtime_api_address, args.poll)
        return 0
    if args.poll_cap <= 0:
        raise ValueError(f"--poll-cap must be > 0, got {args.poll_cap}")
    rest = list(args.supernode_args)
    run_fast_supernode(args.poll_cap, rest[1:] if rest[:1] == ["--"] else rest)
    return 0
