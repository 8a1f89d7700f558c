"""A node's exchange server in deployment mode: models travel peer to peer, not through
the SuperLink.

A SuperNode's ClientApp process lives for one message, so the server that hands its
models to the neighbours runs beside the SuperNode as its own long-lived process
(``flwr-tempered peer --listen HOST:PORT --token-file FILE``). The node *publishes* each
model it sends to its own peer (``PUT /v1/models/<digest>``, authorised by the token that
only the node's machine can read; with the token it may also read its models back),
naming the run, the round and the public keys of the nodes entitled to read it (its
recipients along this round's graph). A neighbour *fetches* it by digest
(``GET /v1/models/<digest>``) with a request signed by its Ed25519 key (the one the run
registered) over (run, round, requester, digest, nonce). The peer serves the bytes only to
a requester that is entitled, has signed, and has not used that signature before; every
refusal is counted by reason (``GET /v1/stats``, token only), and the receiver checks the
bytes against the digest before use, so a peer that serves tampered bytes gains nothing.

Wire format: the ``.npy`` encoding of the one array (``numpy.save`` with
``allow_pickle=False``; read back with ``allow_pickle=False``): raw bytes behind a short
text header, never pickle. The HTTP stack is the one Flower already ships (Starlette,
uvicorn, httpx).
"""

from __future__ import annotations

import hmac
import io
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flwr_tempered.digest import array_digest, is_digest
from flwr_tempered.ledger.crypto import KeyPair, verify_signature

__all__ = [
    "FETCH_HEADERS",
    "REFUSAL_REASONS",
    "PeerServer",
    "PeerStore",
    "decode_model",
    "encode_model",
    "fetch_request_bytes",
    "peer_app",
    "read_token",
    "signed_fetch_headers",
]

#: Request headers of a signed fetch.
FETCH_HEADERS = {
    "run": "x-tempered-run",
    "round": "x-tempered-round",
    "requester": "x-tempered-requester",
    "nonce": "x-tempered-nonce",
    "signature": "x-tempered-signature",
}

#: Why a peer refuses a fetch (the ``/v1/stats`` counters use these names).
REFUSAL_REASONS = ("unsigned", "bad_signature", "replayed", "not_neighbour", "wrong_round",
                   "unknown_model")

#: Rounds a peer keeps a model after a newer round's model was published.
KEEP_ROUNDS = 2

#: Signatures a peer remembers per model, to refuse replays (a model is read by its
#: recipients, a handful of times).
_MAX_SIGNATURES = 4096

_CONTENT_TYPE = "application/x-npy"

#: Key prefix of the small records a node shares with the run's nodes (its ledger head
#: and vote).
RECORD_PREFIX = "record:"


def encode_model(array: np.ndarray) -> bytes:
    """The ``.npy`` bytes of ``array`` (no pickle)."""
    stream = io.BytesIO()
    np.save(stream, np.ascontiguousarray(array), allow_pickle=False)
    return stream.getvalue()


def decode_model(body: bytes) -> np.ndarray:
    """The array in ``.npy`` bytes, refusing pickled objects (``ValueError``)."""
    return np.load(io.BytesIO(body), allow_pickle=False)


def fetch_request_bytes(run: str, round: int, requester: str, digest: str, nonce: str
                        ) -> bytes:
    """What a fetch request's signature covers."""
    return "\0".join(("flwr-tempered/peer-fetch/v1", run, str(round), requester, digest,
                      nonce)).encode()


def signed_fetch_headers(keys: KeyPair, run: str, round: int, digest: str) -> dict[str, str]:
    """The headers of a fetch of ``digest`` signed by ``keys`` (a fresh nonce each call, so
    a retry is a new request and a copied request is a replay)."""
    nonce = secrets.token_hex(16)
    signature = keys.sign(fetch_request_bytes(run, round, keys.public_key, digest, nonce))
    return {FETCH_HEADERS["run"]: run, FETCH_HEADERS["round"]: str(round),
            FETCH_HEADERS["requester"]: keys.public_key, FETCH_HEADERS["nonce"]: nonce,
            FETCH_HEADERS["signature"]: signature}


def read_token(path: str | Path, create: bool = False) -> str:
    """The peer's owner token in ``path``; with ``create``, a new random one is written
    there (readable by the owner only) when the file does not exist."""
    path = Path(path)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(32)
        path.touch(mode=0o600)
        path.write_text(token)
        return token
    token = path.read_text().strip()
    if len(token) < 32:
        raise ValueError(f"the peer token in {path} is shorter than 32 characters")
    return token


@dataclass
class _Entry:
    run: str
    round: int
    readers: frozenset[str]
    body: bytes
    signatures: set[str] = field(default_factory=set)


class PeerStore:
    """The models a peer holds and its access rules, without HTTP (thread-safe)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.refused: Counter[str] = Counter()
        self.served = 0
        self.served_bytes = 0

    def publish(self, digest: str, body: bytes, *, run: str, round: int,
                readers: frozenset[str]) -> None:
        """Keep ``body`` (the ``.npy`` bytes of the model named ``digest``) for ``readers``
        in ``run``'s ``round``; models older than ``KEEP_ROUNDS`` rounds are dropped."""
        if not is_digest(digest):
            raise ValueError(f"not a model digest: {digest!r}")
        if array_digest(decode_model(body)) != digest:
            raise ValueError(f"the published bytes do not match digest {digest[:12]}…")
        with self._lock:
            known = self._entries.get(digest)
            if known is not None and (known.run, known.round) == (run, round):
                known.readers = known.readers | readers
            else:
                self._entries[digest] = _Entry(run, round, frozenset(readers), body)
            stale = [d for d, e in self._entries.items() if not d.startswith(RECORD_PREFIX)
                     and (e.run != run or e.round < round - KEEP_ROUNDS)]
            for old in stale:
                del self._entries[old]

    def publish_record(self, name: str, body: bytes, *, run: str,
                       readers: frozenset[str]) -> None:
        """Keep ``body`` as the record ``name`` (replacing the previous one), for
        ``readers``; fetched like a model under the key ``RECORD_PREFIX + name``, signed
        for round 0 (a record is not tied to a round)."""
        if not name.isidentifier():
            raise ValueError(f"not a record name: {name!r}")
        with self._lock:
            previous = self._entries.get(RECORD_PREFIX + name)
            entry = _Entry(run, 0, frozenset(readers), body)
            if previous is not None and previous.run == run:  # a replay stays a replay
                entry.signatures = previous.signatures
            self._entries[RECORD_PREFIX + name] = entry

    def fetch(self, digest: str, headers: dict[str, str]) -> tuple[bytes | None, str | None]:
        """The model's bytes for a signed request, or ``None`` and the refusal reason."""
        values = {name: headers.get(header, "") for name, header in FETCH_HEADERS.items()}
        reason = self._refusal(digest, values)
        with self._lock:
            if reason is not None:
                self.refused[reason] += 1
                return None, reason
            entry = self._entries[digest]
            self.served += 1
            self.served_bytes += len(entry.body)
            return entry.body, None

    def owned(self, digest: str) -> bytes | None:
        """The bytes of a model this peer holds, for its owner (no access rules)."""
        with self._lock:
            entry = self._entries.get(digest)
            return entry.body if entry is not None else None

    def _refusal(self, digest: str, values: dict[str, str]) -> str | None:
        if not values["signature"] or not values["requester"]:
            return "unsigned"
        try:
            round_ = int(values["round"])
        except ValueError:
            return "bad_signature"
        message = fetch_request_bytes(values["run"], round_, values["requester"], digest,
                                      values["nonce"])
        try:
            valid = verify_signature(values["requester"], message, values["signature"])
        except ValueError:
            valid = False
        if not valid:
            return "bad_signature"
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return "unknown_model"
            if values["signature"] in entry.signatures:
                return "replayed"
            if (entry.run, entry.round) != (values["run"], round_):
                return "wrong_round"
            if values["requester"] not in entry.readers:
                return "not_neighbour"
            if len(entry.signatures) < _MAX_SIGNATURES:
                entry.signatures.add(values["signature"])
        return None

    def stats(self) -> dict[str, int]:
        """Served requests and bytes, and refusals by reason."""
        with self._lock:
            return {"served": self.served, "served_bytes": self.served_bytes,
                    "models": len(self._entries),
                    **{f"refused_{reason}": self.refused[reason]
                       for reason in REFUSAL_REASONS}}


#: The HTTP status of each refusal (the others: 403 Forbidden).
_REFUSAL_STATUS = {"unsigned": 401, "bad_signature": 401, "replayed": 409,
                   "unknown_model": 404}


def _refused(reason: str | None) -> JSONResponse:
    return JSONResponse({"refused": reason}, _REFUSAL_STATUS.get(reason or "", 403))


def peer_app(store: PeerStore, token: str) -> Starlette:
    """The peer's HTTP API over ``store``; ``token`` authorises its owner (publish, stats)."""

    def owner(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def put_model(request: Request) -> Response:
        if not owner(request):
            return JSONResponse({"error": "publishing needs the owner's token"}, 401)
        digest = request.path_params["digest"]
        try:
            run = request.headers["x-tempered-run"]
            round_ = int(request.headers["x-tempered-round"])
            readers = frozenset(r for r in request.headers.get("x-tempered-readers",
                                                               "").split(",") if r)
            store.publish(digest, await request.body(), run=run, round=round_,
                          readers=readers)
        except (KeyError, ValueError) as error:
            return JSONResponse({"error": f"bad publish request: {error}"}, 400)
        return JSONResponse({"digest": digest})

    async def get_model(request: Request) -> Response:
        if owner(request):  # the node reads back its own model (to hand it to the relay)
            body = store.owned(request.path_params["digest"])
            if body is None:
                return JSONResponse({"refused": "unknown_model"}, 404)
            return Response(body, media_type=_CONTENT_TYPE)
        body, reason = store.fetch(request.path_params["digest"], dict(request.headers))
        if body is None:
            return _refused(reason)
        return Response(body, media_type=_CONTENT_TYPE)

    async def put_record(request: Request) -> Response:
        if not owner(request):
            return JSONResponse({"error": "publishing needs the owner's token"}, 401)
        try:
            readers = frozenset(r for r in request.headers.get("x-tempered-readers",
                                                               "").split(",") if r)
            store.publish_record(request.path_params["name"], await request.body(),
                                 run=request.headers["x-tempered-run"], readers=readers)
        except (KeyError, ValueError) as error:
            return JSONResponse({"error": f"bad record: {error}"}, 400)
        return JSONResponse({"record": request.path_params["name"]})

    async def get_record(request: Request) -> Response:
        key = RECORD_PREFIX + request.path_params["name"]
        body, reason = store.fetch(key, dict(request.headers))
        if body is None:
            return _refused(reason)
        return Response(body, media_type="application/json")

    async def get_stats(request: Request) -> Response:
        if not owner(request):
            return JSONResponse({"error": "stats need the owner's token"}, 401)
        return JSONResponse(store.stats())

    return Starlette(routes=[
        Route("/v1/models/{digest}", put_model, methods=["PUT"]),
        Route("/v1/models/{digest}", get_model, methods=["GET"]),
        Route("/v1/records/{name}", put_record, methods=["PUT"]),
        Route("/v1/records/{name}", get_record, methods=["GET"]),
        Route("/v1/stats", get_stats, methods=["GET"]),
    ])


class PeerServer:
    """A peer served by uvicorn in a background thread (tests, notebooks, the CLI).

    ``PeerServer(host, port, token).start()`` returns once it accepts connections;
    ``url`` is its address; ``stop()`` shuts it down.
    """

    def __init__(self, host: str, port: int, token: str, store: PeerStore | None = None
                 ) -> None:
        import uvicorn

        self.store = store if store is not None else PeerStore()
        self.host, self.port = host, port
        config = uvicorn.Config(peer_app(self.store, token), host=host, port=port,
                                log_level="warning", access_log=False, lifespan="off",
                                ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name=f"peer-{host}:{port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, seconds: float = 10.0) -> PeerServer:
        self._thread.start()
        deadline = time.monotonic() + seconds
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the peer on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
