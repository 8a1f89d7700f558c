"""What a round amounts to: the audit of the honest models and the round's metrics line.

Every engine uses these (the Flower relay, the per-node loop and the batched engine), so a run's
``metrics.jsonl`` has the same keys and values whichever carried the messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from flwr_tempered.node.task import TrainingTask
from flwr_tempered.topology import Topology


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _suffix(group: str) -> str:
    return "" if group == "all" else "_" + group.replace(" ", "_")


def acceptance_split(accepted: torch.Tensor, from_attacker: torch.Tensor) -> dict[str, float]:
    """One honest node's ``rule_acceptance_honest`` and ``rule_acceptance_byzantine``: the
    fraction of its honest and of its Byzantine neighbours' inputs that the rule let into
    the average (``accepted`` and ``from_attacker`` are ``Tensor[k]`` bool over the received
    rows; a kind of input the node did not receive is left out). A robust rule should keep
    the first near 1 (it still collaborates) and the second near 0; only a simulation,
    which knows who attacks, can tell them apart."""
    split: dict[str, float] = {}
    for key, rows in (("rule_acceptance_honest", ~from_attacker),
                      ("rule_acceptance_byzantine", from_attacker)):
        if bool(rows.any()):
            split[key] = float(accepted[rows].double().mean())
    return split


def audit_models(topology: Topology, task: TrainingTask, models: Mapping[int, torch.Tensor]
                 ) -> dict[str, float]:
    """Average the honest models (overall and per topology group), evaluate each average
    with ``task``, and measure the consensus distance (mean squared distance of the models
    to their average): spec §1 step 5."""
    metrics: dict[str, float] = {"audited_models": float(len(models))}
    if not models:
        return metrics
    stacked = torch.stack(list(models.values()))
    average = stacked.mean(dim=0)
    metrics["consensus_distance"] = float(((stacked - average) ** 2).sum(dim=1).mean())
    for group, members in topology.groups.items():
        present = [models[m] for m in members if m in models]
        if present:
            result = task.evaluate(torch.stack(present).mean(dim=0))
            metrics[f"accuracy_avg_model{_suffix(group)}"] = result["accuracy"]
    return metrics


def metrics_line(round: int, topology: Topology, node_metrics: Mapping[int, Mapping[str, float]],
                 dropped: Sequence[int], audit: Mapping[str, float]) -> dict[str, Any]:
    """One ``metrics.jsonl`` line: honest accuracy (mean, worst, per group), the audit,
    and the rule's statistics and rejection counts (counts summed, rates averaged) over
    the honest nodes that answered (``node_metrics``, keyed by position)."""
    honest = [p for p in range(topology.n) if p not in topology.byzantine]
    replies = [node_metrics[p] for p in honest if p in node_metrics]
    accuracies = [r["accuracy"] for r in replies if "accuracy" in r]
    line: dict[str, Any] = {
        "round": round,
        "accuracy_mean": _mean(accuracies),
        "accuracy_min": min(accuracies) if accuracies else None,
        "dropped_nodes": len(dropped),
        "dropped": list(dropped),
    }
    for group, members in topology.groups.items():
        if group != "all":
            line[f"accuracy_mean{_suffix(group)}"] = _mean(
                node_metrics[p]["accuracy"] for p in members
                if p in node_metrics and "accuracy" in node_metrics[p])
    line.update({k: v for k, v in audit.items() if k != "audited_models"})
    keys = sorted({k for r in replies for k in r
                   if k.startswith(("rule_", "rejected_", "train_loss"))})
    for key in keys:
        values = [r[key] for r in replies if key in r]
        total = key.startswith(("rejected_", "rule_rejected_", "rule_refused"))
        line[key] = sum(values) if total else _mean(values)
    return line
