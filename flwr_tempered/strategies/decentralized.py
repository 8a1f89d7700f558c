"""The decentralized strategy: rounds of neighbour exchange over a Flower ``Grid``.

Like Flower's ``Strategy.start``, :meth:`DecentralizedStrategy.start` drives the whole run
from the ServerApp, but the ServerApp here is only a relay: it tells each node which
models (by digest) its neighbours sent it, forwards model-poisoning nodes the view they
ask for, and keeps nothing but digests. It never averages and never evaluates a model;
one honest node is asked to audit the honest models (average accuracy, consensus
distance) on evaluation rounds.

With the run's ledger on, the relay also forwards each model's signed header, gathers the
receivers' reports into one block proposal per round (a :class:`~flwr_tempered.ledger.
BlockBuilder`), sends it with the next round's message for the nodes to endorse, and
stores it once ``2f + 1`` endorsements are back. The relay needs no trust: receivers
check every signature, validators check every proposal. Peer to peer (``p2p``) the nodes
also share their endorsements with each other (see :mod:`flwr_tempered.runtime.
node_ledger`), so they certify blocks without the relay's certificates and expose a
relay that shows different nodes different proposals (:attr:`DecentralizedStrategy.
proposal_conflicts`).

With a time-varying topology (:class:`~flwr_tempered.topology.DynamicTopology`) the
relay routes each round along that round's graph, so the senders a node is told about
are its current neighbours; the node takes the round's mixing weights from the same
seeded graph, which it draws itself from the run config.

Omniscient attacks get their view through the relay: a Byzantine node is sent the
digests of its targets' models and of their honest neighbours' models, and reads them
from the exchange. This models the worst-case adversary of the robustness literature
(it knows every honest model before choosing what to send); a real deployment leaks less.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from flwr_tempered.attacks import ModelPoisoningAttack, attack_class
from flwr_tempered.digest import is_digest
from flwr_tempered.ledger import Block, BlockBuilder, Genesis, LedgerStore, default_f
from flwr_tempered.ledger.block import key_proof_holds
from flwr_tempered.node import RunConfig, topology_of
from flwr_tempered.node.summary import metrics_line
from flwr_tempered.runtime.exchange import InlineExchange, ModelExchange, PeerDirectory
from flwr_tempered.runtime.protocol import (
    ATTACK,
    AUDIT,
    COMMIT,
    HELLO,
    INSTRUCTIONS,
    METRICS,
    REGISTER,
    REPORT,
    TRAIN,
    UPLOAD,
)
from flwr_tempered.topology import round_metrics

#: How long to wait for the expected nodes to appear after start.
NODE_WAIT_SECONDS = 60.0

#: What the nodes of a ``p2p`` run report learning from the other validators' ledger
#: records (lists in their reports; counted per round as ``ledger_<name>``).
PEER_LEDGER_REPORTS = ("certified_by_peers", "withheld_blocks", "proposals_from_peers",
                       "proposal_conflicts")

#: How often the relay looks for replies. ``Grid.send_and_receive`` polls every 0.1 s in
#: simulation and every 3 s in deployment mode, which adds that much latency to every
#: exchange, so the relay pushes and pulls itself. 20 ms: polling faster competes with the
#: simulation engine for the GIL and the cores (measured slower at 10 ms).
REPLY_POLL_SECONDS = 0.02

MetricsCallback = Callable[[dict[str, Any]], None]


@dataclass
class _Reply:
    position: int
    report: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class RoundLog:
    """What the relay saw in one exchange (for metrics and timing)."""

    replies: dict[int, _Reply] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    #: Bytes of models (``ArrayRecord``s) in the messages sent and the replies received.
    model_bytes: int = 0


def _model_bytes(content: RecordDict) -> int:
    """Bytes of the arrays a message carries."""
    return sum(len(array.data) for record in content.array_records.values()
               for array in record.values())


def _push_and_pull(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Send ``messages`` and collect the replies that arrive within ``timeout`` seconds."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending and time.monotonic() < deadline:
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if pending:
            time.sleep(REPLY_POLL_SECONDS)
    return replies


def _digests_in(value: Any) -> set[str]:
    """Every model digest mentioned anywhere in a (JSON-like) instruction."""
    if isinstance(value, str):
        return {value} if is_digest(value) else set()
    if isinstance(value, dict):
        return set().union(*(_digests_in(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(_digests_in(v) for v in value)) if value else set()
    return set()


class DecentralizedStrategy:
    """Run ``config`` as a decentralized training over the nodes of a Flower ``Grid``."""

    def __init__(self, config: RunConfig, on_metrics: MetricsCallback | None = None,
                 exchange: ModelExchange | None = None) -> None:
        self.config = config
        self.exchange = exchange if exchange is not None else InlineExchange()
        self.topology = topology_of(config)
        #: SuperNodes the run needs (one per topology node here; one per group of nodes
        #: in :class:`~flwr_tempered.strategies.grouped.GroupedDecentralizedStrategy`).
        self.participants = self.topology.n
        self.on_metrics = on_metrics
        attack = config.attack
        self.model_poisoning = (
            config.byzantine > 0 and attack != "none"
            and issubclass(attack_class(attack), ModelPoisoningAttack)
        )
        self.attack_needs_previous = self.model_poisoning and bool(
            getattr(attack_class(attack), "uses_previous", False)
        )
        self.history: list[dict[str, Any]] = []
        self._published: set[str] = set()
        self.timings: list[dict[str, float]] = []
        self.builder: BlockBuilder | None = None
        self._committed_rejections = 0
        self._equivocators: set[int] = set()
        #: The commit certificate of the last committed block (hash and the quorum's
        #: endorsements), sent to the nodes with the next message.
        self.certificate: dict[str, Any] | None = None
        #: Positions that hold the genesis (they answered a message that carried it); the
        #: others get it again, the rest only its hash.
        self._pinned: set[int] = set()
        #: Proposals the nodes refused: (round, node, reason).
        self.refusals: list[tuple[int, int, str]] = []
        #: Evidence of conflicting proposals the nodes found peer to peer (``p2p``): two
        #: endorsed blocks of one round (see :class:`~flwr_tempered.ledger.
        #: ProposalConflict`).
        self.proposal_conflicts: list[dict[str, Any]] = []
        #: Where each position's peer listens (from the HELLO replies; ``p2p`` only).
        self.peer_urls: dict[int, str] = {}
        #: Registered keys and peers of a ``p2p`` run, sent to the nodes.
        self.directory: PeerDirectory | None = None
        #: Model bytes through the relay and peer-to-peer counters of the current round.
        self._traffic: dict[str, float] = {}
        #: Each position's peer's cumulative refusal counts, last reported.
        self._peer_totals: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------- messaging
    def _send(self, grid: Grid, kind: str, payloads: dict[int, dict[str, Any]],
              node_ids: dict[int, int], mailbox: dict[str, ArrayRecord] | None = None) -> RoundLog:
        """Send each position its instructions; collect the replies (bounded wait)."""
        start = time.perf_counter()
        messages = []
        sent_bytes = 0
        directory = self.directory.to_dict() if self.directory is not None else None
        for position, instructions in payloads.items():
            if directory is not None:
                instructions = {**instructions, "directory": directory}
            content = RecordDict({INSTRUCTIONS: ConfigRecord({"json": json.dumps(instructions)})})
            if mailbox is not None:
                self.exchange.attach(_digests_in(instructions), mailbox, content)
            sent_bytes += _model_bytes(content)
            messages.append(Message(content, dst_node_id=node_ids[position], message_type=kind))
        by_node = {v: k for k, v in node_ids.items()}
        log = RoundLog()
        for reply in _push_and_pull(grid, messages, self.config.round_timeout):
            sender = by_node.get(reply.metadata.src_node_id)
            if sender is None or reply.has_error() or not reply.has_content():
                continue
            report_record = reply.content.get(REPORT)
            metric_record = reply.content.get(METRICS)
            if not isinstance(report_record, ConfigRecord) or not isinstance(
                metric_record, MetricRecord
            ):
                continue
            report = json.loads(str(report_record["json"]))
            metrics = {k: float(v) for k, v in metric_record.items()
                       if isinstance(v, int | float)}
            log.replies[sender] = _Reply(sender, report, metrics)
            log.model_bytes += _model_bytes(reply.content)
            self._count_traffic(sender, metrics)
            if mailbox is not None:
                self.exchange.collect(reply.content, mailbox)
        log.dropped = sorted(set(payloads) - set(log.replies))
        log.seconds = time.perf_counter() - start
        carried = {p for p, instructions in payloads.items() if "genesis" in instructions}
        self._pinned |= carried & set(log.replies)  # they answered: they hold it now
        self._pinned -= set(log.dropped)  # no answer: send it again, in case it was lost
        log.model_bytes += sent_bytes
        self._traffic["relay_model_bytes"] = (self._traffic.get("relay_model_bytes", 0.0)
                                              + log.model_bytes)
        return log

    def _fallback(self, grid: Grid, kind: str, payloads: dict[int, dict[str, Any]],
                  node_ids: dict[int, int], log: RoundLog) -> RoundLog:
        """Peer to peer: the nodes that could not reach a sender's peer get the models
        inline. The senders upload them (``query.upload``), and the message (train or
        audit) goes again, with those models, to the nodes that asked;
        ``p2p_fallback_models`` counts the models that took this way."""
        needing = {p: [str(d) for d in r.report["missing"]] for p, r in log.replies.items()
                   if r.report.get("missing")}
        if not needing:
            return log
        wanted: dict[int, set[str]] = {}
        for position, digests in needing.items():
            payload = payloads[position]
            source = {**dict(zip(payload.get("digests", []), payload.get("senders", []),
                                 strict=True)),
                      **{d: p for p, d in payload.get("models", [])}}
            for digest in digests:
                if digest in source:
                    wanted.setdefault(int(source[digest]), set()).add(digest)
        inline: dict[str, ArrayRecord] = {}
        uploads = self._send(grid, UPLOAD, {s: {"position": s, "digests": sorted(d)}
                                            for s, d in wanted.items()}, node_ids, inline)
        self._traffic["p2p_fallback_models"] = (
            self._traffic.get("p2p_fallback_models", 0.0) + len(inline))
        again = self._send(grid, kind, {p: {**payloads[p], "fallback": True}
                                        for p in needing}, node_ids, inline)
        for position in needing:
            log.replies.pop(position, None)
        log.replies.update(again.replies)
        log.dropped = sorted(set(payloads) - set(log.replies))
        log.seconds += uploads.seconds + again.seconds
        return log

    def _genesis_for(self, position: int, genesis: str) -> dict[str, str]:
        """The genesis, for a node that does not hold it yet; its hash for the others
        (each node pins the genesis once and checks every later message against it)."""
        if not genesis:
            return {"genesis": ""}
        if position in self._pinned:
            assert self.builder is not None
            return {"genesis_hash": self.builder.genesis.hash}
        return {"genesis": genesis}

    def _count_traffic(self, sender: int, metrics: dict[str, float]) -> None:
        """Add a reply's peer-to-peer counters to the round's traffic; its peer's
        cumulative refusals count by their growth since its last report."""
        for key, value in metrics.items():
            if key.startswith("p2p_"):
                self._traffic[key] = self._traffic.get(key, 0.0) + value
            elif key.startswith("peer_refused_"):
                last = self._peer_totals.setdefault(sender, {}).get(key, 0.0)
                self._peer_totals[sender][key] = value
                name = "p2p_" + key.removeprefix("peer_")
                self._traffic[name] = self._traffic.get(name, 0.0) + max(value - last, 0.0)

    def _discover(self, grid: Grid) -> dict[int, int]:
        """Map topology positions to node ids: wait (bounded) for the expected number of
        nodes, then ask each for its partition id (position); sorted ids otherwise."""
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        node_ids: list[int] = []
        while time.monotonic() < deadline:
            node_ids = sorted(grid.get_node_ids())
            if len(node_ids) >= self.participants:
                break
            time.sleep(0.2)
        if len(node_ids) < self.participants:
            n = self.participants
            per = ("one SuperNode per topology node" if n == self.topology.n else
                   f"one SuperNode per group of {self.config.nodes_per_client} topology "
                   f"nodes ({self.topology.n} nodes)")
            raise RuntimeError(
                f"only {len(node_ids)} of the {n} nodes the run needs connected "
                f"within {NODE_WAIT_SECONDS:.0f} s: the run needs {per}. In simulation "
                f"pass --federation-config \"num-supernodes={n}\" to `flwr run` (Flower's "
                f"default is 2); in deployment mode start {n} SuperNodes with partition "
                f"ids 0..{n - 1}"
            )
        provisional = dict(enumerate(node_ids[: self.participants]))
        log = self._send(grid, HELLO, {p: {} for p in provisional}, provisional)
        claimed = {r.report.get("partition_id", -1): provisional[p] for p, r in log.replies.items()}
        peers = {r.report.get("partition_id", -1): r.report.get("peer")
                 for r in log.replies.values()}
        if set(claimed) == set(range(self.participants)):
            self.peer_urls = {int(p): str(u) for p, u in peers.items() if isinstance(u, str)}
            return {int(p): claimed[p] for p in claimed}
        self.peer_urls = {p: str(r.report["peer"]) for p, r in log.replies.items()
                          if isinstance(r.report.get("peer"), str)}
        return provisional

    # ------------------------------------------------------------------------ run
    def start(self, grid: Grid, *, timeout: float | None = None, store: str | None = None,
              ledger: str | Path | None = None) -> list[dict[str, Any]]:
        """Run every round over ``grid``, like Flower's ``Strategy.start``; returns the
        metrics lines (also passed to ``on_metrics``).

        The number of rounds is the run config's, because the nodes read it too (BALANCE's
        schedule). ``timeout`` overrides how long a round waits for replies; ``store`` is
        the shared-memory directory of the ``shared`` exchange; ``ledger`` the SQLite file
        of the run's ledger (in memory when not given; ignored when the config turns the
        ledger off).
        """
        if timeout is not None:
            self.config = replace(self.config, round_timeout=timeout)
        config = self.config
        node_ids = self._discover(grid)
        genesis = ""
        if config.ledger or config.exchange == "p2p":
            run_id, keys, proofs = self._register(grid, node_ids)
            if config.exchange == "p2p":
                self.directory = self._peer_directory(run_id, keys, proofs)
            if config.ledger:
                self.builder = self._open_ledger(run_id, keys, proofs, ledger)
                genesis = self.builder.genesis.body().decode("ascii")
        try:
            return self._rounds(grid, node_ids, store, genesis)
        finally:
            if self.builder is not None:
                self.builder.store.close()

    def _rounds(self, grid: Grid, node_ids: dict[int, int], store: str | None, genesis: str
                ) -> list[dict[str, Any]]:
        config, topology, builder = self.config, self.topology, self.builder
        honest = [p for p in range(topology.n) if p not in topology.byzantine]
        inputs: dict[int, list[tuple[int, str, Any]]] = {p: [] for p in range(topology.n)}
        mailbox: dict[str, ArrayRecord] = {}
        proposal: Block | None = None
        signed: dict[int, list[Any]] = {}  # round -> headers the senders returned
        for message_round in range(1, config.rounds + 2):
            t = message_round - 1  # the round whose vectors get aggregated now
            evaluate = t == 0 or t % config.eval_every == 0 or t == config.rounds
            train = message_round <= config.rounds
            publish_model = evaluate or self.attack_needs_previous
            payloads: dict[int, dict[str, Any]] = {
                p: {
                    "round": t, "position": p, "store": store, "train": train,
                    "evaluate": evaluate, "publish_model": publish_model,
                    "senders": [s for s, _, _ in inputs[p]],
                    "digests": [d for _, d, _ in inputs[p]],
                }
                for p in range(topology.n)
            }
            if builder is not None:
                proposed = proposal.body().decode("ascii") if proposal else None
                for p, payload in payloads.items():
                    payload.update({**self._genesis_for(p, genesis),
                                    "headers": [h for _, _, h in inputs[p]],
                                    "proposal": proposed, "certificate": self.certificate})
            start = time.perf_counter()
            self._traffic = {"relay_model_bytes": 0.0}
            log = self._send(grid, TRAIN, payloads, node_ids, mailbox)
            if self.directory is not None:
                log = self._fallback(grid, TRAIN, payloads, node_ids, log)
            if self.directory is not None and builder is not None:
                self._traffic.update(self._count_ledger_from_peers(log))
            half = {p: r.report["half"] for p, r in log.replies.items() if "half" in r.report}
            headers = {p: r.report.get("header") for p, r in log.replies.items()}
            models = {p: r.report["model"] for p, r in log.replies.items() if "model" in r.report}
            ledger_start = time.perf_counter()
            if builder is not None:
                if proposal is not None:
                    self._commit(proposal, log)
                reports = {p: r.report["ledger"] for p, r in log.replies.items()
                           if isinstance(r.report.get("ledger"), dict)}
                proposal = builder.propose(t, signed.pop(t, []), reports) if t >= 1 else None
                signed[t + 1] = [h for h in headers.values() if h]
            ledger_seconds = time.perf_counter() - ledger_start
            audit: dict[str, float] = {}
            if evaluate:
                audit = self._audit(grid, node_ids, store, models, honest, log, mailbox, t)
            crafted: dict[int, dict[str, str]] = {}
            crafted_headers: dict[int, dict[str, Any]] = {}
            attack_seconds = 0.0
            if train and self.model_poisoning:
                attack_log = self._attack(grid, node_ids, store, half, models, mailbox, t + 1,
                                          genesis)
                attack_seconds = attack_log.seconds
                crafted = {p: r.report.get("sent", {}) for p, r in attack_log.replies.items()}
                crafted_headers = {p: r.report.get("headers", {})
                                   for p, r in attack_log.replies.items()}
                signed.setdefault(t + 1, []).extend(
                    h for sent in crafted_headers.values() for h in sent.values() if h)
            inputs = self._next_inputs(half, crafted, headers, crafted_headers, t + 1)
            self._published |= set(half.values()) | set(models.values())
            self._published |= {d for sent in crafted.values() for d in sent.values()}
            self._forget_all_but(inputs, mailbox)
            timing = {"round": float(t), "train_message_s": log.seconds,
                      "attack_message_s": attack_seconds, "ledger_s": ledger_seconds,
                      "total_s": time.perf_counter() - start, **self._traffic}
            for reply in log.replies.values():  # node-side phases, summed over nodes
                for key, value in reply.metrics.items():
                    if key.startswith("time_"):
                        timing[f"nodes_{key}"] = timing.get(f"nodes_{key}", 0.0) + value
            self.timings.append(timing)
            if evaluate:
                line = self._metrics_line(t, log, audit, honest)
                if config.exchange != "shared":  # deployment: what crossed the SuperLink
                    line.update(self._traffic)
                self.history.append(line)
                if self.on_metrics is not None:
                    self.on_metrics(line)
            if not train:
                break
        if builder is not None and proposal is not None:
            self._commit_last(grid, node_ids, proposal, genesis)
        return self.history

    # --------------------------------------------------------------------- ledger
    def _register(self, grid: Grid, node_ids: dict[int, int]
                  ) -> tuple[str, dict[int, str], dict[int, str]]:
        """Have every node register a key pair for a new run id: (run id, public keys,
        proofs of possession), of the nodes whose proof checks."""
        run_id = uuid.uuid4().hex
        log = self._send(grid, REGISTER, {p: {"run_id": run_id, "position": p} for p in node_ids},
                         node_ids)
        keys, proofs = {}, {}
        for position, reply in log.replies.items():
            key, proof = reply.report.get("public_key"), reply.report.get("proof")
            if isinstance(key, str) and isinstance(proof, str):
                keys[position], proofs[position] = key, proof
        return run_id, keys, proofs

    def _peer_directory(self, run_id: str, keys: dict[int, str], proofs: dict[int, str]
                        ) -> PeerDirectory:
        """The keys and peer addresses every node of a ``p2p`` run needs; refuses to start
        when a node has no peer or no key whose proof of possession checks."""
        keys = {p: key for p, key in keys.items()
                if key_proof_holds(run_id, p, key, proofs.get(p, ""))}
        missing = sorted(set(range(self.topology.n)) - set(self.peer_urls))
        if missing:
            raise RuntimeError(
                f"exchange 'p2p': the SuperNodes of positions {missing} named no peer; start "
                "`flwr-tempered peer` beside each and pass --node-config \"partition-id=P "
                "num-partitions=N peer-url='http://HOST:PORT' peer-token-file='PATH'\"")
        unregistered = sorted(set(range(self.topology.n)) - set(keys))
        if unregistered:
            raise RuntimeError(f"exchange 'p2p': positions {unregistered} did not register a "
                               "key for the run, so their requests could not be checked")
        return PeerDirectory(run_id, dict(keys), dict(self.peer_urls))

    def _open_ledger(self, run_id: str, keys: dict[int, str], proofs: dict[int, str],
                     path: str | Path | None) -> BlockBuilder:
        """Write the genesis block of the registered keys."""
        f = self.config.ledger_f if self.config.ledger_f >= 0 else default_f(len(keys))
        genesis = Genesis(run_id, int(time.time() * 1000), f, keys, proofs, self.config.to_dict())
        return BlockBuilder(LedgerStore(path if path is not None else ":memory:"), genesis)

    def _count_ledger_from_peers(self, log: RoundLog) -> dict[str, float]:
        """Peer to peer: what the nodes learned from the other validators' ledger records
        in one message, as ``ledger_*`` counters (the nodes' reports summed); the
        evidence of conflicting proposals they found is kept in
        :attr:`proposal_conflicts`."""
        counts = {f"ledger_{key}": float(sum(len(r.report.get(key, []))
                                             for r in log.replies.values()))
                  for key in PEER_LEDGER_REPORTS}
        counts["ledger_bad_peer_records"] = float(sum(
            int(r.report.get("bad_peer_records", 0)) for r in log.replies.values()))
        known = {_conflict_key(e) for e in self.proposal_conflicts}
        for reply in log.replies.values():
            for evidence in reply.report.get("proposal_conflicts", []):
                key = _conflict_key(evidence)
                if key is not None and key not in known:  # one per pair of blocks
                    known.add(key)
                    self.proposal_conflicts.append(evidence)
        return counts

    def _commit(self, proposal: Block, log: RoundLog) -> None:
        """Commit ``proposal`` with the endorsements in the replies of ``log``; the nodes
        get its certificate with the next message (:attr:`certificate`)."""
        assert self.builder is not None
        endorsements = {p: str(r.report["endorsement"]) for p, r in log.replies.items()
                        if isinstance(r.report.get("endorsement"), str)}
        refusals = {p: str(r.report["refusal"]) for p, r in log.replies.items()
                    if "refusal" in r.report}
        outcome = self.builder.commit(proposal, endorsements, refusals)
        self.refusals.extend((proposal.round, p, reason) for p, reason in refusals.items())
        if outcome.committed:
            self.certificate = {"hash": proposal.hash, "signatures": {
                str(v): endorsements[v] for v in outcome.signers}}
            self._committed_rejections += len(proposal.rejections)
            self._equivocators |= {e.sender for e in proposal.evidence}

    def _commit_last(self, grid: Grid, node_ids: dict[int, int], proposal: Block,
                     genesis: str) -> None:
        """The last round's block has no next round to ride on: ask for endorsements,
        then hand out its certificate, so that every node's head is the chain's."""
        body = proposal.body().decode("ascii")
        # Message rounds continue the train messages' (the last one is ``rounds``), so
        # that a node can tell a certificate that came late (``withheld_blocks``).
        payloads = {p: {"position": p, "round": self.config.rounds + 1,
                        **self._genesis_for(p, genesis), "proposal": body,
                        "certificate": self.certificate} for p in node_ids}
        log = self._send(grid, COMMIT, payloads, node_ids)
        self._commit(proposal, log)
        self._count_in_last_round(log)
        committed = self.certificate is not None and self.certificate["hash"] == proposal.hash
        if committed or self.directory is not None:  # p2p: the nodes gather the votes
            payloads = {p: {"position": p, "round": self.config.rounds + 2,
                            **self._genesis_for(p, genesis), "proposal": None,
                            "certificate": self.certificate if committed else None}
                        for p in node_ids}
            self._count_in_last_round(self._send(grid, COMMIT, payloads, node_ids))

    def _count_in_last_round(self, log: RoundLog) -> None:
        """Peer to peer: add what the nodes learned from their peers in a closing commit
        message to the last round's timings."""
        if self.directory is not None and self.timings:
            for key, value in self._count_ledger_from_peers(log).items():
                self.timings[-1][key] = self.timings[-1].get(key, 0.0) + value

    def _forget_all_but(self, inputs: dict[int, list[tuple[int, str, Any]]],
                        mailbox: dict[str, ArrayRecord]) -> None:
        """Drop every model the next round does not need, from the relay's mailbox
        (inline) and from the store (shared)."""
        needed = {digest for triples in inputs.values() for _, digest, _ in triples}
        for digest in [d for d in mailbox if d not in needed]:
            del mailbox[digest]
        for digest in self._published - needed:
            self.exchange.discard(digest)
        self._published = set(needed)

    def _audit(self, grid: Grid, node_ids: dict[int, int], store: str | None,
               models: dict[int, str], honest: list[int], log: RoundLog,
               mailbox: dict[str, ArrayRecord], round_: int) -> dict[str, float]:
        auditors = [p for p in honest if p in log.replies]
        if not auditors or not models:
            return {}
        payload = {"position": auditors[0], "store": store, "round": round_,
                   "models": sorted((p, d) for p, d in models.items() if p in honest)}
        audit_log = self._send(grid, AUDIT, {auditors[0]: payload}, node_ids, mailbox)
        if self.directory is not None:
            audit_log = self._fallback(grid, AUDIT, {auditors[0]: payload}, node_ids,
                                       audit_log)
        reply = audit_log.replies.get(auditors[0])
        return reply.metrics if reply else {}

    def _attack(self, grid: Grid, node_ids: dict[int, int], store: str | None,
                half: dict[int, str], models: dict[int, str], mailbox: dict[str, ArrayRecord],
                round_: int, genesis: str) -> RoundLog:
        topology = self.topology.at_round(round_)
        payloads = {}
        for attacker in sorted(topology.byzantine):
            targets = []
            for target in topology.recipients(attacker):
                if target in topology.byzantine or target not in half:
                    continue
                targets.append({
                    "node": target, "model": half[target],
                    "honest": [(j, half[j]) for j in topology.honest_neighbors(target)
                               if j in half],
                    "previous": models.get(target, ""),
                })
            payloads[attacker] = {"position": attacker, "round": round_, "store": store,
                                  "targets": targets, **self._genesis_for(attacker, genesis)}
        return self._send(grid, ATTACK, payloads, node_ids, mailbox)

    def _next_inputs(self, half: dict[int, str], crafted: dict[int, dict[str, str]],
                     headers: dict[int, Any], crafted_headers: dict[int, dict[str, Any]],
                     round_: int) -> dict[int, list[tuple[int, str, Any]]]:
        """For every node, the (sender, digest, signed header) triples to aggregate in
        round ``round_``, along its graph (headers are ``None`` without a ledger)."""
        topology = self.topology.at_round(round_)
        inputs: dict[int, list[tuple[int, str, Any]]] = {}
        for p in range(topology.n):
            triples = []
            for q in topology.neighbors(p):
                if q in topology.byzantine and self.model_poisoning:
                    digest = crafted.get(q, {}).get(str(p))
                    header = crafted_headers.get(q, {}).get(str(p))
                else:
                    digest, header = half.get(q), headers.get(q)
                if digest is not None:
                    triples.append((q, digest, header))
            inputs[p] = triples
        return inputs

    def _metrics_line(self, t: int, log: RoundLog, audit: dict[str, float],
                      honest: list[int]) -> dict[str, Any]:
        line = metrics_line(t, self.topology.at_round(t),
                            {p: r.metrics for p, r in log.replies.items()}, log.dropped, audit)
        line.update(round_metrics(self.topology, t))
        if self.builder is not None:
            line.update({"ledger_blocks": self.builder.height,
                         "ledger_rejections": self._committed_rejections,
                         "ledger_equivocators": sorted(self._equivocators)})
        return line


def _conflict_key(evidence: Any) -> tuple[int, tuple[str, ...]] | None:
    """(round, block hashes) of a node's evidence of conflicting proposals; ``None`` for
    a malformed one."""
    try:
        return int(evidence["round"]), tuple(sorted(str(v["hash"]) for v in evidence["votes"]))
    except (TypeError, KeyError, ValueError):
        return None
