"""The messages of a decentralized round: names and keys shared by relay and nodes.

Per training round the relay sends every node one ``train`` message (aggregate what you
were sent, maybe evaluate, train, publish), then every model-poisoning node one
``query.attack`` message (craft a vector per recipient), and on evaluation rounds one
honest node a ``query.audit`` message (average the honest models, measure consensus).
Models are named by digest; see :mod:`flwr_tempered.runtime.exchange`.
"""

from __future__ import annotations

#: Message types (Flower routes ``train`` / ``query.<action>`` to the ClientApp handlers).
TRAIN = "train"
HELLO = "query.hello"
ATTACK = "query.attack"
AUDIT = "query.audit"

#: Record names inside a message's ``RecordDict``.
INSTRUCTIONS = "tempered.instructions"
REPORT = "tempered.report"
METRICS = "tempered.metrics"
