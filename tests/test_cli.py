"""The ``flwr-tempered`` command line: the README's main job and its error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flwr_tempered.aggregators import available_rules
from flwr_tempered.attacks import available_attacks
from flwr_tempered.experiments.cli import main, parse_key_values
from flwr_tempered.results import read_metrics
from flwr_tempered.topology import available_topologies


def test_list_prints_every_rule_attack_and_topology(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*available_rules(), *available_attacks(), *available_topologies()]:
        assert f"  {name} " in out or f"  {name}  " in out, name
    assert "trimmed_mean" in out and "(b)" in out  # parameters are shown


def test_list_one_section_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "rules"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rules (")
    assert "attacks (" not in out


def test_list_unknown_section_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "rulez"]) == 2
    err = capsys.readouterr().err
    assert "rulez" in err and "rules, attacks, topologies" in err


def test_topology_command_prints_the_spectral_gap_and_draws(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "dumbbell.png"
    code = main(["topology", "dumbbell", "--topology-arg", "q=10", "--topology-arg", "qb=0",
                 "--topology-arg", "r=0", "--plot", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    assert "spectral gap  0.015" in out
    assert "nodes         20 (20 honest, 0 Byzantine)" in out
    assert png.stat().st_size > 1000


def test_topology_command_rejects_a_misspelt_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "ring", "--topology-arg", "nodes=5"]) == 2
    assert "nodes" in capsys.readouterr().err


def test_key_values_are_read_as_literals() -> None:
    assert parse_key_values(["b=1", "tau=0.5", "inner=median", "flag=True"], "--x") == {
        "b": 1, "tau": 0.5, "inner": "median", "flag": True,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_key_values(["novalue"], "--rule-arg")


def test_run_help_lists_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in ["clipped_gossip", "balance", "dissensus", "fang_trim", "dumbbell", "mnist-5k",
                 "digits", "dirichlet", "clique"]:
        assert name in out, name


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--rule", "balanse"], "unknown rule 'balanse'; available rules: arc, balance"),
        (["--attack", "alei"], "unknown attack 'alei'; available attacks: alie"),
        (["--topology", "rng"], "unknown topology 'rng'"),
        (["--rule", "trimmed_mean", "--rule-arg", "beta=1"], "has no parameter(s) beta"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    ],
)
def test_run_rejects_misspelt_names_before_starting(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(["run", *argv]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_run_prints_a_summary_next_to_gossip_and_training_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The main job's three-way comparison: the robust rule, gossip under the same attack,
    and the local-only baseline (run in-process: nothing to exchange), in the summary and
    in the picture."""
    out = tmp_path / "run"
    code = main(["run", "--topology", "complete", "--nodes", "5", "--byzantine", "1",
                 "--dataset", "digits", "--rule", "trimmed_mean", "--rule-arg", "b=1",
                 "--attack", "ipm", "--rounds", "2", "--eval-every", "1", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    header = next(line for line in captured.out.splitlines() if line.startswith("final round"))
    assert header.split()[2:] == ["trimmed_mean", "gossip", "local"]
    assert "accuracy_mean" in captured.out
    assert "round    2/2" in captured.err
    assert "== baseline local: the 4 honest nodes train alone" in captured.err
    assert "engine nodes" in captured.err
    local_metrics = read_metrics(tmp_path / "run-local")
    local_final = local_metrics[-1]
    # The baseline never mixes: its honest nodes accepted nothing and agree with nobody.
    assert local_final["rule_acceptance_honest"] == 0.0
    assert local_final["consensus_distance"] > 0.0
    robust_final = read_metrics(out)[-1]
    expected = robust_final["accuracy_mean"] - local_final["accuracy_mean"]
    assert f"trimmed_mean against training alone: mean {expected:+.4f}" in captured.out
    assert (out / "metrics.jsonl").exists() and (tmp_path / "run-gossip" / "metrics.jsonl").exists()
    assert json.loads((tmp_path / "run-local" / "config.json").read_text())["rule"] == "local"
    assert f"accuracy of the 3 runs: {out / 'comparison.png'}" in captured.out
    assert (out / "comparison.png").stat().st_size > 10_000


def test_run_without_baseline_compares_two_rules(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code = main(["run", "--engine", "batched", "--topology", "complete", "--nodes", "5",
                 "--byzantine", "1", "--dataset", "digits", "--model", "logistic_regression",
                 "--rule", "median", "--attack", "ipm", "--rounds", "1", "--baseline", "none",
                 "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "baseline local" not in captured.err and not (tmp_path / "run-local").exists()
    assert f"accuracy of the 2 runs: {out / 'comparison.png'}" in captured.out


def test_plot_comparison_draws_every_run_and_names_a_run_without_evaluations(
    tmp_path: Path,
) -> None:
    from flwr_tempered.results import plot_comparison

    for name, accuracy in (("a", 0.9), ("b", 0.1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(
            json.dumps({"round": r, "accuracy_mean": accuracy, "accuracy_min": accuracy / 2})
            + "\n" for r in range(3)))
    picture = plot_comparison({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "c.png")
    assert picture == tmp_path / "c.png" and picture.stat().st_size > 10_000
    with pytest.raises(ValueError, match="at least one"):
        plot_comparison({}, tmp_path / "d.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text(
        json.dumps({"round": 0, "accuracy_mean": None}) + "\n")
    with pytest.raises(ValueError, match=r"no evaluated round in .*empty"):
        plot_comparison({"a": tmp_path / "a", "empty": tmp_path / "empty"}, tmp_path / "e.png")


def test_num_gpus_and_cpus_become_each_nodes_ray_resources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`flwr-tempered run --num-gpus 0.25` (the README's GPU line) reaches Ray as every
    simulated node's client resources; checked without a GPU by capturing what
    ``run_simulation`` is given."""
    import flwr.simulation

    seen: dict[str, Any] = {}

    def fake_run_simulation(**kwargs: Any) -> None:
        seen.update(kwargs)
        config = json.dumps({"nodes": 16, "topology": "erdos_renyi"})
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "config.json").write_text(config)
        (tmp_path / "run" / "metrics.jsonl").write_text(
            json.dumps({"round": 0, "accuracy_mean": 0.1, "accuracy_min": 0.1}) + "\n")

    monkeypatch.setattr(flwr.simulation, "run_simulation", fake_run_simulation)
    code = main(["run", "--num-gpus", "0.25", "--num-cpus", "2", "--compare", "none",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    assert seen["backend_config"]["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25}
    assert seen["num_supernodes"] == 16
