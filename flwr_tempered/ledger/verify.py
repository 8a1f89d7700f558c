"""Offline verification of a whole ledger, with the public keys of its genesis alone.

:func:`verify_ledger` checks, block by block: the canonical encoding of every body, the
stored hash, the hash chain, heights and rounds in order, the run id, the Merkle root,
every commitment's signature, every evidence record (and that the evidence is exactly
what the commitments prove), and a quorum of valid, distinct validator signatures. The
first failure raises :class:`LedgerError` naming the block and the reason.

What it cannot see without an outside reference: blocks cut from the end of the chain.
Pin the head hash it prints (``--head``) to check that too.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr_tempered.digest import is_digest

from .block import Block, Genesis, endorsement_is_valid
from .records import Evidence, MalformedRecordError, Rejection
from .store import LedgerStore, encode_signatures, ledger_path


class LedgerError(Exception):
    """The ledger fails verification at ``height`` (``round`` when known)."""

    def __init__(self, height: int | None, reason: str, round: int | None = None) -> None:
        self.height, self.round, self.reason = height, round, reason
        where = "ledger" if height is None else (
            "genesis block" if height == 0 else
            f"block {height}" + (f" (round {round})" if round is not None else ""))
        super().__init__(f"{where}: {reason}")


@dataclass
class LedgerReport:
    """What a verified ledger holds."""

    path: Path
    genesis: Genesis
    blocks: list[Block] = field(default_factory=list)
    signers: list[list[int]] = field(default_factory=list)
    uncommitted: list[tuple[int, str]] = field(default_factory=list)
    head_hash: str = ""

    @property
    def rounds(self) -> list[int]:
        return [b.round for b in self.blocks]

    @property
    def evidence(self) -> list[Evidence]:
        return [e for b in self.blocks for e in b.evidence]

    @property
    def rejections(self) -> list[Rejection]:
        return [r for b in self.blocks for r in b.rejections]

    @property
    def equivocators(self) -> list[int]:
        return sorted({e.sender for e in self.evidence})


def _signatures(text: str, height: int, round: int) -> dict[int, str]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise LedgerError(height, f"signatures are not valid JSON: {error}", round) from None
    if not isinstance(entries, list):
        raise LedgerError(height, "signatures must be a list", round)
    signatures: dict[int, str] = {}
    for entry in entries:
        if (not isinstance(entry, dict) or set(entry) != {"validator", "signature"}
                or isinstance(entry["validator"], bool) or not isinstance(entry["validator"], int)
                or not isinstance(entry["signature"], str)):
            raise LedgerError(height, f"malformed signature entry {entry!r}", round)
        if entry["validator"] in signatures:
            raise LedgerError(height, f"validator {entry['validator']} signed twice", round)
        signatures[entry["validator"]] = entry["signature"]
    if encode_signatures(signatures) != text:
        raise LedgerError(height, "signatures are not in canonical form", round)
    return signatures


def verify_ledger(path: str | Path, *, head: str | None = None) -> LedgerReport:
    """Verify the ledger at ``path`` (a file or a run folder holding ``ledger.sqlite``).

    Returns a :class:`LedgerReport`; raises :class:`LedgerError` at the first bad block,
    or ``FileNotFoundError`` when there is no ledger. ``head`` is an expected head hash.
    """
    file = ledger_path(path)
    try:
        store = LedgerStore(file, create=False)
        rows = list(store.rows())
        uncommitted = store.uncommitted()
        store.close()
    except sqlite3.DatabaseError as error:
        raise LedgerError(None, f"not a readable ledger database: {error}") from None
    if not rows:
        raise LedgerError(None, "the ledger holds no genesis block")
    first = rows[0]
    if first.height != 0 or first.round != 0:
        raise LedgerError(first.height, "the first stored block is not the genesis block")
    try:
        genesis = Genesis.from_body(first.body)
    except MalformedRecordError as error:
        raise LedgerError(0, str(error)) from None
    if first.hash != genesis.hash:
        raise LedgerError(0, "stored hash does not match the genesis body")
    if first.signatures != "[]":
        raise LedgerError(0, "the genesis block carries no endorsements")
    reason = genesis.problem()
    if reason is not None:
        raise LedgerError(0, reason)
    report = LedgerReport(path=file, genesis=genesis, uncommitted=uncommitted,
                          head_hash=genesis.hash)
    previous_round = 0
    for expected_height, row in enumerate(rows[1:], start=1):
        if row.height != expected_height:
            raise LedgerError(expected_height, f"block {expected_height} is missing "
                              f"(found block {row.height} next)")
        try:
            block = Block.from_body(row.body)
        except MalformedRecordError as error:
            raise LedgerError(row.height, str(error), row.round) from None
        checks: list[tuple[bool, str]] = [
            (row.hash == block.hash, "stored hash does not match the block body"),
            (block.height == row.height, f"body says height {block.height}"),
            (block.round == row.round, f"body says round {block.round}, row says {row.round}"),
            (block.run_id == genesis.run_id, "block belongs to another run"),
            (is_digest(block.prev_hash) and block.prev_hash == report.head_hash,
             "previous-block hash does not match the block before it"),
            (block.round > previous_round,
             f"round {block.round} does not come after round {previous_round}"),
        ]
        for ok, why in checks:
            if not ok:
                raise LedgerError(row.height, why, block.round)
        reason = block.problem(genesis.keys)
        if reason is not None:
            raise LedgerError(row.height, reason, block.round)
        signatures = _signatures(row.signatures, row.height, block.round)
        for validator, signature in signatures.items():
            if not endorsement_is_valid(genesis.keys, validator, block.hash, signature):
                raise LedgerError(row.height, f"endorsement by validator {validator} is invalid",
                                  block.round)
        if len(signatures) < genesis.quorum:
            raise LedgerError(row.height, f"only {len(signatures)} endorsements, quorum is "
                              f"{genesis.quorum}", block.round)
        report.blocks.append(block)
        report.signers.append(sorted(signatures))
        report.head_hash, previous_round = block.hash, block.round
    if head is not None and head != report.head_hash:
        raise LedgerError(None, f"head hash {report.head_hash} is not the expected {head} "
                          "(blocks were cut from the end, or this is another ledger)")
    return report


def summarize(report: LedgerReport) -> dict[str, Any]:
    """The numbers ``flwr-tempered ledger show`` prints, as a dictionary."""
    reasons: dict[str, int] = {}
    for rejection in report.rejections:
        reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
    return {
        "run_id": report.genesis.run_id,
        "nodes": report.genesis.n,
        "f": report.genesis.f,
        "quorum": report.genesis.quorum,
        "blocks": len(report.blocks),
        "rounds": report.rounds,
        "commitments": sum(len(b.commitments) for b in report.blocks),
        "rejections": reasons,
        "evidence": [{"node": e.sender, "round": e.round,
                      "digests": [e.first.digest, e.second.digest]} for e in report.evidence],
        "equivocators": report.equivocators,
        "uncommitted": [{"round": r, "reason": why} for r, why in report.uncommitted],
        "head_hash": report.head_hash,
    }
