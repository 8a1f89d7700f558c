"""What nodes sign and what the ledger records about messages.

* :class:`SignedHeader`: a sender's signature over (run id, round, sender, digest of the
  model bytes, recipient or ``"broadcast"``). It travels with every model a node sends;
  receivers check it before aggregating (:func:`header_problem`).
* :class:`Rejection`: a receiver's report that it refused a message, and why.
* :class:`Evidence`: two valid headers by one sender for different digests in the same
  round of the same run. Honest nodes send one model per round to all neighbours, so this
  pair proves equivocation, and anyone holding the sender's public key can check it.

Everything here serialises to canonical JSON (sorted keys, no spaces, ASCII), the bytes
that get signed and hashed; parsing is strict, so a record has exactly one encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr_tempered.digest import is_digest

from .crypto import KeyPair, verify_signature

#: Recipient of a model sent to every neighbour.
BROADCAST = "broadcast"

_HEADER_DOMAIN = b"flwr-tempered/header/v1\n"

#: Why a receiver refuses a message (the ``reason`` of a :class:`Rejection`); the metric
#: of each is ``rejected_<reason>``.
REJECTION_REASONS = (
    "unsigned", "malformed_header", "unknown_sender", "wrong_sender", "wrong_run",
    "replayed", "wrong_recipient", "digest_mismatch", "bad_signature", "excluded",
    "missing_model",
)


def is_position(text: str) -> bool:
    """Whether ``text`` spells a node position canonically (ASCII digits, no leading 0)."""
    return re.fullmatch(r"0|[1-9][0-9]*", text) is not None


class MalformedRecordError(ValueError):
    """A ledger record that does not parse as the exact canonical structure expected."""


def canonical_json(value: Any) -> bytes:
    """The one byte encoding of a JSON value used for signing and hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _field(data: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    value = data.get(name)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise MalformedRecordError(f"{what}: {name} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise MalformedRecordError(f"{what}: {name} must be a {kind.__name__}, got {value!r}")
    return value


def _exact_keys(data: Any, keys: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MalformedRecordError(f"{what} must be a JSON object, got {type(data).__name__}")
    if set(data) != keys:
        raise MalformedRecordError(
            f"{what} must have exactly the keys {sorted(keys)}, got {sorted(data)}")
    return data


_FLAT_TYPES: dict[str, type] = {"int": int, "str": str}


def _flat_values(cls: type, data: Any, what: str) -> dict[str, Any]:
    """The fields of the flat dataclass ``cls`` (``int``/``str`` fields only) read from
    ``data`` strictly: exactly its keys, each of its type."""
    kinds = {f.name: _FLAT_TYPES[str(f.type)] for f in dataclasses.fields(cls)}
    data = _exact_keys(data, set(kinds), what)
    return {name: _field(data, name, kind, what) for name, kind in kinds.items()}


@dataclass(frozen=True, order=True)
class SignedHeader:
    """A sender's signed commitment to the model it sends in one round."""

    run_id: str
    round: int
    sender: int
    digest: str
    recipient: str
    signature: str = ""

    def signed_fields(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "round": self.round, "sender": self.sender,
                "digest": self.digest, "recipient": self.recipient}

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (domain-separated from blocks and keys)."""
        return self._signed_bytes

    @functools.cached_property
    def _signed_bytes(self) -> bytes:  # a header is immutable: encode it once
        return _HEADER_DOMAIN + canonical_json(self.signed_fields())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_bytes(self) -> bytes:
        """Canonical encoding of the whole header (the Merkle leaf)."""
        return self._bytes

    @functools.cached_property
    def _bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> SignedHeader:
        """Strict parse; :class:`MalformedRecordError` names the first bad field."""
        header = cls(**_flat_values(cls, data, "header"))
        if not is_digest(header.digest):
            raise MalformedRecordError(
                f"header: digest is not a lowercase hex SHA-256: {header.digest!r}")
        if header.recipient != BROADCAST and not is_position(header.recipient):
            raise MalformedRecordError(
                f"header: recipient must be {BROADCAST!r} or a node position, "
                f"got {header.recipient!r}"
            )
        return header

    def is_validly_signed(self, public_keys: Mapping[int, str]) -> bool:
        """Whether the signature is the sender's (by the run's public keys)."""
        key = public_keys.get(self.sender)
        return key is not None and verify_signature(key, self.signed_bytes(), self.signature)


def sign_header(keys: KeyPair, *, run_id: str, round: int, sender: int, digest: str,
                recipient: str | int = BROADCAST) -> SignedHeader:
    """``sender``'s signed header for the model ``digest`` sent in ``round``."""
    unsigned = SignedHeader(run_id, int(round), int(sender), digest, str(recipient))
    return dataclasses.replace(unsigned, signature=keys.sign(unsigned.signed_bytes()))


def header_problem(header: Any, public_keys: Mapping[int, str], *, run_id: str, round: int,
                   sender: int, recipient: int, digest: str) -> str | None:
    """Why a receiver must refuse the model ``digest`` that ``sender`` sent it in
    ``round`` with ``header`` (one of :data:`REJECTION_REASONS`), or ``None`` if the
    message is authentic. Cheap checks come first, the signature last."""
    if header is None:
        return "unsigned"
    if not isinstance(header, SignedHeader):
        try:
            header = SignedHeader.from_dict(header)
        except MalformedRecordError:
            return "malformed_header"
    if sender not in public_keys:
        return "unknown_sender"
    if header.sender != sender:
        return "wrong_sender"
    if header.run_id != run_id:
        return "wrong_run"
    if header.round != round:
        return "replayed"
    if header.recipient not in (BROADCAST, str(recipient)):
        return "wrong_recipient"
    if header.digest != digest:
        return "digest_mismatch"
    if not header.is_validly_signed(public_keys):
        return "bad_signature"
    return None


@dataclass(frozen=True, order=True)
class Rejection:
    """A receiver refused ``sender``'s message claiming ``digest`` in ``round``."""

    round: int
    receiver: int
    sender: int
    digest: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Rejection:
        rejection = cls(**_flat_values(cls, data, "rejection"))
        if rejection.reason not in REJECTION_REASONS:
            raise MalformedRecordError(f"rejection: unknown reason {rejection.reason!r}")
        return rejection


@dataclass(frozen=True)
class Evidence:
    """Proof that ``sender`` signed two different models for the same round."""

    first: SignedHeader
    second: SignedHeader

    @property
    def sender(self) -> int:
        return self.first.sender

    @property
    def round(self) -> int:
        return self.first.round

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "equivocation", "headers": [self.first.to_dict(), self.second.to_dict()]}

    @classmethod
    def from_dict(cls, data: Any) -> Evidence:
        data = _exact_keys(data, {"kind", "headers"}, "evidence")
        if data["kind"] != "equivocation":
            raise MalformedRecordError(f"evidence: unknown kind {data['kind']!r}")
        headers = data["headers"]
        if not isinstance(headers, list) or len(headers) != 2:
            raise MalformedRecordError("evidence: headers must be a list of two headers")
        return cls(SignedHeader.from_dict(headers[0]), SignedHeader.from_dict(headers[1]))

    def problem(self, public_keys: Mapping[int, str]) -> str | None:
        """Why this is not valid evidence, or ``None``: both headers signed by the same
        known sender, same run and round, different digests, in canonical order."""
        a, b = self.first, self.second
        if a.sender != b.sender:
            return f"headers are from different senders ({a.sender}, {b.sender})"
        if a.run_id != b.run_id or a.round != b.round:
            return "headers are from different runs or rounds"
        if a.digest == b.digest:
            return "headers commit to the same digest"
        if not a < b:
            return "headers are not in canonical order"
        for header in (a, b):
            if not header.is_validly_signed(public_keys):
                return (f"signature of node {header.sender} on digest "
                        f"{header.digest[:12]}… is invalid")
        return None


def find_equivocations(headers: Iterable[SignedHeader]) -> list[Evidence]:
    """One evidence record per (run, round, sender) that signed more than one digest.

    ``headers`` must already be validly signed. The pair is chosen deterministically (the
    smallest header, then the smallest with another digest), so every honest party
    derives the same records from the same headers.
    """
    groups: dict[tuple[str, int, int], list[SignedHeader]] = {}
    for header in headers:
        groups.setdefault((header.run_id, header.round, header.sender), []).append(header)
    found = []
    for key in sorted(groups):
        ordered = sorted(set(groups[key]))
        first = ordered[0]
        other = next((h for h in ordered if h.digest != first.digest), None)
        if other is not None:
            found.append(Evidence(first, other))
    return found
