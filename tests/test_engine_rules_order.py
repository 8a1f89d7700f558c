"""The batched order-statistic, Krum, geometric-median and bucketing rules give, row for
row, what the per-node rule objects give on the same inputs, statistics included.

Each test builds a chunk of nodes with different neighbourhood sizes (1 to K present
slots, scattered among the padded ones), some received rows non-finite, some inputs
refused upstream, and calls one per-node rule object per node the way
:class:`~flwr_tempered.engine.contracts.PerNodeRule` does.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import zlib
from typing import Any

import pytest
import torch
from torch import Tensor

import flwr_tempered.engine.rules_order as rules_order
from flwr_tempered.aggregators import Bucketing, Rule, get_rule
from flwr_tempered.engine.contracts import BatchedRule, PerNodeRule, RuleInputs, batched_rule_class

# The averaging-family batched rules, when they exist, serve as bucketing's inner rules.
if importlib.util.find_spec("flwr_tempered.engine.rules_averaging") is not None:
    importlib.import_module("flwr_tempered.engine.rules_averaging")

NUM_NODES = 40
SLOTS = 9
DIM = 6


def make_inputs(rule: Rule, generator: torch.Generator, dtype: torch.dtype, *,
                rows: int = 14, offset: float = 0.0, duplicates: bool = False,
                nodes: Tensor | None = None, round: int = 3) -> RuleInputs:
    """A random chunk whose every node's input count passes ``rule.check_input_count``.

    Degrees cycle through 1..SLOTS; a degree the rule refuses is made acceptable with
    refused inputs (which the per-node rule counts), so small neighbourhoods with large
    budgets reach the rules' corner cases. About one received row in six is non-finite;
    node 0 has every received row non-finite.
    """
    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    if nodes is None:
        nodes = torch.randperm(NUM_NODES, generator=generator)[:rows]
    own = torch.randn(rows, DIM, generator=generator, dtype=torch.float64) + offset
    received = torch.zeros(rows, SLOTS, DIM, dtype=torch.float64)
    present = torch.zeros(rows, SLOTS, dtype=torch.bool)
    weights = torch.zeros(rows, SLOTS + 1, dtype=torch.float64)
    refused = torch.zeros(rows, dtype=torch.long)
    for r in range(rows):
        degree = 1 + (r * 5) % SLOTS
        extra = int(torch.randint(0, 2, (), generator=generator))
        while True:
            try:
                rule.check_input_count(degree + extra)
                break
            except ValueError:
                extra += 1
        refused[r] = extra
        slots = torch.randperm(SLOTS, generator=generator)[:degree]
        present[r, slots] = True
        spread = 0.2 + 2.0 * float(uniform())
        vectors = own[r] + spread * torch.randn(degree, DIM, generator=generator,
                                                dtype=torch.float64)
        if duplicates and degree >= 2:
            vectors[1] = vectors[0]
            vectors[-1] = own[r]
        bad = uniform(degree) < 1 / 6 if r > 0 else torch.ones(degree, dtype=torch.bool)
        for j in bad.nonzero().flatten().tolist():
            column = int(torch.randint(0, DIM, (), generator=generator))
            vectors[j, column] = (math.nan, math.inf, -math.inf)[j % 3]
        received[r, slots] = vectors
        slot_weights = uniform(degree) + 0.05
        weights[r, 1:][slots] = slot_weights / slot_weights.sum() * (0.3 + 0.6 * uniform())
        weights[r, 0] = 1.0 - weights[r, 1:].sum()
    return RuleInputs(nodes=nodes, own=own.to(dtype), received=received.to(dtype),
                      present=present, weights=weights.to(dtype), refused=refused,
                      round=round)


def per_node(rules: dict[int, Rule], inputs: RuleInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """What one per-node rule object per position gives (the per-node runtime's call)."""
    fallback = PerNodeRule(lambda _: get_rule("mean"), NUM_NODES, torch.device("cpu"))
    fallback.rules = rules
    return fallback(inputs)


def assert_matches(batched: tuple[Tensor, dict[str, Tensor]],
                   expected: tuple[Tensor, dict[str, Tensor]], dtype: torch.dtype) -> None:
    """Outputs equal up to rounding; every per-node statistic equal (NaN where unset);
    a statistic only the batched rule reports must be NaN throughout."""
    result, stats = batched
    expected_result, expected_stats = expected
    assert result.dtype == dtype
    assert result.shape == expected_result.shape
    tolerance = 2e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(result, expected_result, rtol=tolerance, atol=tolerance)
    for key, value in expected_stats.items():
        assert key in stats, f"missing statistic {key}"
        assert stats[key].shape == value.shape, key
        torch.testing.assert_close(stats[key].double().cpu(), value, rtol=1e-4, atol=1e-6,
                                   equal_nan=True, msg=f"statistic {key}")
    for key in set(stats) - set(expected_stats):
        assert bool(stats[key].isnan().all()), f"unexpected statistic {key}"


def build(name: str, params: dict[str, Any]) -> tuple[BatchedRule, dict[int, Rule]]:
    rule = get_rule(name, **params)
    batched_class = batched_rule_class(rule)
    assert batched_class is not None, f"no batched version of {name}"
    assert batched_class.__module__ == rules_order.__name__
    batched = batched_class(rule, NUM_NODES, torch.device("cpu"))
    rules = {p: get_rule(name, **params) for p in range(NUM_NODES)}
    return batched, rules


CASES = [
    ("median", {}),
    ("trimmed_mean", {"b": 0}),
    ("trimmed_mean", {"b": 1}),
    ("trimmed_mean", {"b": 2}),
    ("geometric_median", {}),
    ("geometric_median", {"iterations": 3}),
    ("geometric_median", {"iterations": 5, "nu": 1.5}),
    ("krum", {"f": 1}),
    ("krum", {"f": 0}),
    ("multi_krum", {"f": 1, "m": 2}),
    ("multi_krum", {"f": 2, "m": 3}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "params"), CASES)
def test_batched_rule_matches_per_node_rules(name: str, params: dict[str, Any],
                                             dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(zlib.crc32(f"{name}{params}".encode()))
    batched, rules = build(name, params)
    for _ in range(2):
        inputs = make_inputs(rules[0], generator, dtype)
        assert inputs.present.sum(dim=1).unique().numel() == SLOTS  # degrees 1..K
        assert bool((inputs.refused > 0).any())
        assert_matches(batched(inputs), per_node(rules, inputs), dtype)


@pytest.mark.parametrize(("name", "params"), [("krum", {"f": 1}),
                                              ("multi_krum", {"f": 1, "m": 3}),
                                              ("median", {}), ("trimmed_mean", {"b": 1})])
def test_ties_and_far_offsets_match(name: str, params: dict[str, Any]) -> None:
    """Duplicated inputs (equal Krum scores: the earlier input wins) and float32 models
    far from the origin (the distances are recentred at the medoid)."""
    generator = torch.Generator().manual_seed(7)
    batched, rules = build(name, params)
    for offset, duplicates in ((0.0, True), (3e3, False), (3e3, True)):
        inputs = make_inputs(rules[0], generator, torch.float32, offset=offset,
                             duplicates=duplicates)
        assert_matches(batched(inputs), per_node(rules, inputs), torch.float32)


INNERS: list[Any] = [
    "mean",
    {"name": "trimmed_mean", "b": 1},
    {"name": "clipped_gossip", "tau": 1.0},
    {"name": "krum", "f": 1},
    {"name": "geometric_median", "iterations": 3},
    {"name": "centered_clipping", "tau": 0.5},
]


def run_bucketing(inner: Any, s: int, dtype: torch.dtype, *, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(11 + s)
    params = {"s": s, "inner": inner, "seed": seed}
    batched, rules = build("bucketing", params)
    assert isinstance(batched, rules_order.BatchedBucketing)
    assert isinstance(batched.rule, Bucketing)
    has_batched_inner = rules_order.batched_rule_class(batched.rule.inner) is not None
    assert (batched.inner_batched is not None) == has_batched_inner
    nodes = torch.randperm(NUM_NODES, generator=generator)[:14]
    for round in range(3):  # successive calls: the generators' streams and inner state
        # The same positions every call, in a different order and a subset the last time.
        order = torch.randperm(nodes.shape[0], generator=generator)
        chunk = nodes[order] if round < 2 else nodes[order[:9]]
        inputs = make_inputs(rules[0], generator, dtype, nodes=chunk, rows=chunk.shape[0],
                             round=round)
        expected = per_node(rules, inputs)
        assert "buckets" in expected[1]
        assert_matches(batched(inputs), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inner", INNERS)
def test_bucketing_matches_per_node_rules(inner: Any, dtype: torch.dtype) -> None:
    run_bucketing(inner, 2, dtype)


@pytest.mark.parametrize("s", [1, 3])
def test_bucketing_other_bucket_sizes(s: int) -> None:
    run_bucketing({"name": "trimmed_mean", "b": 1}, s, torch.float64, seed=17)


@pytest.mark.parametrize("inner", ["mean", {"name": "trimmed_mean", "b": 1},
                                   {"name": "clipped_gossip", "tau": 1.0},
                                   {"name": "centered_clipping", "tau": 0.5}])
def test_bucketing_inner_fallback_matches(inner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a batched inner rule, per-position inner copies run as the wrapper runs them."""
    monkeypatch.setattr(rules_order, "batched_rule_class", lambda rule: None)
    run_bucketing(inner, 2, torch.float32)
    batched, _ = build("bucketing", {"s": 2, "inner": inner})
    assert isinstance(batched, rules_order.BatchedBucketing)
    assert batched.inner_batched is None


def test_bucketing_uses_batched_inner_when_registered() -> None:
    batched, _ = build("bucketing", {"s": 2, "inner": {"name": "trimmed_mean", "b": 1}})
    assert isinstance(batched, rules_order.BatchedBucketing)
    assert isinstance(batched.inner_batched, rules_order.BatchedTrimmedMean)


def test_krum_and_multi_krum_registered_for_their_exact_classes() -> None:
    for name, params in (("krum", {"f": 1}), ("multi_krum", {"f": 1, "m": 2})):
        assert batched_rule_class(get_rule(name, **params)) is rules_order.BatchedMultiKrum


def test_comparison_detects_a_wrong_result() -> None:
    """The helper the tests rely on fails on a perturbed output or a missing statistic."""
    generator = torch.Generator().manual_seed(3)
    batched, rules = build("trimmed_mean", {"b": 1})
    inputs = make_inputs(rules[0], generator, torch.float64)
    result, stats = batched(inputs)
    expected = per_node(rules, inputs)
    with pytest.raises(AssertionError):
        assert_matches((result + 1e-6, stats), expected, torch.float64)
    with pytest.raises(AssertionError):
        assert_matches((result, {k: v for k, v in stats.items() if k != "refused"}),
                       expected, torch.float64)
