"""The round's sample, announced by the robust strategies, and the attack wrapper's view of
a sampled round: the attackers read (and train on the nodes' behalf) only the sampled
honest partitions, so an attacked run with Flower's sampling trains as often as a clean one.

A counting ClientApp whose "training" adds ``partition-id + 1`` plus fresh noise makes two
trainings of one partition distinguishable, so replayed and crafted replies are checkable.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedProx

from flwr_tempered.clients import malicious_clientapp
from flwr_tempered.clients.malicious import _view_partitions
from flwr_tempered.runtime.local_grid import LocalGrid, run_locally
from flwr_tempered.strategies import Median, robust
from flwr_tempered.strategies.sample_announcement import (
    SAMPLED_NODES_KEY,
    announce_sample,
    announced_sample,
)

NUM_NODES = 10
MODEL = np.arange(4, dtype=np.float32)


def counting_app(calls: list[tuple[int, int]]) -> ClientApp:
    """Adds ``partition-id + 1`` and fresh noise; records ``(round, partition)`` per
    training."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        calls.append((int(msg.content["config"]["server-round"]), partition))
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        noise = np.random.default_rng().normal(size=arrays[0].shape).astype(np.float32)
        return Message(RecordDict({"arrays": ArrayRecord([arrays[0] + partition + 1 + noise]),
                                   "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    return app


def train_messages(grid: LocalGrid, nodes: list[int], server_round: int) -> list[Message]:
    content = RecordDict({"arrays": ArrayRecord([MODEL]),
                          "config": ConfigRecord({"server-round": server_round})})
    return [grid.create_message(content, MessageType.TRAIN, node, str(server_round))
            for node in nodes]


def model_of(reply: Message) -> np.ndarray:
    assert not reply.has_error(), reply.error.reason
    return reply.content["arrays"].to_numpy_ndarrays()[0]


# --------------------------------------------------------------------- the announcement
def test_the_announcement_lists_every_destination_and_copies_the_shared_content() -> None:
    grid = LocalGrid(counting_app([]), NUM_NODES)
    messages = train_messages(grid, [3, 1, 8], 1)
    shared = messages[0].content
    config_before = dict(shared["config"])
    announced = announce_sample(messages)
    assert [m.metadata.dst_node_id for m in announced] == [3, 1, 8]
    for message in announced:
        assert message.content["config"][SAMPLED_NODES_KEY] == ["3", "1", "8"]
        assert message.content["config"]["server-round"] == 1
        assert message.content["arrays"] is shared["arrays"]  # the model is not copied
        assert announced_sample(message.content) == frozenset({1, 3, 8})
    assert announced[0].content is announced[2].content  # still one content for all
    assert dict(shared["config"]) == config_before  # the caller's records are unchanged


@pytest.mark.parametrize("value", [[1, 2], ["1", "x"], "1,2", ["-3"]])
def test_a_malformed_announcement_is_ignored(value: object) -> None:
    content = RecordDict({"config": ConfigRecord({SAMPLED_NODES_KEY: value})})
    assert announced_sample(content) is None
    assert announced_sample(RecordDict({"config": ConfigRecord({"lr": 0.1})})) is None


def strategy_messages(strategy, fraction: float) -> list[Message]:  # type: ignore[no-untyped-def]
    grid = LocalGrid(counting_app([]), NUM_NODES)
    return list(strategy.configure_train(1, ArrayRecord([MODEL]), ConfigRecord(), grid))


@pytest.mark.parametrize("build", [lambda: Median(fraction_train=0.5),
                                   lambda: robust(FedProx(fraction_train=0.5,
                                                          proximal_mu=0.1), "median")],
                         ids=["Median", "robust(FedProx)"])
def test_the_robust_strategies_announce_the_sample_they_drew(build) -> None:  # type: ignore[no-untyped-def]
    messages = strategy_messages(build(), 0.5)
    sampled = frozenset(m.metadata.dst_node_id for m in messages)
    assert len(sampled) == 5
    assert all(announced_sample(m.content) == sampled for m in messages)
    quiet = build()
    quiet.announce_sample = False
    assert all(announced_sample(m.content) is None for m in strategy_messages(quiet, 0.5))


# ------------------------------------------------------------------------------ the view
BAD = frozenset({2, 7})


@pytest.mark.parametrize(("view", "sampled", "seen", "expected"), [
    ("omniscient", None, {}, [0, 1, 3, 4, 5, 6, 8, 9]),  # no announcement: every honest
    # every sampled node seen: exactly the sampled honest partitions
    ("omniscient", {11, 13, 14, 18}, {11: 0, 13: 2, 14: 3, 18: 7, 19: 8}, [0, 3]),
    # node 15 unseen: every honest partition not known to be unsampled (19 -> 8 is)
    ("omniscient", {11, 15}, {11: 0, 19: 8}, [0, 1, 3, 4, 5, 6, 9]),
    ("colluders", {11}, {11: 0}, [2, 7]),
])
def test_the_view_is_the_sampled_honest_partitions_once_the_nodes_are_known(
        view: str, sampled: set[int] | None, seen: dict[int, int], expected: list[int]
) -> None:
    announced = None if sampled is None else frozenset(sampled)
    assert _view_partitions(view, NUM_NODES, BAD, announced, seen) == expected


def test_attackers_read_exactly_the_sampled_honest_models_and_train_nothing_else() -> None:
    calls: list[tuple[int, int]] = []
    attackers = [2, 7]
    wrapped = malicious_clientapp(counting_app(calls), {"name": "ipm", "eps": 0.5},
                                  nodes=attackers)
    grid = LocalGrid(wrapped, NUM_NODES)  # node id = partition + 1
    evaluate = RecordDict({"config": ConfigRecord({"server-round": 0})})
    list(grid.send_and_receive([grid.create_message(evaluate, MessageType.EVALUATE, node, "0")
                                for node in grid.get_node_ids()]))  # every node now seen
    for server_round, partitions in ((1, [7, 0, 4, 9, 2]), (2, [1, 2, 3, 5, 6])):
        nodes = [p + 1 for p in partitions]  # attackers first, between and last
        replies = dict(zip(partitions, grid.send_and_receive(
            announce_sample(train_messages(grid, nodes, server_round))), strict=True))
        honest = [p for p in partitions if p not in attackers]
        mean = np.mean([model_of(replies[p]) for p in honest], axis=0)
        for partition in attackers:
            if partition in partitions:  # what the server aggregates, nothing more
                assert np.allclose(model_of(replies[partition]), -0.5 * mean, atol=1e-5)
        assert sorted(p for r, p in calls if r == server_round) == sorted(partitions)


def test_before_every_node_is_seen_the_view_is_a_superset_and_no_partition_trains_twice(
) -> None:
    calls: list[tuple[int, int]] = []
    wrapped = malicious_clientapp(counting_app(calls), {"name": "ipm", "eps": 0.5},
                                  nodes=[2, 7])
    grid = LocalGrid(wrapped, NUM_NODES)
    partitions = [0, 2, 4, 9]  # node 1 (partition 0) seen before the attacker, 5, 10 not
    list(grid.send_and_receive(announce_sample(train_messages(
        grid, [p + 1 for p in partitions], 1))))
    trained = [p for _, p in calls]
    assert len(trained) == len(set(trained))  # replayed, never trained twice
    assert set(partitions) <= set(trained)
    assert set(trained) == set(range(NUM_NODES)) - {7}  # 7: an unsampled attacker


def test_an_attacked_run_with_half_sampling_trains_as_often_as_a_clean_one() -> None:
    """Through the strategy: after round 1's evaluation every node is known, so from round 2
    on each round trains exactly the 5 sampled partitions, attacked or not."""
    for attack in (None, {"name": "alie", "z": 1.5}):
        calls: list[tuple[int, int]] = []
        server = ServerApp()

        @server.main()
        def main(grid, context):  # type: ignore[no-untyped-def]
            Median(fraction_train=0.5, fraction_evaluate=1.0).start(
                grid=grid, initial_arrays=ArrayRecord([MODEL]), num_rounds=4)

        app = counting_app(calls)
        if attack is not None:
            app = malicious_clientapp(app, attack, nodes=[2, 5, 7])
        run_locally(server, app, NUM_NODES)
        per_round = [sum(1 for r, _ in calls if r == server_round)
                     for server_round in (1, 2, 3, 4)]
        assert per_round[1:] == [5, 5, 5], (attack, per_round)
        assert 5 <= per_round[0] <= NUM_NODES
