"""``flwr-tempered peer``: the long-lived exchange server that runs beside each
``flower-supernode`` of a peer-to-peer deployment (``exchange = "p2p"``).

It serves the node's published models to the neighbours the round entitles (see
:mod:`flwr_tempered.runtime.peer`) until it is stopped (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flwr_tempered.runtime.peer import PeerStore, peer_app, read_token

__all__ = ["add_peer_parser", "parse_listen", "run_peer_command"]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ``ValueError`` naming what is wrong."""
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen must be HOST:PORT with a port in 1..65535, got {value!r}")
    return host.strip("[]"), int(port)


def add_peer_parser(commands: Any) -> None:
    """Register ``peer`` on the ``flwr-tempered`` command line."""
    peer = commands.add_parser(
        "peer", help="run a SuperNode's peer-to-peer model server (exchange 'p2p')",
        description="Serve this SuperNode's models to its graph neighbours (signed requests "
                    "only), for runs with exchange='p2p'. Start one beside each "
                    "flower-supernode and give the SuperNode --node-config "
                    "\"peer-url='http://ADDRESS:PORT' peer-token-file='FILE'\".")
    peer.add_argument("--listen", required=True, metavar="HOST:PORT",
                      help="address to listen on, e.g. 0.0.0.0:9101 (neighbours must reach "
                           "it at the peer-url the SuperNode names)")
    peer.add_argument("--token-file", required=True, metavar="FILE",
                      help="the owner token that authorises the SuperNode's ClientApp to "
                           "publish; created (mode 600) when the file does not exist")


def run_peer_command(args: argparse.Namespace) -> int:
    """Serve until stopped; the exit status."""
    import uvicorn

    host, port = parse_listen(args.listen)
    token = read_token(args.token_file, create=True)
    print(f"flwr-tempered peer: serving on http://{host}:{port} (token in {args.token_file})",
          file=sys.stderr, flush=True)
    uvicorn.run(peer_app(PeerStore(), token), host=host, port=port, log_level="warning",
                access_log=False, lifespan="off", ws="none")
    return 0
