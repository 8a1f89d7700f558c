"""The batched engine writes the per-node engine's metrics (to float rounding) for every
batched rule and attack, on uneven neighbourhoods, with non-finite inputs, in memory
chunks; and it refuses what it cannot run, with the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from flwr_tempered.engine import BatchedEngine, EngineOptions, run_batched
from flwr_tempered.engine.contracts import PerNodeRule, batched_attack_class, batched_rule_class
from flwr_tempered.engine.samplers import StackedSamplers
from flwr_tempered.node import RunConfig, build_attack, build_rule
from flwr_tempered.results import read_metrics
from flwr_tempered.runtime.inprocess import run_in_process
from flwr_tempered.training import BatchSampler

#: A small run on a sparse graph (degrees differ, so neighbourhoods are padded), with two
#: Byzantine nodes and a dropout-free model: both engines must agree.
BASE: dict[str, Any] = {
    "topology": "erdos_renyi", "topology_args": {"p": 0.45}, "nodes": 9, "byzantine": 2,
    "dataset": "digits", "model": "logistic_regression", "rounds": 3, "eval_every": 1,
    "local_steps": 2, "batch_size": 16, "lr": 0.1, "ledger": False,
    "partition": "dirichlet", "partition_args": {"alpha": 0.5},
}

#: Every rule with a batched version, with settings the sparse graph admits.
BATCHED_RULES: list[tuple[str, dict[str, Any]]] = [
    ("gossip", {}),
    ("mean", {}),
    ("clipped_gossip", {"tau": 0.5}),
    ("clipped_gossip", {}),  # the adaptive (oracle) radius
    ("clipped_gossip", {"adaptive": "second_largest"}),
    ("clipped_gossip", {"delta": 0.2}),
    ("balance", {}),
    ("trimmed_mean", {"b": 1}),
    ("median", {}),
    ("geometric_median", {"iterations": 4}),
    ("krum", {"f": 1}),
    ("krum", {"f": 0}),
    ("multi_krum", {"f": 0, "m": 2}),
    ("centered_clipping", {"tau": 0.5}),
    ("mozi", {"rho": 0.6}),
    ("bucketing", {"s": 2, "inner": "mean"}),
    ("bucketing", {"s": 2, "inner": {"name": "trimmed_mean", "b": 1}}),
]

#: Every attack with a batched version (model poisoning) or a batched data path.
BATCHED_ATTACKS: list[tuple[str, dict[str, Any]]] = [
    ("dissensus", {"eps": 1.5}),
    ("dissensus", {"eps": 1.5, "weights": "uniform"}),
    ("alie", {"z": 3.0}),
    ("alie", {}),
    ("alie", {"ddof": 1, "z_from": "run"}),
    ("ipm", {"eps": 0.5}),
    ("sign_flip", {}),
    ("bit_flip", {}),
    ("gaussian", {"sigma": 0.5}),
    ("label_flip", {}),
    ("backdoor", {"value": 1.0}),
]


def assert_same_metrics(batched: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
    """Same rounds and keys; numbers within 1e-4 (the issue's tolerance)."""
    assert [m["round"] for m in batched] == [m["round"] for m in nodes]
    for mine, theirs in zip(batched, nodes, strict=True):
        assert mine.keys() == theirs.keys(), (mine["round"], mine.keys() ^ theirs.keys())
        for key, value in theirs.items():
            if isinstance(value, float) and mine[key] is not None:
                assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-4), (mine["round"], key)
            else:
                assert mine[key] == value, (mine["round"], key)


def both_engines(config: RunConfig, **options: Any
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The metrics of the batched engine (CPU) and of the per-node engine."""
    batched = run_batched(config, plot=False, options=EngineOptions(device="cpu", **options))
    return batched, run_in_process(config, plot=False)


def test_the_rules_listed_here_are_all_batched() -> None:
    for name, args in BATCHED_RULES:
        config = RunConfig(**BASE, rule=name, rule_args=args)
        assert batched_rule_class(build_rule(config)) is not None, name
    for name, args in BATCHED_ATTACKS[:7]:
        config = RunConfig(**BASE, attack=name, attack_args=args)
        assert batched_attack_class(build_attack(config, 0)) is not None, name


def test_bucketing_in_the_reference_layout_falls_back_to_the_per_node_rule() -> None:
    config = RunConfig(**BASE, rule="bucketing",
                       rule_args={"s": 2, "inner": "median", "layout": "reference"},
                       attack="alie", attack_args={"z": 2.0})
    engine = BatchedEngine(config, EngineOptions(device="cpu"))
    assert type(engine.rule).__name__ == "PerNodeRule"
    batched, nodes = both_engines(config)
    assert_same_metrics(batched, nodes)


@pytest.mark.parametrize(("rule", "rule_args"), BATCHED_RULES,
                         ids=[f"{r}-{a}" for r, a in BATCHED_RULES])
def test_batched_rule_gives_the_per_node_metrics(rule: str, rule_args: dict[str, Any]) -> None:
    config = RunConfig(**BASE, rule=rule, rule_args=rule_args, attack="alie",
                       attack_args={"z": 2.0})
    batched, nodes = both_engines(config)
    assert_same_metrics(batched, nodes)
    # the rule really ran on some node (or refused some, which both engines drop)
    assert any("rule_received" in line or line["dropped_nodes"] for line in batched)


@pytest.mark.parametrize(("attack", "attack_args"), BATCHED_ATTACKS,
                         ids=[f"{a}-{x}" for a, x in BATCHED_ATTACKS])
def test_batched_attack_gives_the_per_node_metrics(attack: str,
                                                   attack_args: dict[str, Any]) -> None:
    config = RunConfig(**BASE, rule="trimmed_mean", rule_args={"b": 1}, attack=attack,
                       attack_args=attack_args)
    batched, nodes = both_engines(config)
    assert_same_metrics(batched, nodes)


@pytest.mark.parametrize("aggregation", ["gram", "gather"])
@pytest.mark.parametrize(("rule", "rule_args"), [
    ("gossip", {}), ("mean", {}), ("clipped_gossip", {"tau": 0.5}), ("clipped_gossip", {}),
    ("clipped_gossip", {"adaptive": "second_largest"}), ("balance", {})])
def test_gram_and_gathering_paths_give_the_per_node_metrics(
        rule: str, rule_args: dict[str, Any], aggregation: str) -> None:
    """Distance-and-weight rules from a Gram matrix of the stacked models, or on gathered
    neighbourhoods; NaN rows from the attackers (IPM overflow) included."""
    for attack, attack_args in (("alie", {"z": 2.0}), ("ipm", {"eps": 1e39})):
        config = RunConfig(**BASE, rule=rule, rule_args=rule_args, attack=attack,
                           attack_args=attack_args)
        batched, nodes = both_engines(config, aggregation=aggregation)
        assert_same_metrics(batched, nodes)


def test_an_attack_without_a_batched_version_falls_back_to_the_per_node_objects() -> None:
    config = RunConfig(**BASE, rule="clipped_gossip", rule_args={"tau": 0.5},
                       attack="fang_trim", attack_args={})
    engine = BatchedEngine(config, EngineOptions(device="cpu"))
    assert engine.crafter is None and engine.poisoning
    assert_same_metrics(engine.run(plot=False), run_in_process(config, plot=False))


def test_forced_fallback_equals_the_batched_rules() -> None:
    config = RunConfig(**BASE, rule="trimmed_mean", rule_args={"b": 1}, attack="ipm",
                       attack_args={"eps": 0.5})
    engine = BatchedEngine(config, EngineOptions(device="cpu", fallback=True))
    assert isinstance(engine.rule, PerNodeRule) and engine.crafter is None
    assert_same_metrics(engine.run(plot=False), run_batched(config, plot=False))


@pytest.mark.parametrize("rule", ["clipped_gossip", "trimmed_mean", "median", "krum"])
def test_degrees_from_one_to_n_minus_one_give_the_per_node_metrics(rule: str) -> None:
    """A star: the hub has N - 1 neighbours, every leaf one (the widest padding)."""
    args = {"clipped_gossip": {"tau": 0.5}, "trimmed_mean": {"b": 0}, "median": {},
            "krum": {"f": 0}}[rule]
    config = RunConfig(**{**BASE, "topology": "star", "topology_args": {}, "byzantine": 1,
                          "nodes": 7}, rule=rule, rule_args=args, attack="none")
    batched, nodes = both_engines(config)
    assert_same_metrics(batched, nodes)


def test_non_finite_vectors_are_rejected_and_counted_as_by_the_per_node_engine() -> None:
    """IPM with a huge factor overflows float32: the Byzantine rows are Inf."""
    config = RunConfig(**BASE, rule="trimmed_mean", rule_args={"b": 1}, attack="ipm",
                       attack_args={"eps": 1e39})
    batched, nodes = both_engines(config)
    assert_same_metrics(batched, nodes)
    assert batched[-1]["rule_rejected_nonfinite"] > 0


def test_nodes_the_rule_refuses_are_dropped_as_by_the_per_node_engine() -> None:
    """Trimmed mean with b = 2 needs five inputs: nodes with fewer neighbours are dropped
    every round (and their neighbours then receive less)."""
    config = RunConfig(**BASE, rule="trimmed_mean", rule_args={"b": 2}, attack="none")
    batched, nodes = both_engines(config)
    assert_same_metrics(batched, nodes)
    assert batched[-1]["dropped_nodes"] > 0


def test_chunks_that_fit_a_small_budget_give_identical_results() -> None:
    config = RunConfig(**BASE, rule="clipped_gossip", rule_args={"tau": 0.5},
                       attack="alie", attack_args={"z": 2.0})
    whole = BatchedEngine(config, EngineOptions(device="cpu"))
    assert whole.plan.chunk == config.nodes
    budget = whole.plan.persistent + 2 * whole.plan.per_node + 1
    chunked = BatchedEngine(config, EngineOptions(device="cpu", memory_budget=budget))
    assert chunked.plan.chunk == 2
    assert chunked.run(plot=False) == whole.run(plot=False)


def test_a_run_whose_single_node_cannot_fit_is_refused_with_the_numbers() -> None:
    config = RunConfig(**BASE, rule="gossip", attack="none")
    with pytest.raises(MemoryError, match=r"needs [\d.]+ MiB .* only 0\.0 MiB"):
        BatchedEngine(config, EngineOptions(device="cpu", memory_budget=1000))


def test_the_results_folder_is_the_per_node_engines(tmp_path: Path) -> None:
    config = RunConfig(**BASE, rule="balance", attack="dissensus", attack_args={})
    run_batched(config, tmp_path / "batched")
    run_in_process(config, tmp_path / "nodes")
    names = sorted(p.name for p in (tmp_path / "nodes").iterdir())
    assert sorted(p.name for p in (tmp_path / "batched").iterdir()) == names
    assert_same_metrics(read_metrics(tmp_path / "batched"), read_metrics(tmp_path / "nodes"))
    assert (tmp_path / "batched" / "config.json").read_text() == \
        (tmp_path / "nodes" / "config.json").read_text()


def test_the_engine_refuses_what_needs_messages() -> None:
    with pytest.raises(ValueError, match="ledger=False"):
        BatchedEngine(RunConfig(**{**BASE, "ledger": True}))


def test_stacked_samplers_draw_every_node_s_batch_sampler_stream() -> None:
    sizes, seeds = [5, 32, 70, 3, 64], [11, 12, 13, 14, 15]
    stacked = StackedSamplers(sizes, 32, seeds)
    reference = [BatchSampler(n, 32, seed=s) for n, s in zip(sizes, seeds, strict=True)]
    for step in range(12):
        skip = torch.tensor([step % 3 == 0, False, False, False, False])
        indices, valid = stacked.next_batches(~skip)
        for node, sampler in enumerate(reference):
            if skip[node]:
                assert torch.equal(indices[node][valid[node]], sampler.peek_batch())
                continue
            assert torch.equal(indices[node][valid[node]], sampler.next_batch()), (step, node)
    for node, sampler in enumerate(reference):
        assert torch.equal(stacked.as_batch_sampler(node).peek_batch(), sampler.peek_batch())


def test_vmap_and_loop_steps_agree() -> None:
    config = RunConfig(**{**BASE, "model": "small_cnn", "rounds": 2, "local_steps": 1,
                          "eval_every": 2}, rule="gossip", attack="none")
    vmap = run_batched(config, plot=False, options=EngineOptions(device="cpu", step_mode="vmap"))
    loop = run_batched(config, plot=False, options=EngineOptions(device="cpu", step_mode="loop"))
    assert_same_metrics(vmap, loop)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_engine_gives_the_cpu_metrics() -> None:
    config = RunConfig(**BASE, rule="clipped_gossip", rule_args={"tau": 0.5}, attack="alie",
                       attack_args={"z": 2.0})
    cuda = run_batched(config, plot=False, options=EngineOptions(device="cuda"))
    assert_same_metrics(cuda, run_in_process(config, plot=False))


def test_the_command_line_runs_the_batched_and_per_node_engines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``flwr-tempered run --engine batched`` (and ``--engine nodes``): same metrics."""
    from flwr_tempered.experiments.cli import main

    common = ["--topology", "ring", "--nodes", "6", "--byzantine", "1", "--attack", "ipm",
              "--dataset", "digits", "--model", "logistic_regression", "--rounds", "2",
              "--eval-every", "1", "--rule", "clipped_gossip", "--rule-arg", "tau=0.5"]
    assert main(["run", *common, "--engine", "batched", "--device", "cpu", "--step-mode",
                 "auto", "--out", str(tmp_path / "batched")]) == 0
    assert "keeps no ledger" in capsys.readouterr().err
    assert main(["run", *common, "--engine", "nodes", "--compare", "none",
                 "--out", str(tmp_path / "nodes")]) == 0
    assert_same_metrics(read_metrics(tmp_path / "batched"), read_metrics(tmp_path / "nodes"))
    assert (tmp_path / "batched" / "comparison.png").exists()  # against gossip, batched too
    assert not (tmp_path / "batched" / "ledger.sqlite").exists()
