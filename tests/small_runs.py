"""A fixture for tests that run many tiny trainings in this process."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread_quiet_flower() -> Iterator[None]:
    """One torch thread (tiny models: more threads only contend for the cores, measured 5x
    slower on a loaded 2-core machine) and Flower's log quiet; both restored after."""
    threads = torch.get_num_threads()
    level = logging.getLogger("flwr").level
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(threads)
    logging.getLogger("flwr").setLevel(level)
