"""The round's sample, told to the sampled clients: which node ids received this round's
train message.

Why: a colluding attack simulated with :func:`flwr_tempered.clients.malicious_clientapp`
(``view="omniscient"``) needs the honest models the server will aggregate this round, and
with Flower's sampling (``fraction_train < 1``) those are the sampled honest clients'
models, not every honest partition's. Without the sample an attacker must train every honest
partition on their behalf each round, which made an attacked run with half the clients
sampled cost 1.4-1.6 times a clean one; with it, it trains only the sampled ones, which the
sampled honest nodes then reuse instead of training again.

The robust strategies add the sample to the train message's ``ConfigRecord`` under
:data:`SAMPLED_NODES_KEY` as a list of decimal strings (Flower's node ids are unsigned
64-bit integers, which a ``ConfigRecord`` integer cannot always hold). An ordinary
``ClientApp`` ignores the extra key. A deployment that does not want the clients to learn
who else was sampled sets ``announce_sample = False`` on the strategy.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict

__all__ = ["SAMPLED_NODES_KEY", "announce_sample", "announced_sample"]

#: The train config key holding the round's sampled node ids (decimal strings).
SAMPLED_NODES_KEY = "flwr-tempered.sampled-nodes"


def announce_sample(messages: Iterable[Message]) -> list[Message]:
    """``messages`` (one round's train messages, new ones not yet sent) with the list of
    their destination node ids added to the ``ConfigRecord`` of each. The messages get a
    copy of their records, so neither the caller's config nor the content they shared is
    changed."""
    messages = list(messages)
    sampled = [str(message.metadata.dst_node_id) for message in messages]
    extended: dict[int, RecordDict] = {}  # shared content -> its one extended copy
    for message in messages:
        original = message.content
        if id(original) not in extended:
            configs = list(original.config_records.items())
            if len(configs) != 1:  # no config to extend, or an ambiguous one: leave it
                continue
            content = RecordDict(dict(original.items()))
            name, config = configs[0]
            content[name] = ConfigRecord({**config, SAMPLED_NODES_KEY: sampled})
            extended[id(original)] = content
        message.content = extended[id(original)]
    return messages


def announced_sample(content: RecordDict) -> frozenset[int] | None:
    """The node ids announced in a train message's content, ``None`` when it carries no
    (well-formed) announcement."""
    for config in content.config_records.values():
        value = config.get(SAMPLED_NODES_KEY)
        if value is None:
            continue
        if not isinstance(value, list) or not all(
                isinstance(item, str) and item.isdigit() for item in value):
            return None
        return frozenset(int(item) for item in value)
    return None
