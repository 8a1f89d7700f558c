"""The reproduction menu: the experiments' runs, resuming, the menu, figures and tables.

The qualitative findings of each experiment are asserted in
``tests/test_reproduce_findings.py`` on shortened runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flwr_tempered.experiments.cli import _check_buildable, main
from flwr_tempered.experiments.reproduce import EXPERIMENTS, get_experiment
from flwr_tempered.experiments.reproduce.consensus import (
    CONSENSUS_RULES,
    ConsensusSetting,
    consensus_settings,
)
from flwr_tempered.experiments.reproduce.figures import (
    grid_matrix,
    markdown_table,
    plot_experiment,
    summary_rows,
)
from flwr_tempered.experiments.reproduce.runner import (
    DONE_FILE,
    experiment_cases,
    load_results,
    run_experiment,
)
from flwr_tempered.node import topology_of

#: What a cpu preset may change against the published (full) settings.
DATA_MODEL_STEPS = {"dataset", "model", "rounds", "eval_every", "lr_milestones", "augment"}
EXPECTED_RUNS = {"optimization_delta": 25, "honest_majority": 24, "dumbbell": 10,
                 "dumbbell_improvement": 12, "dumbbell_cifar": 10, "balance_grid": 63}


def assert_tau_scaled(small: dict, published: dict, model: str) -> None:
    """cpu tau = published tau * sqrt(d_small_cnn / d_published), nothing else differs."""
    if "inner" in small:
        assert {k: v for k, v in small.items() if k != "inner"} == {
            k: v for k, v in published.items() if k != "inner"}
        small, published = small["inner"], published["inner"]
    assert {k for k in small if small[k] != published[k]} == {"tau"}
    d_published = {"mnist_cnn": 1_199_882, "vgg11_no_bn": 9_225_610}[model]
    assert small["tau"] == pytest.approx(published["tau"] * (28_874 / d_published) ** 0.5,
                                         rel=1e-3)


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_cpu_preset_keeps_everything_but_data_model_and_steps(name: str) -> None:
    cpu = experiment_cases(name, "cpu")
    full = experiment_cases(name, "full")
    assert len(cpu) == len(full) == EXPECTED_RUNS[name]
    assert len({c.key for c in cpu}) == len(cpu), "run folders must be distinct"
    for small, published in zip(cpu, full, strict=True):
        assert small.key == published.key and small.labels == published.labels
        a, b = small.config.to_dict(), published.config.to_dict()
        differing = {k for k in a if a[k] != b[k]}
        assert differing <= DATA_MODEL_STEPS | {"rule_args"}, (small.key, differing)
        if "rule_args" in differing:  # only ClippedGossip's radius, scaled with the model
            assert_tau_scaled(a["rule_args"], b["rule_args"], published.config.model)
        assert small.config.dataset == "mnist-5k" and small.config.model == "small_cnn"
        assert small.config.local_steps == 1 and not small.config.ledger
        _check_buildable(small.config)
        topology = topology_of(small.config)
        assert topology.n == small.config.nodes
        assert len(topology.byzantine) == small.config.byzantine


def test_published_settings_of_the_clippedgossip_menu() -> None:
    """Spot checks of spec §5 against the full preset."""
    delta = {c.key: c for c in experiment_cases("optimization_delta", "full")}
    case = delta["delta0.25-dissensus1.5"]
    assert case.config.topology_args == {"m": 5, "b": 1, "delta": 1.0}
    assert topology_of(case.config).delta_max == pytest.approx(0.25)
    assert (case.config.rounds, case.config.lr, case.config.partition) == (
        1500, 1e-3, "label_sorted")
    assert case.config.rule_args == {"tau": 1.0} and case.config.attack_args == {"eps": 1.5}
    majority = {c.key: c.config for c in experiment_cases("honest_majority", "full")}
    assert topology_of(majority["hm0-TM-ALIE10"]).n == 16
    assert topology_of(majority["hm1-TM-ALIE10"]).n == 15
    assert majority["hm0-ClippedGossip-IPM"].rule_args == {"tau": 0.1}
    assert majority["hm0-MOZI-IPM"].rule_args == {"rho": 0.4, "alpha": 0.5}
    assert majority["hm0-TM-IPM"].rounds == 900
    # The reference code's conventions (docs/reproduction.md): ALIE's sample deviation,
    # dissensus with uniform weights against rules that are not gossip-style averages.
    assert majority["hm0-TM-ALIE10"].attack_args == {"z": 10.0, "ddof": 1}
    assert majority["hm0-TM-dissensus1.5"].attack_args == {"eps": 1.5, "weights": "uniform"}
    assert majority["hm1-MOZI-dissensus1.5"].attack_args["weights"] == "uniform"
    assert majority["hm0-ClippedGossip-dissensus1.5"].attack_args == {"eps": 1.5}
    assert delta["delta0.25-ALIE10"].config.attack_args == {"z": 10.0, "ddof": 1}
    dumbbell = {c.key: c.config for c in experiment_cases("dumbbell", "full")}
    assert topology_of(dumbbell["non-IID-TM"]).spectral_gap == pytest.approx(0.0154, abs=5e-4)
    assert dumbbell["non-IID-TM"].partition == "clique"
    improvement = {c.key: c.config for c in experiment_cases("dumbbell_improvement", "full")}
    both = improvement["TM-bucketing+edge"]
    assert both.rule == "bucketing" and both.rule_args["inner"] == {"name": "trimmed_mean",
                                                                     "b": 1}
    assert both.topology_args["r"] == 1
    assert both.rule_args["layout"] == "reference"
    cifar = {c.key: c.config for c in experiment_cases("dumbbell_cifar", "full")}
    assert cifar["IID-ClippedGossip"].rule_args == {"tau": 10.0}
    assert (cifar["IID-TM"].dataset, cifar["IID-TM"].model) == ("cifar10", "vgg11_no_bn")
    assert cifar["IID-TM"].batch_size == 64 and cifar["IID-TM"].augment == "crop_flip"
    assert list(cifar["IID-TM"].lr_milestones) == [80 * 40, 120 * 40]
    grid = experiment_cases("balance_grid", "cpu")
    assert {c.labels["rule"] for c in grid} == {
        "gossip", "median", "TM", "Krum", "ClippedGossip", "MOZI", "BALANCE"}
    assert len({c.labels["attack"] for c in grid}) == 9  # the 8 attacks and no attack
    assert all(c.config.byzantine == 0.2 * c.config.nodes for c in grid)


def test_unknown_names_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="dumbbell_cifar"):
        get_experiment("dumbel")
    with pytest.raises(ValueError, match="cpu, full"):
        experiment_cases("dumbbell", "gpu")
    with pytest.raises(ValueError, match="rounds"):
        experiment_cases("dumbbell", "cpu", rounds=0)
    assert set(EXPERIMENTS) == {"consensus", *EXPECTED_RUNS}


def test_consensus_runs_resume_and_plot(tmp_path: Path) -> None:
    """Every run lands in its own folder; a second call redoes nothing; a run without its
    done marker (interrupted) is redone alone; the figure is drawn from the files."""
    lines: list[str] = []
    base = run_experiment("consensus", root=tmp_path, echo=lines.append)
    expected = len(consensus_settings()) * len(CONSENSUS_RULES)
    folders = sorted(p.parent for p in base.glob(f"*/{DONE_FILE}"))
    assert len(folders) == expected
    assert lines[-1].startswith(f"== consensus: {expected} runs")
    stamps = {f: (f / DONE_FILE).stat().st_mtime_ns for f in folders}
    lines.clear()
    run_experiment("consensus", root=tmp_path, echo=lines.append)
    assert f"{expected} already done" in lines[0] and lines[-1].startswith("== consensus: 0 runs")
    assert stamps == {f: (f / DONE_FILE).stat().st_mtime_ns for f in folders}
    (folders[0] / DONE_FILE).unlink()
    lines.clear()
    run_experiment("consensus", root=tmp_path, echo=lines.append)
    assert lines[-1].startswith("== consensus: 1 runs")
    assert any(folders[0].name in line for line in lines)
    png = plot_experiment("consensus", root=tmp_path)
    assert png.stat().st_size > 10_000
    rows = summary_rows("consensus", root=tmp_path)
    assert len(rows) == expected
    assert "final_error" in markdown_table(rows)


def test_consensus_findings() -> None:
    """Spec §5, consensus: median and trimmed mean stay at error 1e4 on every chain;
    ClippedGossip with the oracle radius reaches about 0 on the well-connected chains and
    converges faster the larger the spectral gap."""
    from flwr_tempered.experiments.reproduce.consensus import run_setting

    settings = consensus_settings()
    for setting in settings:
        assert run_setting(setting, "median")[-1] == pytest.approx(1e4)
        assert run_setting(setting, "trimmed_mean")[-1] == pytest.approx(1e4)
    best = max(settings, key=lambda s: (s.beta, -s.delta_max))
    assert run_setting(best, "clipped_gossip_oracle")[-1] < 1e-6
    for delta_max in {s.delta_max for s in settings}:
        chain = sorted((s for s in settings if s.delta_max == delta_max), key=lambda s: s.beta)
        finals = [run_setting(s, "clipped_gossip_oracle")[-1] for s in chain]
        assert finals == sorted(finals, reverse=True), (delta_max, finals)
        assert finals[-1] < 1.0 < 1e4 / 2


def test_consensus_setting_checks_its_weights() -> None:
    with pytest.raises(ValueError, match="delta_max"):
        ConsensusSetting(0.5, 0.1)
    with pytest.raises(ValueError, match="honest_weight"):
        ConsensusSetting(0.0, 0.1)


def test_menu_lists_run_and_plot_for_every_experiment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("q\n"))
    assert main(["reproduce", "--out", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert f"run   {name}" in shown and f"plot  {name}" in shown
    # choosing "plot consensus" before any run: a clear error, exit 2
    number = list(EXPERIMENTS).index("consensus") * 2 + 2
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(f"{number}\n"))
    assert main(["reproduce", "--out", str(tmp_path)]) == 2
    assert "run `flwr-tempered reproduce consensus` first" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("99\n"))
    assert main(["reproduce", "--out", str(tmp_path)]) == 2
    assert "expected a number from 1 to" in capsys.readouterr().err


def test_reproduce_command_runs_shortened_cases_and_plots(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--rounds`` and ``--only`` through the command line; the table and figure come
    from the files; a longer rerun is a different run (not taken as done)."""
    argv = ["reproduce", "dumbbell_improvement", "--out", str(tmp_path), "--rounds", "2",
            "--only", "TM-base", "--only", "TM-bucketing+edge"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "TM-base" in out and "TM-bucketing+edge" in out and "figure:" in out
    found = load_results("dumbbell_improvement", root=tmp_path)
    assert sorted(c.key for c, _ in found) == ["TM-base", "TM-bucketing+edge"]
    assert all(m[-1]["round"] == 2 for _, m in found)
    config = json.loads((tmp_path / "dumbbell_improvement" / "cpu" / "TM-base" /
                         "config.json").read_text())
    assert config["rounds"] == 2 and config["topology"] == "dumbbell"
    assert main(["plot", "dumbbell_improvement", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "dumbbell_improvement" / "cpu" / "dumbbell_improvement.png").exists()
    lines: list[str] = []
    run_experiment("dumbbell_improvement", root=tmp_path, rounds=3, only=["TM-base"],
                   echo=lines.append, round_progress=False)
    assert "0 already done" in lines[0]


def test_grid_matrix_reads_worst_honest_error() -> None:
    case = next(c for c in experiment_cases("balance_grid", "cpu") if c.key == "BALANCE-ALIE")
    rules, attacks, values = grid_matrix([(case, [{"round": 0, "accuracy_min": 0.1},
                                                  {"round": 5, "accuracy_min": 0.75}])])
    assert rules == ["BALANCE"] and attacks == ["ALIE"]
    assert values[0][0] == pytest.approx(25.0)


# ------------------------------------------------------------------ findings checkers
def fake_results(experiment: str, value_of: dict[str, float], key: str | None = None
                 ) -> list[tuple[object, list[dict[str, float]]]]:
    """Catalog cases of ``experiment`` whose final metric is ``value_of[case key]``."""
    metric = key or get_experiment(experiment).metric
    return [(c, [{"round": 0, metric: 0.1}, {"round": 9, metric: value_of[c.key]}])
            for c in experiment_cases(experiment, "cpu") if c.key in value_of]


def test_findings_of_optimization_delta_need_a_monotone_fall() -> None:
    from flwr_tempered.experiments.reproduce.findings import check

    falling = {"delta0-dissensus1.5": 0.8, "delta0.0625-dissensus1.5": 0.7,
               "delta0.125-dissensus1.5": 0.71, "delta0.1875-dissensus1.5": 0.4,
               "delta0.25-dissensus1.5": 0.2, "delta0.25-IPM": 0.9}
    assert check("optimization_delta", fake_results("optimization_delta", falling))[0].holds
    bumpy = {**falling, "delta0.1875-dissensus1.5": 0.75}
    finding = check("optimization_delta", fake_results("optimization_delta", bumpy))[0]
    assert not finding.holds and "0.1875 75.0" in finding.detail
    flat = {k: 0.5 for k in falling}
    assert not check("optimization_delta", fake_results("optimization_delta", flat))[0].holds


def test_findings_of_honest_majority_and_dumbbells() -> None:
    from flwr_tempered.experiments.reproduce.findings import check

    cells = {c.key: 0.9 if c.labels["rule"] == "ClippedGossip" else 0.5
             for c in experiment_cases("honest_majority", "cpu")}
    cells.update({"hm0-TM-ALIE10": 0.1, "hm0-RFA-ALIE10": 0.12})
    good = check("honest_majority", fake_results("honest_majority", cells))
    assert [f.holds for f in good] == [True, True]
    cells["hm1-ClippedGossip-IPM"] = 0.79
    cells["hm0-RFA-ALIE10"] = 0.5
    bad = check("honest_majority", fake_results("honest_majority", cells))
    assert [f.holds for f in bad] == [False, False]
    dumbbell = {"non-IID-gossip": 0.69, "non-IID-ClippedGossip": 0.71, "non-IID-TM": 0.51,
                "non-IID-RFA": 0.5, "non-IID-MOZI": 0.55, "IID-gossip": 0.95,
                "IID-ClippedGossip": 0.96, "IID-TM": 0.95, "IID-RFA": 0.95, "IID-MOZI": 0.94}
    assert [f.holds for f in check("dumbbell", fake_results("dumbbell", dumbbell))] == [
        True, True]
    dumbbell.update({"non-IID-MOZI": 0.6, "IID-MOZI": 0.9})
    assert [f.holds for f in check("dumbbell", fake_results("dumbbell", dumbbell))] == [
        False, False]
    tm = {"TM-base": 0.5, "TM-bucketing+edge": 0.7}
    assert check("dumbbell_improvement", fake_results("dumbbell_improvement", tm))[0].holds
    tm["TM-bucketing+edge"] = 0.5
    assert not check("dumbbell_improvement",
                     fake_results("dumbbell_improvement", tm))[0].holds


def test_findings_of_the_balance_grid_name_the_attack_beyond_tolerance() -> None:
    from flwr_tempered.experiments.reproduce.findings import check

    worst = {c.key: 0.9 for c in experiment_cases("balance_grid", "cpu")
             if c.labels["rule"] == "BALANCE"}
    assert check("balance_grid", fake_results("balance_grid", worst))[0].holds
    worst["BALANCE-IPM"] = 0.8
    finding = check("balance_grid", fake_results("balance_grid", worst))[0]
    assert not finding.holds and "beyond: IPM" in finding.detail


def test_parallel_jobs_write_the_same_results(tmp_path: Path) -> None:
    one = run_experiment("consensus", root=tmp_path / "one", echo=lambda _: None)
    two = run_experiment("consensus", root=tmp_path / "two", jobs=2, echo=lambda _: None)
    for folder in sorted(one.glob(f"*/{DONE_FILE}")):
        name = folder.parent.name
        assert (one / name / "metrics.jsonl").read_text() == (
            two / name / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="jobs"):
        run_experiment("consensus", root=tmp_path, jobs=0)
    with pytest.raises(ValueError, match="engine"):
        run_experiment("consensus", root=tmp_path, engine="ray")


@pytest.mark.slow
def test_flower_engine_gives_the_in_process_metrics(tmp_path: Path) -> None:
    """A reproduction run through Flower's simulation engine instead of in-process."""
    from test_inprocess import assert_same_metrics

    for engine in ("inprocess", "flower"):
        run_experiment("optimization_delta", root=tmp_path / engine, engine=engine, rounds=2,
                       eval_every=1, only=["delta0.25-ALIE10"], echo=lambda _: None,
                       round_progress=False)
    (_, local), = load_results("optimization_delta", root=tmp_path / "inprocess")
    (_, flower), = load_results("optimization_delta", root=tmp_path / "flower")
    assert [m["round"] for m in flower] == [0, 1, 2]
    assert_same_metrics(local, flower)
    done = json.loads((tmp_path / "flower" / "optimization_delta" / "cpu" /
                       "delta0.25-ALIE10" / DONE_FILE).read_text())
    assert done["engine"] == "flower" and done["seconds"] > 0


def test_dry_run_lists_the_runs_and_what_is_done_without_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--dry-run`` shows a preset's runs before paying for them, and writes nothing."""
    assert main(["reproduce", "dumbbell", "--preset", "full", "--dry-run",
                 "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dumbbell (full preset): 10 runs")
    assert len(lines) == 12
    assert all("mnist/mnist_cnn" in line and "[to run]" in line for line in lines[1:11])
    assert lines[11].startswith("estimated wall time with the batched engine on ")
    assert not any(tmp_path.iterdir())
    run_experiment("consensus", root=tmp_path, only=["a0.05-d0.01-gossip"], rounds=5,
                   echo=lambda _: None)
    assert main(["reproduce", "consensus", "--dry-run", "--rounds", "5", "--only", "d0.01-",
                 "--out", str(tmp_path)]) == 0
    states = {line.split()[0]: line.rsplit("[", 1)[1] for line in
              capsys.readouterr().out.splitlines()[1:]}
    assert states["a0.05-d0.01-gossip"] == "done]"
    assert "to run]" in states["a0.05-d0.01-median"]
