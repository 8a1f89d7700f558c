"""Every node's mini-batch stream at once, equal to each node's own
:class:`~flwr_tempered.training.BatchSampler`.

Each node keeps its own seeded ``torch.Generator`` and draws a fresh permutation of its
shard when an epoch ends, exactly as its :class:`BatchSampler` would, so a node's batches
do not depend on the engine. The per-step work is batched: the current permutations sit
in one padded ``[N, S]`` tensor and a step's batches are one gather. Only epoch ends touch
the generators, node by node (once per epoch, not per step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flwr_tempered.training import BatchSampler


class StackedSamplers:
    """The batch samplers of ``N`` nodes with shard sizes ``sizes`` and seeds ``seeds``.

    :meth:`next_batches` returns ``[N, B]`` indices into each node's shard and a
    ``[N, B]`` mask (a batch is shorter at an epoch's end, or when a shard is smaller than
    ``B``; padded entries point at index 0 and are masked out).
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seeds: Sequence[int]) -> None:
        if len(sizes) != len(seeds):
            raise ValueError(f"StackedSamplers: {len(sizes)} sizes but {len(seeds)} seeds")
        if any(s < 1 for s in sizes):
            empty = [i for i, s in enumerate(sizes) if s < 1]
            raise ValueError(f"StackedSamplers: nodes {empty} have no training samples")
        self.batch_size = int(batch_size)
        self.sizes = torch.tensor([int(s) for s in sizes], dtype=torch.int64)
        self.seeds = [int(s) for s in seeds]
        self.generators = []
        width = int(self.sizes.max())
        self.orders = torch.zeros(len(sizes), width, dtype=torch.int64)
        for node, (size, seed) in enumerate(zip(sizes, seeds, strict=True)):
            generator = torch.Generator(device="cpu")
            generator.manual_seed(int(seed))
            self.generators.append(generator)
            self.orders[node, :size] = torch.randperm(int(size), generator=generator)
        self.positions = torch.zeros(len(sizes), dtype=torch.int64)
        self.epochs = torch.zeros(len(sizes), dtype=torch.int64)
        self._offsets = torch.arange(self.batch_size, dtype=torch.int64)

    @property
    def num_nodes(self) -> int:
        """``N``."""
        return int(self.sizes.shape[0])

    def peek_batches(self) -> tuple[Tensor, Tensor]:
        """The batches :meth:`next_batches` returns next (CPU ``[N, B]`` indices and mask),
        without advancing."""
        wanted = self.positions[:, None] + self._offsets                     # [N, B]
        valid = wanted < self.sizes[:, None]
        indices = self.orders.gather(1, torch.where(valid, wanted, torch.zeros_like(wanted)))
        return torch.where(valid, indices, torch.zeros_like(indices)), valid

    def next_batches(self, nodes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The next batch of every node (CPU tensors) and advance the streams of ``nodes``
        (a bool mask ``[N]``; default all): nodes that do not train this step keep their
        position, as a node that skipped a round keeps its sampler."""
        indices, valid = self.peek_batches()
        advance = valid.sum(dim=1)
        if nodes is not None:
            advance = torch.where(nodes.cpu(), advance, torch.zeros_like(advance))
        self.positions += advance
        for node in (self.positions >= self.sizes).nonzero().flatten().tolist():
            size = int(self.sizes[node])
            self.orders[node, :size] = torch.randperm(size, generator=self.generators[node])
            self.positions[node] = 0
            self.epochs[node] += 1
        return indices, valid

    def sampler_state(self, node: int) -> dict[str, object]:
        """Node ``node``'s stream as a :class:`BatchSampler` state dict, so the per-node
        engine can resume it."""
        size = int(self.sizes[node])
        return {"num_samples": size, "batch_size": self.batch_size, "seed": self.seeds[node],
                "epoch": int(self.epochs[node]), "position": int(self.positions[node]),
                "order": self.orders[node, :size].clone(),
                "generator": self.generators[node].get_state()}

    def as_batch_sampler(self, node: int) -> BatchSampler:
        """A :class:`BatchSampler` in node ``node``'s current state."""
        sampler = BatchSampler(int(self.sizes[node]), self.batch_size, seed=self.seeds[node])
        sampler.load_state_dict(self.sampler_state(node))
        return sampler

    def snapshot(self) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Everything needed to :meth:`restore` the streams (orders, positions, epochs and
        generator states)."""
        return (self.orders.clone(), self.positions.clone(), self.epochs.clone(),
                [g.get_state() for g in self.generators])

    def restore(self, snapshot: tuple[Tensor, Tensor, Tensor, list[Tensor]],
                nodes: Tensor) -> None:
        """Put the streams of ``nodes`` (bool mask) back to ``snapshot``."""
        orders, positions, epochs, generators = snapshot
        mask = nodes.cpu()
        self.orders[mask] = orders[mask]
        self.positions[mask] = positions[mask]
        self.epochs[mask] = epochs[mask]
        for node in mask.nonzero().flatten().tolist():
            self.generators[node].set_state(generators[node])
