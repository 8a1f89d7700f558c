"""The Flower apps that ``flwr run .`` loads (see ``[tool.flwr.app.components]``): they
read the run from the Flower run config (``[tool.flwr.app.config]``, ``--run-config``)."""

from __future__ import annotations

from .client import make_client_app
from .server import make_server_app

server_app = make_server_app()
client_app = make_client_app()
