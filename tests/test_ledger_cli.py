"""``flwr-tempered ledger verify|show``: exit codes and what they print."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from flwr_tempered.digest import array_digest
from flwr_tempered.experiments.cli import main
from flwr_tempered.ledger import BlockBuilder, Genesis, KeyPair, LedgerStore, Participant


def _ledger(folder: Path, rounds: int = 2) -> Path:
    """A 4-node ledger where node 0 equivocates every round."""
    nodes = [Participant(i, KeyPair.generate(), "cli") for i in range(4)]
    intro = [n.introduce() for n in nodes]
    genesis = Genesis("cli", 0, 1, {i: x["public_key"] for i, x in enumerate(intro)},
                      {i: x["proof"] for i, x in enumerate(intro)})
    for node in nodes:
        node.adopt_genesis(genesis.body())
    builder = BlockBuilder(LedgerStore(folder / "ledger.sqlite"), genesis)
    for round in range(1, rounds + 1):
        sent = [nodes[0].sign(round, array_digest(np.full(2, float(round))), 1),
                nodes[0].sign(round, array_digest(np.full(2, -float(round))), 2),
                nodes[3].sign(round, array_digest(np.zeros(2)))]
        block = builder.propose(round, [h.to_dict() for h in sent], {})
        signatures = {n.position: n.endorse(block.body())[0] for n in nodes[1:]}
        valid = {k: v for k, v in signatures.items() if v}
        assert builder.commit(block, valid).committed
        for node in nodes[1:]:  # the certificate, as the next message brings it
            assert node.accept_certificate(block.hash, valid)[1] is None
    builder.store.close()
    return folder


def test_verify_exits_0_on_a_good_ledger_and_1_naming_a_tampered_block(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _ledger(tmp_path)
    assert main(["ledger", "verify", str(folder)]) == 0
    assert "genesis and 2 blocks verify (2 evidence records" in capsys.readouterr().out
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        db.execute("DROP TRIGGER blocks_no_update")
        db.execute("UPDATE blocks SET signatures = replace(signatures, '\"validator\":3', "
                   "'\"validator\":0') WHERE height = 2")
    assert main(["ledger", "verify", str(folder)]) == 1
    assert "block 2 (round 2): signatures are not in canonical form" in capsys.readouterr().err


def test_show_prints_validators_evidence_and_a_row_per_round(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _ledger(tmp_path, rounds=3)
    assert main(["ledger", "show", str(folder / "ledger.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "validators    4 (f = 1, quorum 3)" in out
    assert "evidence      3 equivocation records against nodes 0" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))
                ]) == 3
    assert main(["ledger", "show", "--json", str(folder)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["equivocators"] == [0] and summary["rounds"] == [1, 2, 3]
    head = summary["head_hash"]
    assert main(["ledger", "verify", "--head", head, str(folder)]) == 0
    assert main(["ledger", "verify", "--head", "0" * 64, str(folder)]) == 1


def test_a_missing_ledger_is_a_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "verify", str(tmp_path / "nothing.sqlite")]) == 2
    assert "no ledger at" in capsys.readouterr().err
