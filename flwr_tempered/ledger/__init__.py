"""The run's ledger: signed messages, hash-chained blocks committed by a BFT quorum,
equivocation evidence, an append-only SQLite store and offline verification.

Every model a node sends carries the node's Ed25519 signature over (run id, round,
sender, digest, recipient); receivers refuse unsigned, forged, replayed or mismatched
messages. Each round becomes a block (commitments, their Merkle root, rejections,
evidence) that at least ``2f + 1`` validators endorse before it is stored. Two signed
headers by one node for different models in one round are evidence of equivocation that
anyone can check with the genesis' public keys.
"""

from .block import Block, Genesis, default_f, make_block, quorum_size
from .chain import BlockBuilder, CommitOutcome
from .crypto import KeyPair, sha256_hex, signature_backend, verify_signature
from .merkle import merkle_root
from .participant import EQUIVOCATOR_POLICIES, LedgerProtocolError, Participant, VoteOutcome
from .records import (
    BROADCAST,
    REJECTION_REASONS,
    Evidence,
    MalformedRecordError,
    Rejection,
    SignedHeader,
    find_equivocations,
    header_problem,
    sign_header,
)
from .store import LEDGER_FILE, LedgerStore, ledger_path
from .verify import LedgerError, LedgerReport, summarize, verify_ledger
from .votes import ProposalConflict, Vote

__all__ = [
    "BROADCAST",
    "EQUIVOCATOR_POLICIES",
    "LEDGER_FILE",
    "REJECTION_REASONS",
    "Block",
    "BlockBuilder",
    "CommitOutcome",
    "Evidence",
    "Genesis",
    "KeyPair",
    "LedgerError",
    "LedgerProtocolError",
    "LedgerReport",
    "LedgerStore",
    "MalformedRecordError",
    "Participant",
    "ProposalConflict",
    "Rejection",
    "SignedHeader",
    "Vote",
    "VoteOutcome",
    "default_f",
    "find_equivocations",
    "header_problem",
    "ledger_path",
    "make_block",
    "merkle_root",
    "quorum_size",
    "sha256_hex",
    "sign_header",
    "signature_backend",
    "summarize",
    "verify_ledger",
    "verify_signature",
]
