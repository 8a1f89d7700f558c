"""Graph nodes hosted in groups (``nodes_per_client``): groups stepped by the batched
engine, with their state saved and restored every message, give the in-process batched
engine's metrics, through a plain relay loop, through Flower's message API (LocalGrid)
and through Flower's simulation engine (Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_engine import BASE, assert_same_metrics

from flwr_tempered.engine import EngineOptions, run_batched
from flwr_tempered.engine.group import NodeGroup, Received, group_positions
from flwr_tempered.experiments.cli import main
from flwr_tempered.node import RunConfig
from flwr_tempered.node.summary import metrics_line
from flwr_tempered.results import read_metrics
from flwr_tempered.runtime.client import make_client_app
from flwr_tempered.runtime.local_grid import run_locally
from flwr_tempered.runtime.server import make_server_app

CASES: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("trimmed_mean", {"b": 1}, "alie", {"z": 2.0}),
    ("centered_clipping", {"tau": 0.5}, "gaussian", {"sigma": 0.5}),  # rule state, noise
    ("bucketing", {"s": 2, "inner": "mean"}, "sign_flip", {}),  # shuffles, own previous
    ("mozi", {}, "label_flip", {}),  # local losses, data poisoning
]


def relay_in_python(config: RunConfig, per_group: int) -> list[dict[str, Any]]:
    """What the Flower relay does, without messages: every group is rebuilt from its
    saved state for every call, as a ClientApp is."""
    groups = group_positions(config.nodes, per_group)
    states: list[dict[str, Any] | None] = [None] * len(groups)

    def group(g: int) -> NodeGroup:
        built = NodeGroup(config, groups[g], EngineOptions(device="cpu"))
        if states[g] is not None:
            built.load_state_dict(states[g])  # type: ignore[arg-type]
        return built

    received: Received | None = None
    history = []
    for message_round in range(1, config.rounds + 2):
        t = message_round - 1
        evaluate = t == 0 or t % config.eval_every == 0 or t == config.rounds
        train = message_round <= config.rounds
        replies = []
        for g in range(len(groups)):
            hosted = group(g)
            replies.append(hosted.train_round(t, received, evaluate=evaluate, train=train,
                                              publish_model=True))
            states[g] = hosted.state_dict()
        topology = hosted.engine.topology
        models = {p: r.models[i] for r in replies if r.models is not None
                  for i, p in enumerate(r.model_positions)}
        # Only the exported rows travel; ``sent`` lists every node that trained.
        halves = {p: r.half[i] for r in replies if r.half is not None
                  for i, p in enumerate(r.exported_positions)}
        sent = sorted(p for r in replies for p in r.half_positions)
        if train:
            blocks, attackers, targets = [], [], []
            for g, members in enumerate(groups):
                if any(p in topology.byzantine for p in members):
                    hosted = group(g)
                    crafted, a, b = hosted.craft_round(
                        t + 1, halves, [p for p in sent if p not in topology.byzantine],
                        models)
                    states[g] = hosted.state_dict()
                    blocks.append(crafted)
                    attackers += a
                    targets += b
            received = Received(halves=halves, sent=sent,
                                crafted=torch.cat(blocks) if blocks else None,
                                attackers=attackers, targets=targets)
        if evaluate:
            metrics = {p: m for r in replies for p, m in r.metrics.items()}
            dropped = sorted(p for r in replies for p in r.dropped)
            history.append(metrics_line(t, topology, metrics, dropped, group(0).audit(models)))
        if not train:
            break
    return history


@pytest.mark.parametrize(("rule", "rule_args", "attack", "attack_args"), CASES,
                         ids=[c[0] for c in CASES])
def test_groups_rebuilt_from_their_state_give_the_whole_run(
        rule: str, rule_args: dict[str, Any], attack: str, attack_args: dict[str, Any]) -> None:
    config = RunConfig(**BASE, rule=rule, rule_args=rule_args, attack=attack,
                       attack_args=attack_args)
    whole = run_batched(config, plot=False, options=EngineOptions(device="cpu"))
    assert_same_metrics(relay_in_python(config, 4), whole)


def test_group_positions_are_consecutive_blocks() -> None:
    assert group_positions(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="nodes per group"):
        group_positions(10, 0)


def test_flower_messages_with_groups_give_the_in_process_batched_metrics(
        tmp_path: Path) -> None:
    config = RunConfig(**BASE, rule="trimmed_mean", rule_args={"b": 1}, attack="alie",
                       attack_args={"z": 2.0}, nodes_per_client=4)
    whole = run_batched(config, plot=False, options=EngineOptions(device="cpu"))
    run_locally(make_server_app(config, tmp_path), make_client_app(config), num_nodes=3)
    assert_same_metrics(read_metrics(tmp_path), whole)


def test_a_group_decodes_its_saved_state_only_when_it_no_longer_holds_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.app import Context, RecordDict

    from flwr_tempered.runtime import group_client
    from flwr_tempered.runtime.state import save_tree

    config = RunConfig(**BASE, rule="gossip", rule_args={}, attack="alie",
                       attack_args={"z": 2.0}, nodes_per_client=4)
    loads: list[int] = []
    original = NodeGroup.load_state_dict

    def counting(self: NodeGroup, state: dict[str, Any]) -> None:
        loads.append(1)
        original(self, state)

    monkeypatch.setattr(NodeGroup, "load_state_dict", counting)
    context = Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config={})
    group = group_client._group(config, [0, 1, 2, 3], context)
    group_client._save(group, context, None)
    assert group_client._group(config, [0, 1, 2, 3], context) is group
    assert loads == []  # it still holds what it saved
    group_client._save(group, context, None)
    group_client._group(config, [0, 1, 2, 3], context, mutates=False)  # an audit
    assert group_client._group(config, [0, 1, 2, 3], context) is group
    assert loads == []
    # A handler that failed after taking the group saved nothing: decode the state.
    group_client._group(config, [0, 1, 2, 3], context)
    assert loads == [1]
    # State saved elsewhere (another process, another token) is decoded too.
    group_client._save(group, context, None)
    other = RecordDict()
    save_tree(group.state_dict(), other, group_client.GROUP_STATE, "elsewhere")
    context.state = other
    group_client._group(config, [0, 1, 2, 3], context)
    assert loads == [1, 1]


def test_a_group_state_in_the_run_store_round_trips_and_leaves_one_file(
        tmp_path: Path) -> None:
    from flwr.app import RecordDict

    from flwr_tempered.runtime.state import load_tree, save_tree_to_directory, tree_token

    config = RunConfig(**BASE, rule="gossip", rule_args={}, attack="alie",
                       attack_args={"z": 2.0})
    group = NodeGroup(config, [0, 1, 2, 3], EngineOptions(device="cpu"))
    group.train_round(0, None, evaluate=False, train=True, publish_model=False)
    records = RecordDict()
    directory = tmp_path / "group-state"
    first = save_tree_to_directory(group.state_dict(), records, "g", directory, "one")
    second = save_tree_to_directory(group.state_dict(), records, "g", directory, "two")
    assert not first.exists() and second.exists()
    assert [p.name for p in directory.iterdir()] == [second.name]
    assert tree_token(records, "g") == "two"
    assert "g.arrays" not in records  # the tensors are in the file only
    resumed = NodeGroup(config, [0, 1, 2, 3], EngineOptions(device="cpu"))
    state = load_tree(records, "g")
    assert state is not None
    resumed.load_state_dict(state)
    assert torch.equal(resumed.engine.params[:4], group.engine.params[:4])
    assert torch.equal(resumed.engine.momentum[:4], group.engine.momentum[:4])
    second.unlink()
    with pytest.raises(ValueError, match="cannot be read"):
        load_tree(records, "g")
    # A store the relay has removed is not brought back by a late message.
    with pytest.raises(FileNotFoundError):
        save_tree_to_directory(group.state_dict(), records, "g",
                               tmp_path / "removed" / "group-state", "three")


def test_a_group_publishes_only_the_half_step_models_other_groups_read() -> None:
    config = RunConfig(
        **{**BASE, "topology": "ring", "topology_args": {}, "nodes": 8, "byzantine": 0},
        rule="gossip", rule_args={}, attack="none", attack_args={})
    group = NodeGroup(config, [0, 1, 2, 3], EngineOptions(device="cpu"))
    assert group.exported == {0, 3}  # the ring's edges to positions 7 and 4
    reply = group.train_round(0, None, evaluate=False, train=True, publish_model=False)
    assert reply.half_positions == [0, 1, 2, 3]
    assert reply.exported_positions == [0, 3]
    assert reply.half is not None and torch.equal(reply.half, group.engine.params[[0, 3]])
    alone = NodeGroup(config, list(range(8)), EngineOptions(device="cpu"))
    assert alone.exported == set()
    assert alone.train_round(0, None, evaluate=False, train=True,
                             publish_model=False).half is None


@pytest.mark.end_to_end
def test_flower_simulation_with_groups_gives_the_in_process_batched_metrics(
        tmp_path: Path) -> None:
    from flwr_tempered.experiments.simulate import simulate

    config = RunConfig(**BASE, rule="centered_clipping", rule_args={"tau": 0.5},
                       attack="gaussian", attack_args={"sigma": 0.5}, nodes_per_client=3)
    whole = run_batched(config, plot=False, options=EngineOptions(device="cpu"))
    simulate(config, tmp_path)
    assert_same_metrics(read_metrics(tmp_path), whole)


def test_groups_refuse_a_ledger_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"nodes_per_client = 4 .* ledger=False"):
        RunConfig(**{**BASE, "ledger": True}, nodes_per_client=4)


@pytest.mark.end_to_end
def test_the_command_line_runs_groups_through_flower(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "--topology", "ring", "--nodes", "6", "--byzantine", "1",
                   "--rule", "clipped_gossip", "--rule-arg", "tau=0.5", "--attack", "ipm",
                   "--dataset", "digits", "--model", "logistic_regression", "--rounds", "2",
                   "--eval-every", "1", "--nodes-per-client", "3", "--compare", "none",
                   "--out", str(tmp_path / "run")])
    assert status == 0
    assert "keeps no ledger" in capsys.readouterr().err
    lines = read_metrics(tmp_path / "run")
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert lines[-1]["accuracy_mean"] is not None
