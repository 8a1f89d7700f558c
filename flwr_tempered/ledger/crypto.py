"""Ed25519 key pairs and signatures, and SHA-256 of ledger records.

Keys are generated with pycryptodome (a node's secret is its 32-byte RFC 8032 seed).
Ed25519 signatures are deterministic, so any correct implementation produces the same
bytes; signing and verifying go through OpenSSL (the ``cryptography`` package, already a
dependency of flwr) when it is importable, because pycryptodome's verification costs
about 1.2 ms against OpenSSL's 0.065 ms on the dev machine, and a round verifies every
message it receives and every block it signs. ``FLWR_TEMPERED_ED25519=pycryptodome``
forces pycryptodome for both; the tests check that the two produce identical signatures
and agree on what verifies.

Verification results are memoised per process: a result is a pure function of
(public key, message, signature), and in simulation one worker process hosts many nodes
that check the same broadcast messages.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

#: Length in bytes of an Ed25519 seed, public key and signature.
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

#: Environment variable choosing the signature implementation.
BACKEND_VARIABLE = "FLWR_TEMPERED_ED25519"
BACKENDS = ("openssl", "pycryptodome")


def _openssl_module() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography ships with flwr
        return None
    return ed25519


def signature_backend() -> str:
    """The implementation signing and verifying: ``openssl`` when available, else
    ``pycryptodome``; the environment variable overrides."""
    chosen = os.environ.get(BACKEND_VARIABLE, "").strip().lower()
    if chosen and chosen not in BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE} must be one of {', '.join(BACKENDS)}, got {chosen!r}")
    if chosen == "pycryptodome":
        return chosen
    if _openssl_module() is None:
        if chosen == "openssl":
            raise ValueError(f"{BACKEND_VARIABLE}=openssl but the cryptography package is missing")
        return "pycryptodome"
    return "openssl"


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (pycryptodome)."""
    return SHA256.new(data).hexdigest()


class KeyPair:
    """A node's Ed25519 key pair, kept as its 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)!r}")
        self.seed = bytes(seed)
        key = eddsa.import_private_key(self.seed)
        self.public_key = key.public_key().export_key(format="raw").hex()
        self._pycryptodome_key = key

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair (pycryptodome's generator)."""
        return cls(ECC.generate(curve="ed25519").seed)

    @classmethod
    def from_hex(cls, seed_hex: str) -> KeyPair:
        """The key pair of a hex seed (as stored in a node's state). Memoised: deriving
        the public key costs a scalar multiplication, and a node reloads its key from
        its state on every message."""
        return _key_pair_from_hex(seed_hex)

    @property
    def seed_hex(self) -> str:
        return self.seed.hex()

    def sign(self, message: bytes) -> str:
        """Hex Ed25519 signature of ``message``."""
        if signature_backend() == "openssl":
            return _openssl_private_key(self.seed).sign(message).hex()
        return eddsa.new(self._pycryptodome_key, "rfc8032").sign(message).hex()


@functools.lru_cache(maxsize=1024)
def _key_pair_from_hex(seed_hex: str) -> KeyPair:
    try:
        seed = bytes.fromhex(seed_hex)
    except (TypeError, ValueError):
        raise ValueError("a key pair's seed must be hex") from None
    return KeyPair(seed)


@functools.lru_cache(maxsize=1024)
def _openssl_private_key(seed: bytes) -> Any:
    return _openssl_module().Ed25519PrivateKey.from_private_bytes(seed)


@functools.lru_cache(maxsize=4096)
def _public_key(public_key: bytes, backend: str) -> Any:
    if backend == "openssl":
        return _openssl_module().Ed25519PublicKey.from_public_bytes(public_key)
    return eddsa.new(eddsa.import_public_key(public_key), "rfc8032")


@functools.lru_cache(maxsize=16384)
def _verify(public_key: bytes, message: bytes, signature: bytes, backend: str) -> bool:
    try:
        key = _public_key(public_key, backend)
        if backend == "openssl":
            key.verify(signature, message)
        else:
            key.verify(message, signature)
    except Exception:  # invalid key encoding or signature: both mean "does not verify"
        return False
    return True


def verify_signature(public_key: str, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (hex) is ``public_key``'s (hex) signature of ``message``.

    Never raises: malformed or non-canonical hex (upper case, spaces), a wrong length or
    an invalid point all give ``False``, so a stored signature has exactly one spelling.
    """
    try:
        key_bytes, signature_bytes = bytes.fromhex(public_key), bytes.fromhex(signature)
    except (TypeError, ValueError):
        return False
    if key_bytes.hex() != public_key or signature_bytes.hex() != signature:
        return False
    if len(key_bytes) != PUBLIC_KEY_BYTES or len(signature_bytes) != SIGNATURE_BYTES:
        return False
    return _verify(key_bytes, bytes(message), signature_bytes, signature_backend())


def clear_verification_cache() -> None:
    """Forget memoised verification results (benchmarks measure cold verification)."""
    _verify.cache_clear()
    _public_key.cache_clear()
