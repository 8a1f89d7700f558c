"""Endorsements shared between neighbours (votes): a node certifies a block from the
endorsements its neighbours gathered, learns a proposal the relay kept from it, and keeps
checkable evidence when a neighbour endorsed another block of the same round. Nothing a
neighbour sends that does not check against the genesis changes a node's view.

The runs are built as in ``test_ledger``: four nodes (f = 1, quorum 3) broadcast in round
1 and the builder proposes its block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_ledger import Run, broadcast, start_run

from flwr_tempered.ledger import (
    Block,
    KeyPair,
    MalformedRecordError,
    Participant,
    ProposalConflict,
    Vote,
    VoteOutcome,
    make_block,
)
from flwr_tempered.ledger.block import endorse
from flwr_tempered.ledger.participant import MAX_PENDING
from flwr_tempered.ledger.records import canonical_json


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    """Four registered nodes (f = 1, quorum 3) and the relay's block builder."""
    with start_run(tmp_path / "ledger.sqlite", 4) as started:
        yield started


def proposed(run: Run, round: int = 1) -> Block:
    """Everyone broadcasts in ``round``; the builder's block of it."""
    sent = broadcast(run, round)
    return run.builder.propose(round, sent, {p.position: p.report(round) for p in run.nodes})


def vote_of(node: Participant) -> Vote:
    vote = node.vote()
    assert vote is not None
    return vote


def twin(block: Block) -> Block:
    """The same round's block with the same contents but another timestamp: what a relay
    that shows different nodes different proposals hands out."""
    return make_block(height=block.height, round=block.round, run_id=block.run_id,
                      prev_hash=block.prev_hash, timestamp_ms=block.timestamp_ms + 1,
                      commitments=block.commitments, rejections=block.rejections)


def test_a_quorum_of_endorsements_gathered_from_neighbours_certifies_the_block(
        run: Run) -> None:
    block = proposed(run)
    for node in run.nodes[:3]:
        assert node.endorse(block.body())[0] is not None
    a, b, c = run.nodes[:3]
    # b hears from a (2 endorsements), c hears b's merged vote (3: the quorum)
    assert b.learn_vote(vote_of(a)).certified is None
    assert set(vote_of(b).signatures) == {0, 1}
    outcome = c.learn_vote(vote_of(b))
    assert outcome.certified == block and c.head == (1, block.hash)
    assert c.head_record is not None and set(c.head_record["signatures"]) == {"0", "1", "2"}
    assert c.pending == {} and c.vote() is None
    # the certificate c assembled is one the relay's builder accepts as well
    signatures = {int(v): s for v, s in c.head_record["signatures"].items()}
    assert run.builder.commit(block, signatures).committed
    # b, one endorsement short, adopts the same block once it hears c's certified view
    assert b.learn_vote(Vote(block.hash, block.body(), signatures)).certified == block


def test_a_proposal_only_a_neighbour_showed_is_offered_to_the_node_that_never_saw_it(
        run: Run) -> None:
    block = proposed(run)
    first, kept_out = run.nodes[0], run.nodes[3]
    first.endorse(block.body())
    outcome = kept_out.learn_vote(vote_of(first))
    assert outcome.proposal == block.body() and outcome.certified is None
    signature, refusal = kept_out.endorse(outcome.proposal)
    assert refusal is None and signature == endorse(kept_out.keys, block.hash)
    assert set(vote_of(kept_out).signatures) == {0, 3}  # merged with the neighbour's
    # a node that endorsed it itself is offered nothing
    assert kept_out.learn_vote(vote_of(first)).proposal is None


def test_a_neighbour_that_endorsed_another_block_of_the_round_leaves_checkable_evidence(
        run: Run) -> None:
    block = proposed(run)
    other = twin(block)
    shown_block, shown_other = run.nodes[0], run.nodes[2]
    shown_block.endorse(block.body())
    shown_other.endorse(other.body())
    outcome = shown_block.learn_vote(vote_of(shown_other))
    conflict = outcome.conflict
    assert conflict is not None and outcome.certified is None and outcome.proposal is None
    assert conflict.round == 1 and set(conflict.hashes) == {block.hash, other.hash}
    assert conflict.problem(run.genesis) is None
    assert ProposalConflict.from_dict(conflict.to_dict()) == conflict
    assert shown_block.conflicts == [conflict.to_dict()]
    # both sides find the same evidence; hearing it again adds nothing
    assert shown_other.learn_vote(vote_of(shown_block)).conflict == conflict
    assert shown_block.learn_vote(vote_of(shown_other)).conflict is None
    assert len(shown_block.conflicts) == 1
    # the evidence survives the node's state
    restored = Participant.from_state_dict(shown_block.state_dict(), run.genesis.body())
    assert restored.conflicts == shown_block.conflicts
    assert restored.endorsements == shown_block.endorsements


@pytest.mark.parametrize("damage, problem", [
    ("same block", "the same or not in canonical order"),
    ("swapped", "the same or not in canonical order"),
    ("bad signature", "no valid endorsement"),
    ("other round", "is not of this run's round"),
])
def test_evidence_that_does_not_hold_is_named(run: Run, damage: str,
                                              problem: str) -> None:
    block = proposed(run)
    other = twin(block)
    conflict = ProposalConflict.of(1, Vote(block.hash, block.body(), {0: endorse(
        run.nodes[0].keys, block.hash)}), Vote(other.hash, other.body(), {2: endorse(
            run.nodes[2].keys, other.hash)}))
    if damage == "same block":
        conflict = replace(conflict, second=conflict.first)
    elif damage == "swapped":
        conflict = replace(conflict, first=conflict.second, second=conflict.first)
    elif damage == "bad signature":
        [(signer, signature)] = conflict.second.signatures.items()
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        conflict = replace(conflict, second=replace(conflict.second,
                                                    signatures={signer: flipped}))
    else:
        conflict = replace(conflict, round=2)
    reason = conflict.problem(run.genesis)
    assert reason is not None and problem in reason


def test_votes_that_do_not_check_change_nothing(run: Run) -> None:
    block = proposed(run)
    for node in run.nodes[:2]:
        node.endorse(block.body())
    listener = run.nodes[2]
    stranger = KeyPair.generate()  # not a registered key: signs for 0, 1 and 3
    forged = {v: endorse(stranger, block.hash) for v in (0, 1, 3)}
    assert listener.learn_vote(Vote(block.hash, block.body(), forged)) == VoteOutcome()
    assert listener.pending == {} and listener.head == (0, run.genesis.hash)
    # a block that skips a height, or of another run, is not taken up
    ahead = replace(block, height=2)
    ahead_vote = Vote(ahead.hash, ahead.body(), {0: endorse(run.nodes[0].keys, ahead.hash)})
    assert listener.learn_vote(ahead_vote).proposal is None and listener.pending == {}
    foreign = replace(block, run_id="another-run")
    outcome = listener.learn_vote(Vote(foreign.hash, foreign.body(),
                                       {0: endorse(run.nodes[0].keys, foreign.hash)}))
    assert outcome.problem is not None and "another run" in outcome.problem
    assert listener.pending == {}


@pytest.mark.parametrize("change", ["missing key", "wrong hash", "non-ascii block",
                                    "signer not a position", "signatures not a map"])
def test_a_malformed_vote_is_refused_by_name(run: Run, change: str
                                             ) -> None:
    block = proposed(run)
    run.nodes[0].endorse(block.body())
    data: dict[str, Any] = vote_of(run.nodes[0]).to_dict()
    if change == "missing key":
        del data["signatures"]
    elif change == "wrong hash":
        data["hash"] = "0" * 64
    elif change == "non-ascii block":
        data["block"] = data["block"].replace("round", "röund")
    elif change == "signer not a position":
        data["signatures"] = {"01": data["signatures"]["0"]}
    else:
        data["signatures"] = [data["signatures"]["0"]]
    with pytest.raises(MalformedRecordError, match="vote"):
        Vote.from_dict(data)


def test_a_neighbour_cannot_grow_a_nodes_pending_blocks_without_bound(
        run: Run) -> None:
    """A Byzantine validator can endorse any number of made-up blocks of a round; the node
    listening keeps at most MAX_PENDING of them (and its own endorsed block always)."""
    block = proposed(run)
    listener, byzantine = run.nodes[0], run.nodes[3]
    listener.endorse(block.body())
    for stamp in range(MAX_PENDING + 5):
        made_up = make_block(height=1, round=1, run_id=run.run_id, prev_hash=run.genesis.hash,
                             timestamp_ms=stamp, commitments=[], rejections=[])
        listener.learn_vote(Vote(made_up.hash, made_up.body(),
                                 {3: endorse(byzantine.keys, made_up.hash)}))
    assert len(listener.pending) <= MAX_PENDING and block.hash in listener.pending
    assert len(listener.conflicts) <= 8  # each made-up block is evidence: the latest kept


def test_the_relays_proposal_of_a_block_already_certified_from_the_votes_is_endorsed(
        run: Run) -> None:
    """Neighbours may certify a block before the relay's message reaches a node; the node
    that has not endorsed it yet still endorses it (its own records checked), instead of
    refusing it as not extending its head."""
    block = proposed(run)
    signatures = {}
    for node in run.nodes[:3]:
        signature, _ = node.endorse(block.body())
        assert signature is not None
        signatures[node.position] = signature
    late = run.nodes[3]
    assert late.learn_vote(Vote(block.hash, block.body(), signatures)).certified == block
    signature, refusal = late.endorse(block.body())
    assert refusal is None and signature == endorse(late.keys, block.hash)
    # a block that leaves out what the late node sent is still refused
    censored = make_block(height=1, round=1, run_id=run.run_id, prev_hash=run.genesis.hash,
                          timestamp_ms=0, commitments=[h for h in block.commitments
                                                       if h.sender != 3], rejections=[])
    assert late.endorse(censored.body())[1] is not None


def test_a_vote_serialises_canonically(run: Run) -> None:
    block = proposed(run)
    run.nodes[1].endorse(block.body())
    vote = vote_of(run.nodes[1])
    assert Vote.from_dict(vote.to_dict()) == vote
    assert canonical_json(vote.to_dict()) == canonical_json(Vote.from_dict(
        vote.to_dict()).to_dict())
