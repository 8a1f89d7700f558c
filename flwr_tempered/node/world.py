"""The shared, deterministic world of a run: topology, data partitions, model, start point.

Every participant rebuilds it from the :class:`RunConfig` alone, so nothing but model
digests needs to travel. Built once per process and cached: in simulation one Ray worker
serves many nodes.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch
from torch import nn

from flwr_tempered.data import Dataset, load_dataset, partition
from flwr_tempered.models import build_model, flatten_parameters
from flwr_tempered.topology import AnyTopology, get_topology, topology_factory

from .config import RunConfig


@dataclass(frozen=True, eq=False)
class World:
    """Everything a node needs that is the same for all nodes of a run. The data and the
    model are loaded on first use, so custom training tasks never load them."""

    config: RunConfig
    #: The run's topology; a time-varying one gives each round's graph with
    #: ``topology.at_round(t)`` (so does a static one: itself).
    topology: AnyTopology

    @cached_property
    def dataset(self) -> Dataset:
        """The run's dataset (cached per process by the data layer)."""
        return load_dataset(self.config.dataset, seed=self.config.seed)

    @cached_property
    def partitions(self) -> tuple[np.ndarray, ...]:
        """Training-sample indices of every topology position."""
        return _partitions(self.config, self.topology, self.dataset)

    @cached_property
    def initial_parameters(self) -> torch.Tensor:
        """The flat model every node starts from (seeded)."""
        return flatten_parameters(self.new_model())

    def new_model(self) -> nn.Module:
        """A fresh instance of the run's model architecture (parameters are overwritten
        from flat vectors before use)."""
        return build_model(self.config.model, seed=self.config.seed, **self._model_args())

    def _model_args(self) -> dict[str, object]:
        args = dict(self.config.model_args)
        if self.config.model == "small_cnn":
            channels, size = self.dataset.input_shape[0], self.dataset.input_shape[-1]
            args.setdefault("in_channels", channels)
            args.setdefault("image_size", size)
            args.setdefault("num_classes", self.dataset.num_classes)
        elif self.config.model == "logistic_regression":
            args.setdefault("in_features", int(np.prod(self.dataset.input_shape)))
            args.setdefault("num_classes", self.dataset.num_classes)
        else:
            args.setdefault("num_classes", self.dataset.num_classes)
        return args


def topology_of(config: RunConfig) -> AnyTopology:
    """The run's topology: ``nodes`` and ``byzantine`` fill in the generic constructors'
    ``n`` and ``byzantine`` unless the topology arguments say otherwise."""
    args = dict(config.topology_args)
    accepted = inspect.signature(topology_factory(config.topology)).parameters
    if "n" in accepted:
        args.setdefault("n", config.nodes)
    if "byzantine" in accepted:
        args.setdefault("byzantine", config.byzantine)
    if "seed" in accepted:
        args.setdefault("seed", config.seed)
    topology = get_topology(config.topology, **args)
    return topology


def _partitions(config: RunConfig, topology: AnyTopology, dataset: Dataset
                ) -> tuple[np.ndarray, ...]:
    args = dict(config.partition_args)
    if config.partition == "clique":
        args.setdefault("groups", {k: v for k, v in topology.groups.items() if k != "all"})
    labels = dataset.train_labels.numpy()
    parts = partition(config.partition, labels, topology.n, seed=config.seed, **args)
    return tuple(np.asarray(p, dtype=np.int64) for p in parts)


@lru_cache(maxsize=4)
def _cached_world(config_json: str) -> World:
    config = RunConfig.from_mapping(json.loads(config_json))
    return World(config, topology_of(config))


def build_world(config: RunConfig) -> World:
    """The (cached) world of ``config``."""
    return _cached_world(json.dumps(config.to_dict(), sort_keys=True))
