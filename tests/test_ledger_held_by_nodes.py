"""The ledger held by the nodes: each honest node checks the commit certificates the relay
hands out, keeps the head it holds a certificate for (and, with ``ledger-dir`` in its node
config, its own copy of the chain), and refuses any proposal that does not extend that
head. A relay that withholds a committed block or proposes on an older parent is refused
by the nodes themselves; the tests swap such a relay in for the honest one. Peer to peer,
the nodes also share their heads, so a block withheld from some nodes reaches them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.serverapp import Grid
from process_groups import free_port
from test_decentralized import SMALL as DECENTRALIZED_SMALL

from flwr_tempered.ledger import LedgerStore, verify_ledger
from flwr_tempered.ledger.block import Block
from flwr_tempered.node import RunConfig, topology_of
from flwr_tempered.runtime.client import (
    PEER_TOKEN_KEY,
    PEER_URL_KEY,
    load_participant,
    make_client_app,
)
from flwr_tempered.runtime.local_grid import LocalGrid
from flwr_tempered.runtime.node_ledger import LEDGER_DIR_KEY
from flwr_tempered.runtime.peer import PeerServer, read_token
from flwr_tempered.runtime.protocol import GENESIS_STATE, INSTRUCTIONS, TRAIN
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


def test_a_block_withheld_from_some_nodes_reaches_them_through_their_neighbours_peers(
        tmp_path: Path) -> None:
    """Peer to peer, each honest node shares its certified head on its peer and reads its
    neighbours'. A relay that hands round 1's certificate to nodes 0 and 1 only cannot
    keep it from the others: they adopt it from a neighbour (checking the quorum and the
    block themselves), report it as withheld, and round 2's block (proposed on round 1's
    in the same message) still commits. Round 1's certificate rides on the message of
    round 3 (proposed after round 1, endorsed with round 2's message, committed after
    it)."""
    config = RunConfig(**{**SMALL, "topology": "ring", "exchange": "p2p"})
    tokens = [tmp_path / f"token-{i}" for i in range(config.nodes)]
    servers = [PeerServer("127.0.0.1", free_port(), read_token(path, create=True)).start()
               for path in tokens]
    grid = grid_for(config, tmp_path / "chains")
    for position, (server, token) in enumerate(zip(servers, tokens, strict=True)):
        grid.contexts[position + 1].node_config.update(
            {PEER_URL_KEY: server.url, PEER_TOKEN_KEY: str(token)})

    class PartialRelay(DecentralizedStrategy):
        def _send(self, grid, kind, payloads, node_ids, mailbox=None):  # type: ignore[no-untyped-def]
            if kind == TRAIN:
                payloads = {p: ({**i, "certificate": None}
                                if i.get("round") == 3 and p not in (0, 1) else i)
                            for p, i in payloads.items()}
            return super()._send(grid, kind, payloads, node_ids, mailbox)

    try:
        metrics = PartialRelay(config).start(grid, ledger=tmp_path / "relay.sqlite")
    finally:
        for server in servers:
            server.stop()
    relay = verify_ledger(tmp_path / "relay.sqlite")
    assert relay.rounds == [1, 2, 3]  # without the neighbours' heads, round 2's is refused
    honest = honest_positions(config)
    assert [m["ledger_withheld_blocks"] for m in metrics] == [0, 0, 0, len(honest - {0, 1})]
    for position in honest:
        participant = load_participant(grid.contexts[position + 1])
        assert participant is not None and participant.head == (3, relay.head_hash)
    for path in sorted((tmp_path / "chains").glob("ledger-*.sqlite")):
        assert verify_ledger(path).head_hash == relay.head_hash
