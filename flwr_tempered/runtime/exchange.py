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
* :class:`PeerExchange` (deployment mode, ``exchange = "p2p"``): each node publishes to its
  own long-lived peer server (:mod:`flwr_tempered.runtime.peer`) and fetches from its
  neighbours' peers with signed requests; messages carry digests only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from flwr.app import ArrayRecord, RecordDict

from flwr_tempered.digest import array_digest, is_digest
from flwr_tempered.ledger.crypto import KeyPair

from .peer import RECORD_PREFIX, decode_model, encode_model, signed_fetch_headers

#: Key prefix of inline model records in a message's ``RecordDict``.
INLINE_PREFIX = "model:"

#: The largest record (a node's ledger head and vote) read from another node's peer.
MAX_RECORD_BYTES = 4 << 20

#: How long a record read may take (records are small; a peer that does not answer
#: within this is counted unreachable), and how many are read at once.
RECORD_TIMEOUT, RECORD_READERS = 5.0, 8


class ExchangeError(ValueError):
    """A model could not be fetched: unknown digest, unreadable, or not matching."""


class DigestMismatchError(ExchangeError):
    """The bytes found under a digest are not the bytes that digest names."""


class PeerUnreachableError(ExchangeError):
    """The peer holding a model did not answer (down, firewalled, behind a NAT)."""


class ModelExchange(ABC):
    """Publish a model, get its digest; fetch by digest, verified."""

    #: Name used in run configs.
    kind: str = ""

    @abstractmethod
    def publish(self, array: np.ndarray, outbox: RecordDict, *,
                readers: Collection[int] | None = None, round: int | None = None) -> str:
        """Make ``array`` available to receivers (via ``outbox`` if it travels inline).

        ``readers`` (topology positions; ``None``: every node of the run) and ``round``
        (the round in which they read it) restrict who may fetch it where the exchange
        enforces access (peer to peer); the others ignore them."""

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

    def publish(self, array: np.ndarray, outbox: RecordDict, *,
                readers: Collection[int] | None = None, round: int | None = None) -> str:
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

    def publish(self, array: np.ndarray, outbox: RecordDict, *,
                readers: Collection[int] | None = None, round: int | None = None) -> str:
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


@dataclass(frozen=True)
class PeerDirectory:
    """Who is who in a peer-to-peer run: each position's registered public key and peer
    address (the relay sends it; keys come from the nodes' own registration replies)."""

    run: str
    keys: Mapping[int, str]
    peers: Mapping[int, str]

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PeerDirectory:
        keys, peers = data.get("keys"), data.get("peers")
        if not isinstance(keys, Mapping) or not isinstance(peers, Mapping):
            raise ExchangeError("the peer directory lacks keys or peers")
        return cls(str(data.get("run", "")), {int(p): str(k) for p, k in keys.items()},
                   {int(p): str(u) for p, u in peers.items()})

    def to_dict(self) -> dict[str, object]:
        return {"run": self.run, "keys": {str(p): k for p, k in self.keys.items()},
                "peers": {str(p): u for p, u in self.peers.items()}}


class PeerExchange(ModelExchange):
    """Models published to this node's own peer and fetched from the senders' peers.

    One instance serves one message of one node: ``round`` is that message's round (by
    default, the round its published models are for), ``sources`` maps each digest the
    message names to the position that published it and the round it was published for
    (signed into the fetch request).
    Counters (``fetched_bytes``, ``published_bytes``, ``failures`` by reason) feed the
    node's metrics.
    """

    kind = "p2p"

    def __init__(self, *, directory: PeerDirectory, keys: KeyPair, own_url: str, token: str,
                 round: int, sources: Mapping[str, tuple[int, int]],
                 timeout: float = 10.0) -> None:
        self.directory, self.keys, self.own_url = directory, keys, own_url.rstrip("/")
        self.token, self.round, self.sources = token, round, dict(sources)
        self._client = httpx.Client(timeout=timeout)
        self.fetched_bytes = 0
        self.published_bytes = 0
        self.fallbacks = 0
        self.failures: Counter[str] = Counter()
        self._fetched: dict[str, np.ndarray] = {}
        self._failed: dict[str, ExchangeError] = {}

    def unreachable(self, digests: Collection[str], inbox: RecordDict) -> list[str]:
        """Fetch ``digests`` ahead (kept for :meth:`fetch`) and return those whose peer could
        not be reached: candidates for the relay's inline fallback. Refused or tampered
        models are not: a peer that answers has decided."""
        missing = []
        for digest in digests:
            try:
                self._fetched[digest] = self.fetch(digest, inbox)
            except PeerUnreachableError:
                missing.append(digest)
            except ExchangeError as error:  # decided: the same answer later, uncounted
                self._failed[digest] = error
        return missing

    def read_own(self, digest: str) -> np.ndarray:
        """A model this node published, read back from its own peer (owner token)."""
        try:
            response = self._client.get(f"{self.own_url}/v1/models/{digest}",
                                        headers={"authorization": f"Bearer {self.token}"})
        except httpx.HTTPError as error:
            raise ExchangeError(f"this node's peer {self.own_url} unreachable: {error}"
                                ) from None
        if response.status_code != 200:
            raise ExchangeError(f"this node's peer holds no model {digest[:12]}…")
        return _verified(decode_model(response.content), digest)

    def publish(self, array: np.ndarray, outbox: RecordDict, *,
                readers: Collection[int] | None = None, round: int | None = None) -> str:
        digest = array_digest(array)
        body = encode_model(array)
        positions = self.directory.keys if readers is None else readers
        allowed = ",".join(sorted(self.directory.keys[p] for p in positions
                                  if p in self.directory.keys))
        response = self._client.put(
            f"{self.own_url}/v1/models/{digest}", content=body,
            headers={"authorization": f"Bearer {self.token}",
                     "x-tempered-run": self.directory.run,
                     "x-tempered-round": str(self.round if round is None else round),
                     "x-tempered-readers": allowed})
        if response.status_code != 200:
            raise ExchangeError(f"this node's peer {self.own_url} refused model "
                                f"{digest[:12]}…: {response.status_code} {response.text}")
        self.published_bytes += len(body)
        return digest

    def fetch(self, digest: str, inbox: RecordDict) -> np.ndarray:
        if digest in self._fetched:
            return self._fetched[digest]
        if digest in self._failed:
            raise self._failed[digest]
        if INLINE_PREFIX + digest in inbox:  # the relay's fallback delivered it inline
            array = InlineExchange().fetch(digest, inbox)
            self.fallbacks += 1
            return array
        sender, round_ = self.sources.get(digest, (None, self.round))
        url = self.directory.peers.get(sender) if sender is not None else None
        if url is None:
            self.failures["no_source"] += 1
            raise ExchangeError(f"no peer is known for model {digest[:12]}…")
        headers = signed_fetch_headers(self.keys, self.directory.run, round_, digest)
        try:
            response = self._client.get(f"{url.rstrip('/')}/v1/models/{digest}",
                                        headers=headers)
        except httpx.HTTPError as error:
            self.failures["unreachable"] += 1
            raise PeerUnreachableError(f"peer {url} of node {sender} unreachable: {error}"
                                       ) from None
        if response.status_code != 200:
            reason = _refusal_of(response)
            self.failures[f"refused_{reason}"] += 1
            raise ExchangeError(f"peer {url} of node {sender} refused model {digest[:12]}…: "
                                f"{reason}")
        self.fetched_bytes += len(response.content)
        try:
            array = decode_model(response.content)
        except ValueError as error:
            self.failures["undecodable"] += 1
            raise ExchangeError(f"peer {url} sent bytes that are no array: {error}") from None
        try:
            return _verified(array, digest)
        except DigestMismatchError:
            self.failures["tampered"] += 1
            raise

    def publish_record(self, name: str, body: bytes) -> None:
        """Share a small record (this node's ledger head and vote) with every node of the
        run."""
        response = self._client.put(
            f"{self.own_url}/v1/records/{name}", content=body,
            headers={"authorization": f"Bearer {self.token}",
                     "x-tempered-run": self.directory.run,
                     "x-tempered-readers": ",".join(sorted(self.directory.keys.values()))})
        if response.status_code != 200:
            raise ExchangeError(f"this node's peer refused record {name!r}: "
                                f"{response.status_code} {response.text}")

    def fetch_records(self, positions: Collection[int], name: str) -> dict[int, bytes]:
        """The record ``name`` of each of ``positions`` that has one, read from their
        peers concurrently (so one slow or unreachable peer costs one timeout, not one
        per peer); failures are counted with the model fetches' (``unreachable``,
        ``refused_<reason>``, ``oversized_record``)."""
        positions = [p for p in positions if p in self.directory.peers]
        if not positions:
            return {}
        with ThreadPoolExecutor(max_workers=min(RECORD_READERS, len(positions))) as pool:
            results = list(pool.map(lambda p: self._read_record(p, name), positions))
        records = {}
        for position, (body, failure) in zip(positions, results, strict=True):
            if failure is not None:
                self.failures[failure] += 1
            if body is not None:
                records[position] = body
        return records

    def _read_record(self, position: int, name: str) -> tuple[bytes | None, str | None]:
        """One record read: ``(bytes, None)``, ``(None, None)`` when the peer holds none,
        or ``(None, failure reason)``."""
        url = self.directory.peers.get(position)
        if url is None:
            return None, None
        headers = signed_fetch_headers(self.keys, self.directory.run, 0, RECORD_PREFIX + name)
        try:
            with self._client.stream("GET", f"{url.rstrip('/')}/v1/records/{name}",
                                     headers=headers, timeout=RECORD_TIMEOUT) as response:
                if response.status_code == 404:
                    return None, None
                if response.status_code != 200:
                    response.read()
                    return None, f"refused_{_refusal_of(response)}"
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RECORD_BYTES:  # a peer cannot flood this node
                        return None, "oversized_record"
        except httpx.HTTPError:
            return None, "unreachable"
        return bytes(body), None

    def peer_stats(self) -> dict[str, int]:
        """This node's peer's counters (served, refused by reason), ``{}`` if unreadable."""
        try:
            response = self._client.get(f"{self.own_url}/v1/stats",
                                        headers={"authorization": f"Bearer {self.token}"})
            return {k: int(v) for k, v in response.json().items()}
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}

    def close(self) -> None:
        self._client.close()


def _refusal_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("refused") or response.status_code)
    except ValueError:
        return str(response.status_code)


def make_exchange(kind: str, run_name: str, directory: str | None = None) -> ModelExchange:
    """The exchange named ``kind`` (``"shared"`` or ``"inline"``) for run ``run_name``."""
    if kind == "shared":
        return SharedMemoryExchange(directory or SharedMemoryExchange.default_directory(run_name))
    if kind == "inline":
        return InlineExchange()
    raise ValueError(f"unknown exchange {kind!r}; choose 'shared' or 'inline'")
