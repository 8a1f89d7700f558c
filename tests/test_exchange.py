"""Content-addressed model exchange: digests, the shared store, inline records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict

from flwr_tempered.digest import array_digest, is_digest
from flwr_tempered.runtime.exchange import (
    ExchangeError,
    InlineExchange,
    SharedMemoryExchange,
    make_exchange,
)


def test_digest_depends_on_bytes_dtype_and_shape_only() -> None:
    a = np.arange(6, dtype=np.float32)
    assert array_digest(a) == array_digest(a.copy())
    assert array_digest(a) == array_digest(a.astype(">f4"))  # byte order is canonicalised
    assert array_digest(a) != array_digest(a.reshape(2, 3))
    assert array_digest(a) != array_digest(a.astype(np.float64))
    b = a.copy()
    b[3] = np.nextafter(b[3], np.float32(10))
    assert array_digest(a) != array_digest(b)
    assert is_digest(array_digest(a)) and not is_digest("xyz")


def test_shared_store_round_trip_and_discard(tmp_path: Path) -> None:
    store = SharedMemoryExchange(tmp_path / "store")
    model = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    digest = store.publish(model, RecordDict())
    assert digest == array_digest(model)
    np.testing.assert_array_equal(store.fetch(digest, RecordDict()), model)
    store.discard(digest)
    with pytest.raises(ExchangeError, match="not in the store"):
        store.fetch(digest, RecordDict())


def test_shared_store_detects_a_swapped_model(tmp_path: Path) -> None:
    store = SharedMemoryExchange(tmp_path / "store")
    honest = np.zeros(10, dtype=np.float32)
    digest = store.publish(honest, RecordDict())
    np.save(tmp_path / "store" / f"{digest}.npy", np.ones(10, dtype=np.float32))
    with pytest.raises(ExchangeError, match="do not match"):
        store.fetch(digest, RecordDict())


def test_shared_store_rejects_a_path_instead_of_a_digest(tmp_path: Path) -> None:
    store = SharedMemoryExchange(tmp_path / "store")
    with pytest.raises(ExchangeError, match="not a model digest"):
        store.fetch("../../etc/passwd", RecordDict())


def test_inline_exchange_travels_through_the_relay_mailbox() -> None:
    exchange = InlineExchange()
    model = np.arange(5, dtype=np.float32)
    reply = RecordDict()
    digest = exchange.publish(model, reply)
    mailbox: dict = {}
    exchange.collect(reply, mailbox)
    message = RecordDict()
    exchange.attach({digest}, mailbox, message)
    np.testing.assert_array_equal(exchange.fetch(digest, message), model)
    with pytest.raises(ExchangeError, match="not in the message"):
        exchange.fetch(array_digest(model + 1), message)


def test_make_exchange_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'shared' or 'inline'"):
        make_exchange("carrier-pigeon", "run")


def test_a_verified_model_is_read_once_per_process_and_is_read_only(tmp_path: Path) -> None:
    store = SharedMemoryExchange(tmp_path / "store")
    model = np.arange(10, dtype=np.float32)
    digest = store.publish(model, RecordDict())
    first = store.fetch(digest, RecordDict())
    (tmp_path / "store" / f"{digest}.npy").unlink()  # gone from disk, still known here
    second = store.fetch(digest, RecordDict())
    assert second is first
    assert not first.flags.writeable


def test_a_node_cannot_recreate_a_store_the_relay_removed(tmp_path: Path) -> None:
    relay_side = SharedMemoryExchange(tmp_path / "store")
    relay_side.close()
    with pytest.raises(ExchangeError, match="does not exist"):
        SharedMemoryExchange(tmp_path / "store", create=False)
    assert not (tmp_path / "store").exists()
