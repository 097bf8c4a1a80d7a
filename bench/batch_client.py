"""DispatchBatch load with unique conversations (h2load can only repeat one body).

Pre-serializes every DispatchBatchRequest before the clock starts and sends the
bytes through a raw grpc.aio unary-unary call (identity serializers), keeping
``--inflight`` calls in flight. Prints one JSON line: decisions/s, calls, and
how many items came back with an error.

    taskset -c 1 .venv/bin/python -m bench.batch_client --port P --size 128 --decisions 200000 --tag r1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import uvloop

from bench.grpc_bench import batch_requests
from dispatcher._gen.dispatch.v1 import dispatch_pb2


async def run(port: int, bodies: list[bytes], inflight: int, parse: bool) -> dict:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.max_send_message_length", 8 * 1024 * 1024),
        ],
    ) as channel:
        call = channel.unary_unary("/dispatch.v1.Dispatch/DispatchBatch")
        await channel.channel_ready()
        errors = 0
        items = 0
        it = iter(bodies)

        async def worker() -> None:
            nonlocal errors, items
            for body in it:
                raw = await call(body)
                if parse:
                    resp = dispatch_pb2.DispatchBatchResponse.FromString(raw)
                    items += len(resp.responses)
                    errors += sum(1 for r in resp.responses if r.HasField("error"))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed = time.perf_counter() - t0
    return {"elapsed_s": elapsed, "calls": len(bodies), "items_returned": items, "item_errors": errors}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--decisions", type=int, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--shops", type=int, default=200)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--no-parse", action="store_true")
    a = p.parse_args()
    n_calls = max(1, a.decisions // a.size)
    bodies = [m.SerializeToString() for m in batch_requests(a.tag, a.size, n_calls, a.shops)]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        res = runner.run(run(a.port, bodies, a.inflight, not a.no_parse))
    res["decisions"] = n_calls * a.size
    res["decisions_per_s"] = res["decisions"] / res["elapsed_s"]
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
