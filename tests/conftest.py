"""Shared test configuration.

Under CI (``CI`` set in the environment) Hypothesis runs derandomized, so the gate is
reproducible: the same examples every run. Locally it explores new examples each time.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from process_groups import free_port

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def stop_flower_processes(flwr_home: Path) -> None:
    """Stop the SuperLink and SuperExec that ``flwr run`` left in the background for a
    test's own ``FLWR_HOME`` (only those: matched on that environment variable)."""
    marker = f"FLWR_HOME={flwr_home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGTERM)
        except (OSError, ProcessLookupError):
            continue


@pytest.fixture
def flwr_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``FLWR_HOME`` for ``flwr run``; its background processes are stopped after.

    The local SuperLink that ``flwr run`` starts gets free ports (through the environment,
    which the test's subprocesses inherit): on Flower's fixed defaults, ``flwr run`` would
    hand the run to any SuperLink already listening there, with another working folder.
    """
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
    monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
    yield home
    stop_flower_processes(home)
