"""Load generator of the lifecycle benchmark (bench/lifecycle.py), in its own process (core 1).

    taskset -c 1 .venv/bin/python -m bench.lifecycle_load stream --port P --server-pid PID \
        --conversations 50000 --shops 200 --contacts 50 --start-ms MS --tag x
    ... client --auto-batch --concurrency 512 ...        # the auto-batching AsyncDispatchClient
    ... client --no-auto-batch --concurrency 64 ...      # one unary RPC per operation
    ... client --auto-batch --rate 2000 --latency ...    # open loop: conversations/s, per-call latency

``stream``: pre-serialized OperateRequests (``--per-batch`` conversations each) on
``--streams`` OperateStreams, ``--window`` batches written ahead per stream, raw bytes
through grpc.aio. ``client``: ``--concurrency`` asyncio tasks, each running whole
conversations one call after the other through one ``AsyncDispatchClient`` (or, with
``--rate``, a new conversation task every 1/rate s). Before the clock starts, a warm-up
of ``--warmup`` conversations. The server's CPU time (utime+stime of ``--server-pid``
from /proc) is read at the start and the end of the measured part. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import uvloop

from bench import lifecycle as lc
from dispatcher._gen.dispatch.v1 import common_pb2, dispatch_pb2

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def make_items(a: argparse.Namespace, n: int, tag: str, start_ms: int) -> list[lc.Item]:
    return lc.workload(
        n, n_shops=a.shops, contacts_per_shop=a.contacts, seed=zlib.crc32(tag.encode()), tag=tag, start_ms=start_ms
    )


# --------------------------------------------------------------------- path 2: pre-serialized batches


async def run_stream(a: argparse.Namespace) -> dict[str, Any]:
    warm = [
        b.SerializeToString() for b in lc.operate_batches(make_items(a, a.warmup, a.tag + "w", a.start_ms), a.per_batch)
    ]
    items = make_items(a, a.conversations, a.tag, a.start_ms + a.warmup * lc.MS_PER_CONVERSATION)
    bodies = [b.SerializeToString() for b in lc.operate_batches(items, a.per_batch)]
    mix = lc.mix(items)
    errors: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}", options=CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        method = channel.stream_stream("/dispatch.v1.Dispatch/OperateStream")

        async def one_stream(mine: list[bytes], parse: bool) -> None:
            call = method()
            room = asyncio.Semaphore(a.window)

            async def writer() -> None:
                for body in mine:
                    await room.acquire()
                    await call.write(body)
                await call.done_writing()

            w = asyncio.ensure_future(writer())
            got = 0
            async for raw in call:
                room.release()
                got += 1
                if parse:
                    for r in dispatch_pb2.OperateResponse.FromString(raw).results:
                        if r.HasField("error"):
                            errors[f"{r.error.code}:{r.error.message[:60]}"] += 1
                        elif r.WhichOneof("kind") == "dispatch":
                            reasons[common_pb2.Reason.Name(r.dispatch.reason)] += 1
            await w
            assert got == len(mine), (got, len(mine))

        async def all_streams(bodies: list[bytes], parse: bool) -> None:
            await asyncio.gather(*(one_stream(bodies[k :: a.streams], parse) for k in range(a.streams)))

        await all_streams(warm, False)
        rounds = []
        per = -(-len(bodies) // a.rounds)
        for r in range(a.rounds):
            part = bodies[r * per : (r + 1) * per]
            cpu0, t0 = cpu_seconds(a.server_pid), time.perf_counter()
            await all_streams(part, not a.no_parse)
            rounds.append((len(part), time.perf_counter() - t0, cpu_seconds(a.server_pid) - cpu0))
        elapsed, cpu = sum(x[1] for x in rounds), sum(x[2] for x in rounds)
    ops = sum(v for k, v in mix.items() if k not in ("conversations", "returning"))
    conv_per_batch = mix["conversations"] / len(bodies)
    rates = sorted(n * conv_per_batch / max(1e-9, c) for n, _, c in rounds)
    walls = sorted(n * conv_per_batch / t for n, t, _ in rounds)
    return {
        "path": "stream",
        "conversations": mix["conversations"],
        "rounds": len(rounds),
        "round_conv_per_server_cpu_s": rates,
        "conv_per_server_cpu_s": rates[len(rates) // 2],
        "conv_per_s": walls[len(walls) // 2],
        "operations": ops,
        "batches": len(bodies),
        "per_batch": a.per_batch,
        "ops_per_batch": ops / len(bodies),
        "streams": a.streams,
        "window": a.window,
        "elapsed_s": elapsed,
        "server_cpu_s": cpu,
        "mix": mix,
        "errors": dict(errors),
        "reasons": dict(reasons),
    }


# --------------------------------------------------------------------- paths 1 and 3: the Python client


async def run_client(a: argparse.Namespace) -> dict[str, Any]:
    from dispatch_client import AsyncDispatchClient

    items = make_items(a, a.conversations, a.tag, a.start_ms + a.warmup * lc.MS_PER_CONVERSATION)
    warm = make_items(a, a.warmup, a.tag + "w", a.start_ms)
    mix = lc.mix(items)
    errors: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    lat: list[float] = []
    client = AsyncDispatchClient(f"127.0.0.1:{a.port}", auto_batch=a.auto_batch, timeout=60)
    await client.wait_ready()
    record = a.latency

    async def call(coro: Any) -> Any:
        t = time.perf_counter()
        try:
            res = await coro
        except grpc.RpcError as e:
            errors[f"{e.code().name}:{(e.details() or '')[:60]}"] += 1
            return None
        if record:
            lat.append(time.perf_counter() - t)
        return res

    async def run_item(item: lc.Item) -> None:
        if isinstance(item, lc.PresenceChange):
            await call(client.set_presence(item.shop, item.agent, item.presence, at=item.at))
            return
        res = await call(
            client.dispatch(item.shop, item.buyer, item.conversation, order_state=item.order_state, at=item.at)
        )
        if res is not None:
            reasons[common_pb2.Reason.Name(res.reason)] += 1
        for k, event in enumerate(lc.EVENTS, start=1):
            await call(client.report_conversation(item.shop, item.conversation, event, at=item.at + k))

    async def closed_loop(todo: list[lc.Item]) -> None:
        it = iter(todo)

        async def worker() -> None:
            for item in it:
                await run_item(item)

        await asyncio.gather(*(worker() for _ in range(a.concurrency)))

    async def open_loop(todo: list[lc.Item], rate: float) -> None:
        """A new item every 1/rate s (conversations/s; presence changes ride along)."""
        tasks = []
        t0 = time.perf_counter()
        n = 0
        for item in todo:
            if isinstance(item, lc.Conversation):
                due = t0 + n / rate
                n += 1
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(run_item(item)))
        await asyncio.gather(*tasks)

    record = False
    await closed_loop(warm)
    errors.clear()
    reasons.clear()
    record = a.latency
    stats0 = dataclass_dict(client.batch_stats)
    cpu0, t0 = cpu_seconds(a.server_pid), time.perf_counter()
    if a.rate:
        await open_loop(items, a.rate)
    else:
        await closed_loop(items)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(a.server_pid) - cpu0
    stats1 = dataclass_dict(client.batch_stats)
    await client.close()
    ops = sum(v for k, v in mix.items() if k not in ("conversations", "returning"))
    out: dict[str, Any] = {
        "path": "pyclient" if a.auto_batch else "unary",
        "conversations": mix["conversations"],
        "operations": ops,
        "concurrency": a.concurrency,
        "rate": a.rate,
        "elapsed_s": elapsed,
        "server_cpu_s": cpu,
        "mix": mix,
        "errors": dict(errors),
        "reasons": dict(reasons),
    }
    if stats1:
        batches = stats1["batches"] - stats0["batches"]
        out["batches"] = batches
        out["ops_per_batch"] = (stats1["operations"] - stats0["operations"]) / max(1, batches)
        out["largest_batch"] = stats1["largest_batch"]
    if lat:
        out.update(p50_us=pct(lat, 0.5) * 1e6, p99_us=pct(lat, 0.99) * 1e6, latency_samples=len(lat))
    return out


def dataclass_dict(x: Any) -> dict[str, int]:
    return {} if x is None else {k: getattr(x, k) for k in x.__slots__}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("stream", "client"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--conversations", type=int, required=True)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--shops", type=int, required=True)
    p.add_argument("--contacts", type=int, default=0, help="recent contacts loaded per shop (buyers h0..)")
    p.add_argument("--start-ms", type=int, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--per-batch", type=int, default=64, help="stream: conversations per OperateRequest")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--window", type=int, default=4, help="stream: batches written ahead per stream")
    p.add_argument("--no-parse", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="stream: measured rounds; the figures are their median")
    p.add_argument("--auto-batch", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--rate", type=float, default=0.0, help="client: open loop, conversations/s")
    p.add_argument("--latency", action="store_true", help="client: record per-call latency")
    a = p.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        res = runner.run(run_stream(a) if a.mode == "stream" else run_client(a))
    res.setdefault("conv_per_server_cpu_s", res["conversations"] / max(1e-9, res["server_cpu_s"]))
    res.setdefault("conv_per_s", res["conversations"] / res["elapsed_s"])
    res["server_cpu_us_per_op"] = res["server_cpu_s"] * 1e6 / max(1, res["operations"])
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
