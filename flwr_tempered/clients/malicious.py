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
handler for each honest partition on the same global model (a fresh ``Context`` with that
partition's ``node_config``), once per round and worker process, and hands those models to
the attack. This needs the simulation's ``partition-id``/``num-partitions`` node config and
a ClientApp whose training depends only on them and the message (state kept in
``context.state`` is not replayed). ``view="colluders"`` uses only the malicious
partitions' own honest models (Fang et al.'s partial knowledge), ``view="own"`` only the
attacker's.

The server is the attack's single target: its "honest set" is the honest clients' models,
its reference point (``previous``) the global model the round started from. Attacks that
run the target's rule (``optimal_alie``, ``optimal_ipm``: ``needs_rule``) need the server's
rule as ``rule=``; they see it as the server applies it,
``rule.aggregate_clients(global model, honest models + Byzantine copies)``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

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

from .data_poisoning import poisoned_dataloaders

__all__ = ["VIEWS", "malicious_clientapp", "malicious_partitions"]

VIEWS = ("omniscient", "colluders", "own")

AttackSpec = str | Mapping[str, Any]
RuleSpec = Rule | str | Mapping[str, Any]

#: Per worker process: the honest models of the latest round, keyed by app, run, round,
#: global-model digest and run config, so colluding attackers in one process train them
#: once.
_VIEW_CACHE: dict[tuple[Any, ...], dict[int, torch.Tensor]] = {}


def malicious_partitions(num_partitions: int, *, nodes: Iterable[int] | None = None,
                         fraction: float | None = None, seed: int = 0) -> frozenset[int]:
    """The malicious partition ids: ``nodes`` as given, or ``round(fraction * N)``
    partitions drawn with ``seed`` (the same set on every node)."""
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
    count = round(fraction * num_partitions)
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
        fraction: the share of partitions that are malicious (drawn with ``seed``).
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
        return partition, count, malicious_partitions(count, nodes=node_list,
                                                      fraction=fraction, seed=seed)

    @wrapped.train()
    def train(message: Message, context: Context) -> Message:
        partition, count, bad = membership(context)
        if partition not in bad:
            return app(message, context)
        attack_now = template if isinstance(attack, AttackBase) else _build_attack(
            attack, seed + 7919 * partition + _round_of(message))
        if isinstance(attack_now, DataPoisoningAttack):
            with poisoned_dataloaders(attack_now):
                return app(message, context)
        assert isinstance(attack_now, ModelPoisoningAttack)
        return _poisoned_reply(app, attack_now, message, context, partition, count, bad, view,
                               server_rule)

    @wrapped.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return app(message, context)

    @wrapped.query()
    def query(message: Message, context: Context) -> Message:
        return app(message, context)

    return wrapped


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


def _poisoned_reply(app: ClientApp, attack: ModelPoisoningAttack, message: Message,
                    context: Context, partition: int, count: int, bad: frozenset[int],
                    view: str, rule: Rule | None) -> Message:
    """Train honestly, then send the attack's model instead of the trained one."""
    reply = app(copy_message(message), context)
    if reply.has_error():
        return reply
    _, global_arrays = _single_arrays(message.content, "train message")
    key, trained = _single_arrays(reply.content, "honest reply")
    layout = ModelLayout.of(global_arrays)
    problem = layout.mismatch(trained)
    if problem is not None:
        raise ValueError(f"malicious_clientapp: the honest reply's model differs from the "
                         f"global model: {problem}")
    previous = layout.to_vector(global_arrays)
    own = layout.to_vector(trained)
    if view == "own" or not attack.uses_targets_models:
        honest = own.unsqueeze(0)
    else:
        who = (sorted(set(range(count)) - bad) if view == "omniscient" else sorted(bad))
        models = _view_models(app, message, context, who, layout, {partition: own})
        honest = torch.stack([models[p] for p in who if p in models]) if models else (
            own.unsqueeze(0))
    crafted = _craft(attack, own, previous, honest, n_total=count, n_byzantine=len(bad),
                     round=max(_round_of(message) - 1, 0), rule=rule)
    reply.content[key] = layout.to_record(crafted)
    return reply


def _view_models(app: ClientApp, message: Message, context: Context, partitions: list[int],
                 layout: ModelLayout, known: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The honest models of ``partitions`` this round, trained once per process."""
    _, global_arrays = _single_arrays(message.content, "train message")
    digest = hashlib.sha256(layout.to_vector(global_arrays).numpy().tobytes()).hexdigest()
    # The same global model can reach different apps or configs in one process (tests,
    # notebooks, LocalGrid runs): they must not share honest models.
    cache_key = (id(app), context.run_id, _round_of(message), digest,
                 tuple(sorted(context.run_config.items())))
    models = _VIEW_CACHE.get(cache_key)
    if models is None:
        _VIEW_CACHE.clear()
        models = _VIEW_CACHE.setdefault(cache_key, {})
    for partition in partitions:
        if partition in models:
            continue
        if partition in known:
            models[partition] = known[partition]
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
        _, arrays = _single_arrays(peer_reply.content, "honest reply")
        if layout.mismatch(arrays) is None:
            models[partition] = layout.to_vector(arrays)
    return {p: models[p] for p in partitions if p in models}


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
