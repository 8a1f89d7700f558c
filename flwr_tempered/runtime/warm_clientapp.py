"""Fast deployment rounds: a warm ClientApp worker and a SuperNode that polls faster.

In Flower's default ``--isolation subprocess`` every message a SuperNode receives starts a
fresh ``flwr-clientapp`` process, which imports torch and reloads the data and the model
(about 4 s of CPU per message here); a deployed round of the decentralized runtime then
takes 20-30 s for 4 nodes. Flower 1.41 cannot keep ``flwr-clientapp`` alive (it needs a
token the SuperNode issues per task and exits after one message), and its stock process
mode (``flower-superexec``) starts the same cold process per message. So:

* :func:`run_warm_clientapp` (``flwr-tempered clientapp --runtime-api-address ADDR``, beside
  ``flower-supernode --isolation process``) claims each task from the SuperNode's runtime
  API and runs the ClientApp in its own long-lived process;
* :func:`run_fast_supernode` (``flwr-tempered supernode --poll-cap S -- <flower-supernode
  arguments>``) is Flower's SuperNode with its polling sleeps capped.

Both use Flower 1.41's internal runtime API (``flwr.supernode.runtime.run_clientapp``,
``flwr.supernode.start_client_internal``), not a public one, and refuse other Flower
versions with a clear error. Measured: ``benchmarks/deployment.py`` (README).
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import flwr

__all__ = ["SUPPORTED_FLOWER", "check_flower_version", "run_fast_supernode",
           "run_warm_clientapp"]

#: The Flower release whose internals these helpers use.
SUPPORTED_FLOWER = "1.41."


def check_flower_version() -> None:
    """Refuse a Flower release whose internals these helpers were not written for."""
    if not flwr.__version__.startswith(SUPPORTED_FLOWER):
        raise RuntimeError(
            f"the warm ClientApp worker and the fast SuperNode use Flower "
            f"{SUPPORTED_FLOWER}x internals, but flwr {flwr.__version__} is installed; use "
            "flower-supernode's default --isolation subprocess instead")


def run_warm_clientapp(runtime_api_address: str, poll: float = 0.02) -> None:
    """Serve one SuperNode's ClientApp tasks (``--isolation process``) until stopped.

    Claims each pending task (one per message) with ``AcquireTask``, then does what
    ``flwr-clientapp --token TOKEN`` does for that one task, in this process: pull the
    message and context, load the ClientApp from the installed FAB (cached), call it,
    push the reply and then the context. Torch, the app's modules and the node's cached
    data and model stay loaded between messages.
    """
    check_flower_version()
    import torch  # noqa: F401  (loaded once, before the first message)
    from flwr.app import Context, Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import (
        AcquireTaskRequest,
        PullAppMessagesRequest,
        PullTaskInputRequest,
    )
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    def pull_task_input(client: Any) -> tuple[Message, Context, Any, Any]:
        """Flower's ``pull_task_input``, retrying a missing object after 20 ms instead of
        1 s: a warm worker claims a task before the SuperNode has stored the message's
        objects, and Flower's 1 s initial backoff (then 2 s, ...) would cost seconds."""
        res = client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = res.task_id
        TaskIdentity.run_id = res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context, run, fab = (context_from_proto(res.context), run_from_proto(res.run),
                             fab_from_proto(res.fab))
        pulled = client.PullMessages(PullAppMessagesRequest())
        if not pulled.messages_list:
            raise RuntimeError("No messages received from Runtime API")
        node = Node(node_id=context.node_id)
        tree = pulled.message_object_trees[0]
        message = pull_and_inflate_object_from_tree(
            tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
            make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                      context.run_id),
            return_type=Message, initial_backoff=0.02, backoff_cap=0.2)
        message.metadata.__dict__["_message_id"] = tree.object_id
        return message, context, run, fab

    def client(*interceptors: Any) -> Any:
        return RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          *interceptors],
            retry_invoker=make_simple_http_retry_invoker())

    acquirer = client()
    installed: set[str] = set()
    load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    served = 0
    while True:
        try:
            response = acquirer.AcquireTask(
                AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)]))
        except Exception as error:  # SuperNode not up yet, or gone
            print(f"AcquireTask failed: {error}", flush=True)
            time.sleep(1.0)
            continue
        if not (response.HasField("task") and response.token):
            time.sleep(poll)
            continue
        started = time.perf_counter()
        task_client = client(RuntimeTokenHttpInterceptor(response.token))
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(task_client))
        heartbeat.start()
        message, context, reply = None, None, None
        status, details = SubStatus.FAILED, "worker failed"
        laps = [time.perf_counter()]
        try:
            message, context, run, fab = pull_task_input(task_client)
            laps.append(time.perf_counter())
            if fab.hash_str not in installed:
                install_from_fab(fab.content, skip_prompt=True)
                installed.add(fab.hash_str)
            app = load(run.fab_id, run.fab_version, fab.hash_str)
            reply = app(message=message, context=context)
            laps.append(time.perf_counter())
            status, details = SubStatus.COMPLETED, ""
        except Exception as error:
            print(f"ClientApp raised: {error!r}", flush=True)
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=repr(error)), reply_to=message)
        try:
            if reply is not None and context is not None:
                push_message(task_client, reply, context)
            laps.append(time.perf_counter())
            push_task_output(task_client, context, status, details)
            laps.append(time.perf_counter())
        finally:
            heartbeat.stop()
            task_client.close()
        served += 1
        steps = " ".join(f"{b - a:.3f}" for a, b in itertools.pairwise(laps))
        print(f"task {served} {message.metadata.message_type if message else '?'} in "
              f"{time.perf_counter() - started:.2f} s (pull, app, push reply, push context: "
              f"{steps})", flush=True)


def run_fast_supernode(cap: float, argv: list[str]) -> None:
    """``flower-supernode`` (with ``argv``) whose idle sleeps (3 s between polls of the
    SuperLink, 0.5 s while waiting for a reply) and first retry of a message object the
    SuperLink does not hold yet (1 s) are capped at ``cap`` seconds. Patches only the
    SuperNode loop module's ``time`` and ``pull_objects``; the SuperLink then sees a poll
    every ``cap`` seconds per SuperNode instead of every 3."""
    check_flower_version()
    import types

    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    real = time.sleep
    shim = types.SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    shim.sleep = lambda seconds: real(min(float(seconds), cap))
    vars(loop)["time"] = shim
    pull = loop.pull_objects

    def pull_objects(*args: Any, **kwargs: Any) -> Any:
        # A message can reach the SuperNode before its objects reach the SuperLink;
        # Flower then retries after 1 s, 2 s, ... (PULL_INITIAL_BACKOFF).
        kwargs.update(initial_backoff=min(cap, 1.0), backoff_cap=max(cap, 0.2))
        return pull(*args, **kwargs)

    vars(loop)["pull_objects"] = pull_objects
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()
