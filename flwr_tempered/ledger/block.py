"""The ledger's records of a run: a genesis block, then one block per round.

* :class:`Genesis` names the run and its validators: every node's Ed25519 public key with
  a proof of possession (the node's signature over the run id, its position and its key),
  the fault bound ``f`` and the run's configuration.
* :class:`Block` records one round: the previous block's hash, the round, the signed
  commitments (headers) of every node that sent a model, their Merkle root, the messages
  receivers rejected, and the equivocation evidence found among the commitments.
* A block is committed when at least ``2f + 1`` validators signed its hash
  (:func:`quorum_size`); validators sign only after checking it (:func:`block_problem`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .crypto import KeyPair, sha256_hex, verify_signature
from .merkle import merkle_root
from .records import (
    Evidence,
    MalformedRecordError,
    Rejection,
    SignedHeader,
    _exact_keys,
    _field,
    canonical_json,
    find_equivocations,
    is_position,
)

VERSION = 1
_KEY_DOMAIN = b"flwr-tempered/key/v1\n"
_BLOCK_DOMAIN = b"flwr-tempered/block/v1\n"


def default_f(n: int) -> int:
    """The largest number of faulty validators ``n`` tolerates (``n >= 3f + 1``)."""
    return max((n - 1) // 3, 0)


def quorum_size(n: int, f: int) -> int:
    """Signatures a block needs: ``2f + 1`` (which must not exceed ``n``)."""
    if f < 0 or n < 3 * f + 1:
        raise ValueError(f"f must satisfy 0 <= f and n >= 3f + 1; got n={n}, f={f}")
    return 2 * f + 1


def key_proof_bytes(run_id: str, position: int, public_key: str) -> bytes:
    """What a node signs to prove it holds the key it registers for ``position``."""
    return _KEY_DOMAIN + canonical_json({"run_id": run_id, "position": position,
                                         "public_key": public_key})


def key_proof_holds(run_id: str, position: int, public_key: str, proof: str) -> bool:
    """Whether ``proof`` is ``public_key``'s signature over its registration (a malformed
    key or signature is no proof)."""
    try:
        return verify_signature(public_key, key_proof_bytes(run_id, position, public_key),
                                proof)
    except ValueError:
        return False


def endorsement_bytes(block_hash: str) -> bytes:
    """What a validator signs to endorse a block."""
    return _BLOCK_DOMAIN + block_hash.encode("ascii")


def parse_body(body: bytes, what: str) -> Mapping[str, Any]:
    """Decode a stored body, insisting on its canonical encoding."""
    try:
        data = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedRecordError(f"{what} is not valid JSON: {error}") from None
    try:
        encoded = canonical_json(data)
    except ValueError:  # a number that overflowed to infinity
        raise MalformedRecordError(f"{what} holds a number out of range") from None
    if encoded != body:
        raise MalformedRecordError(f"{what} is not in canonical form")
    if not isinstance(data, Mapping):
        raise MalformedRecordError(f"{what} must be a JSON object")
    return data


@dataclass(frozen=True)
class Genesis:
    """Block 0: the run, its validators' keys and the fault bound."""

    run_id: str
    created_ms: int
    f: int
    keys: Mapping[int, str]
    proofs: Mapping[int, str]
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def quorum(self) -> int:
        return quorum_size(self.n, self.f)

    def body(self) -> bytes:
        return self._body

    @functools.cached_property
    def _body(self) -> bytes:  # the genesis is immutable: encode it once
        return canonical_json({
            "version": VERSION, "kind": "genesis", "run_id": self.run_id,
            "created_ms": self.created_ms, "f": self.f,
            "keys": {str(p): k for p, k in sorted(self.keys.items())},
            "proofs": {str(p): s for p, s in sorted(self.proofs.items())},
            "config": dict(self.config),
        })

    @functools.cached_property
    def hash(self) -> str:
        return sha256_hex(self.body())

    @classmethod
    def from_body(cls, body: bytes) -> Genesis:
        data = _exact_keys(parse_body(body, "genesis"),
                           {"version", "kind", "run_id", "created_ms", "f", "keys", "proofs",
                            "config"}, "genesis")
        if data["version"] != VERSION or data["kind"] != "genesis":
            raise MalformedRecordError("genesis: wrong version or kind")
        keys, proofs = data["keys"], data["proofs"]
        if (not isinstance(keys, Mapping) or not isinstance(proofs, Mapping)
                or set(keys) != set(proofs)):
            raise MalformedRecordError("genesis: keys and proofs must map the same positions")
        if not all(is_position(p) for p in keys):
            raise MalformedRecordError("genesis: positions must be non-negative integers")
        if not isinstance(data["config"], Mapping):
            raise MalformedRecordError("genesis: config must be an object")
        return cls(
            run_id=_field(data, "run_id", str, "genesis"),
            created_ms=_field(data, "created_ms", int, "genesis"),
            f=_field(data, "f", int, "genesis"),
            keys={int(p): str(k) for p, k in keys.items()},
            proofs={int(p): str(s) for p, s in proofs.items()},
            config=dict(data["config"]),
        )

    def problem(self) -> str | None:
        """Why this genesis is invalid (bad fault bound, duplicate key, bad proof)."""
        if self.f < 0 or self.n < 3 * self.f + 1:
            return f"f = {self.f} is not tolerated by {self.n} validators (needs n >= 3f + 1)"
        if len(set(self.keys.values())) != len(self.keys):
            return "two positions register the same public key"
        for position, key in sorted(self.keys.items()):
            if not key_proof_holds(self.run_id, position, key, self.proofs.get(position, "")):
                return f"proof of possession of node {position}'s key is invalid"
        return None


@dataclass(frozen=True)
class Block:
    """One round's record. Lists are kept sorted, so equal contents give equal bytes."""

    height: int
    round: int
    run_id: str
    prev_hash: str
    timestamp_ms: int
    commitments: tuple[SignedHeader, ...]
    rejections: tuple[Rejection, ...]
    evidence: tuple[Evidence, ...]

    @functools.cached_property
    def merkle_root(self) -> str:
        return merkle_root([h.to_bytes() for h in self.commitments])

    def body(self) -> bytes:
        return self._body

    @functools.cached_property
    def _body(self) -> bytes:  # a block is immutable: encode it once
        return canonical_json({
            "version": VERSION, "kind": "round", "height": self.height, "round": self.round,
            "run_id": self.run_id, "prev_hash": self.prev_hash,
            "timestamp_ms": self.timestamp_ms, "merkle_root": self.merkle_root,
            "commitments": [h.to_dict() for h in self.commitments],
            "rejections": [r.to_dict() for r in self.rejections],
            "evidence": [e.to_dict() for e in self.evidence],
        })

    @functools.cached_property
    def hash(self) -> str:
        return sha256_hex(self.body())

    @classmethod
    def from_body(cls, body: bytes) -> Block:
        """Strict parse of a stored or proposed block (the Merkle root must match)."""
        data = _exact_keys(parse_body(body, "block"), {
            "version", "kind", "height", "round", "run_id", "prev_hash", "timestamp_ms",
            "merkle_root", "commitments", "rejections", "evidence"}, "block")
        if data["version"] != VERSION or data["kind"] != "round":
            raise MalformedRecordError("block: wrong version or kind")
        for name in ("commitments", "rejections", "evidence"):
            if not isinstance(data[name], list):
                raise MalformedRecordError(f"block: {name} must be a list")
        block = cls(
            height=_field(data, "height", int, "block"),
            round=_field(data, "round", int, "block"),
            run_id=_field(data, "run_id", str, "block"),
            prev_hash=_field(data, "prev_hash", str, "block"),
            timestamp_ms=_field(data, "timestamp_ms", int, "block"),
            commitments=tuple(SignedHeader.from_dict(h) for h in data["commitments"]),
            rejections=tuple(Rejection.from_dict(r) for r in data["rejections"]),
            evidence=tuple(Evidence.from_dict(e) for e in data["evidence"]),
        )
        if data["merkle_root"] != block.merkle_root:
            raise MalformedRecordError("block: Merkle root does not match the commitments")
        return block

    def problem(self, public_keys: Mapping[int, str]) -> str | None:
        """Why the block's contents are invalid, or ``None``: every commitment signed by
        a known node for this run and round, lists sorted without duplicates, and the
        evidence exactly what the commitments prove."""
        for name in ("commitments", "rejections"):
            items = list(getattr(self, name))
            if items != sorted(set(items)):
                return f"{name} are not sorted or contain duplicates"
        for header in self.commitments:
            if header.run_id != self.run_id or header.round != self.round:
                return f"commitment of node {header.sender} is for another run or round"
            if not header.is_validly_signed(public_keys):
                return f"commitment of node {header.sender} has an invalid signature"
        for rejection in self.rejections:
            if rejection.round != self.round:
                return f"rejection by node {rejection.receiver} is for round {rejection.round}"
            if rejection.receiver not in public_keys or rejection.sender not in public_keys:
                return f"rejection names an unknown node ({rejection.receiver}, {rejection.sender})"
        for record in self.evidence:
            reason = record.problem(public_keys)
            if reason is not None:
                return f"evidence against node {record.sender}: {reason}"
        if list(self.evidence) != find_equivocations(self.commitments):
            return "evidence does not match the equivocations among the commitments"
        return None


def make_block(*, height: int, round: int, run_id: str, prev_hash: str, timestamp_ms: int,
               commitments: Sequence[SignedHeader], rejections: Sequence[Rejection]) -> Block:
    """A block in canonical form, with the evidence its commitments prove."""
    headers = tuple(sorted(set(commitments)))
    return Block(height=height, round=round, run_id=run_id, prev_hash=prev_hash,
                 timestamp_ms=timestamp_ms, commitments=headers,
                 rejections=tuple(sorted(set(rejections))),
                 evidence=tuple(find_equivocations(headers)))


def endorse(keys: KeyPair, block_hash: str) -> str:
    """A validator's signature over ``block_hash``."""
    return keys.sign(endorsement_bytes(block_hash))


def endorsement_is_valid(public_keys: Mapping[int, str], validator: int, block_hash: str,
                         signature: str) -> bool:
    key = public_keys.get(validator)
    return key is not None and verify_signature(key, endorsement_bytes(block_hash), signature)
