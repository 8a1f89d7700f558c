"""A node's ledger duties within one message: take in the commit certificate, endorse the
proposal, keep its own copy of the chain, and, peer to peer, share its head and its
endorsements with the other validators and learn theirs.

Peer to peer (``exchange = "p2p"``) each honest node publishes one record on its own
peer, :data:`LEDGER_RECORD`: its certified head (block and certificate) and its vote (the
block it endorsed last, with every endorsement of it the node knows). Reading the other
validators' records with every message (the quorum spans all nodes, so all of them,
not only the graph neighbours), a node

* certifies a block from the endorsements the others made, so commitment does not
  depend on the relay collecting them (report ``certified_by_peers``),
* adopts certified blocks the relay withheld from it (``withheld_blocks``),
* endorses a proposal the relay never showed it (``proposals_from_peers``),
* keeps evidence when another validator endorsed another block than its own in a round:
  the relay showed different nodes different proposals (``proposal_conflicts``; also
  appended to ``conflicts-<run>-<position>.jsonl`` in the node's ``ledger-dir``, out of
  the relay's reach).

Everything read from a peer is checked against the genesis' keys first; a malformed
record changes nothing and is counted (``bad_peer_records``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import Context

from flwr_tempered.ledger import LedgerStore, MalformedRecordError, Participant, Vote
from flwr_tempered.ledger.block import Block

from .exchange import PeerExchange

#: Node-config key of the folder where a node keeps its own copy of the chain (one SQLite
#: ledger per node, checkable with ``flwr-tempered ledger verify``) and the evidence of
#: conflicting proposals it found.
LEDGER_DIR_KEY = "ledger-dir"

#: The record under which a node shares its ledger (head and vote) on its own peer.
LEDGER_RECORD = "ledger"


def _endorse_proposal(participant: Participant, proposal: str) -> dict[str, Any]:
    """The node's answer to the relay's block proposal: its endorsement, or why it
    refuses."""
    signature, refusal = participant.endorse(proposal.encode("ascii"))
    return {"endorsement": signature} if signature else {"refusal": refusal}


def _apply_certificate(participant: Participant, instructions: dict[str, Any],
                       context: Context) -> dict[str, Any]:
    """Apply the commit certificate the relay's message carries (advancing the node's head
    and extending its own copy of the chain); the report of a certificate that does not
    hold."""
    certificate = instructions.get("certificate")
    if not isinstance(certificate, dict):
        return {}
    signatures = {int(v): str(sig) for v, sig in dict(certificate.get("signatures", {})).items()}
    block, problem = participant.accept_certificate(str(certificate.get("hash")), signatures)
    if problem is not None:
        return {"certificate_problem": problem}
    if block is not None:
        _keep_copy(participant, block, context)
    return {"head": list(participant.head or ())}


def _ledger_dir(participant: Participant, context: Context) -> Path | None:
    folder = context.node_config.get(LEDGER_DIR_KEY)
    return Path(str(folder)) if folder else None


def _keep_copy(participant: Participant, block: Block, context: Context) -> None:
    """Append the block this node just certified (its head, with the valid endorsements
    its certificate checked) to the node's own copy of the chain (``ledger-dir``)."""
    folder = _ledger_dir(participant, context)
    if folder is None or participant.genesis is None or participant.head_record is None:
        return
    path = folder / f"ledger-{participant.run_id[:12]}-{participant.position}.sqlite"
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with LedgerStore(path) as store:
        if new:
            store.write_genesis(participant.genesis)
        store.append(block, {int(v): str(sig) for v, sig in
                             participant.head_record["signatures"].items()})


def _keep_evidence(participant: Participant, evidence: dict[str, Any], context: Context
                   ) -> None:
    """Append evidence of conflicting proposals to the node's own file (``ledger-dir``)."""
    folder = _ledger_dir(participant, context)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"conflicts-{participant.run_id[:12]}-{participant.position}.jsonl"
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(evidence, sort_keys=True) + "\n")


def ledger_duties(participant: Participant, instructions: dict[str, Any], context: Context,
                  exchange: PeerExchange | None = None) -> dict[str, Any]:
    """Everything an honest node does for the ledger in one message, in order: apply the
    relay's certificate, learn the other validators' votes and heads (peer to peer; they
    may certify what the relay did not), endorse the relay's proposal, check the votes
    again against it (conflicts) and endorse any proposal only its peers showed it, and
    share its own head and vote. Returns the node's report entries.

    In the message of round ``m`` an honest relay hands out the certificate of round
    ``m - 2``'s block (proposed after round ``m - 2``, endorsed in round ``m - 1``); a
    block of round ``m - 2`` or earlier this node had to certify from its peers, and
    that the message's certificate does not name, was withheld from it
    (``withheld_blocks``)."""
    report: dict[str, Any] = {}
    votes: list[Vote] = []
    heads: list[Any] = []
    if exchange is not None:
        votes, heads, bad = _validator_records(participant, exchange)
        if bad:
            report["bad_peer_records"] = bad
    relay = _apply_certificate(participant, instructions, context)
    from_peers, _, votes = _learn_votes(participant, votes, context, report)
    if "certificate_problem" in relay:  # its block may be known from the votes now
        relay = _apply_certificate(participant, instructions, context)
    report.update(relay)
    from_peers += _catch_up(participant, heads, context)
    if instructions.get("proposal"):
        report.update(_endorse_proposal(participant, str(instructions["proposal"])))
    # Again, now that this node endorsed the relay's proposal: a peer's vote for another
    # block of that round is a conflict, a quorum of votes for it certifies it, and a
    # proposal only the peers showed may be endorsed.
    certified, offered, _ = _learn_votes(participant, votes, context, report)
    from_peers += certified
    for proposal in offered:
        signature, _ = participant.endorse(proposal)
        if signature is not None:
            report.setdefault("proposals_from_peers", []).append(
                Block.from_body(proposal).round)
    if from_peers:
        report["certified_by_peers"] = [block.round for block in from_peers]
        message_round = int(instructions.get("round", 0))
        certificate = instructions.get("certificate")
        handed = certificate.get("hash") if isinstance(certificate, dict) else None
        withheld = [block.round for block in from_peers
                    if block.round <= message_round - 2 and block.hash != handed]
        if withheld:
            report["withheld_blocks"] = withheld
    if exchange is not None:
        _share_ledger(participant, exchange)
    return report


def _validator_records(participant: Participant, exchange: PeerExchange
                       ) -> tuple[list[Vote], list[Any], int]:
    """Every other validator's ledger record, parsed once: their votes, their heads, and
    how many records were malformed. The ledger's quorum spans all the run's nodes, so a
    node reads them all (one small record each per message), not only its graph
    neighbours': every endorsement reaches every node one message after it was made."""
    others = [p for p in exchange.directory.keys if p != participant.position]
    votes, heads, bad = [], [], 0
    for raw in exchange.fetch_records(others, LEDGER_RECORD).values():
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise MalformedRecordError("a ledger record must be a JSON object")
            if record.get("vote") is not None:
                votes.append(Vote.from_dict(record["vote"]))
        except (ValueError, UnicodeDecodeError):  # MalformedRecordError included
            bad += 1
            continue
        if record.get("head") is not None:
            heads.append(record["head"])
    return votes, heads, bad


def _learn_votes(participant: Participant, votes: list[Vote], context: Context,
                 report: dict[str, Any]) -> tuple[list[Block], list[bytes], list[Vote]]:
    """Merge the other validators' votes into the node's view (keeping evidence of
    conflicts, noted in ``report``, and counting votes whose block does not check as bad
    records): the blocks their endorsements certified, the proposals only they showed,
    and the votes worth reading again."""
    certified: list[Block] = []
    offered: dict[str, bytes] = {}
    usable: list[Vote] = []
    for vote in votes:
        outcome = participant.learn_vote(vote)
        if outcome.problem is not None:
            report["bad_peer_records"] = report.get("bad_peer_records", 0) + 1
            continue
        usable.append(vote)
        if outcome.certified is not None:
            certified.append(outcome.certified)
            _keep_copy(participant, outcome.certified, context)
        if outcome.conflict is not None:
            evidence = outcome.conflict.to_dict()
            report.setdefault("proposal_conflicts", []).append(evidence)
            _keep_evidence(participant, evidence, context)
        if outcome.proposal is not None:
            offered[vote.block_hash] = outcome.proposal
    return certified, [body for block_hash, body in offered.items()
                       if block_hash in participant.pending], usable


def _catch_up(participant: Participant, heads: list[Any], context: Context) -> list[Block]:
    """Adopt the certified blocks other nodes hold and this node does not (the relay
    withheld them, or has not handed them out yet); the blocks adopted."""
    adopted: list[Block] = []
    advanced = True
    while advanced:
        advanced = False
        for head in heads:
            assert participant.head is not None
            try:
                if not isinstance(head, dict) or int(head["height"]) != participant.head[0] + 1:
                    continue
                signatures = {int(v): str(sig) for v, sig in dict(head["signatures"]).items()}
                block, _ = participant.accept_certificate(
                    str(head["hash"]), signatures, body=str(head["block"]).encode("ascii"))
            except (ValueError, KeyError, TypeError, UnicodeEncodeError):
                continue  # a malformed record from a peer changes nothing
            if block is not None:
                adopted.append(block)
                _keep_copy(participant, block, context)
                advanced = True
    return adopted


def _share_ledger(participant: Participant, exchange: PeerExchange) -> None:
    """Publish this node's certified head and its vote to its own peer, for the other
    validators."""
    vote = participant.vote()
    record = {"head": participant.head_record,
              "vote": vote.to_dict() if vote is not None else None}
    if record["head"] is not None or record["vote"] is not None:
        exchange.publish_record(LEDGER_RECORD, json.dumps(record).encode())
