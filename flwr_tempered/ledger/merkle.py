"""Merkle root over a block's commitments.

Leaves and inner nodes are hashed with different one-byte prefixes (0x00, 0x01), so a
leaf can never be passed off as an inner node, and an odd node is promoted to the next
level unchanged instead of being paired with a copy of itself (duplicating it would let
two different leaf lists share a root). SHA-256 throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Hash import SHA256

_LEAF, _INNER = b"\x00", b"\x01"
#: Root of an empty list of leaves.
EMPTY_ROOT = SHA256.new(b"flwr-tempered/merkle/empty").hexdigest()


def merkle_root(leaves: Sequence[bytes]) -> str:
    """Hex Merkle root of ``leaves`` (each leaf the canonical bytes of one record)."""
    if not leaves:
        return EMPTY_ROOT
    level = [SHA256.new(_LEAF + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        paired = [SHA256.new(_INNER + level[i] + level[i + 1]).digest()
                  for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0].hex()
