"""A participant's training code behind one small protocol, so that any model, data and
training loop can become a decentralized node without touching transport code.

:class:`SupervisedTask` is the built-in task (the run config's dataset, partition and
model, local SGD with heavy-ball momentum as in the reproduction spec §1).
:class:`FunctionTask` wraps a user's own functions: a model builder, a train function and
an evaluate function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from flwr_tempered.models import default_device, flatten_parameters, load_flat_parameters
from flwr_tempered.training import (
    BatchSampler,
    BatchTransform,
    CropFlip,
    SGDConfig,
    evaluate,
    local_sgd,
    loss_on_batch,
)

if TYPE_CHECKING:
    from .world import World


class TrainingTask(Protocol):
    """What a node needs from the training code of one participant."""

    def initial_parameters(self) -> Tensor:
        """The flat model every node starts from (the same for all nodes of a run)."""
        ...

    def train(self, params: Tensor, momentum: Tensor, transform: BatchTransform | None
              ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Local training from ``params``; returns new params, new momentum, metrics.
        ``transform`` poisons batches when the node is a data-poisoning attacker."""
        ...

    def evaluate(self, params: Tensor) -> dict[str, float]:
        """Test metrics of ``params``; must include ``"accuracy"``."""
        ...

    def loss(self, params: Tensor) -> float:
        """Loss of ``params`` on the node's current local batch (MOZI's check)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What the task keeps between rounds (e.g. its batch sampler)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


#: Added to a node's batch-sampler seed to seed its augmentation generator, so the two
#: streams differ (distinct from every sampler seed while ``seed * 100_003 + position``
#: stays below 2**32).
AUGMENT_SEED_OFFSET = 2**32


class SupervisedTask:
    """The run config's dataset partition, model and local SGD with momentum.

    Learning-rate schedule: the task counts the rounds it has trained in
    (``rounds_trained``, kept in :meth:`state_dict` with the batch sampler, so it survives
    the node being rebuilt from its saved state every round) and trains round ``t`` with
    ``config.lr_at(t)``. Every node trains exactly once per round from round 0, so the
    count equals the round index of :meth:`Node.train <flwr_tempered.node.Node.train>`; a
    node whose handler failed in a round (an injected ``raise`` fault) saved no state
    then, and its schedule counts only the rounds it really trained.

    Augmentation (``config.augment == "crop_flip"``): every training batch goes through
    :class:`~flwr_tempered.training.CropFlip` with the node's own generator (persisted in
    :meth:`state_dict`) *before* the data-poisoning ``transform`` of an attacker: the
    attacker poisons the batch the model is trained on, so e.g. a backdoor trigger is
    stamped where it will be at test time instead of being cropped off or mirrored.
    Evaluation and MOZI's loss check use the raw images.
    """

    def __init__(self, world: World, position: int) -> None:
        config = world.config
        self.world = world
        self.sgd = SGDConfig(lr=config.lr, momentum=config.momentum,
                             batch_size=config.batch_size, local_steps=config.local_steps)
        indices = torch.from_numpy(world.partitions[position])
        #: ``cuda`` when available: data and model live there, node state stays on CPU.
        self.device = default_device()
        self.images = world.dataset.train_images[indices].to(self.device)
        self.labels = world.dataset.train_labels[indices].to(self.device)
        self.model = world.new_model().to(self.device)
        seed = config.seed * 100_003 + position
        self.sampler = BatchSampler(len(indices), config.batch_size, seed=seed)
        self.augment: CropFlip | None = (
            CropFlip(seed=seed + AUGMENT_SEED_OFFSET) if config.augment == "crop_flip" else None
        )
        #: Rounds trained so far: the index of the next round (the schedule's position).
        self.rounds_trained = 0
        self._test: tuple[Tensor, Tensor] | None = None

    def initial_parameters(self) -> Tensor:
        return self.world.initial_parameters.clone()

    @property
    def lr(self) -> float:
        """The learning rate the next call of :meth:`train` uses."""
        return self.world.config.lr_at(self.rounds_trained)

    def _batch_transform(self, transform: BatchTransform | None) -> BatchTransform | None:
        """The augmentation, then the attacker's ``transform`` (either may be absent)."""
        augment = self.augment
        if augment is None:
            return transform
        if transform is None:
            return augment

        def augment_then_poison(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
            return transform(*augment(images, labels))

        return augment_then_poison

    def train(self, params: Tensor, momentum: Tensor, transform: BatchTransform | None
              ) -> tuple[Tensor, Tensor, dict[str, float]]:
        home = params.device
        lr = self.lr
        new_params, new_momentum, loss = local_sgd(
            self.model, params.to(self.device), momentum.to(self.device), self.images,
            self.labels, self.sampler, replace(self.sgd, lr=lr),
            transform=self._batch_transform(transform),
        )
        self.rounds_trained += 1
        return new_params.to(home), new_momentum.to(home), {"train_loss": float(loss), "lr": lr}

    def evaluate(self, params: Tensor) -> dict[str, float]:
        images, labels = self._test_set()
        return evaluate(self.model, params.to(self.device), images, labels)

    def _test_set(self) -> tuple[Tensor, Tensor]:
        if self._test is None:
            dataset = self.world.dataset
            self._test = (dataset.test_images.to(self.device),
                          dataset.test_labels.to(self.device))
        return self._test

    def loss(self, params: Tensor) -> float:
        batch = self.sampler.peek_batch().to(self.device)
        return loss_on_batch(self.model, params.to(self.device), self.images[batch],
                             self.labels[batch])

    def state_dict(self) -> dict[str, Any]:
        """One flat dict (ints and CPU tensors, as the runtime stores it): the batch
        sampler's state, ``rounds_trained`` and, when augmenting, ``augment_seed`` and
        ``augment_generator``."""
        state = self.sampler.state_dict()
        state["rounds_trained"] = self.rounds_trained
        if self.augment is not None:
            augment = self.augment.state_dict()
            state["augment_seed"] = augment["seed"]
            state["augment_generator"] = augment["generator"]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`. States saved before the schedule and augmentation
        existed (the sampler's keys only) still load: ``rounds_trained`` is then 0 and the
        augmentation generator keeps its seeded start."""
        if not state:
            return
        self.sampler.load_state_dict(state)
        self.rounds_trained = int(state.get("rounds_trained", 0))
        if self.augment is not None and "augment_generator" in state:
            self.augment.load_state_dict({"seed": state.get("augment_seed", self.augment.seed),
                                          "generator": state["augment_generator"]})


#: ``train_fn(model, partition_id, transform) -> metrics``: trains ``model`` in place.
TrainFunction = Callable[[nn.Module, int, BatchTransform | None], Mapping[str, float]]
#: ``evaluate_fn(model, partition_id) -> metrics`` with at least ``"accuracy"``.
EvaluateFunction = Callable[[nn.Module, int], Mapping[str, float]]


class FunctionTask:
    """A user's own training code as a node: ``model_fn()`` builds the model (called
    under the run's seed so every node starts from the same parameters), ``train_fn``
    trains it in place with the user's own loop and optimizer, ``evaluate_fn`` tests it.

    Heavy-ball momentum is the user's business here: the flat momentum the node keeps is
    passed through unchanged.
    """

    def __init__(self, model_fn: Callable[[], nn.Module], train_fn: TrainFunction,
                 evaluate_fn: EvaluateFunction, partition_id: int, seed: int = 0) -> None:
        self.model_fn = model_fn
        self.train_fn = train_fn
        self.evaluate_fn = evaluate_fn
        self.partition_id = partition_id
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = model_fn()

    def initial_parameters(self) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return flatten_parameters(self.model_fn())

    def train(self, params: Tensor, momentum: Tensor, transform: BatchTransform | None
              ) -> tuple[Tensor, Tensor, dict[str, float]]:
        load_flat_parameters(self.model, params)
        metrics = self.train_fn(self.model, self.partition_id, transform)
        return flatten_parameters(self.model), momentum, {k: float(v) for k, v in metrics.items()}

    def evaluate(self, params: Tensor) -> dict[str, float]:
        load_flat_parameters(self.model, params)
        return {k: float(v) for k, v in self.evaluate_fn(self.model, self.partition_id).items()}

    def loss(self, params: Tensor) -> float:
        metrics = self.evaluate(params)
        return float(metrics.get("loss", 1.0 - metrics["accuracy"]))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: the user's functions keep their own state."""


#: Builds the task of the node at a topology position (for custom training code).
TaskFactory = Callable[["World", int], TrainingTask]
