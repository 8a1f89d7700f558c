"""The block builder: turns what the nodes report each round into committed blocks.

It runs next to the relay but is trusted with nothing: it only gathers the headers the
senders signed and the receivers' reports into a proposal, which every validator checks
before endorsing, and it stores a block only once ``2f + 1`` valid endorsements are in.
A block with fewer is not stored; the reason goes to the ledger's ``uncommitted`` table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .block import Block, Genesis, endorsement_is_valid, make_block
from .records import MalformedRecordError, Rejection, SignedHeader
from .store import LedgerStore


@dataclass(frozen=True)
class CommitOutcome:
    """Whether a round's block was committed, by whom, or why not."""

    round: int
    committed: bool
    signers: tuple[int, ...]
    reason: str = ""


class BlockBuilder:
    """Builds and commits the blocks of one run into ``store``."""

    def __init__(self, store: LedgerStore, genesis: Genesis) -> None:
        reason = genesis.problem()
        if reason is not None:
            raise ValueError(f"invalid genesis: {reason}")
        self.store, self.genesis = store, genesis
        store.write_genesis(genesis)
        self.head_hash, self.height = genesis.hash, 0
        self.outcomes: list[CommitOutcome] = []

    def _valid_headers(self, round: int, candidates: Iterable[Any]) -> set[SignedHeader]:
        headers = set()
        for candidate in candidates:
            try:
                header = SignedHeader.from_dict(candidate)
            except MalformedRecordError:
                continue
            if (header.run_id == self.genesis.run_id and header.round == round
                    and header.is_validly_signed(self.genesis.keys)):
                headers.add(header)
        return headers

    def propose(self, round: int, sent: Iterable[Any],
                reports: Mapping[int, Mapping[str, Any]]) -> Block:
        """The block of ``round``: the valid headers the senders returned (``sent``) and
        the receivers accepted, and the rejections each receiver reported about itself."""
        candidates = list(sent)
        rejections: set[Rejection] = set()
        for receiver, report in reports.items():
            if report.get("round") != round:
                continue
            candidates.extend(report.get("accepted", []))
            for entry in report.get("rejected", []):
                try:
                    rejection = Rejection.from_dict(entry)
                except MalformedRecordError:
                    continue
                if (rejection.receiver == receiver and rejection.round == round
                        and rejection.sender in self.genesis.keys):
                    rejections.add(rejection)
        return make_block(height=self.height + 1, round=round, run_id=self.genesis.run_id,
                          prev_hash=self.head_hash, timestamp_ms=int(time.time() * 1000),
                          commitments=sorted(self._valid_headers(round, candidates)),
                          rejections=sorted(rejections))

    def commit(self, block: Block, endorsements: Mapping[int, str],
               refusals: Mapping[int, str] | None = None) -> CommitOutcome:
        """Store ``block`` if at least a quorum of valid endorsements came back."""
        block_hash = block.hash
        valid = {v: s for v, s in sorted(endorsements.items())
                 if endorsement_is_valid(self.genesis.keys, v, block_hash, s)}
        quorum = self.genesis.quorum
        if block.prev_hash != self.head_hash or block.height != self.height + 1:
            outcome = CommitOutcome(block.round, False, tuple(valid),
                                    "proposal does not extend the current head")
        elif len(valid) < quorum:
            silent = sorted(set(self.genesis.keys) - set(endorsements) - set(refusals or {}))
            why = [f"{len(valid)} valid endorsements of {self.genesis.n} validators, "
                   f"quorum is {quorum}"]
            if len(endorsements) > len(valid):
                why.append(f"{len(endorsements) - len(valid)} invalid")
            why += [f"node {v} refused: {r}" for v, r in sorted((refusals or {}).items())]
            if silent:
                why.append(f"no answer from nodes {', '.join(map(str, silent))}")
            outcome = CommitOutcome(block.round, False, tuple(valid), "; ".join(why))
        else:
            self.store.append(block, valid)
            self.head_hash, self.height = block_hash, block.height
            outcome = CommitOutcome(block.round, True, tuple(valid))
        if not outcome.committed:
            self.store.record_uncommitted(block.round, outcome.reason)
        self.outcomes.append(outcome)
        return outcome
