"""What the ledger costs: signatures, block commits, verification, and its share of a round.

Prints two Markdown tables.

1. Micro-benchmarks, per Ed25519 implementation (OpenSSL through ``cryptography``, and
   pycryptodome): signing a message header, verifying one (cold, without the
   per-process memo), committing one block of the default run's size (proposal from the
   reports, checking ``2f + 1`` endorsements, one SQLite transaction with
   ``synchronous=FULL``), and verifying a stored ledger offline (blocks per second).
2. The default decentralized run (16 nodes, 3 ALIE attackers, BALANCE), without the
   ledger and with it (once per Ed25519 implementation): median wall time of a training
   round, the difference, and the ledger's own time (the relay's block building plus
   the nodes' signing, checking and endorsing, summed over nodes and spread over the
   Ray workers).

Run ``python benchmarks/ledger.py [--rounds 12] [--skip-run]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import describe_machine

from flwr_tempered.digest import array_digest
from flwr_tempered.experiments.simulate import simulate
from flwr_tempered.ledger import (
    BlockBuilder,
    Genesis,
    KeyPair,
    LedgerStore,
    Participant,
    default_f,
    verify_ledger,
)
from flwr_tempered.ledger.block import endorse
from flwr_tempered.ledger.crypto import BACKEND_VARIABLE, clear_verification_cache
from flwr_tempered.ledger.records import SignedHeader
from flwr_tempered.node import RunConfig

NODES, ATTACKERS, TARGETS = 16, 3, 4  # the default run: 13 broadcast + 3 x ~4 crafted


def _per_call(function: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def _participants(run_id: str) -> tuple[list[Participant], Genesis]:
    participants = [Participant(i, KeyPair.generate(), run_id) for i in range(NODES)]
    intro = [p.introduce() for p in participants]
    keys = {i: x["public_key"] for i, x in enumerate(intro)}
    proofs = {i: x["proof"] for i, x in enumerate(intro)}
    genesis = Genesis(run_id, 0, default_f(NODES), keys, proofs, {})
    for participant in participants:
        participant.adopt_genesis(genesis.body())
    return participants, genesis


def _round_headers(participants: list[Participant], round: int) -> list[SignedHeader]:
    rng = np.random.default_rng(round)
    headers = []
    for p in participants:
        if p.position < ATTACKERS:
            headers += [p.sign(round, array_digest(rng.random(4)), ATTACKERS + t)
                        for t in range(TARGETS)]
        else:
            headers.append(p.sign(round, array_digest(rng.random(4))))
    return headers


def micro(backend: str, blocks: int) -> dict[str, float]:
    """Timings with ``backend`` signing and verifying."""
    os.environ[BACKEND_VARIABLE] = backend
    clear_verification_cache()
    keys = KeyPair.generate()
    header = SignedHeader("run", 1, 0, array_digest(np.zeros(3)), "broadcast")
    message = header.signed_bytes()
    signature = keys.sign(message)
    sign_s = _per_call(lambda: keys.sign(message), 200)

    def cold_verify() -> None:
        clear_verification_cache()
        SignedHeader(**{**header.to_dict(), "signature": signature}).is_validly_signed(
            {0: keys.public_key})

    verify_s = _per_call(cold_verify, 200)
    with tempfile.TemporaryDirectory() as folder:
        participants, genesis = _participants("bench")
        builder = BlockBuilder(LedgerStore(Path(folder) / "ledger.sqlite"), genesis)
        commit_times = []
        for round in range(1, blocks + 1):
            headers = _round_headers(participants, round)
            clear_verification_cache()  # the relay meets each header once
            start = time.perf_counter()
            block = builder.propose(round, [h.to_dict() for h in headers], {})
            proposed = time.perf_counter() - start
            # the validators sign on their own machines, in parallel: not the relay's time
            endorsements = {p.position: endorse(p.keys, block.hash)
                            for p in participants[ATTACKERS:]}
            start = time.perf_counter()
            outcome = builder.commit(block, endorsements)
            commit_times.append(proposed + time.perf_counter() - start)
            assert outcome.committed, outcome.reason
        builder.store.close()
        clear_verification_cache()
        start = time.perf_counter()
        report = verify_ledger(folder)
        verify_ledger_s = time.perf_counter() - start
        assert len(report.blocks) == blocks
    os.environ.pop(BACKEND_VARIABLE, None)
    clear_verification_cache()
    return {"sign_us": sign_s * 1e6, "verify_us": verify_s * 1e6,
            "commit_ms": statistics.median(commit_times) * 1e3,
            "commitments": float(len(block.commitments)),
            "verify_blocks_per_s": blocks / verify_ledger_s}


def round_times(config: RunConfig, folder: Path) -> dict[str, float]:
    """Median per-round timings of the training rounds of ``config``."""
    simulate(config, folder)
    timings = json.loads((folder / "timings.json").read_text())
    training = [t for t in timings if 0 < t["round"] < config.rounds]
    workers = max(1, os.cpu_count() or 1)

    def median(key: str) -> float:
        return statistics.median(t.get(key, 0.0) for t in training)

    return {"wall_s": median("total_s"), "relay_ledger_s": median("ledger_s"),
            "nodes_ledger_s": median("nodes_time_ledger_s") / workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--skip-run", action="store_true", help="micro-benchmarks only")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print()
    print(f"block: {NODES} validators (quorum {2 * default_f(NODES) + 1}), "
          f"{NODES - ATTACKERS} broadcast + {ATTACKERS}x{TARGETS} per-recipient commitments")
    print()
    print("| Ed25519 via | sign a header | verify a header (cold) | commit a block "
          "| verify a ledger |")
    print("|---|---|---|---|---|")
    for backend in ("openssl", "pycryptodome"):
        r = micro(backend, args.blocks)
        print(f"| {backend} | {r['sign_us']:.0f} µs | {r['verify_us']:.0f} µs "
              f"| {r['commit_ms']:.1f} ms | {r['verify_blocks_per_s']:.0f} blocks/s |", flush=True)
    if args.skip_run:
        return
    print()
    common = {"rounds": args.rounds, "eval_every": args.rounds}
    with tempfile.TemporaryDirectory() as folder:
        off = round_times(RunConfig(**common, ledger=False), Path(folder) / "off")
        on = {}
        for backend in ("openssl", "pycryptodome"):
            os.environ[BACKEND_VARIABLE] = backend  # Ray's workers inherit it
            try:
                on[backend] = round_times(RunConfig(**common), Path(folder) / backend)
            finally:
                os.environ.pop(BACKEND_VARIABLE, None)
    print(f"default run, {args.rounds} rounds, median training round:")
    print()
    print("| ledger | round wall time | ledger's own time (relay + nodes / workers) "
          "| share of the round | wall-time difference |")
    print("|---|---|---|---|---|")
    print(f"| off | {off['wall_s'] * 1e3:.0f} ms | - | - | - |")
    for backend, r in on.items():
        own = r["relay_ledger_s"] + r["nodes_ledger_s"]
        print(f"| on, {backend} | {r['wall_s'] * 1e3:.0f} ms | {own * 1e3:.1f} ms "
              f"({r['relay_ledger_s'] * 1e3:.1f} + {r['nodes_ledger_s'] * 1e3:.1f}) "
              f"| {own / r['wall_s']:.1%} | {(r['wall_s'] - off['wall_s']) / r['wall_s']:+.1%} |")


if __name__ == "__main__":
    main()
