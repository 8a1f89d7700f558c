"""The ServerApp of the decentralized runtime: a relay that writes the run's results.

It builds the :class:`~flwr_tempered.strategies.DecentralizedStrategy`, which only relays
digests between nodes, and records what the nodes report into the run's results folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_tempered.ledger import LEDGER_FILE
from flwr_tempered.node import RunConfig
from flwr_tempered.results import RunResults, plot_run
from flwr_tempered.strategies import DecentralizedStrategy
from flwr_tempered.strategies.grouped import GroupedDecentralizedStrategy

from .client import run_config_of
from .exchange import InlineExchange, ModelExchange, SharedMemoryExchange

ProgressCallback = Callable[[dict[str, Any], RunConfig], None]


def default_results_folder(config: RunConfig) -> Path:
    """``results/<topology>-<rule>-<attack>-<time>`` under the working directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{config.topology}-{config.rule}-{config.attack}-{stamp}"


def run_relay(grid: Grid, config: RunConfig, out: str | Path,
              progress: ProgressCallback | None = None) -> Path:
    """Run ``config`` over ``grid``; write config, metrics, timings, the ledger
    (``ledger.sqlite``, unless the config turns it off) and a plot to ``out``."""
    results = RunResults(out)
    results.write_config(config.to_dict())
    exchange: ModelExchange
    store: str | None = None
    if config.exchange == "shared":
        directory = SharedMemoryExchange.default_directory(
            f"{Path(out).resolve().name}-{time.time_ns()}"
        )
        exchange = SharedMemoryExchange(directory)
        store = str(directory)
    else:
        exchange = InlineExchange()

    def on_metrics(line: dict[str, Any]) -> None:
        results.append_metrics(line)
        if progress is not None:
            progress(line, config)

    strategy = (GroupedDecentralizedStrategy if config.nodes_per_client > 1
                else DecentralizedStrategy)(config, on_metrics=on_metrics, exchange=exchange)
    try:
        strategy.start(grid, store=store, ledger=Path(out) / LEDGER_FILE)
    finally:
        exchange.close()
        results.write_timings(strategy.timings)
    plot_run(out)
    return Path(out)


def make_server_app(config: RunConfig | None = None, out: str | Path | None = None,
                    progress: ProgressCallback | None = None) -> ServerApp:
    """The relay ServerApp; without ``config`` it reads the Flower run config
    (``flwr run``), where the key ``out`` names the results folder."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config if config is not None else run_config_of(context)
        folder = out or context.run_config.get("out") or default_results_folder(run_config)
        run_relay(grid, run_config, str(folder), progress)

    return app
