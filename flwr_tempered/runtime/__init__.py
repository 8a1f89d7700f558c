"""How messages move: Flower's simulation (and deployment) with the ServerApp as a relay."""

from typing import Any

from .client import make_client_app
from .exchange import InlineExchange, ModelExchange, SharedMemoryExchange, make_exchange

__all__ = [
    "InlineExchange", "ModelExchange", "SharedMemoryExchange", "make_client_app",
    "make_exchange", "make_server_app", "run_relay",
]


def __getattr__(name: str) -> Any:
    """The relay (``make_server_app``, ``run_relay``) is imported on first use: it builds on
    :mod:`flwr_tempered.strategies`, which itself imports this package's exchange."""
    if name in ("make_server_app", "run_relay"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
