"""Seconds per round of the repository's app in Flower's deployment mode, on loopback.

For every configuration (number of nodes x isolation mode x exchange) the script starts a
federation on 127.0.0.1 (free ports, a private ``FLWR_HOME``): one ``flower-superlink
--insecure`` and one ``flower-supernode --insecure`` per graph node, told its position by
``--node-config "partition-id=P num-partitions=N"``. It submits the repository's Flower app
with ``flwr run <repo> federation --stream --run-config ...`` (a ring, one IPM attacker,
the median, digits, the small CNN, a few local steps), reads ``timings.json`` and
``metrics.jsonl`` from the run's results folder, and stops exactly the process groups it
started (each process is started in a session of its own; the groups are SIGTERMed, then
SIGKILLed, also on errors and Ctrl-C).

Isolation modes (``--isolation``):

* ``subprocess``: Flower's default. Each SuperNode starts a ``flower-superexec``, which
  starts a fresh ``flwr-clientapp`` process (importing torch, loading the data) for every
  message.
* ``process``: ``flower-supernode --isolation process`` plus one long-lived worker per
  SuperNode, started by this script (``python benchmarks/deployment.py --worker
  --runtime-api-address 127.0.0.1:PORT``). ``flwr-clientapp`` itself cannot be kept
  alive in Flower 1.41: it needs a token that the SuperNode issues per task (one task per
  message) and exits after one message. The worker claims each task's token from the
  SuperNode's Runtime API (``AcquireTask``) and runs Flower's own ``flwr-clientapp`` steps
  (pull task input, load the ClientApp, call it, push the reply and the context) in its
  own process, so torch, the app's modules and the cached dataset and model stay loaded
  between messages. It uses Flower 1.41's internal runtime API
  (``flwr.supernode.runtime.run_clientapp``).
* ``superexec``: ``flower-supernode --isolation process`` plus one stock
  ``flower-superexec --insecure --runtime-api-address 127.0.0.1:PORT`` per SuperNode,
  started by this script: the supported way to run process isolation, and the same cold
  ``flwr-clientapp`` per message as ``subprocess``.

``--exchange`` is passed through as the run config ``exchange='...'``; an exchange that
needs processes of its own next to each SuperNode registers them in ``SIDECARS``.

Seconds per round: the median ``total_s`` of the training rounds 1 .. rounds-1 in
``timings.json`` (round 0 also evaluates and audits, and the closing message ``rounds``
only aggregates and evaluates); ``--rounds`` must hence be at least 2. A second table splits
a training round into its messages (train, attack) and the nodes' own work (summed over
nodes, per node).

Run ``python benchmarks/deployment.py [--nodes 4,16] [--isolation subprocess,process]
[--exchange inline] [--rounds 3] [--local-steps 5] [--keep FOLDER]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ISOLATIONS = ("subprocess", "process", "superexec")
FEDERATION = "federation"


# ------------------------------------------------------------------------------ helpers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, seconds: float, process: subprocess.Popen[bytes] | None = None
                  ) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if listening(port):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s")


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live process: pid -> (parent pid, session id, start time) (Linux /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[19])
    return table


def _family(roots: set[int]) -> dict[int, str]:
    """The live processes in the sessions ``roots`` lead, and all their descendants
    (Flower starts the SuperLink's ``flower-superexec`` in a session of its own):
    pid -> start time, so that a pid reused later is never signalled."""
    table = _processes()
    family = {pid: start for pid, (_, sid, start) in table.items() if sid in roots}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, start) in table.items():
            if ppid in family and pid not in family:
                family[pid] = start
                grew = True
    return family


def _signal_family(family: dict[int, str], sig: int) -> list[int]:
    """Send ``sig`` to the members of ``family`` still alive (same start time); returns
    their pids."""
    table = _processes()
    alive = [pid for pid, start in family.items() if pid in table and table[pid][2] == start]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return alive


# --------------------------------------------------------------------------- federation
@dataclass
class NodeSpec:
    """One SuperNode of a federation: what sidecars get to know about it."""

    partition: int
    nodes: int
    runtime_port: int
    superlink: str
    exchange: str
    folder: Path


#: Per-node processes an exchange needs next to each SuperNode (none for ``inline``):
#: ``SIDECARS[exchange](node) -> [command, ...]``, each command started in its own
#: session and stopped with the federation. ``NODE_CONFIG[exchange](node)`` adds
#: ``key=value`` pairs to the SuperNode's ``--node-config``.
def _peer_port(node: NodeSpec) -> int:
    """The port of a node's peer (``exchange = "p2p"``): chosen once per node."""
    if node.partition not in _PEER_PORTS.setdefault(node.folder, {}):
        _PEER_PORTS[node.folder][node.partition] = free_port()
    return _PEER_PORTS[node.folder][node.partition]


_PEER_PORTS: dict[Path, dict[int, int]] = {}


def _peer_token(node: NodeSpec) -> Path:
    return node.folder / f"peer-{node.partition}.token"


SIDECARS: dict[str, Callable[[NodeSpec], list[list[str]]]] = {
    "p2p": lambda node: [["flwr-tempered", "peer", "--listen",
                          f"127.0.0.1:{_peer_port(node)}", "--token-file",
                          str(_peer_token(node))]],
}
NODE_CONFIG: dict[str, Callable[[NodeSpec], str]] = {
    "p2p": lambda node: (f"peer-url='http://127.0.0.1:{_peer_port(node)}' "
                         f"peer-token-file='{_peer_token(node)}'"),
}


@dataclass
class Federation:
    """The processes of one loopback federation; :meth:`stop` ends exactly them."""

    folder: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.folder / "logs" / f"{name}.log").open("wb")
        self.logs.append(log)
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=self.folder, start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self, seconds: float = 20.0) -> list[int]:
        """SIGTERM every group, wait, SIGKILL what is left of them and of their
        descendants; returns the pids still alive afterwards (should be none)."""
        family = _family({p.pid for p in self.processes})
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + seconds
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        time.sleep(1.0)  # other members of the groups (superexec, clientapps) exiting
        family.update(_family({p.pid for p in self.processes}))
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        _signal_family(family, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for log in self.logs:
            log.close()
        time.sleep(0.5)
        return _signal_family(family, 0)


def supernode_command(args: argparse.Namespace, isolation: str, node: NodeSpec) -> list[str]:
    config = f"partition-id={node.partition} num-partitions={node.nodes}"
    if node.exchange in NODE_CONFIG:
        config += " " + NODE_CONFIG[node.exchange](node)
    flags = ["--insecure", "--superlink", node.superlink, "--node-config", config,
             "--port", str(node.runtime_port),
             "--isolation", "subprocess" if isolation == "subprocess" else "process"]
    if args.fleet_poll is not None:  # Flower's SuperNode, its idle sleeps capped
        return ["flwr-tempered", "supernode", "--poll-cap", str(args.fleet_poll), "--",
                *flags]
    return ["flower-supernode", *flags]


@contextlib.contextmanager
def federation(args: argparse.Namespace, nodes: int, isolation: str, exchange: str,
               folder: Path) -> Iterator[Federation]:
    """A SuperLink and ``nodes`` SuperNodes (with their workers and sidecars)."""
    home = folder / "flwr-home"
    home.mkdir(parents=True)
    (folder / "logs").mkdir()
    env = {**os.environ, "FLWR_HOME": str(home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    if args.superexec_poll is not None:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.superexec_poll)
    fed = Federation(folder, env)
    try:
        port = free_port()
        superlink = fed.start("superlink", [
            "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--database", str(home / "state.db")])
        wait_for_port(port, 60, superlink)
        specs = [NodeSpec(p, nodes, free_port(), f"127.0.0.1:{port}", exchange, folder)
                 for p in range(nodes)]
        for node in specs:  # the sidecars first: the SuperNodes' apps use them
            for i, command in enumerate(SIDECARS.get(exchange, lambda _: [])(node)):
                fed.start(f"sidecar-{node.partition}-{i}", command)
            if exchange == "p2p":
                wait_for_port(_peer_port(node), 60)
        supernodes = [fed.start(f"supernode-{node.partition}",
                                supernode_command(args, isolation, node)) for node in specs]
        for node in specs:
            runtime = f"127.0.0.1:{node.runtime_port}"
            if isolation == "process":
                fed.start(f"worker-{node.partition}", [
                    "flwr-tempered", "clientapp", "--runtime-api-address", runtime,
                    "--poll", str(args.worker_poll)])
            elif isolation == "superexec":
                fed.start(f"superexec-{node.partition}", [
                    "flower-superexec", "--insecure", "--runtime-api-address", runtime])
        for node, process in zip(specs, supernodes, strict=True):
            wait_for_port(node.runtime_port, 120, process)
        (home / "config.toml").write_text(
            f'[superlink.{FEDERATION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        yield fed
    finally:
        survivors = fed.stop()
        if survivors:
            print(f"  WARNING: still alive after stopping: {survivors}", file=sys.stderr)


# ------------------------------------------------------------------------------- a run
def run_config(args: argparse.Namespace, nodes: int, exchange: str, out: Path) -> str:
    return (f"nodes={nodes} byzantine=1 topology='ring' topology-args='{{}}' "
            f"dataset='digits' partition='label_sorted' model='small_cnn' "
            f"rounds={args.rounds} eval-every={args.rounds} exchange='{exchange}' "
            f"attack='ipm' attack-args='{{}}' rule='median' rule-args='' "
            f"local-steps={args.local_steps} lr=0.1 round-timeout={args.round_timeout} "
            f"out='{out}'")


def measure(args: argparse.Namespace, nodes: int, isolation: str, exchange: str,
            folder: Path) -> dict[str, Any]:
    out = folder / "results"
    with federation(args, nodes, isolation, exchange, folder) as fed:
        start = time.perf_counter()
        submit = fed.start("flwr-run", [
            "flwr", "run", str(args.app), FEDERATION, "--stream",
            "--run-config", run_config(args, nodes, exchange, out)])
        try:
            returncode = submit.wait(timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            returncode = -1
        wall = time.perf_counter() - start
    # `flwr run --stream` exits 0 even when the ServerApp raised: check the results too.
    timings = (json.loads((out / "timings.json").read_text())
               if (out / "timings.json").exists() else [])
    if returncode != 0 or not any(t["round"] >= 1 for t in timings):
        tail = (folder / "logs" / "flwr-run.log").read_text()[-3000:]
        raise RuntimeError(f"flwr run failed ({returncode}); logs in {folder}:\n{tail}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    training = [t for t in timings if 1 <= t["round"] < args.rounds]

    def median(key: str) -> float:
        values = [t[key] for t in training if key in t]
        return statistics.median(values) if values else float("nan")

    relay = [m["relay_model_bytes"] for m in metrics if "relay_model_bytes" in m]
    node_keys = sorted({k for t in training for k in t if k.startswith("nodes_time_")})
    return {
        "nodes": nodes, "isolation": isolation, "exchange": exchange,
        "round_s": median("total_s"), "wall_s": wall,
        "train_message_s": median("train_message_s"),
        "attack_message_s": median("attack_message_s"), "ledger_s": median("ledger_s"),
        "node_phases_s": {k.removeprefix("nodes_time_").removesuffix("_s"): median(k) / nodes
                          for k in node_keys},
        "round0_s": next((t["total_s"] for t in timings if t["round"] == 0), float("nan")),
        "last_s": next((t["total_s"] for t in timings if t["round"] == args.rounds),
                       float("nan")),
        "relay_model_bytes": statistics.median(relay) if relay else None,
        "dropped": max((m.get("dropped_nodes", 0) for m in metrics), default=0),
    }


def _bytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.2f} MB"


def print_tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(f"{args.rounds} rounds, ring, 1 IPM attacker, median, digits, small CNN, "
          f"{args.local_steps} local steps; seconds per round: median of rounds "
          f"1..{args.rounds - 1}")
    print()
    print("| nodes | isolation | exchange | s / round | total wall s | relay_model_bytes "
          "| dropped |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['isolation']} | {r['exchange']} | {r['round_s']:.1f} "
              f"| {r['wall_s']:.1f} | {_bytes(r['relay_model_bytes'])} | {r['dropped']} |")
    phases = sorted({k for r in rows for k in r["node_phases_s"]})
    print()
    print("| nodes | isolation | exchange | round 0 s | training round s | train message s "
          "| attack message s | ledger s | closing message s | "
          + " | ".join(f"{k} s per node" for k in phases) + " |")
    print("|---" * (9 + len(phases)) + "|")
    for r in rows:
        cells = [f"{r['node_phases_s'].get(k, float('nan')):.2f}" for k in phases]
        print(f"| {r['nodes']} | {r['isolation']} | {r['exchange']} | {r['round0_s']:.1f} "
              f"| {r['round_s']:.1f} | {r['train_message_s']:.1f} "
              f"| {r['attack_message_s']:.1f} | {r['ledger_s']:.2f} | {r['last_s']:.1f} | "
              + " | ".join(cells) + " |")


# --------------------------------------------------------------------------------- main
def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="4", help="comma-separated, e.g. 4,16")
    parser.add_argument("--isolation", default="subprocess,process",
                        help=f"comma-separated, of {', '.join(ISOLATIONS)}")
    parser.add_argument("--exchange", default="inline", help="comma-separated run-config "
                        "exchange values, passed through as exchange='...'")
    parser.add_argument("--app", type=Path, default=REPO,
                        help="the Flower app to run (default: this repository's working "
                        "tree, as `flwr run` bundles it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--round-timeout", type=float, default=300.0,
                        help="seconds the relay waits for a message's replies")
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument("--worker-poll", type=float, default=0.05,
                        help="process mode: how often a worker asks for a task (s)")
    parser.add_argument("--superexec-poll", type=float, default=None,
                        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for subprocess/superexec "
                        "(Flower's default: 1 s)")
    parser.add_argument("--fleet-poll", type=float, default=None,
                        help="cap the SuperNodes' idle sleeps (Flower: 3 s between polls "
                        "of the SuperLink) at this many seconds, through a shim")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep every run's logs and results under this folder")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 0 and the closing message are "
                     "not training rounds)")
    isolations = _csv(args.isolation)
    if unknown := [i for i in isolations if i not in ISOLATIONS]:
        parser.error(f"unknown isolation {unknown}; choose from {ISOLATIONS}")
    # Stop the federation on Ctrl-C and SIGTERM, also when started in the background
    # (where a shell may have set SIGINT to be ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    base = args.keep or Path(tempfile.mkdtemp(prefix="flwr-deployment-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    try:
        for nodes in [int(n) for n in _csv(args.nodes)]:
            for exchange in _csv(args.exchange):
                for isolation in isolations:
                    folder = base / f"n{nodes}-{isolation}-{exchange}"
                    print(f"{nodes} nodes, {isolation}, {exchange}: {folder}", flush=True)
                    try:
                        row = measure(args, nodes, isolation, exchange, folder)
                    except (RuntimeError, TimeoutError) as error:
                        failed.append(f"{nodes} nodes, {isolation}, {exchange}")
                        print(f"  FAILED: {error}", file=sys.stderr, flush=True)
                        continue
                    print(f"  {row['round_s']:.1f} s per round, {row['wall_s']:.1f} s wall",
                          flush=True)
                    rows.append(row)
    except KeyboardInterrupt:
        print("interrupted; every started process group was stopped", file=sys.stderr)
        failed.append("interrupted")
    finally:
        if rows:
            print_tables(rows, args)
        if args.keep is None:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    if failed:
        sys.exit(f"failed: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
