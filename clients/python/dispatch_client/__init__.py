"""A small typed client for the ``dispatch.v1`` gRPC API, async and blocking.

    from dispatch_client import DispatchClient, pb

    with DispatchClient("127.0.0.1:50051") as client:
        answer = client.dispatch("demo", buyer_id="buyer-1", conversation_id="conv-1")
        print(pb.Reason.Name(answer.reason), answer.agent_id)

``AsyncDispatchClient`` has the same methods as coroutines; its ``dispatch``,
``set_presence``, ``report_conversation`` and ``claim_from_pool`` calls made in the
same loop iteration go as one batch on a shared OperateStream (``auto_batch=False``
for unary calls). ``DispatchClient.pipeline()`` batches explicitly; both clients have
``operate()`` for ready-made ``pb.Operation`` lists. Errors are the call's
``grpc.RpcError`` (``.code()``, ``.details()``); a batched call's is an
``OperationError`` with the code and details its unary form would have had. ``pb`` gathers the
generated messages and enums of ``dispatch.v1``; ``dispatch_request`` builds a
DispatchRequest for batches and streams.

``AsyncClusterClient`` / ``ClusterClient`` (issue 15) have the same methods over a cluster
of nodes: they fetch the cluster map from a seed and send each call to the node that owns
its shop (batches split by node; a WRONG_NODE refusal refreshes the map and is retried once).
"""

from ._batching import MAX_BATCH, AutoBatcher, BatchStats, OperationError, OperationFuture
from ._client import (
    AsyncDispatchClient,
    AsyncWatch,
    DispatchClient,
    Pipeline,
    Watch,
    dispatch_request,
    pb,
    to_timestamp,
)
from ._cluster import (
    AsyncClusterClient,
    AsyncClusterWatch,
    ClusterClient,
    ClusterWatch,
    Routes,
    WrongNode,
    WrongNodeError,
    partition_of,
    wrong_node_of,
)

__all__ = [
    "MAX_BATCH",
    "AsyncClusterClient",
    "AsyncClusterWatch",
    "AsyncDispatchClient",
    "AsyncWatch",
    "AutoBatcher",
    "BatchStats",
    "ClusterClient",
    "ClusterWatch",
    "DispatchClient",
    "OperationError",
    "OperationFuture",
    "Pipeline",
    "Routes",
    "Watch",
    "WrongNode",
    "WrongNodeError",
    "dispatch_request",
    "partition_of",
    "pb",
    "to_timestamp",
    "wrong_node_of",
]
