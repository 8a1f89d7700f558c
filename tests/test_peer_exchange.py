"""Peer-to-peer exchange (``exchange = "p2p"``): each node's long-lived peer serves its
models to the neighbours this round entitles, on signed requests; the relay carries only
digests, keys and addresses.

The peers run in-process (uvicorn in threads, real HTTP on 127.0.0.1); the relay and the
nodes run on an in-process ``LocalGrid``. The deployment with ``flower-superlink`` and
``flower-supernode`` processes is in test_deployment.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp import ServerApp
from process_groups import free_port

from flwr_tempered.digest import array_digest
from flwr_tempered.ledger.crypto import KeyPair
from flwr_tempered.node import RunConfig
from flwr_tempered.runtime import exchange as exchange_module
from flwr_tempered.runtime.client import (
    PEER_LOCAL_URL_KEY,
    PEER_TOKEN_KEY,
    PEER_URL_KEY,
    make_client_app,
)
from flwr_tempered.runtime.exchange import (
    DigestMismatchError,
    ExchangeError,
    PeerDirectory,
    PeerExchange,
)
from flwr_tempered.runtime.local_grid import LocalGrid
from flwr_tempered.runtime.peer import (
    FETCH_HEADERS,
    RECORD_PREFIX,
    PeerServer,
    PeerStore,
    encode_model,
    read_token,
    signed_fetch_headers,
)
from flwr_tempered.runtime.protocol import TRAIN
from flwr_tempered.runtime.server import make_server_app
from flwr_tempered.strategies import DecentralizedStrategy

MODEL = np.arange(6, dtype=np.float32)
DIGEST = array_digest(MODEL)
OWNER, NEIGHBOUR, STRANGER = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()


def store_with_model(round_: int = 3) -> PeerStore:
    store = PeerStore()
    store.publish(DIGEST, encode_model(MODEL), run="run-a", round=round_,
                  readers=frozenset({NEIGHBOUR.public_key}))
    return store


# ------------------------------------------------------------------ the access rules
def test_an_entitled_signed_request_gets_the_model_once() -> None:
    store = store_with_model()
    headers = signed_fetch_headers(NEIGHBOUR, "run-a", 3, DIGEST)
    body, reason = store.fetch(DIGEST, headers)
    assert reason is None and body == encode_model(MODEL)
    assert store.fetch(DIGEST, headers) == (None, "replayed")  # the same request again
    fresh = signed_fetch_headers(NEIGHBOUR, "run-a", 3, DIGEST)  # a retry: new nonce
    assert store.fetch(DIGEST, fresh)[1] is None
    assert store.stats()["served"] == 2 and store.stats()["refused_replayed"] == 1


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != FETCH_HEADERS[name]}


@pytest.mark.parametrize(("case", "reason"), [
    ("unsigned", "unsigned"),
    ("stranger", "not_neighbour"),
    ("signed by another key", "bad_signature"),
    ("another round", "wrong_round"),
    ("another run", "wrong_round"),
    ("unknown digest", "unknown_model"),
    ("digest swapped after signing", "bad_signature"),
])
def test_every_bad_request_is_refused_and_counted_by_reason(case: str, reason: str) -> None:
    store = store_with_model()
    digest = DIGEST
    if case == "unsigned":
        headers = _without(signed_fetch_headers(NEIGHBOUR, "run-a", 3, DIGEST), "signature")
    elif case == "stranger":
        headers = signed_fetch_headers(STRANGER, "run-a", 3, DIGEST)
    elif case == "signed by another key":  # claims to be the neighbour, signed by a stranger
        headers = {**signed_fetch_headers(STRANGER, "run-a", 3, DIGEST),
                   FETCH_HEADERS["requester"]: NEIGHBOUR.public_key}
    elif case == "another round":
        headers = signed_fetch_headers(NEIGHBOUR, "run-a", 2, DIGEST)
    elif case == "another run":
        headers = signed_fetch_headers(NEIGHBOUR, "run-b", 3, DIGEST)
    elif case == "unknown digest":
        digest = array_digest(MODEL + 1)
        headers = signed_fetch_headers(NEIGHBOUR, "run-a", 3, digest)
    else:
        headers = signed_fetch_headers(NEIGHBOUR, "run-a", 3, array_digest(MODEL + 1))
    assert store.fetch(digest, headers) == (None, reason)
    stats = store.stats()
    assert stats[f"refused_{reason}"] == 1 and stats["served"] == 0
    assert sum(v for k, v in stats.items() if k.startswith("refused_")) == 1


def test_a_publish_whose_bytes_do_not_match_the_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        PeerStore().publish(array_digest(MODEL + 1), encode_model(MODEL), run="r", round=1,
                            readers=frozenset())


def test_old_rounds_are_forgotten() -> None:
    store = store_with_model(round_=1)
    other = MODEL * 2
    store.publish(array_digest(other), encode_model(other), run="run-a", round=4,
                  readers=frozenset({NEIGHBOUR.public_key}))
    headers = signed_fetch_headers(NEIGHBOUR, "run-a", 1, DIGEST)
    assert store.fetch(DIGEST, headers) == (None, "unknown_model")


def test_a_record_is_served_to_its_readers_and_a_replay_stays_refused_after_an_update(
) -> None:
    store = PeerStore()
    store.publish_record("head", b'{"height": 1}', run="run-a",
                         readers=frozenset({NEIGHBOUR.public_key}))
    headers = signed_fetch_headers(NEIGHBOUR, "run-a", 0, RECORD_PREFIX + "head")
    assert store.fetch(RECORD_PREFIX + "head", headers) == (b'{"height": 1}', None)
    store.publish_record("head", b'{"height": 2}', run="run-a",
                         readers=frozenset({NEIGHBOUR.public_key}))
    assert store.fetch(RECORD_PREFIX + "head", headers) == (None, "replayed")
    stranger = signed_fetch_headers(STRANGER, "run-a", 0, RECORD_PREFIX + "head")
    assert store.fetch(RECORD_PREFIX + "head", stranger) == (None, "not_neighbour")
    fresh = signed_fetch_headers(NEIGHBOUR, "run-a", 0, RECORD_PREFIX + "head")
    assert store.fetch(RECORD_PREFIX + "head", fresh) == (b'{"height": 2}', None)
    with pytest.raises(ValueError, match="not a record name"):
        store.publish_record("../x", b"", run="run-a", readers=frozenset())


def test_a_token_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "token"
    token = read_token(path, create=True)
    assert read_token(path) == token and len(token) == 64
    assert path.stat().st_mode & 0o077 == 0
    path.write_text("short")
    with pytest.raises(ValueError, match="shorter than 32"):
        read_token(path)


# ----------------------------------------------------------------------------- HTTP
class TamperingStore(PeerStore):
    """A malicious peer: serves other bytes than the ones published."""

    def fetch(self, digest: str, headers: dict[str, str]) -> tuple[bytes | None, str | None]:
        body, reason = super().fetch(digest, headers)
        return (encode_model(MODEL + 1) if body is not None else None), reason


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[PeerServer, str]]:
    token = read_token(tmp_path / "token", create=True)
    server = PeerServer("127.0.0.1", free_port(), token).start()
    yield server, token
    server.stop()


def exchange_for(keys: KeyPair, url: str, token: str, sources: dict[str, tuple[int, int]]
                 ) -> PeerExchange:
    directory = PeerDirectory("run-a", {0: OWNER.public_key, 1: NEIGHBOUR.public_key,
                                        2: STRANGER.public_key}, {0: url, 1: url, 2: url})
    return PeerExchange(directory=directory, keys=keys, own_url=url, token=token, round=3,
                        sources=sources, timeout=5.0)


def test_publish_and_fetch_over_http_reach_only_the_entitled_reader(
        peer: tuple[PeerServer, str]) -> None:
    server, token = peer
    owner = exchange_for(OWNER, server.url, token, {})
    assert owner.publish(MODEL, RecordDict(), readers=[1], round=3) == DIGEST
    neighbour = exchange_for(NEIGHBOUR, server.url, "x" * 64, {DIGEST: (0, 3)})
    assert np.array_equal(neighbour.fetch(DIGEST, RecordDict()), MODEL)
    assert neighbour.fetched_bytes == len(encode_model(MODEL))
    stranger = exchange_for(STRANGER, server.url, "x" * 64, {DIGEST: (0, 3)})
    with pytest.raises(ExchangeError, match="not_neighbour"):
        stranger.fetch(DIGEST, RecordDict())
    assert stranger.failures == {"refused_not_neighbour": 1}
    assert owner.peer_stats()["refused_not_neighbour"] == 1


def test_only_the_owner_may_publish_or_read_the_stats(peer: tuple[PeerServer, str]) -> None:
    server, _ = peer
    intruder = exchange_for(STRANGER, server.url, "y" * 64, {})
    with pytest.raises(ExchangeError, match="401"):
        intruder.publish(MODEL, RecordDict())
    assert intruder.peer_stats() == {}
    unsigned = httpx.get(f"{server.url}/v1/models/{DIGEST}")
    assert unsigned.status_code == 401 and unsigned.json() == {"refused": "unsigned"}


def test_tampered_bytes_and_an_unreachable_peer_are_refused_and_counted(tmp_path: Path
                                                                         ) -> None:
    token = read_token(tmp_path / "token", create=True)
    server = PeerServer("127.0.0.1", free_port(), token, store=TamperingStore()).start()
    try:
        exchange_for(OWNER, server.url, token, {}).publish(MODEL, RecordDict(), readers=[1])
        neighbour = exchange_for(NEIGHBOUR, server.url, "x" * 64, {DIGEST: (0, 3)})
        with pytest.raises(DigestMismatchError):
            neighbour.fetch(DIGEST, RecordDict())
        assert neighbour.failures == {"tampered": 1}
    finally:
        server.stop()
    with pytest.raises(ExchangeError, match="unreachable"):
        neighbour.fetch(DIGEST, RecordDict())
    assert neighbour.failures["unreachable"] == 1


# --------------------------------------------------------------- a relay run, in process
RUN: dict[str, Any] = {
    "nodes": 6, "byzantine": 1, "topology": "ring", "topology_args": {}, "dataset": "digits",
    "model": "logistic_regression", "rounds": 3, "eval_every": 1, "local_steps": 2,
    "batch_size": 16, "lr": 0.1, "ledger": False, "rule": "trimmed_mean",
    "rule_args": {"b": 1}, "attack": "sign_flip", "attack_args": {}, "round_timeout": 60.0,
}


def attach_peers(grid: LocalGrid, peers: list[PeerServer], tokens: list[Path],
                 behind_nat: frozenset[int] = frozenset()) -> None:
    """Name peer ``i`` in node ``i``'s node config. A node ``behind_nat`` advertises an
    address nobody can reach and reaches its own peer at its real one
    (``peer-local-url``)."""
    for position, (server, token) in enumerate(zip(peers, tokens, strict=True)):
        node_config = {PEER_URL_KEY: server.url, PEER_TOKEN_KEY: str(token)}
        if position in behind_nat:
            node_config = {PEER_URL_KEY: f"http://127.0.0.1:{free_port()}",
                           PEER_LOCAL_URL_KEY: server.url, PEER_TOKEN_KEY: str(token)}
        grid.contexts[position + 1].node_config.update(node_config)


def run_relay_locally(config: RunConfig, out: Path, peers: list[PeerServer] | None = None,
                      tokens: list[Path] | None = None, on_round: Any = None,
                      behind_nat: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """The relay ServerApp and the nodes on a LocalGrid; with ``peers``, node ``i``'s node
    config names peer ``i`` (:func:`attach_peers`)."""
    grid = LocalGrid(make_client_app(config), config.nodes)
    if peers is not None:
        assert tokens is not None
        attach_peers(grid, peers, tokens, behind_nat)
    server_app: ServerApp = make_server_app(config, out, progress=on_round)
    server_app(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={},
                             state=RecordDict(), run_config={}))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def timings(out: Path) -> list[dict[str, float]]:
    return json.loads((out / "timings.json").read_text())


@pytest.fixture
def six_peers(tmp_path: Path) -> Iterator[tuple[list[PeerServer], list[Path]]]:
    tokens = [tmp_path / f"token-{i}" for i in range(6)]
    servers = [PeerServer("127.0.0.1", free_port(), read_token(path, create=True)).start()
               for path in tokens]
    yield servers, tokens
    for server in servers:
        server.stop()


STABLE = ("accuracy_mean", "accuracy_min", "consensus_distance", "rule_received",
          "dropped_nodes")


def test_p2p_gives_the_inline_results_and_no_model_crosses_the_relay(
        tmp_path: Path, six_peers: tuple[list[PeerServer], list[Path]]) -> None:
    servers, tokens = six_peers
    inline = run_relay_locally(RunConfig(**RUN, exchange="inline"), tmp_path / "inline")
    p2p = run_relay_locally(RunConfig(**RUN, exchange="p2p"), tmp_path / "p2p", servers,
                            tokens)
    assert [m["round"] for m in p2p] == [0, 1, 2, 3]
    for mine, theirs in zip(p2p, inline, strict=True):
        for key in STABLE:
            assert mine.get(key) == pytest.approx(theirs.get(key), rel=1e-6, abs=1e-9), key
    assert all(t["relay_model_bytes"] == 0 for t in timings(tmp_path / "p2p"))
    assert all(t["relay_model_bytes"] > 0 for t in timings(tmp_path / "inline"))
    assert all(m["p2p_fetched_bytes"] > 0 for m in p2p[1:])
    assert not any(k.startswith(("p2p_failed", "p2p_refused")) and v for m in p2p
                   for k, v in m.items())
    served = sum(server.store.stats()["served"] for server in servers)
    assert served > 0


def test_an_omniscient_attack_is_refused_the_models_it_is_not_entitled_to(
        tmp_path: Path, six_peers: tuple[list[PeerServer], list[Path]]) -> None:
    """ALIE reads its targets' other neighbours' models through the relay's view; on a
    ring those nodes do not send to the attacker, so their peers refuse and count it, and
    the run goes on."""
    servers, tokens = six_peers
    config = RunConfig(**{**RUN, "attack": "alie", "attack_args": {"z": 1.0}},
                       exchange="p2p")
    metrics = run_relay_locally(config, tmp_path, servers, tokens)
    assert all(m["dropped_nodes"] == 0 for m in metrics)
    assert sum(m.get("p2p_refused_not_neighbour", 0) for m in metrics) > 0
    assert sum(m.get("p2p_failed_refused_not_neighbour", 0) for m in metrics) > 0


def test_a_tampering_peer_and_a_killed_peer_cost_their_models_not_the_run(
        tmp_path: Path) -> None:
    tokens = [tmp_path / f"token-{i}" for i in range(6)]
    servers = [PeerServer("127.0.0.1", free_port(), read_token(path, create=True),
                          store=TamperingStore() if i == 2 else None).start()
               for i, path in enumerate(tokens)]
    killed = servers[4]

    def kill_after_round_one(line: dict[str, Any], _: RunConfig) -> None:
        if line["round"] == 1:
            killed.stop()

    try:
        metrics = run_relay_locally(RunConfig(**RUN, exchange="p2p"), tmp_path, servers,
                                    tokens, on_round=kill_after_round_one)
    finally:
        for server in servers:
            server.stop()
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    assert all(m["accuracy_mean"] is not None for m in metrics)
    # node 2's two neighbours and the auditor refuse its tampered bytes every round; in
    # round 2 node 3 asks twice (below)
    assert [m.get("p2p_failed_tampered", 0) for m in metrics] == [0, 3, 4, 3]
    # node 4's peer is gone after round 1: in round 2 its neighbours 3 and 5 cannot reach
    # the model it published in round 1, ask for the relay's fallback, get nothing (node 4
    # cannot read its own peer either) and try once more; node 4 cannot publish any more,
    # so it is dropped from round 2 on and names no model to fetch in round 3
    assert [m.get("p2p_failed_unreachable", 0) for m in metrics] == [0, 0, 4, 0]
    assert [m.get("p2p_fallback_models", 0) for m in metrics] == [0, 0, 0, 0]
    assert [m["dropped"] for m in metrics] == [[], [], [4], [4]]


def test_a_node_whose_peer_its_neighbours_cannot_reach_gets_through_the_relay_inline(
        tmp_path: Path, six_peers: tuple[list[PeerServer], list[Path]]) -> None:
    """Node 1 is behind a NAT: its advertised peer address answers nobody. Its neighbours
    ask for the relay's fallback, node 1 uploads its model inline, and the run gives the
    inline exchange's results; only those fallback models cross the relay."""
    servers, tokens = six_peers
    inline = run_relay_locally(RunConfig(**RUN, exchange="inline"), tmp_path / "inline")
    p2p = run_relay_locally(RunConfig(**RUN, exchange="p2p"), tmp_path / "p2p", servers,
                            tokens, behind_nat=frozenset({1}))
    for mine, theirs in zip(p2p, inline, strict=True):
        for key in STABLE:
            assert mine.get(key) == pytest.approx(theirs.get(key), rel=1e-6, abs=1e-9), key
    relayed = timings(tmp_path / "p2p")
    # Rounds 1-3: node 1 uploads its half-step model (for its two ring neighbours) and its
    # evaluation model (for the audit). Round 0 needs none: every node starts from the
    # same model, so its digest is served by any peer that holds it.
    assert [t.get("p2p_fallback_models", 0) for t in relayed] == [0, 2, 2, 2]
    # Flower's arrays travel as .npy bytes, the same encoding as peer to peer
    model = len(encode_model(np.zeros(64 * 10 + 10, dtype=np.float32)))
    # through the relay: 2 models uploaded, 2 copies of the half to the neighbours, 1 to
    # the auditor
    assert [t["relay_model_bytes"] for t in relayed] == [0, 5 * model, 5 * model, 5 * model]


def test_unsigned_and_replayed_requests_during_a_run_are_refused_counted_and_harmless(
        tmp_path: Path, six_peers: tuple[list[PeerServer], list[Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-run, someone on the network sends each of three peers a request without
    signature, and replays requests it overheard (already served). All are refused and
    counted in the run's metrics; the run gives the results of an undisturbed one."""
    servers, tokens = six_peers
    quiet = run_relay_locally(RunConfig(**RUN, exchange="p2p"), tmp_path / "quiet", servers,
                              tokens)
    overheard: list[tuple[str, dict[str, str]]] = []

    def recording(keys: KeyPair, run: str, round: int, digest: str) -> dict[str, str]:
        headers = signed_fetch_headers(keys, run, round, digest)
        if round == 1 and not digest.startswith(RECORD_PREFIX):
            overheard.append((digest, headers))
        return headers

    monkeypatch.setattr(exchange_module, "signed_fetch_headers", recording)
    answers: list[int] = []

    def disturb(line: dict[str, Any], _: RunConfig) -> None:
        if line["round"] != 1:
            return
        for server in servers[:3]:
            answers.append(httpx.get(f"{server.url}/v1/models/{DIGEST}").status_code)
        for digest, headers in overheard[:3]:
            for server in servers:  # served by exactly one of them: a replay there
                answers.append(httpx.get(f"{server.url}/v1/models/{digest}",
                                         headers=headers).status_code)

    disturbed = run_relay_locally(RunConfig(**RUN, exchange="p2p"), tmp_path / "disturbed",
                                  servers, tokens, on_round=disturb)
    for mine, theirs in zip(disturbed, quiet, strict=True):
        for key in STABLE:
            assert mine.get(key) == pytest.approx(theirs.get(key), rel=1e-6, abs=1e-9), key
    assert len(overheard) >= 3
    assert answers.count(401) == 3 and answers.count(409) == 3 and 200 not in answers
    assert sum(m.get("p2p_refused_unsigned", 0) for m in disturbed) == 3
    assert sum(m.get("p2p_refused_replayed", 0) for m in disturbed) == 3


def test_a_relay_that_swaps_the_peer_directory_mid_run_is_refused_by_every_node(
        tmp_path: Path, six_peers: tuple[list[PeerServer], list[Path]]) -> None:
    """Each node pins the run's directory (keys and peer addresses) on first sight. A
    relay that swaps two peer addresses in round 2 (to redirect the nodes' fetches) gets
    every node's refusal for that round; with the pinned directory again the run goes on."""
    servers, tokens = six_peers
    config = RunConfig(**RUN, exchange="p2p")
    grid = LocalGrid(make_client_app(config), config.nodes)
    attach_peers(grid, servers, tokens)

    class SwappingRelay(DecentralizedStrategy):
        def _send(self, grid, kind, payloads, node_ids, mailbox=None):  # type: ignore[no-untyped-def]
            honest = self.directory
            if kind == TRAIN and honest is not None and any(
                    i.get("round") == 2 for i in payloads.values()):
                peers = dict(honest.peers)
                peers[1], peers[2] = peers[2], peers[1]
                self.directory = PeerDirectory(honest.run, honest.keys, peers)
            try:
                return super()._send(grid, kind, payloads, node_ids, mailbox)
            finally:
                self.directory = honest

    metrics = SwappingRelay(config).start(grid)
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    assert [m["dropped_nodes"] for m in metrics] == [0, 0, config.nodes, 0]


def test_an_oversized_record_is_refused_and_counted(
        six_peers: tuple[list[PeerServer], list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer cannot flood the nodes reading its ledger record: a record over the cap is
    dropped while it streams in and counted (``oversized_record``); one within the cap
    is read."""
    servers, tokens = six_peers
    reader, owner = KeyPair.generate(), KeyPair.generate()
    directory = PeerDirectory("run-a", {0: reader.public_key, 1: owner.public_key},
                              {0: servers[0].url, 1: servers[1].url})
    mine = PeerExchange(directory=directory, keys=owner, own_url=servers[1].url,
                        token=read_token(tokens[1]), round=1, sources={})
    mine.publish_record("ledger", b"x" * 200)
    theirs = PeerExchange(directory=directory, keys=reader, own_url=servers[0].url,
                          token=read_token(tokens[0]), round=1, sources={})
    assert theirs.fetch_records([1], "ledger") == {1: b"x" * 200}
    monkeypatch.setattr(exchange_module, "MAX_RECORD_BYTES", 100)
    assert theirs.fetch_records([1], "ledger") == {}
    assert theirs.failures["oversized_record"] == 1
