"""How messages move: Flower's simulation (and deployment) with the ServerApp as a relay."""

from .client import make_client_app
from .exchange import InlineExchange, ModelExchange, SharedMemoryExchange, make_exchange
from .server import make_server_app, run_relay

__all__ = [
    "InlineExchange", "ModelExchange", "SharedMemoryExchange", "make_client_app",
    "make_exchange", "make_server_app", "run_relay",
]
