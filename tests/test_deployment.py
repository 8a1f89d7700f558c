"""The same ServerApp and ClientApp in Flower's deployment mode, set up as the README
documents: a SuperLink and four SuperNodes on 127.0.0.1, each with its peer
(``flwr-tempered peer``), in process isolation with a warm ClientApp worker
(``flwr-tempered clientapp``) and capped polling (``flwr-tempered supernode``); the run
submitted with ``flwr run``; models travel inline through the SuperLink, then peer to peer.

The test starts every process in its own process group and stops exactly those groups.
Both runs together take about 100 s on two cores.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from process_groups import free_port, stop_groups

from flwr_tempered.ledger import LEDGER_FILE, verify_ledger

pytestmark = pytest.mark.end_to_end

REPO = Path(__file__).resolve().parent.parent


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def readme_connection(address: str) -> tuple[str, str]:
    """The README's ``~/.flwr/config.toml`` block, pointed at ``address``: (the connection's
    name, the file's text). The test uses the README's own text, so that it cannot drift."""
    block = re.search(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert block, "README.md lost its config.toml block"
    name = re.search(r"^\[superlink\.([\w-]+)\]$", block.group(1), re.MULTILINE)
    assert name and "COORDINATOR:8000" in block.group(1)
    return name.group(1), block.group(1).replace("COORDINATOR:8000", address)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A SuperLink and four SuperNodes (partition ids 0..3); yields (env, home)."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    port = free_port()
    log = (tmp_path / "federation.log").open("w")
    processes = [subprocess.Popen(
        ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
         "--database", str(home / "state.db")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )]
    try:
        wait_for_port(port, 60)
        peer_ports = [free_port() for _ in range(4)]
        for partition, peer_port in enumerate(peer_ports):
            token = tmp_path / f"peer-{partition}.token"
            processes.append(subprocess.Popen(
                ["flwr-tempered", "peer", "--listen", f"127.0.0.1:{peer_port}",
                 "--token-file", str(token)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
            wait_for_port(peer_port, 60)  # it writes the token the SuperNode reads
            node_config = (f"partition-id={partition} num-partitions=4 "
                           f"peer-url='http://127.0.0.1:{peer_port}' "
                           f"peer-token-file='{token}' ledger-dir='{tmp_path / 'chains'}'")
            runtime = free_port()
            processes.append(subprocess.Popen(
                ["flwr-tempered", "supernode", "--poll-cap", "0.1", "--", "--insecure",
                 "--superlink", f"127.0.0.1:{port}", "--node-config", node_config,
                 "--port", str(runtime), "--isolation", "process"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
            processes.append(subprocess.Popen(
                ["flwr-tempered", "clientapp", "--runtime-api-address",
                 f"127.0.0.1:{runtime}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        name, connection = readme_connection(f"127.0.0.1:{port}")
        (home / "config.toml").write_text(connection)
        env["FEDERATION"] = name
        yield env, tmp_path
    finally:
        stop_groups(processes, seconds=30)
        log.close()


def run_deployed(env: dict[str, str], out: Path, exchange: str) -> list[dict[str, Any]]:
    """Submit the repository's app with ``flwr run``; its metrics lines."""
    run_config = (
        "nodes=4 byzantine=1 topology='ring' topology-args='{}' dataset='digits' "
        f"rounds=2 eval-every=2 exchange='{exchange}' attack='sign_flip' attack-args='{{}}' "
        "rule='median' local-steps=30 lr=0.1 round-timeout=60.0 partition='label_sorted' "
        f"out='{out}'"
    )
    result = subprocess.run(
        ["flwr", "run", str(REPO), env["FEDERATION"], "--stream", "--run-config", run_config],
        env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_apps_run_unchanged_on_a_superlink_with_four_supernodes(
    federation: tuple[dict[str, str], Path]
) -> None:
    """Inline, then peer to peer on the same federation: the same results for the seed,
    and with p2p not one model byte through the SuperLink in any round."""
    env, folder = federation
    inline = run_deployed(env, folder / "inline", "inline")
    assert [m["round"] for m in inline] == [0, 2]
    assert all(m["dropped_nodes"] == 0 for m in inline)
    last = inline[-1]
    # Every honest node of the ring aggregated both neighbours' models (one of them the
    # attacker's vector) and nothing was rejected.
    assert last["rule_received"] == 2.0 and last["rejected_malformed"] == 0.0
    assert last["accuracy_mean"] is not None and last["consensus_distance"] is not None
    config = json.loads((folder / "inline" / "config.json").read_text())
    assert config["exchange"] == "inline" and config["nodes"] == 4
    p2p = run_deployed(env, folder / "p2p", "p2p")
    for mine, theirs in zip(p2p, inline, strict=True):
        for key in ("accuracy_mean", "accuracy_min", "consensus_distance", "rule_received",
                    "dropped_nodes", "rejected_malformed"):
            assert mine.get(key) == pytest.approx(theirs.get(key), rel=1e-6, abs=1e-9), key
    relayed = [t["relay_model_bytes"] for t in json.loads(
        (folder / "p2p" / "timings.json").read_text())]
    assert len(relayed) == 3 and relayed == [0, 0, 0]
    assert all(m["relay_model_bytes"] > 0 for m in inline)
    assert p2p[-1]["p2p_fetched_bytes"] > 0
    # The ledger, held by the nodes: each honest node's own copy of the p2p run's chain
    # (endorsements shared peer to peer) is the relay's, block for block.
    relay = verify_ledger(folder / "p2p" / LEDGER_FILE)
    assert relay.rounds == [1, 2]
    copies = [verify_ledger(path) for path in sorted((folder / "chains").glob("ledger-*"))]
    mine = [copy for copy in copies if copy.genesis.hash == relay.genesis.hash]
    assert len(mine) == 3  # the honest nodes; the attacker keeps none
    assert all([b.hash for b in c.blocks] == [b.hash for b in relay.blocks] for c in mine)
    timings = json.loads((folder / "p2p" / "timings.json").read_text())
    assert sum(t["ledger_proposal_conflicts"] for t in timings) == 0
