"""Crash safety of the ledger store: a writer killed with SIGKILL at any moment leaves a
ledger that verifies and holds every block the writer reported committed.

The writer (tests/ledger_writer.py) appends one block per round in a loop and prints
``committed <height>`` after each commit; the parent kills it after a random delay.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from flwr_tempered.ledger import verify_ledger

WRITER = Path(__file__).with_name("ledger_writer.py")


def start_writer(path: Path) -> tuple[subprocess.Popen[str], int]:
    """Start a writer on ``path``; return it once it reports the height it starts from."""
    process = subprocess.Popen([sys.executable, str(WRITER), str(path)], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("ready "):
        process.kill()
        _, errors = process.communicate()
        raise AssertionError(f"the writer did not start: {line!r}\n{errors}")
    return process, int(line.split()[1])


def kill_after(process: subprocess.Popen[str], delay: float) -> int:
    """SIGKILL ``process`` after ``delay`` seconds; the last height it reported committed
    (0 when none)."""
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    output, errors = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the writer died by itself:\n{errors}"
    heights = [int(line.split()[1]) for line in output.splitlines()
               if line.startswith("committed ")]
    assert heights == sorted(heights)
    return heights[-1] if heights else 0


def test_a_writer_killed_at_random_moments_leaves_a_verifying_ledger_with_every_commit(
        tmp_path: Path) -> None:
    rng = random.Random(20240611)
    reported = []
    for attempt in range(12):
        path = tmp_path / f"ledger-{attempt}.sqlite"
        process, start = start_writer(path)
        assert start == 0
        last = kill_after(process, rng.uniform(0.0, 0.3))
        report = verify_ledger(path)
        assert len(report.blocks) >= last
        assert report.rounds == list(range(1, len(report.blocks) + 1))
        reported.append(last)
    assert sum(reported) > 0, "the writer never committed a block before it was killed"


def test_a_writer_resuming_the_same_file_after_each_kill_never_loses_a_block(
        tmp_path: Path) -> None:
    rng = random.Random(20240612)
    path = tmp_path / "ledger.sqlite"
    stored = 0
    for _ in range(10):
        process, start = start_writer(path)
        assert start == stored  # the writer resumes exactly after what is on disk
        last = kill_after(process, rng.uniform(0.0, 0.3))
        report = verify_ledger(path)
        assert len(report.blocks) >= max(last, stored)
        assert report.rounds == list(range(1, len(report.blocks) + 1))
        stored = len(report.blocks)
    assert stored > 0, "the writer never committed a block before it was killed"
