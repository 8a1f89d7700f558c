"""How much device memory a batched run needs, and how to split it into chunks that fit.

The estimate is made before the first step, from sizes alone: the stacked state (own
parameters, momentum, the half-step models, the start-of-round models some attacks read,
the crafted vectors and the next round's aggregates), the run's data on the device, and
per node in a chunk the largest temporary of a round: the gathered neighbourhood of the
aggregation (``(K + 1) x d``), or the activations and gradients of a training step
(counted from one forward pass on a single sample). Nodes are then processed in chunks
whose temporaries fit what is left; when even one node does not fit, the run is refused
with the numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: Share of the free memory the engine plans to use (allocator slack, fragmentation).
USABLE_FRACTION = 0.8
#: Activations are kept for the backward pass and their gradients are formed as well.
ACTIVATION_FACTOR = 3
#: On a CPU, gathered neighbourhoods are processed in chunks of about this many bytes.
#: Larger ones gain nothing there and cost page faults: glibc hands blocks above its
#: mmap threshold (at most 32 MiB) back to the kernel on free, so every round would
#: fault them in again. Measured on 2 cores (ER(100) trimmed mean, logistic regression):
#: 64 MiB 0.063 s per iteration, 16 MiB 0.041 s.
CPU_GATHER_BYTES = 16 << 20


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        return 8 << 30


def activation_elements(model: nn.Module, sample: Tensor) -> int:
    """Elements of every layer output for one sample (a forward pass with hooks)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate and the chunk sizes that fit it (all sizes in bytes)."""

    budget: int
    persistent: int
    per_node: int
    chunk: int
    num_nodes: int
    #: Nodes per chunk of gathered neighbourhoods (``chunk``, or fewer on a CPU).
    gather_chunk: int = 0

    def __post_init__(self) -> None:
        if self.gather_chunk <= 0:
            object.__setattr__(self, "gather_chunk", self.chunk)

    @property
    def total(self) -> int:
        """Bytes the run needs with the planned chunks."""
        return self.persistent + self.chunk * self.per_node

    def describe(self) -> str:
        """One line for logs."""
        return (f"memory plan: {self.persistent / 2**20:.1f} MiB state + {self.chunk} nodes x "
                f"{self.per_node / 2**20:.2f} MiB per chunk of {self.num_nodes} nodes, budget "
                f"{self.budget / 2**20:.1f} MiB")


def plan_memory(*, num_nodes: int, dimension: int, element_size: int, max_degree: int,
                edges: int, batch_size: int, activations_per_sample: int,
                data_bytes: int, budget: int, stacked_copies: int = 5,
                device_type: str = "cpu") -> MemoryPlan:
    """Chunk size for ``num_nodes`` nodes of ``dimension`` parameters within ``budget``.

    ``stacked_copies`` counts the ``[N, d]`` tensors that live through a round (params,
    momentum, aggregates, gathered sources, start-of-round models). Raises
    ``MemoryError`` naming the need and the budget when not even one node fits.
    """
    row = dimension * element_size
    persistent = stacked_copies * num_nodes * row + edges * row + data_bytes
    gathered = (max_degree + 2) * row
    training = (ACTIVATION_FACTOR * batch_size * activations_per_sample * element_size
                + 3 * row)
    per_node = max(gathered, training)
    room = budget - persistent
    if room < per_node:
        raise MemoryError(
            f"the batched engine needs {(persistent + per_node) / 2**20:.1f} MiB for even one "
            f"node at a time ({persistent / 2**20:.1f} MiB for the state of {num_nodes} nodes "
            f"of d = {dimension} and the data, {per_node / 2**20:.1f} MiB per node), but only "
            f"{budget / 2**20:.1f} MiB are available; use fewer nodes, a smaller model, or "
            f"the per-node engine")
    chunk = max(1, min(num_nodes, room // per_node))
    gather_chunk = chunk if device_type == "cuda" else max(1, min(chunk,
                                                                  CPU_GATHER_BYTES // gathered))
    return MemoryPlan(budget=budget, persistent=persistent, per_node=per_node, chunk=int(chunk),
                      num_nodes=num_nodes, gather_chunk=int(gather_chunk))


def default_budget(device: torch.device) -> int:
    """The bytes a run may plan with on ``device``."""
    return int(free_memory(device) * USABLE_FRACTION)
