"""Turn any Flower ``ClientApp`` into one whose chosen nodes are Byzantine.

``malicious_clientapp(app, attack, fraction=0.2)`` returns a ClientApp that behaves exactly
like ``app`` on honest nodes. On malicious nodes (chosen by partition id, or a seeded random
``fraction`` of the partitions, the same choice on every node):

- data-poisoning attacks (``label_flip``, ``backdoor``) run ``app``'s train handler with
  every ``DataLoader`` batch poisoned (:mod:`.data_poisoning`), and send what it trained;
- model-poisoning attacks (``gaussian``, ``sign_flip``, ``bit_flip``, ``alie``, ``ipm``,
  ``fang_trim``, ``fang_krum``, ``min_max``, ``min_sum``, ``mimic``, ``inf``,
  ``optimal_alie``, ``optimal_ipm``) run ``app``'s train handler honestly, then replace the
  model in its reply by the attack's vector; metrics and the example count are kept, so
  the reply looks ordinary.

Colluding attacks need to know the honest updates. With ``view="omniscient"`` (default)
the attackers share an omniscient view in simulation: the wrapper runs ``app``'s train
handler for each honest partition on the same train message (a fresh ``Context`` with that
partition's ``node_config``) and hands those models to the attack. This needs the
simulation's ``partition-id``/``num-partitions`` node config and a ClientApp whose training
depends only on them, the run config and the message. ``view="colluders"`` uses only the
malicious partitions' own honest models (Fang et al.'s partial knowledge), ``view="own"``
only the attacker's.

Each partition trains once per round and worker process, attackers and honest nodes
together: the wrapper keeps, for the current round's train message, every honest model
trained in the process. A node that trains for real publishes its model there (an attacker
later in the round reuses it); a node whose training an attacker already ran on its behalf
receives that reply instead of training again (*replay*). Replay happens only when it
cannot differ from a real run: the simulated training left its fresh ``context.state``
empty (the app keeps no state), the node's own ``context.state`` is empty too, and its
``node_config`` equals the one simulated; otherwise the node trains itself. So an attacked
run costs about what a clean one does (measured: README), instead of every attacker
retraining every honest partition. With Ray, each worker process keeps its own copy, so
partitions can train once per process rather than once per run.

With Flower's sampling (``fraction_train < 1``) the server aggregates only the sampled
clients, so the omniscient view is the sampled honest clients' models. The robust
strategies announce each round's sampled node ids in the train config
(:mod:`flwr_tempered.strategies.sample_announcement`); the wrapper learns which partition
each node id is from the messages it handles, and trains on the nodes' behalf only the
sampled honest partitions (until it has seen every sampled node: the honest partitions not
known to be unsampled). Without an announcement (a strategy that does not send one) the
view is every honest partition, each trained once per round.

On the first train message of a run, each process logs the attack (name and parameters)
and the malicious partitions with Flower's logger, and warns when ``fraction`` gives no
attacker at all.

The server is the attack's single target: its "honest set" is the honest clients' models,
its reference point (``previous``) the global model the round started from. Attacks that
run the target's rule (``optimal_alie``, ``optimal_ipm``: ``needs_rule``) need the server's
rule as ``rule=``; they see it as the server applies it,
``rule.aggregate_clients(global model, honest models + Byzantine copies)``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from flwr_tempered.aggregators import Rule, resolve_rule
from flwr_tempered.attacks import (
    AttackBase,
    AttackView,
    DataPoisoningAttack,
    ModelPoisoningAttack,
    TargetView,
    attack_parameters,
    get_attack,
)
from flwr_tempered.runtime.local_grid import copy_message
from flwr_tempered.strategies.records import ModelLayout
from flwr_tempered.strategies.sample_announcement import announced_sample

from .data_poisoning import poisoned_dataloaders

__all__ = ["VIEWS", "malicious_clientapp", "malicious_partitions",
           "smallest_attacking_fraction"]

VIEWS = ("omniscient", "colluders", "own")

AttackSpec = str | Mapping[str, Any]
RuleSpec = Rule | str | Mapping[str, Any]

#: Train messages (distinct contents) of the current round whose models a wrapper keeps.
_KEPT_MESSAGES = 4


def _attacker_count(fraction: float, num_partitions: int) -> int:
    """``fraction * num_partitions`` rounded to the nearest integer, halves up (the
    ``1e-9`` absorbs float error such as ``0.15 * 10 = 1.4999999999999998``)."""
    return math.floor(fraction * num_partitions + 0.5 + 1e-9)


def smallest_attacking_fraction(num_partitions: int) -> float:
    """The smallest ``fraction`` (to 4 decimals, rounded up) that makes at least one of
    ``num_partitions`` partitions malicious: ``0.5 / num_partitions``."""
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int) or (
            num_partitions < 1):
        raise ValueError(f"smallest_attacking_fraction: num_partitions must be an integer "
                         f">= 1, got {num_partitions!r}")
    return math.ceil(0.5 / num_partitions * 10_000) / 10_000


def malicious_partitions(num_partitions: int, *, nodes: Iterable[int] | None = None,
                         fraction: float | None = None, seed: int = 0) -> frozenset[int]:
    """The malicious partition ids: ``nodes`` as given, or ``fraction * N`` (rounded half
    up) partitions drawn with ``seed`` (the same set on every node)."""
    if (nodes is None) == (fraction is None):
        raise ValueError("malicious_partitions: give exactly one of nodes= or fraction=")
    if nodes is not None:
        chosen = frozenset(int(n) for n in nodes)
        outside = sorted(n for n in chosen if not 0 <= n < num_partitions)
        if outside:
            raise ValueError(f"malicious_partitions: partition ids {outside} are outside "
                             f"0..{num_partitions - 1}")
        return chosen
    assert fraction is not None
    if not (isinstance(fraction, int | float) and 0.0 <= fraction < 1.0):
        raise ValueError(f"malicious_partitions: fraction must lie in [0, 1), got {fraction!r}")
    count = _attacker_count(fraction, num_partitions)
    return frozenset(random.Random(seed).sample(range(num_partitions), count))


def _build_attack(spec: AttackSpec | AttackBase, seed: int) -> AttackBase:
    if isinstance(spec, AttackBase):
        return spec
    if isinstance(spec, str):
        params: dict[str, Any] = {}
        name = spec
    elif isinstance(spec, Mapping):
        params = dict(spec)
        if "name" not in params:
            raise ValueError(f"an attack mapping needs a 'name' key, got keys {sorted(params)}")
        name = str(params.pop("name"))
    else:
        raise ValueError(f"cannot build an attack from {spec!r}")
    if "seed" in attack_parameters(name) and "seed" not in params:
        params["seed"] = seed
    return get_attack(name, **params)


def malicious_clientapp(app: ClientApp, attack: AttackSpec | AttackBase, *,
                        nodes: Iterable[int] | None = None, fraction: float | None = None,
                        seed: int = 0, view: str = "omniscient",
                        rule: RuleSpec | None = None) -> ClientApp:
    """``app`` with the chosen nodes running ``attack`` (see the module docstring).

    Args:
        app: the honest ClientApp (its train, evaluate and query handlers are reused).
        attack: an attack name (``"alie"``), a mapping ``{"name": "alie", "z": 1.5}``, or
            an attack object. Its parameters are validated now.
        nodes: malicious partition ids (``node_config["partition-id"]``), or
        fraction: the share of partitions that are malicious (``fraction * N`` rounded half
            up, drawn with ``seed``; a warning is logged when that is none).
        seed: seeds the choice of partitions and randomised attacks.
        view: ``"omniscient"``, ``"colluders"`` or ``"own"`` (what colluding attacks see).
        rule: the server's aggregation rule (a rule, a rule name or ``{"name": ..., **args}``)
            for attacks that run it (``needs_rule``); ignored by the others.
    """
    if not isinstance(app, ClientApp):
        raise ValueError(f"malicious_clientapp: app must be a flwr ClientApp, got "
                         f"{type(app).__name__}")
    if view not in VIEWS:
        raise ValueError(f"malicious_clientapp: view must be one of {VIEWS}, got {view!r}")
    template = _build_attack(attack, seed)  # fail now on a bad name or parameter
    server_rule = None if rule is None else resolve_rule(rule)
    if server_rule is None and isinstance(template, ModelPoisoningAttack) and (
            template.needs_rule):
        raise ValueError(f"malicious_clientapp: attack {template.name!r} runs the server's "
                         "aggregation rule; pass rule= (e.g. rule='median')")
    node_list = None if nodes is None else sorted(int(n) for n in nodes)
    if (node_list is None) == (fraction is None):
        raise ValueError("malicious_clientapp: give exactly one of nodes= or fraction=")
    if fraction is not None:
        malicious_partitions(2, fraction=fraction)  # validates the fraction
    # Which nodes' honest models the attack reads: none, the attackers' or everyone's.
    shares = isinstance(template, ModelPoisoningAttack) and (
        template.uses_targets_models and view != "own")
    shelf = _Shelf()
    announced: set[int] = set()
    # run id -> node id -> partition id, of every node seen in this process.
    partition_of: dict[int, dict[int, int]] = {}
    wrapped = ClientApp()

    def membership(context: Context) -> tuple[int, int, frozenset[int]]:
        try:
            partition = int(context.node_config["partition-id"])
            count = int(context.node_config["num-partitions"])
        except KeyError as missing:
            raise ValueError(
                f"malicious_clientapp: node_config lacks {missing}; malicious nodes are "
                "chosen by partition id (Flower's simulation sets partition-id and "
                "num-partitions; in deployment pass them with --node-config)"
            ) from None
        bad = malicious_partitions(count, nodes=node_list, fraction=fraction, seed=seed)
        partition_of.setdefault(context.run_id, {})[context.node_id] = partition
        if context.run_id not in announced:
            announced.add(context.run_id)
            _announce(template, bad, count, fraction, seed, view if shares else None)
        return partition, count, bad

    @wrapped.train()
    def train(message: Message, context: Context) -> Message:
        partition, count, bad = membership(context)
        if partition not in bad:
            if shares and view == "omniscient":
                return _train_once(app, message, context, shelf.models(message, context))
            return app(message, context)
        attack_now = template if isinstance(attack, AttackBase) else _build_attack(
            attack, seed + 7919 * partition + _round_of(message))
        if isinstance(attack_now, DataPoisoningAttack):
            with poisoned_dataloaders(attack_now):
                return app(message, context)
        assert isinstance(attack_now, ModelPoisoningAttack)
        models = shelf.models(message, context) if shares else None
        who = _view_partitions(view, count, bad, announced_sample(message.content),
                               partition_of[context.run_id])
        return _poisoned_reply(app, attack_now, message, context, partition, bad, who,
                               server_rule, models)

    def remember(context: Context) -> None:
        """Note which partition this node is (for views of a sampled round), if known."""
        partition = context.node_config.get("partition-id")
        if isinstance(partition, int) and not isinstance(partition, bool):
            partition_of.setdefault(context.run_id, {})[context.node_id] = partition

    @wrapped.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        remember(context)
        return app(message, context)

    @wrapped.query()
    def query(message: Message, context: Context) -> Message:
        remember(context)
        return app(message, context)

    return wrapped


def _announce(attack: AttackBase, bad: frozenset[int], count: int, fraction: float | None,
              seed: int, view: str | None) -> None:
    """Log, once per run and process, which attack runs on which partitions (a warning
    when none is malicious)."""
    chosen = (f"fraction={fraction}, seed={seed}" if fraction is not None
              else "nodes= given")
    seen = f", view {view!r}" if view is not None else ""
    log(INFO, "malicious_clientapp: %d of num-partitions=%d partitions are malicious: %s "
        "(%s); attack %r%s", len(bad), count, sorted(bad), chosen, attack, seen)
    if bad:
        return
    if fraction is None:
        log(WARNING, "malicious_clientapp: nodes= is empty, so no partition runs attack %r; "
            "name at least one partition id in 0..%d", attack.name, count - 1)
    else:
        log(WARNING, "malicious_clientapp: fraction=%s of num-partitions=%d rounds to 0 "
            "malicious partitions, so no node runs attack %r; the smallest fraction that "
            "gives one attacker is %s (pass fraction >= %s, or nodes=[...])", fraction,
            count, attack.name, smallest_attacking_fraction(count),
            smallest_attacking_fraction(count))


def _round_of(message: Message) -> int:
    for record in message.content.config_records.values():
        value = record.get("server-round")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _single_arrays(content: RecordDict, what: str) -> tuple[str, ArrayRecord]:
    items = list(content.array_records.items())
    if len(items) != 1:
        raise ValueError(f"malicious_clientapp: the {what} holds {len(items)} ArrayRecords; "
                         "model attacks need exactly one (the model)")
    return items[0]


@dataclass
class _Trained:
    """One partition's honest training on a round's train message.

    ``reply`` is the content the app returned to a simulated node (fresh state, the
    ``node_config`` kept here), ``None`` for a real node's training (already sent);
    ``vector`` the model, flattened (``None`` if it does not fit the global model).
    """

    vector: torch.Tensor | None
    reply: RecordDict | None = None
    node_config: dict[str, Any] | None = None

    def replayable_for(self, context: Context) -> bool:
        """Whether a real node with ``context`` would compute exactly this reply: its state
        is empty like the simulated one, and its node config is the one simulated."""
        return self.reply is not None and len(context.state) == 0 and (
            self.node_config == dict(context.node_config))


class _Shelf:
    """The honest models trained in this process for the latest train messages of the
    current round (one wrapper's; a new round or run empties it)."""

    def __init__(self) -> None:
        self._round: tuple[int, int] | None = None
        self._messages: OrderedDict[str, dict[int, _Trained]] = OrderedDict()

    def models(self, message: Message, context: Context) -> dict[int, _Trained]:
        """The partitions trained on ``message`` (same content and run config) so far."""
        current = (context.run_id, _round_of(message))
        if current != self._round:
            self._round = current
            self._messages.clear()
        key = _content_digest(message.content, context.run_config)
        if key not in self._messages:
            self._messages[key] = {}
            while len(self._messages) > _KEPT_MESSAGES:
                self._messages.popitem(last=False)
        return self._messages[key]


def _content_digest(content: RecordDict, run_config: Mapping[str, Any]) -> str:
    """SHA-256 of a message's records and the run config: equal digests mean the app
    receives the same input. (Flower's ``RecordDict.object_id`` would do this too, but it
    leaves memoryviews in the records that ``copy.deepcopy`` cannot copy.)"""
    hasher = hashlib.sha256(repr(sorted(run_config.items())).encode())
    for name, record in sorted(content.items()):
        hasher.update(f"\0{name}\0{type(record).__name__}".encode())
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                hasher.update(f"\0{key}\0{array.dtype}\0{array.shape}\0{array.stype}".encode())
                hasher.update(array.data)
        else:
            hasher.update(repr(sorted(record.items())).encode())
    return hasher.hexdigest()


def _model_vector(content: RecordDict, layout: ModelLayout) -> torch.Tensor | None:
    """The one model in ``content`` as a vector, ``None`` if it does not fit ``layout``."""
    if len(content.array_records) != 1:
        return None
    (arrays,) = content.array_records.values()
    return layout.to_vector(arrays) if layout.mismatch(arrays) is None else None


def _layout_of(message: Message) -> ModelLayout | None:
    records = list(message.content.array_records.values())
    return ModelLayout.of(records[0]) if len(records) == 1 else None


def _train_once(app: ClientApp, message: Message, context: Context,
                trained: dict[int, _Trained]) -> Message:
    """This node's honest reply: replayed if an attacker already trained this partition on
    this message (and replay cannot differ, see :class:`_Trained`), else trained now and
    its model kept for the attackers."""
    partition = int(context.node_config["partition-id"])
    known = trained.get(partition)
    if known is not None and known.replayable_for(context):
        assert known.reply is not None
        return Message(copy.deepcopy(known.reply), reply_to=message)
    layout = _layout_of(message)
    reply = app(message, context)
    if known is None and layout is not None and not reply.has_error():
        trained[partition] = _Trained(_model_vector(reply.content, layout))
    return reply


def _view_partitions(view: str, count: int, bad: frozenset[int],
                     sampled: frozenset[int] | None, partition_of: Mapping[int, int]
                     ) -> list[int]:
    """The partitions whose honest models a colluding attack reads this round.

    ``"colluders"``: the malicious partitions. ``"omniscient"``: the honest partitions the
    server will aggregate. Without an announced sample (``sampled``: the round's sampled
    node ids) that is every honest partition. With one, it is the sampled honest nodes'
    partitions when this process has seen every sampled node (``partition_of``: node id ->
    partition of the nodes seen so far); otherwise every honest partition not known to
    belong to an unsampled node, a superset that shrinks to the sample as nodes are seen.
    """
    if view != "omniscient":
        return sorted(bad)
    honest = set(range(count)) - bad
    if sampled is None:
        return sorted(honest)
    if all(node in partition_of for node in sampled):
        return sorted(honest & {partition_of[node] for node in sampled})
    ruled_out = {part for node, part in partition_of.items() if node not in sampled}
    return sorted(honest - ruled_out)


def _poisoned_reply(app: ClientApp, attack: ModelPoisoningAttack, message: Message,
                    context: Context, partition: int, bad: frozenset[int], who: list[int],
                    rule: Rule | None, trained: dict[int, _Trained] | None) -> Message:
    """Train honestly, then send the attack's model instead of the trained one.

    ``trained`` holds the honest models of this round's message already known in this
    process (``None``: the attack reads no other node's model); ``who`` the partitions
    whose models the attack reads (see :func:`_view_partitions`)."""
    count = int(context.node_config["num-partitions"])
    _, global_arrays = _single_arrays(message.content, "train message")
    layout = ModelLayout.of(global_arrays)
    previous = layout.to_vector(global_arrays)
    fresh = copy_message(message)
    reply = app(fresh, context) if trained is None else _train_once(app, fresh, context,
                                                                    trained)
    if reply.has_error():
        return reply
    key, own_arrays = _single_arrays(reply.content, "honest reply")
    problem = layout.mismatch(own_arrays)
    if problem is not None:
        raise ValueError(f"malicious_clientapp: the honest reply's model differs from the "
                         f"global model: {problem}")
    own = layout.to_vector(own_arrays)
    if trained is None:
        honest = own.unsqueeze(0)
    else:
        models = _view_models(app, message, context, who, layout, trained)
        models.setdefault(partition, own)
        honest = torch.stack([models[p] for p in who if p in models]) if models else (
            own.unsqueeze(0))
    crafted = _craft(attack, own, previous, honest, n_total=count, n_byzantine=len(bad),
                     round=max(_round_of(message) - 1, 0), rule=rule)
    reply.content[key] = layout.to_record(crafted)
    return reply


def _view_models(app: ClientApp, message: Message, context: Context, partitions: list[int],
                 layout: ModelLayout, trained: dict[int, _Trained]) -> dict[int, torch.Tensor]:
    """The honest models of ``partitions`` on ``message``: those in ``trained``, the others
    trained now on the node's behalf (a fresh ``Context`` with its partition id) and kept
    in ``trained`` for the rest of the round."""
    for partition in partitions:
        if partition in trained:
            continue
        peer = Context(run_id=context.run_id, node_id=context.node_id,
                       node_config={**context.node_config, "partition-id": partition},
                       state=RecordDict(), run_config=dict(context.run_config))
        try:
            peer_reply = app(copy_message(message), peer)
        except Exception:  # a partition the app cannot train is left out of the view
            continue
        if peer_reply.has_error():
            continue
        stateless = len(peer.state) == 0
        trained[partition] = _Trained(
            _model_vector(peer_reply.content, layout),
            reply=peer_reply.content if stateless else None,
            node_config=dict(peer.node_config))
    models = {}
    for partition in partitions:
        vector = trained[partition].vector if partition in trained else None
        if vector is not None:
            models[partition] = vector
    return models


def _craft(attack: ModelPoisoningAttack, own: torch.Tensor, previous: torch.Tensor,
           honest: torch.Tensor, *, n_total: int, n_byzantine: int, round: int,
           rule: Rule | None = None) -> torch.Tensor:
    """The attack's vector for the server, whose honest set is ``honest`` (and whose rule,
    if given, is ``rule`` applied server-side)."""
    uniform = 1.0 / n_total
    target = TargetView(
        node=0,
        model=honest[0],
        honest_neighbors=honest[1:],
        honest_weights=torch.full((honest.shape[0] - 1,), uniform, dtype=honest.dtype),
        byzantine_weight=max(n_byzantine, 1) * uniform,
        n_byzantine=max(n_byzantine, 1),
        self_weight=uniform,
        previous=previous,
        rule=None if rule is None else _ServerSide(rule, previous),
    )
    view = AttackView(own=own, targets=(target,), own_previous=previous, round=round)
    return attack(view)[0]


class _ServerSide(Rule):
    """A rule as a server applies it, behind the decentralized calling convention the
    attacks use: ``self(own, received)`` is ``rule.aggregate_clients(reference,
    [own, *received])``, the clients being ``own`` (the first honest client) and
    ``received``. State and stats are the wrapped rule's."""

    name = "server_side"

    def __init__(self, rule: Rule, reference: torch.Tensor) -> None:
        super().__init__()
        self.rule = rule
        self.reference = reference

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rule.load_state_dict(state)

    def _aggregate(self, own: torch.Tensor, received: torch.Tensor,
                   weights: torch.Tensor | None, *, round: int, rejected: int) -> torch.Tensor:
        clients = torch.cat([own.unsqueeze(0), received])
        result = self.rule.aggregate_clients(self.reference.to(own.dtype), clients,
                                             round=round, refused=rejected)
        self.stats.update(self.rule.stats)
        return result
