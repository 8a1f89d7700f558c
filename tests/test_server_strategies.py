"""Server-side robust strategies (``flwr_tempered.strategies``) driven by reply Messages.

Where Flower ships the same rule (``FedAvg``, ``FedMedian``, ``FedTrimmedAvg``, ``Krum``,
``MultiKrum``, ``Bulyan``) ours must return the same model on the same replies. Beyond
that: the paper's Bulyan selection against a slow reference, the server semantics (the
global model is the reference point of centered clipping and FLTrust and is never a
candidate of the other rules), malformed replies dropped with a logged reason while the
round goes on, the summary, and integer arrays.

Replies are built outside a Flower run: ``TaskIdentity`` must be set before a ``Message``
can be constructed, and a reply is ``Message(content, reply_to=request)``, which makes the
request's destination the reply's source node.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import reference_rules as ref
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.task_identity import TaskIdentity

from flwr_tempered import strategies as ours

#: A small CNN-like model: several named arrays of different shapes and ranks.
SHAPES: dict[str, tuple[int, ...]] = {
    "conv.weight": (4, 3, 3, 3),
    "conv.bias": (4,),
    "fc.weight": (10, 36),
    "fc.bias": (10,),
}
ATOL = 1e-6


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Messages need a task identity; restore whatever another test had set."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


# ----------------------------------------------------------------------------- replies
def reply(node_id: int, content: RecordDict) -> Message:
    """A training reply from ``node_id`` holding ``content``."""
    request = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    return Message(content, reply_to=request)


def error_reply(node_id: int, reason: str) -> Message:
    """A reply from ``node_id`` that reports an error instead of content."""
    request = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    return Message(Error(code=1, reason=reason), reply_to=request)


def train_reply(
    node_id: int, arrays: dict[str, np.ndarray], num_examples: int = 10, **metrics: Any
) -> Message:
    """A well-formed training reply: one ArrayRecord, one MetricRecord."""
    return reply(node_id, RecordDict({
        "arrays": ArrayRecord({key: Array(value) for key, value in arrays.items()}),
        "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
    }))


def random_model(
    rng: np.random.Generator, shapes: dict[str, tuple[int, ...]] = SHAPES, scale: float = 1.0,
    centre: float = 0.0,
) -> dict[str, np.ndarray]:
    return {key: (centre + scale * rng.normal(size=shape)).astype(np.float32)
            for key, shape in shapes.items()}


def random_replies(n: int, seed: int) -> list[Message]:
    """``n`` replies with random float32 models, example counts and metrics (a scalar and
    a list metric, as Flower's metric aggregation handles both)."""
    rng = np.random.default_rng(seed)
    return [
        train_reply(
            node, random_model(rng), num_examples=int(rng.integers(5, 200)),
            loss=float(rng.random()), accuracy=float(rng.random()),
            per_class=[float(v) for v in rng.random(3)],
        )
        for node in range(1, n + 1)
    ]


def record_of(model: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(value) for key, value in model.items()})


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def aggregate(
    strategy: Any, replies: Sequence[Message], global_model: dict[str, np.ndarray] | None = None,
    server_round: int = 1,
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """``strategy.aggregate_train`` on a deep copy of ``replies`` (Flower's strategies pop
    arrays out of the replies), after telling ours the global model."""
    if global_model is not None and isinstance(strategy, ours.RobustFedAvg):
        strategy.set_global_model(record_of(global_model))
    return strategy.aggregate_train(server_round, copy.deepcopy(list(replies)))


def assert_same_model(actual: ArrayRecord | None, expected: ArrayRecord | None,
                      atol: float = ATOL) -> None:
    """Same keys in the same order, same shapes and dtypes, values within ``atol``."""
    assert actual is not None and expected is not None
    assert list(actual.keys()) == list(expected.keys())
    for key in expected:
        a, e = actual[key].numpy(), expected[key].numpy()
        assert a.shape == e.shape, key
        assert a.dtype == e.dtype, (key, a.dtype, e.dtype)
        np.testing.assert_allclose(a, e, rtol=0, atol=atol, err_msg=key)


def assert_same_metrics(actual: MetricRecord | None, expected: MetricRecord | None) -> None:
    assert actual is not None and expected is not None
    assert dict(actual).keys() == dict(expected).keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def all_metrics(replies: Sequence[Message]) -> MetricRecord:
    """FedAvg's metric aggregation over every given reply."""
    return aggregate_metricrecords([m.content for m in copy.deepcopy(list(replies))],
                                   "num-examples")


def flower_log(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> Any:
    """Capture the "flwr" logger, through which Flower and our strategies log."""
    return caplog.at_level(level, logger="flwr")


# ---------------------------------------------------------------- equality with Flower
#: (ours, Flower's, uses n) for n replies.
PAIRS: dict[str, Callable[[int], tuple[Any, Any]]] = {
    "mean_vs_FedAvg": lambda n: (ours.RobustFedAvg("mean"), flower.FedAvg()),
    "Median_vs_FedMedian": lambda n: (ours.Median(), flower.FedMedian()),
    "TrimmedMean_vs_FedTrimmedAvg_0.1": lambda n: (
        ours.TrimmedMean(beta=0.1), flower.FedTrimmedAvg(beta=0.1)),
    "TrimmedMean_vs_FedTrimmedAvg_0.3": lambda n: (
        ours.TrimmedMean(beta=0.3), flower.FedTrimmedAvg(beta=0.3)),
    "Krum_vs_Krum": lambda n: (
        ours.Krum(num_malicious_nodes=n // 5), flower.Krum(num_malicious_nodes=n // 5)),
    "MultiKrum_vs_MultiKrum": lambda n: (
        ours.MultiKrum(num_malicious_nodes=n // 5, num_nodes_to_select=n // 2),
        flower.MultiKrum(num_malicious_nodes=n // 5, num_nodes_to_select=n // 2)),
    "Bulyan_multi_krum_vs_Bulyan": lambda n: (
        ours.Bulyan(num_malicious_nodes=(n - 3) // 4, selection_rule="multi_krum"),
        flower.Bulyan(num_malicious_nodes=(n - 3) // 4)),
}


@pytest.mark.parametrize("n", [11, 20])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_named_strategy_returns_the_same_model_as_flowers_on_the_same_replies(
    pair: str, n: int
) -> None:
    strategy, theirs = PAIRS[pair](n)
    replies = random_replies(n, seed=n)
    global_model = random_model(np.random.default_rng(99), scale=5.0)
    arrays, _ = aggregate(strategy, replies, global_model)
    expected, _ = aggregate(theirs, replies)
    assert_same_model(arrays, expected)
    assert strategy.history[-1]["accepted"] == n and strategy.history[-1]["dropped"] == []


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pair", ["Krum_vs_Krum", "MultiKrum_vs_MultiKrum",
                                  "Median_vs_FedMedian"])
def test_a_strategy_on_an_explicit_device_returns_flowers_model(pair: str,
                                                                device: str) -> None:
    _, theirs = PAIRS[pair](20)
    placed = {
        "Krum_vs_Krum": lambda: ours.Krum(num_malicious_nodes=4, device=device),
        "MultiKrum_vs_MultiKrum": lambda: ours.MultiKrum(num_malicious_nodes=4,
                                                         num_nodes_to_select=10,
                                                         device=device),
        "Median_vs_FedMedian": lambda: ours.Median(device=device),
    }[pair]()
    assert placed.device.type == device
    replies = random_replies(20, seed=20)
    global_model = random_model(np.random.default_rng(99), scale=5.0)
    arrays, _ = aggregate(placed, replies, global_model)
    expected, _ = aggregate(theirs, replies)
    assert_same_model(arrays, expected)


def test_a_device_torch_does_not_know_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'tpu0' is not a torch device"):
        ours.Krum(num_malicious_nodes=1, device="tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            ours.Median(device="cuda")


@pytest.mark.parametrize("pair", ["mean_vs_FedAvg", "Median_vs_FedMedian",
                                  "TrimmedMean_vs_FedTrimmedAvg_0.1"])
def test_metrics_equal_flowers_for_strategies_that_aggregate_metrics_over_all_replies(
    pair: str,
) -> None:
    strategy, theirs = PAIRS[pair](11)
    replies = random_replies(11, seed=3)
    _, metrics = aggregate(strategy, replies, random_model(np.random.default_rng(1)))
    _, expected = aggregate(theirs, replies)
    assert_same_metrics(metrics, expected)


@pytest.mark.parametrize("pair", ["Krum_vs_Krum", "MultiKrum_vs_MultiKrum",
                                  "Bulyan_multi_krum_vs_Bulyan"])
def test_krum_family_metrics_average_every_accepted_reply_as_fedavg_does(pair: str) -> None:
    """Flower's Krum family averages metrics over the selected replies only; ours, like
    FedAvg, over every accepted reply (the selection is about models, not metrics)."""
    strategy, _ = PAIRS[pair](11)
    replies = random_replies(11, seed=4)
    _, metrics = aggregate(strategy, replies, random_model(np.random.default_rng(1)))
    assert_same_metrics(metrics, all_metrics(replies))
    assert "num-examples" not in metrics  # type: ignore[operator]


def test_median_without_a_known_global_model_still_equals_fedmedian() -> None:
    """Driving ``aggregate_train`` without ``configure_train``: the layout comes from the
    replies themselves."""
    replies = random_replies(11, seed=5)
    arrays, _ = aggregate(ours.Median(), replies)
    expected, _ = aggregate(flower.FedMedian(), replies)
    assert_same_model(arrays, expected)


# ------------------------------------------------------------------------------- Bulyan
def slow_krum_scores(points: np.ndarray, f: int) -> np.ndarray:
    """Sum of the squared distances to the ``n - f - 2`` closest other points."""
    n = len(points)
    scores = np.empty(n)
    for i in range(n):
        distances = sorted(float(((points[i] - points[j]) ** 2).sum())
                           for j in range(n) if j != i)
        scores[i] = sum(distances[: n - f - 2])
    return scores


def slow_repeated_krum_selection(points: np.ndarray, f: int) -> list[int]:
    """The paper's Bulyan selection: ``theta = n - 2f`` times, take the Krum winner of the
    points not yet taken (scored among themselves) and remove it. Ties: first index."""
    remaining = list(range(len(points)))
    picked = []
    for _ in range(len(points) - 2 * f):
        scores = slow_krum_scores(points[remaining], f)
        picked.append(remaining.pop(int(np.argmin(scores))))
    return picked


def slow_one_pass_selection(points: np.ndarray, f: int) -> list[int]:
    """Flower's selection: the ``theta`` best scores of a single Krum pass."""
    scores = slow_krum_scores(points, f)
    return [int(i) for i in np.argsort(scores, kind="stable")[: len(points) - 2 * f]]


def slow_bulyan(points: np.ndarray, f: int, selection: list[int]) -> np.ndarray:
    """Per coordinate, the mean of the ``beta = theta - 2f`` selected values closest to
    the selected values' median."""
    chosen = points[selection]
    beta = len(selection) - 2 * f
    median = np.median(chosen, axis=0)
    result = np.empty(points.shape[1])
    for c in range(points.shape[1]):
        order = sorted(range(len(chosen)), key=lambda i: abs(chosen[i, c] - median[c]))
        result[c] = np.mean([chosen[i, c] for i in order[:beta]])
    return result


def flat(model: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([model[key].ravel() for key in model]).astype(np.float64)


#: Fifteen 1-D models, f = 3: a group of five small values and a cluster of ten large.
#: One Krum pass ranks the ten large values best and Flower takes nine of them; re-running
#: Krum after each pick makes the small group win three of the later picks.
BULYAN_SPLIT = [0.0, 4.0, 5.0, 6.0, 8.0, 36.0, 37.0, 42.0, 43.0, 48.0, 49.0, 50.0, 53.0,
                57.0, 58.0]


def test_bulyan_repeated_selection_differs_from_flowers_one_pass_on_a_split_input() -> None:
    points = np.array(BULYAN_SPLIT)[:, None]
    one_pass = slow_one_pass_selection(points, 3)
    repeated = slow_repeated_krum_selection(points, 3)
    # The constructed input does separate the two selections (and their results).
    assert sorted(points[one_pass, 0]) == [36, 37, 42, 43, 48, 49, 50, 53, 57]
    assert sorted(points[repeated, 0]) == [4, 5, 8, 42, 43, 48, 49, 50, 53]
    replies = [train_reply(i + 1, {"w": np.array([v], dtype=np.float32)})
               for i, v in enumerate(BULYAN_SPLIT)]
    global_model = {"w": np.array([1000.0], dtype=np.float32)}
    paper, _ = aggregate(ours.Bulyan(num_malicious_nodes=3), replies, global_model)
    one, _ = aggregate(ours.Bulyan(num_malicious_nodes=3, selection="multi_krum"), replies,
                       global_model)
    theirs, _ = aggregate(flower.Bulyan(num_malicious_nodes=3), replies)
    assert paper is not None and one is not None and theirs is not None
    # beta = 9 - 6 = 3 values closest to the median (43 vs 48): {42, 43, 48} vs {48, 49, 50}.
    assert paper["w"].numpy()[0] == pytest.approx((43 + 48 + 42) / 3)
    assert one["w"].numpy()[0] == pytest.approx((48 + 49 + 50) / 3)
    assert theirs["w"].numpy()[0] == pytest.approx((48 + 49 + 50) / 3)


@pytest.mark.parametrize(("n", "f", "seed"), [(15, 3, 0), (15, 3, 1), (20, 4, 2), (23, 5, 3)])
def test_bulyan_repeated_selection_equals_a_slow_reference(n: int, f: int, seed: int) -> None:
    """f >= 3 keeps every pick scored over >= 2 neighbours, so no pick hinges on a tie."""
    rng = np.random.default_rng(seed)
    shapes = {"a": (3, 4), "b": (5,)}
    models = [random_model(rng, shapes) for _ in range(n)]
    models[:f] = [random_model(rng, shapes, scale=3.0, centre=4.0) for _ in range(f)]
    replies = [train_reply(i + 1, m, num_examples=int(rng.integers(1, 50)))
               for i, m in enumerate(models)]
    points = np.stack([flat(m) for m in models])
    expected = slow_bulyan(points, f, slow_repeated_krum_selection(points, f))
    arrays, _ = aggregate(ours.Bulyan(num_malicious_nodes=f), replies,
                          random_model(rng, shapes))
    assert arrays is not None
    np.testing.assert_allclose(flat(as_numpy(arrays)), expected, rtol=0, atol=1e-5)


def test_bulyan_repeated_equals_flowers_where_the_two_selections_coincide() -> None:
    """Seven tight models and four far ones with growing gaps (n = 11, f = 2, theta = 7):
    both selections take exactly the tight seven, so both Bulyans agree."""
    rng = np.random.default_rng(7)
    f = 2
    models = [random_model(rng, scale=0.1) for _ in range(7)]
    models += [random_model(rng, scale=0.1, centre=c) for c in (100.0, 300.0, 600.0, 1000.0)]
    points = np.stack([flat(m) for m in models])
    assert sorted(slow_repeated_krum_selection(points, f)) == list(range(7))
    assert sorted(slow_one_pass_selection(points, f)) == list(range(7))
    replies = [train_reply(i + 1, m) for i, m in enumerate(models)]
    arrays, _ = aggregate(ours.Bulyan(num_malicious_nodes=f), replies, models[0])
    expected, _ = aggregate(flower.Bulyan(num_malicious_nodes=f), replies)
    assert_same_model(arrays, expected)


# ---------------------------------------------------------------------- server semantics
def scalar_replies(values: Sequence[Sequence[float]], num_examples: int = 10) -> list[Message]:
    return [train_reply(i + 1, {"w": np.array(v, dtype=np.float32)}, num_examples=num_examples)
            for i, v in enumerate(values)]


@pytest.mark.parametrize("strategy", [
    ours.Median(), ours.RobustFedAvg("mean"), ours.TrimmedMean(b=0), ours.GeometricMedian(),
])
def test_global_model_is_not_a_candidate_of_the_statistical_rules(strategy: Any) -> None:
    """Three clients at 1, 2, 3: median, mean and geometric median are 2 whatever the
    global model is (a fourth candidate at 1e6 would move every one of them)."""
    replies = scalar_replies([[1.0], [2.0], [3.0]])
    arrays, _ = aggregate(strategy, replies, {"w": np.array([1e6], dtype=np.float32)})
    assert arrays is not None
    assert arrays["w"].numpy()[0] == pytest.approx(2.0, abs=1e-4)


def test_centered_clipping_clips_each_client_around_the_global_model() -> None:
    """Global (1, 1); clients at global + (3, 4), + (0, 1), + (-6, 8); tau = 2:
    clip -> (1.2, 1.6), (0, 1), (-1.2, 1.6); mean (0, 1.4); result (1, 2.4)."""
    global_model = {"w": np.array([1.0, 1.0], dtype=np.float32)}
    replies = scalar_replies([[4.0, 5.0], [1.0, 2.0], [-5.0, 9.0]])
    arrays, _ = aggregate(ours.CenteredClipping(tau=2.0), replies, global_model)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 2.4], atol=1e-6)
    # The same clients around another global model give another result: it is the centre.
    moved, _ = aggregate(ours.CenteredClipping(tau=2.0), replies,
                         {"w": np.array([1.0, 2.0], dtype=np.float32)})
    assert moved is not None
    # Differences (3, 3) -> (1.414, 1.414); (0, 0); (-6, 7) -> (-1.302, 1.519).
    step = (np.array([3.0, 3.0]) * 2 / np.sqrt(18) + np.array([-6.0, 7.0]) * 2 / np.sqrt(85)) / 3
    np.testing.assert_allclose(moved["w"].numpy(), np.array([1.0, 2.0]) + step, atol=1e-6)


def test_centered_clipping_with_a_large_radius_is_the_clients_mean() -> None:
    replies = scalar_replies([[4.0, 5.0], [1.0, 2.0], [-5.0, 9.0]])
    arrays, _ = aggregate(ours.CenteredClipping(tau=100.0), replies,
                          {"w": np.array([1.0, 1.0], dtype=np.float32)})
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [0.0, 16.0 / 3.0], atol=1e-6)


def test_fltrust_trains_the_global_model_and_gives_a_negative_cosine_zero_weight() -> None:
    """Global (1, 1); trusted update g0 = (1, 0). Client updates (2, 0): cos 1, rescaled to
    (1, 0); (3, 4): cos 0.6, rescaled to (0.6, 0.8); (0, 3): cos 0; (-5, 1): cos < 0.
    Result: global + (1 * (1, 0) + 0.6 * (0.6, 0.8)) / 1.6 = (1.85, 1.3)."""
    calls: list[tuple[int, dict[str, np.ndarray]]] = []

    def root_train(server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        model = as_numpy(arrays)
        calls.append((server_round, model))
        return record_of({"w": model["w"] + np.array([1.0, 0.0], dtype=np.float32)})

    global_model = {"w": np.array([1.0, 1.0], dtype=np.float32)}
    updates = [[2.0, 0.0], [3.0, 4.0], [0.0, 3.0], [-5.0, 1.0]]
    replies = scalar_replies([list(np.add(u, 1.0)) for u in updates])
    arrays, _ = aggregate(ours.FLTrust(root_train), replies, global_model, server_round=3)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [1.85, 1.3], atol=1e-6)
    assert len(calls) == 1
    assert calls[0][0] == 3
    np.testing.assert_array_equal(calls[0][1]["w"], global_model["w"])
    # Without the negative-cosine client the result is the same: it had zero weight.
    without, _ = aggregate(ours.FLTrust(root_train), replies[:3], global_model, server_round=3)
    assert without is not None
    np.testing.assert_allclose(without["w"].numpy(), arrays["w"].numpy(), atol=1e-6)


def test_nnm_mixes_the_clients_only_before_the_mean() -> None:
    """Clients 0, 1, 2, 100, f = 1: each is replaced by the mean of its 3 nearest clients
    -> 1, 1, 1, 103/3; their mean is 28/3. The global model (1000) takes no part."""
    replies = scalar_replies([[0.0], [1.0], [2.0], [100.0]])
    arrays, _ = aggregate(ours.NNMRobust(num_malicious_nodes=1, rule="mean"), replies,
                          {"w": np.array([1000.0], dtype=np.float32)})
    assert arrays is not None
    assert arrays["w"].numpy()[0] == pytest.approx(28.0 / 3.0, rel=1e-6)


def test_nnm_equals_a_reference_mixing_then_example_weighted_mean() -> None:
    rng = np.random.default_rng(11)
    n, f = 9, 2
    shapes = {"a": (4, 3), "b": (2,)}
    models = [random_model(rng, shapes) for _ in range(n)]
    counts = [int(c) for c in rng.integers(1, 100, size=n)]
    replies = [train_reply(i + 1, m, num_examples=c)
               for i, (m, c) in enumerate(zip(models, counts, strict=True))]
    points = np.stack([flat(m) for m in models])
    distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    mixed = np.stack([points[np.argsort(distances[i])[: n - f]].mean(axis=0)
                      for i in range(n)])
    expected = (np.array(counts, dtype=float) @ mixed) / sum(counts)
    arrays, _ = aggregate(ours.NNMRobust(num_malicious_nodes=f, rule="mean"), replies,
                          random_model(rng, shapes, centre=30.0))
    assert arrays is not None
    np.testing.assert_allclose(flat(as_numpy(arrays)), expected, rtol=0, atol=1e-5)


def test_monna_pivots_on_the_global_model_and_never_averages_it() -> None:
    """Clients 0, 1, 2, 100, f = 1: the mean of the 3 clients nearest to the global model.
    Around 1.5 that is 0, 1, 2; around 1000 it is 1, 2, 100 (the pivot is no candidate)."""
    replies = scalar_replies([[0.0], [1.0], [2.0], [100.0]])
    strategy = ours.make_server_strategy("monna", rule_args={"f": 1})
    near, _ = aggregate(strategy, replies, {"w": np.array([1.5], dtype=np.float32)})
    assert near is not None and near["w"].numpy()[0] == pytest.approx(1.0)
    far, _ = aggregate(strategy, replies, {"w": np.array([1000.0], dtype=np.float32)})
    assert far is not None and far["w"].numpy()[0] == pytest.approx(103.0 / 3.0, rel=1e-6)
    assert strategy.history[-1]["rule_stats"]["selected"] == 3.0


def test_arc_and_static_clipping_clip_around_the_global_model() -> None:
    """Global (1, 1); clients at global + (3, 4), (0, 1), (-6, 8), (0, 0).
    ARC, f = 1 over the n = 4 clients: k = floor(2 * 1/4 * 3) = 1, so (-6, 8) is clipped to
    the next norm, 5: (-3, 4); mean step (0, 9/4). Static clipping to 2: (1.2, 1.6), (0, 1),
    (-1.2, 1.6), (0, 0); mean step (0, 1.05)."""
    global_model = {"w": np.array([1.0, 1.0], dtype=np.float32)}
    replies = scalar_replies([[4.0, 5.0], [1.0, 2.0], [-5.0, 9.0], [1.0, 1.0]])
    arc = ours.make_server_strategy("arc", rule_args={"f": 1})
    arrays, _ = aggregate(arc, replies, global_model)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 3.25], atol=1e-6)
    assert arc.history[-1]["rule_stats"]["clipped"] == 1.0
    static = ours.make_server_strategy("static_clipping", rule_args={"c": 2.0})
    arrays, _ = aggregate(static, replies, global_model)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 2.05], atol=1e-6)
    assert static.history[-1]["rule_stats"]["clipped"] == 2.0


def _clients_reference(name: str, clients: list[list[float]], counts: list[int],
                       global_vector: list[float]) -> list[ref.Outcome]:
    """The new rules' server semantics from the slow references: the statistics run over
    the clients (the first plays own); MoNNA pivots on the global model; ARC and static
    clipping clip the clients around it, then take the example-weighted mean."""
    first, rest, f = clients[0], clients[1:], 2
    weights = [c / sum(counts) for c in counts]
    if name == "mda":
        return ref.mda_outcomes(first, rest, f, tie_rtol=1e-5)
    if name == "smea":
        return ref.smea_outcomes(first, rest, f, tie_rtol=1e-5)
    if name == "caf":
        return ref.caf_outcomes(first, rest, f, tie_rtol=1e-5)
    if name == "meamed":
        return [ref.meamed(first, rest, f)]
    if name == "monna":
        return [(ref.mean_of_nearest(clients, global_vector, len(clients) - f), {})]
    n = len(clients)
    lengths = sorted((ref.dist(x, global_vector) for x in clients), reverse=True)
    radius = 1.5 if name == "static_clipping" else lengths[(2 * f * (n - f)) // n]
    return [(ref.weighted_sum(ref.clipped_around(global_vector, clients, radius), weights), {})]


NEW_RULE_ARGS: dict[str, dict[str, Any]] = {
    "mda": {"f": 2}, "smea": {"f": 2}, "caf": {"f": 2}, "meamed": {"f": 2}, "monna": {"f": 2},
    "arc": {"f": 2}, "static_clipping": {"c": 1.5},
}


@pytest.mark.parametrize("name", sorted(NEW_RULE_ARGS))
def test_every_byzfl_rule_is_a_server_strategy_matching_its_reference(name: str) -> None:
    """``make_server_strategy(name, rule_args=...)`` on seven clients' arrays returns the
    slow reference's model (float32 arrays, the global model one unit away)."""
    rng = np.random.default_rng(31)
    models = [random_model(rng, SMALL) for _ in range(7)]
    counts = [int(c) for c in rng.integers(5, 50, size=7)]
    replies = [train_reply(i + 1, m, num_examples=c)
               for i, (m, c) in enumerate(zip(models, counts, strict=True))]
    global_model = random_model(rng, SMALL, scale=0.5, centre=1.0)
    strategy = ours.make_server_strategy(name, rule_args=NEW_RULE_ARGS[name])
    assert isinstance(strategy, ours.RobustFedAvg) and strategy.rule.name == name
    arrays, _ = aggregate(strategy, replies, global_model)
    assert arrays is not None and strategy.history[-1]["accepted"] == 7
    got = flat(as_numpy(arrays))
    clients = [flat(m).tolist() for m in models]
    outcomes = _clients_reference(name, clients, counts, flat(global_model).tolist())
    assert any(np.allclose(got, want, rtol=0, atol=1e-5) for want, _ in outcomes), name


# ------------------------------------------------------------------------ malformed replies
SMALL = {"w": (2, 3), "b": (3,)}
BAD_NODE = 99


def good_replies() -> list[Message]:
    rng = np.random.default_rng(21)
    return [train_reply(node, random_model(rng, SMALL), num_examples=int(rng.integers(5, 50)),
                        loss=float(rng.random()))
            for node in range(1, 6)]


def _good_arrays() -> dict[str, np.ndarray]:
    return random_model(np.random.default_rng(5), SMALL)


def _with(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    arrays = _good_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


def _records(arrays: ArrayRecord | None = None, metrics: MetricRecord | None = None,
             **extra: Any) -> Message:
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = arrays
    if metrics is not None:
        content["metrics"] = metrics
    for key, value in extra.items():
        content[key] = value
    return reply(BAD_NODE, content)


def _nan() -> Message:
    w = _good_arrays()["w"]
    w[1, 2] = np.nan
    return train_reply(BAD_NODE, _with(w=w))


def _inf() -> Message:
    return train_reply(BAD_NODE, _with(b=np.array([0.0, np.inf, 1.0], dtype=np.float32)))


def _garbage_bytes() -> Message:
    record = record_of(_good_arrays())
    record["w"] = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray",
                        data=b"definitely not an npy payload")
    return _records(record, MetricRecord({"num-examples": 10}))


#: kind -> (bad reply, words the logged reason must contain)
MALFORMED: dict[str, tuple[Callable[[], Message], tuple[str, ...]]] = {
    "nan": (_nan, ("non-finite",)),
    "inf": (_inf, ("non-finite",)),
    "wrong_shape": (
        lambda: train_reply(BAD_NODE, _with(w=np.zeros((3, 2), dtype=np.float32))),
        ("'w'", "shape", "(3, 2)")),
    "missing_array": (lambda: train_reply(BAD_NODE, _with(b=None)), ("missing", "'b'")),
    "extra_array": (
        lambda: train_reply(BAD_NODE, _with(extra=np.zeros(2, dtype=np.float32))),
        ("unexpected", "'extra'")),
    "no_array_record": (
        lambda: _records(metrics=MetricRecord({"num-examples": 10})), ("0 ArrayRecords",)),
    "two_array_records": (
        lambda: _records(record_of(_good_arrays()), MetricRecord({"num-examples": 10}),
                         more=record_of(_good_arrays())), ("2 ArrayRecords",)),
    "no_metric_record": (lambda: _records(record_of(_good_arrays())), ("0 MetricRecords",)),
    "no_num_examples": (
        lambda: _records(record_of(_good_arrays()), MetricRecord({"loss": 0.5})),
        ("num-examples",)),
    "negative_num_examples": (
        lambda: train_reply(BAD_NODE, _good_arrays(), num_examples=-5),
        ("num-examples", "-5")),
    "garbage_bytes": (_garbage_bytes, ("'w'", "cannot be decoded")),
    "error_message": (
        lambda: error_reply(BAD_NODE, "ClientApp raised: CUDA out of memory"),
        ("CUDA out of memory",)),
}

MALFORMED_PAIRS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "median": lambda: (ours.Median(), flower.FedMedian()),
    "mean": lambda: (ours.RobustFedAvg("mean"), flower.FedAvg()),
}


@pytest.mark.parametrize("pair", sorted(MALFORMED_PAIRS))
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_reply_is_dropped_with_a_logged_reason_and_the_round_goes_on(
    kind: str, pair: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_bad, words = MALFORMED[kind]
    strategy, theirs = MALFORMED_PAIRS[pair]()
    good = good_replies()
    replies = [*good[:2], make_bad(), *good[2:]]
    with flower_log(caplog):
        arrays, metrics = aggregate(strategy, replies, _good_arrays())
    expected, _ = aggregate(theirs, good)
    assert_same_model(arrays, expected)
    assert_same_metrics(metrics, all_metrics(good))
    entry = strategy.history[-1]
    assert entry["accepted"] == len(good)
    assert [node for node, _ in entry["dropped"]] == [BAD_NODE]
    reason = entry["dropped"][0][1]
    for word in words:
        assert word in reason, (word, reason)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(BAD_NODE) in line and reason in line for line in logged), logged


def test_a_dropped_reply_counts_against_trimmed_means_budget() -> None:
    """Ten good replies and one with NaN, beta = 0.2: the trim count is int(0.2 * 11) = 2,
    lowered by one for the provably faulty reply, so one value is cut from each tail of the
    ten good ones (Flower's FedTrimmedAvg on the ten alone would cut two)."""
    rng = np.random.default_rng(3)
    good = [train_reply(i + 1, random_model(rng, SMALL)) for i in range(10)]
    arrays, _ = aggregate(ours.TrimmedMean(beta=0.2), [*good, _nan()], _good_arrays())
    expected, _ = aggregate(ours.TrimmedMean(b=1), good, _good_arrays())
    assert_same_model(arrays, expected)


def test_an_error_reply_does_not_count_against_trimmed_means_budget() -> None:
    """A client that reports a failure is like one that stayed silent: ten good replies and
    one error reply are trimmed as the ten alone (int(0.2 * 10) = 2 per tail), as Flower
    does."""
    rng = np.random.default_rng(3)
    good = [train_reply(i + 1, random_model(rng, SMALL)) for i in range(10)]
    replies = [*good, error_reply(BAD_NODE, "timeout")]
    arrays, _ = aggregate(ours.TrimmedMean(beta=0.2), replies, _good_arrays())
    expected, _ = aggregate(flower.FedTrimmedAvg(beta=0.2), replies)
    assert_same_model(arrays, expected)


def test_fltrust_without_a_known_global_model_skips_the_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy = ours.FLTrust(lambda server_round, arrays: arrays)
    with flower_log(caplog):
        result = aggregate(strategy, scalar_replies([[1.0], [2.0], [3.0]]))
    assert result == (None, None)
    assert any("global model is unknown" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING)


def test_every_reply_malformed_keeps_the_global_model(caplog: pytest.LogCaptureFixture) -> None:
    strategy = ours.Median()
    with flower_log(caplog):
        result = aggregate(strategy, [_nan(), _inf()], _good_arrays())
    assert result == (None, None)
    assert strategy.history[-1]["accepted"] == 0
    assert any("no usable reply" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING)


@pytest.mark.parametrize(("strategy", "n", "words"), [
    (ours.Bulyan(num_malicious_nodes=2), 7,
     ("Bulyan", "num_malicious_nodes = 2", "at least 11 replies, got 7")),
    (ours.Bulyan(num_malicious_nodes=2, selection="multi_krum"), 10,
     ("Bulyan", "num_malicious_nodes = 2", "at least 11 replies, got 10")),
    (ours.Krum(num_malicious_nodes=2), 6,
     ("Krum", "num_malicious_nodes = 2", "at least 7 replies, got 6")),
    (ours.TrimmedMean(b=3), 6, ("TrimmedMean", "b = 3", "at least 7 replies, got 6")),
])
def test_too_few_replies_for_the_rule_skip_the_round_with_a_warning(
    strategy: Any, n: int, words: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    replies = random_replies(n, seed=n)
    with flower_log(caplog):
        result = aggregate(strategy, replies, random_model(np.random.default_rng(0)))
    assert result == (None, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(all(word in line for word in words) for line in warnings), warnings
    assert "skipped" in strategy.history[-1]


# --------------------------------------------------------------------------------- summary
@pytest.mark.parametrize(("strategy", "lines"), [
    (ours.Median(), ["Rule: median"]),
    (ours.TrimmedMean(beta=0.2), ["Rule: trimmed_mean", "beta: 0.2"]),
    (ours.TrimmedMean(b=3), ["Rule: trimmed_mean", "b: 3"]),
    (ours.Krum(num_malicious_nodes=2), ["Rule: krum", "num_malicious_nodes: 2"]),
    (ours.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=5),
     ["Rule: multi_krum", "num_malicious_nodes: 2", "num_nodes_to_select: 5"]),
    (ours.Bulyan(num_malicious_nodes=1, selection_rule="multi_krum"),
     ["Rule: bulyan", "num_malicious_nodes: 1", "selection_rule: multi_krum"]),
    (ours.CenteredClipping(tau=1.5, iterations=3), ["Rule: centered_clipping", "tau: 1.5",
                                                    "iterations: 3"]),
    (ours.NNMRobust(num_malicious_nodes=2, rule="median"),
     ["Rule: nnm", "num_malicious_nodes: 2", "median"]),
    (ours.GeometricMedian(iterations=5), ["Rule: geometric_median", "iterations: 5"]),
])
def test_summary_logs_the_rule_and_its_settings(
    strategy: Any, lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with flower_log(caplog):
        strategy.summary()
    text = "\n".join(r.getMessage() for r in caplog.records)
    for line in lines:
        assert line in text, (line, text)
    assert type(strategy).__name__ in text


def test_fltrust_summary_names_the_root_training_function(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def train_on_root_data(server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        return arrays

    with flower_log(caplog):
        ours.FLTrust(train_on_root_data).summary()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Rule: fltrust" in text and "train_on_root_data" in text


# ------------------------------------------------------------------------- integer arrays
@pytest.mark.parametrize(("strategy", "expected_count"), [
    (ours.Median(), [11, 9]),
    (ours.RobustFedAvg("mean"), [11, 15]),  # (7 + 9 + 30) / 3 = 15.33, rounded
])
def test_integer_arrays_come_back_with_their_dtype(
    strategy: Any, expected_count: list[int]
) -> None:
    counts = [[10, 7], [12, 9], [11, 30]]
    replies = [train_reply(i + 1, {"w": np.full(3, float(i), dtype=np.float32),
                                   "count": np.array(c, dtype=np.int64)})
               for i, c in enumerate(counts)]
    global_model = {"w": np.zeros(3, dtype=np.float32), "count": np.zeros(2, dtype=np.int64)}
    arrays, _ = aggregate(strategy, replies, global_model)
    assert arrays is not None
    assert arrays["count"].numpy().dtype == np.int64
    assert arrays["count"].numpy().tolist() == expected_count
    assert arrays["w"].numpy().dtype == np.float32
    np.testing.assert_allclose(arrays["w"].numpy(), np.ones(3))


def test_integer_arrays_are_exact_up_to_2_to_the_24_in_a_float32_model() -> None:
    """Documented limit (records.ModelLayout): a float32 model is aggregated in float32,
    integer arrays included, so counters are exact up to 2**24 and rounded beyond."""
    def median_of(value: int) -> int:
        replies = [train_reply(i + 1, {"w": np.zeros(3, dtype=np.float32),
                                       "step": np.array([value], dtype=np.int64)})
                   for i in range(3)]
        arrays, _ = aggregate(ours.Median(), replies,
                              {"w": np.zeros(3, dtype=np.float32),
                               "step": np.zeros(1, dtype=np.int64)})
        assert arrays is not None
        return int(arrays["step"].numpy()[0])

    assert median_of(2**24) == 2**24
    assert median_of(2**24 - 1) == 2**24 - 1
    assert median_of(2**24 + 1) == 2**24  # rounded to the nearest float32


def test_a_float64_model_is_aggregated_in_float64() -> None:
    rng = np.random.default_rng(8)
    models = [{"w": rng.normal(size=4) * 1e-9 + 1.0} for _ in range(5)]
    replies = [train_reply(i + 1, m) for i, m in enumerate(models)]
    arrays, _ = aggregate(ours.Median(), replies, models[0])
    expected, _ = aggregate(flower.FedMedian(), replies)
    assert_same_model(arrays, expected, atol=0.0)


# ------------------------------------------------------------- strategies by name
def test_make_server_strategy_builds_named_flower_and_rule_strategies() -> None:
    median = ours.make_server_strategy("median", fraction_train=0.5)
    assert isinstance(median, ours.Median) and median.fraction_train == 0.5
    fedavg = ours.make_server_strategy("fedavg")
    assert type(fedavg) is flower.FedAvg
    balance = ours.make_server_strategy("balance", rule_args={"total_rounds": 7})
    assert isinstance(balance, ours.RobustFedAvg)
    assert balance.rule.config() == {"name": "balance", "total_rounds": 7, "gamma": 0.3,
                                     "kappa": 1.0, "alpha": 0.5}
    names = ours.available_server_strategies()
    assert names[:2] == ["fedavg", "median"] and "balance" in names and "mean" in names


@pytest.mark.parametrize("name, kwargs, message", [
    ("medianx", {}, "unknown server strategy 'medianx'"),
    ("median", {"beta": 0.1}, "strategy 'median'.*beta"),
    ("trimmed_mean", {"rule_args": {"b": 1}}, "keyword arguments"),
    ("centered_clipping", {}, "strategy 'centered_clipping'.*tau"),
    ("balance", {"rule_args": {"gama": 0.3}}, "gama"),
])
def test_make_server_strategy_names_what_is_wrong(name: str, kwargs: dict,
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ours.make_server_strategy(name, **kwargs)


# ------------------------------------------------- client counts: the server-side budget
#: Server rules (with and without a budget) whose ``check_client_count`` must agree with
#: what ``aggregate_clients`` accepts.
COUNT_RULES: list[dict[str, Any]] = [
    {"name": "multi_krum", "f": 2, "m": 3},
    {"name": "krum", "f": 1},
    {"name": "bulyan", "f": 1},
    {"name": "bulyan", "f": 1, "selection": "multi_krum"},
    {"name": "trimmed_mean", "b": 2},
    {"name": "nnm", "f": 2, "inner": {"name": "trimmed_mean", "b": 1}},
    {"name": "meamed", "f": 2},
    {"name": "monna", "f": 2},
    {"name": "caf", "f": 1},
    {"name": "mda", "f": 1, "max_subsets": 8},
    {"name": "arc", "f": 2, "inner": {"name": "krum", "f": 1}},
    {"name": "static_clipping", "c": 1.0, "inner": {"name": "trimmed_mean", "b": 2}},
    {"name": "bucketing", "s": 2, "inner": {"name": "krum", "f": 1}},
    {"name": "median"},
    {"name": "centered_clipping", "tau": 1.0},
]


@pytest.mark.parametrize("spec", COUNT_RULES, ids=lambda spec: "-".join(map(str, spec.values())))
def test_check_client_count_refuses_exactly_the_counts_aggregate_clients_refuses(
    spec: dict[str, Any],
) -> None:
    """The budget check a strategy runs before the round must not drift from the rule's
    server form: for 1..12 clients, the hook raises exactly when aggregating raises."""
    generator = torch.Generator().manual_seed(5)
    for n in range(1, 13):
        rule = ours.RobustFedAvg(dict(spec)).rule
        try:
            rule.check_client_count(n)
            hook_refuses = False
        except ValueError:
            hook_refuses = True
        try:
            rule.aggregate_clients(torch.zeros(4, dtype=torch.float64),
                                   torch.randn(n, 4, generator=generator, dtype=torch.float64))
            aggregate_refuses = False
        except ValueError:
            aggregate_refuses = True
        assert hook_refuses == aggregate_refuses, (spec, n)


#: (label, strategy factory taking FedAvg options, clients needed per round by hand:
#: Krum family 2f + 3 and m <= n - f, Bulyan 4f + 3, trimmed mean 2b + 1, NNM / MeaMed /
#: MoNNA 2f + 1).
NAMED_BUDGETS: list[tuple[str, Callable[..., Any], int]] = [
    ("MultiKrum", lambda **o: ours.MultiKrum(num_malicious_nodes=2, **o), 7),
    ("MultiKrum_select_5", lambda **o: ours.MultiKrum(num_malicious_nodes=1,
                                                      num_nodes_to_select=5, **o), 6),
    ("Krum", lambda **o: ours.Krum(num_malicious_nodes=2, **o), 7),
    ("Bulyan", lambda **o: ours.Bulyan(num_malicious_nodes=1, **o), 7),
    ("Bulyan_select_multikrum", lambda **o: ours.Bulyan(
        num_malicious_nodes=2, selection_rule=select_multikrum, **o), 11),
    ("TrimmedMean_b", lambda **o: ours.TrimmedMean(b=3, **o), 7),
    ("NNMRobust", lambda **o: ours.NNMRobust(num_malicious_nodes=2, **o), 5),
    ("NNMRobust_trimmed", lambda **o: ours.NNMRobust(
        num_malicious_nodes=1, rule={"name": "trimmed_mean", "b": 2}, **o), 5),
    ("RobustFedAvg_meamed", lambda **o: ours.RobustFedAvg(
        {"name": "meamed", "num_malicious_nodes": 3}, **o), 7),
    ("make_server_strategy_monna", lambda **o: ours.make_server_strategy(
        "monna", num_malicious_nodes=2, **o), 5),
]
CONNECTED = 20


def _fraction_sampling(count: int) -> float:
    """A fraction_train under which FedAvg samples exactly ``count`` of CONNECTED nodes."""
    return (count + 0.5) / CONNECTED


@pytest.mark.parametrize(("label", "factory", "needed"), NAMED_BUDGETS,
                         ids=[case[0] for case in NAMED_BUDGETS])
def test_a_budget_the_sampled_clients_cannot_fit_is_refused_by_fraction_and_by_min_nodes(
    label: str, factory: Callable[..., Any], needed: int,
) -> None:
    too_few = [factory(fraction_train=_fraction_sampling(needed - 1), min_train_nodes=2),
               factory(fraction_train=0.01, min_train_nodes=needed - 1)]
    for strategy in too_few:
        with pytest.raises(ValueError) as refused:
            strategy.check_train_budget(CONNECTED)
        message = str(refused.value)
        assert f"needs at least {needed} clients per round" in message, message
        assert f"each round samples {needed - 1} clients" in message, message
        assert f"min_train_nodes to {needed}" in message, message
    enough = [factory(fraction_train=_fraction_sampling(needed), min_train_nodes=2),
              factory(fraction_train=0.01, min_train_nodes=needed),
              factory(fraction_train=0.0)]  # no training, nothing to check
    for strategy in enough:
        strategy.check_train_budget(CONNECTED)


def test_a_budget_beyond_the_connected_nodes_says_to_connect_more_or_lower_it() -> None:
    strategy = ours.Bulyan(num_malicious_nodes=2, fraction_train=1.0)
    with pytest.raises(ValueError, match=r"needs at least 11 clients per round, but each "
                       r"round samples 10 .*connect at least 11 nodes .*lower "
                       r"num_malicious_nodes"):
        strategy.check_train_budget(10)


def counting_app(failing: Sequence[int] = (), nan: Sequence[int] = ()) -> tuple[Any, list]:
    """A ClientApp that adds ``partition-id + 1`` to the model (partitions in ``failing``
    raise, those in ``nan`` return NaNs), and the list of partitions it trained."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    trained: list[int] = []

    @app.train()
    def train(msg: Message, context: Any) -> Message:
        partition = int(context.node_config["partition-id"])
        trained.append(partition)
        if partition in failing:
            raise RuntimeError("disk on fire")
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        shift = np.nan if partition in nan else partition + 1.0
        metrics = MetricRecord({"num-examples": 10 + partition})
        return Message(RecordDict({"arrays": ArrayRecord([a + shift for a in arrays]),
                                   "metrics": metrics}), reply_to=msg)

    return app, trained


def start_locally(strategy: Any, app: Any, num_nodes: int, num_rounds: int = 1) -> Any:
    """``strategy.start`` on an in-process grid of ``num_nodes`` nodes running ``app``."""
    from flwr_tempered.runtime.local_grid import LocalGrid

    grid = LocalGrid(app, num_nodes)
    return strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(3, np.float32)]),
                          num_rounds=num_rounds)


def test_the_issues_stall_case_fails_before_round_1_naming_the_budget_and_the_fix() -> None:
    """MultiKrum(num_malicious_nodes=2) with the template's sampling (5 of 10 clients per
    round) used to refuse every round and end with an empty model."""
    app, trained = counting_app()
    strategy = ours.MultiKrum(num_malicious_nodes=2, fraction_train=0.5)
    with pytest.raises(ValueError) as refused:
        start_locally(strategy, app, num_nodes=10)
    assert str(refused.value) == (
        "MultiKrum: num_malicious_nodes = 2, num_nodes_to_select = 1 needs at least 7 clients "
        "per round, but each round samples 5 clients (fraction_train = 0.5 of the 10 "
        "connected nodes, at least min_train_nodes = 2); to fix it, raise fraction_train to "
        "0.7 or min_train_nodes to 7, or lower num_malicious_nodes")
    assert trained == []  # no client trained: the run stopped before round 1


def test_start_waits_for_min_available_nodes_before_checking_the_budget() -> None:
    """A simulation registers its SuperNodes just after the ServerApp starts: the check
    must not take the zero nodes seen first for the federation."""
    from flwr_tempered.runtime.local_grid import LocalGrid

    class LateGrid(LocalGrid):
        looks = 0

        def get_node_ids(self) -> list[int]:
            self.looks += 1
            return [] if self.looks <= 2 else list(self.contexts)

    app, trained = counting_app()
    with pytest.raises(ValueError, match=r"samples 5 clients .*of the 10 connected nodes"):
        ours.MultiKrum(num_malicious_nodes=2, fraction_train=0.5).start(
            grid=LateGrid(app, 10), initial_arrays=ArrayRecord([np.zeros(3, np.float32)]))
    assert trained == []


def test_configure_train_checks_the_budget_too_and_only_warns_after_the_first_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Wrappers (Flower's differential-privacy strategies) call configure_train, not our
    start: the first round configured raises; a later one whose sample shrank warns."""
    from flwr.app import ConfigRecord

    from flwr_tempered.runtime.local_grid import LocalGrid

    app, _ = counting_app()
    arrays = ArrayRecord([np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="needs at least 7 clients per round"):
        ours.Krum(num_malicious_nodes=2, fraction_train=0.5).configure_train(
            1, arrays, ConfigRecord(), LocalGrid(app, 10))
    strategy = ours.Krum(num_malicious_nodes=2, fraction_train=0.7)
    assert len(list(strategy.configure_train(1, arrays, ConfigRecord(), LocalGrid(app, 10)))) == 7
    with flower_log(caplog):
        messages = strategy.configure_train(2, arrays, ConfigRecord(), LocalGrid(app, 8))
    assert len(list(messages)) == 5
    assert any("round 2" in r.getMessage() and "needs at least 7" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_a_run_whose_every_round_is_refused_ends_with_the_initial_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four of six clients fail every round, so Krum (5 needed) refuses both rounds: the
    result still holds a model, the initial one, never an empty record."""
    app, trained = counting_app(failing=(2, 3, 4, 5))
    with flower_log(caplog):
        result = start_locally(ours.Krum(num_malicious_nodes=1, fraction_evaluate=0.0), app,
                               num_nodes=6, num_rounds=2)
    assert len(trained) == 12
    assert list(result.arrays.keys()) and result.arrays.to_numpy_ndarrays()[0].tolist() == [
        0.0, 0.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("needs at least 5 replies, got 2" in line for line in warnings) == 2
    assert any("no round aggregated a model" in line for line in warnings)


def test_a_run_that_aggregates_returns_the_last_aggregate_not_the_initial_model() -> None:
    app, _ = counting_app()
    result = start_locally(ours.Median(fraction_evaluate=0.0), app, num_nodes=3)
    assert result.arrays.to_numpy_ndarrays()[0].tolist() == [2.0, 2.0, 2.0]


# --------------------------------------------------------------------- Flower's vocabulary
#: The decentralized rules' wording that must not reach a server app's logs or errors.
DECENTRALIZED = re.compile(r"own plus received|neighbou?r|\b[fmk] (?:[=+<>]|must)|\b[fm]:|\d+f\b|"
                           r"\bselection:|\(own\b")

#: One of each named strategy, with a budget that 9 clients (one failing, one NaN) fit.
SHORT_RUN_STRATEGIES: list[Callable[[], Any]] = [
    lambda: ours.Median(), lambda: ours.TrimmedMean(), lambda: ours.TrimmedMean(b=1),
    lambda: ours.GeometricMedian(), lambda: ours.Krum(num_malicious_nodes=1),
    lambda: ours.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3),
    lambda: ours.Bulyan(num_malicious_nodes=1),
    lambda: ours.Bulyan(num_malicious_nodes=1, selection_rule=select_multikrum),
    lambda: ours.CenteredClipping(tau=1.0), lambda: ours.NNMRobust(num_malicious_nodes=1),
    lambda: ours.FLTrust(lambda server_round, arrays: arrays),
    lambda: ours.make_server_strategy("meamed", num_malicious_nodes=1),
    lambda: ours.make_server_strategy("arc", rule_args={"f": 1, "inner": "median"}),
]

#: Bad parameters of every named strategy and of the by-name path.
BAD_PARAMETERS: list[Callable[[], Any]] = [
    lambda: ours.MultiKrum(num_malicious_nodes=-1),
    lambda: ours.MultiKrum(num_nodes_to_select=0),
    lambda: ours.Krum(num_malicious_nodes=1.5),  # type: ignore[arg-type]
    lambda: ours.Bulyan(num_malicious_nodes=-1),
    lambda: ours.Bulyan(selection_rule="best"),
    lambda: ours.Bulyan(selection_rule=lambda contents, f, n: contents),
    lambda: ours.Bulyan(selection_rule="repeated", selection="multi_krum"),
    lambda: ours.TrimmedMean(beta=0.7), lambda: ours.TrimmedMean(b=-1),
    lambda: ours.NNMRobust(num_malicious_nodes=-2),
    lambda: ours.NNMRobust(num_malicious_nodes=1, rule={"name": "krum", "f": -1}),
    lambda: ours.CenteredClipping(tau=-1.0), lambda: ours.GeometricMedian(iterations=0),
    lambda: ours.FLTrust(3),  # type: ignore[arg-type]
    lambda: ours.RobustFedAvg({"name": "meamed", "f": -1}),
    lambda: ours.RobustFedAvg({"name": "multi_krum", "f": 1, "m": 0}),
    lambda: ours.RobustFedAvg({"name": "meamed", "f": 1, "num_malicious_nodes": 1}),
    lambda: ours.make_server_strategy("multi_krum", f=2),
    lambda: ours.make_server_strategy("multi_krum", num_malicious_nodes=2, m=3),
    lambda: ours.make_server_strategy("meamed", f=2),
    lambda: ours.make_server_strategy("mda", rule_args={"f": -1}),
]


def _error_of(call: Callable[[], Any]) -> str:
    with pytest.raises(ValueError) as raised:
        call()
    return str(raised.value)


def test_the_decentralized_vocabulary_check_catches_the_rules_own_wording() -> None:
    """The check below can fail: the rules' messages themselves do match it."""
    from flwr_tempered import aggregators

    for call in [lambda: aggregators.MultiKrum(f=-1),
                 lambda: aggregators.MultiKrum(f=2).check_input_count(4),
                 lambda: aggregators.TrimmedMean(b=3).check_input_count(4)]:
        assert DECENTRALIZED.search(_error_of(call))


def test_server_messages_logs_and_summaries_use_flowers_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A short run of every named strategy (summary, dropped and failed replies), a round
    refused for too few replies, every refused budget and every bad parameter: nothing
    speaks of f, m, own plus received or neighbours."""
    app, _ = counting_app(failing=(0,), nan=(1,))
    with flower_log(caplog, logging.DEBUG):
        for make in SHORT_RUN_STRATEGIES:
            start_locally(make(), app, num_nodes=9)
        for _, factory, needed in NAMED_BUDGETS:
            aggregate(factory(), random_replies(needed - 1, seed=needed), random_model(
                np.random.default_rng(0)))
    texts = [r.getMessage() for r in caplog.records]
    for _, factory, needed in NAMED_BUDGETS:
        with pytest.raises(ValueError) as refused:
            factory(min_train_nodes=needed - 1).check_train_budget(needed - 1)
        texts.append(str(refused.value))
    texts += [_error_of(call) for call in BAD_PARAMETERS]
    leaks = [text for text in texts if DECENTRALIZED.search(text)]
    assert not leaks, leaks
    joined = "\n".join(texts)
    for word in ["num_malicious_nodes = 2", "num_malicious_nodes: 1",
                 "num_nodes_to_select: 3", "selection_rule: multi_krum",
                 "num_malicious_nodes=2 instead of f=2", "dropped the reply of node",
                 "needs at least 7 replies, got 6"]:
        assert word in joined, word


def test_make_server_strategy_takes_flowers_names_for_a_rules_budget() -> None:
    by_option = ours.make_server_strategy("meamed", num_malicious_nodes=2, fraction_train=0.5)
    by_rule_args = ours.make_server_strategy("meamed", rule_args={"num_malicious_nodes": 2})
    by_letter = ours.make_server_strategy("meamed", rule_args={"f": 2})
    for strategy in (by_option, by_rule_args, by_letter):
        assert isinstance(strategy, ours.RobustFedAvg)
        assert strategy.rule.config() == {"name": "meamed", "f": 2}
        assert strategy.rule_settings() == {"name": "meamed", "num_malicious_nodes": 2}
    assert by_option.fraction_train == 0.5
    multi_krum = ours.make_server_strategy("multi_krum", num_malicious_nodes=2,
                                           num_nodes_to_select=3)
    assert isinstance(multi_krum, ours.MultiKrum)
    assert (multi_krum.rule.f, multi_krum.rule.m) == (2, 3)


def test_bulyan_takes_flowers_selection_rule() -> None:
    assert ours.Bulyan(1, selection_rule=select_multikrum).rule.selection == "multi_krum"
    assert ours.Bulyan(1, selection_rule="multi_krum").rule.selection == "multi_krum"
    assert ours.Bulyan(1).rule.selection == "repeated"
    assert ours.Bulyan(1, selection_rule=None).selection_rule == "repeated"

    def custom(contents: list, f: int, n: int) -> list:
        return contents

    with pytest.raises(ValueError, match=r"selection_rule must be .*got custom"):
        ours.Bulyan(1, selection_rule=custom)


# ------------------------------------------------------------------------- summary tree
@pytest.mark.parametrize(("strategy", "weighted"), [
    (ours.Median(), False), (ours.TrimmedMean(beta=0.2), False),
    (ours.Krum(num_malicious_nodes=1), False), (ours.GeometricMedian(), False),
    (ours.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3), True),
    (ours.RobustFedAvg("mean"), True), (ours.NNMRobust(num_malicious_nodes=1), True),
    (ours.NNMRobust(num_malicious_nodes=1, rule="median"), False),
])
def test_summary_tree_closes_every_branch_and_names_weights_only_where_used(
    strategy: Any, weighted: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    with flower_log(caplog):
        strategy.summary()
    lines = [r.getMessage() for r in caplog.records]
    headers = [i for i, line in enumerate(lines) if "──>" in line]
    assert lines[headers[-1]].startswith("\t└──>")
    assert all(lines[i].startswith("\t├──>") for i in headers[:-1])
    for start, end in zip(headers, [*headers[1:], len(lines)], strict=True):
        branches = lines[start + 1:end]
        assert branches, lines[start]
        assert all("├── " in line for line in branches[:-1]), branches
        assert "└── " in branches[-1], branches
    text = "\n".join(lines)
    assert ("Weighted by: 'num-examples'" in text) is weighted
    assert ("Metrics averaged by: 'num-examples'" in text) is not weighted


def test_a_filter_that_lets_no_reply_in_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """BALANCE with a radius no reply can enter keeps the global model: a warning, every
    such round, instead of a run that only looks like training."""
    rng = np.random.default_rng(3)
    global_model = random_model(rng, centre=1.0)
    strategy = ours.RobustFedAvg({"name": "balance", "total_rounds": 5, "gamma": 1e-9})
    with flower_log(caplog):
        arrays, _ = aggregate(strategy, random_replies(4, seed=4), global_model)
    assert arrays is not None
    assert_same_model(arrays, record_of(global_model))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("accepted none of the 4 replies in round 1" in w for w in warnings), warnings
    caplog.clear()
    wide = ours.RobustFedAvg({"name": "balance", "total_rounds": 5, "gamma": 1e9})
    with flower_log(caplog):
        aggregate(wide, random_replies(4, seed=4), global_model)
    assert not any("accepted none" in r.getMessage() for r in caplog.records)
