"""The ClientApp side of the decentralized runtime: a node answering the relay.

Each handler rebuilds the node from the run config (cached per process), resumes its
state from ``context.state``, does its part of the round and saves its state again. A
failure inside a handler becomes an error reply: the relay counts the node as dropped for
that round and the run goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_tempered.digest import array_digest
from flwr_tempered.ledger import (
    KeyPair,
    LedgerProtocolError,
    Participant,
    SignedHeader,
    sha256_hex,
    sign_header,
)
from flwr_tempered.ledger.records import canonical_json
from flwr_tempered.node import Node, RunConfig, TargetInputs, World, build_world
from flwr_tempered.node.summary import audit_models
from flwr_tempered.node.task import SupervisedTask, TaskFactory, TrainingTask

from .exchange import (
    DigestMismatchError,
    ExchangeError,
    InlineExchange,
    ModelExchange,
    PeerDirectory,
    PeerExchange,
    SharedMemoryExchange,
    make_exchange,
)
from .node_ledger import ledger_duties
from .peer import read_token
from .protocol import (
    ATTACK,
    AUDIT,
    COMMIT,
    DIRECTORY_STATE,
    GENESIS_STATE,
    HELLO,
    INSTRUCTIONS,
    LEDGER_STATE,
    METRICS,
    REGISTER,
    REPORT,
    UPLOAD,
)
from .state import load_node_state, save_node_state

#: Run-config keys that configure the harness, not the run itself.
HARNESS_KEYS = ("out", "store")


def run_config_of(context: Context) -> RunConfig:
    """The :class:`RunConfig` carried by a Flower run config (harness keys ignored)."""
    values = {k: v for k, v in context.run_config.items() if k not in HARNESS_KEYS}
    return RunConfig.from_mapping(values)


def _task(position: int, world: World, tasks: TaskFactory | None) -> TrainingTask:
    """The training task at ``position``: the user's when given, else the built-in one."""
    return tasks(world, position) if tasks is not None else SupervisedTask(world, position)


def _node(position: int, world: World, tasks: TaskFactory | None) -> Node:
    """The node at ``position``, running its training task."""
    return Node(position, world, _task(position, world, tasks))


def _instructions(message: Message) -> dict[str, Any]:
    record = message.content[INSTRUCTIONS]
    assert isinstance(record, ConfigRecord)
    return json.loads(str(record["json"]))


#: Node-config keys of a SuperNode's peer (``exchange = "p2p"``): the address its
#: neighbours fetch from, the file holding the token that authorises publishing, and
#: (optional) the address the node itself reaches its peer at, when that differs (NAT).
PEER_URL_KEY, PEER_TOKEN_KEY, PEER_LOCAL_URL_KEY = "peer-url", "peer-token-file", \
    "peer-local-url"


def _exchange(config: RunConfig, instructions: dict[str, Any], context: Context | None = None
              ) -> ModelExchange:
    if config.exchange == "shared":
        return SharedMemoryExchange(instructions["store"], create=False)
    if config.exchange == "p2p":
        assert context is not None
        return _peer_exchange(config, instructions, context)
    return make_exchange(config.exchange, run_name="inline")


def _peer_exchange(config: RunConfig, instructions: dict[str, Any], context: Context
                   ) -> PeerExchange:
    """This node's view of the peer-to-peer exchange for one message."""
    url, token_file = (context.node_config.get(PEER_URL_KEY),
                       context.node_config.get(PEER_TOKEN_KEY))
    if not url or not token_file:
        raise RuntimeError(
            f"exchange 'p2p' needs this SuperNode's peer: start `flwr-tempered peer` and "
            f"pass --node-config \"... {PEER_URL_KEY}='http://HOST:PORT' "
            f"{PEER_TOKEN_KEY}='PATH'\" to flower-supernode")
    participant = load_participant(context)
    if participant is None:
        raise RuntimeError("this node has no key for the run: it missed the registration "
                           "message, so it cannot sign its peer-to-peer requests")
    round_ = int(instructions.get("round", 0))
    own_url = context.node_config.get(PEER_LOCAL_URL_KEY) or url
    directory = PeerDirectory.from_dict(instructions["directory"])
    _pin_directory(directory, participant, context)
    return PeerExchange(directory=directory,
                        keys=participant.keys, own_url=str(own_url),
                        token=read_token(str(token_file)), round=round_,
                        sources=_sources(instructions, round_),
                        timeout=min(config.round_timeout / 4, 10.0))


def _pin_directory(directory: PeerDirectory, participant: Participant, context: Context
                   ) -> None:
    """Pin the run's peer directory on first sight and refuse any other one later: a
    relay that swaps a key or a peer address mid-run (to redirect this node's fetches or
    vouch for a stranger's requests) is refused, and so is a directory that does not name
    this node's own key."""
    if directory.run != participant.run_id or directory.keys.get(
            participant.position) != participant.keys.public_key:
        raise LedgerProtocolError(
            f"node {participant.position}: the peer directory does not register this "
            "node's key for its run")
    digest = sha256_hex(canonical_json(directory.to_dict()))
    pinned = context.state.get(DIRECTORY_STATE)
    if isinstance(pinned, ConfigRecord) and pinned.get("run") == directory.run:
        if pinned.get("digest") != digest:
            raise LedgerProtocolError(
                f"node {participant.position}: the relay sent another peer directory than "
                f"the one this node pinned for the run ({str(pinned.get('digest'))[:12]}…)")
        return
    context.state[DIRECTORY_STATE] = ConfigRecord({"run": directory.run, "digest": digest})


def _sources(instructions: dict[str, Any], round_: int) -> dict[str, tuple[int, int]]:
    """Digest -> (position that published it, round it was published for), for every
    model a message names."""
    sources: dict[str, tuple[int, int]] = {}
    for sender, digest in zip(instructions.get("senders", []),
                              instructions.get("digests", []), strict=False):
        sources[str(digest)] = (int(sender), round_)
    for position, digest in instructions.get("models", []):  # an audit
        sources[str(digest)] = (int(position), round_)
    for spec in instructions.get("targets", []):  # an attack (round t + 1)
        target = int(spec["node"])
        sources[str(spec["model"])] = (target, round_)
        for honest, digest in spec.get("honest", []):
            sources[str(digest)] = (int(honest), round_)
        if spec.get("previous"):
            sources[str(spec["previous"])] = (target, round_ - 1)
    return sources


def _peer_metrics(exchange: ModelExchange, with_stats: bool = False) -> dict[str, float]:
    """The peer-to-peer counters of one message (and, with ``with_stats``, this node's
    peer's cumulative refusals) as metrics."""
    if not isinstance(exchange, PeerExchange):
        return {}
    metrics = {"p2p_fetched_bytes": float(exchange.fetched_bytes),
               "p2p_published_bytes": float(exchange.published_bytes),
               "p2p_fallbacks": float(exchange.fallbacks)}
    metrics.update({f"p2p_failed_{reason}": float(count)
                    for reason, count in exchange.failures.items()})
    if with_stats:
        metrics.update({f"peer_{key}": float(value)
                        for key, value in exchange.peer_stats().items()
                        if key.startswith("refused_")})
    exchange.close()
    return metrics


def _fetch(exchange: ModelExchange, digest: str, message: Message) -> np.ndarray | None:
    try:
        return exchange.fetch(digest, message.content)
    except ExchangeError:
        return None


def _fetch_strict(exchange: ModelExchange, digest: str, message: Message) -> np.ndarray:
    """Fetch for the ledger's checks: ``ValueError`` when the bytes do not match the
    digest, ``LookupError`` when the model cannot be found."""
    try:
        return exchange.fetch(digest, message.content)
    except DigestMismatchError:
        raise
    except ExchangeError as error:
        raise LookupError(str(error)) from None


def load_participant(context: Context) -> Participant | None:
    """The node's ledger identity saved in ``context.state``, if it registered."""
    record = context.state.get(LEDGER_STATE)
    if not isinstance(record, ConfigRecord):
        return None
    return Participant.from_state_dict(json.loads(str(record["json"])))


def save_participant(participant: Participant, context: Context) -> None:
    context.state[LEDGER_STATE] = ConfigRecord({"json": json.dumps(participant.state_dict())})


def _participant_for(instructions: dict[str, Any], context: Context) -> Participant:
    """The registered participant, with the run's genesis pinned: the message carries the
    genesis the first time and its hash afterwards, checked against the one this node
    keeps in ``context.state``."""
    participant = load_participant(context)
    if participant is None:
        raise RuntimeError("this node has no ledger key: it missed the registration message")
    body = instructions.get("genesis")
    if body:  # first sight (or the relay thinks it was lost): pin it
        participant.adopt_genesis(str(body).encode("ascii"))
        context.state[GENESIS_STATE] = ConfigRecord({"body": str(body)})
        return participant
    pinned = context.state.get(GENESIS_STATE)
    if not isinstance(pinned, ConfigRecord):
        raise RuntimeError("this node holds no genesis for the run and the message carries "
                           "only its hash; the relay sends it again after this failure")
    participant.adopt_genesis(str(pinned["body"]).encode("ascii"))
    named = instructions.get("genesis_hash")
    if named != participant.genesis_hash:
        raise LedgerProtocolError(
            f"node {participant.position}: the relay names genesis {str(named)[:12]}…, this "
            f"node pinned {str(participant.genesis_hash)[:12]}…")
    return participant


def _reply(message: Message, report: dict[str, Any], metrics: dict[str, float],
           outbox: RecordDict | None = None) -> Message:
    content = outbox if outbox is not None else RecordDict()
    content[REPORT] = ConfigRecord({"json": json.dumps(report)})
    content[METRICS] = MetricRecord({k: float(v) for k, v in metrics.items()})
    return Message(content, reply_to=message)


def handle_hello(message: Message, context: Context, config: RunConfig,
                 tasks: TaskFactory | None = None) -> Message:
    """Tell the relay which data partition (topology position) this node holds, and where
    its peer listens (``exchange = "p2p"``)."""
    partition = context.node_config.get("partition-id", -1)
    report: dict[str, Any] = {"partition_id": int(partition)}
    if context.node_config.get(PEER_URL_KEY):
        report["peer"] = str(context.node_config[PEER_URL_KEY])
    return _reply(message, report, {})


def handle_register(message: Message, context: Context, config: RunConfig,
                    tasks: TaskFactory | None = None) -> Message:
    """Create this node's key pair for the run and answer its public key with a proof of
    possession (for the genesis block)."""
    instructions = _instructions(message)
    run_id, position = str(instructions["run_id"]), int(instructions["position"])
    participant = load_participant(context)
    if participant is None or participant.run_id != run_id or participant.position != position:
        participant = Participant(position, KeyPair.generate(), run_id,
                                  policy=config.equivocators)
    save_participant(participant, context)
    return _reply(message, participant.introduce(), {})


class _Clock:
    """Wall time of the phases of a handler, reported as ``time_*_s`` metrics (kept out
    of ``metrics.jsonl``; the relay sums them into ``timings.json``)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def corrupt(vector: np.ndarray, fault: str | None) -> np.ndarray:
    """What a faulty node publishes instead of ``vector`` (fault injection)."""
    if fault == "nan":
        return np.full_like(vector, np.nan)
    if fault == "inf":
        return np.full_like(vector, np.inf)
    if fault == "shape":
        return vector[:-1].copy()
    if fault == "dtype":
        return vector.astype(np.float64 if vector.dtype != np.float64 else np.float32)
    if fault == "empty":
        return np.empty(0, dtype=vector.dtype)
    return vector


def _fail_if_asked(fault: str | None, config: RunConfig) -> None:
    if fault == "raise":
        raise RuntimeError("injected fault: this node fails this round")
    if fault == "timeout":
        time.sleep(config.round_timeout + 2.0)


def _receive(node: Node, participant: Participant | None, instructions: dict[str, Any],
             exchange: ModelExchange, message: Message, round_: int
             ) -> tuple[list[int], list[np.ndarray | None], dict[str, float]]:
    """The senders and vectors this node may aggregate, and rejection counts."""
    senders = [int(s) for s in instructions["senders"]]
    digests = [str(d) for d in instructions["digests"]]
    if participant is None or node.byzantine:
        return senders, [_fetch(exchange, d, message) for d in digests], {}
    headers = instructions.get("headers") or [None] * len(senders)
    kept_senders: list[int] = []
    vectors: list[np.ndarray | None] = []
    counts: dict[str, float] = {}
    for sender, digest, header in zip(senders, digests, headers, strict=True):
        model, reason = participant.receive(
            round_, sender, digest, header, partial(_fetch_strict, exchange, digest, message))
        if reason is None:
            kept_senders.append(sender)
            vectors.append(model)
        else:
            counts[f"rejected_{reason}"] = counts.get(f"rejected_{reason}", 0.0) + 1.0
    return kept_senders, vectors, counts


def handle_train(message: Message, context: Context, config: RunConfig,
                 tasks: TaskFactory | None = None) -> Message:
    """Endorse the previous block, check and aggregate the vectors named in the message,
    evaluate if asked, train, publish (signed)."""
    instructions = _instructions(message)
    fault = config.fault_at(int(instructions["position"]), int(instructions["round"]))
    _fail_if_asked(fault, config)
    world = build_world(config)
    node = _node(int(instructions["position"]), world, tasks)
    state = load_node_state(context.state)
    if state is not None:
        node.load_state(state)
    exchange = _exchange(config, instructions, context)
    if isinstance(exchange, PeerExchange) and not instructions.get("fallback"):
        missing = exchange.unreachable([str(d) for d in instructions["digests"]],
                                       message.content)
        if missing:  # ask for the relay's fallback before changing anything
            return _reply(message, {"position": node.position, "missing": missing},
                          _peer_metrics(exchange))
    outbox = RecordDict()
    round_ = int(instructions["round"])
    clock = _Clock()
    report: dict[str, Any] = {"position": node.position}
    participant = _participant_for(instructions, context) if config.ledger else None
    if participant is not None and not node.byzantine:
        peers = exchange if isinstance(exchange, PeerExchange) else None
        report.update(ledger_duties(participant, instructions, context, peers))
    clock.lap("time_ledger_s")
    senders, vectors, rejected = _receive(node, participant, instructions, exchange, message,
                                          round_)
    clock.lap("time_fetch_s")
    metrics = node.aggregate(senders, vectors, round_, refused=int(sum(rejected.values())))
    metrics.update(rejected)
    clock.lap("time_aggregate_s")
    if instructions.get("publish_model") and not node.byzantine:
        report["model"] = exchange.publish(node.state.params.numpy(), outbox,
                                           round=round_)  # readers: the audit, any node
    clock.lap("time_publish_s")
    if instructions.get("evaluate") and not node.byzantine:
        metrics.update(node.evaluate())
    clock.lap("time_evaluate_s")
    if instructions.get("train"):
        metrics.update(node.train(round_))
        clock.lap("time_train_s")
        params = node.state.params.numpy()
        half = exchange.publish(
            corrupt(params, fault), outbox, round=round_ + 1,
            readers=world.topology.at_round(round_ + 1).recipients(node.position))
        report["half"] = half
        clock.lap("time_publish_s")
        if participant is not None and not node.crafts_vectors:
            header, report["half"] = _half_header(fault, participant, round_ + 1, half, params)
            report["header"] = header.to_dict() if header is not None else None
    if participant is not None:
        if not node.byzantine:
            report["ledger"] = participant.report(round_)
        save_participant(participant, context)
    clock.lap("time_ledger_s")
    metrics.update(clock.laps)
    metrics.update(_peer_metrics(exchange, with_stats=True))
    save_node_state(node.save_state(), context.state)
    return _reply(message, report, metrics, outbox)


def _half_header(fault: str | None, participant: Participant, round: int, half: str,
                 params: np.ndarray) -> tuple[SignedHeader | None, str]:
    """The signed header of the model this node sends to all its neighbours, and the
    digest the relay is told, under the ledger faults a config may inject."""
    if fault == "unsigned":
        return None, half
    if fault == "forge":  # signed with a key that is not the node's
        return sign_header(KeyPair.generate(), run_id=participant.run_id, round=round,
                           sender=participant.position, digest=half), half
    if fault == "mismatch":  # signs other bytes than the ones it sends
        return participant.sign(round, array_digest(params + 1)), half
    earlier = participant.sent_before(round) if fault == "replay" else None
    if earlier is not None:  # re-sends its previous round's message
        return earlier, earlier.digest
    return participant.sign(round, half), half


def handle_attack(message: Message, context: Context, config: RunConfig,
                  tasks: TaskFactory | None = None) -> Message:
    """Craft one vector per recipient from the omniscient view the relay describes."""
    instructions = _instructions(message)
    node = _node(int(instructions["position"]), build_world(config), tasks)
    state = load_node_state(context.state)
    if state is not None:
        node.load_state(state)
    exchange = _exchange(config, instructions, context)
    # What the attack does not read is not fetched (peer to peer, every fetch the graph
    # does not entitle is refused and counted).
    reads_others = bool(getattr(node.attack, "uses_targets_models", True))
    targets = []
    for spec in instructions["targets"]:
        model = _fetch(exchange, spec["model"], message)
        fetched = ([(j, _fetch(exchange, d, message)) for j, d in spec["honest"]]
                   if reads_others else [])
        honest = [(j, m) for j, m in fetched if m is not None]
        previous = _fetch(exchange, spec["previous"], message) if spec.get("previous") else None
        if model is None:
            continue
        targets.append(TargetInputs(
            node=int(spec["node"]), model=model, honest_neighbors=[j for j, _ in honest],
            honest_models=[m for _, m in honest], previous=previous,
        ))
    outbox = RecordDict()
    fault = config.fault_at(node.position, int(instructions["round"]))
    vectors = ({t: v.cpu().numpy() for t, v in node.craft(targets, int(instructions["round"]))
                .items()} if targets else {})
    round_ = int(instructions["round"])
    sent = {str(target): exchange.publish(corrupt(vector, fault), outbox, readers=[target],
                                          round=round_)
            for target, vector in vectors.items()}
    report: dict[str, Any] = {"sent": sent}
    if config.ledger:  # one signed header per recipient (different models: equivocation)
        participant = _participant_for(instructions, context)
        report["headers"] = {recipient: participant.sign(round_, digest, recipient).to_dict()
                             for recipient, digest in sent.items()}
        save_participant(participant, context)
    save_node_state(node.save_state(), context.state)
    metrics = dict(node.attack.stats if node.attack else {})
    metrics.update(_peer_metrics(exchange))
    return _reply(message, report, metrics, outbox)


def handle_upload(message: Message, context: Context, config: RunConfig,
                  tasks: TaskFactory | None = None) -> Message:
    """Hand the relay, inline, models this node published that a neighbour could not
    fetch from its peer (the peer-to-peer fallback)."""
    instructions = _instructions(message)
    exchange = _exchange(config, instructions, context)
    assert isinstance(exchange, PeerExchange)
    outbox = RecordDict()
    uploaded = []
    for digest in instructions["digests"]:
        try:
            array = exchange.read_own(str(digest))
        except ExchangeError:
            continue
        InlineExchange().publish(array, outbox)
        uploaded.append(str(digest))
    return _reply(message, {"uploaded": uploaded}, _peer_metrics(exchange), outbox)


def handle_commit(message: Message, context: Context, config: RunConfig,
                  tasks: TaskFactory | None = None) -> Message:
    """Apply the certificate and endorse (or refuse) the block proposal in the message;
    Byzantine nodes abstain."""
    instructions = _instructions(message)
    position = int(instructions["position"])
    participant = _participant_for(instructions, context)
    report: dict[str, Any] = {"position": position}
    metrics: dict[str, float] = {}
    if position not in build_world(config).topology.byzantine:
        # peer to peer, the last block's votes travel between the peers too
        exchange = (_peer_exchange(config, instructions, context)
                    if config.exchange == "p2p" else None)
        report.update(ledger_duties(participant, instructions, context, exchange))
        metrics = _peer_metrics(exchange) if exchange is not None else {}
        save_participant(participant, context)
    return _reply(message, report, metrics)


def handle_audit(message: Message, context: Context, config: RunConfig,
                 tasks: TaskFactory | None = None) -> Message:
    """Average the honest models (overall and per group), evaluate the averages, and
    measure the consensus distance (mean squared distance to the average)."""
    instructions = _instructions(message)
    world = build_world(config)
    exchange = _exchange(config, instructions, context)
    if isinstance(exchange, PeerExchange) and not instructions.get("fallback"):
        missing = exchange.unreachable([str(d) for _, d in instructions["models"]],
                                       message.content)
        if missing:  # ask for the relay's fallback
            return _reply(message, {"missing": missing}, _peer_metrics(exchange))
    models: dict[int, torch.Tensor] = {}
    for position, digest in instructions["models"]:
        array = _fetch(exchange, digest, message)
        if array is not None:
            models[int(position)] = torch.from_numpy(array.copy())
    task = _task(int(instructions["position"]), world, tasks)
    metrics = audit_models(world.topology.at_round(0), task, models)  # groups: any round
    metrics.update(_peer_metrics(exchange))
    return _reply(message, {}, metrics)


Handler = Callable[[Message, Context, RunConfig, TaskFactory | None], Message]

#: The ``query.<action>`` messages a node answers, by message type.
QUERY_HANDLERS: dict[str, Handler] = {
    HELLO: handle_hello, REGISTER: handle_register, ATTACK: handle_attack,
    AUDIT: handle_audit, COMMIT: handle_commit, UPLOAD: handle_upload,
}


def _group_handlers() -> dict[Handler, Callable[[Message, Context, RunConfig], Message]]:
    from .group_client import handle_group_attack, handle_group_audit, handle_group_train

    return {handle_train: handle_group_train, handle_attack: handle_group_attack,
            handle_audit: handle_group_audit}


#: The handlers of a SuperNode hosting a group of graph nodes (``nodes_per_client > 1``).
GROUP_HANDLERS = _group_handlers()


def make_client_app(config: RunConfig | None = None, tasks: TaskFactory | None = None
                    ) -> ClientApp:
    """The ClientApp of the decentralized runtime.

    With ``config`` the run is fixed (the command line, tests; ``run_simulation`` passes
    no run config); without, each message's Flower run config decides (``flwr run``).
    ``tasks(world, position)`` supplies a node's own training code (see
    :class:`~flwr_tempered.node.task.FunctionTask`); by default the run config's dataset,
    partition and model are trained with local SGD.
    """
    app = ClientApp()

    def resolve(context: Context) -> RunConfig:
        return config if config is not None else run_config_of(context)

    def bind(handler: Handler) -> Callable[[Message, Context], Message]:
        grouped = GROUP_HANDLERS.get(handler)

        def handle(message: Message, context: Context) -> Message:
            run_config = resolve(context)
            if grouped is not None and run_config.nodes_per_client > 1:
                if tasks is not None:
                    raise ValueError("nodes_per_client > 1 runs the built-in training task; "
                                     "custom tasks need nodes_per_client = 1")
                return grouped(message, context, run_config)
            return handler(message, context, run_config, tasks)
        return handle

    app.train()(bind(handle_train))
    for kind, handler in QUERY_HANDLERS.items():
        app.query(kind.removeprefix("query."))(bind(handler))
    return app
