"""Endorsements shared between peers, and the evidence that proposals conflicted.

A :class:`Vote` is what a validator shares with the other validators about a block it
endorsed: the block's bytes and the valid endorsements it knows of (its own and those it
gathered from the others' votes). With them a node assembles the commit certificate
(``2f + 1`` endorsements) itself instead of depending on the relay to collect them, and a
node the relay never showed the proposal learns it from its peers.

A :class:`ProposalConflict` is two different blocks for the same round, each endorsed by
a registered validator. The relay proposes one block per round and an honest validator
endorses at most one, so such a pair shows that different proposals circulated: the
relay showed different nodes different blocks (or a Byzantine validator endorsed one it
made up). Anyone holding the genesis can check it (:meth:`ProposalConflict.problem`).
This is the peer-to-peer side of the BFT commit of Castro and Liskov, "Practical
Byzantine Fault Tolerance" (OSDI 1999): validators exchange their endorsements
(prepares) directly rather than through the proposer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .block import Block, Genesis, endorsement_is_valid
from .crypto import sha256_hex
from .records import MalformedRecordError, _exact_keys, _field, is_position


@dataclass(frozen=True)
class Vote:
    """A block (its canonical bytes) and endorsements of it by validators (position ->
    signature over the block's hash). Parsed strictly; the signatures are checked by
    whoever uses them (:meth:`valid_signatures`)."""

    block_hash: str
    body: bytes
    signatures: Mapping[int, str]

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.block_hash, "block": self.body.decode("ascii"),
                "signatures": {str(v): s for v, s in sorted(self.signatures.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> Vote:
        data = _exact_keys(data, {"hash", "block", "signatures"}, "vote")
        signatures = data["signatures"]
        if not isinstance(signatures, Mapping) or not all(
                isinstance(v, str) and is_position(v) and isinstance(s, str)
                for v, s in signatures.items()):
            raise MalformedRecordError("vote: signatures must map node positions to strings")
        body = _field(data, "block", str, "vote")
        if not body.isascii():
            raise MalformedRecordError("vote: the block must be ASCII (canonical JSON)")
        block_hash = _field(data, "hash", str, "vote")
        if sha256_hex(body.encode("ascii")) != block_hash:
            raise MalformedRecordError(f"vote: the block does not hash to {block_hash[:12]}…")
        return cls(block_hash, body.encode("ascii"),
                   {int(v): s for v, s in signatures.items()})

    def valid_signatures(self, public_keys: Mapping[int, str],
                         skip: Mapping[int, str] | None = None) -> dict[int, str]:
        """The endorsements that check against the run's keys (those in ``skip``, already
        known, are not checked again)."""
        skip = skip or {}
        return {v: s for v, s in self.signatures.items() if v not in skip
                and endorsement_is_valid(public_keys, v, self.block_hash, s)}


@dataclass(frozen=True)
class ProposalConflict:
    """Two different blocks of one round, each endorsed by at least one validator."""

    round: int
    first: Vote
    second: Vote

    @classmethod
    def of(cls, round: int, a: Vote, b: Vote) -> ProposalConflict:
        """The conflict in canonical order (by block hash), so that every node that finds
        it records the same bytes."""
        first, second = sorted((a, b), key=lambda vote: vote.block_hash)
        return cls(round, first, second)

    @property
    def hashes(self) -> tuple[str, str]:
        return self.first.block_hash, self.second.block_hash

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "conflicting_proposals", "round": self.round,
                "votes": [self.first.to_dict(), self.second.to_dict()]}

    @classmethod
    def from_dict(cls, data: Any) -> ProposalConflict:
        data = _exact_keys(data, {"kind", "round", "votes"}, "proposal conflict")
        if data["kind"] != "conflicting_proposals":
            raise MalformedRecordError(f"proposal conflict: unknown kind {data['kind']!r}")
        votes = data["votes"]
        if not isinstance(votes, list) or len(votes) != 2:
            raise MalformedRecordError("proposal conflict: votes must be a list of two votes")
        return cls(_field(data, "round", int, "proposal conflict"),
                   Vote.from_dict(votes[0]), Vote.from_dict(votes[1]))

    def problem(self, genesis: Genesis) -> str | None:
        """Why this is not valid evidence, or ``None``: two different valid blocks of this
        run and round, in canonical order, each with a valid endorsement."""
        if self.first.block_hash >= self.second.block_hash:
            return "the blocks are the same or not in canonical order"
        for vote in (self.first, self.second):
            try:
                block = Block.from_body(vote.body)
            except MalformedRecordError as error:
                return f"block {vote.block_hash[:12]}… is malformed: {error}"
            if block.run_id != genesis.run_id or block.round != self.round:
                return f"block {vote.block_hash[:12]}… is not of this run's round {self.round}"
            reason = block.problem(genesis.keys)
            if reason is not None:
                return f"block {vote.block_hash[:12]}… is invalid: {reason}"
            if not vote.valid_signatures(genesis.keys):
                return f"no valid endorsement of block {vote.block_hash[:12]}…"
        return None
