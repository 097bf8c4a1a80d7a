"""A small typed client for the ``dispatch.v1`` gRPC API, async and blocking.

    from dispatch_client import DispatchClient, pb

    with DispatchClient("127.0.0.1:50051") as client:
        answer = client.dispatch("demo", buyer_id="buyer-1", conversation_id="conv-1")
        print(pb.Reason.Name(answer.reason), answer.agent_id)

``AsyncDispatchClient`` has the same methods as coroutines; its ``dispatch``,
``set_presence``, ``report_conversation`` and ``claim_from_pool`` calls made in the
same loop iteration go as one batch on a shared OperateStream (``auto_batch=False``
for unary calls). ``DispatchClient.pipeline()`` batches explicitly; both clients have
``operate()`` for ready-made ``pb.Operation`` lists. ``pb`` gathers the generated messages
and enums of ``dispatch.v1`` (the package's own copy, ``dispatch_client._gen``: it installs
without the server); ``dispatch_request`` builds a DispatchRequest for batches and streams.
Enum arguments take numbers or names, full or short (``order_state="NO_ORDER"``).

Errors: every failed call raises a ``DispatchError`` of its code's class (``NotFound``,
``InvalidArgument``, ``Unavailable``...; ``code()``, ``details()``/``message``,
``error_details``, ``status``); a batched call's is also an ``OperationError``, with the code
and message its unary form would have had; a WRONG_NODE refusal is a ``WrongNodeError``. A
``DispatchError`` is a ``grpc.RpcError`` (and ``grpc.aio.AioRpcError``), so ``except
grpc.RpcError`` keeps working.

``AsyncClusterClient`` / ``ClusterClient`` (issue 15) have the same methods over a cluster
of nodes: they fetch the cluster map from a seed and send each call to the node that owns
its shop (batches split by node; a WRONG_NODE refusal refreshes the map and is retried once).
"""

from ._batching import MAX_BATCH, AutoBatcher, BatchStats, OperationFuture
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
from ._cluster import AsyncClusterClient, AsyncClusterWatch, ClusterClient, ClusterWatch, Routes, partition_of
from ._enums import EnumArg
from ._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    DispatchError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OperationError,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    WrongNode,
    WrongNodeError,
    wrong_node_of,
)

__all__ = [
    "MAX_BATCH",
    "Aborted",
    "AlreadyExists",
    "AsyncClusterClient",
    "AsyncClusterWatch",
    "AsyncDispatchClient",
    "AsyncWatch",
    "AutoBatcher",
    "BatchStats",
    "Cancelled",
    "ClusterClient",
    "ClusterWatch",
    "DataLoss",
    "DeadlineExceeded",
    "DispatchClient",
    "DispatchError",
    "EnumArg",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OperationError",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
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
