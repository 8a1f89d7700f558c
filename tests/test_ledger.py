"""The run ledger: signed messages, hash-chained blocks endorsed by a 2f + 1 quorum,
equivocation evidence, the append-only SQLite store and offline verification.

A test run is built the way the relay drives it: ``n`` participants introduce their keys
into a genesis, senders sign the header of each model they send, receivers check it
(``Participant.receive``), the builder proposes a block from what senders and receivers
report, validators endorse it after checking it, and the builder commits it with a quorum.
Model digests are those of tiny float32 arrays, so every input can be worked out by hand.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from Crypto.Hash import SHA256
from hypothesis import event, given, settings
from hypothesis import strategies as st

from flwr_tempered.attacks import AttackView, TargetView, get_attack
from flwr_tempered.digest import array_digest
from flwr_tempered.ledger import (
    REJECTION_REASONS,
    Block,
    BlockBuilder,
    CommitOutcome,
    Evidence,
    Genesis,
    KeyPair,
    LedgerError,
    LedgerStore,
    MalformedRecordError,
    Participant,
    Rejection,
    SignedHeader,
    crypto,
    default_f,
    header_problem,
    make_block,
    merkle_root,
    quorum_size,
    sign_header,
    signature_backend,
    summarize,
    verify_ledger,
    verify_signature,
)
from flwr_tempered.ledger.block import endorse
from flwr_tempered.ledger.merkle import EMPTY_ROOT
from flwr_tempered.ledger.records import canonical_json
from flwr_tempered.topology import get_topology

# ------------------------------------------------------------------------- helpers
#: Key pairs shared by every run of this module (a run is told apart by its run id).
#: Derived from fixed seeds so that a failure replays with the same keys.
KEYS = [KeyPair(hashlib.sha256(f"test-ledger-key-{i}".encode()).digest()) for i in range(12)]

#: Genesis creation time. Its digits matter to one test: replacing the "7" by an "e"
#: turns the integer into 1e12345678901, a float too large for JSON.
CREATED_MS = 1_712_345_678_901

Model = np.ndarray
Fetch = Callable[[], Model]


def model(*values: float) -> Model:
    """A tiny model: a float32 vector of ``values``."""
    return np.array(values, dtype=np.float32)


def digest(*values: float) -> str:
    return array_digest(model(*values))


def fetch_of(array: Model) -> Fetch:
    return lambda: array


def failing_fetch(error: type[Exception]) -> Fetch:
    def fetch() -> Model:
        raise error("the relay could not deliver these bytes")
    return fetch


@dataclass
class Run:
    """One run's genesis, participants, store and block builder."""

    path: Path
    genesis: Genesis
    nodes: list[Participant]
    store: LedgerStore
    builder: BlockBuilder

    @property
    def run_id(self) -> str:
        return self.genesis.run_id

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def start_run(path: Path, n: int, *, run_id: str = "run-1", f: int | None = None,
              policy: str = "keep") -> Run:
    """Genesis of ``n`` nodes (``f`` defaults to the largest tolerated), each node having
    adopted it, and a block builder over a fresh store at ``path``."""
    nodes = [Participant(i, KEYS[i], run_id, policy=policy) for i in range(n)]
    introductions = [node.introduce() for node in nodes]
    genesis = Genesis(run_id, CREATED_MS, default_f(n) if f is None else f,
                      {i: intro["public_key"] for i, intro in enumerate(introductions)},
                      {i: intro["proof"] for i, intro in enumerate(introductions)},
                      {"nodes": n, "rounds": 3})
    for node in nodes:
        node.adopt_genesis(genesis.body())
    store = LedgerStore(path)
    return Run(path, genesis, nodes, store, BlockBuilder(store, genesis))


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """``make_run(n, **options)``: a run in its own ledger file under ``tmp_path``."""
    runs: list[Run] = []

    def make(n: int, **options: Any) -> Run:
        run = start_run(tmp_path / f"ledger-{len(runs)}.sqlite", n, **options)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.store.close()


def broadcast(run: Run, round: int, *, senders: Iterable[int] | None = None,
              receivers: Callable[[int], Iterable[int]] | None = None,
              bad_bytes: Collection[tuple[int, int]] = ()) -> list[dict[str, Any]]:
    """Each sender signs one broadcast header for ``model(sender, round)`` and every other
    node (or ``receivers(sender)``) receives it; for a (sender, receiver) pair in
    ``bad_bytes`` the relay delivers bytes that do not match the digest. Returns the
    headers the senders hand to the builder."""
    positions = range(len(run.nodes))
    sent = []
    for sender in positions if senders is None else senders:
        array = model(sender, round)
        header = run.nodes[sender].sign(round, array_digest(array))
        targets = [r for r in positions if r != sender] if receivers is None else receivers(sender)
        for receiver in targets:
            broken = (sender, receiver) in bad_bytes
            got, reason = run.nodes[receiver].receive(
                round, sender, header.digest, header.to_dict(),
                failing_fetch(ValueError) if broken else fetch_of(array))
            assert reason == ("digest_mismatch" if broken else None)
            assert (got is None) == broken
        sent.append(header.to_dict())
    return sent


def equivocate(run: Run, round: int, sender: int, targets: Iterable[int]) -> list[dict[str, Any]]:
    """``sender`` sends each target its own model ``model(1000 + sender, target, round)``,
    signed for that recipient alone; every target accepts it (each header is valid)."""
    sent = []
    for target in targets:
        array = model(1000 + sender, target, round)
        header = run.nodes[sender].sign(round, array_digest(array), recipient=target)
        _, reason = run.nodes[target].receive(round, sender, header.digest, header.to_dict(),
                                              fetch_of(array))
        assert reason is None
        sent.append(header.to_dict())
    return sent


def endorse_block(nodes: Iterable[Participant], block: Block
                  ) -> tuple[dict[int, str], dict[int, str]]:
    """Every node checks ``block``: its endorsements and its refusals."""
    endorsements, refusals = {}, {}
    for node in nodes:
        signature, refusal = node.endorse(block.body())
        if signature is not None:
            endorsements[node.position] = signature
        else:
            refusals[node.position] = str(refusal)
    return endorsements, refusals


def settle(run: Run, round: int, sent: list[dict[str, Any]], *,
           validators: Iterable[int] | None = None) -> tuple[Block, CommitOutcome]:
    """Propose ``round``'s block from every node's report, have ``validators`` (default
    all) endorse it, and commit it."""
    block = run.builder.propose(round, sent, {p.position: p.report(round) for p in run.nodes})
    chosen = run.nodes if validators is None else [run.nodes[v] for v in validators]
    endorsements, refusals = endorse_block(chosen, block)
    outcome = run.builder.commit(block, endorsements, refusals)
    if outcome.committed:
        certify(run.nodes, block, {v: endorsements[v] for v in outcome.signers})
    return block, outcome


def certify(nodes: Iterable[Participant], block: Block, signatures: dict[int, str]) -> None:
    """Hand a committed block's certificate to the nodes, as the relay does with the next
    message: each node that endorsed it advances its head."""
    for node in nodes:
        if block.hash in node.pending:
            accepted, problem = node.accept_certificate(block.hash, signatures)
            assert problem is None and accepted == block


def build_three_rounds(path: Path) -> Run:
    """Four nodes (f = 1, quorum 3). Round 1: everyone broadcasts. Round 2: nodes 0-2
    broadcast, node 1 gets bytes from node 2 that do not match their digest, and node 3
    sends each of 0, 1, 2 a different model. Round 3: everyone broadcasts."""
    run = start_run(path, 4, run_id="run-three-rounds")
    for round in (1, 2, 3):
        if round == 2:
            sent = broadcast(run, 2, senders=[0, 1, 2], bad_bytes={(2, 1)})
            sent += equivocate(run, 2, 3, targets=[0, 1, 2])
        else:
            sent = broadcast(run, round)
        _, outcome = settle(run, round, sent)
        assert outcome.committed, outcome.reason
    return run


def flip_hex(text: str, index: int = 0) -> str:
    """``text`` with its hex character at ``index`` changed to another hex character."""
    return text[:index] + ("1" if text[index] == "0" else "0") + text[index + 1:]


# ------------------------------------------------------------------ a valid ledger
def test_a_ledger_built_over_three_rounds_verifies_with_its_rounds_commitments_and_evidence(
        tmp_path: Path) -> None:
    with build_three_rounds(tmp_path / "ledger.sqlite") as run:
        report = verify_ledger(tmp_path)  # the run folder holding ledger.sqlite

        assert report.genesis == Genesis.from_body(run.genesis.body())
        assert report.rounds == [1, 2, 3]
        assert [b.height for b in report.blocks] == [1, 2, 3]
        assert [len(b.commitments) for b in report.blocks] == [4, 6, 4]
        assert report.blocks[0].commitments == tuple(
            sorted(sign_header(KEYS[i], run_id=run.run_id, round=1, sender=i, digest=digest(i, 1))
                   for i in range(4)))
        assert report.signers == [[0, 1, 2, 3]] * 3
        assert report.head_hash == run.builder.head_hash == report.blocks[-1].hash
        assert [b.prev_hash for b in report.blocks] == [run.genesis.hash] + [
            b.hash for b in report.blocks[:-1]]
        (evidence,) = report.evidence
        assert (evidence.sender, evidence.round) == (3, 2)
        assert {evidence.first.digest, evidence.second.digest} < {
            digest(1003, t, 2) for t in (0, 1, 2)}
        assert report.equivocators == [3]
        assert report.rejections == [Rejection(2, 1, 2, digest(2, 2), "digest_mismatch")]
        assert report.uncommitted == []
        summary = summarize(report)
        assert (summary["blocks"], summary["commitments"], summary["quorum"]) == (3, 14, 3)
        assert summary["rejections"] == {"digest_mismatch": 1}
        assert verify_ledger(tmp_path, head=report.head_hash).head_hash == report.head_hash


# ------------------------------------------------------------------------ tampering
@dataclass(frozen=True)
class BaseLedger:
    """A three-round ledger on disk (closed), copied by every tampering test."""

    path: Path
    blocks: list[Block]


@pytest.fixture(scope="module")
def base_ledger(tmp_path_factory: pytest.TempPathFactory) -> BaseLedger:
    path = tmp_path_factory.mktemp("base") / "ledger.sqlite"
    run = build_three_rounds(path)
    run.store.close()
    return BaseLedger(path, verify_ledger(path).blocks)


@pytest.fixture
def ledger_copy(base_ledger: BaseLedger, tmp_path: Path) -> Path:
    copy = tmp_path / "ledger.sqlite"
    shutil.copy(base_ledger.path, copy)
    return copy


def attacker(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection to the ledger file with the append-only triggers
    (blocks_no_update, blocks_no_delete, any other) dropped, as anyone who can write the
    file can do."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    triggers = [name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'blocks'")]
    assert {"blocks_no_update", "blocks_no_delete"} <= set(triggers)
    for name in triggers:
        db.execute(f"DROP TRIGGER {name}")
    return db


def verification_outcome(path: Path, head: str | None = None) -> int | str | None:
    """The height ``verify_ledger`` names, ``"verified"``, or the unexpected exception."""
    try:
        verify_ledger(path, head=head)
    except LedgerError as error:
        return error.height
    except Exception as error:  # the point: anything but LedgerError is a finding
        return f"{type(error).__name__}: {error}"
    return "verified"


def flip_or_swap_class(byte: int) -> set[int]:
    """XOR 0x01, and a printable character of another class: a digit becomes "e" (an
    exponent marker, turning an integer into a float), anything else becomes "5"."""
    return {byte ^ 0x01, ord("e") if chr(byte).isdigit() else ord("5")} - {byte}


def many_printables(byte: int) -> set[int]:
    """XOR 0x01 and each of: an exponent marker, a digit, a quote, a separator, a letter."""
    return {byte ^ 0x01, *b'e5",Z'} - {byte}


def single_byte_changes(value: bytes, changes: Callable[[int], set[int]], start: int = 0,
                        end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Every ``value`` with one byte of ``value[start:end]`` replaced by one of
    ``changes(byte)``."""
    for i in range(start, len(value) if end is None else end):
        for new in sorted(changes(value[i])):
            yield i, value[:i] + bytes([new]) + value[i + 1:]


def escapes(path: Path, height: int, column: str, start: int = 0, end: int | None = None,
            changes: Callable[[int], set[int]] = flip_or_swap_class) -> list[str]:
    """Apply every single-byte change of ``column`` of block ``height`` in turn; list
    those for which verification does not fail naming block ``height``."""
    db = attacker(path)
    original = db.execute(f"SELECT {column} FROM blocks WHERE height = ?", (height,)
                          ).fetchone()[0]
    is_blob = isinstance(original, bytes)
    stored = original if is_blob else original.encode("ascii")
    found = []
    try:
        for i, changed in single_byte_changes(stored, changes, start, end):
            value = changed if is_blob else changed.decode("ascii")
            db.execute(f"UPDATE blocks SET {column} = ? WHERE height = ?", (value, height))
            result = verification_outcome(path)
            if result != height:
                found.append(f"byte {i} {stored[i:i + 1]!r} -> {changed[i:i + 1]!r}: {result}")
    finally:
        db.execute(f"UPDATE blocks SET {column} = ? WHERE height = ?", (original, height))
        db.close()
    assert verification_outcome(path) == "verified"
    return found


def assert_pinned(path: Path, height: int, column: str, start: int = 0, end: int | None = None,
                  changes: Callable[[int], set[int]] = flip_or_swap_class) -> None:
    """Every single-byte change of ``column`` of block ``height`` fails verification
    with a LedgerError naming block ``height``."""
    found = escapes(path, height, column, start, end, changes)
    assert not found, (f"{len(found)} changes of the {column} of block {height} are not "
                       "pinned on it:\n" + "\n".join(found))


def evidence_span(body: bytes) -> tuple[int, int]:
    """Byte range of the ``"evidence":[...]`` member of a canonical block body."""
    start = body.index(b'"evidence":[')
    end = body.index(b'],"height":', start) + 1
    return start, end


def test_the_base_ledger_used_for_tampering_verifies_untouched(base_ledger: BaseLedger,
                                                                ledger_copy: Path) -> None:
    assert verification_outcome(ledger_copy) == "verified"
    assert [len(b.evidence) for b in base_ledger.blocks] == [0, 1, 0]


def test_changing_any_byte_of_an_evidence_record_names_its_block(
        base_ledger: BaseLedger, ledger_copy: Path) -> None:
    block = base_ledger.blocks[1]
    body = block.body()
    start, end = evidence_span(body)
    assert json.loads(body[start + len(b'"evidence":'):end]) == [
        e.to_dict() for e in block.evidence]
    assert_pinned(ledger_copy, 2, "body", start, end, changes=many_printables)


def test_changing_any_byte_of_a_block_body_names_that_block(ledger_copy: Path) -> None:
    assert_pinned(ledger_copy, 2, "body")


def test_changing_any_byte_of_a_stored_block_hash_names_that_block(ledger_copy: Path) -> None:
    assert_pinned(ledger_copy, 2, "hash")


def test_changing_any_byte_of_a_blocks_signatures_names_that_block(ledger_copy: Path) -> None:
    assert_pinned(ledger_copy, 2, "signatures")


@pytest.mark.parametrize("column", ["body", "hash", "signatures"])
def test_changing_any_byte_of_the_genesis_names_the_genesis(ledger_copy: Path,
                                                            column: str) -> None:
    assert_pinned(ledger_copy, 0, column)


def test_changing_the_round_column_of_a_block_names_that_block(ledger_copy: Path) -> None:
    db = attacker(ledger_copy)
    db.execute("UPDATE blocks SET round = 7 WHERE height = 2")
    db.close()
    assert verification_outcome(ledger_copy) == 2


def test_an_overflowing_exponent_in_a_stored_integer_is_a_ledger_error(
        ledger_copy: Path) -> None:
    """Replacing one digit of an integer by "e" can give a float beyond JSON's range
    (1e12345678901 parses as inf); that must be reported like any other tampering."""
    db = attacker(ledger_copy)
    body = db.execute("SELECT body FROM blocks WHERE height = 0").fetchone()[0]
    tampered = body.replace(b'"created_ms":1712345678901', b'"created_ms":1e12345678901')
    assert tampered != body and len(tampered) == len(body)
    db.execute("UPDATE blocks SET body = ? WHERE height = 0", (tampered,))
    db.close()
    assert verification_outcome(ledger_copy) == 0


def test_the_triggers_refuse_update_and_delete_of_stored_blocks(ledger_copy: Path) -> None:
    db = sqlite3.connect(ledger_copy, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE blocks SET signatures = '[]' WHERE height = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM blocks WHERE height = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("INSERT INTO blocks VALUES (2, 2, 'x', x'00', '[]') "
                   "ON CONFLICT(height) DO UPDATE SET hash = 'x'")
    db.close()
    assert verification_outcome(ledger_copy) == "verified"


def test_the_triggers_refuse_overwriting_a_block_with_insert_or_replace(
        ledger_copy: Path) -> None:
    """REPLACE deletes the old row without firing DELETE triggers (SQLite's default
    recursive_triggers=OFF), so UPDATE/DELETE triggers alone leave this door open."""
    db = sqlite3.connect(ledger_copy, isolation_level=None)
    (before,) = db.execute("SELECT body FROM blocks WHERE height = 2").fetchone()
    try:
        db.execute("INSERT OR REPLACE INTO blocks VALUES (2, 2, 'x', x'00', '[]')")
    except sqlite3.DatabaseError as error:
        assert "append-only" in str(error)
    (after,) = db.execute("SELECT body FROM blocks WHERE height = 2").fetchone()
    db.close()
    overwritten = after != before
    assert not overwritten, "INSERT OR REPLACE overwrote stored block 2"


def swap_rows(path: Path, a: int, b: int) -> None:
    db = attacker(path)
    rows = {h: db.execute("SELECT round, hash, body, signatures FROM blocks WHERE height = ?",
                          (h,)).fetchone() for h in (a, b)}
    for height, other in ((a, b), (b, a)):
        db.execute("UPDATE blocks SET round = ?, hash = ?, body = ?, signatures = ? "
                   "WHERE height = ?", (*rows[other], height))
    db.close()


def test_swapping_two_blocks_names_the_first_of_them(ledger_copy: Path) -> None:
    swap_rows(ledger_copy, 1, 2)
    assert verification_outcome(ledger_copy) == 1


def test_swapping_the_last_two_blocks_names_the_earlier_height(ledger_copy: Path) -> None:
    swap_rows(ledger_copy, 2, 3)
    assert verification_outcome(ledger_copy) == 2


def test_deleting_a_middle_block_names_the_missing_height(ledger_copy: Path) -> None:
    db = attacker(ledger_copy)
    db.execute("DELETE FROM blocks WHERE height = 2")
    db.close()
    assert verification_outcome(ledger_copy) == 2


@pytest.mark.parametrize("copied", [1, 3])
def test_a_copy_of_a_block_inserted_at_the_next_height_is_named(ledger_copy: Path,
                                                                copied: int) -> None:
    db = sqlite3.connect(ledger_copy, isolation_level=None)  # a plain append: no trigger fires
    db.execute("INSERT INTO blocks SELECT 4, round, hash, body, signatures FROM blocks "
               "WHERE height = ?", (copied,))
    db.close()
    assert verification_outcome(ledger_copy) == 4


@pytest.mark.parametrize(("kept", "why"), [
    ([0, 1], "only 2 endorsements, quorum is 3"),
    ([0, 0, 1, 2], "validator 0 signed twice"),
])
def test_a_block_stored_without_a_quorum_of_distinct_endorsements_is_named(
        ledger_copy: Path, kept: list[int], why: str) -> None:
    db = attacker(ledger_copy)
    (text,) = db.execute("SELECT signatures FROM blocks WHERE height = 2").fetchone()
    entries = json.loads(text)
    fewer = json.dumps([entries[i] for i in kept], sort_keys=True, separators=(",", ":"))
    db.execute("UPDATE blocks SET signatures = ? WHERE height = 2", (fewer,))
    db.close()
    with pytest.raises(LedgerError, match=why) as caught:
        verify_ledger(ledger_copy)
    assert caught.value.height == 2


def test_a_block_hiding_its_evidence_fails_verification_even_when_a_quorum_signed_it(
        make_run: Callable[..., Run]) -> None:
    """Verification re-derives the evidence from the commitments; it does not take the
    validators' word for it."""
    run = make_run(4)
    sent = broadcast(run, 1, senders=[0, 1, 2]) + equivocate(run, 1, 3, targets=[0, 1, 2])
    proposal = run.builder.propose(1, sent, {p.position: p.report(1) for p in run.nodes})
    assert [e.sender for e in proposal.evidence] == [3]
    hidden = replace(proposal, evidence=())
    assert {p.endorse(hidden.body()) for p in run.nodes} == {
        (None, "evidence does not match the equivocations among the commitments")}
    run.store.append(hidden, {i: endorse(KEYS[i], hidden.hash) for i in range(4)})
    with pytest.raises(LedgerError, match="evidence does not match") as caught:
        verify_ledger(run.path)
    assert caught.value.height == 1


def test_a_block_cut_from_the_end_is_detected_against_the_pinned_head(
        base_ledger: BaseLedger, ledger_copy: Path) -> None:
    head = base_ledger.blocks[-1].hash
    assert verification_outcome(ledger_copy, head=head) == "verified"
    db = attacker(ledger_copy)
    db.execute("DELETE FROM blocks WHERE height = 3")
    db.close()
    assert verification_outcome(ledger_copy) == "verified"  # no outside reference: cannot be seen
    with pytest.raises(LedgerError, match="cut from the end") as caught:
        verify_ledger(ledger_copy, head=head)
    assert caught.value.height is None


def test_a_missing_ledger_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_ledger(tmp_path / "nothing.sqlite")


# ---------------------------------------------------------------- participant checks
def test_participant_rejects_each_bad_message_and_the_committed_block_lists_them(
        make_run: Callable[..., Run]) -> None:
    """Nine nodes (f = 2). In round 2 every node signs its model honestly, but the relay
    hands node 0 a broken message from each of nodes 1..8, one kind of breakage each."""
    run = make_run(9, run_id="run-bad-messages")
    round_one = broadcast(run, 1)
    assert settle(run, 1, round_one)[1].committed

    honest = {i: run.nodes[i].sign(2, digest(i, 2)) for i in range(1, 9)}
    replayed = SignedHeader.from_dict(next(h for h in round_one if h["sender"] == 3))
    # sender: (digest the relay forwards, header it forwards, how the model is fetched)
    messages: dict[int, tuple[str, Any, Fetch]] = {
        # signed with node 2's key
        1: (digest(1, 2), sign_header(KEYS[2], run_id=run.run_id, round=2, sender=1,
                                      digest=digest(1, 2)).to_dict(), fetch_of(model(1, 2))),
        # node 2's own header, one hex digit of the signature changed
        2: (digest(2, 2), replace(honest[2], signature=flip_hex(honest[2].signature, 5)
                                  ).to_dict(), fetch_of(model(2, 2))),
        # node 3's header and model of round 1, sent again in round 2
        3: (replayed.digest, replayed.to_dict(), fetch_of(model(3, 1))),
        # node 4's key, but signed for another run
        4: (digest(4, 2), sign_header(KEYS[4], run_id="another-run", round=2, sender=4,
                                      digest=digest(4, 2)).to_dict(), fetch_of(model(4, 2))),
        # node 5 signed model(5, 2); the relay forwards model(55, 2) under that header
        5: (digest(55, 2), honest[5].to_dict(), fetch_of(model(55, 2))),
        # the header is right, the bytes fetched do not hash to its digest
        6: (digest(6, 2), honest[6].to_dict(), failing_fetch(ValueError)),
        7: (digest(7, 2), None, fetch_of(model(7, 2))),
        8: (digest(8, 2), honest[8].to_dict(), failing_fetch(LookupError)),
    }
    fetched: list[int] = []
    reasons: dict[int, str | None] = {}
    for i, (forwarded, header, fetch) in sorted(messages.items()):
        def counted(i: int = i, fetch: Fetch = fetch) -> Model:
            fetched.append(i)
            return fetch()
        got, reasons[i] = run.nodes[0].receive(2, i, forwarded, header, counted)
        assert got is None
    expected_reasons = {1: "bad_signature", 2: "bad_signature", 3: "replayed", 4: "wrong_run",
                        5: "digest_mismatch", 6: "digest_mismatch", 7: "unsigned",
                        8: "missing_model"}
    assert reasons == expected_reasons
    assert fetched == [6, 8]  # a model is fetched only once its header checks out

    block = run.builder.propose(2, [h.to_dict() for h in honest.values()],
                                {p.position: p.report(2) for p in run.nodes})
    expected = tuple(sorted(Rejection(2, 0, i, messages[i][0], expected_reasons[i])
                            for i in messages))
    assert block.rejections == expected
    assert block.commitments == tuple(sorted(honest.values()))
    assert block.evidence == ()
    outcome = run.builder.commit(block, *endorse_block(run.nodes, block))
    assert outcome.committed, outcome.reason
    report = verify_ledger(run.path)
    assert report.rounds == [1, 2]
    assert report.rejections == list(expected)
    assert summarize(report)["rejections"] == {"bad_signature": 2, "digest_mismatch": 2,
                                               "missing_model": 1, "replayed": 1,
                                               "unsigned": 1, "wrong_run": 1}


def test_a_valid_message_is_accepted_and_its_model_returned(make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    array = model(1.5, -2.0)
    header = run.nodes[1].sign(1, array_digest(array))
    got, reason = run.nodes[0].receive(1, 1, header.digest, header.to_dict(), fetch_of(array))
    assert reason is None and got is array
    assert run.nodes[0].report(1) == {"round": 1, "accepted": [header.to_dict()], "rejected": []}


@pytest.mark.parametrize(("change", "reason"), [
    ("sender 2 claims node 1's header", "wrong_sender"),
    ("header addressed to node 2", "wrong_recipient"),
    ("sender 99 is not in the genesis", "unknown_sender"),
    ("header lacks its signature", "malformed_header"),
    ("digest is upper-case hex", "malformed_header"),
])
def test_header_problem_names_the_other_reasons(change: str, reason: str) -> None:
    keys = {i: KEYS[i].public_key for i in range(4)}
    d = digest(1, 1)
    header = sign_header(KEYS[1], run_id="r", round=1, sender=1, digest=d)
    sender, data = 1, header.to_dict()
    if change.startswith("sender 2"):
        sender = 2
    elif change.startswith("header addressed"):
        data = sign_header(KEYS[1], run_id="r", round=1, sender=1, digest=d,
                           recipient=2).to_dict()
    elif change.startswith("sender 99"):
        sender, data = 99, {**data, "sender": 99}
    elif change.startswith("header lacks"):
        del data["signature"]
    else:
        data = {**data, "digest": d.upper()}
    assert header_problem(data, keys, run_id="r", round=1, sender=sender, recipient=0,
                          digest=d) == reason
    assert reason in REJECTION_REASONS


def test_a_header_naming_a_non_ascii_digit_recipient_is_malformed_not_a_crash(
        make_run: Callable[..., Run]) -> None:
    """"²" passes ``str.isdigit`` but ``int("²")`` raises ValueError; the strict parser
    must still answer with MalformedRecordError, the receiver with "malformed_header",
    and the builder must skip the header (one Byzantine message must not crash them)."""
    run = make_run(4)
    d = digest(1, 1)
    header = {**sign_header(KEYS[1], run_id=run.run_id, round=1, sender=1, digest=d).to_dict(),
              "recipient": "\u00b2"}
    with pytest.raises(MalformedRecordError):
        SignedHeader.from_dict(header)
    assert run.nodes[0].receive(1, 1, d, header, fetch_of(model(1, 1))) == (
        None, "malformed_header")
    assert run.builder.propose(1, [header], {}).commitments == ()


def test_a_participant_refuses_a_proposal_with_an_out_of_range_number_instead_of_raising(
        make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = run.builder.propose(1, broadcast(run, 1), {})
    body = re.sub(rb'"timestamp_ms":\d+', b'"timestamp_ms":1e999', block.body())
    signature, refusal = run.nodes[0].endorse(body)
    assert signature is None and refusal


# ----------------------------------------------------------------- equivocation
@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=4, max_value=9), p=st.sampled_from([0.35, 0.5, 0.75, 1.0]),
       seed=st.integers(min_value=0, max_value=2**16), round=st.integers(1, 5),
       byzantine_hand_in_headers=st.booleans(), data=st.data())
def test_evidence_names_exactly_the_byzantine_nodes_with_two_honest_neighbours(
        tmp_path_factory: pytest.TempPathFactory, n: int, p: float, seed: int, round: int,
        byzantine_hand_in_headers: bool, data: st.DataObject) -> None:
    """Honest nodes sign one broadcast header; each Byzantine node signs a different model
    for each honest neighbour (addressed to it). Two headers with different digests are
    needed to prove equivocation, so exactly the Byzantine nodes with at least two honest
    neighbours are named, whether or not they hand their own headers to the builder."""
    byzantine = data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1),
                          label="byzantine")
    topology = get_topology("erdos_renyi", n=n, p=p, byzantine=sorted(byzantine), seed=seed)
    honest = topology.honest
    path = tmp_path_factory.mktemp("equivocation") / "ledger.sqlite"
    with start_run(path, n, run_id=f"run-equivocation-{seed}") as run:
        sent = broadcast(run, round, senders=honest, receivers=topology.honest_neighbors)
        for b in sorted(byzantine):
            headers = equivocate(run, round, b, topology.honest_neighbors(b))
            sent += headers if byzantine_hand_in_headers else []
        block = run.builder.propose(round, sent, {h: run.nodes[h].report(round) for h in honest})

        accused = {e.sender for e in block.evidence}
        assert accused == {b for b in byzantine if len(topology.honest_neighbors(b)) >= 2}
        event("some Byzantine node is exposed" if accused else "nobody is exposed")
        assert not accused & set(honest)
        public_keys = dict(Genesis.from_body(run.genesis.body()).keys)
        for record in block.evidence:
            assert record.round == round
            assert record.problem(public_keys) is None
            parsed = Evidence.from_dict(json.loads(canonical_json(record.to_dict())))
            assert parsed == record and parsed.problem(public_keys) is None

        outcome = run.builder.commit(block, *endorse_block([run.nodes[h] for h in honest], block))
        assert outcome.committed == (len(honest) >= run.genesis.quorum)
        report = verify_ledger(run.path)
        assert report.equivocators == (sorted(accused) if outcome.committed else [])


def test_the_dissensus_attack_leaves_evidence_against_each_attacker_it_exposes(
        tmp_path: Path) -> None:
    """The real dissensus attack, fed the view a Byzantine node gets (as in
    ``Node.craft``): its per-target vectors differ, so each attacker with two honest
    neighbours signs two digests and is named; no honest node is."""
    topology = get_topology("erdos_renyi", n=8, p=0.6, byzantine=2, seed=3)
    honest, byzantine = topology.honest, sorted(topology.byzantine)
    generator = torch.Generator().manual_seed(0)
    models = {i: torch.randn(6, generator=generator) for i in range(8)}
    with start_run(tmp_path / "ledger.sqlite", 8, run_id="run-dissensus") as run:
        sent = broadcast(run, 1, senders=honest, receivers=topology.honest_neighbors)
        attack = get_attack("dissensus")
        for b in byzantine:
            targets = topology.honest_neighbors(b)
            views = []
            for t in targets:
                row = topology.mixing[t]
                neighbours = topology.honest_neighbors(t)
                views.append(TargetView(
                    node=t, model=models[t],
                    honest_neighbors=torch.stack([models[j] for j in neighbours]) if neighbours
                    else torch.zeros(0, 6),
                    honest_weights=torch.tensor([row[j] for j in neighbours], dtype=torch.float32),
                    byzantine_weight=float(sum(row[k] for k in topology.byzantine_neighbors(t))),
                    n_byzantine=len(topology.byzantine_neighbors(t)),
                    self_weight=float(row[t])))
            crafted = attack(AttackView(own=models[b], targets=views, round=1))
            for t, vector in zip(targets, crafted, strict=True):
                array = vector.detach().numpy().copy()
                header = run.nodes[b].sign(1, array_digest(array), recipient=t)
                _, reason = run.nodes[t].receive(1, b, header.digest, header.to_dict(),
                                                 fetch_of(array))
                assert reason is None
        exposed = {b for b in byzantine if len(topology.honest_neighbors(b)) >= 2}
        assert exposed  # the seed is chosen so that the property is not vacuous
        block, outcome = settle(run, 1, sent, validators=honest)
        assert {e.sender for e in block.evidence} == exposed
        assert outcome.committed, outcome.reason
        assert verify_ledger(run.path).equivocators == sorted(exposed)


# ------------------------------------------------------------------------ quorum
def test_fault_bound_and_quorum_sizes() -> None:
    assert [default_f(n) for n in (1, 3, 4, 6, 7, 10)] == [0, 0, 1, 1, 2, 3]
    assert [quorum_size(n, default_f(n)) for n in (1, 4, 7, 10)] == [1, 3, 5, 7]
    with pytest.raises(ValueError):
        quorum_size(3, 1)  # 3 < 3f + 1


def test_a_block_without_quorum_is_not_stored_and_a_later_one_still_commits(
        make_run: Callable[..., Run]) -> None:
    run = make_run(4)  # f = 1, quorum 3
    block = run.builder.propose(1, broadcast(run, 1), {})
    endorsements, refusals = endorse_block(run.nodes[:2], block)
    refusals[2] = "offline for maintenance"
    outcome = run.builder.commit(block, endorsements, refusals)
    assert not outcome.committed and outcome.signers == (0, 1)
    assert outcome.reason == ("2 valid endorsements of 4 validators, quorum is 3; "
                               "node 2 refused: offline for maintenance; "
                               "no answer from nodes 3")
    report = verify_ledger(run.path)
    assert report.blocks == []
    assert run.store.uncommitted() == report.uncommitted == [(1, outcome.reason)]

    block_two, outcome_two = settle(run, 2, broadcast(run, 2))
    assert outcome_two.committed and block_two.height == 1
    report = verify_ledger(run.path)
    assert report.rounds == [2] and report.uncommitted == [(1, outcome.reason)]


def test_invalid_endorsements_do_not_count_towards_the_quorum(
        make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = run.builder.propose(1, broadcast(run, 1), {})
    valid, _ = endorse_block(run.nodes, block)
    forged = {0: valid[0], 1: valid[1],
              2: endorse(KEYS[3], block.hash),      # node 3's key signing for node 2
              3: endorse(KEYS[3], "0" * 64)}        # node 3 endorsing another hash
    outcome = run.builder.commit(block, forged)
    assert not outcome.committed and outcome.signers == (0, 1)
    assert "2 valid endorsements" in outcome.reason and "2 invalid" in outcome.reason
    assert verify_ledger(run.path).blocks == []

    outcome = run.builder.commit(block, {**forged, 2: valid[2]})
    assert outcome.committed and outcome.signers == (0, 1, 2)
    assert verify_ledger(run.path).signers == [[0, 1, 2]]


def test_a_proposal_that_does_not_extend_the_head_is_not_committed(
        make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = run.builder.propose(1, broadcast(run, 1), {})
    stale = replace(block, prev_hash="0" * 64)
    outcome = run.builder.commit(stale, endorse_block(run.nodes, stale)[0])
    assert not outcome.committed and "does not extend" in outcome.reason
    assert verify_ledger(run.path).blocks == []


# ------------------------------------------------------------ endorsement refusals
def round_one(run: Run) -> Block:
    """Everyone broadcasts in round 1; node 0 finds node 3's bytes wrong. The honest
    proposal (nobody has endorsed it yet)."""
    sent = broadcast(run, 1, bad_bytes={(3, 0)})
    return run.builder.propose(1, sent, {p.position: p.report(1) for p in run.nodes})


def variant(block: Block, **changes: Any) -> Block:
    """``block`` rebuilt canonically (evidence recomputed) with ``changes``."""
    fields = {"height": block.height, "round": block.round, "run_id": block.run_id,
              "prev_hash": block.prev_hash, "timestamp_ms": block.timestamp_ms,
              "commitments": block.commitments, "rejections": block.rejections, **changes}
    return make_block(**fields)


def test_an_honest_proposal_is_endorsed_by_everyone(make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = round_one(run)
    assert block.rejections == (Rejection(1, 0, 3, digest(3, 1), "digest_mismatch"),)
    endorsements, refusals = endorse_block(run.nodes, block)
    assert refusals == {} and sorted(endorsements) == [0, 1, 2, 3]


def test_a_participant_refuses_a_proposal_omitting_a_header_it_accepted_or_sent(
        make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = round_one(run)
    censored = variant(block, commitments=[h for h in block.commitments if h.sender != 1])
    _, refusals = endorse_block(run.nodes, censored)
    assert refusals == {0: "proposal omits a message this node accepted",
                        1: "proposal omits a message this node sent",
                        2: "proposal omits a message this node accepted",
                        3: "proposal omits a message this node accepted"}


def test_a_participant_refuses_a_proposal_omitting_a_rejection_it_reported(
        make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = round_one(run)
    endorsements, refusals = endorse_block(run.nodes, variant(block, rejections=[]))
    assert refusals == {0: "proposal omits a message this node rejected"}
    assert sorted(endorsements) == [1, 2, 3]


def test_a_participant_refuses_a_proposal_with_a_badly_signed_commitment(
        make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = round_one(run)
    bad = [replace(h, signature=flip_hex(h.signature, 9)) if h.sender == 2 else h
           for h in block.commitments]
    endorsements, refusals = endorse_block(run.nodes, variant(block, commitments=bad))
    assert endorsements == {}
    assert set(refusals.values()) == {"commitment of node 2 has an invalid signature"}


def test_a_participant_endorses_one_block_per_round_only(make_run: Callable[..., Run]) -> None:
    run = make_run(4)
    block = round_one(run)
    node = run.nodes[1]
    first, refusal = node.endorse(block.body())
    assert first is not None and refusal is None
    signature, refusal = node.endorse(variant(block, timestamp_ms=block.timestamp_ms + 1).body())
    assert signature is None and refusal == "already endorsed another block for round 1"
    assert node.endorse(block.body()) == (first, None)  # the same block again is fine


@pytest.mark.parametrize("policy", ["keep", "exclude"])
def test_a_proven_equivocator_is_excluded_only_under_the_exclude_policy(
        make_run: Callable[..., Run], policy: str) -> None:
    run = make_run(4, policy=policy)
    sent = broadcast(run, 1, senders=[0, 1, 2]) + equivocate(run, 1, 3, targets=[0, 1, 2])
    block, outcome = settle(run, 1, sent)
    assert outcome.committed and [e.sender for e in block.evidence] == [3]
    assert run.nodes[0].excluded == ({3} if policy == "exclude" else set())

    array = model(3, 2)
    header = run.nodes[3].sign(2, array_digest(array))
    got, reason = run.nodes[0].receive(2, 3, header.digest, header.to_dict(), fetch_of(array))
    if policy == "exclude":
        assert (got, reason) == (None, "excluded")
    else:
        assert (got, reason) == (array, None)
    block_two, outcome_two = settle(run, 2, [header.to_dict()])
    assert outcome_two.committed
    assert [r.reason for r in block_two.rejections] == (
        ["excluded"] if policy == "exclude" else [])
    assert verify_ledger(run.path).rounds == [1, 2]


def test_a_participant_restored_from_its_state_keeps_its_promises(
        make_run: Callable[..., Run]) -> None:
    """The state dictionary (kept with the node) carries the round it endorsed and the
    equivocators it excludes across a restart."""
    run = make_run(4, policy="exclude")
    sent = broadcast(run, 1, senders=[0, 1, 2]) + equivocate(run, 1, 3, targets=[0, 1, 2])
    block, outcome = settle(run, 1, sent)
    assert outcome.committed
    state = json.loads(json.dumps(run.nodes[0].state_dict()))
    restored = Participant.from_state_dict(state, run.genesis.body())
    assert restored.state_dict() == run.nodes[0].state_dict()
    assert restored.endorse(variant(block, timestamp_ms=1).body()) == (
        None, "already endorsed another block for round 1")
    header = run.nodes[3].sign(2, digest(3, 2))
    assert restored.receive(2, 3, header.digest, header.to_dict(), fetch_of(model(3, 2))) == (
        None, "excluded")


# --------------------------------------------------------------- signatures, digests
#: RFC 8032 section 7.1, TEST 1 and TEST 2: (secret seed, public key, message, signature).
RFC8032_VECTORS = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf"
     "9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f"
     "11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]
BACKENDS = ("openssl", "pycryptodome")


def use_backend(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Switch the signature implementation, forgetting every memoised result."""
    monkeypatch.setenv(crypto.BACKEND_VARIABLE, name)
    crypto.clear_verification_cache()
    crypto._openssl_private_key.cache_clear()
    assert signature_backend() == name


def verdicts(public_key: str, message: bytes, signature: str, other_key: str) -> list[bool]:
    """Whether the signature verifies: as is, with one bit altered, over an altered
    message, under another key, and spelt in upper-case hex."""
    raw = bytearray.fromhex(signature)
    raw[len(raw) // 2] ^= 0x04
    return [verify_signature(public_key, message, signature),
            verify_signature(public_key, message, raw.hex()),
            verify_signature(public_key, message + b"!", signature),
            verify_signature(other_key, message, signature),
            verify_signature(public_key, message, signature.upper())]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_both_backends_reproduce_the_rfc8032_vectors(
        monkeypatch: pytest.MonkeyPatch, backend: str, seed: str, public: str, message: str,
        signature: str) -> None:
    use_backend(monkeypatch, backend)
    keys = KeyPair.from_hex(seed)
    assert keys.public_key == public
    assert keys.sign(bytes.fromhex(message)) == signature
    assert verdicts(public, bytes.fromhex(message), signature, KEYS[0].public_key) == [
        True, False, False, False, False]


@settings(max_examples=40, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_openssl_and_pycryptodome_sign_identically_and_agree_on_verification(
        seed: bytes, message: bytes) -> None:
    keys = KeyPair(seed)
    results = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for backend in BACKENDS:
            use_backend(monkeypatch, backend)
            signature = keys.sign(message)
            results[backend] = (signature, verdicts(keys.public_key, message, signature,
                                                    KEYS[1].public_key))
    crypto.clear_verification_cache()
    assert results["openssl"] == results["pycryptodome"]
    assert results["openssl"][1] == [True, False, False, False, False]


def test_a_non_canonical_spelling_of_a_valid_signature_or_key_does_not_verify() -> None:
    message = b"flwr-tempered"
    signature = KEYS[0].sign(message)
    key = KEYS[0].public_key
    assert verify_signature(key, message, signature)
    for spelling in (signature.upper(), signature[:10].upper() + signature[10:], " " + signature,
                     signature + "00", signature[:-2]):
        assert not verify_signature(key, message, spelling), spelling
    assert not verify_signature(key.upper(), message, signature)


def test_an_unknown_backend_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(crypto.BACKEND_VARIABLE, "libsodium")
    with pytest.raises(ValueError, match="openssl, pycryptodome"):
        signature_backend()


@pytest.mark.parametrize(("array", "header"), [
    (np.array([1.0, 2.0], dtype="<f4"), b"<f4|(2,)|"),
    (np.array([1.0, 2.0], dtype=">f4"), b"<f4|(2,)|"),  # big-endian is made little-endian
    (np.arange(6, dtype="<f8").reshape(2, 3), b"<f8|(2, 3)|"),
    (np.arange(6, dtype="<f8").reshape(2, 3).T, b"<f8|(3, 2)|"),  # not C-contiguous
    (np.array([True, False]), b"|b1|(2,)|"),
    (np.array(7, dtype="<i8"), b"<i8|()|"),  # a 0-d array: its shape is ()
])
def test_array_digest_is_sha256_of_dtype_shape_and_little_endian_c_order_bytes(
        array: Model, header: bytes) -> None:
    little_endian_c_order = array.astype(array.dtype.newbyteorder("<")).tobytes(order="C")
    assert array_digest(array) == SHA256.new(header + little_endian_c_order).hexdigest()


def test_equal_bytes_with_another_dtype_or_shape_give_another_digest() -> None:
    values = np.zeros(4, dtype=np.float32)
    assert len({array_digest(values), array_digest(values.view(np.int32)),
                array_digest(values.reshape(2, 2)), array_digest(values.reshape(4, 1))}) == 4


def test_a_scalar_array_and_a_one_element_vector_have_different_digests() -> None:
    assert array_digest(np.array(7.0)) != array_digest(np.array([7.0]))


# ------------------------------------------------------------------------ Merkle
def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_merkle_roots_of_one_two_and_three_leaves_by_hand() -> None:
    a, b, c = b"a", b"b", b"c"
    la, lb, lc = h(b"\x00a"), h(b"\x00b"), h(b"\x00c")
    assert merkle_root([a]) == la.hex()
    assert merkle_root([a, b]) == h(b"\x01" + la + lb).hex()
    # an odd node is promoted unchanged, never paired with a copy of itself
    assert merkle_root([a, b, c]) == h(b"\x01" + h(b"\x01" + la + lb) + lc).hex()
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


def test_the_empty_merkle_root_is_a_fixed_constant() -> None:
    assert merkle_root([]) == EMPTY_ROOT == h(b"flwr-tempered/merkle/empty").hex()
    assert merkle_root([]) != merkle_root([b""])


def test_a_leaf_cannot_pass_for_an_inner_node() -> None:
    """Domain separation: the root of two leaves is not the root of the one leaf made of
    the two child hashes."""
    children = h(b"\x00a") + h(b"\x00b")
    assert merkle_root([b"a", b"b"]) != merkle_root([children])


def test_leaf_order_matters() -> None:
    assert merkle_root([b"a", b"b"]) != merkle_root([b"b", b"a"])


@settings(max_examples=60, deadline=None)
@given(leaves=st.lists(st.binary(max_size=8), min_size=1, max_size=9), data=st.data())
def test_changing_any_one_leaf_changes_the_root(leaves: list[bytes], data: st.DataObject
                                                ) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1), label="index")
    new = data.draw(st.binary(max_size=8).filter(lambda x: x != leaves[index]), label="new")
    changed = [*leaves[:index], new, *leaves[index + 1:]]
    assert merkle_root(changed) != merkle_root(leaves)
