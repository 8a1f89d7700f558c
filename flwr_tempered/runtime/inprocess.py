"""The in-process runtime: every node of a run stepped in one Python process.

It runs the same :class:`~flwr_tempered.node.Node` objects through the same round as the
Flower relay and ClientApp (aggregate what the neighbours sent, publish, evaluate, train,
then the Byzantine nodes craft their vectors from the omniscient view), without messages,
Ray or a ledger. For a config without a ledger it writes the same ``metrics.jsonl`` as a
Flower run up to float rounding (Ray's workers run torch on one thread, so reductions may
add in another order; ``tests/test_inprocess.py`` checks this), at a fraction of the cost:
no per-message overhead and no simulation engine start-up. A node whose round raises (a
rule refusing non-finite input, say) is dropped for that round and resumes from its
previous state, as a ClientApp whose handler fails does. The reproduction sweeps use this
runtime: parameter sweeps over hundreds of runs would otherwise spend most of their time
in message passing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from flwr_tempered.attacks import ModelPoisoningAttack, attack_class
from flwr_tempered.node import Node, NodeState, RunConfig, TargetInputs, build_world
from flwr_tempered.node.summary import audit_models, metrics_line
from flwr_tempered.results import RunResults, plot_run
from flwr_tempered.topology import Topology, round_metrics

ProgressCallback = Callable[[dict[str, Any], RunConfig], None]


def _frozen(params: torch.Tensor) -> torch.Tensor:
    """A private copy of what a node sends, on the node's device (receivers copy it again
    before use, so one sender's tensor is never aliased by another node's state)."""
    return params.detach().clone()


def _snapshot(node: Node) -> NodeState:
    """What :meth:`Node.load_state` needs to undo a failed round. A shallow copy suffices:
    a round replaces the state's tensors (training and aggregation return new ones) and
    ``save_state`` returns fresh copies of the sampler, rule and attack states."""
    return replace(node.save_state())


def _place_on_device(node: Node) -> None:
    """Keep the node's parameters and momentum where its task trains (CUDA when present),
    so that training, aggregation and attacks run there without host round trips."""
    device = getattr(node.task, "device", None)
    if isinstance(device, torch.device) and node.state.params.device != device:
        node.state = replace(node.state, params=node.state.params.to(device),
                             momentum=node.state.momentum.to(device))


def run_in_process(config: RunConfig, out: str | Path | None = None, *,
                   progress: ProgressCallback | None = None, plot: bool = True
                   ) -> list[dict[str, Any]]:
    """Run ``config`` in this process; return the metrics lines. With ``out``, write the
    results folder (config, metrics, timings, and ``accuracy.png`` when ``plot``).

    A config that asks for a ledger, injected faults or the inline exchange is refused:
    those exist only where messages travel (use :func:`~flwr_tempered.experiments.
    simulate.simulate`).
    """
    if config.ledger or config.faults:
        raise ValueError("the in-process runtime has no messages to sign or corrupt: set "
                         "ledger=False and no faults, or run through Flower (simulate)")
    world = build_world(config)
    topology = world.topology  # the round's graph: topology.at_round(t)
    nodes = [Node(p, world) for p in range(topology.n)]
    for node in nodes:
        _place_on_device(node)
    honest = [p for p in range(topology.n) if p not in topology.byzantine]
    poisoning = config.byzantine > 0 and config.attack != "none" and issubclass(
        attack_class(config.attack), ModelPoisoningAttack)
    needs_previous = poisoning and bool(getattr(attack_class(config.attack), "uses_previous",
                                                False))
    results = RunResults(out) if out is not None else None
    if results is not None:
        results.write_config(config.to_dict())
    inputs: dict[int, list[tuple[int, torch.Tensor]]] = {p: [] for p in range(topology.n)}
    history: list[dict[str, Any]] = []
    timings: list[dict[str, float]] = []
    for message_round in range(1, config.rounds + 2):
        t = message_round - 1
        evaluate = t == 0 or t % config.eval_every == 0 or t == config.rounds
        train = message_round <= config.rounds
        start = time.perf_counter()
        node_metrics: dict[int, dict[str, float]] = {}
        half: dict[int, torch.Tensor] = {}
        models: dict[int, torch.Tensor] = {}
        dropped: list[int] = []
        for node in nodes:
            snapshot = _snapshot(node)
            try:
                metrics, model, sent = _step(node, inputs[node.position], t, evaluate,
                                             evaluate or needs_previous, train)
            except Exception:  # a failing node is dropped for the round, as in Flower
                node.load_state(snapshot)
                dropped.append(node.position)
                continue
            node_metrics[node.position] = metrics
            if model is not None:
                models[node.position] = model
            if sent is not None:
                half[node.position] = sent
        # Round t's graph carried what was just aggregated; round t + 1's carries what
        # was just trained.
        current = topology.at_round(t)
        following = topology.at_round(t + 1) if train else current
        audit: dict[str, float] = {}
        if evaluate and honest:
            audit = audit_models(current, nodes[honest[0]].task,
                                 {p: models[p] for p in honest if p in models})
        crafted: dict[int, dict[int, torch.Tensor]] = {}
        if train and poisoning:
            crafted = {a: _craft(nodes[a], following, half, models, t + 1)
                       for a in sorted(topology.byzantine)}
        inputs = {p: [] for p in range(topology.n)}
        for p in range(topology.n):
            for q in following.neighbors(p):
                vector = crafted.get(q, {}).get(p) if q in crafted else half.get(q)
                if vector is not None:
                    inputs[p].append((q, vector))
        timings.append({"round": float(t), "total_s": time.perf_counter() - start})
        if evaluate:
            line = {**metrics_line(t, current, node_metrics, dropped, audit),
                    **round_metrics(topology, t)}
            history.append(line)
            if results is not None:
                results.append_metrics(line)
            if progress is not None:
                progress(line, config)
        if not train:
            break
    if results is not None:
        results.write_timings(timings)
        if plot:
            plot_run(results.folder)
    return history


def _step(node: Node, received: list[tuple[int, torch.Tensor]], round: int, evaluate: bool,
          publish_model: bool, train: bool
          ) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor | None]:
    """One node's part of a round, in the ClientApp's order: aggregate what the
    neighbours sent, publish the model (evaluation rounds, or for attacks that read it),
    evaluate, train. Returns the metrics, the published model and the half-step model."""
    metrics = node.aggregate([s for s, _ in received], [v for _, v in received], round)
    model = _frozen(node.state.params) if publish_model and not node.byzantine else None
    if evaluate and not node.byzantine:
        metrics.update(node.evaluate())
    sent = None
    if train:
        metrics.update(node.train(round))
        sent = _frozen(node.state.params)
    return metrics, model, sent


def _craft(attacker: Node, topology: Topology, half: dict[int, torch.Tensor],
           models: dict[int, torch.Tensor], round: int) -> dict[int, torch.Tensor]:
    """The vector ``attacker`` sends each honest recipient in ``topology`` (the graph of
    ``round``), from the omniscient view the Flower relay would give it (targets' and
    their honest neighbours' half-step models, and the targets' previous models)."""
    targets = [
        TargetInputs(
            node=target, model=half[target],
            honest_neighbors=[j for j in topology.honest_neighbors(target) if j in half],
            honest_models=[half[j] for j in topology.honest_neighbors(target) if j in half],
            previous=models.get(target),
        )
        for target in topology.recipients(attacker.position)
        if target not in topology.byzantine and target in half
    ]
    if not targets:
        return {}
    return attacker.craft(targets, round)

