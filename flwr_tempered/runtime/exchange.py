"""How models move between nodes: content-addressed, behind one small interface.

A node *publishes* a model and gets its digest; a receiver *fetches* by digest and the
array it gets is checked against that digest, so a relay (or a store) cannot swap models
unnoticed. Two implementations, chosen by run config (``exchange = "shared"|"inline"``):

* :class:`SharedMemoryExchange` (simulation on one machine): each model is written once
  per round to a directory in ``/dev/shm``; messages carry only digests. This avoids
  copying every neighbour's model into every message (about 1 GB per round for a 20-node
  dumbbell with a 1.2M-parameter CNN).
* :class:`InlineExchange` (Flower deployment mode, nodes on several machines): models
  travel inside the messages as ``ArrayRecord``s keyed by digest; the relay copies each
  one into the messages of the nodes that need it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from flwr_tempered.digest import array_digest, is_digest

#: Key prefix of inline model records in a message's ``RecordDict``.
INLINE_PREFIX = "model:"


class ExchangeError(ValueError):
    """A model could not be fetched: unknown digest, unreadable, or not matching."""


class DigestMismatchError(ExchangeError):
    """The bytes found under a digest are not the bytes that digest names."""


class ModelExchange(ABC):
    """Publish a model, get its digest; fetch by digest, verified."""

    #: Name used in run configs.
    kind: str = ""

    @abstractmethod
    def publish(self, array: np.ndarray, outbox: RecordDict) -> str:
        """Make ``array`` available to receivers (via ``outbox`` if it travels inline)."""

    @abstractmethod
    def fetch(self, digest: str, inbox: RecordDict) -> np.ndarray:
        """The array published as ``digest`` (``ExchangeError`` if absent or altered)."""

    def attach(self, digests: set[str], mailbox: dict[str, ArrayRecord], message: RecordDict
               ) -> None:
        """Relay side: put the models a recipient needs into its message (inline only)."""

    def collect(self, reply: RecordDict, mailbox: dict[str, ArrayRecord]) -> None:
        """Relay side: keep the inline models of a reply for the next messages."""

    def discard(self, digest: str) -> None:
        """Forget a model nobody needs any more (no-op where nothing is stored)."""

    def close(self) -> None:
        """Release what the exchange holds (the store directory for shared memory)."""


def _verified(array: np.ndarray, digest: str) -> np.ndarray:
    actual = array_digest(array)
    if actual != digest:
        raise DigestMismatchError(
            f"model bytes do not match digest {digest[:12]}… (got {actual[:12]}…)")
    return array


class _VerifiedCache:
    """Arrays already checked against their digest, per process, bounded in bytes.

    A digest names its content, so a cached array can never go stale; in simulation one
    worker process serves many nodes that read the same neighbours' models, and each model
    is then read and hashed once per process instead of once per receiver. Cached arrays
    are read-only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, digest: str) -> np.ndarray | None:
        array = self._arrays.get(digest)
        if array is not None:
            self._arrays.move_to_end(digest)
        return array

    def drop(self, digest: str) -> None:
        array = self._arrays.pop(digest, None)
        if array is not None:
            self._bytes -= array.nbytes

    def put(self, digest: str, array: np.ndarray) -> None:
        if digest in self._arrays or array.nbytes > self.max_bytes:
            return
        self._arrays[digest] = array
        self._bytes += array.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._arrays.popitem(last=False)
            self._bytes -= evicted.nbytes


#: Per-process cache of verified models (768 MiB).
_VERIFIED = _VerifiedCache(768 << 20)


class SharedMemoryExchange(ModelExchange):
    """Models as ``<digest>.npy`` files in ``directory`` (default: a run folder in /dev/shm).

    Writes are atomic (temporary file, then rename), so a reader never sees half a model.
    The relay owns the directory (``create=True``) and removes it at the end of the run;
    nodes open it with ``create=False`` so that a late node cannot bring it back.
    """

    kind = "shared"

    def __init__(self, directory: str | os.PathLike[str], verify: bool = True,
                 create: bool = True) -> None:
        self.directory = Path(directory)
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            raise ExchangeError(f"the model store {self.directory} does not exist (run over?)")
        self.verify = verify

    @staticmethod
    def default_directory(run_name: str) -> Path:
        """``/dev/shm/flwr-tempered/<run_name>`` where /dev/shm exists, else a temp dir."""
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        return base / "flwr-tempered" / run_name

    def _path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ExchangeError(f"not a model digest: {digest!r}")
        return self.directory / f"{digest}.npy"

    def publish(self, array: np.ndarray, outbox: RecordDict) -> str:
        digest = array_digest(array)
        path = self._path(digest)
        if not path.exists():
            handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(temporary, path)
        return digest

    def fetch(self, digest: str, inbox: RecordDict) -> np.ndarray:
        cached = _VERIFIED.get(digest)
        if cached is not None:
            return cached
        path = self._path(digest)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ExchangeError(f"model {digest[:12]}… is not in the store: {error}") from None
        if not self.verify:
            return array
        _verified(array, digest)
        array.setflags(write=False)
        _VERIFIED.put(digest, array)
        return array

    def discard(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)
        _VERIFIED.drop(digest)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class InlineExchange(ModelExchange):
    """Models inside the messages, one ``ArrayRecord`` per model keyed by its digest."""

    kind = "inline"

    def publish(self, array: np.ndarray, outbox: RecordDict) -> str:
        digest = array_digest(array)
        outbox[INLINE_PREFIX + digest] = ArrayRecord(numpy_ndarrays=[np.ascontiguousarray(array)])
        return digest

    def fetch(self, digest: str, inbox: RecordDict) -> np.ndarray:
        key = INLINE_PREFIX + digest
        if key not in inbox:
            raise ExchangeError(f"model {digest[:12]}… is not in the message")
        record = inbox[key]
        if not isinstance(record, ArrayRecord):
            raise ExchangeError(f"model {digest[:12]}… is not an ArrayRecord")
        arrays = record.to_numpy_ndarrays()
        if len(arrays) != 1:
            raise ExchangeError(f"model {digest[:12]}… holds {len(arrays)} arrays, expected 1")
        return _verified(arrays[0], digest)

    def attach(self, digests: set[str], mailbox: dict[str, ArrayRecord], message: RecordDict
               ) -> None:
        for digest in digests:
            if digest in mailbox:
                message[INLINE_PREFIX + digest] = mailbox[digest]

    def collect(self, reply: RecordDict, mailbox: dict[str, ArrayRecord]) -> None:
        for key in list(reply.keys()):
            if key.startswith(INLINE_PREFIX):
                record = reply[key]
                if isinstance(record, ArrayRecord):
                    mailbox[key[len(INLINE_PREFIX):]] = record


def make_exchange(kind: str, run_name: str, directory: str | None = None) -> ModelExchange:
    """The exchange named ``kind`` (``"shared"`` or ``"inline"``) for run ``run_name``."""
    if kind == "shared":
        return SharedMemoryExchange(directory or SharedMemoryExchange.default_directory(run_name))
    if kind == "inline":
        return InlineExchange()
    raise ValueError(f"unknown exchange {kind!r}; choose 'shared' or 'inline'")
