"""``flwr-tempered ledger verify|show PATH``: check and read a run's ledger offline.

``verify`` exits 0 and prints the head hash when every block checks out, and exits 1
naming the first bad block and why. ``show`` verifies too, then prints what the ledger
records: validators, blocks, rejected messages by reason, equivocation evidence, rounds
that were not committed, and a table per round (``--json`` for a machine-readable dump).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flwr_tempered.ledger import LedgerError, LedgerReport, summarize, verify_ledger


def add_ledger_parser(commands: Any) -> None:
    """Register ``ledger verify`` and ``ledger show``."""
    ledger = commands.add_parser("ledger", help="verify or show a run's ledger",
                                 description="Check or read a run's ledger offline.")
    actions = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = actions.add_parser("verify", help="check the whole chain; exit 1 at a bad block")
    show = actions.add_parser("show", help="verify, then summarise what the ledger records")
    for parser in (verify, show):
        parser.add_argument("path", help="ledger.sqlite, or a results folder holding it")
        parser.add_argument("--head", metavar="HASH",
                            help="expected head hash (detects blocks cut from the end)")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")


def _describe(report: LedgerReport) -> None:
    summary = summarize(report)
    genesis = report.genesis
    rounds = summary["rounds"]
    print(f"ledger        {report.path}")
    print(f"run id        {genesis.run_id}")
    print(f"validators    {genesis.n} (f = {genesis.f}, quorum {genesis.quorum})")
    span = f"rounds {rounds[0]}-{rounds[-1]}" if rounds else "no rounds"
    print(f"blocks        {len(report.blocks)} ({span}), head {report.head_hash}")
    print(f"commitments   {summary['commitments']}")
    reasons = summary["rejections"]
    print("rejections    " + (", ".join(f"{r} {c}" for r, c in sorted(reasons.items()))
                              if reasons else "none"))
    equivocators = summary["equivocators"]
    print(f"evidence      {len(summary['evidence'])} equivocation records" + (
        f" against nodes {', '.join(map(str, equivocators))}" if equivocators else ""))
    uncommitted = summary["uncommitted"]
    print("uncommitted   " + ("none" if not uncommitted else f"{len(uncommitted)} rounds"))
    for entry in uncommitted:
        print(f"  round {entry['round']}: {entry['reason']}")
    print()
    print(f"{'round':>6} {'commitments':>12} {'rejections':>11} {'evidence':>9} "
          f"{'endorsed by':>12}")
    for block, signers in zip(report.blocks, report.signers, strict=True):
        print(f"{block.round:>6} {len(block.commitments):>12} {len(block.rejections):>11} "
              f"{len(block.evidence):>9} {len(signers):>12}")


def run_ledger_command(args: argparse.Namespace) -> int:
    """Run ``ledger verify`` or ``ledger show``; return the exit status."""
    try:
        report = verify_ledger(args.path, head=args.head)
    except FileNotFoundError as error:
        print(f"flwr-tempered: error: {error}", file=sys.stderr)
        return 2
    except LedgerError as error:
        print(f"FAILED {args.path}: {error}", file=sys.stderr)
        return 1
    if args.ledger_command == "verify":
        print(f"OK {report.path}: genesis and {len(report.blocks)} blocks verify "
              f"({len(report.evidence)} evidence records, {len(report.rejections)} rejected "
              f"messages); head {report.head_hash}")
    elif args.json:
        print(json.dumps(summarize(report), indent=2))
    else:
        _describe(report)
    return 0
