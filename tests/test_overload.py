"""Overload: a flood against a server with a low concurrency bound.

``dispatcher serve --max-concurrent-rpcs 8 --max-concurrent-streams 8`` runs
as a subprocess on loopback (so its memory is its own). Rounds of 1500
concurrent calls and 100 streams must see the streams over their own bound
refused with RESOURCE_EXHAUSTED early (not latency piling up), unary calls
still served (streams have a limit of their own and never take the calls'
slots), the open watch streams kept, a call within the bound served after
each round, and the server's RSS settling instead of growing round after round.
Loops are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
from server_fixtures import Proc

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc

BOUND = 8
FLOOD = 1500
ROUNDS = int(__import__("os").environ.get("OVERLOAD_ROUNDS", "8"))
STREAMS = 100


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _flood(target: str, pid: int) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        d, a = dispatch_pb2_grpc.DispatchStub(ch), admin_pb2_grpc.AdminStub(ch)
        await a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s")), timeout=10)
        # Two long-lived streams hold 2 of the 8 stream slots through every round.
        watches = [
            d.WatchAssignments(dispatch_pb2.WatchAssignmentsRequest(shop_ids=["s"]), timeout=120) for _ in range(2)
        ]
        for w in watches:
            assert ("dispatch-watch", "subscribed") in tuple(await w.initial_metadata())
        # Direct conversations: answered without adding state, so memory can only grow from the flood itself.
        direct = dispatch_pb2.DispatchRequest(shop_id="s", type=2, to_account="other")

        async def one() -> grpc.StatusCode:
            try:
                await d.Dispatch(direct, timeout=30)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        async def hold() -> tuple[str, grpc.aio.UnaryStreamCall]:
            """A flood stream: it keeps its slot until cancelled, or is refused."""
            call = d.WatchAssignments(dispatch_pb2.WatchAssignmentsRequest(shop_ids=["s"]), timeout=60)
            if ("dispatch-watch", "subscribed") in tuple(await call.initial_metadata() or ()):
                return "HELD", call
            return (await call.code()).name, call

        rss: list[int] = []
        totals: Counter[str] = Counter()
        deadline = time.monotonic() + 10 * ROUNDS
        for _ in range(ROUNDS):
            assert time.monotonic() < deadline, "the flood took too long"
            started = time.monotonic()
            # Calls first, then streams that take every free slot, then more calls.
            results = await asyncio.gather(
                *(one() for _ in range(FLOOD // 3)), *(hold() for _ in range(STREAMS)), *(one() for _ in range(FLOOD))
            )
            took = time.monotonic() - started
            held = [r for r in results if isinstance(r, tuple)]
            codes = Counter(r.name for r in results if not isinstance(r, tuple)) + Counter(
                "stream:" + r[0] for r in held
            )
            totals.update(codes)
            assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "stream:HELD", "stream:RESOURCE_EXHAUSTED"}, codes
            assert codes["stream:HELD"] == BOUND - len(watches), codes  # exactly the free slots
            # Streams beyond their own bound are refused; the unary calls are not locked out by them.
            assert codes["stream:RESOURCE_EXHAUSTED"] > 0 and codes["OK"] >= FLOOD // 3, codes
            assert took < 15, took  # refused early, not queued without limit
            for _, call in held:
                call.cancel()
            await asyncio.sleep(0.1)
            # Within the bound again: served at once, every time.
            for _ in range(5):
                assert (await d.Dispatch(direct, timeout=5)).reason == 1
            assert (await a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s"), timeout=5)).shop_id == "s"
            await asyncio.sleep(0.2)
            rss.append(rss_kib(pid))
        for w in watches:  # the streams survived the flood
            assert not w.done()
            w.cancel()
        print(f"\noverload: {dict(totals)}; RSS per round (KiB): {rss}")
        # Memory settles: after a warm-up of half the rounds (allocator arenas,
        # grpc buffers) the peak grows by less than 32 MiB, and stays far from
        # what a leak of the flood's calls would reach.
        half = len(rss) // 2
        assert max(rss[half:]) - max(rss[:half]) < 32 * 1024, rss
        assert max(rss) < 256 * 1024, rss


def test_flood_gets_resource_exhausted_and_memory_settles() -> None:
    proc = Proc(
        "serve",
        "--port",
        "0",
        "--log-format",
        "json",
        "--stats-interval",
        "0",
        "--max-concurrent-rpcs",
        str(BOUND),
        "--max-concurrent-streams",
        str(BOUND),
    )  # fmt: skip  (Proc passes DISPATCH_NO_AUTH=1)
    try:
        target = f"127.0.0.1:{proc.port()}"
        asyncio.run(_flood(target, proc.popen.pid))
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
    stopped = [e for e in proc.events() if e["event"] == "server.stopped"]
    assert stopped and stopped[0]["internal_errors"] == 0
