"""The README never lies: its Python snippets run, and CI runs its test command."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_snippet_runs(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_ci_runs_exactly_the_readme_test_command() -> None:
    marked = re.search(
        r"<!-- test-command -->\n```bash\n(.*?)\n```\n<!-- /test-command -->", README, re.DOTALL
    )
    assert marked, "README.md must mark its test command for .ci/run"
    # Ask .ci/run's own extraction what it would run, without running it.
    script = (ROOT / ".ci" / "run").read_text()
    extraction = script[script.index("test_command=$(") : script.index('if [ -z "$test_command" ]')]
    probe = extraction + 'printf "%s" "$test_command"\n'
    result = subprocess.run(["bash", "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            check=True, env={**os.environ})
    assert result.stdout == marked.group(1)


def test_ci_runs_the_readme_reproduction_command_and_it_selects_the_findings() -> None:
    marked = re.search(
        r"<!-- reproduction-command -->\n```bash\n(.*?)\n```\n<!-- /reproduction-command -->",
        README, re.DOTALL,
    )
    assert marked, "README.md must mark the reproduction command for .ci/run"
    assert "run_marked_command reproduction-command" in (ROOT / ".ci" / "run").read_text()
    command = marked.group(1).split()
    collected = subprocess.run(
        [*command, "--collect-only"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert "test_reproduce_findings.py" in collected.stdout
    assert "test_aggregators.py" not in collected.stdout


def test_readme_bash_commands_use_real_subcommands() -> None:
    from flwr_tempered.experiments.cli import build_parser

    parser = build_parser()
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0]
            if "flwr-tempered " not in line:
                continue
            words = line.split("flwr-tempered ", 1)[1].split("&&")[0].split()
            if "--help" in words:  # exits by design; covered by tests/test_cli.py
                continue
            parser.parse_args(words)  # SystemExit on an unknown command or option
