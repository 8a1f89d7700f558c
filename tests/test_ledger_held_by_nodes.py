"""The ledger held by the nodes: each honest node checks the commit certificates the relay
hands out, keeps the head it holds a certificate for (and, with ``ledger-dir`` in its node
config, its own copy of the chain), and refuses any proposal that does not extend that
head. A relay that withholds a committed block or proposes on an older parent is refused
by the nodes themselves; the tests swap such a relay in for the honest one. Peer to peer,
the nodes also share their heads and endorsements (votes), so they certify blocks
without the relay's certificates, learn proposals the relay kept from them, and expose a
relay that shows different nodes different proposals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.serverapp import Grid
from process_groups import free_port
from test_decentralized import SMALL as DECENTRALIZED_SMALL
from test_ledger_votes import twin
from test_peer_exchange import attach_peers

from flwr_tempered.ledger import LedgerStore, ProposalConflict, verify_ledger
from flwr_tempered.ledger.block import Block
from flwr_tempered.node import RunConfig, topology_of
from flwr_tempered.runtime.client import (
    load_participant,
    make_client_app,
)
from flwr_tempered.runtime.local_grid import LocalGrid
from flwr_tempered.runtime.node_ledger import LEDGER_DIR_KEY
from flwr_tempered.runtime.peer import PeerServer, read_token
from flwr_tempered.runtime.protocol import COMMIT, GENESIS_STATE, INSTRUCTIONS, TRAIN
from flwr_tempered.strategies import DecentralizedStrategy

#: Six nodes on a complete graph, digits, 3 rounds, the ledger on (f = 1, quorum 3).
SMALL: dict[str, Any] = {**DECENTRALIZED_SMALL, "local_steps": 5, "ledger": True,
                         "exchange": "inline"}
PARENT_REFUSAL = "proposal's parent is not the last certified block"


def grid_for(config: RunConfig, chains: Path | None = None) -> LocalGrid:
    grid = LocalGrid(make_client_app(config), config.nodes)
    if chains is not None:
        for context in grid.contexts.values():
            context.node_config[LEDGER_DIR_KEY] = str(chains)
    return grid


def honest_positions(config: RunConfig) -> set[int]:
    return set(range(config.nodes)) - topology_of(config).byzantine


def test_every_honest_node_keeps_the_relays_chain_and_its_head(tmp_path: Path) -> None:
    config = RunConfig(**SMALL)
    grid = grid_for(config, tmp_path / "chains")
    strategy = DecentralizedStrategy(config)
    strategy.start(grid, ledger=tmp_path / "relay.sqlite")
    relay = verify_ledger(tmp_path / "relay.sqlite")
    assert relay.rounds == [1, 2, 3] and strategy.refusals == []
    copies = sorted((tmp_path / "chains").glob("ledger-*.sqlite"))
    assert len(copies) == len(honest_positions(config))  # Byzantine nodes keep none
    for path in copies:
        report = verify_ledger(path)
        assert report.genesis.hash == relay.genesis.hash
        assert [b.hash for b in report.blocks] == [b.hash for b in relay.blocks]
    for position in honest_positions(config):
        participant = load_participant(grid.contexts[position + 1])
        assert participant is not None
        assert participant.head == (3, relay.head_hash) and participant.pending == {}


class WithholdingRelay(DecentralizedStrategy):
    """Commits round 1's block but never hands out its certificate, then proposes round
    2's block on top of it (as if the nodes knew it)."""

    def _commit(self, proposal: Block, log: Any) -> None:
        super()._commit(proposal, log)
        if proposal.round == 1:
            self.certificate = None


class RollbackRelay(DecentralizedStrategy):
    """Hands out round 1's certificate, then proposes round 2's block on the genesis
    again (a rollback that forgets round 1)."""

    def _commit(self, proposal: Block, log: Any) -> None:
        super()._commit(proposal, log)
        if proposal.round == 1:
            assert self.builder is not None
            self.builder.head_hash = self.builder.genesis.hash
            self.builder.height = 0


@pytest.mark.parametrize("relay", [WithholdingRelay, RollbackRelay],
                         ids=["withholds a committed block", "proposes on an older parent"])
def test_the_nodes_refuse_a_relay_that_hides_or_rolls_back_blocks(
        tmp_path: Path, relay: type[DecentralizedStrategy]) -> None:
    config = RunConfig(**SMALL)
    grid: Grid = grid_for(config)
    strategy = relay(config)
    metrics = strategy.start(grid, ledger=tmp_path / "relay.sqlite")
    honest = honest_positions(config)
    refused = {(round_, node) for round_, node, reason in strategy.refusals
               if reason.startswith(PARENT_REFUSAL)}
    # every honest node refuses round 2's proposal, so it never reaches a quorum ...
    assert {node for round_, node in refused if round_ == 2} == honest
    with LedgerStore(tmp_path / "relay.sqlite", create=False) as store:
        assert [round_ for round_, _ in store.uncommitted()][:1] == [2]
        assert PARENT_REFUSAL in store.uncommitted()[0][1]
    # ... and the run itself goes on: every round trains and is evaluated
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    assert all(m["dropped_nodes"] == 0 for m in metrics)


def test_a_forged_certificate_moves_no_head(tmp_path: Path) -> None:
    """A relay that sends a certificate with too few valid endorsements (here: all but
    one signature flipped) gets it refused, and the node's head stays put."""

    class ForgingRelay(DecentralizedStrategy):
        def _commit(self, proposal: Block, log: Any) -> None:
            super()._commit(proposal, log)
            if proposal.round == 1 and self.certificate is not None:
                signatures = dict(self.certificate["signatures"])
                for validator in list(signatures)[1:]:
                    signatures[validator] = "00" * 64
                self.certificate = {**self.certificate, "signatures": signatures}

    config = RunConfig(**SMALL)
    grid = grid_for(config)
    strategy = ForgingRelay(config)
    strategy.start(grid, ledger=tmp_path / "relay.sqlite")
    assert {node for round_, node, reason in strategy.refusals
            if round_ == 2 and reason.startswith(PARENT_REFUSAL)} == honest_positions(config)
    for position in honest_positions(config):
        participant = load_participant(grid.contexts[position + 1])
        assert participant is not None and participant.head is not None
        assert participant.head[0] == 0  # never certified round 1, nothing after it


def test_the_genesis_travels_once_per_node_and_is_checked_by_hash_after(tmp_path: Path
                                                                        ) -> None:
    """Each node gets the genesis with its first ledger message and only its hash after;
    a node that lost it (its state wiped) fails that round, gets it again, and goes on."""
    config = RunConfig(**SMALL)
    grid = grid_for(config)
    carried: list[tuple[int, int, bool]] = []  # (message round, node, body carried)
    push = grid.push_messages
    wiped = False

    def recording_push(messages):  # type: ignore[no-untyped-def]
        nonlocal wiped
        messages = list(messages)
        for message in messages:
            instructions = json.loads(str(message.content[INSTRUCTIONS]["json"]))
            if "genesis" in instructions or "genesis_hash" in instructions:
                carried.append((instructions.get("round", -1), message.metadata.dst_node_id,
                                bool(instructions.get("genesis"))))
        if not wiped and any(r == 2 for r, _, _ in carried):
            del grid.contexts[2].state[GENESIS_STATE]  # node 1 loses its pinned genesis
            wiped = True
        return push(messages)

    grid.push_messages = recording_push  # type: ignore[method-assign]
    metrics = DecentralizedStrategy(config).start(grid, ledger=tmp_path / "relay.sqlite")
    bodies = [(round_, node) for round_, node, body in carried if body]
    assert sorted(node for round_, node in bodies if round_ == 0) == list(range(1, 7))
    assert [(r, n) for r, n in bodies if r != 0] == [(3, 2)]  # again only after the loss
    assert [m["dropped"] for m in metrics] == [[], [], [1], []]
    assert verify_ledger(tmp_path / "relay.sqlite").rounds == [1, 2, 3]


P2P: dict[str, Any] = {**SMALL, "topology": "ring", "exchange": "p2p"}


def run_p2p(relay: type[DecentralizedStrategy], tmp_path: Path
            ) -> tuple[DecentralizedStrategy, LocalGrid, RunConfig]:
    """A ``p2p`` run (six nodes on a ring, node 5 Byzantine) under ``relay``, each node
    with its own peer and its own copy of the chain under ``tmp_path / "chains"``."""
    config = RunConfig(**P2P)
    tokens = [tmp_path / f"token-{i}" for i in range(config.nodes)]
    servers = [PeerServer("127.0.0.1", free_port(), read_token(path, create=True)).start()
               for path in tokens]
    grid = grid_for(config, tmp_path / "chains")
    attach_peers(grid, servers, tokens)
    strategy = relay(config)
    try:
        strategy.start(grid, ledger=tmp_path / "relay.sqlite")
    finally:
        for server in servers:
            server.stop()
    return strategy, grid, config


def assert_every_honest_node_holds_the_relays_chain(grid: LocalGrid, config: RunConfig,
                                                    tmp_path: Path) -> None:
    relay = verify_ledger(tmp_path / "relay.sqlite")
    assert relay.rounds == [1, 2, 3]
    for position in honest_positions(config):
        participant = load_participant(grid.contexts[position + 1])
        assert participant is not None and participant.head == (3, relay.head_hash)
    copies = sorted((tmp_path / "chains").glob("ledger-*.sqlite"))
    assert len(copies) == len(honest_positions(config))
    for path in copies:
        assert [b.hash for b in verify_ledger(path).blocks] == [b.hash for b in relay.blocks]


def total(strategy: DecentralizedStrategy, key: str) -> float:
    return sum(timing.get(key, 0.0) for timing in strategy.timings)


class SilentRelay(DecentralizedStrategy):
    """Commits every block but hands no node any commit certificate."""

    def _send(self, grid, kind, payloads, node_ids, mailbox=None):  # type: ignore[no-untyped-def]
        if kind in (TRAIN, COMMIT):
            payloads = {p: {**i, "certificate": None} for p, i in payloads.items()}
        return super()._send(grid, kind, payloads, node_ids, mailbox)


def test_without_a_single_certificate_from_the_relay_the_nodes_certify_the_chain_themselves(
        tmp_path: Path) -> None:
    """Peer to peer, each honest node shares its endorsements on its peer and reads the
    other validators': a quorum of them certifies each block, so a relay that hands out
    no certificate at all still cannot keep the chain from the nodes, and every proposal
    extends what they hold (no refusals). Without the shared endorsements no node would
    hold any block and every proposal after the first would be refused."""
    strategy, grid, config = run_p2p(SilentRelay, tmp_path)
    assert strategy.refusals == []
    assert_every_honest_node_holds_the_relays_chain(grid, config, tmp_path)
    # every honest node certified each of the 3 blocks from its peers' endorsements
    assert total(strategy, "ledger_certified_by_peers") == 3 * len(honest_positions(config))
    assert total(strategy, "ledger_withheld_blocks") > 0
    assert strategy.proposal_conflicts == []


class HidingRelay(DecentralizedStrategy):
    """Never shows node 0 a proposal (so it endorses nothing the relay asks for)."""

    def _send(self, grid, kind, payloads, node_ids, mailbox=None):  # type: ignore[no-untyped-def]
        if kind in (TRAIN, COMMIT) and 0 in payloads:
            payloads = {**payloads, 0: {**payloads[0], "proposal": None}}
        return super()._send(grid, kind, payloads, node_ids, mailbox)


def test_a_node_the_relay_never_shows_a_proposal_still_holds_every_block(tmp_path: Path
                                                                         ) -> None:
    """Node 0 learns each block from the other validators' votes (the relay's certificate
    alone names a block node 0 never saw), the last one included, and in the same message
    as the others: it never lags behind and has to catch up from their heads later
    (which would count as a withheld block)."""
    strategy, grid, config = run_p2p(HidingRelay, tmp_path)
    assert strategy.refusals == []
    assert_every_honest_node_holds_the_relays_chain(grid, config, tmp_path)
    assert total(strategy, "ledger_withheld_blocks") == 0


class EquivocatingRelay(DecentralizedStrategy):
    """Shows nodes 0 and 1 another block for round 1 than the others: the same contents
    with another timestamp."""

    def _send(self, grid, kind, payloads, node_ids, mailbox=None):  # type: ignore[no-untyped-def]
        if kind == TRAIN:
            payloads = {p: ({**i, "proposal": twin_of_round_one(i["proposal"])}
                            if p in (0, 1) and i.get("proposal") else i)
                        for p, i in payloads.items()}
        return super()._send(grid, kind, payloads, node_ids, mailbox)


def twin_of_round_one(body: str) -> str:
    """Round 1's proposal replaced by its twin (same contents, another timestamp)."""
    block = Block.from_body(body.encode("ascii"))
    return twin(block).body().decode("ascii") if block.round == 1 else body


def test_a_relay_showing_nodes_different_proposals_is_exposed_by_their_votes(
        tmp_path: Path) -> None:
    """Nodes endorsing different blocks of round 1 see each other's votes: each keeps the
    pair as evidence (checkable by anyone with the genesis) in its own file, out of the
    relay's reach; the block a quorum endorsed is the one every node holds."""
    strategy, grid, config = run_p2p(EquivocatingRelay, tmp_path)
    assert_every_honest_node_holds_the_relays_chain(grid, config, tmp_path)
    genesis = verify_ledger(tmp_path / "relay.sqlite").genesis
    relay_block = verify_ledger(tmp_path / "relay.sqlite").blocks[0]
    assert len(strategy.proposal_conflicts) == 1
    conflict = ProposalConflict.from_dict(strategy.proposal_conflicts[0])
    assert conflict.problem(genesis) is None and conflict.round == 1
    assert relay_block.hash in conflict.hashes
    files = sorted((tmp_path / "chains").glob("conflicts-*.jsonl"))
    assert files  # the nodes' own evidence
    for path in files:
        for line in path.read_text().splitlines():
            evidence = ProposalConflict.from_dict(json.loads(line))
            assert evidence.problem(genesis) is None and evidence.hashes == conflict.hashes
    assert total(strategy, "ledger_proposal_conflicts") >= len(files)
