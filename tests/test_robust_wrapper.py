"""``robust(strategy, rule=...)``: Flower's server optimizers and FedAvg subclasses with a
robust rule in place of the weighted mean, checked against server steps computed by hand.

Every expected value below is written out from the formulas of Flower's strategies
(FedAdam, FedYogi, FedAdagrad: Reddi et al. 2021 as ``flwr.serverapp.strategy`` implements
them, with its bias-corrected ``eta_norm`` for FedAdam; FedAvgM: heavy-ball momentum on
the pseudo-gradient ``current - aggregate``) applied to a coordinate-wise median or trimmed
mean taken by hand. One client is always far off, so an aggregate that is the mean, not
the rule, misses every expected value.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as flower
from test_server_strategies import task_identity, train_reply  # noqa: F401 (autouse fixture)

from flwr_tempered.aggregators import get_rule
from flwr_tempered.clients import malicious_clientapp
from flwr_tempered.runtime.local_grid import LocalGrid, run_locally
from flwr_tempered.strategies import RobustFedAvg, make_flower_strategy, robust

#: The global model of round 1 and the clients' models of rounds 1 and 2 (two arrays of
#: different shapes); client 3 is the outlier.
GLOBAL = {"w": np.array([0.5, -1.0, 2.0, 0.0], np.float32), "b": np.array([0.25, -0.5], np.float32)}
ROUNDS = (
    [{"w": [0.7, -0.9, 1.8, 0.1], "b": [0.3, -0.4]},
     {"w": [0.6, -1.2, 2.1, -0.2], "b": [0.2, -0.6]},
     {"w": [90.0, 80.0, -70.0, 60.0], "b": [-50.0, 40.0]}],
    [{"w": [0.9, -0.6, 1.5, 0.4], "b": [0.5, -0.2]},
     {"w": [0.65, -0.8, 1.9, 0.2], "b": [0.1, -0.3]},
     {"w": [-90.0, -80.0, 70.0, -60.0], "b": [50.0, -40.0]}],
)


def as_arrays(model: dict[str, Any]) -> dict[str, np.ndarray]:
    return {key: np.asarray(value, np.float32) for key, value in model.items()}


def replies_of(models: Sequence[dict[str, Any]], num_examples: Sequence[int] = (10, 20, 30)
               ) -> list[Message]:
    return [train_reply(node, as_arrays(model), num_examples=count, loss=float(node))
            for node, (model, count) in enumerate(zip(models, num_examples, strict=True), 1)]


def trimmed_mean_by_hand(models: Sequence[dict[str, Any]], b: int) -> dict[str, np.ndarray]:
    """Each coordinate: the mean of the values left after cutting the ``b`` lowest and
    ``b`` highest."""
    return {key: np.sort(np.stack([np.asarray(m[key], np.float64) for m in models]),
                         axis=0)[b:len(models) - b].mean(axis=0) for key in models[0]}


def median_by_hand(models: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Three clients: the middle value of each coordinate."""
    assert len(models) == 3
    return trimmed_mean_by_hand(models, 1)


def grid_of(num_nodes: int) -> LocalGrid:
    """A grid of ``num_nodes`` nodes for ``configure_train`` (nothing is sent)."""
    return LocalGrid(ClientApp(), num_nodes)


def run_two_rounds(strategy: Any, models: Sequence[Sequence[dict[str, Any]]] = ROUNDS
                   ) -> list[dict[str, np.ndarray]]:
    """``configure_train`` then ``aggregate_train`` for each round, as ``start`` does; the
    global model after each round."""
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    grid = grid_of(3)
    results = []
    for server_round, round_models in enumerate(models, 1):
        list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        aggregated, _ = strategy.aggregate_train(server_round, replies_of(round_models))
        assert aggregated is not None
        arrays = aggregated
        results.append({key: array.numpy() for key, array in aggregated.items()})
    return results


# ------------------------------------------------------------------ server steps by hand
#: ``(global model, aggregate, optimizer state, round) -> new global model``.
Step = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any], int],
                dict[str, np.ndarray]]
#: ``(delta = aggregate - global, this array's state, round) -> change of the array``.
ArrayUpdate = Callable[[np.ndarray, dict[str, Any], int], np.ndarray]


def per_array(update: ArrayUpdate) -> Step:
    """The server step applying ``update`` to each named array with its own state."""
    def step(x: dict[str, np.ndarray], aggregate: dict[str, np.ndarray], state: dict[str, Any],
             server_round: int) -> dict[str, np.ndarray]:
        return {key: x[key] + update(aggregate[key] - x[key], state.setdefault(key, {}),
                                     server_round) for key in x}
    return step


def adam(eta: float, beta_1: float, beta_2: float, tau: float) -> Step:
    def update(delta: np.ndarray, s: dict[str, Any], server_round: int) -> np.ndarray:
        s["m"] = beta_1 * s.get("m", 0.0) + (1 - beta_1) * delta
        s["v"] = beta_2 * s.get("v", 0.0) + (1 - beta_2) * delta ** 2
        eta_norm = eta * np.sqrt(1 - beta_2 ** (server_round + 1)) / (
            1 - beta_1 ** (server_round + 1))
        return eta_norm * s["m"] / (np.sqrt(s["v"]) + tau)
    return per_array(update)


def yogi(eta: float, beta_1: float, beta_2: float, tau: float) -> Step:
    def update(delta: np.ndarray, s: dict[str, Any], server_round: int) -> np.ndarray:
        s["m"] = beta_1 * s.get("m", 0.0) + (1 - beta_1) * delta
        v = s.get("v", np.zeros_like(delta))
        s["v"] = v - (1 - beta_2) * delta ** 2 * np.sign(v - delta ** 2)
        return eta * s["m"] / (np.sqrt(s["v"]) + tau)
    return per_array(update)


def adagrad(eta: float, tau: float) -> Step:
    def update(delta: np.ndarray, s: dict[str, Any], server_round: int) -> np.ndarray:
        s["v"] = s.get("v", 0.0) + delta ** 2
        return eta * delta / (np.sqrt(s["v"]) + tau)
    return per_array(update)


def heavy_ball(learning_rate: float, momentum: float) -> Step:
    """FedAvgM: the pseudo-gradient ``-delta``, momentum from the second round on."""
    def update(delta: np.ndarray, s: dict[str, Any], server_round: int) -> np.ndarray:
        s["velocity"] = -delta if server_round == 1 else momentum * s["velocity"] - delta
        return -learning_rate * s["velocity"]
    return per_array(update)


#: (Flower strategy, its server step by hand), each with non-default settings.
OPTIMIZERS: dict[str, tuple[Callable[[], flower.FedAvg], Step]] = {
    "FedAdam": (lambda: flower.FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01),
                adam(0.05, 0.8, 0.95, 0.01)),
    "FedYogi": (lambda: flower.FedYogi(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01),
                yogi(0.05, 0.8, 0.95, 0.01)),
    "FedAdagrad": (lambda: flower.FedAdagrad(eta=0.05, tau=0.01), adagrad(0.05, 0.01)),
    "FedAvgM": (lambda: flower.FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
                heavy_ball(0.7, 0.9)),
}


def expected_rounds(step: Step) -> list[dict[str, np.ndarray]]:
    """The server step of each round on the median of the round's replies."""
    x = {key: value.astype(np.float64) for key, value in GLOBAL.items()}
    state: dict[str, Any] = {}
    out = []
    for server_round, models in enumerate(ROUNDS, 1):
        x = step(x, median_by_hand(models), state, server_round)
        out.append(x)
    return out


def assert_models_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_server_optimizer_steps_from_the_median_not_the_mean(name: str) -> None:
    build, step = OPTIMIZERS[name]
    strategy = robust(build(), rule="median")
    results = run_two_rounds(strategy)
    for actual, expected in zip(results, expected_rounds(step), strict=True):
        assert_models_close(actual, expected)
    # The optimizer's own state is the strategy's: FedOpt's moments, FedAvgM's velocity.
    assert isinstance(strategy, type(build())) and isinstance(strategy, RobustFedAvg)
    assert [entry["accepted"] for entry in strategy.history] == [3, 3]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_plain_flower_optimizer_is_pulled_by_the_outlier(name: str) -> None:
    """The same two rounds without ``robust``: far from the robust result (the check above
    can tell the two apart)."""
    build, step = OPTIMIZERS[name]
    plain = run_two_rounds(build())[-1]
    assert not np.allclose(plain["w"], expected_rounds(step)[-1]["w"], atol=1e-3)


def test_fedadam_with_a_trimmed_mean_and_a_malformed_reply() -> None:
    """Five replies, one with a NaN: dropped as RobustFedAvg drops it, and counted against
    the budget b = 2 (a provably faulty sender); the trimmed mean with the b = 1 left, of
    the other four, is the mean of their middle two; the FedAdam step is taken from it."""
    strategy = robust(flower.FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01),
                      rule="trimmed_mean", b=2)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), grid_of(5)))
    broken = as_arrays(ROUNDS[0][0])
    broken["w"][2] = np.nan
    valid = [*ROUNDS[0], ROUNDS[1][0]]
    replies = [*replies_of(valid, (10, 20, 30, 40)), train_reply(5, broken)]
    aggregated, metrics = strategy.aggregate_train(1, replies)
    assert aggregated is not None and metrics is not None
    expected = adam(0.05, 0.8, 0.95, 0.01)(
        {k: v.astype(np.float64) for k, v in GLOBAL.items()}, trimmed_mean_by_hand(valid, 1),
        {}, 1)
    assert_models_close({k: a.numpy() for k, a in aggregated.items()}, expected)
    assert [node for node, _ in strategy.history[0]["dropped"]] == [5]
    # FedAvg's metric aggregation over the accepted replies only.
    assert metrics["loss"] == pytest.approx((1 * 10 + 2 * 20 + 3 * 30 + 4 * 40) / 100)


def test_fedprox_keeps_its_proximal_term_and_aggregates_with_the_rule() -> None:
    strategy = robust(flower.FedProx(proximal_mu=0.3), rule="median")
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid_of(3)))
    assert [m.content["config"]["proximal-mu"] for m in messages] == [0.3] * 3
    aggregated, _ = strategy.aggregate_train(1, replies_of(ROUNDS[0]))
    assert aggregated is not None
    assert_models_close({k: a.numpy() for k, a in aggregated.items()},
                        median_by_hand(ROUNDS[0]))


class HalfStep(flower.FedAvg):
    """A user's strategy: half a step from the global model towards FedAvg's aggregate."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Any:
        self.sent = {k: a.numpy() for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        aggregated, metrics = super().aggregate_train(server_round, replies)
        return ArrayRecord({k: Array((self.sent[k] + a.numpy()) / 2)
                            for k, a in aggregated.items()}), metrics


class OwnMean(flower.FedAvg):
    """A user's strategy that averages by itself (never calls FedAvg.aggregate_train)."""

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        records = [m.content["arrays"] for m in replies]
        return ArrayRecord({k: Array(np.mean([r[k].numpy() for r in records], axis=0))
                            for k in records[0]}), None


def test_a_user_subclass_post_processes_the_robust_aggregate() -> None:
    strategy = robust(HalfStep(), rule="median")
    first = run_two_rounds(strategy)[0]
    expected = {k: (GLOBAL[k] + v) / 2 for k, v in median_by_hand(ROUNDS[0]).items()}
    assert_models_close(first, expected)


def test_a_subclass_that_bypasses_fedavgs_mean_fails_instead_of_training_unprotected() -> None:
    strategy = robust(OwnMean(), rule="median")
    with pytest.raises(RuntimeError, match=r"OwnMean\.aggregate_train did not call"):
        run_two_rounds(strategy)


# ------------------------------------------------------------- differential privacy
def clipped(models: Sequence[dict[str, Any]], norm: float) -> list[dict[str, np.ndarray]]:
    """Flower's fixed clipping by hand: each update ``model - global`` (all arrays as one
    vector) scaled by ``min(1, norm / ||update||)``."""
    out = []
    for model in models:
        update = {k: np.asarray(model[k], np.float64) - GLOBAL[k] for k in GLOBAL}
        length = np.sqrt(sum(float(np.sum(u ** 2)) for u in update.values()))
        scale = min(1.0, norm / length)
        out.append({k: GLOBAL[k] + scale * u for k, u in update.items()})
    return out


def test_server_side_dp_clips_then_the_rule_aggregates_then_fedadam_steps() -> None:
    """``DifferentialPrivacyServerSideFixedClipping(robust(FedAdam(...)), ...)``: clipping
    norm 0.3 clips the outlier and one honest client, noise multiplier 0."""
    inner = robust(flower.FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01), rule="median")
    dp = flower.DifferentialPrivacyServerSideFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=0.3, num_sampled_clients=3)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(dp.configure_train(1, arrays, ConfigRecord(), grid_of(3)))
    aggregated, _ = dp.aggregate_train(1, replies_of(ROUNDS[0]))
    assert aggregated is not None
    expected = adam(0.05, 0.8, 0.95, 0.01)(
        {k: v.astype(np.float64) for k, v in GLOBAL.items()},
        median_by_hand(clipped(ROUNDS[0], 0.3)), {}, 1)
    assert_models_close({k: a.numpy() for k, a in aggregated.items()}, expected)


@pytest.mark.parametrize("wrap", [
    lambda s: flower.DifferentialPrivacyClientSideFixedClipping(s, 0.0, 10.0, 3),
    lambda s: flower.DifferentialPrivacyServerSideAdaptiveClipping(
        s, 0.0, 3, initial_clipping_norm=1e3),
], ids=["client_side_fixed", "server_side_adaptive"])
def test_other_dp_wrappers_pass_the_replies_through_the_rule(wrap: Callable[[Any], Any]) -> None:
    """No clipping happens (client-side: clients would clip; adaptive: the norm is above
    every update) and no noise: the wrapped strategy's median comes out."""
    dp = wrap(robust(flower.FedAvg(), rule="median"))
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(dp.configure_train(1, arrays, ConfigRecord(), grid_of(3)))
    aggregated, _ = dp.aggregate_train(1, replies_of(ROUNDS[0]))
    assert aggregated is not None
    assert_models_close({k: a.numpy() for k, a in aggregated.items()},
                        median_by_hand(ROUNDS[0]))


# -------------------------------------------------------------------- settings, errors
def test_the_wrapped_strategy_keeps_its_settings_and_is_not_modified() -> None:
    original = flower.FedAdam(fraction_train=0.5, min_train_nodes=3, eta=0.02, tau=0.5)
    wrapped = robust(original, rule="multi_krum", num_malicious_nodes=1,
                     num_nodes_to_select=2)
    assert (wrapped.fraction_train, wrapped.min_train_nodes, wrapped.eta, wrapped.tau) == (
        0.5, 3, 0.02, 0.5)
    assert wrapped.rule.config() == get_rule("multi_krum", f=1, m=2).config()
    assert type(original) is flower.FedAdam and not hasattr(original, "rule")


def test_a_rule_by_name_with_its_arguments_a_mapping_and_a_rule_object() -> None:
    for rule, options in (("mda", {"f": 1}), ({"name": "mda", "f": 1}, {}),
                          (get_rule("mda", f=1), {})):
        strategy = robust(flower.FedAvgM(), rule=rule, **options)
        assert strategy.rule.config() == get_rule("mda", f=1).config()


def test_summary_lists_the_optimizer_and_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        robust(flower.FedAdam(), rule="trimmed_mean", beta=0.3).summary()
    text = caplog.text
    assert "FedOpt settings" in text and "trimmed_mean" in text and "0.3" in text
    assert "RobustFedAdam" in text


@pytest.mark.parametrize(("strategy", "rule", "options", "message"), [
    (object(), "median", {}, r"expected a Flower strategy derived from FedAvg \(.*\), got object"),
    (flower.DifferentialPrivacyServerSideFixedClipping(flower.FedAvg(), 1.0, 1.0, 3),
     "median", {}, r"make the inner one robust and wrap that"),
    (flower.FedMedian(), "median", {}, "Flower's FedMedian aggregates by itself"),
    (flower.Krum(), "median", {}, "Flower's Krum aggregates by itself"),
    (robust(flower.FedAvg(), rule="median"), "median", {}, "already aggregates"),
    (flower.FedAdam(), "nope", {}, "unknown rule 'nope'; choose one of median"),
    (flower.FedAdam(), "fedavg", {}, "'fedavg' is Flower's own averaging"),
    (flower.FedAdam(), "median", {"tau": 1.0}, "tau is an option of FedAdam, not of the rule"),
    (flower.FedAdam(), "median", {"fraction_train": 0.5}, "fraction_train is an option of"),
    (flower.FedAdam(), "median", {"beta": 0.1}, "rule 'median': unexpected keyword"),
    (flower.FedAdam(), "mda", {"g": 1}, "has no parameter"),
    (flower.FedAdam(), get_rule("median"), {"b": 1}, "given with the rule object"),
], ids=["object", "dp_wrapper", "fedmedian", "krum", "already_robust", "unknown_rule",
        "fedavg", "strategy_option", "fedavg_option", "wrong_option", "wrong_rule_arg",
        "rule_object_with_options"])
def test_clear_errors(strategy: Any, rule: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        robust(strategy, rule=rule, **options)


def test_a_rule_setting_that_would_overwrite_the_strategys_attribute_is_refused() -> None:
    class WithBeta(flower.FedAvg):
        def __init__(self) -> None:
            super().__init__()
            self.beta = "the user's"

    with pytest.raises(ValueError, match="both define beta"):
        robust(WithBeta(), rule="trimmed_mean", beta=0.2)


def test_centered_clippings_tau_is_the_rules_not_fedadams() -> None:
    strategy = robust(flower.FedAdam(tau=1e-3), rule="centered_clipping", tau=2.0)
    assert strategy.tau == 1e-3 and strategy.rule.config()["tau"] == 2.0


# ------------------------------------------------------------------------ end to end
FEATURES = 5


def blobs(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes (labels 0 and 1) centred at -1 and +1 in every feature."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, samples)
    return rng.normal(size=(samples, FEATURES)) + (2.0 * labels[:, None] - 1), labels


def zero_model() -> ArrayRecord:
    """Logistic regression ``sigmoid(x @ w + b)``, all zeros."""
    return ArrayRecord({"w": Array(np.zeros(FEATURES)), "b": Array(np.zeros(1))})


honest = ClientApp()


@honest.train()
def train(msg: Message, context: Context) -> Message:
    """Ten full-batch gradient steps of the logistic loss on this partition's 64 points."""
    w, b = (msg.content["arrays"][key].numpy().copy() for key in ("w", "b"))
    points, labels = blobs(64, seed=int(context.node_config["partition-id"]))
    for _ in range(10):
        error = 1.0 / (1.0 + np.exp(-(points @ w + b))) - labels
        w -= 0.5 * points.T @ error / len(labels)
        b -= 0.5 * error.mean(keepdims=True)
    arrays = ArrayRecord({"w": Array(w), "b": Array(b)})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 64})}),
                   reply_to=msg)


def final_accuracy(strategy: flower.FedAvg) -> float:
    """Three rounds on 10 nodes, 3 of them flipping and scaling their update by 4."""
    attacked = malicious_clientapp(honest, {"name": "sign_flip", "scale": 4.0},
                                   nodes=[0, 1, 2], view="own")
    points, labels = blobs(500, seed=1000)
    accuracy: dict[int, float] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            scores = points @ arrays["w"].numpy() + arrays["b"].numpy()
            accuracy[server_round] = float(np.mean((scores > 0) == labels))
            return MetricRecord({"accuracy": accuracy[server_round]})

        result = strategy.start(grid=grid, num_rounds=3, evaluate_fn=evaluate,
                                initial_arrays=zero_model())
        assert list(result.arrays.keys()) == ["w", "b"]  # the final model is never empty

    run_locally(server, attacked, 10)
    return accuracy[3]


def test_robust_fedadam_holds_where_fedadam_follows_the_attackers() -> None:
    """FedAdam steps along the mean update, which three sign-flipping attackers reverse;
    with ``trimmed_mean`` (beta 0.3: three cut from each tail) it steps along the honest
    clients' update."""
    logging.getLogger("flwr").setLevel(logging.ERROR)

    def fedadam() -> flower.FedAdam:
        return flower.FedAdam(fraction_evaluate=0.0, eta=0.1)

    robust_accuracy = final_accuracy(robust(fedadam(), rule="trimmed_mean", beta=0.3))
    plain_accuracy = final_accuracy(fedadam())
    assert robust_accuracy > 0.9, robust_accuracy
    assert plain_accuracy < 0.5, plain_accuracy


def test_median_of_the_hand_fixture_is_what_flowers_fedmedian_returns() -> None:
    """The hand median used throughout is Flower's coordinate-wise median (a guard on the
    fixture itself)."""
    aggregated, _ = flower.FedMedian().aggregate_train(1, copy.deepcopy(replies_of(ROUNDS[0])))
    assert aggregated is not None
    assert_models_close({k: a.numpy() for k, a in aggregated.items()},
                        median_by_hand(ROUNDS[0]))



def test_a_robust_strategy_pickles_and_aggregates_the_same_after() -> None:
    strategy = robust(flower.FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01),
                      rule="median")
    restored = pickle.loads(pickle.dumps(strategy))
    assert type(restored) is type(strategy)
    assert_models_close(run_two_rounds(restored)[-1],
                        expected_rounds(OPTIMIZERS["FedAdam"][1])[-1])


# ------------------------------------------------------------------- by run-config name
def test_make_flower_strategy_builds_flowers_strategy_and_makes_it_robust() -> None:
    strategy = make_flower_strategy(
        "fedadam+multi_krum", rule_args={"num_malicious_nodes": 1, "num_nodes_to_select": 2},
        eta=0.02, fraction_train=0.5)
    assert isinstance(strategy, flower.FedAdam) and isinstance(strategy, RobustFedAvg)
    assert (strategy.eta, strategy.fraction_train) == (0.02, 0.5)
    assert strategy.rule.config() == get_rule("multi_krum", f=1, m=2).config()
    assert type(make_flower_strategy("fedyogi", eta=0.02)) is flower.FedYogi


@pytest.mark.parametrize(("name", "rule_args", "options", "message"), [
    ("fedmedian+median", None, {}, "unknown Flower strategy 'fedmedian' in"),
    ("fedadam", {"b": 1}, {}, "has no rule; name one, e.g. 'fedadam\\+median'"),
    ("fedadam+median", None, {"etaa": 0.1}, "strategy 'fedadam\\+median': .*etaa"),
    ("fedadam+nope", None, {}, "unknown rule 'nope'"),
])
def test_make_flower_strategy_errors(name: str, rule_args: dict[str, Any] | None,
                                     options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_flower_strategy(name, rule_args, **options)


def test_the_server_assisted_app_builds_a_robust_fedadam_from_its_run_config() -> None:
    """The robustness table's ``fedadam+median``-style rows (strategy-args: FedAdam's
    options, the rule's in ``rule_args``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "simulations"
                           / "server_assisted"))
    from server_assisted.server_app import build_strategy

    config = {"strategy": "fedadam+trimmed_mean", "fraction-train": 1.0,
              "strategy-args": json.dumps({"eta": 0.003, "rule_args": {"beta": 0.3}})}
    strategy = build_strategy(Context(run_id=1, node_id=0, node_config={},
                                      state=RecordDict(), run_config=config))
    assert isinstance(strategy, flower.FedAdam) and isinstance(strategy, RobustFedAvg)
    assert (strategy.eta, strategy.fraction_evaluate, strategy.beta) == (0.003, 0.0, 0.3)
