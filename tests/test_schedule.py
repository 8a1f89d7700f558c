"""The CIFAR-10 training options of the run config (ClippedGossip's "lr x0.1 at given
epochs" and "crop+flip"): validation, conversions, and how the built-in task applies them
across rounds, also when a node is rebuilt from its saved state every round."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import torch
from flwr.app import RecordDict
from torch import Tensor

from flwr_tempered.node import Node, RunConfig, build_world
from flwr_tempered.node.task import SupervisedTask
from flwr_tempered.runtime.state import load_node_state, save_node_state
from flwr_tempered.training import BatchSampler, CropFlip, local_sgd

BASE = RunConfig(topology="ring", topology_args={}, nodes=4, byzantine=0, dataset="digits",
                 model="small_cnn", rule="gossip", attack="none", attack_args={}, rounds=8,
                 local_steps=1, batch_size=16, lr=0.1, ledger=False)
SCHEDULED = replace(BASE, lr_milestones=(2, 4), lr_gamma=0.5)


# ------------------------------------------------------------------ the config
def test_defaults_keep_the_constant_lr_and_no_augmentation() -> None:
    config = RunConfig()
    assert (config.lr_milestones, config.lr_gamma, config.augment) == ((), 0.1, "none")
    assert [config.lr_at(t) for t in (0, 5, 10_000)] == [config.lr] * 3


def test_lr_at_follows_the_milestones() -> None:
    config = RunConfig(lr=0.1, lr_milestones=(80, 120), lr_gamma=0.1)
    expected = {0: 0.1, 79: 0.1, 80: 0.01, 119: 0.01, 120: 0.001, 199: 0.001}
    for round_, lr in expected.items():
        assert config.lr_at(round_) == pytest.approx(lr, rel=1e-12), round_


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr_milestones", (0, 5)), ("lr_milestones", (-3,)), ("lr_milestones", (5, 5)),
        ("lr_milestones", (8, 3)), ("lr_milestones", (2.5,)), ("lr_milestones", (True,)),
        ("lr_milestones", "80,120"), ("lr_milestones", 80),
        ("lr_gamma", 0.0), ("lr_gamma", -0.1), ("lr_gamma", 1.5), ("lr_gamma", float("nan")),
        ("lr_gamma", "0.1"), ("lr_gamma", True),
        ("augment", "cutout"), ("augment", ""), ("augment", None),
    ],
)
def test_bad_schedule_or_augmentation_values_raise_naming_field_and_value(
        field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field) as error:
        RunConfig(**{field: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_a_list_of_milestones_is_stored_as_a_tuple() -> None:
    config = RunConfig(lr_milestones=[80, 120])  # type: ignore[arg-type]
    assert config.lr_milestones == (80, 120)
    assert config == RunConfig(lr_milestones=(80, 120))


def test_new_fields_round_trip_through_dict_json_and_flower_run_config() -> None:
    config = RunConfig(lr_milestones=(80, 120), lr_gamma=0.2, augment="crop_flip")
    flat = config.to_flower()
    assert flat["lr-milestones"] == "[80, 120]"
    assert flat["lr-gamma"] == 0.2 and flat["augment"] == "crop_flip"
    assert all(isinstance(v, int | float | str | bool) for v in flat.values())
    assert RunConfig.from_mapping(flat) == config
    as_dict = config.to_dict()
    assert as_dict["lr_milestones"] == [80, 120]
    assert RunConfig.from_mapping(as_dict) == config
    assert RunConfig.from_mapping(json.loads(json.dumps(as_dict))) == config
    assert RunConfig.from_mapping(RunConfig().to_flower()) == RunConfig()
    assert RunConfig().to_flower()["lr-milestones"] == "[]"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("[80, 120]", (80, 120)), ("[]", ()), ("", ()), ([3, 7], (3, 7)), ((4,), (4,))],
)
def test_from_mapping_accepts_milestones_as_json_string_or_list(value: Any,
                                                                expected: tuple[int, ...]
                                                                ) -> None:
    assert RunConfig.from_mapping({"lr-milestones": value}).lr_milestones == expected


@pytest.mark.parametrize("value", ["[80, ", "{\"a\": 1}", "80", "[120, 80]", 7])
def test_from_mapping_rejects_malformed_milestones(value: Any) -> None:
    with pytest.raises(ValueError, match=r"lr[-_]milestones"):
        RunConfig.from_mapping({"lr-milestones": value})


# ------------------------------------------------------------------ the task
def _reference_step(task: SupervisedTask, params: Tensor, momentum: Tensor, lr: float
                    ) -> Tensor:
    """What ``task.train`` must return with learning rate ``lr``: plain ``local_sgd`` on a
    copy of the task's sampler position (no augmentation in these configs)."""
    sampler = BatchSampler(task.sampler.num_samples, task.sampler.batch_size)
    sampler.load_state_dict(task.sampler.state_dict())
    new_params, _, _ = local_sgd(task.model, params.to(task.device),
                                 momentum.to(task.device), task.images, task.labels,
                                 sampler, replace(task.sgd, lr=lr))
    return new_params.cpu()


def test_supervised_task_trains_each_round_with_the_scheduled_lr() -> None:
    """Milestones (2, 4) with gamma 0.5: rounds 0-1 at 0.1, 2-3 at 0.05, from 4 at 0.025;
    the update itself is the one of that lr, not of the base lr."""
    task = SupervisedTask(build_world(SCHEDULED), 1)
    params = task.initial_parameters()
    momentum = torch.zeros_like(params)
    lrs = []
    for round_ in range(6):
        assert task.rounds_trained == round_
        expected_lr = SCHEDULED.lr_at(round_)
        expected = _reference_step(task, params, momentum, expected_lr)
        if round_ >= 2:
            assert not torch.allclose(expected, _reference_step(task, params, momentum, 0.1))
        params, momentum, metrics = task.train(params, momentum, None)
        torch.testing.assert_close(params, expected)
        lrs.append(metrics["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_without_milestones_the_task_keeps_the_base_lr() -> None:
    task = SupervisedTask(build_world(BASE), 0)
    params, momentum = task.initial_parameters(), torch.zeros(task.initial_parameters().shape)
    for _ in range(3):
        params, momentum, metrics = task.train(params, momentum, None)
        assert metrics["lr"] == pytest.approx(0.1)


def _rebuilt_every_round(config: RunConfig, position: int, rounds: int,
                         global_seed: int = 0) -> tuple[Tensor, list[float]]:
    """Run ``rounds`` rounds of training at ``position`` the way the Flower runtime does:
    a fresh node per round, restored from the records its previous round saved."""
    records = RecordDict()
    lrs = []
    for round_ in range(rounds):
        torch.manual_seed(global_seed + round_)  # the global RNG must not matter
        node = Node(position, build_world(config))
        state = load_node_state(records)
        if state is not None:
            node.load_state(state)
        lrs.append(node.train(round_)["lr"])
        save_node_state(node.save_state(), records)
    return node.state.params.clone(), lrs


def _trained_in_one_piece(config: RunConfig, position: int, rounds: int) -> Tensor:
    node = Node(position, build_world(config))
    for round_ in range(rounds):
        node.train(round_)
    return node.state.params.clone()


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_saved_state_keeps_the_schedule_position_and_the_augmentation_stream(augment: str
                                                                             ) -> None:
    config = replace(SCHEDULED, augment=augment)
    rebuilt, lrs = _rebuilt_every_round(config, 2, rounds=5)
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    torch.testing.assert_close(rebuilt, _trained_in_one_piece(config, 2, rounds=5),
                               rtol=0, atol=0)
    again, _ = _rebuilt_every_round(config, 2, rounds=5, global_seed=1000)
    torch.testing.assert_close(again, rebuilt, rtol=0, atol=0)


def test_a_task_reloaded_midway_matches_one_that_never_stopped() -> None:
    """Two tasks with crop+flip: one trains four rounds, the other two rounds, then its
    state (tensors as numpy arrays, as stored) goes into a fresh task that trains two more.
    Without the augmentation generator or the round count in the state they would differ."""
    config = replace(SCHEDULED, augment="crop_flip", lr_milestones=(3,))
    world = build_world(config)
    straight = SupervisedTask(world, 0)
    params = straight.initial_parameters()
    x, m = params, torch.zeros_like(params)
    for _ in range(4):
        x, m, _ = straight.train(x, m, None)

    first = SupervisedTask(world, 0)
    y, n = params, torch.zeros_like(params)
    for _ in range(2):
        y, n, _ = first.train(y, n, None)
    midway = (y, n)
    state = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in first.state_dict().items()}
    assert state["rounds_trained"] == 2 and "augment_generator" in state
    second = SupervisedTask(world, 0)
    second.load_state_dict(state)
    assert second.rounds_trained == 2 and second.lr == pytest.approx(0.1)
    for _ in range(2):
        y, n, _ = second.train(y, n, None)
    assert second.rounds_trained == 4
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    torch.testing.assert_close(n, m, rtol=0, atol=0)

    for dropped in ("rounds_trained", "augment_generator"):  # either one missing: a different run
        forgetful = SupervisedTask(world, 0)
        forgetful.load_state_dict({k: v for k, v in state.items() if k != dropped})
        z, o = midway
        for _ in range(2):
            z, o, _ = forgetful.train(z, o, None)
        assert not torch.allclose(z, x), dropped


def test_a_state_saved_before_the_schedule_existed_still_loads() -> None:
    """The sampler's keys only (the previous format): the round count starts at 0 and the
    augmentation generator at its seed."""
    config = replace(SCHEDULED, augment="crop_flip")
    world = build_world(config)
    old = BatchSampler(len(world.partitions[1]), config.batch_size, seed=5)
    old.next_batch()
    task = SupervisedTask(world, 1)
    task.rounds_trained = 3
    task.load_state_dict(old.state_dict())
    assert task.rounds_trained == 0
    assert torch.equal(task.sampler.peek_batch(), old.peek_batch())
    assert task.augment is not None
    reference = CropFlip(seed=task.augment.seed)
    images = task.images[:4].cpu()
    assert torch.equal(task.augment(images, task.labels[:4].cpu())[0],
                       reference(images, task.labels[:4].cpu())[0])


def test_augmentation_changes_training_and_differs_between_nodes() -> None:
    plain = _trained_in_one_piece(BASE, 1, rounds=2)
    augmented = _trained_in_one_piece(replace(BASE, augment="crop_flip"), 1, rounds=2)
    assert not torch.allclose(plain, augmented)
    world = build_world(replace(BASE, augment="crop_flip"))
    seeds = {SupervisedTask(world, p).augment.seed for p in range(4)}  # type: ignore[union-attr]
    sampler_seeds = {SupervisedTask(world, p).sampler.seed for p in range(4)}
    assert len(seeds) == 4 and not seeds & sampler_seeds
    assert SupervisedTask(build_world(BASE), 1).augment is None
    assert "augment_generator" not in SupervisedTask(build_world(BASE), 1).state_dict()


def test_the_attack_transform_sees_the_augmented_batch() -> None:
    """Augmentation first, then the data-poisoning hook; the model trains on the hook's
    output."""
    task = SupervisedTask(build_world(replace(BASE, augment="crop_flip")), 3)
    assert task.augment is not None
    reference = CropFlip(seed=0)
    reference.load_state_dict(task.augment.state_dict())
    batch = task.sampler.peek_batch().to(task.device)
    raw = task.images[batch]
    expected, _ = reference(raw, task.labels[batch])
    assert not torch.equal(expected, raw)
    seen: list[Tensor] = []

    def poison(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        seen.append(images.clone())
        return images, (labels + 1) % 10

    params = task.initial_parameters()
    task.train(params, torch.zeros_like(params), poison)
    assert len(seen) == 1
    assert torch.equal(seen[0], expected)


@pytest.mark.parametrize(("attack", "args"), [("label_flip", {}), ("backdoor", {})])
def test_a_data_poisoning_node_augments_then_poisons_across_saved_rounds(
        attack: str, args: dict[str, Any]) -> None:
    """A Byzantine node with a data-poisoning attack and crop+flip trains through the
    runtime's save/load cycle to the same model as without interruption (the attack's own
    generator, the sampler, the augmenter and the round count all persist)."""
    config = replace(SCHEDULED, byzantine=1, attack=attack, attack_args=args,
                     augment="crop_flip")
    attacker = next(iter(build_world(config).topology.byzantine))
    rebuilt, lrs = _rebuilt_every_round(config, attacker, rounds=4)
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])
    torch.testing.assert_close(rebuilt, _trained_in_one_piece(config, attacker, rounds=4),
                               rtol=0, atol=0)
    clean = _trained_in_one_piece(replace(config, attack="none", attack_args={}), attacker, 4)
    assert not torch.allclose(rebuilt, clean)
