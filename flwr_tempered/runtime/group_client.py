"""The ClientApp side of a run whose SuperNodes each host a group of graph nodes.

With ``nodes_per_client = K > 1`` the SuperNode with partition id ``g`` hosts topology
positions ``g*K .. g*K + K - 1`` and steps them with the batched engine
(:class:`~flwr_tempered.engine.group.NodeGroup`). Per round it reads the stacked
half-step models of the groups that host its nodes' neighbours and the crafted vectors
of the attacking groups (by digest, from the run's exchange), and publishes one stacked
array of those of its nodes' half-step models that other groups read.

The group's state (parameters, momentum, samplers, rule and attack state) is saved after
every message: to a file of the run's shared-memory store when the run has one (then
``context.state`` holds only its name and a token), else into ``context.state``. The
engine object itself is cached per process, so that the data and the model are not
reloaded for every message, and a process that still holds the state it saved last
does not decode it again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict

from flwr_tempered.engine.group import NodeGroup, Received
from flwr_tempered.node import RunConfig

from .client import _exchange, _instructions, _reply
from .exchange import ModelExchange
from .state import load_tree, save_tree, save_tree_to_directory, tree_token

#: Where a group's state lives in ``context.state``.
GROUP_STATE = "tempered.group"


@lru_cache(maxsize=4)
def _cached_group(config_json: str, positions: tuple[int, ...], run_id: int) -> NodeGroup:
    return NodeGroup(RunConfig.from_mapping(json.loads(config_json)), positions)


def _group(config: RunConfig, positions: Sequence[int], context: Context,
           mutates: bool = True) -> NodeGroup:
    """The group at ``positions`` with its state from ``context.state`` (a fresh start
    when there is none).

    Decoding the state costs a copy of every hosted node's parameters and momentum per
    message; when ``context.state`` holds the very state this process's cached group
    saved last (same token), the cached group is used as it is."""
    group = _cached_group(json.dumps(config.to_dict(), sort_keys=True), tuple(positions),
                          int(getattr(context, "run_id", 0)))
    token = tree_token(context.state, GROUP_STATE)
    saved = group.state_token
    if mutates:
        # Forget the token before the group changes: a handler that fails half-way must
        # make the next message reload the saved state.
        group.state_token = None
    if token and token == saved:
        return group
    state = load_tree(context.state, GROUP_STATE)
    if state is not None:
        group.load_state_dict(state)
    elif group.engine.rounds_trained[group.hosted].any():  # cached from an earlier start
        group = NodeGroup(config, positions)
    return group


def _save(group: NodeGroup, context: Context, store: str | None) -> None:
    """Persist the group's state under a fresh token: in a file of the run's
    shared-memory ``store`` when there is one (``context.state`` keeps its name), else
    in ``context.state`` itself."""
    token = uuid.uuid4().hex
    if store:
        save_tree_to_directory(group.state_dict(), context.state, GROUP_STATE,
                               Path(store) / "group-state", token)
    else:
        save_tree(group.state_dict(), context.state, GROUP_STATE, token)
    group.state_token = token


def _rows(exchange: ModelExchange, message: Message, entries: Sequence[Any],
          wanted: set[int] | None = None) -> dict[int, torch.Tensor]:
    """Position -> model from ``[digest, positions]`` entries (stacked arrays), reading
    only the arrays that hold a ``wanted`` position. A missing or altered array is
    skipped (its nodes count as silent)."""
    models: dict[int, torch.Tensor] = {}
    for digest, positions in entries:
        if wanted is not None and not wanted & set(positions):
            continue
        try:
            array = exchange.fetch(str(digest), message.content)
        except Exception:
            continue
        if array.ndim != 2 or array.shape[0] != len(positions):
            continue
        tensor = torch.from_numpy(np.array(array))
        for row, position in enumerate(positions):
            models[int(position)] = tensor[row]
    return models


def _crafted(exchange: ModelExchange, message: Message, entries: Sequence[Any]
             ) -> tuple[torch.Tensor | None, list[int], list[int]]:
    blocks: list[torch.Tensor] = []
    attackers: list[int] = []
    targets: list[int] = []
    for digest, edges in entries:
        if not edges:
            continue
        try:
            array = exchange.fetch(str(digest), message.content)
        except Exception:
            continue
        if array.ndim != 2 or array.shape[0] != len(edges):
            continue
        blocks.append(torch.from_numpy(np.array(array)))
        attackers += [int(a) for a, _ in edges]
        targets += [int(t) for _, t in edges]
    return (torch.cat(blocks) if blocks else None), attackers, targets


def _publish(exchange: ModelExchange, rows: torch.Tensor | None, outbox: RecordDict) -> str:
    if rows is None or rows.shape[0] == 0:
        return ""
    return exchange.publish(rows.detach().cpu().numpy(), outbox)


def handle_group_train(message: Message, context: Context, config: RunConfig) -> Message:
    """Aggregate, evaluate and train the hosted nodes; publish their stacked models."""
    instructions = _instructions(message)
    positions = [int(p) for p in instructions["positions"]]
    group = _group(config, positions, context)
    exchange = _exchange(config, instructions)
    round_ = int(instructions["round"])
    received = None
    if instructions.get("previous_round"):
        crafted, attackers, targets = _crafted(exchange, message, instructions["crafted"])
        received = Received(
            halves=_rows(exchange, message, instructions["halves"], group.needs(round_)),
            sent=[int(p) for p in instructions["sent"]], crafted=crafted,
            attackers=attackers, targets=targets)
    reply = group.train_round(round_, received, evaluate=bool(instructions["evaluate"]),
                              train=bool(instructions["train"]),
                              publish_model=bool(instructions["publish_model"]))
    outbox = RecordDict()
    report = {
        "half": _publish(exchange, reply.half, outbox),
        "half_positions": reply.exported_positions, "sent": reply.half_positions,
        "model": _publish(exchange, reply.models, outbox),
        "model_positions": reply.model_positions, "dropped": reply.dropped,
        "metrics": {str(p): m for p, m in reply.metrics.items()},
    }
    _save(group, context, instructions.get("store"))
    return _reply(message, report, {}, outbox)


def handle_group_attack(message: Message, context: Context, config: RunConfig) -> Message:
    """Craft the hosted attackers' vectors from the omniscient view; publish them as one
    stacked array with its edge list."""
    instructions = _instructions(message)
    positions = [int(p) for p in instructions["positions"]]
    group = _group(config, positions, context)
    exchange = _exchange(config, instructions)
    halves = _rows(exchange, message, instructions["halves"])
    previous = _rows(exchange, message, instructions.get("models", []))
    crafted, attackers, targets = group.craft_round(
        int(instructions["round"]), halves, [int(p) for p in instructions["published"]],
        previous)
    outbox = RecordDict()
    report = {"crafted": _publish(exchange, crafted, outbox),
              "edges": [[a, t] for a, t in zip(attackers, targets, strict=True)]}
    _save(group, context, instructions.get("store"))
    return _reply(message, report, {}, outbox)


def handle_group_audit(message: Message, context: Context, config: RunConfig) -> Message:
    """Average the honest models (every group's), evaluate the averages, measure the
    consensus distance."""
    instructions = _instructions(message)
    positions = [int(p) for p in instructions["positions"]]
    group = _group(config, positions, context, mutates=False)
    exchange = _exchange(config, instructions)
    models = _rows(exchange, message, instructions["models"])
    return _reply(message, {}, group.audit(models))
