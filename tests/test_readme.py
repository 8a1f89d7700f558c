"""The README never lies: every command in it is exercised, its Python snippets run, and
CI runs its set-up, test and end-to-end commands.

Every command of the README (each line of a ``bash`` block, and each inline code span
that starts with a program) must have an entry in ``EXERCISES`` saying how it is
exercised, and every entry must still be in the README:

- ``ci``: ``.ci/run`` runs it verbatim (taken from the README's marked blocks);
- ``run``: run here as written, in a sandbox folder (seconds);
- ``shortened``: run here as written plus arguments that make it short (fewer rounds or
  runs), in README order in one sandbox, so that later commands find earlier results;
  marked ``end_to_end`` (minutes in all);
- ``collect``: a pytest selection, collected here (``--collect-only``) to check that it
  selects what the README says;
- ``covered``: a named test runs it with other addresses or sizes (a second machine, a
  federation); that test must exist and its module must use every option the command
  uses;
- ``name``: a program named in prose, not a command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PROGRAMS = ("flwr-tempered", "flwr", "python", "pip", "ray", "flower-superlink",
            "flower-supernode")


def _blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def _marked(marker: str) -> str:
    """The command in the README's bash block marked ``<!-- marker -->`` (for .ci/run)."""
    block = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```\n<!-- /{marker} -->", README,
                      re.DOTALL)
    assert block, f"README.md must mark its {marker} for .ci/run"
    return block.group(1)


def _normal(command: str) -> str:
    return " ".join(command.split())


def _is_command(text: str) -> bool:
    words = text.split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value prefix
        words = words[1:]
    return bool(words) and words[0] in PROGRAMS


def readme_commands(text: str = README) -> list[str]:
    """Every command of the README, in order: the lines of its ``bash`` blocks
    (continuations joined, comments dropped), then the inline code spans that start
    with a program."""
    commands: list[str] = []
    for block in _blocks("bash", text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                commands.append(_normal(line))
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose):
        if _is_command(span):
            commands.append(_normal(span))
    return commands


@dataclass(frozen=True)
class Exercise:
    """How one README command is exercised (see the module docstring)."""

    kind: str
    extra: str = ""  # appended for "shortened" and "collect"
    test: str = ""  # "tests/<file>.py::<test function>" for "covered"


RAY_CLUSTER = Exercise(
    "covered", test="tests/test_scaling_out.py::"
                    "test_a_run_joins_the_ray_cluster_named_by_ray_address")
DEPLOYMENT = Exercise(
    "covered", test="tests/test_deployment.py::"
                    "test_the_apps_run_unchanged_on_a_superlink_with_four_supernodes")
DEMO = ("flwr-tempered run --topology erdos_renyi --nodes 16 --byzantine 3 --rule balance "
        "--attack alie --attack-arg z=10 --rounds 20 --dataset mnist-5k --out results/demo")
EXERCISES: dict[str, Exercise] = {
    # The set-up commands at the top, and the end-to-end step: .ci/run runs them.
    "pip install -e . && flwr-tempered run": Exercise("ci"),
    'pip install -e ".[test]" && python -m pytest -q': Exercise("ci"),
    'python -m pytest -q -m "reproduction or end_to_end"': Exercise("ci"),
    "pip install torch==2.13.0": Exercise("ci"),
    "flwr-tempered run": Exercise("ci"),
    # Command line
    DEMO: Exercise("shortened", "--rounds 2 --compare none"),
    "flwr-tempered run --topology dumbbell --topology-arg q=5 --byzantine 0 --rule "
    "clipped_gossip --rule-arg tau=1 --attack none --partition clique --dataset digits "
    "--rounds 10": Exercise("shortened", "--rounds 2"),
    "flwr-tempered run --help": Exercise("run"),
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . --stream --federation-config "
    "\"num-supernodes=16\" --run-config \"rounds=5 rule='clipped_gossip' "
    "rule-args='{\\\"tau\\\": 2.0}' out='results/flwr-run'\"":
        Exercise("shortened", '--run-config "rounds=1"'),
    "flwr run": Exercise("name"),
    # GPU use
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . --stream --federation-config "
    "\"num-supernodes=16 client-resources-num-cpus=1 client-resources-num-gpus=0.25\"":
        Exercise("shortened", '--federation-config "client-resources-num-gpus=0" '
                              '--run-config "rounds=1 out=\'results/flwr-gpu\'"'),
    "flwr-tempered run --num-gpus 0.25": Exercise(
        "covered",
        test="tests/test_cli.py::test_num_gpus_and_cpus_become_each_nodes_ray_resources"),
    # Use in an existing Flower app
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run simulations/server_assisted "
    "--stream --federation-config \"num-supernodes=10\" --run-config \"strategy='median' "
    "attack='alie' num-server-rounds=10\"": Exercise("shortened",
                                                     '--run-config "num-server-rounds=1"'),
    "python simulations/server_assisted/robustness_table.py --attack-args '{\"alie\": "
    "{\"z\": 10}, \"sign_flip\": {\"scale\": 4}}'": Exercise(
        "shortened", "--strategies median --attacks alie --rounds 1 "
                     "--model logistic_regression"),
    "flwr-tempered run --engine batched": Exercise(
        "covered", test="tests/test_engine.py::"
                        "test_the_command_line_runs_the_batched_and_per_node_engines"),
    # Scaling out
    "flwr-tempered run --nodes 64 --nodes-per-client 16 --rounds 5 --no-ledger": Exercise(
        "shortened", "--rounds 1 --compare none"),
    "ray start --head --port 6379": RAY_CLUSTER,
    "ray start --address HEAD_IP:6379": RAY_CLUSTER,
    "RAY_ADDRESS=HEAD_IP:6379 flwr-tempered run --exchange inline --nodes 64 --num-cpus 2":
        RAY_CLUSTER,
    "ray start --address": RAY_CLUSTER,
    "flower-superlink --insecure --host 0.0.0.0 --port 8000": DEPLOYMENT,
    "flwr-tempered peer --listen 0.0.0.0:9101 --token-file /home/me/peer.token":
        DEPLOYMENT,
    "flwr-tempered supernode --poll-cap 0.1 -- --insecure --superlink COORDINATOR:8000 "
    "--port 9094 --isolation process --node-config \"partition-id=P num-partitions=N "
    "peer-url='http://THIS_HOST:9101' peer-token-file='/home/me/peer.token'\"": DEPLOYMENT,
    "flwr-tempered clientapp --runtime-api-address 127.0.0.1:9094": DEPLOYMENT,
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . federation --stream "
    "--run-config \"nodes=4 byzantine=1 topology='ring' topology-args='{}' "
    "exchange='p2p'\"": DEPLOYMENT,
    # Ledger (reads the results of DEMO above)
    "flwr-tempered ledger verify results/demo": Exercise("shortened"),
    "flwr-tempered ledger show results/demo": Exercise("shortened"),
    # Reproducing the papers
    "flwr-tempered reproduce honest_majority --jobs 2": Exercise("shortened", "--rounds 2"),
    "flwr-tempered plot honest_majority": Exercise("shortened"),
    "flwr-tempered reproduce dumbbell --preset full": Exercise("run", "--dry-run"),
    "flwr-tempered reproduce dumbbell --rounds 30 --only non-IID": Exercise(
        "shortened", "--rounds 2"),
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run simulations/honest_majority "
    "--stream --federation-config \"num-supernodes=16\" --run-config "
    "\"rule='trimmed_mean' rule-args='{\\\"b\\\": 2}'\"": Exercise(
        "shortened", '--run-config "rounds=1 eval-every=1"'),
    "flwr-tempered reproduce": Exercise("run"),
    # Building blocks
    "flwr-tempered topology two_cliques_with_byzantine --topology-arg m=5 --topology-arg "
    "b=1 --topology-arg delta=0.5 --plot two_cliques.png": Exercise("run"),
    "flwr-tempered list attacks": Exercise("run"),
    "flwr-tempered run --engine nodes --topology dynamic_random_regular --topology-arg "
    "degree=4 --nodes 16 --byzantine 3 --rule trimmed_mean --rule-arg b=1 --no-ledger":
        Exercise("covered", test="tests/test_dynamic_topology.py::"
                                 "test_the_command_line_runs_a_time_varying_topology"),
    "flwr-tempered topology NAME": Exercise("name"),
    "flwr-tempered new my-app --strategy multi_krum --attack alie && "
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run my-app --stream "
    "--federation-config \"num-supernodes=10\"": Exercise(
        "covered", test="tests/test_new_app.py::test_flwr_run_of_a_written_app"),
    "flwr-tempered new APP": Exercise("name"),
    "python benchmarks/attacked_clients.py --attacks none,alie,ipm,min_max,fang_krum":
        Exercise("shortened", "--rounds 1 --repeats 1"),
    # Performance
    "python benchmarks/aggregators.py": Exercise(
        "covered", test="tests/test_benchmarks.py::"
                        "test_aggregator_benchmark_prints_a_row_for_every_rule"),
    "python benchmarks/server_strategies.py": Exercise(
        "covered", test="tests/test_benchmarks.py::"
                        "test_server_strategy_benchmark_prints_a_row_for_every_strategy"),
    "python benchmarks/runtime.py": Exercise("shortened", "--rounds 2 --only default"),
    "python benchmarks/engine.py": Exercise(
        "covered", test="tests/test_benchmarks.py::"
                        "test_engine_benchmark_times_both_engines_on_the_seed_setting"),
    "python benchmarks/aggregators.py --device cuda": Exercise(
        "covered", test="tests/test_benchmarks.py::"
                        "test_aggregator_benchmark_on_cuda_or_a_clear_refusal"),
    "python benchmarks/engine.py --device cuda": Exercise(
        "covered", test="tests/test_benchmarks.py::"
                        "test_aggregator_benchmark_on_cuda_or_a_clear_refusal"),
    "python benchmarks/ledger.py": Exercise("shortened", "--rounds 2 --blocks 3"),
    "python benchmarks/deployment.py --nodes 4,16 --isolation subprocess,process --exchange "
    "inline,p2p": Exercise("shortened", "--nodes 4 --isolation process --exchange p2p "
                                        "--rounds 2 --fleet-poll 0.1"),
    # Testing
    "python -m pytest -q -m slow": Exercise("collect"),
}


def _of_kind(kind: str) -> list[str]:
    return [c for c in dict.fromkeys(readme_commands()) if c in EXERCISES
            and EXERCISES[c].kind == kind]


def _sandbox(folder: Path) -> Path:
    """A folder holding what the README's relative paths name (the repository's Flower
    app, simulations/ and benchmarks/), so that commands run as written without writing
    into the repository."""
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    for name in ("simulations", "benchmarks"):
        shutil.copytree(ROOT / name, folder / name,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    return folder


def _run(command: str, cwd: Path, env: dict[str, str], timeout: float
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _environment(flwr_home: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(flwr_home), "MPLBACKEND": "Agg",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


# ----------------------------------------------------------------- the inventory


def test_every_readme_command_says_how_it_is_exercised() -> None:
    commands = readme_commands()
    assert len(commands) >= 30, commands  # the extraction itself works
    missing = [c for c in commands if c not in EXERCISES]
    assert not missing, "README commands without an entry in EXERCISES:\n" + "\n".join(missing)
    stale = [c for c in EXERCISES if c not in commands]
    assert not stale, "EXERCISES entries no longer in the README:\n" + "\n".join(stale)
    kinds = {"ci", "run", "shortened", "collect", "covered", "name"}
    assert {e.kind for e in EXERCISES.values()} <= kinds


def test_the_inventory_catches_a_new_command() -> None:
    """The extraction finds commands in both places a reader meets them, and skips
    environment variables and code that is not a command."""
    text = README + ("\n```bash\nflwr-tempered run --rounds 3 \\\n    --nodes 4   # new\n```\n"
                     "Inline `python benchmarks/new.py --fast`, `FLWR_X=1` and `RunConfig`.\n")
    found = readme_commands(text)
    new = [c for c in found if c not in readme_commands()]
    assert new == ["flwr-tempered run --rounds 3 --nodes 4", "python benchmarks/new.py --fast"]


@pytest.mark.parametrize("command", _of_kind("covered"))
def test_covered_commands_are_run_by_a_test_that_uses_their_options(command: str) -> None:
    target = EXERCISES[command].test
    path, name = target.split("::")
    source = (ROOT / path).read_text()
    assert re.search(rf"^def {name}\(", source, flags=re.MULTILINE), f"{target} is gone"
    words = command.split()
    variables = [w.split("=")[0] for w in words if re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w)]
    program = words[len(variables)]
    if program == "python":  # a script: the test must run that script
        program = words[len(variables) + 1]
    assert program in source, f"{target}'s module never runs {program}"
    assert all(v in source for v in variables), f"{target}'s module never sets {variables}"
    options = [w.split("=")[0] for w in words if w.startswith("--")]
    missing = [o for o in options if f'"{o}' not in source and f"'{o}" not in source]
    assert not missing, f"{target}'s module never uses {missing} of: {command}"


MARKERS = ("main-job-command", "test-command", "end-to-end-command")


def test_ci_runs_the_readme_set_up_and_end_to_end_commands_verbatim() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert set(re.findall(r"<!-- ([a-z-]+) -->\n```bash\n", README)) == set(MARKERS)
    for marker in MARKERS:
        assert f"\nrun_marked_command {marker}\n" in script, marker
    for command in _of_kind("ci"):
        if command == "pip install torch==2.13.0":  # only where torch is missing
            assert "python -m pip install --quiet torch==2.13.0" in script
        elif command == "flwr-tempered run":  # the main job, in prose
            assert _marked("main-job-command").endswith(f"&& {command}")
        else:
            assert command in {_normal(_marked(m)) for m in MARKERS}, command


def test_ci_extracts_exactly_the_readme_commands() -> None:
    # Ask .ci/run's own extraction what it would run, without running anything.
    script = (ROOT / ".ci" / "run").read_text()
    extraction = script[script.index("readme_command() {"):script.index("run_marked_command() {")]
    for marker in MARKERS:
        probe = extraction + f'printf "%s" "$(readme_command {marker})"\n'
        result = subprocess.run(["bash", "-c", probe], cwd=ROOT, capture_output=True,
                                text=True, check=True, env={**os.environ})
        assert result.stdout == _marked(marker), marker


def test_the_end_to_end_command_selects_the_long_checks_only() -> None:
    collected = _run(f"{_marked('end-to-end-command')} --collect-only", ROOT, dict(os.environ),
                     300)
    assert collected.returncode == 0, collected.stdout[-2000:]
    for module in ("test_reproduce_findings.py", "test_deployment.py",
                   "test_scaling_out.py::test_a_run_joins",
                   "test_readme.py::test_readme_commands_run_shortened"):
        assert module in collected.stdout, module
    assert "test_aggregators.py" not in collected.stdout
    suite = _run("python -m pytest -q --collect-only", ROOT, dict(os.environ), 300)
    assert "test_deployment.py" not in suite.stdout
    assert "test_reproduce_findings.py" not in suite.stdout


# ------------------------------------------------------------------ running them


@pytest.mark.parametrize("command", _of_kind("run"))
def test_short_readme_commands_run(command: str, tmp_path: Path) -> None:
    extra = EXERCISES[command].extra
    result = _run(f"{command} {extra}".strip(), _sandbox(tmp_path), _environment(tmp_path),
                  timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip(), "printed nothing"
    if "--plot" in command:
        picture = tmp_path / command.rsplit("--plot", 1)[1].split()[0]
        assert picture.stat().st_size > 5_000
    if command == "flwr-tempered reproduce":  # the menu, answered by end of input
        assert "choose a number" in result.stdout
    if "--dry-run" in extra:
        assert "[to run]" in result.stdout and not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", _of_kind("collect"))
def test_readme_pytest_selections_collect_tests(command: str) -> None:
    result = _run(f"{command} --collect-only", ROOT, dict(os.environ), 300)
    assert result.returncode == 0, result.stdout[-2000:]
    counted = re.search(r"^(\d+)(?:/\d+)? tests? collected", result.stdout, re.MULTILINE)
    assert counted and int(counted.group(1)) > 0, result.stdout[-500:]


@pytest.mark.end_to_end
def test_readme_commands_run_shortened(tmp_path: Path, flwr_home: Path) -> None:
    """Every ``shortened`` command, in README order, in one sandbox: the ledger commands
    read the demo run's results, ``plot`` the reproduction's."""
    sandbox = _sandbox(tmp_path)
    env = _environment(flwr_home)
    printed: dict[str, str] = {}
    for command in _of_kind("shortened"):
        full = f"{command} {EXERCISES[command].extra}".strip()
        result = _run(full, sandbox, env, timeout=600)
        assert result.returncode == 0, (
            f"{full}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        printed[command] = result.stdout
    assert printed["flwr-tempered ledger verify results/demo"].startswith("OK ")
    assert "validators    16 (f = 5, quorum 11)" in printed[
        "flwr-tempered ledger show results/demo"]
    assert "findings of the papers" in printed["flwr-tempered plot honest_majority"]
    for run in ("flwr-run", "flwr-gpu"):  # the two `flwr run .` commands
        assert (sandbox / "results" / run / "metrics.jsonl").exists(), run
    assert "| median |" in printed[next(c for c in printed if "robustness_table" in c)]


# --------------------------------------------------------------- Python snippets


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_snippet_runs(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_readme_bash_commands_use_real_subcommands() -> None:
    from flwr_tempered.experiments.cli import build_parser

    parser = build_parser()
    for command in readme_commands():
        if "flwr-tempered " not in f"{command} ":
            continue
        for part in command.split("&&"):
            words = part.split()
            if "flwr-tempered" not in words or "--help" in words:  # --help exits by design
                continue
            parser.parse_args(words[words.index("flwr-tempered") + 1:])


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes, and
    repeated headings numbered (x, x-1, x-2)."""
    anchors: set[str] = set()
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slug, n = base, 1
        while slug in anchors:
            slug, n = f"{base}-{n}", n + 1
        anchors.add(slug)
    return anchors


def test_readme_links_point_at_existing_headings_and_files() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", README, flags=re.DOTALL))
    assert len(links) > 10
    for link in links:
        if link.startswith("http"):
            continue
        path, _, anchor = link.partition("#")
        if path:
            assert (ROOT / path).exists(), f"README links to a missing file: {link}"
        if anchor and (not path or path.endswith(".md")):
            target = README if not path else (ROOT / path).read_text()
            assert anchor in _anchors(target), f"README links to a missing heading: {link}"
