"""The decentralized relay for SuperNodes that each host a group of graph nodes.

With ``nodes_per_client = K > 1`` the relay talks to one SuperNode per group of ``K``
consecutive topology positions instead of one per node. It is still only a control
plane: per round it tells each group which stacked arrays (by digest) hold the half-step
models of its nodes' neighbours and which crafted vectors arrived, asks the groups that
host Byzantine nodes to craft, and one group to audit the honest models. It never holds
a model. Each group steps its nodes with the batched engine
(:mod:`flwr_tempered.runtime.group_client`); a run gives the in-process batched engine's
metrics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from flwr_tempered.engine.group import group_positions
from flwr_tempered.node import RunConfig
from flwr_tempered.node.summary import metrics_line
from flwr_tempered.runtime.protocol import ATTACK, AUDIT, TRAIN
from flwr_tempered.topology import round_metrics

from .decentralized import DecentralizedStrategy, MetricsCallback, RoundLog

#: ``[digest, positions]``: a stacked array of models and whose rows they are.
Stack = list[Any]


class GroupedDecentralizedStrategy(DecentralizedStrategy):
    """Run ``config`` over SuperNodes that host ``config.nodes_per_client`` graph nodes
    each (partition id ``g`` hosts group ``g``)."""

    def __init__(self, config: RunConfig, on_metrics: MetricsCallback | None = None,
                 exchange: Any = None) -> None:
        super().__init__(config, on_metrics, exchange)
        self.groups = group_positions(self.topology.n, config.nodes_per_client)
        self.participants = len(self.groups)
        byzantine = self.topology.byzantine
        self.group_of = {p: g for g, members in enumerate(self.groups) for p in members}
        self.attacking = [g for g, members in enumerate(self.groups)
                          if any(p in byzantine for p in members)]

    def start(self, grid: Grid, *, timeout: float | None = None, store: str | None = None,
              ledger: str | Path | None = None) -> list[dict[str, Any]]:
        if self.config.ledger:
            raise ValueError("a run with nodes_per_client > 1 keeps no ledger: set "
                             "ledger=False")
        return super().start(grid, timeout=timeout, store=store, ledger=None)

    def sources(self, round: int) -> list[list[int]]:
        """The groups whose half-step models each group aggregates in round ``round``."""
        topology = self.topology.at_round(round)
        return [
            sorted({self.group_of[q] for p in members if p not in topology.byzantine
                    for q in topology.neighbors(p)} - {g})
            for g, members in enumerate(self.groups)
        ]

    def _rounds(self, grid: Grid, node_ids: dict[int, int], store: str | None, genesis: str
                ) -> list[dict[str, Any]]:
        config, topology = self.config, self.topology
        honest = set(range(topology.n)) - set(topology.byzantine)
        halves: dict[int, Stack] = {}          # group -> its half-step models of last round
        crafted: dict[int, Stack] = {}         # group -> [digest, edges] of last round
        sent: list[int] = []
        mailbox: dict[str, ArrayRecord] = {}
        for message_round in range(1, config.rounds + 2):
            t = message_round - 1
            evaluate = t == 0 or t % config.eval_every == 0 or t == config.rounds
            train = message_round <= config.rounds
            start = time.perf_counter()
            sources = self.sources(t)
            payloads = {
                g: {"round": t, "positions": members, "store": store, "train": train,
                    "evaluate": evaluate,
                    "publish_model": evaluate or self.attack_needs_previous,
                    "previous_round": t > 0, "sent": sent,
                    "halves": [halves[s] for s in sources[g] if s in halves],
                    "crafted": [crafted[a] for a in self.attacking if a in crafted]}
                for g, members in enumerate(self.groups)
            }
            log = self._send(grid, TRAIN, payloads, node_ids, mailbox)
            node_metrics: dict[int, dict[str, float]] = {}
            dropped: set[int] = set()
            halves, models = {}, {}
            sent = []
            for g, members in enumerate(self.groups):
                reply = log.replies.get(g)
                if reply is None:
                    dropped |= set(members)
                    continue
                report = reply.report
                node_metrics.update({int(p): m for p, m in report["metrics"].items()})
                dropped |= {int(p) for p in report["dropped"]}
                sent += [int(p) for p in report.get("sent", report["half_positions"])]
                if report["half"]:
                    halves[g] = [report["half"], report["half_positions"]]
                if report["model"]:
                    models[g] = [report["model"], report["model_positions"]]
            sent.sort()
            audit: dict[str, float] = {}
            if evaluate and models:
                auditor = min(log.replies)
                audit_log = self._send(grid, AUDIT, {auditor: {
                    "positions": self.groups[auditor], "store": store,
                    "models": list(models.values())}}, node_ids, mailbox)
                reply = audit_log.replies.get(auditor)
                audit = reply.metrics if reply is not None else {}
            attack_seconds = 0.0
            crafted = {}
            if train and self.model_poisoning:
                attack_log = self._attack_groups(grid, node_ids, store, halves, models, sent,
                                                 honest, t + 1, mailbox)
                attack_seconds = attack_log.seconds
                crafted = {g: [r.report["crafted"], r.report["edges"]]
                           for g, r in attack_log.replies.items() if r.report.get("crafted")}
            self._published |= {stack[0] for stack in [*halves.values(), *models.values(),
                                                       *crafted.values()]}
            needed = {stack[0] for stack in [*halves.values(), *crafted.values()]}
            for digest in [d for d in mailbox if d not in needed]:
                del mailbox[digest]
            for digest in self._published - needed:
                self.exchange.discard(digest)
            self._published = set(needed)
            self.timings.append({"round": float(t), "train_message_s": log.seconds,
                                 "attack_message_s": attack_seconds,
                                 "total_s": time.perf_counter() - start})
            if evaluate:
                line = {**metrics_line(t, topology.at_round(t), node_metrics, sorted(dropped),
                                       audit), **round_metrics(topology, t)}
                self.history.append(line)
                if self.on_metrics is not None:
                    self.on_metrics(line)
            if not train:
                break
        return self.history

    def _attack_groups(self, grid: Grid, node_ids: dict[int, int], store: str | None,
                       halves: dict[int, Stack], models: dict[int, Stack], sent: list[int],
                       honest: set[int], round_: int, mailbox: dict[str, ArrayRecord]
                       ) -> RoundLog:
        """Ask every group hosting Byzantine nodes for its crafted vectors."""
        payloads = {
            g: {"round": round_, "positions": self.groups[g], "store": store,
                "halves": list(halves.values()),
                "models": list(models.values()) if self.attack_needs_previous else [],
                "published": [p for p in sent if p in honest]}
            for g in self.attacking
        }
        return self._send(grid, ATTACK, payloads, node_ids, mailbox)
