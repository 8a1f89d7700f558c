"""A Flower ``Grid`` that runs a ``ClientApp`` for every node in the calling process.

``LocalGrid`` lets a ``ServerApp`` (or a strategy's ``start``) drive real ``ClientApp``
code with no SuperLink, no Ray and no serialisation: the messages are copied and handed to
the ClientApp directly, one node after the other. Each node keeps its own ``Context``
(``node_config`` with ``partition-id`` and ``num-partitions`` as in Flower's simulation,
and a ``state`` that persists across rounds). A ClientApp that raises produces an error
reply, as in Flower, and the run goes on.

It is meant for tests, notebooks and quick experiments on one CPU, where Ray's start-up
(seconds) and per-message cost dominate small runs. Use ``flwr run`` or
``flwr.simulation.run_simulation`` for anything that needs parallel clients or GPUs.
"""

from __future__ import annotations

import copy
import itertools
import traceback
from collections.abc import Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid", "copy_message", "run_locally"]

#: Node id of the server side in the messages a LocalGrid creates.
SERVER_NODE_ID = 0
#: Error code of a reply whose ClientApp raised (Flower's "ClientApp exception" code).
CLIENT_APP_RAISED = 2

Scalar = bool | float | int | str


class LocalGrid(Grid):
    """Run ``client_app`` in-process for ``num_nodes`` nodes with ids ``1..num_nodes``.

    Args:
        client_app: the ClientApp every node runs.
        num_nodes: how many nodes (partition ids ``0..num_nodes-1``).
        run_config: the run config every node's ``Context`` sees.
        run_id: the run id written into the messages.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int,
                 run_config: Mapping[str, Scalar] | None = None, run_id: int = 1) -> None:
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
            raise ValueError(f"LocalGrid: num_nodes must be an integer >= 1, got {num_nodes!r}")
        if not isinstance(client_app, ClientApp):
            raise ValueError(f"LocalGrid: client_app must be a flwr ClientApp, got "
                             f"{type(client_app).__name__}")
        self.client_app = client_app
        self.run_config: dict[str, Scalar] = dict(run_config or {})
        self._run = Run.create_empty(run_id)
        self._run.override_config = dict(self.run_config)
        self.contexts: dict[int, Context] = {
            position + 1: Context(
                run_id=run_id,
                node_id=position + 1,
                node_config={"partition-id": position, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(self.run_config),
            )
            for position in range(num_nodes)
        }
        self._mailbox: dict[str, Message] = {}
        self._ids = itertools.count(1)
        _claim_task_identity(run_id)

    # --------------------------------------------------------------------- Grid API
    def set_run(self, run: Run) -> None:
        """Use ``run``'s id in the messages created from now on."""
        self._run = run
        _claim_task_identity(run.run_id)

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """A new instruction message (as ``Message(content, dst_node_id, message_type)``)."""
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The ids of every node (``1..num_nodes``)."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; return the message ids."""
        ids = []
        for message in messages:
            message_id = f"local-{next(self._ids)}"
            # Metadata ids are read-only properties; Flower's own grids set them this way.
            message.metadata.__dict__["_message_id"] = message_id
            self._mailbox[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` (each can be pulled once)."""
        return [self._mailbox.pop(i) for i in message_ids if i in self._mailbox]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and return every reply (``timeout`` is not needed here)."""
        return self.pull_messages(self.push_messages(messages))

    # ------------------------------------------------------------------------ nodes
    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        if node_id not in self.contexts:
            raise ValueError(f"LocalGrid: no node with id {node_id}; nodes are "
                             f"1..{len(self.contexts)}")
        received = copy_message(message)
        received.metadata.__dict__["_src_node_id"] = SERVER_NODE_ID
        try:
            reply = self.client_app(received, self.contexts[node_id])
        except Exception as error:  # a failing ClientApp must not stop the other nodes
            reason = "".join(traceback.format_exception_only(type(error), error)).strip()
            return Message(Error(code=CLIENT_APP_RAISED, reason=reason), reply_to=received)
        finally:
            _claim_task_identity(self._run.run_id)
        return reply


def copy_message(message: Message) -> Message:
    """An independent copy of ``message`` (metadata and content), as a receiver would get
    it after serialisation: changes to the copy never reach the original."""
    return Message(  # type: ignore[call-overload]
        metadata=copy.copy(message.metadata), content=copy.deepcopy(message.content)
    )


def _claim_task_identity(run_id: int) -> None:
    """Flower builds message metadata from the process's task identity: act as the server."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SERVER_NODE_ID
    TaskIdentity.task_id = 0


def run_locally(server_app: ServerApp, client_app: ClientApp, num_nodes: int,
                run_config: Mapping[str, Scalar] | None = None) -> LocalGrid:
    """Run ``server_app`` against ``num_nodes`` in-process ``client_app`` nodes and return
    the grid (its ``contexts`` hold the nodes' final state)."""
    grid = LocalGrid(client_app, num_nodes, run_config)
    context = Context(run_id=grid.run.run_id, node_id=SERVER_NODE_ID, node_config={},
                      state=RecordDict(), run_config=dict(grid.run_config))
    server_app(grid, context)
    return grid

