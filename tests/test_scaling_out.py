"""Scaling out on a Ray cluster, as the README's "Scaling out" section says: a Ray head
started with ``ray start --head``, a second Ray node joined with ``ray start --address``,
and ``flwr-tempered run`` joining the cluster through ``RAY_ADDRESS`` with the inline
exchange.

Both Ray nodes run on this machine, so the test proves that the run uses a node it did
not start (the head has no CPUs, so every Flower actor runs on the joined node) and that
the inline exchange works there; it cannot show that a second machine adds capacity.
Each Ray node runs with ``--block`` in its own process group, and the test stops exactly
those groups (``ray stop`` would stop every Ray instance on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from process_groups import free_port, stop_groups


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, Path]]:
    """A Ray head with no CPUs and a second Ray node with two, both on 127.0.0.1, as the
    README starts them (``ray start --head``, ``ray start --address``). With no CPUs on
    the head, every Flower actor must run on the joined node. Yields (address, the
    cluster's temp folder)."""
    # Ray's socket paths must stay short (Unix sockets allow about 107 bytes), so the
    # folder is not pytest's long tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    processes = [_start(["ray", "start", "--head", "--port", str(port), "--num-cpus", "0",
                         "--include-dashboard=false", "--temp-dir", str(folder / "ray"),
                         *common], folder / "head.log")]
    try:
        _wait_for(lambda: bool(list((folder / "ray").glob("session_*/logs/raylet.out"))),
                  processes[0], folder / "head.log")
        processes.append(_start(["ray", "start", "--address", address, "--num-cpus", "2",
                                 *common], folder / "worker.log"))
        _wait_for(lambda: _cluster_cpus(address) == [0.0, 2.0], processes[1],
                  folder / "worker.log")
        yield address, folder / "ray"
    finally:
        stop_groups(processes)
        shutil.rmtree(folder, ignore_errors=True)


def _cluster_cpus(address: str) -> list[float]:
    """The CPUs of every live node of the cluster at ``address``, sorted (asked from a
    separate process, so that this one never connects to Ray)."""
    probe = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(json.dumps(sorted(n['Resources'].get('CPU', 0.0) for n in ray.nodes() "
             "if n['Alive'])))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=False)
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else []


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes],
              log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Ray did not come up:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


@pytest.mark.end_to_end
def test_a_run_joins_the_ray_cluster_named_by_ray_address(
    ray_cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, ray_folder = ray_cluster
    out = tmp_path / "cluster-run"
    drivers_before = set(ray_folder.glob("session_*/logs/python-core-driver-*.log"))
    result = subprocess.run(
        ["flwr-tempered", "run", "--topology", "ring", "--nodes", "4", "--byzantine", "1",
         "--attack", "ipm", "--rule", "median", "--dataset", "digits", "--rounds", "2",
         "--exchange", "inline", "--num-cpus", "1", "--compare", "none", "--out", str(out)],
        env={**os.environ, "RAY_ADDRESS": address}, cwd=tmp_path, capture_output=True,
        text=True, timeout=400, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # The run's driver is a client of the cluster's session: Ray logs it there.
    drivers = set(ray_folder.glob("session_*/logs/python-core-driver-*.log")) - drivers_before
    assert drivers, "the run did not connect to the Ray cluster named by RAY_ADDRESS"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics][-1] == 2
    last = metrics[-1]
    assert last["dropped_nodes"] == 0 and last["rejected_malformed"] == 0.0
    assert last["rule_received"] == 2.0  # both ring neighbours' models arrived inline
    assert json.loads((out / "config.json").read_text())["exchange"] == "inline"


class _StopError(Exception):
    """Raised in place of building the ServerApp, to stop simulate() before Ray starts."""


def _stop(*args: object, **kwargs: object) -> None:
    raise _StopError


@pytest.mark.parametrize(("exchange", "warned"), [("shared", True), ("inline", False)])
def test_the_shared_exchange_warns_when_ray_address_is_set(
    exchange: str, warned: bool, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """A cluster of several machines cannot read this machine's /dev/shm: say so before
    the run starts."""
    from flwr_tempered.experiments import simulate as simulate_module
    from flwr_tempered.node import RunConfig

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setattr(simulate_module, "make_server_app", _stop)
    with pytest.raises(_StopError):
        simulate_module.simulate(RunConfig(exchange=exchange), tmp_path / "run")
    assert ("--exchange inline" in caplog.text and "/dev/shm" in caplog.text) is warned
