"""Datasets and partitioners: offline loaders, the online failure path, partition invariants."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_tempered.data import (
    Dataset,
    available_datasets,
    available_partitioners,
    clique_split,
    digits,
    dirichlet,
    iid,
    label_sorted,
    load_dataset,
    mnist_5k,
    partition,
    stratified_split,
)
from flwr_tempered.data.online import split_to_tensors

ROOT = Path(__file__).resolve().parent.parent
DUMBBELL_GROUPS = {"clique 1": list(range(10)), "clique 2": list(range(10, 20))}


@pytest.fixture(scope="module")
def mnist_labels() -> np.ndarray:
    return mnist_5k().train_labels.numpy()


def _assert_partition(parts: list[np.ndarray], num_samples: int, num_partitions: int) -> None:
    """Disjoint, every sample exactly once, int64 arrays sorted ascending."""
    assert len(parts) == num_partitions
    for part in parts:
        assert part.dtype == np.int64 and part.ndim == 1
        assert np.all(np.diff(part) > 0)
    joined = np.concatenate(parts)
    assert len(joined) == num_samples
    assert np.array_equal(np.sort(joined), np.arange(num_samples))


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    entropies = []
    for part in parts:
        counts = np.bincount(labels[part], minlength=10)
        p = counts[counts > 0] / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


# ----------------------------------------------------------------------------- datasets


def test_mnist_5k_is_a_stratified_4000_1000_split_in_unit_range() -> None:
    data = load_dataset("mnist-5k")
    assert isinstance(data, Dataset)
    assert data.name == "mnist-5k" and data.num_classes == 10
    assert data.train_images.shape == (4000, 1, 28, 28)
    assert data.test_images.shape == (1000, 1, 28, 28)
    assert data.input_shape == (1, 28, 28)
    assert data.train_images.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    for images in (data.train_images, data.test_images):
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert data.train_labels.bincount().tolist() == [400] * 10
    assert data.test_labels.bincount().tolist() == [100] * 10
    # digits are centred: the border is background, the middle is not
    assert float(data.train_images[:, :, 0, :].max()) < 0.5
    assert float(data.train_images[:, :, 10:18, 10:18].mean()) > 0.2


def test_digits_is_a_stratified_split_of_the_1797_images() -> None:
    data = load_dataset("digits")
    assert data.train_images.shape == (1437, 1, 8, 8)
    assert data.test_images.shape == (360, 1, 8, 8)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert float(data.train_images.min()) == 0.0 and float(data.train_images.max()) == 1.0
    train_counts = data.train_labels.bincount(minlength=10).numpy()
    test_counts = data.test_labels.bincount(minlength=10).numpy()
    totals = train_counts + test_counts
    assert totals.sum() == 1797 and totals.min() >= 174
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1)


def test_offline_split_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    labels = np.repeat(np.arange(10), 50)
    train0, test0 = stratified_split(labels, 0.2, seed=0)
    again_train, again_test = stratified_split(labels, 0.2, seed=0)
    train1, _ = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(train0, again_train) and np.array_equal(test0, again_test)
    assert not np.array_equal(np.sort(train0), np.sort(train1))
    assert np.array_equal(np.sort(np.concatenate([train0, test0])), np.arange(500))
    assert np.bincount(labels[test0]).tolist() == [10] * 10
    # different seeds give different datasets, the same seed the same (cached) object
    assert mnist_5k(0) is mnist_5k(0) and load_dataset("digits", seed=2) is digits(2)
    assert not torch.equal(digits(0).test_labels, digits(1).test_labels)


def test_dataset_rejects_inconsistent_tensors() -> None:
    images = torch.zeros(3, 1, 2, 2)
    labels = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="float32"):
        Dataset("x", images.double(), labels, images, labels, 10)
    with pytest.raises(ValueError, match="int64"):
        Dataset("x", images, labels[:2], images, labels, 10)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        Dataset("x", images, labels + 5, images, labels, 2)
    assert "train=3" in repr(Dataset("x", images, labels, images, labels, 2))


def test_hub_split_is_decoded_to_unit_range_nchw_tensors() -> None:
    import datasets
    from PIL import Image

    grey = [Image.fromarray(np.full((4, 5), 51 * i, dtype=np.uint8)) for i in range(3)]
    split = datasets.Dataset.from_dict({"image": grey, "label": [2, 0, 1]}).cast_column(
        "image", datasets.Image()
    )
    images, labels = split_to_tensors(split, "image", "label")
    assert images.shape == (3, 1, 4, 5) and images.dtype == torch.float32
    assert torch.allclose(images[:, 0, 0, 0], torch.tensor([0.0, 0.2, 0.4]))
    assert labels.tolist() == [2, 0, 1] and labels.dtype == torch.int64

    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 2] = 255
    split = datasets.Dataset.from_dict({"img": [Image.fromarray(rgb)], "label": [7]}).cast_column(
        "img", datasets.Image()
    )
    images, _ = split_to_tensors(split, "img", "label")
    assert images.shape == (1, 3, 4, 5)
    assert images[0, 2].eq(1.0).all() and images[0, :2].eq(0.0).all()


def test_online_datasets_fail_fast_naming_the_offline_ones(tmp_path: Path) -> None:
    """Offline mode and an empty cache (environment read at import, hence a subprocess):
    every online loader raises a RuntimeError naming itself, mnist-5k and digits."""
    script = textwrap.dedent(
        """
        import json
        from flwr_tempered.data import load_dataset
        out = {}
        for name in ("mnist", "fashion-mnist", "cifar10"):
            try:
                load_dataset(name)
                out[name] = "loaded"
            except RuntimeError as exc:
                out[name] = str(exc)
        print(json.dumps(out))
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
    }
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout.strip().splitlines()[-1])
    for name, hub_id in (
        ("mnist", "ylecun/mnist"),
        ("fashion-mnist", "zalando-datasets/fashion_mnist"),
        ("cifar10", "uoft-cs/cifar10"),
    ):
        assert repr(name) in messages[name] and hub_id in messages[name]
        assert "mnist-5k" in messages[name] and "digits" in messages[name]
    assert elapsed < 20, f"the offline failure took {elapsed:.1f} s"


def test_dataset_registry_lists_names_and_rejects_misspellings() -> None:
    assert available_datasets() == ["cifar10", "digits", "fashion-mnist", "mnist", "mnist-5k"]
    with pytest.raises(ValueError, match="mnist-5k") as info:
        load_dataset("mnist5k")
    assert "digits" in str(info.value)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("digits", seed=-1)


# ----------------------------------------------------------------------------- partitioners

PARTITIONER_CASES = [
    ("iid", {}),
    ("label_sorted", {}),
    ("dirichlet", {"alpha": 0.5}),
    ("clique", {"groups": DUMBBELL_GROUPS}),
]


@pytest.mark.parametrize(("name", "params"), PARTITIONER_CASES)
def test_every_partitioner_assigns_each_sample_once_deterministically(
    name: str, params: dict[str, object], mnist_labels: np.ndarray
) -> None:
    start = time.perf_counter()
    parts = partition(name, mnist_labels, 20, seed=0, **params)
    assert time.perf_counter() - start < 2.0
    _assert_partition(parts, len(mnist_labels), 20)
    again = partition(name, mnist_labels, 20, seed=0, **params)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(name, mnist_labels, 20, seed=1, **params)
    same = all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    assert same == (name == "label_sorted")  # only label_sorted has no randomness


@settings(max_examples=25, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    data=st.data(),
)
def test_partitions_cover_every_sample_once_for_any_labels(
    labels: list[int], data: st.DataObject
) -> None:
    array = np.array(labels)
    count = data.draw(st.integers(1, len(labels)))
    seed = data.draw(st.integers(0, 1000))
    _assert_partition(iid(array, count, seed), len(array), count)
    _assert_partition(label_sorted(array, count), len(array), count)
    _assert_partition(dirichlet(array, count, 1.0, seed, min_partition_size=0), len(array), count)
    classes = len(np.unique(array))
    if count >= 2 and classes >= 2:
        groups = {"a": list(range(count // 2)), "b": list(range(count // 2, count))}
        try:
            parts = clique_split(array, groups, count, seed)
        except ValueError as exc:  # a group whose labels are rarer than its nodes
            assert "only" in str(exc)
        else:
            _assert_partition(parts, len(array), count)


def test_iid_shards_are_equal_and_hold_every_class(mnist_labels: np.ndarray) -> None:
    parts = iid(mnist_labels, 7, seed=3)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for part in parts:
        counts = np.bincount(mnist_labels[part], minlength=10)
        assert counts.min() >= 0.5 * len(part) / 10  # roughly balanced, not label sorted


def test_label_sorted_chunks_are_contiguous_by_label(mnist_labels: np.ndarray) -> None:
    parts = label_sorted(mnist_labels, 20)
    for left, right in itertools.pairwise(parts):
        assert mnist_labels[left].max() <= mnist_labels[right].min()
    assert {len(p) for p in parts} == {200}
    # 400 samples per class and 10 nodes: node i holds exactly the samples of digit i
    for digit, part in enumerate(label_sorted(mnist_labels, 10)):
        assert np.array_equal(part, np.flatnonzero(mnist_labels == digit))
    # the seed the registry passes is ignored, not an error
    by_registry = partition("label_sorted", mnist_labels, 10, seed=5)
    assert np.array_equal(by_registry[3], np.flatnonzero(mnist_labels == 3))


def test_dirichlet_skew_grows_as_alpha_shrinks(mnist_labels: np.ndarray) -> None:
    entropies = [
        _mean_label_entropy(mnist_labels, dirichlet(mnist_labels, 10, alpha, seed=0))
        for alpha in (100.0, 1.0, 0.1)
    ]
    assert entropies[0] > 0.95 * np.log(10)  # near uniform
    assert entropies[0] > entropies[1] + 0.2 > entropies[2] + 0.4
    parts = dirichlet(mnist_labels, 10, 0.1, seed=0, min_partition_size=50)
    assert min(len(p) for p in parts) >= 50


def test_clique_split_gives_each_clique_half_of_the_labels(mnist_labels: np.ndarray) -> None:
    parts = partition("clique", mnist_labels, 20, seed=0, groups=DUMBBELL_GROUPS)
    for node in range(10):
        assert set(mnist_labels[parts[node]].tolist()) == {0, 1, 2, 3, 4}
    for node in range(10, 20):
        assert set(mnist_labels[parts[node]].tolist()) == {5, 6, 7, 8, 9}
    assert {len(p) for p in parts} == {200}


def test_clique_split_gives_ungrouped_nodes_an_iid_share(mnist_labels: np.ndarray) -> None:
    parts = clique_split(mnist_labels, DUMBBELL_GROUPS, 22, seed=0)  # nodes 20, 21 Byzantine
    _assert_partition(parts, len(mnist_labels), 22)
    for node in (20, 21):
        assert abs(len(parts[node]) - 4000 / 22) <= 1
        assert set(mnist_labels[parts[node]].tolist()) == set(range(10))
    assert set(mnist_labels[np.concatenate(parts[:10])].tolist()) == {0, 1, 2, 3, 4}


def test_clique_split_follows_the_mapping_order_with_g_groups(mnist_labels: np.ndarray) -> None:
    groups = {"c": [5, 4], "a": [0, 1], "b": [2, 3]}
    parts = clique_split(mnist_labels, groups, 6, seed=0)
    held = [set(mnist_labels[p].tolist()) for p in parts]
    assert held[5] == held[4] == {0, 1, 2, 3}
    assert held[0] == held[1] == {4, 5, 6}
    assert held[2] == held[3] == {7, 8, 9}


@pytest.mark.parametrize(
    ("name", "num_partitions", "params", "pattern"),
    [
        ("iid", 0, {}, "num_partitions must be >= 1, got 0"),
        ("label_sorted", 4001, {}, "num_partitions = 4001 is more than the 4000 samples"),
        ("dirichlet", 10, {"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
        ("dirichlet", 10, {"alpha": -1}, "alpha must be a finite number > 0, got -1"),
        ("dirichlet", 10, {"alpha": float("nan")}, "alpha must be"),
        ("dirichlet", 10, {}, "needs parameter.*alpha"),
        ("dirichlet", 10, {"alpha": 1.0, "min_partition_size": 401}, "needs 4010 samples"),
        ("dirichlet", 10, {"alpha": 1.0, "beta": 2}, "no parameter.*beta"),
        ("clique", 20, {"groups": {"a": [0, 25]}}, "node id 25 is not one of the nodes 0..19"),
        ("clique", 20, {"groups": {"a": [0, 1], "b": [1]}}, "node 1 is in both group"),
        ("clique", 20, {"groups": {}}, "non-empty mapping"),
        ("clique", 20, {"groups": {"a": []}}, "group 'a' has no node"),
        ("clique", 20, {"groups": {str(g): [g] for g in range(11)}}, "11 groups"),
        ("shards", 10, {}, "available partitioners: clique, dirichlet, iid, label_sorted"),
    ],
)
def test_partition_errors_name_the_bad_values(
    name: str, num_partitions: int, params: dict[str, object], pattern: str,
    mnist_labels: np.ndarray,
) -> None:
    with pytest.raises(ValueError, match=pattern):
        partition(name, mnist_labels, num_partitions, seed=0, **params)


def test_partitioners_reject_bad_labels_and_list_names() -> None:
    assert available_partitioners() == ["clique", "dirichlet", "iid", "label_sorted"]
    with pytest.raises(ValueError, match="integers"):
        iid(np.array([0.5, 1.0]), 1)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        label_sorted(np.zeros((2, 2), dtype=int), 1)
    with pytest.raises(ValueError, match="only 1 samples"):
        clique_split(np.array([0, 0, 0, 1]), {"a": [0], "b": [1, 2]}, 3)
