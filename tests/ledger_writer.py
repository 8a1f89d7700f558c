"""Append blocks to a ledger until killed (the child process of tests/test_ledger_crash.py).

Usage: ``python tests/ledger_writer.py LEDGER_FILE``. Four nodes (f = 1) with fixed keys
and a fixed genesis, so a second writer on the same file finds the same genesis and
resumes after the stored head. Prints ``ready <height>`` once the genesis (or the head
it resumes from) is on disk, then ``committed <height>`` after each block is committed,
flushed at once, so the parent knows a lower bound of what the file must hold.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

import numpy as np

from flwr_tempered.digest import array_digest
from flwr_tempered.ledger import (
    BlockBuilder,
    Genesis,
    KeyPair,
    LedgerStore,
    Participant,
    verify_ledger,
)

NODES = 4
RUN_ID = "run-crash"
CREATED_MS = 1_700_000_000_000


class ResumedBuilder(BlockBuilder):
    """A builder continuing a stored chain instead of writing a new genesis."""

    def __init__(self, store: LedgerStore, genesis: Genesis, head_hash: str,
                 height: int) -> None:
        self.store, self.genesis = store, genesis
        self.head_hash, self.height = head_hash, height
        self.outcomes = []


def main(path: Path) -> None:
    keys = [KeyPair(hashlib.sha256(f"crash-key-{i}".encode()).digest()) for i in range(NODES)]
    nodes = [Participant(i, keys[i], RUN_ID) for i in range(NODES)]
    introductions = [node.introduce() for node in nodes]
    genesis = Genesis(RUN_ID, CREATED_MS, 1,
                      {i: intro["public_key"] for i, intro in enumerate(introductions)},
                      {i: intro["proof"] for i, intro in enumerate(introductions)})
    for node in nodes:
        node.adopt_genesis(genesis.body())
    resume = path.is_file()
    builder: BlockBuilder
    if resume:
        report = verify_ledger(path)
        assert report.genesis.hash == genesis.hash, "another run's ledger"
        round = report.rounds[-1] if report.rounds else 0
        store = LedgerStore(path)
        builder = ResumedBuilder(store, genesis, report.head_hash, len(report.blocks))
        for node in nodes:  # the nodes, restarted too, keep the head they had certified
            node.head = (len(report.blocks), report.head_hash)
    else:
        round = 0
        store = LedgerStore(path)
        builder = BlockBuilder(store, genesis)
    print(f"ready {builder.height}", flush=True)
    while True:
        round += 1
        sent = []
        for node in nodes:
            array = np.array([node.position, round], dtype=np.float32)
            header = node.sign(round, array_digest(array))
            for receiver in nodes:
                if receiver is not node:
                    receiver.receive(round, node.position, header.digest, header.to_dict(),
                                     functools.partial(np.copy, array))
            sent.append(header.to_dict())
        block = builder.propose(round, sent, {n.position: n.report(round) for n in nodes})
        endorsements = {}
        for node in nodes:
            signature, refusal = node.endorse(block.body())
            assert signature is not None, refusal
            endorsements[node.position] = signature
        outcome = builder.commit(block, endorsements)
        assert outcome.committed, outcome.reason
        for node in nodes:  # the certificate, as the next message brings it
            assert node.accept_certificate(block.hash, endorsements)[1] is None
        print(f"committed {block.height}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
