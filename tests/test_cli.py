"""The ``flwr-tempered`` command line: the README's main job and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwr_tempered.aggregators import available_rules
from flwr_tempered.attacks import available_attacks
from flwr_tempered.experiments.cli import main, parse_key_values
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
