"""Run a decentralized training in-process through ``flwr.simulation.run_simulation``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from flwr_tempered.node import RunConfig
from flwr_tempered.runtime import make_client_app, make_server_app
from flwr_tempered.runtime.server import ProgressCallback


def print_progress(line: dict[str, Any], config: RunConfig) -> None:
    """One progress line per evaluated round, with a bar of the rounds done."""
    done = line["round"] / config.rounds
    bar = "#" * int(done * 20)
    mean, worst = line.get("accuracy_mean"), line.get("accuracy_min")
    shown = f"{mean:.3f} (worst {worst:.3f})" if mean is not None and worst is not None else "-"
    extra = ""
    for key in ("rule_acceptance_rate", "consensus_distance"):
        if line.get(key) is not None:
            extra += f"  {key.removeprefix('rule_')} {line[key]:.3g}"
    print(f"[{bar:<20}] round {line['round']:>4}/{config.rounds}  honest accuracy {shown}"
          f"{extra}", file=sys.stderr, flush=True)


def simulate(config: RunConfig, out: str | Path, *, progress: ProgressCallback | None = None,
             quiet: bool = True) -> Path:
    """Run ``config`` with one simulated Flower SuperNode per topology node (per group of
    ``config.nodes_per_client`` nodes); return the results folder. ``config.node_cpus`` and
    ``config.node_gpus`` become Ray's ``client_resources``. Ray joins the cluster named by
    ``RAY_ADDRESS`` when it is set (Ray's own rule), otherwise it starts on this machine."""
    from flwr.simulation import run_simulation

    from flwr_tempered.node import topology_of

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if os.environ.get("RAY_ADDRESS") and config.exchange == "shared":
        logging.getLogger(__name__).warning(
            "RAY_ADDRESS is set (%s) and exchange is 'shared': the shared exchange keeps "
            "models in this machine's /dev/shm, so it works only while every Ray worker runs "
            "on this machine. On a cluster of several machines use exchange 'inline' "
            "(--exchange inline).", os.environ["RAY_ADDRESS"])
    n = -(-topology_of(config).n // config.nodes_per_client)  # one SuperNode per group
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": config.node_cpus, "num_gpus": config.node_gpus},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
    }
    flower_logger = logging.getLogger("flwr")
    previous_level = flower_logger.level
    if quiet:
        flower_logger.setLevel(logging.ERROR)
    try:
        run_simulation(
            server_app=make_server_app(config, out, progress),
            client_app=make_client_app(config),
            num_supernodes=n,
            backend_config=backend_config,
        )
    finally:
        flower_logger.setLevel(previous_level)
    return Path(out)
