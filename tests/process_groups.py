"""Helpers for tests that start servers in the background: a free local port, and
stopping exactly the process groups a test started (never ``ray stop`` or a name match,
which would reach other people's processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_groups(processes: Sequence[subprocess.Popen[bytes]], seconds: float = 20) -> None:
    """SIGTERM the process group of each process (each started with
    ``start_new_session=True``), wait up to ``seconds`` for the leaders, then SIGKILL what
    is left of the groups: children such as Ray's GCS server and raylet may outlive their
    leader or ignore SIGTERM."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    time.sleep(1)  # the groups' other members may still be exiting
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
