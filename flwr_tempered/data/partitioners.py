"""Partitioners: which training samples each node holds (node id -> sample indices).

Every partitioner takes the training labels (``int`` array ``[N]``) and a number of
partitions ``P`` (one per node, Byzantine nodes included) and returns ``P`` disjoint
``int64`` index arrays, each sorted ascending, that together cover every sample exactly
once. The result depends only on the arguments, so every node of a run can recompute the
whole assignment from the run config. Randomised partitioners take a ``seed``.

* :func:`iid`: a seeded shuffle, then equal contiguous shards (flwr-datasets'
  ``IidPartitioner`` on the shuffled labels, i.e. what ``FederatedDataset`` does).
* :func:`label_sorted`: the training set sorted by label, cut into equal contiguous chunks
  (the ClippedGossip ``optimization_delta`` non-IID setting); no randomness.
* :func:`dirichlet`: per class, shares drawn from ``Dirichlet(alpha)`` (flwr-datasets'
  ``DirichletPartitioner``); small ``alpha`` gives strong label skew.
* :func:`clique_split`: groups of nodes own disjoint label ranges (the ClippedGossip
  ``dumbbell`` non-IID setting: clique 1 holds labels 0-4, clique 2 labels 5-9).

The flwr-datasets partitioners run on a label-only ``datasets.Dataset`` with an extra
``index`` column, from which the indices are read back through the public
``load_partition``; both take well under a second for tens of thousands of labels.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flwr_tempered.data._checks import check_int, check_seed

Partition = list[np.ndarray]


def _check_labels(labels: Any) -> np.ndarray:
    """``labels`` as a non-empty 1-D ``int64`` array."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_num_partitions(num_partitions: object, num_samples: int) -> int:
    """``num_partitions`` as an ``int`` in ``1 .. num_samples``."""
    count = check_int("num_partitions", num_partitions, 1)
    if count > num_samples:
        raise ValueError(
            f"num_partitions = {count} is more than the {num_samples} samples to partition"
        )
    return count


def _sorted_parts(parts: Sequence[np.ndarray]) -> Partition:
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def _index_dataset(labels: np.ndarray) -> Any:
    """A Hugging Face dataset with columns ``label`` and ``index`` (the sample positions)."""
    import datasets

    return datasets.Dataset.from_dict({"label": labels, "index": np.arange(len(labels))})


def _read_indices(partitioner: Any, num_partitions: int) -> Partition:
    return _sorted_parts(
        [np.asarray(partitioner.load_partition(i)["index"]) for i in range(num_partitions)]
    )


def iid(labels: Any, num_partitions: int, seed: int = 0) -> Partition:
    """IID split: shuffle with ``seed``, then ``num_partitions`` contiguous shards.

    Shard sizes differ by at most one (the first ``N mod P`` shards get the extra sample).
    Implemented as flwr-datasets' ``IidPartitioner`` applied to the seeded
    ``datasets.Dataset.shuffle``, because the partitioner itself only shards contiguously.
    """
    from flwr_datasets.partitioner import IidPartitioner

    array = _check_labels(labels)
    count = _check_num_partitions(num_partitions, len(array))
    partitioner = IidPartitioner(num_partitions=count)
    partitioner.dataset = _index_dataset(array).shuffle(seed=check_seed(seed))
    return _read_indices(partitioner, count)


def label_sorted(labels: Any, num_partitions: int) -> Partition:
    """Sort the samples by label (stable) and cut them into equal contiguous chunks.

    Node ``i`` gets chunk ``i``, so the labels of node ``i`` are all <= those of node
    ``i + 1``; chunk sizes differ by at most one. Deterministic: no seed (ties keep the
    dataset order, which for the offline datasets is the seeded split's shuffle). Written
    with numpy because no flwr-datasets partitioner cuts a label-sorted order.
    """
    array = _check_labels(labels)
    count = _check_num_partitions(num_partitions, len(array))
    order = np.argsort(array, kind="stable")
    return _sorted_parts(np.array_split(order, count))


def dirichlet(
    labels: Any,
    num_partitions: int,
    alpha: float,
    seed: int = 0,
    min_partition_size: int = 10,
) -> Partition:
    """Label-skewed split: each class is divided among the nodes in ``Dirichlet(alpha)``
    proportions (flwr-datasets' ``DirichletPartitioner``, no self-balancing).

    Smaller ``alpha`` concentrates each class on fewer nodes (``alpha -> inf`` tends to
    IID). Draws are repeated (up to ten times, flwr-datasets' limit) until every node has
    at least ``min_partition_size`` samples; if that fails a ``ValueError`` names the
    values to change. Partition sizes are unequal by design.
    """
    from flwr_datasets.partitioner import DirichletPartitioner

    array = _check_labels(labels)
    count = _check_num_partitions(num_partitions, len(array))
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(float(alpha))
        or float(alpha) <= 0
    ):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    minimum = check_int("min_partition_size", min_partition_size, 0)
    if minimum * count > len(array):
        raise ValueError(
            f"min_partition_size = {minimum} for {count} partitions needs {minimum * count} "
            f"samples, but there are {len(array)}"
        )
    partitioner = DirichletPartitioner(
        num_partitions=count,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=minimum,
        self_balancing=False,
        shuffle=False,
        seed=check_seed(seed),
    )
    partitioner.dataset = _index_dataset(array)
    try:
        with warnings.catch_warnings():
            # flwr-datasets warns on every redraw; a redraw is routine for small alpha.
            warnings.filterwarnings("ignore", message=".*min_partition_size.*")
            return _read_indices(partitioner, count)
    except ValueError as exc:
        raise ValueError(
            f"dirichlet: no draw with alpha = {alpha} gave all {count} partitions at least "
            f"min_partition_size = {minimum} of the {len(array)} samples ({exc}); raise "
            "alpha or lower min_partition_size"
        ) from exc


def _check_groups(
    groups: Mapping[str, Sequence[int]], num_partitions: int
) -> list[tuple[str, list[int]]]:
    """Groups as ``(name, node ids)`` in mapping order: each non-empty, ids valid, disjoint."""
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"groups must be a non-empty mapping name -> node ids, got {groups!r}")
    seen: dict[int, str] = {}
    result: list[tuple[str, list[int]]] = []
    for name, members in groups.items():
        ids = list(members)
        if not ids:
            raise ValueError(f"group {name!r} has no node")
        for node in ids:
            if isinstance(node, bool) or not isinstance(node, numbers.Integral):
                raise ValueError(f"group {name!r}: node id {node!r} is not an integer")
            if not 0 <= int(node) < num_partitions:
                raise ValueError(
                    f"group {name!r}: node id {node} is not one of the nodes "
                    f"0..{num_partitions - 1} (num_partitions = {num_partitions})"
                )
            if int(node) in seen:
                raise ValueError(
                    f"node {node} is in both group {seen[int(node)]!r} and group {name!r}"
                )
            seen[int(node)] = str(name)
        result.append((str(name), [int(node) for node in ids]))
    return result


def clique_split(
    labels: Any,
    groups: Mapping[str, Sequence[int]],
    num_partitions: int,
    seed: int = 0,
) -> Partition:
    """Non-IID by groups: each group of nodes owns a contiguous range of the labels.

    The sorted distinct labels are cut into ``G = len(groups)`` contiguous ranges of equal
    size (sizes differ by at most one; ``np.array_split``), and the ``g``-th group, in the
    mapping's order, owns the ``g``-th range: with two groups and labels ``0..9``, the first
    group holds labels 0-4 and the second 5-9, the ClippedGossip dumbbell setting. Inside a
    group the samples of its range are shuffled (``seed``) and dealt IID into equal shards,
    in the order the group lists its nodes.

    Nodes in no group (e.g. Byzantine nodes, which topologies leave out of their groups)
    first receive an IID share of *all* samples: a seeded uniform sample of
    ``round(N * U / P)`` samples for ``U`` ungrouped nodes, split equally among them, i.e.
    the data an average node would hold. The groups share the rest. Every sample is still
    assigned exactly once. Written with numpy because no flwr-datasets partitioner assigns
    label ranges to groups of partitions.
    """
    array = _check_labels(labels)
    count = _check_num_partitions(num_partitions, len(array))
    members = _check_groups(groups, count)
    classes = np.unique(array)
    if len(members) > len(classes):
        raise ValueError(
            f"{len(members)} groups cannot own disjoint label ranges of only "
            f"{len(classes)} classes"
        )
    rng = np.random.default_rng(check_seed(seed))
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * count
    remaining = np.arange(len(array))

    grouped = {node for _, ids in members for node in ids}
    ungrouped = [node for node in range(count) if node not in grouped]
    if ungrouped:
        shuffled = rng.permutation(len(array))
        taken = round(len(array) * len(ungrouped) / count)
        for node, share in zip(
            ungrouped, np.array_split(shuffled[:taken], len(ungrouped)), strict=True
        ):
            parts[node] = share
        remaining = np.sort(shuffled[taken:])

    for (name, ids), label_range in zip(
        members, np.array_split(classes, len(members)), strict=True
    ):
        owned = remaining[np.isin(array[remaining], label_range)]
        if len(owned) < len(ids):
            raise ValueError(
                f"group {name!r} has {len(ids)} nodes but only {len(owned)} samples with "
                f"labels {label_range.min()}..{label_range.max()}"
            )
        for node, share in zip(ids, np.array_split(rng.permutation(owned), len(ids)),
                               strict=True):
            parts[node] = share
    return _sorted_parts(parts)
