"""WatchAssignments cannot hurt the callers (dispatcher/watch.py, issue 11).

- Health stays fast (p99 <= 50 ms) while 500 watchers of both methods
  (WatchAssignments and WatchAssignmentBatches), some reading slowly and some
  not at all, get 50k hand-outs: a ``dispatcher serve`` subprocess, the
  watchers in a second subprocess, health probed from this one. What makes it
  hold: the write gate (``WriteGate``, tested here) and the server loop's
  handling of grpc.aio's wake-up socket (``tests/test_aio.py``).
- A watcher that falls behind its bound is ended with RESOURCE_EXHAUSTED (its
  queue never grows past the bound and is dropped at once) while a fast one
  gets everything, in order.
- Streams have a limit of their own: at it, unary and Admin calls still
  succeed, and one more stream gets RESOURCE_EXHAUSTED.
- Each hand-out is serialized once, and the bytes are shared by every watcher.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import Proc, ThreadedServer

from dispatcher._gen.dispatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    dispatch_pb2,
    dispatch_pb2_grpc,
)
from dispatcher.server import WATCH_BACKLOG, AssignmentHub
from dispatcher.watch import WATCH_CHUNK, Subscriber, WriteGate, batch_response

ONLINE = 1
ROOT = Path(__file__).resolve().parents[1]
WATCH_METHODS = ["WatchAssignments", "WatchAssignmentBatches"]


def _setup_shop(a: admin_pb2_grpc.AdminStub, d: dispatch_pb2_grpc.DispatchStub, shop: str, queued: int) -> None:
    """A shop whose one agent (capacity 1) is busy, with ``queued`` conversations waiting (c000000 first)."""
    a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=shop)), timeout=30)
    a.PutAgent(
        admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:a", max_capacity=1)), timeout=30
    )
    d.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=f"{shop}:a", presence=ONLINE), timeout=30)
    first = d.Dispatch(
        dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="b-first", conversation_id="first"), timeout=30
    )
    assert first.agent_id == f"{shop}:a"
    for start in range(0, queued, 4096):
        items = [
            dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id=f"b{i}", conversation_id=f"c{i:06d}")
            for i in range(start, min(queued, start + 4096))
        ]
        answers = d.DispatchBatch(dispatch_pb2.DispatchBatchRequest(requests=items), timeout=60).responses
        assert all(r.reason == common_pb2.REASON_QUEUED for r in answers), {r.reason for r in answers}


def _drain(a: admin_pb2_grpc.AdminStub, shop: str, n: int) -> None:
    """Raise the agent's capacity: the engine hands out the ``n`` queued conversations in this call."""
    a.PutAgent(
        admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:a", max_capacity=1 + n)),
        timeout=60,
    )


# ------------------------------------------------------------------ the hub


def _hand_out(shop: str, i: int) -> tuple[str, str, str, str, int, int]:
    return (shop, f"c{i:06d}", f"b{i}", f"{shop}:a", common_pb2.REASON_GROUP, 1_700_000_000_000 + i)


def _frames(sub: Subscriber) -> list[bytes]:
    return [frame for batch in sub.queue for frame in batch]


def ids(sub: Subscriber) -> list[str]:
    return [dispatch_pb2.Assignment.FromString(f).conversation_id for f in _frames(sub)]


def test_each_hand_out_is_serialized_once_and_its_bytes_are_shared() -> None:
    async def run() -> None:
        hub = AssignmentHub()
        s1, s2, s3 = (hub.subscribe(["s"]) for _ in range(3))
        everyone = hub.subscribe([])
        both = hub.subscribe(["s", "t"])
        only_t = hub.subscribe(["t"])
        items = [_hand_out("s" if i % 3 else "t", i) for i in range(30)]
        hub.publish(items[:10])
        hub.publish(items[10:])
        assert hub.serialized == 0 and not s1.queue  # publishing is one append: nothing per watcher yet
        while hub._task is not None:
            await asyncio.sleep(0)
        assert hub.serialized == 30  # once each, for 6 watchers
        s_frames = _frames(s1)
        assert len(s_frames) == 20 and len(_frames(only_t)) == 10
        # The watchers of one shop share the batches themselves, and every
        # watcher that gets a hand-out holds the very same bytes object.
        assert [b is c for b, c in zip(s1.queue, s2.queue, strict=False)] == [True] * len(s1.queue)
        assert all(x is y for x, y in zip(s_frames, _frames(s3), strict=False))
        by_id = {id(f) for f in _frames(everyone)}
        assert len(_frames(everyone)) == 30 and all(id(f) in by_id for f in s_frames + _frames(only_t))
        # A two-shop watcher gets both shops' hand-outs, in publish order.
        assert _frames(both) == _frames(everyone)
        assert [dispatch_pb2.Assignment.FromString(f).conversation_id for f in _frames(both)] == [x[1] for x in items]
        # The bytes are a dispatch.v1.Assignment, as clients always got.
        first = dispatch_pb2.Assignment.FromString(_frames(everyone)[0])
        assert (first.shop_id, first.conversation_id, first.agent_id, first.at.ToMilliseconds()) == (
            "t",
            "c000000",
            "t:a",
            1_700_000_000_000,
        )

    asyncio.run(run())


def test_a_subscriber_past_its_bound_is_dropped_at_once_and_its_queue_never_grows_past_it() -> None:
    async def run() -> None:
        hub = AssignmentHub(backlog=10)
        slow, fast = hub.subscribe(["s"]), hub.subscribe(["s"])
        peak = 0
        for round_ in range(5):
            hub.publish([_hand_out("s", 4 * round_ + i) for i in range(4)])
            while hub._task is not None:
                await asyncio.sleep(0)
            peak = max(peak, slow.pending, sum(len(b) for b in slow.queue))
            while (batch := fast.take()) is not None:  # fast keeps up
                assert len(batch) == 4
        assert peak <= 10
        assert slow.overflowed and slow.pending == 0 and not slow.queue  # its memory went at once
        assert not fast.overflowed and hub.overflows == 1
        hub.publish([_hand_out("s", 99)])
        while hub._task is not None:
            await asyncio.sleep(0)
        assert not slow.queue and fast.pending == 1  # it left the index: nothing more for it
        hub.unsubscribe(slow)
        hub.unsubscribe(fast)
        assert hub.subscribers == 0

    asyncio.run(run())


def test_a_subscription_gets_exactly_what_is_published_after_it() -> None:
    async def run() -> None:
        hub = AssignmentHub()
        early = hub.subscribe(["s"])
        hub.publish([_hand_out("s", 0)])  # not distributed yet when the next one subscribes
        late = hub.subscribe(["s"])
        hub.publish([_hand_out("s", 1)])
        while hub._task is not None:
            await asyncio.sleep(0)
        assert ids(early) == ["c000000", "c000001"]
        assert ids(late) == ["c000001"]
        gone = hub.subscribe(["s"])  # unsubscribed before it joins: never added
        hub.publish([_hand_out("s", 2)])
        pending = hub.subscribe(["s"])
        hub.unsubscribe(pending)
        while hub._task is not None:
            await asyncio.sleep(0)
        assert not pending.queue and ids(gone) == ["c000002"]

    asyncio.run(run())


def test_watchers_see_a_hand_out_only_once_the_journal_holds_it() -> None:
    from dispatcher.server import CallCore, Counters

    class Engine:
        def __init__(self) -> None:
            self.outbox = [_hand_out("s", 0), _hand_out("s", 1)]

        def drain_outbox(self) -> list[Any]:
            out, self.outbox = self.outbox, []
            return out

    class Journal:
        def __init__(self) -> None:
            self.durable: list[Any] = []

        def after_durable(self, callback: Any) -> None:
            self.durable.append(callback)

    async def run() -> None:
        hub, journal = AssignmentHub(), Journal()
        core = CallCore(Engine(), hub, Counters(), journal)
        sub = hub.subscribe(["s"])
        assert core.flush() == 2 and core.counters.handed_out == 2
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sub.queue and hub.serialized == 0  # not durable yet: nothing for watchers
        for callback in journal.durable:
            callback()
        while hub._task is not None:
            await asyncio.sleep(0)
        assert ids(sub) == ["c000000", "c000001"]

    asyncio.run(run())


def test_publishing_without_watchers_costs_nothing_per_hand_out() -> None:
    hub = AssignmentHub()
    assert hub.backlog == WATCH_BACKLOG == 65536  # the default bound, still importable from dispatcher.server
    hub.publish([_hand_out("s", i) for i in range(1000)])  # no event loop needed: nothing to do
    assert hub.serialized == 0 and not hub._pending


# ------------------------------------------------------------------ end to end


def test_the_write_gate_keeps_at_most_its_slots_in_flight_first_come_first_served() -> None:
    async def run() -> None:
        gate = WriteGate(slots=3, hold=10.0)
        in_flight, most, order = 0, 0, []
        release = asyncio.Event()

        async def write(data: bytes) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            order.append(data)
            await release.wait()
            in_flight -= 1

        tasks = [asyncio.create_task(gate.write(write, b"%d" % i)) for i in range(10)]
        await asyncio.sleep(0.01)
        assert in_flight == 3 and order == [b"0", b"1", b"2"]  # the others wait for a slot
        release.set()
        await asyncio.gather(*tasks)
        assert most == 3 and order == [b"%d" % i for i in range(10)]  # in the order they asked
        assert gate.free == 3  # every slot back

    asyncio.run(run())


def test_a_write_held_past_the_hold_time_gives_its_slot_back() -> None:
    async def run() -> None:
        gate = WriteGate(slots=1, hold=0.02)
        stuck = asyncio.Event()  # a client that stopped reading: this write never completes
        done: list[bytes] = []

        async def held(data: bytes) -> None:
            await stuck.wait()

        async def write(data: bytes) -> None:
            done.append(data)

        blocked = asyncio.create_task(gate.write(held, b"stalled"))
        await asyncio.sleep(0)
        other = asyncio.create_task(gate.write(write, b"other"))
        await asyncio.sleep(0.005)
        assert done == []  # within the hold time the slot is the stalled write's
        await asyncio.wait_for(other, 1)  # after it, the other watcher writes
        assert done == [b"other"] and not blocked.done()
        blocked.cancel()  # the stalled watcher is ended (overflow): nothing is released twice
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert gate.free == 1

    asyncio.run(run())


def test_a_watcher_cancelled_while_it_waits_for_a_slot_passes_the_slot_on() -> None:
    async def run() -> None:
        gate = WriteGate(slots=1, hold=10.0)
        go = asyncio.Event()
        done: list[bytes] = []

        async def write(data: bytes) -> None:
            await go.wait()
            done.append(data)

        first = asyncio.create_task(gate.write(write, b"1"))
        second = asyncio.create_task(gate.write(write, b"2"))
        third = asyncio.create_task(gate.write(write, b"3"))
        await asyncio.sleep(0)
        second.cancel()  # waiting for the slot when its watcher ends
        go.set()
        await first
        await third
        assert done == [b"1", b"3"] and second.cancelled() and gate.free == 1

    asyncio.run(run())


def test_batch_responses_frame_each_assignment_as_field_1() -> None:
    items = [
        dispatch_pb2.Assignment(shop_id="s" * n, conversation_id=f"c{n}") for n in (0, 1, 125, 127, 128, 1000, 20000)
    ]
    wire = batch_response([a.SerializeToString() for a in items])
    assert list(dispatch_pb2.WatchAssignmentBatchesResponse.FromString(wire).assignments) == items
    assert batch_response([]) == b""


@pytest.mark.parametrize("method", WATCH_METHODS)
def test_watchers_of_both_methods_get_the_same_hand_outs_in_order(method: str) -> None:
    running = ThreadedServer().start()
    try:
        with grpc.insecure_channel(running.target) as ch:
            a, d = admin_pb2_grpc.AdminStub(ch), dispatch_pb2_grpc.DispatchStub(ch)
            _setup_shop(a, d, "s", 3000)
            watch = _Watch(ch, method, ["s"], 60)
            assert ("dispatch-watch", "subscribed") in tuple(watch.call.initial_metadata() or ())
            messages = iter(watch.call)
            _drain(a, "s", 1)  # one hand-out alone: a batch of one, at once
            first = next(messages)
            assert (list(first.assignments) if watch.batched else [first])[0].conversation_id == "c000000"
            _drain(a, "s", 3000)  # 2,999 at once: many per write for the batches
            got, writes = [], 0
            while len(got) < 2999:
                message = next(messages)
                writes += 1
                got.extend(x.conversation_id for x in (message.assignments if watch.batched else [message]))
            assert got == [f"c{i:06d}" for i in range(1, 3000)]
            if watch.batched:
                assert writes <= 2999 // WATCH_CHUNK + 2  # grouped: whole shared chunks per write
            else:
                assert writes == 2999
            watch.call.cancel()
    finally:
        running.stop()


class _Watch:
    """A blocking watch stream of either method; iterating gives single assignments."""

    def __init__(self, channel: grpc.Channel, method: str, shops: list[str], timeout: float) -> None:
        stub = dispatch_pb2_grpc.DispatchStub(channel)
        self.batched = method == "WatchAssignmentBatches"
        if self.batched:
            self.call = stub.WatchAssignmentBatches(
                dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=shops), timeout=timeout
            )
        else:
            self.call = stub.WatchAssignments(dispatch_pb2.WatchAssignmentsRequest(shop_ids=shops), timeout=timeout)

    def __iter__(self) -> Iterator[dispatch_pb2.Assignment]:
        for message in self.call:
            if self.batched:
                assert 1 <= len(message.assignments) <= 1024 + 255
                yield from message.assignments
            else:
                yield message


@pytest.mark.parametrize("method", WATCH_METHODS)
def test_a_slow_watcher_is_ended_with_resource_exhausted_while_a_fast_one_gets_everything(method: str) -> None:
    running = ThreadedServer(watch_backlog=1000).start()
    try:
        # The slow watcher never reads: with BDP probing off its flow-control window stays small.
        slow_options = [("grpc.http2.bdp_probe", 0)]
        with (
            grpc.insecure_channel(running.target) as ch,
            grpc.insecure_channel(running.target, options=slow_options) as slow_ch,
        ):
            a, d = admin_pb2_grpc.AdminStub(ch), dispatch_pb2_grpc.DispatchStub(ch)
            _setup_shop(a, d, "s", 6000)
            fast = _Watch(ch, method, ["s"], 60)
            slow = _Watch(slow_ch, method, ["s"], 60)  # never read until the end
            for watch in (fast, slow):
                assert ("dispatch-watch", "subscribed") in tuple(watch.call.initial_metadata() or ())
            got: list[str] = []
            reader = threading.Thread(
                target=lambda: got.extend(x.conversation_id for _, x in zip(range(6000), fast, strict=False))
            )
            reader.start()
            hub = running.server.hub
            for step in range(1, 13):  # 12 calls of 500 hand-outs, each within the bound of a reader that keeps up
                _drain(a, "s", 500 * step)
                deadline = time.monotonic() + 10
                while len(got) < 500 * step and time.monotonic() < deadline:
                    time.sleep(0.005)
            reader.join(30)
            assert got == [f"c{i:06d}" for i in range(6000)]  # every hand-out, in order
            # The slow one was ended on the server: its queue is gone and it no longer counts.
            assert hub.overflows == 1
            deadline = time.monotonic() + 10
            while hub.subscribers != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert hub.subscribers == 1
            # Its client sees what was in flight, then RESOURCE_EXHAUSTED saying why.
            seen = []
            with pytest.raises(grpc.RpcError) as info:
                for x in slow:
                    seen.append(x.conversation_id)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "fell more than 1000 assignments behind" in (info.value.details() or "")
            assert seen == [f"c{i:06d}" for i in range(len(seen))] and len(seen) < 6000
            fast.call.cancel()
        assert running.server.counters.errors["RESOURCE_EXHAUSTED"] == 1
    finally:
        running.stop()


def test_open_streams_at_their_limit_never_lock_out_unary_calls() -> None:
    running = ThreadedServer(max_concurrent_rpcs=2, max_concurrent_streams=4).start()
    try:
        with grpc.insecure_channel(running.target) as ch:
            a, d = admin_pb2_grpc.AdminStub(ch), dispatch_pb2_grpc.DispatchStub(ch)
            request = dispatch_pb2.WatchAssignmentsRequest()
            # More streams than the unary limit, up to their own.
            watches = [d.WatchAssignments(request, timeout=30) for _ in range(4)]
            for w in watches:
                assert ("dispatch-watch", "subscribed") in tuple(w.initial_metadata() or ())
            # Unary and Admin calls still succeed, and so does health.
            _setup_shop(a, d, "s", 3)
            assert a.ListShops(admin_pb2.ListShopsRequest()).shop_ids == ["s"]
            assert a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s")).shop_id == "s"
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            # One stream more than the limit: RESOURCE_EXHAUSTED at once, naming the limit.
            with pytest.raises(grpc.RpcError) as info:
                list(d.WatchAssignments(request, timeout=10))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 4 open streams" in (info.value.details() or "")
            stream = d.DispatchStream(iter([dispatch_pb2.DispatchBatchRequest()]), timeout=10)  # a stream too
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # A slot freed is a slot taken again.
            watches.pop().cancel()
            deadline = time.monotonic() + 10
            while running.server.hub.subscribers != 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            again = d.WatchAssignments(request, timeout=30)
            assert ("dispatch-watch", "subscribed") in tuple(again.initial_metadata() or ())
            for w in [*watches, again]:
                w.cancel()
    finally:
        running.stop()


def test_the_stream_limit_is_a_setting_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatcher.cli import build_parser
    from dispatcher.config import ENV_VARS, settings_from_args

    def settings(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
        for name in ENV_VARS.values():
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        full = ["serve", *argv]
        s = settings_from_args(build_parser(full).parse_args(full))
        return s.max_concurrent_rpcs, s.max_concurrent_streams

    assert settings([], {}) == (1024, 1024)
    config = tmp_path / "dispatch.toml"
    config.write_text("max_concurrent_streams = 7\n")
    assert settings(["--config", str(config)], {}) == (1024, 7)
    assert settings(["--config", str(config)], {"DISPATCH_MAX_CONCURRENT_STREAMS": "9"}) == (1024, 9)
    assert settings(
        ["--max-concurrent-streams", "11", "--max-concurrent-rpcs", "3"], {"DISPATCH_MAX_CONCURRENT_STREAMS": "9"}
    ) == (3, 11)
    with pytest.raises(SystemExit):
        settings(["--max-concurrent-streams", "0"], {})


# ------------------------------------------------------------------ 500 watchers, 50k hand-outs

BUSY = [f"busy{i:02d}" for i in range(20)]
PER_BUSY = 2500  # 20 x 2500 = 50,000 hand-outs
QUIET = [f"quiet{i:02d}" for i in range(20)]
PER_QUIET = 10
WATCHERS = 500

# The watchers' process: ``python -c WATCHERS_SCRIPT TARGET``. PLAN is a list of
# [shops, mode, expected] (on stdin): "fast" reads at once, "slow" sleeps 5 ms every 25
# hand-outs, "stall" never reads; a mode ending in "-batches" watches with
# WatchAssignmentBatches, the others with WatchAssignments. It prints {"ready": n} once every stream is
# subscribed, then {"counts": [...], "ordered": [...]} when every reader has
# its expected count (or 120 s passed).
WATCHERS_SCRIPT = r"""
import asyncio, json, os, sys
import grpc, uvloop
from dispatcher._gen.dispatch.v1 import dispatch_pb2

target, plan = sys.argv[1], json.loads(sys.stdin.readline())
os.nice(19)  # the server, not the readers, is measured: it gets the CPU first

async def main():
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(10)]
    calls, counts, ordered = [], [0] * len(plan), [True] * len(plan)
    for i, (shops, mode, expected) in enumerate(plan):
        ch = channels[i % 8] if not mode.startswith("stall") else channels[8 + i % 2]
        if mode.endswith("-batches"):
            watch = ch.unary_stream("/dispatch.v1.Dispatch/WatchAssignmentBatches",
                                    request_serializer=dispatch_pb2.WatchAssignmentBatchesRequest.SerializeToString,
                                    response_deserializer=dispatch_pb2.WatchAssignmentBatchesResponse.FromString)
            calls.append(watch(dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=shops), timeout=150))
        else:
            watch = ch.unary_stream("/dispatch.v1.Dispatch/WatchAssignments",
                                    request_serializer=dispatch_pb2.WatchAssignmentsRequest.SerializeToString,
                                    response_deserializer=dispatch_pb2.Assignment.FromString)
            calls.append(watch(dispatch_pb2.WatchAssignmentsRequest(shop_ids=shops), timeout=150))
    for call in calls:
        assert ("dispatch-watch", "subscribed") in tuple(await call.initial_metadata())
    print(json.dumps({"ready": len(calls)}), flush=True)

    async def read(i, call, mode, expected):
        last = {}
        async for message in call:
            for a in (message.assignments if mode.endswith("-batches") else (message,)):
                counts[i] += 1
                if a.conversation_id <= last.get(a.shop_id, ""):
                    ordered[i] = False
                last[a.shop_id] = a.conversation_id
                if mode.startswith("slow") and counts[i] % 25 == 0:
                    await asyncio.sleep(0.005)
            if counts[i] >= expected:
                return

    readers = [read(i, c, p[1], p[2]) for i, (c, p) in enumerate(zip(calls, plan)) if not p[1].startswith("stall")]
    try:
        await asyncio.wait_for(asyncio.gather(*readers), 120)
    except asyncio.TimeoutError:
        pass
    print(json.dumps({"counts": counts, "ordered": ordered}), flush=True)
    os._exit(0)  # the stalled streams are cut with the connections

uvloop.run(main())
"""


def _plan() -> list[tuple[list[str], str, int]]:
    """500 watchers: readers, slow readers and stalled ones of every kind of subscription, of both methods.

    Every hand-out reaches a reader at least once (each busy shop has one,
    fast or slow); the stalled watcher of every shop takes whatever its
    flow-control window holds and then blocks."""
    plan: list[tuple[list[str], str, int]] = []
    for i, shop in enumerate(BUSY):  # one reader per busy shop: 20 x 2500
        plan.append(([shop], ("fast", "slow-batches", "slow", "fast-batches")[i % 4], PER_BUSY))
    plan.append(([], "stall", 0))  # every shop, never reads
    plan.append(([BUSY[0], QUIET[0]], "fast", PER_BUSY + PER_QUIET))  # two shops, in publish order
    i = 0
    while len(plan) < WATCHERS:  # the rest on the quiet shops: fast, slow and stalled
        mode = ("fast", "slow-batches", "stall", "fast-batches", "slow", "stall-batches")[i % 6]
        plan.append(([QUIET[i % len(QUIET)]], mode, 0 if mode.startswith("stall") else PER_QUIET))
        i += 1
    return plan


class _Prober(threading.Thread):
    """Health Check every 5 ms from its own thread, event loop and channel.

    Open loop: a check starts every 5 ms whether or not the previous ones have
    answered, and each is timed from its own start, so a server that stalls
    for 300 ms shows ~60 slow checks, not one (no coordinated omission).
    Latencies in seconds; a failed check counts as 5 s."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._probe())

    async def _probe(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest(service="")
            await check(request, timeout=10)  # connected
            self.ready.set()

            async def one() -> None:
                started = time.perf_counter()
                try:
                    answer = await check(request, timeout=5)
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING
                    self.latencies.append(time.perf_counter() - started)
                except (grpc.RpcError, AssertionError) as exc:
                    self.failures.append(repr(exc))
                    self.latencies.append(5.0)

            checks = []
            due = time.perf_counter()
            while not self.stop.is_set():
                checks.append(asyncio.create_task(one()))
                due += 0.005
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await asyncio.gather(*checks)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stop(proc: Proc) -> dict[str, Any] | None:
    """SIGTERM, then the ``server.stopped`` record (its counters), or None if it never came.

    The process is not required to exit here: at times grpc.aio's poller
    thread is still being joined when the event loop closes after this much
    traffic (seen with the design before this one too); ``ensure_dead`` ends it."""
    proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stopped = proc.events("server.stopped")
        if stopped:
            return stopped[0]
        if proc.popen.poll() is not None:
            time.sleep(0.2)  # let the reader thread take the last lines
            stopped = proc.events("server.stopped")
            return stopped[0] if stopped else None
        time.sleep(0.05)
    return None


def _watch_load() -> dict[str, Any]:
    """One run: a fresh server, 50,200 hand-outs to 500 watchers, health probed throughout."""
    proc = Proc("serve", "--port", "0", "--log-format", "json", "--stats-interval", "0")
    watchers: subprocess.Popen[str] | None = None
    try:
        target = proc.target
        with grpc.insecure_channel(target) as ch:
            a, d = admin_pb2_grpc.AdminStub(ch), dispatch_pb2_grpc.DispatchStub(ch)
            for shop in BUSY:
                _setup_shop(a, d, shop, PER_BUSY)
            for shop in QUIET:
                _setup_shop(a, d, shop, PER_QUIET)
            plan = _plan()
            assert len(plan) == WATCHERS
            watchers = subprocess.Popen(
                [sys.executable, "-c", WATCHERS_SCRIPT, target],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert watchers.stdin is not None and watchers.stdout is not None
            watchers.stdin.write(json.dumps(plan) + "\n")
            watchers.stdin.close()
            assert json.loads(watchers.stdout.readline()) == {"ready": WATCHERS}
            prober = _Prober(target)
            prober.start()
            assert prober.ready.wait(10)
            time.sleep(0.2)
            drains: list[float] = []
            started = time.monotonic()
            for shop, n in [(s, PER_BUSY) for s in BUSY] + [(s, PER_QUIET) for s in QUIET]:
                t = time.perf_counter()
                _drain(a, shop, n)
                drains.append(time.perf_counter() - t)
            received = json.loads(watchers.stdout.readline())
            took = time.monotonic() - started
            prober.stop.set()
            prober.join(30)
        watchers.wait(30)
        stopped = _stop(proc)
        lat = prober.latencies
        return {
            "plan": plan,
            "received": received,
            "checks": len(lat),
            "failures": prober.failures[:3],
            "p50": _quantile(lat, 0.5),
            "p99": _quantile(lat, 0.99),
            "max": max(lat),
            "drain_max": max(drains),
            "took": took,
            "stopped": stopped,
        }
    finally:
        if watchers is not None and watchers.poll() is None:
            watchers.kill()
        proc.ensure_dead()


def test_health_stays_fast_while_500_watchers_get_50k_hand_outs() -> None:
    runs = [_watch_load()]
    while runs[-1]["p99"] > 0.050 and len(runs) < 3:
        # Up to two more runs: other work on a small shared VM can stall any
        # process for tens of ms. The old design (fan-out inside the call)
        # measured a p99 of 0.3-2 s here in every run, so retries cannot hide it.
        runs.append(_watch_load())
    for run in runs:
        print(
            f"\nwatch load: {run['checks']} health checks over {run['took']:.1f} s: p50 {run['p50'] * 1e3:.1f} ms, "
            f"p99 {run['p99'] * 1e3:.1f} ms, max {run['max'] * 1e3:.1f} ms; drain calls max {run['drain_max'] * 1e3:.1f} ms"
        )
    run = runs[-1]
    plan, received = run["plan"], run["received"]
    # Every reader got every hand-out of its shops, each shop's in order.
    readers = [i for i, p in enumerate(plan) if not p[1].startswith("stall")]
    assert [received["counts"][i] for i in readers] == [plan[i][2] for i in readers]
    assert all(received["ordered"][i] for i in readers)
    assert not run["failures"], run["failures"]
    assert run["checks"] >= 200, run["checks"]  # enough checks for a p99
    assert run["p99"] <= 0.050, [
        f"p99 {r['p99'] * 1e3:.1f} ms (p50 {r['p50'] * 1e3:.1f}, max {r['max'] * 1e3:.1f})" for r in runs
    ]
    # A call that hands out 2,500 conversations answers without waiting for any watcher.
    assert run["drain_max"] < 1.0, run["drain_max"]
    stopped = run["stopped"]
    assert stopped is not None and stopped["internal_errors"] == 0 and stopped["handed_out"] == 50_200
    assert stopped.get("exit_code", 0) == 0
