"""The attack-client wrapper for ordinary Flower apps, and the in-process LocalGrid.

A toy ClientApp whose "training" is hand-computable (global model + partition id + 1 on
every coordinate) makes every crafted vector checkable by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
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
from torch.utils.data import DataLoader, TensorDataset

from flwr_tempered.attacks import LabelFlip, alie_default_z
from flwr_tempered.clients import (
    malicious_clientapp,
    malicious_partitions,
    poison_batch,
    poisoned_dataloaders,
    smallest_attacking_fraction,
)
from flwr_tempered.runtime.local_grid import LocalGrid, run_locally
from flwr_tempered.strategies import Median

NUM_NODES = 6
DIM = 5


def toy_app() -> ClientApp:
    """Trains by adding ``partition-id + 1`` to every coordinate of the global model."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        shift = float(context.node_config["partition-id"]) + 1.0
        trained = [a + shift for a in arrays]
        metrics = MetricRecord({"num-examples": 10 + int(shift), "shift": shift})
        return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 1, "partition": context.node_config[
            "partition-id"]})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def send(app: ClientApp, global_model: np.ndarray, partition: int,
         kind: str = MessageType.TRAIN, server_round: int = 1) -> Message:
    """Deliver one message to ``partition`` through a LocalGrid and return the reply."""
    grid = LocalGrid(app, NUM_NODES)
    content = RecordDict({"arrays": ArrayRecord([global_model]),
                          "config": ConfigRecord({"server-round": server_round})})
    message = grid.create_message(content, kind, partition + 1, group_id="1")
    (reply,) = grid.send_and_receive([message])
    return reply


def model_of(reply: Message) -> np.ndarray:
    assert not reply.has_error(), reply.error.reason
    return reply.content["arrays"].to_numpy_ndarrays()[0]


GLOBAL = np.arange(DIM, dtype=np.float32)


# ------------------------------------------------------------------ who is malicious
def test_fraction_picks_the_rounded_share_of_partitions_the_same_way_everywhere() -> None:
    chosen = malicious_partitions(20, fraction=0.2, seed=3)
    assert len(chosen) == 4 and all(0 <= p < 20 for p in chosen)
    assert malicious_partitions(20, fraction=0.2, seed=3) == chosen
    assert any(malicious_partitions(20, fraction=0.2, seed=s) != chosen for s in range(4, 9))
    assert malicious_partitions(20, nodes=[1, 5]) == {1, 5}


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"nodes": [1], "fraction": 0.1}, "exactly one"),
    ({"fraction": 1.0}, "fraction"),
    ({"nodes": [7]}, "outside"),
])
def test_bad_malicious_choices_are_refused_with_a_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        malicious_partitions(6, **kwargs)


def test_bad_wrapper_arguments_fail_when_wrapping() -> None:
    with pytest.raises(ValueError, match=r"unknown|valid"):
        malicious_clientapp(toy_app(), "no_such_attack", fraction=0.2)
    with pytest.raises(ValueError, match="z"):
        malicious_clientapp(toy_app(), {"name": "alie", "zz": 1}, fraction=0.2)
    with pytest.raises(ValueError, match="view"):
        malicious_clientapp(toy_app(), "alie", fraction=0.2, view="psychic")
    with pytest.raises(ValueError, match="ClientApp"):
        malicious_clientapp(object(), "alie", fraction=0.2)  # type: ignore[arg-type]


# -------------------------------------------------------------------- honest nodes
def test_honest_nodes_reply_exactly_as_the_wrapped_app() -> None:
    wrapped = malicious_clientapp(toy_app(), "sign_flip", nodes=[0])
    for partition in range(1, NUM_NODES):
        honest = model_of(send(toy_app(), GLOBAL, partition))
        assert np.array_equal(model_of(send(wrapped, GLOBAL, partition)), honest)


def test_evaluation_is_passed_through_on_malicious_nodes() -> None:
    wrapped = malicious_clientapp(toy_app(), "sign_flip", nodes=[2])
    reply = send(wrapped, GLOBAL, 2, kind=MessageType.EVALUATE)
    assert reply.content["metrics"]["partition"] == 2


# --------------------------------------------------------------- model poisoning
def test_sign_flip_sends_the_global_model_minus_the_scaled_honest_update() -> None:
    wrapped = malicious_clientapp(toy_app(), {"name": "sign_flip", "scale": 2.0}, nodes=[3])
    reply = send(wrapped, GLOBAL, 3)
    # honest update of partition 3 is +4 on every coordinate
    assert np.allclose(model_of(reply), GLOBAL - 2.0 * 4.0)
    assert reply.content["metrics"]["num-examples"] == 14  # metrics look ordinary


def test_omniscient_alie_uses_every_honest_partitions_model() -> None:
    malicious = [0, 1]
    wrapped = malicious_clientapp(toy_app(), {"name": "alie", "z": 1.5}, nodes=malicious)
    honest_shifts = torch.tensor([p + 1.0 for p in range(NUM_NODES) if p not in malicious])
    expected = GLOBAL + float(honest_shifts.mean() - 1.5 * honest_shifts.std(unbiased=False))
    for partition in malicious:
        assert np.allclose(model_of(send(wrapped, GLOBAL, partition)), expected, atol=1e-5)


def test_colluders_view_uses_only_the_malicious_partitions_models() -> None:
    malicious = [0, 4]
    wrapped = malicious_clientapp(toy_app(), {"name": "alie", "z": 1.0}, nodes=malicious,
                                  view="colluders")
    shifts = torch.tensor([1.0, 5.0])
    expected = GLOBAL + float(shifts.mean() - shifts.std(unbiased=False))
    assert np.allclose(model_of(send(wrapped, GLOBAL, 4)), expected, atol=1e-5)


def test_ipm_sends_minus_eps_times_the_honest_mean() -> None:
    wrapped = malicious_clientapp(toy_app(), {"name": "ipm", "eps": 0.5}, nodes=[5])
    honest_mean = GLOBAL + np.mean([p + 1.0 for p in range(5)])
    assert np.allclose(model_of(send(wrapped, GLOBAL, 5)), -0.5 * honest_mean, atol=1e-5)


def test_optimal_alie_searches_z_against_the_servers_rule() -> None:
    # Honest shifts {3, 4, 5, 6}: mu = 4.5, sigma = sqrt(1.25). The server takes the median
    # of {3, 4, 5, 6, v, v} (mean of the 3rd and 4th values): 3.5 once v <= 3, i.e.
    # z >= 1.5 / sqrt(1.25) = 1.34, the most it can be pulled (damage 1 per coordinate).
    # The grid 0, 1, 2, ... first gets there at z = 2; the golden steps only tie it.
    wrapped = malicious_clientapp(toy_app(), "optimal_alie", nodes=[0, 1], rule="median")
    expected = GLOBAL + 4.5 - 2.0 * np.sqrt(1.25)
    assert np.allclose(model_of(send(wrapped, GLOBAL, 0)), expected, atol=1e-5)
    # against the mean (FedAvg) the largest z of the range wins
    averaged = malicious_clientapp(toy_app(), {"name": "optimal_alie", "high": 5.0},
                                   nodes=[0, 1], rule="mean")
    assert np.allclose(model_of(send(averaged, GLOBAL, 1)), GLOBAL + 4.5 - 5.0 * np.sqrt(1.25),
                       atol=1e-5)


def test_attacks_that_run_the_servers_rule_need_it() -> None:
    with pytest.raises(ValueError, match=r"optimal_ipm.*rule="):
        malicious_clientapp(toy_app(), "optimal_ipm", nodes=[0])
    with pytest.raises(ValueError, match="unknown rule"):
        malicious_clientapp(toy_app(), "optimal_ipm", nodes=[0], rule="no_such_rule")


def test_mimic_copies_the_honest_client_of_largest_deviation() -> None:
    # Honest partitions 0, 3, 4, 5 shift by 1, 4, 5, 6 (mean 4): the direction of maximal
    # variance is the all-ones one, and partition 0 (deviation -3) lies farthest along it.
    wrapped = malicious_clientapp(toy_app(), "mimic", nodes=[1, 2])
    for partition in (1, 2):
        assert np.array_equal(model_of(send(wrapped, GLOBAL, partition)), GLOBAL + 1.0)
    by_index = malicious_clientapp(toy_app(), {"name": "mimic", "choice": "index", "index": 2},
                                   nodes=[1, 2])
    assert np.array_equal(model_of(send(by_index, GLOBAL, 1)), GLOBAL + 5.0)


def test_gaussian_noise_differs_between_attackers_and_repeats_with_the_seed() -> None:
    wrapped = malicious_clientapp(toy_app(), {"name": "gaussian", "sigma": 3.0}, nodes=[1, 2])
    one, two = model_of(send(wrapped, GLOBAL, 1)), model_of(send(wrapped, GLOBAL, 2))
    assert not np.allclose(one, two)
    assert np.array_equal(one, model_of(send(wrapped, GLOBAL, 1)))
    assert not np.allclose(one, model_of(send(wrapped, GLOBAL, 1, server_round=2)))


def test_a_node_config_without_partition_ids_is_an_error_reply_naming_it() -> None:
    wrapped = malicious_clientapp(toy_app(), "sign_flip", nodes=[0])
    grid = LocalGrid(wrapped, 2)
    grid.contexts[1].node_config.clear()
    content = RecordDict({"arrays": ArrayRecord([GLOBAL]), "config": ConfigRecord({})})
    (reply,) = grid.send_and_receive([grid.create_message(content, MessageType.TRAIN, 1, "1")])
    assert reply.has_error() and "partition-id" in reply.error.reason


# ---------------------------------------------------------------- data poisoning
def data_app(batches: list[object]) -> ClientApp:
    """Iterates a DataLoader of labels 0..9 and reports the labels it saw."""
    app = ClientApp()
    dataset = TensorDataset(torch.zeros(10, 1, 4, 4), torch.arange(10))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        seen = [batch for batch in DataLoader(dataset, batch_size=5)]
        batches.append(seen)
        return Message(RecordDict({"arrays": msg.content["arrays"],
                                   "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)

    return app


def test_label_flip_poisons_the_batches_of_malicious_nodes_only() -> None:
    seen: list[object] = []
    wrapped = malicious_clientapp(data_app(seen), "label_flip", nodes=[1])
    send(wrapped, GLOBAL, 1)
    send(wrapped, GLOBAL, 0)
    flipped = torch.cat([labels for _, labels in seen[0]])  # type: ignore[attr-defined]
    clean = torch.cat([labels for _, labels in seen[1]])  # type: ignore[attr-defined]
    assert flipped.tolist() == [9 - y for y in range(10)]
    assert clean.tolist() == list(range(10))


def test_backdoor_stamps_the_trigger_and_relabels() -> None:
    seen: list[object] = []
    wrapped = malicious_clientapp(
        data_app(seen), {"name": "backdoor", "fraction": 1.0, "target_label": 7,
                         "value": 1.0}, nodes=[0])
    send(wrapped, GLOBAL, 0)
    images, labels = seen[0][0]  # type: ignore[index]
    assert labels.tolist() == [7] * 5
    assert torch.all(images[:, :, -3:, -3:] == 1.0) and torch.all(images[:, :, 0, 0] == 0.0)


def test_mapping_batches_are_poisoned_and_unknown_batches_refused() -> None:
    attack = LabelFlip()
    batch = {"img": torch.zeros(2, 1, 3, 3), "label": torch.tensor([0, 3]), "id": [5, 6]}
    poisoned = poison_batch(attack, batch)
    assert poisoned["label"].tolist() == [9, 6] and poisoned["id"] == [5, 6]
    with pytest.raises(ValueError, match="keys"):
        poison_batch(attack, {"pixels": torch.zeros(1, 1, 2, 2), "label": torch.tensor([1])})
    with pytest.raises(ValueError, match="str"):
        poison_batch(attack, "not a batch")


def test_the_dataloader_is_restored_after_the_poisoned_call() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])))
    with poisoned_dataloaders(LabelFlip()):
        inside = [labels.item() for _, labels in loader]
    after = [labels.item() for _, labels in loader]
    assert (inside, after) == ([9, 8], [0, 1])


# ---------------------------------------------------------------------- LocalGrid
def test_local_grid_turns_a_raising_clientapp_into_an_error_reply_and_goes_on() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("disk on fire")
        context.state["calls"] = MetricRecord({"n": 1 + int(
            context.state["calls"]["n"] if "calls" in context.state else 0)})
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    grid = LocalGrid(app, 3)
    for _ in range(2):
        messages = [grid.create_message(RecordDict(), MessageType.TRAIN, node, "1")
                    for node in grid.get_node_ids()]
        replies = list(grid.send_and_receive(messages))
    assert [r.has_error() for r in replies] == [False, True, False]
    assert "disk on fire" in replies[1].error.reason
    assert grid.contexts[1].state["calls"]["n"] == 2  # state persists across rounds


def test_run_locally_drives_a_server_app_with_a_robust_strategy() -> None:
    server = ServerApp()
    results: dict[str, object] = {}

    @server.main()
    def main(grid, context):  # type: ignore[no-untyped-def]
        strategy = Median(fraction_evaluate=0.0)
        results["final"] = strategy.start(grid=grid, initial_arrays=ArrayRecord([GLOBAL]),
                                          num_rounds=2)

    attacked = malicious_clientapp(toy_app(), {"name": "gaussian", "sigma": 100.0},
                                   nodes=[0])
    run_locally(server, attacked, 5)
    final = results["final"].arrays.to_numpy_ndarrays()[0]  # type: ignore[attr-defined]
    # honest shifts 2..5 and one huge outlier: the median of 5 moves by 3.5 or 4 per round
    assert np.all(np.abs(final - GLOBAL) <= 8.0) and np.all(final - GLOBAL >= 6.0)


def test_alie_default_z_is_used_when_none_given() -> None:
    wrapped = malicious_clientapp(toy_app(), "alie", nodes=[0, 1])
    shifts = torch.tensor([p + 1.0 for p in range(2, NUM_NODES)])
    z = alie_default_z(NUM_NODES, 2)
    expected = GLOBAL + float(shifts.mean() - z * shifts.std(unbiased=False))
    assert np.allclose(model_of(send(wrapped, GLOBAL, 0)), expected, atol=1e-5)


def test_attacks_that_ignore_targets_models_do_not_train_the_honest_partitions() -> None:
    calls: list[int] = []
    inner = toy_app()
    counting = ClientApp()

    @counting.train()
    def train(msg: Message, context: Context) -> Message:
        calls.append(int(context.node_config["partition-id"]))
        return inner(msg, context)

    send(malicious_clientapp(counting, "sign_flip", nodes=[2]), GLOBAL, 2)
    assert calls == [2]  # only its own honest training
    calls.clear()
    send(malicious_clientapp(counting, "ipm", nodes=[2]), GLOBAL, 2)
    assert sorted(calls) == list(range(NUM_NODES))  # plus every honest partition


@pytest.mark.parametrize("name", ["bit_flip", "gaussian", "sign_flip"])
def test_attacks_flagged_as_ignoring_targets_models_really_ignore_them(name: str) -> None:
    from flwr_tempered.attacks import AttackView, TargetView, get_attack

    assert get_attack(name).uses_targets_models is False

    def crafted(scale: float) -> torch.Tensor:
        target = TargetView(node=0, model=scale * torch.ones(3),
                            honest_neighbors=scale * torch.ones(2, 3),
                            honest_weights=torch.full((2,), 0.25), byzantine_weight=0.25,
                            n_byzantine=1, self_weight=0.25, previous=torch.zeros(3))
        view = AttackView(own=torch.tensor([1.0, 2.0, 3.0]), targets=(target,),
                          own_previous=torch.zeros(3))
        return get_attack(name)(view)

    assert torch.equal(crafted(1.0), crafted(50.0))


def test_two_apps_in_one_process_do_not_share_their_honest_view() -> None:
    """The omniscient view is cached per process; a second app on the same global model
    and round must still see its own honest models."""
    def shifted_app(factor: float) -> ClientApp:
        app = ClientApp()

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            arrays = msg.content["arrays"].to_numpy_ndarrays()
            shift = factor * (float(context.node_config["partition-id"]) + 1.0)
            return Message(RecordDict({"arrays": ArrayRecord([a + shift for a in arrays]),
                                       "metrics": MetricRecord({"num-examples": 1})}),
                           reply_to=msg)

        return app

    results = []
    for factor in (1.0, 3.0):
        wrapped = malicious_clientapp(shifted_app(factor), {"name": "ipm", "eps": 1.0},
                                      nodes=[0])
        results.append(model_of(send(wrapped, GLOBAL, 0)))
    honest_mean_shift = np.mean([p + 1.0 for p in range(1, NUM_NODES)])
    assert np.allclose(results[0], -(GLOBAL + honest_mean_shift), atol=1e-5)
    assert np.allclose(results[1], -(GLOBAL + 3.0 * honest_mean_shift), atol=1e-5)


# --------------------------------------------------------- who attacks, in the log
class _Collected(logging.Handler):
    """Keeps every record it is handed."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def flower_log() -> Iterator[list[logging.LogRecord]]:
    """The records Flower's logger ("flwr") emits inside the block."""
    logger = logging.getLogger("flwr")
    handler, level = _Collected(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def train_all(grid: LocalGrid, server_round: int, model: np.ndarray = GLOBAL) -> list[Message]:
    """One round: the same train message to every node of ``grid``, replies by node."""
    content = RecordDict({"arrays": ArrayRecord([model]),
                          "config": ConfigRecord({"server-round": server_round})})
    messages = [grid.create_message(content, MessageType.TRAIN, node, str(server_round))
                for node in grid.get_node_ids()]
    return list(grid.send_and_receive(messages))


def test_fraction_is_rounded_half_up() -> None:
    assert len(malicious_partitions(10, fraction=0.05)) == 1
    assert len(malicious_partitions(10, fraction=0.25)) == 3  # round() would give 2
    assert len(malicious_partitions(10, fraction=0.15)) == 2  # 0.15 * 10 < 1.5 in floats
    assert len(malicious_partitions(10, fraction=0.04)) == 0
    for count in (1, 2, 3, 7, 10, 30):
        smallest = smallest_attacking_fraction(count)
        assert len(malicious_partitions(count, fraction=smallest)) == 1
        assert len(malicious_partitions(count, fraction=smallest - 1e-4)) == 0


@pytest.mark.parametrize("fraction, count, smallest", [(0.2, 2, "0.25"), (0.04, 10, "0.05")])
def test_a_fraction_giving_no_attacker_warns_once_with_the_smallest_that_gives_one(
        fraction: float, count: int, smallest: str) -> None:
    grid = LocalGrid(malicious_clientapp(toy_app(), "alie", fraction=fraction), count)
    with flower_log() as records:
        for server_round in (1, 2):
            replies = train_all(grid, server_round)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    for part in (f"fraction={fraction}", f"num-partitions={count}", smallest, "alie"):
        assert part in warnings[0]
    assert [model_of(r).tolist() for r in replies] == [(GLOBAL + p + 1).tolist()
                                                       for p in range(count)]


def test_the_attack_and_its_partitions_are_logged_once_per_run() -> None:
    wrapped = malicious_clientapp(toy_app(), {"name": "alie", "z": 1.5}, nodes=[4, 1])
    with flower_log() as records:
        grid = LocalGrid(wrapped, NUM_NODES, run_id=7)
        for server_round in (1, 2):
            train_all(grid, server_round)
        first_run = [r.getMessage() for r in records]
        train_all(LocalGrid(wrapped, NUM_NODES, run_id=8), 1)
    assert len(first_run) == 1 and records[0].levelno == logging.INFO
    assert "z=1.5" in first_run[0] and "[1, 4]" in first_run[0]
    assert "ALIE" in first_run[0] and f"num-partitions={NUM_NODES}" in first_run[0]
    assert len(records) == 2  # a new run is announced again


# -------------------------------------------- each partition trains once per round
def noisy_app(calls: list[tuple[int, int]], stateful: bool = False) -> ClientApp:
    """Adds ``partition-id + 1`` plus fresh (unseeded) noise, so two trainings of one
    partition never agree; records ``(round, partition)`` per call; with ``stateful``,
    counts its calls in ``context.state``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        calls.append((int(msg.content["config"]["server-round"]), partition))
        if stateful:
            before = context.state["calls"]["n"] if "calls" in context.state else 0
            context.state["calls"] = MetricRecord({"n": int(before) + 1})  # type: ignore
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        noise = np.random.default_rng().normal(size=arrays[0].shape).astype(np.float32)
        trained = [a + partition + 1.0 + noise for a in arrays]
        return Message(RecordDict({"arrays": ArrayRecord(trained),
                                   "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    return app


def test_each_partition_trains_once_per_round_and_attackers_see_what_is_sent() -> None:
    calls: list[tuple[int, int]] = []
    attackers = [2, 4]  # honest nodes train before, between and after them
    wrapped = malicious_clientapp(noisy_app(calls), {"name": "ipm", "eps": 0.5},
                                  nodes=attackers)
    grid = LocalGrid(wrapped, NUM_NODES)
    for server_round in (1, 2):
        replies = train_all(grid, server_round, GLOBAL + server_round)
        honest_mean = np.mean([model_of(replies[p]) for p in range(NUM_NODES)
                               if p not in attackers], axis=0)
        for partition in attackers:  # exactly the honest models the server receives
            assert np.allclose(model_of(replies[partition]), -0.5 * honest_mean, atol=1e-5)
    assert sorted(calls) == [(r, p) for r in (1, 2) for p in range(NUM_NODES)]


@pytest.mark.parametrize("why", ["stateful app", "node config differs"])
def test_a_node_whose_training_could_differ_trains_itself(why: str) -> None:
    calls: list[tuple[int, int]] = []
    wrapped = malicious_clientapp(noisy_app(calls, stateful=why == "stateful app"),
                                  {"name": "ipm", "eps": 1.0}, nodes=[0])
    grid = LocalGrid(wrapped, 3)
    if why == "node config differs":
        grid.contexts[3].node_config["data-path"] = "/data/2"
    replies = train_all(grid, 1)
    retrained = [1, 2] if why == "stateful app" else [2]
    assert sorted(calls) == sorted([(1, 0), (1, 1), (1, 2), *[(1, p) for p in retrained]])
    if why == "stateful app":  # each real node's state saw one call
        assert [grid.contexts[n].state["calls"]["n"] for n in (1, 2, 3)] == [1, 1, 1]
    else:  # the replayed node sent exactly what the attacker saw, the other did not
        seen = -model_of(replies[0])
        assert not np.allclose(seen, (model_of(replies[1]) + model_of(replies[2])) / 2)
