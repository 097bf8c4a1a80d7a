"""The gRPC ceiling: empty ``dispatch.v1.Dispatch`` handlers on grpc.aio + uvloop.

Same service, same request/response types, same server options as the
dispatcher, no work: ``Dispatch`` parses its DispatchRequest and answers an
empty DispatchResponse; ``DispatchStream`` answers one empty
DispatchBatchResponse per request message; ``DispatchBatch`` answers an empty
DispatchBatchResponse.

    .venv/bin/python -m bench.baseline_server --port 50099
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
import uvloop

from dispatcher._gen.dispatch.v1 import dispatch_pb2, dispatch_pb2_grpc
from dispatcher.server import MAX_MESSAGE_BYTES


class EmptyDispatch(dispatch_pb2_grpc.DispatchServicer):
    async def Dispatch(self, request, context):  # type: ignore[override]
        return dispatch_pb2.DispatchResponse()

    async def DispatchBatch(self, request, context):  # type: ignore[override]
        return dispatch_pb2.DispatchBatchResponse()

    async def DispatchStream(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            yield dispatch_pb2.DispatchBatchResponse()


async def serve(port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    dispatch_pb2_grpc.add_DispatchServicer_to_server(EmptyDispatch(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening {bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(a.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
