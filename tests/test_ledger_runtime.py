"""The ledger inside real decentralized runs (Flower simulation, small offline settings).

Every run must leave a ``ledger.sqlite`` that verifies offline; forged, replayed,
mismatched and unsigned messages are refused by every honest receiver and listed in the
blocks; per-recipient attacks leave evidence against exactly the attackers; a run whose
honest validators cannot reach the quorum commits no block and says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_decentralized import SMALL as DECENTRALIZED_SMALL

from flwr_tempered.experiments.cli import main
from flwr_tempered.experiments.simulate import simulate
from flwr_tempered.ledger import LEDGER_FILE, LedgerReport, verify_ledger
from flwr_tempered.node import RunConfig, topology_of
from flwr_tempered.results import read_metrics

pytestmark = pytest.mark.slow

#: The decentralized tests' small run (6 nodes, complete graph, digits, 3 rounds).
SMALL: dict[str, Any] = {**DECENTRALIZED_SMALL, "local_steps": 10}


def run(tmp_path: Path, name: str, **overrides: Any) -> tuple[RunConfig, LedgerReport,
                                                                list[dict[str, Any]]]:
    config = RunConfig(**{**SMALL, **overrides})
    folder = simulate(config, tmp_path / name)
    assert (folder / LEDGER_FILE).is_file()
    return config, verify_ledger(folder), read_metrics(folder)


def test_a_run_leaves_one_endorsed_block_per_round_and_the_cli_verifies_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, report, metrics = run(tmp_path, "clean")
    honest = set(range(config.nodes)) - topology_of(config).byzantine
    assert report.rounds == [1, 2, 3]
    assert report.genesis.n == config.nodes and report.genesis.quorum == 3  # f = 1
    assert all(set(signers) == honest for signers in report.signers)  # Byzantine abstain
    # every node commits one broadcast header per round
    assert all(sorted(h.sender for h in b.commitments) == list(range(config.nodes))
               for b in report.blocks)
    assert report.rejections == [] and report.evidence == []
    assert metrics[-1]["ledger_blocks"] == 2  # the last block is committed after the line
    assert main(["ledger", "verify", str(tmp_path / "clean")]) == 0
    assert "genesis and 3 blocks verify" in capsys.readouterr().out
    assert main(["ledger", "show", str(tmp_path / "clean")]) == 0
    assert "validators    6 (f = 1, quorum 3)" in capsys.readouterr().out


def test_forged_replayed_mismatched_and_unsigned_messages_are_refused_and_recorded(
        tmp_path: Path) -> None:
    faults = {"0": "forge", "1": "replay", "2": "mismatch", "3": "unsigned"}
    reasons = {0: "bad_signature", 1: "replayed", 2: "digest_mismatch", 3: "unsigned"}
    config, report, metrics = run(
        tmp_path, "faults", faults={p: {"kind": k} for p, k in faults.items()})
    byzantine = topology_of(config).byzantine
    for block in report.blocks:
        by_sender: dict[int, set[str]] = {}
        for rejection in block.rejections:
            by_sender.setdefault(rejection.sender, set()).add(rejection.reason)
            assert rejection.receiver not in byzantine  # only honest nodes report
        for sender, reason in reasons.items():
            if sender == 1 and block.round == 1:  # nothing earlier to replay yet
                assert sender not in by_sender
                continue
            assert by_sender.get(sender) == {reason}, (block.round, sender, by_sender)
        receivers = {r.receiver for r in block.rejections if r.sender == 0}
        assert receivers == set(range(config.nodes)) - byzantine - {0}
    line = metrics[-1]
    for reason in reasons.values():
        assert line[f"rejected_{reason}"] >= 1, reason
    assert line["dropped_nodes"] == 0  # nobody crashed: refused messages are skipped
    assert line["accuracy_mean"] > metrics[0]["accuracy_mean"]  # and training goes on


def test_per_recipient_attack_leaves_evidence_against_exactly_the_attackers(
        tmp_path: Path) -> None:
    overrides = {"topology": "erdos_renyi", "topology_args": {"p": 0.6}, "nodes": 8,
                 "byzantine": 2, "rule": "clipped_gossip", "rule_args": {"tau": 2.0},
                 "attack": "dissensus", "attack_args": {}, "rounds": 3}
    config, report, metrics = run(tmp_path, "keep", **overrides)
    topology = topology_of(config)
    expected = {b for b in topology.byzantine if len(topology.honest_neighbors(b)) >= 2}
    assert expected and set(report.equivocators) == expected
    for block in report.blocks:
        assert {e.sender for e in block.evidence} == expected
        for record in block.evidence:
            assert record.problem(report.genesis.keys) is None
    assert "rejected_excluded" not in metrics[-1]

    _, excluded_report, excluded_metrics = run(tmp_path, "exclude", **overrides,
                                               equivocators="exclude")
    # evidence of round 1 reaches the nodes with round 2's proposal: from the message that
    # aggregates round 2 on, every honest neighbour of an attacker refuses it
    late = [r for r in excluded_report.rejections if r.round >= 2]
    assert {r.sender for r in late} == expected
    assert {r.reason for r in late} == {"excluded"}
    assert excluded_metrics[-1]["rejected_excluded"] >= 1


def test_without_an_honest_quorum_no_block_is_committed_and_the_ledger_says_why(
        tmp_path: Path) -> None:
    # 7 validators tolerate f = 2: blocks need 5 endorsements, only 4 honest nodes endorse
    _, report, metrics = run(tmp_path, "no-quorum", nodes=7, byzantine=3, rule="median",
                             rule_args={}, ledger_f=2)
    assert report.blocks == []
    assert [r for r, _ in report.uncommitted] == [1, 2, 3]
    assert all("4 valid endorsements of 7 validators, quorum is 5" in why
               for _, why in report.uncommitted)
    assert metrics[-1]["ledger_blocks"] == 0
