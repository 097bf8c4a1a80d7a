"""A small typed client for the ``dispatch.v1`` gRPC API, async and blocking.

    from dispatch_client import DispatchClient, pb

    with DispatchClient("127.0.0.1:50051") as client:
        answer = client.dispatch("demo", buyer_id="buyer-1", conversation_id="conv-1")
        print(pb.Reason.Name(answer.reason), answer.agent_id)

``AsyncDispatchClient`` has the same methods as coroutines. Errors are the
call's ``grpc.RpcError`` (``.code()``, ``.details()``). ``pb`` gathers the
generated messages and enums of ``dispatch.v1``; ``dispatch_request`` builds a
DispatchRequest for batches and streams.
"""

from ._client import AsyncDispatchClient, AsyncWatch, DispatchClient, Watch, dispatch_request, pb, to_timestamp

__all__ = [
    "AsyncDispatchClient",
    "AsyncWatch",
    "DispatchClient",
    "Watch",
    "dispatch_request",
    "pb",
    "to_timestamp",
]
