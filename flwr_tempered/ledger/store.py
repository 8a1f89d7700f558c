"""The ledger on disk: SQLite in WAL mode, append-only, one transaction per block.

Rows hold the exact bytes that were hashed and signed (``body``) next to the hash and
the quorum's signatures, so verification re-derives everything from the bytes. Triggers
refuse UPDATE, DELETE and INSERT OR REPLACE on blocks. Each append is one transaction with
``synchronous=FULL``: a process killed at any moment leaves either the whole block or
none of it, and the chain verifies up to the last block that committed.

Rounds that could not be committed (too few endorsements) are recorded in a separate,
informational table with the reason; they are not part of the chain.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .block import Block, Genesis

#: File name of the ledger inside a run's results folder.
LEDGER_FILE = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    hash TEXT NOT NULL,
    body BLOB NOT NULL,
    signatures TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uncommitted (
    round INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS blocks_no_update BEFORE UPDATE ON blocks
BEGIN SELECT RAISE(ABORT, 'ledger blocks are append-only'); END;
CREATE TRIGGER IF NOT EXISTS blocks_no_delete BEFORE DELETE ON blocks
BEGIN SELECT RAISE(ABORT, 'ledger blocks are append-only'); END;
CREATE TRIGGER IF NOT EXISTS blocks_no_replace BEFORE INSERT ON blocks
WHEN EXISTS (SELECT 1 FROM blocks WHERE height = NEW.height)
BEGIN SELECT RAISE(ABORT, 'ledger blocks are append-only'); END;
"""


@dataclass(frozen=True)
class StoredBlock:
    """One row of the ``blocks`` table, as stored."""

    height: int
    round: int
    hash: str
    body: bytes
    signatures: str


_SELECT = "SELECT height, round, hash, body, signatures FROM blocks"


def _stored(row: tuple[Any, ...]) -> StoredBlock:
    """A row as stored; a body tampered into TEXT is read as its bytes."""
    height, round, hash, body, signatures = row
    body = bytes(body) if isinstance(body, bytes | memoryview) else str(body).encode()
    return StoredBlock(height, round, hash, body, str(signatures))


def ledger_path(path: str | Path) -> Path:
    """The ledger file of ``path``: the file itself, or ``ledger.sqlite`` in a folder."""
    candidate = Path(path)
    return candidate / LEDGER_FILE if candidate.is_dir() else candidate


def encode_signatures(signatures: Mapping[int, str]) -> str:
    """Canonical JSON list of ``{"validator", "signature"}``, sorted by validator."""
    return json.dumps([{"signature": s, "validator": v} for v, s in sorted(signatures.items())],
                      sort_keys=True, separators=(",", ":"))


class LedgerStore:
    """Append-only access to a ledger file (created on first use)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no ledger at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        if create:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------- writes
    def _append(self, height: int, round: int, hash: str, body: bytes, signatures: str) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            last = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
            expected = 0 if last is None else last + 1
            if height != expected:
                raise ValueError(f"block height {height} does not follow the stored head "
                                 f"(expected {expected})")
            self._db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                             (height, round, hash, body, signatures))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def write_genesis(self, genesis: Genesis) -> None:
        """Store block 0 (the ledger must be empty)."""
        self._append(0, 0, genesis.hash, genesis.body(), "[]")

    def append(self, block: Block, signatures: Mapping[int, str]) -> None:
        """Store ``block`` with its validators' signatures, in one transaction."""
        head = self.head()
        if head is None or block.prev_hash != head.hash:
            raise ValueError(f"block {block.height} does not extend the stored head")
        self._append(block.height, block.round, block.hash, block.body(),
                     encode_signatures(signatures))

    def record_uncommitted(self, round: int, reason: str) -> None:
        """Note that ``round``'s block was not committed, and why."""
        with self._db:
            self._db.execute("INSERT INTO uncommitted VALUES (?, ?, ?)",
                             (round, reason, int(time.time() * 1000)))

    # ----------------------------------------------------------------------- reads
    def rows(self) -> Iterator[StoredBlock]:
        """Every stored block, by height."""
        for row in self._db.execute(f"{_SELECT} ORDER BY height"):
            yield _stored(row)

    def head(self) -> StoredBlock | None:
        row = self._db.execute(f"{_SELECT} ORDER BY height DESC LIMIT 1").fetchone()
        return None if row is None else _stored(row)

    def uncommitted(self) -> list[tuple[int, str]]:
        return [(r, reason) for r, reason, _ in
                self._db.execute("SELECT round, reason, at_ms FROM uncommitted ORDER BY rowid")]
