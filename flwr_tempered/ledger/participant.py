"""A node's side of the ledger, free of any transport.

A :class:`Participant` holds the node's key pair and what it knows about the run: the
genesis it pinned (public keys of every node), the messages it accepted and rejected in
recent rounds, the blocks it endorsed, and the proven equivocators it excludes. It

* signs the header of every model the node sends (:meth:`sign`),
* checks every header it receives before the model may be aggregated (:meth:`receive`),
* checks a proposed block before endorsing it (:meth:`endorse`): valid contents, its own
  accepted and rejected messages all present (the relay cannot censor its reports), at
  most one block endorsed per round, and a parent that is the last block this node holds
  a commit certificate for; and learns the evidence the block carries,
* checks commit certificates (:meth:`accept_certificate`: a quorum of the genesis' keys
  endorsed a block this node endorsed, extending its head) and so keeps the chain's head
  itself. A relay that withholds a committed block, reorders blocks or proposes on an
  older parent is refused by every honest node, not only caught by an offline
  ``verify`` with a pinned head,
* shares its endorsements with the other validators and learns theirs (:meth:`vote`,
  :meth:`learn_vote`): endorsements merged along the graph let the node assemble a
  commit certificate itself, show it proposals the relay kept from it, and expose a
  relay that showed different nodes different proposals (:class:`~flwr_tempered.ledger.
  votes.ProposalConflict`).

Its state is a small JSON dictionary (:meth:`state_dict`), kept with the node.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .block import Block, Genesis, endorse, endorsement_is_valid, key_proof_bytes
from .crypto import KeyPair, sha256_hex
from .records import (
    BROADCAST,
    MalformedRecordError,
    Rejection,
    SignedHeader,
    header_problem,
    sign_header,
)
from .votes import ProposalConflict, Vote

#: What honest nodes do with a node once evidence proves it equivocated.
EQUIVOCATOR_POLICIES = ("keep", "exclude")

#: How many recent rounds of reports a participant remembers (to check proposals).
REMEMBERED_ROUNDS = 4

#: At most this many uncertified blocks are kept (blocks learned from peers' votes
#: give way first), so a peer cannot grow a node's state without bound.
MAX_PENDING = 16

#: How many proposal conflicts a participant keeps as evidence (the latest).
KEPT_CONFLICTS = 8

T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def _checked_genesis(body: bytes) -> tuple[Genesis, str | None]:
    """A genesis body parsed and checked, memoised per process: a node rebuilds its
    participant from its state for every message, and in simulation one process hosts
    many nodes of the same run."""
    genesis = Genesis.from_body(body)
    return genesis, genesis.problem()


@functools.lru_cache(maxsize=64)
def _checked_block(body: bytes, genesis_body: bytes) -> tuple[Block | None, str | None]:
    """A proposal parsed and checked against the genesis' keys (memoised like the
    genesis: the check depends on nothing else)."""
    try:
        block = Block.from_body(body)
    except MalformedRecordError as error:
        return None, f"malformed proposal: {error}"
    return block, block.problem(_checked_genesis(genesis_body)[0].keys)


class LedgerProtocolError(RuntimeError):
    """The relay broke the protocol in a way the node refuses to go along with (for
    example, a different genesis than the one the node pinned)."""


@dataclass
class VoteOutcome:
    """What a peer's vote taught this node (all ``None`` when nothing)."""

    #: A block this node now holds a commit certificate for, assembled from the
    #: endorsements its peers shared.
    certified: Block | None = None
    #: Evidence that this node and a peer's vote endorsed different blocks of a round.
    conflict: ProposalConflict | None = None
    #: A proposal extending this node's head, endorsed by a peer, for a round this
    #: node has endorsed nothing in (the relay did not show it to this node): the
    #: caller may :meth:`Participant.endorse` it.
    proposal: bytes | None = None
    #: Why the vote was of no use (an invalid block, another run's), for the report.
    problem: str | None = None


@dataclass
class _RoundRecord:
    accepted: set[SignedHeader] = field(default_factory=set)
    rejected: set[Rejection] = field(default_factory=set)
    sent: set[SignedHeader] = field(default_factory=set)


class Participant:
    """Node ``position``'s identity and view of the ledger."""

    def __init__(self, position: int, keys: KeyPair, run_id: str, *,
                 policy: str = "keep") -> None:
        if policy not in EQUIVOCATOR_POLICIES:
            raise ValueError("equivocator policy must be one of "
                             f"{', '.join(EQUIVOCATOR_POLICIES)}, got {policy!r}")
        self.position, self.keys, self.run_id, self.policy = position, keys, run_id, policy
        self.genesis: Genesis | None = None
        self.genesis_hash: str | None = None
        self.excluded: set[int] = set()
        self.endorsed: dict[int, str] = {}
        self._rounds: dict[int, _RoundRecord] = {}
        #: The last block this node holds a commit certificate for: (height, hash); the
        #: genesis (height 0) once pinned.
        self.head: tuple[int, str] | None = None
        #: Bodies of the blocks endorsed and not yet certified, by hash.
        self.pending: dict[str, str] = {}
        #: The head's block body and certificate (valid endorsements), to share with
        #: the other nodes; ``None`` while the head is the genesis.
        self.head_record: dict[str, Any] | None = None
        #: Valid endorsements known (own and peers') of each block in ``pending``.
        self.endorsements: dict[str, dict[int, str]] = {}
        #: Evidence of conflicting proposals found in peers' votes (the latest).
        self.conflicts: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position, "seed": self.keys.seed_hex, "run_id": self.run_id,
            "policy": self.policy, "genesis_hash": self.genesis_hash,
            "excluded": sorted(self.excluded),
            "endorsed": {str(r): h for r, h in self.endorsed.items()},
            "head": list(self.head) if self.head is not None else None,
            "pending": dict(self.pending),
            "head_record": self.head_record,
            "endorsements": {h: {str(v): sig for v, sig in sigs.items()}
                             for h, sigs in self.endorsements.items()},
            "conflicts": list(self.conflicts),
            "rounds": {str(r): {"accepted": [h.to_dict() for h in sorted(rec.accepted)],
                                "rejected": [x.to_dict() for x in sorted(rec.rejected)],
                                "sent": [h.to_dict() for h in sorted(rec.sent)]}
                       for r, rec in self._rounds.items()},
        }

    @classmethod
    def from_state_dict(cls, data: Mapping[str, Any], genesis_body: bytes | None = None
                        ) -> Participant:
        """Rebuild from :meth:`state_dict`; the pinned genesis is re-read from
        ``genesis_body`` when given (and must hash to the pinned value)."""
        participant = cls(int(data["position"]), KeyPair.from_hex(str(data["seed"])),
                          str(data["run_id"]), policy=str(data["policy"]))
        participant.excluded = {int(x) for x in data["excluded"]}
        participant.endorsed = {int(r): str(h) for r, h in data["endorsed"].items()}
        for r, rec in data["rounds"].items():
            participant._rounds[int(r)] = _RoundRecord(
                accepted={SignedHeader.from_dict(h) for h in rec["accepted"]},
                rejected={Rejection.from_dict(x) for x in rec["rejected"]},
                sent={SignedHeader.from_dict(h) for h in rec["sent"]},
            )
        participant.genesis_hash = data.get("genesis_hash")
        head = data.get("head")
        participant.head = (int(head[0]), str(head[1])) if head else None
        participant.pending = {str(h): str(b) for h, b in data.get("pending", {}).items()}
        participant.head_record = data.get("head_record")
        participant.endorsements = {str(h): {int(v): str(sig) for v, sig in sigs.items()}
                                    for h, sigs in data.get("endorsements", {}).items()}
        participant.conflicts = list(data.get("conflicts", []))
        if genesis_body is not None and participant.genesis_hash is not None:
            participant.adopt_genesis(genesis_body)
        return participant

    # ------------------------------------------------------------------- identity
    def introduce(self) -> dict[str, str]:
        """The public key to register in the genesis, with a proof of possession."""
        proof = self.keys.sign(key_proof_bytes(self.run_id, self.position, self.keys.public_key))
        return {"public_key": self.keys.public_key, "proof": proof}

    def adopt_genesis(self, body: bytes) -> Genesis:
        """Pin the run's genesis on first sight; afterwards insist on the same one."""
        digest = sha256_hex(body)
        if self.genesis is not None and digest == self.genesis_hash:
            return self.genesis
        if self.genesis_hash is not None and digest != self.genesis_hash:
            raise LedgerProtocolError(
                f"node {self.position}: the relay sent a different genesis than the pinned "
                f"{self.genesis_hash[:12]}…")
        genesis, reason = _checked_genesis(body)
        if reason is None and genesis.run_id != self.run_id:
            reason = "genesis is for another run"
        if reason is None and genesis.keys.get(self.position) != self.keys.public_key:
            reason = f"genesis does not register node {self.position}'s key"
        if reason is not None:
            raise LedgerProtocolError(f"node {self.position}: invalid genesis: {reason}")
        self.genesis, self.genesis_hash = genesis, digest
        if self.head is None:
            self.head = (0, genesis.hash)
        return genesis

    @property
    def public_keys(self) -> Mapping[int, str]:
        if self.genesis is None:
            raise LedgerProtocolError(f"node {self.position} has no genesis yet")
        return self.genesis.keys

    # ------------------------------------------------------------------- messages
    def _record(self, round: int) -> _RoundRecord:
        record = self._rounds.setdefault(round, _RoundRecord())
        for old in [r for r in self._rounds if r <= round - REMEMBERED_ROUNDS]:
            del self._rounds[old]
        return record

    def sign(self, round: int, digest: str, recipient: str | int = BROADCAST) -> SignedHeader:
        """Sign (and remember) the header of a model this node sends in ``round``."""
        header = sign_header(self.keys, run_id=self.run_id, round=round, sender=self.position,
                             digest=digest, recipient=recipient)
        self._record(round).sent.add(header)
        return header

    def sent_before(self, round: int) -> SignedHeader | None:
        """The latest header this node signed in a round before ``round`` (if remembered)."""
        earlier = [r for r, rec in self._rounds.items() if r < round and rec.sent]
        return min(self._rounds[max(earlier)].sent) if earlier else None

    def receive(self, round: int, sender: int, digest: str, header: Any,
                fetch: Callable[[], T]) -> tuple[T | None, str | None]:
        """Check a message from ``sender`` and, if it is authentic, fetch its model.

        Returns ``(model, None)`` or ``(None, reason)`` with a reason from
        :data:`~flwr_tempered.ledger.records.REJECTION_REASONS`. ``fetch`` raises
        ``LookupError`` for a model it cannot find and ``ValueError`` for bytes that do
        not match the digest. Either way the outcome is remembered for the block.
        """
        if isinstance(header, Mapping):  # parse once; a malformed one stays a mapping
            with contextlib.suppress(MalformedRecordError):
                header = SignedHeader.from_dict(header)
        reason = header_problem(header, self.public_keys, run_id=self.run_id, round=round,
                                sender=sender, recipient=self.position, digest=digest)
        if reason is None and sender in self.excluded:
            reason = "excluded"
        model: T | None = None
        if reason is None:
            try:
                model = fetch()
            except LookupError:
                reason = "missing_model"
            except ValueError:
                reason = "digest_mismatch"
        record = self._record(round)
        if reason is None:
            record.accepted.add(header)
        else:
            record.rejected.add(Rejection(round, self.position, sender, digest, reason))
        return model, reason

    def report(self, round: int) -> dict[str, Any]:
        """What this node tells the block builder about ``round``."""
        record = self._rounds.get(round, _RoundRecord())
        return {"round": round,
                "accepted": [h.to_dict() for h in sorted(record.accepted)],
                "rejected": [x.to_dict() for x in sorted(record.rejected)]}

    # -------------------------------------------------------------------- blocks
    def endorse(self, body: bytes) -> tuple[str | None, str | None]:
        """Check a proposed block; return ``(signature, None)`` or ``(None, refusal)``.

        Evidence in a valid block is learned: under the ``exclude`` policy its senders'
        messages are refused from then on.
        """
        block, reason = self._block_of(body)
        if block is None:
            return None, reason
        previous = self.endorsed.get(block.round)
        if previous is not None and previous != block.hash:
            return None, f"already endorsed another block for round {block.round}"
        assert self.head is not None
        height, head_hash = self.head
        record = self._rounds.get(block.round)
        if record is not None:
            if not record.accepted <= set(block.commitments):
                return None, "proposal omits a message this node accepted"
            if not record.sent <= set(block.commitments):
                return None, "proposal omits a message this node sent"
            if not record.rejected <= set(block.rejections):
                return None, "proposal omits a message this node rejected"
        if block.hash == head_hash:  # certified already, from the peers' endorsements
            self.endorsed[block.round] = block.hash
            return endorse(self.keys, block.hash), None
        if (block.prev_hash, block.height) != (head_hash, height + 1):
            return None, (f"proposal's parent is not the last certified block: it extends "
                          f"{block.prev_hash[:12]}… at height {block.height - 1}, this node's "
                          f"last certified block is {head_hash[:12]}… at height {height}")
        if self.policy == "exclude":
            self.excluded |= {e.sender for e in block.evidence}
        self.endorsed[block.round] = block.hash
        for old in [r for r in self.endorsed if r <= block.round - REMEMBERED_ROUNDS]:
            del self.endorsed[old]
        self.pending[block.hash] = body.decode("ascii")
        self._forget_below(block.height)
        signature = endorse(self.keys, block.hash)
        self.endorsements.setdefault(block.hash, {})[self.position] = signature
        return signature, None

    def _block_of(self, body: bytes) -> tuple[Block | None, str | None]:
        """The block ``body`` encodes, checked against the genesis' keys and this run, or
        ``(None, why not)``."""
        if self.genesis is None:
            raise LedgerProtocolError(f"node {self.position} has no genesis yet")
        block, reason = _checked_block(body, self.genesis.body())
        if block is None or reason is not None:
            return None, reason
        if block.run_id != self.run_id:
            return None, "the block is for another run"
        return block, None

    def _height_of(self, body: str) -> int:
        """The height of a kept block (-1 if it no longer checks; every kept body was
        checked when it was kept)."""
        block, _ = self._block_of(body.encode("ascii"))
        return block.height if block is not None else -1

    def _forget_below(self, height: int) -> None:
        """Drop the uncertified blocks (and their endorsements) below ``height``."""
        self.pending = {h: b for h, b in self.pending.items() if self._height_of(b) >= height}
        self.endorsements = {h: s for h, s in self.endorsements.items() if h in self.pending}

    def accept_certificate(self, block_hash: str, signatures: Mapping[int, str],
                           body: bytes | None = None) -> tuple[Block | None, str | None]:
        """Check a commit certificate and advance the head: ``(block, None)``, or
        ``(None, problem)`` when it does not hold (too few valid endorsements, an unknown
        or invalid block, or one that does not extend its head).

        The block is one this node endorsed, or ``body`` (a certified block a peer
        holds, fetched from its peer), which must hash to ``block_hash`` and be valid for
        the genesis' keys."""
        if self.genesis is None or self.head is None:
            raise LedgerProtocolError(f"node {self.position} has no genesis yet")
        if block_hash == self.head[1]:
            return None, None  # already certified (a repeated certificate)
        known = self.pending.get(block_hash)
        if known is None and body is not None:
            if sha256_hex(body) != block_hash:
                return None, f"block bytes do not hash to {block_hash[:12]}…"
            known = body.decode("ascii")
        if known is None:
            return None, f"certificate for block {block_hash[:12]}…, which this node never endorsed"
        block, reason = self._block_of(known.encode("ascii"))
        if block is None:
            return None, f"invalid certified block: {reason}"
        valid = [v for v, signature in signatures.items()
                 if endorsement_is_valid(self.genesis.keys, int(v), block_hash, signature)]
        if len(valid) < self.genesis.quorum:
            return None, (f"certificate for block {block_hash[:12]}… holds {len(valid)} valid "
                          f"endorsements, the quorum is {self.genesis.quorum}")
        if (block.prev_hash, block.height) != (self.head[1], self.head[0] + 1):
            return None, (f"certified block {block_hash[:12]}… does not extend this node's head "
                          f"{self.head[1][:12]}…")
        self.head = (block.height, block_hash)
        self.pending.pop(block_hash, None)
        self._forget_below(block.height + 1)
        self.head_record = {"height": block.height, "hash": block_hash, "block": known,
                            "signatures": {str(v): signatures[v] for v in valid}}
        return block, None

    # --------------------------------------------------------------------- votes
    def vote(self) -> Vote | None:
        """What this node shares with the other validators: the block it endorsed last, if not
        yet certified, with every valid endorsement of it this node knows."""
        if not self.endorsed:
            return None
        block_hash = self.endorsed[max(self.endorsed)]
        body = self.pending.get(block_hash)
        if body is None:
            return None
        return Vote(block_hash, body.encode("ascii"), dict(self.endorsements.get(block_hash, {})))

    def _own_vote(self, round: int) -> Vote | None:
        """This node's endorsement of its block of ``round``, while it holds the body."""
        block_hash = self.endorsed.get(round)
        if block_hash is None:
            return None
        body = self.pending.get(block_hash)
        if body is None and self.head_record is not None and self.head_record["hash"] == block_hash:
            body = str(self.head_record["block"])
        if body is None:
            return None
        return Vote(block_hash, body.encode("ascii"),
                    {self.position: endorse(self.keys, block_hash)})

    def learn_vote(self, vote: Vote) -> VoteOutcome:
        """Take in a peer's vote: its valid endorsements of a block extending this
        node's head are merged (a quorum of them certifies the block); a valid block this
        node endorsed nothing for is offered as a proposal; an endorsed block that
        differs from the one this node endorsed in the same round is kept as evidence.

        A vote never changes what this node endorses by itself, and endorsements that do
        not check against the genesis' keys are ignored."""
        if self.genesis is None or self.head is None:
            raise LedgerProtocolError(f"node {self.position} has no genesis yet")
        height, head_hash = self.head
        if vote.block_hash == head_hash:
            return VoteOutcome()
        block, reason = self._block_of(vote.body)
        if block is None:
            return VoteOutcome(problem=f"a peer's vote holds an invalid block: {reason}")
        if block.height < height:
            return VoteOutcome()  # old news
        known = self.endorsements.get(vote.block_hash, {})
        endorsed = {**known, **vote.valid_signatures(self.genesis.keys, skip=known)}
        if not endorsed:
            return VoteOutcome()
        outcome = VoteOutcome(conflict=self._conflict_with(block.round, vote, endorsed))
        extends_head = (block.prev_hash, block.height) == (head_hash, height + 1)
        if not extends_head or (block.hash not in self.pending
                                and len(self.pending) >= MAX_PENDING):
            return outcome
        self.pending.setdefault(block.hash, vote.body.decode("ascii"))
        self.endorsements[block.hash] = endorsed
        if len(endorsed) >= self.genesis.quorum:
            outcome.certified, _ = self.accept_certificate(block.hash, endorsed)
        elif block.round not in self.endorsed:
            outcome.proposal = vote.body
        return outcome

    def _conflict_with(self, round: int, vote: Vote, endorsed: dict[int, str]
                       ) -> ProposalConflict | None:
        """New evidence when this node endorsed another block of ``round`` than ``vote``'s
        (kept in :attr:`conflicts`), else ``None``."""
        if self.endorsed.get(round, vote.block_hash) == vote.block_hash:
            return None  # endorsed nothing in that round, or the same block
        own = self._own_vote(round)
        if own is None:
            return None
        conflict = ProposalConflict.of(round, own, Vote(vote.block_hash, vote.body, endorsed))
        if any(tuple(h["hash"] for h in c["votes"]) == conflict.hashes for c in self.conflicts):
            return None
        self.conflicts = [*self.conflicts, conflict.to_dict()][-KEPT_CONFLICTS:]
        return conflict
