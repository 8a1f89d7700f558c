"""The messages of a decentralized round: names and keys shared by relay and nodes.

Once, the relay asks every node to register a key pair for the run's ledger
(``query.register``). Per training round the relay sends every node one ``train``
message (aggregate what you were sent, maybe evaluate, train, publish), then every
model-poisoning node one ``query.attack`` message (craft a vector per recipient), and on
evaluation rounds one honest node a ``query.audit`` message (average the honest models,
measure consensus). Models are named by digest; see :mod:`flwr_tempered.runtime.exchange`.
With the ledger on, every model travels with its sender's signed header, a train message
also carries the previous round's block proposal for the node to endorse, and the last
block is endorsed through a ``query.commit`` message. Peer to peer, a node that cannot
reach a sender's peer answers its train message with the digests it misses; the relay
asks the senders for them (``query.upload``) and sends the train message again with
those models inline (the fallback).
"""

from __future__ import annotations

#: Message types (Flower routes ``train`` / ``query.<action>`` to the ClientApp handlers).
TRAIN = "train"
HELLO = "query.hello"
ATTACK = "query.attack"
AUDIT = "query.audit"
REGISTER = "query.register"
COMMIT = "query.commit"
UPLOAD = "query.upload"

#: Record names inside a message's ``RecordDict``.
INSTRUCTIONS = "tempered.instructions"
REPORT = "tempered.report"
METRICS = "tempered.metrics"

#: Key of a node's ledger identity (its :class:`~flwr_tempered.ledger.Participant` state)
#: in the ClientApp's ``context.state``.
LEDGER_STATE = "tempered.ledger"

#: Key of the run's genesis body, pinned by a node on first sight, in ``context.state``.
GENESIS_STATE = "tempered.genesis"

#: Key of the digest of the run's peer directory (keys and peer addresses), pinned by a
#: node of a ``p2p`` run on first sight, in ``context.state``.
DIRECTORY_STATE = "tempered.directory"
