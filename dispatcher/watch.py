"""WatchAssignments: the engine's hand-outs, fanned out to watchers off the call path.

How a hand-out travels:

1. ``CallCore.flush`` (dispatcher/server.py) drains the engine's outbox and, once
   the journal holds it durably, calls ``AssignmentHub.publish``: one append of
   the engine's tuples to the hub's pending list and, if needed, the start of
   the fan-out task. A call's answer never waits for watchers, and costs
   nothing per hand-out when nobody watches.
2. The fan-out task takes the pending hand-outs ``WATCH_CHUNK`` at a time. It
   builds and serializes each hand-out once (``dispatch.v1.Assignment``) and appends
   one shared tuple of those bytes to the queue of every subscriber that
   watches them. Subscribers are indexed by their set of shops, so a chunk costs
   one append per subscriber that wants some of it (the watchers of its shops
   and of every shop), never per hand-out and subscriber. Between chunks it
   yields to the event loop.
3. Each WatchAssignments call (``AssignmentHub.serve``) writes its queue's
   bytes as they are: the method is registered with an identity response
   serializer, and the bytes are those of a ``dispatch.v1.Assignment``, so
   clients see the same wire format as before. A WatchAssignmentBatches call
   writes everything queued for it by then as one
   ``dispatch.v1.WatchAssignmentBatchesResponse`` (``batch_response``: each
   shared frame behind its field tag), so a busy watcher costs one write per
   batch. Every write is a trip through the event loop, so open streams share
   the loop with the calls; at most ``WATCH_WRITE_SLOTS`` writes are in flight
   at once over all watchers (``WriteGate``), so a turn of the loop runs at
   most that many and the calls' own steps interleave.

Ordering: a subscriber sees hand-outs in the order they were published. A
subscription joins the pending list like a batch does, so it receives exactly
the hand-outs published after ``subscribe`` returned (the ``dispatch-watch:
subscribed`` headers are sent after it).

Bounded: a subscriber's queue holds at most ``backlog`` hand-outs (default
``WATCH_BACKLOG``). A subscriber that would go past it is ended: its queue is
dropped at once, it leaves the index and the ``subscribers`` count, and its
call ends with RESOURCE_EXHAUSTED after what gRPC already holds for the
client. A write held up by the client's flow control is cancelled for that,
so a client that stops reading cannot keep its queue alive; it sees the status
when it reads again (or its call ends when it cancels or its deadline passes).
The bound must exceed the largest burst a watcher has to survive: one call
that drains a queue hands all of it out at once. Nothing is logged per
hand-out; an ended subscriber is one warning line.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

import grpc
import structlog

from _fastpath.contract import Assignment

from .convert import assignment_to_pb

__all__ = [
    "WATCH_BACKLOG",
    "WATCH_BATCH_MAX",
    "WATCH_CHUNK",
    "WATCH_WRITE_HOLD",
    "WATCH_WRITE_SLOTS",
    "AssignmentHub",
    "HandOut",
    "Subscriber",
    "WriteGate",
    "batch_response",
]

HandOut = Assignment
"""One hand-out as the engine's outbox holds it: (shop, conversation, buyer, agent, reason, at_ms),
and for a §10 re-route or reclaim the previous agent (``_fastpath.contract.Assignment``)."""

WATCH_BACKLOG: Final = 65536
"""Hand-outs a WatchAssignments subscriber may have queued; one more ends it with RESOURCE_EXHAUSTED.

The frames are shared between subscribers (one bytes object per hand-out), so a
full queue costs its subscriber only the references: a few hundred deque
entries of shared tuples, and the hand-outs themselves once for all."""

WATCH_BATCH_MAX: Final = 1024
"""Hand-outs a WatchAssignmentBatches write gathers before it stops taking more
(it takes whole shared chunks, so a write may hold up to ``WATCH_CHUNK - 1`` more)."""

WATCH_WRITE_SLOTS: Final = 32
"""Watcher writes in flight at once over all watchers (``WriteGate``)."""

WATCH_WRITE_HOLD: Final = 0.05
"""Seconds a write may keep its slot; one held longer by the client's flow control gives it back."""

WATCH_CHUNK: Final = 256
"""Hand-outs the fan-out task serializes and distributes before it yields to the event loop."""

_ALL: Final[frozenset[str]] = frozenset()

log = structlog.get_logger("dispatcher.watch")


def _field_1_tag(length: int) -> bytes:
    """The tag and length that put a ``length``-byte message in field 1 (``assignments``)."""
    head = bytearray(b"\x0a")
    while length > 0x7F:
        head.append((length & 0x7F) | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head)


_TAGS: Final = [_field_1_tag(n) for n in range(1024)]


def batch_response(frames: Iterable[bytes]) -> bytes:
    """The bytes of a ``dispatch.v1.WatchAssignmentBatchesResponse`` holding ``frames``
    (serialized ``dispatch.v1.Assignment`` messages): each one tagged as field 1."""
    tags = _TAGS
    return b"".join([tags[n] + f if (n := len(f)) < 1024 else _field_1_tag(n) + f for f in frames])


class Subscriber:
    """One WatchAssignments call: its shops (empty: every shop) and its bounded queue of shared frames."""

    __slots__ = (
        "_joined",
        "_open",
        "_task",
        "_waiter",
        "_writing",
        "backlog",
        "closed",
        "overflowed",
        "pending",
        "queue",
        "shops",
    )

    def __init__(self, shops: frozenset[str], backlog: int) -> None:
        self.shops = shops
        self.backlog = backlog
        self.queue: collections.deque[tuple[bytes, ...]] = collections.deque()
        """Batches of serialized ``dispatch.v1.Assignment`` messages, each shared with other subscribers."""
        self.pending = 0
        """Hand-outs in ``queue``; never more than ``backlog``."""
        self.closed = False
        """The server is stopping: end with OK once the queue is written."""
        self.overflowed = False
        """It fell behind: its queue was dropped and its call ends with RESOURCE_EXHAUSTED."""
        self._open = True  # counted in AssignmentHub.subscribers
        self._joined = False
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._writing = False

    def take(self) -> tuple[bytes, ...] | None:
        """The oldest queued batch (no longer counted in ``pending``), or None."""
        if not self.queue:
            return None
        batch = self.queue.popleft()
        self.pending -= len(batch)
        return batch

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


class WriteGate:
    """At most ``slots`` watcher writes in flight at once, over all watchers.

    Every completed write wakes its watcher for the next one in the same turn
    of the event loop, so with hundreds of busy watchers one turn would run
    hundreds of writes (~40 us each) and every call would wait for several such
    turns. With the gate a turn runs at most ``slots`` of them, and the calls'
    steps interleave. A write held by a client's flow control must not keep its
    slot: after ``hold`` seconds its slot is given back (the write goes on).
    Slots are handed out first come, first served."""

    __slots__ = ("_hold", "_loop", "_waiters", "free")

    def __init__(self, slots: int, hold: float) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.free = slots
        self._hold = hold
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def write(self, write: Any, data: bytes) -> None:
        """``await write(data)`` in a slot."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
        else:
            loop = self._loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # the releaser gave its slot to this waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot was given just before the cancel: pass it on
                raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release()

        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        timer = loop.call_later(self._hold, release)
        try:
            await write(data)
        finally:
            timer.cancel()
            release()

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class _Batch:
    """Published hand-outs not distributed yet; ``start`` is how many of them were."""

    __slots__ = ("items", "start")

    def __init__(self, items: Sequence[HandOut]) -> None:
        self.items = items
        self.start = 0


class AssignmentHub:
    """Fans the engine's hand-outs out to WatchAssignments subscribers (see the module doc).

    ``publish`` never blocks and never touches a subscriber; the fan-out task
    does, ``WATCH_CHUNK`` hand-outs at a time. ``serve`` runs one call.
    """

    def __init__(
        self,
        backlog: int = WATCH_BACKLOG,
        chunk: int = WATCH_CHUNK,
        write_slots: int = WATCH_WRITE_SLOTS,
        write_hold: float = WATCH_WRITE_HOLD,
    ) -> None:
        if backlog < 1 or chunk < 1:
            raise ValueError("backlog and chunk must be at least 1")
        self.backlog = backlog
        self.gate = WriteGate(write_slots, write_hold)
        self._chunk = chunk
        self._groups: dict[frozenset[str], set[Subscriber]] = {}
        """Subscribers by their set of shops (``frozenset()``: every shop)."""
        self._by_shop: dict[str, set[frozenset[str]]] = {}
        """Shop -> the shop sets (keys of ``_groups``) that contain it."""
        self._pending: collections.deque[_Batch | Subscriber] = collections.deque()
        """Batches to distribute, and subscriptions to add once the batches before them are."""
        self._task: asyncio.Task[None] | None = None
        self._count = 0
        self._closed = False
        self.serialized = 0
        """Hand-outs serialized so far: each once, whatever the number of watchers."""
        self.overflows = 0
        """Subscribers ended for falling ``backlog`` hand-outs behind."""

    @property
    def subscribers(self) -> int:
        """Open WatchAssignments subscriptions."""
        return self._count

    # ---------------------------------------------------------------- publishing

    def publish(self, items: Sequence[HandOut]) -> None:
        """Queue ``items`` for the subscribers (in this order). O(1): the fan-out task does the rest."""
        if not items:
            return
        if not self._pending and not self._groups:
            return  # nobody watches and nobody is about to
        self._pending.append(_Batch(items))
        self._kick()

    def _kick(self) -> None:
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a test driving the servicers directly): distribute now
            self._distribute(math.inf)
            return
        self._task = loop.create_task(self._fan_out(), name="dispatch-watch-fan-out")

    async def _fan_out(self) -> None:
        try:
            while self._pending:
                try:
                    self._distribute(self._chunk)
                except Exception:  # a bug: drop what failed, keep the hub alive
                    log.exception("watch.fan_out_failed")
                    self._pending.popleft()
                await asyncio.sleep(0)  # let calls run between chunks
        finally:
            self._task = None

    def _distribute(self, budget: float) -> None:
        """Distribute up to ``budget`` pending hand-outs (and the subscriptions between them)."""
        pending = self._pending
        while pending and budget > 0:
            head = pending[0]
            if isinstance(head, Subscriber):
                pending.popleft()
                self._join(head)
                continue
            items = head.items
            start = head.start
            end = min(len(items), start + int(min(budget, len(items))))
            self._deliver(items[start:end] if start or end < len(items) else items)
            budget -= end - start
            if end >= len(items):
                pending.popleft()
            else:
                head.start = end

    def _deliver(self, chunk: Sequence[HandOut]) -> None:
        if not self._groups:
            return
        frames = [assignment_to_pb(item).SerializeToString() for item in chunk]
        self.serialized += len(frames)
        everyone = self._groups.get(_ALL)
        if everyone:
            shared = tuple(frames)
            for sub in tuple(everyone):
                self._push(sub, shared)
        index = self._by_shop
        if not index:
            return
        by_shop: dict[str, list[bytes]] = {}
        for item, frame in zip(chunk, frames, strict=False):
            shop_id = item[0]
            if shop_id in index:
                same = by_shop.get(shop_id)
                if same is None:
                    by_shop[shop_id] = [frame]
                else:
                    same.append(frame)
        if not by_shop:
            return
        # Each shop set that wants some of the chunk: the one shop it is
        # touched by (its frames are shared as they are), or None when several.
        touched: dict[frozenset[str], str | None] = {}
        for shop_id in by_shop:
            for key in index[shop_id]:
                touched[key] = shop_id if key not in touched else None
        shared_by_shop = {shop_id: tuple(same) for shop_id, same in by_shop.items()}
        for key, only in touched.items():
            if only is not None:
                batch = shared_by_shop[only]
            else:  # a multi-shop subscription: its shops' hand-outs, in publish order
                batch = tuple(frame for item, frame in zip(chunk, frames, strict=False) if item[0] in key)
            group = self._groups.get(key)
            if group:
                for sub in tuple(group):
                    self._push(sub, batch)

    def _push(self, sub: Subscriber, batch: tuple[bytes, ...]) -> None:
        n = len(batch)
        if sub.pending + n > sub.backlog:
            self._overflow(sub)
            return
        sub.queue.append(batch)
        sub.pending += n
        sub._wake()

    def _overflow(self, sub: Subscriber) -> None:
        sub.overflowed = True
        sub.queue.clear()  # the memory goes at once, not when the client reads
        sub.pending = 0
        self._leave(sub)
        self._close_count(sub)  # over now, even if its call lingers until the client reads the status
        self.overflows += 1
        log.warning("watch.overflow", shops=sorted(sub.shops), backlog=sub.backlog)
        if sub._writing and sub._task is not None:
            sub._task.cancel()  # its write may be held by the client's flow control: end it now
        else:
            sub._wake()

    # ---------------------------------------------------------------- subscriptions

    def subscribe(self, shops: Iterable[str]) -> Subscriber:
        """A subscriber that receives every hand-out published from now on, for ``shops`` (none: every shop)."""
        sub = Subscriber(frozenset(shops), self.backlog)
        self._count += 1
        if self._closed:
            sub.closed = True
        elif self._pending:  # behind the batches published before it
            self._pending.append(sub)
        else:
            self._join(sub)
        return sub

    def _join(self, sub: Subscriber) -> None:
        if sub.closed or sub.overflowed or sub._joined:
            return
        sub._joined = True
        group = self._groups.get(sub.shops)
        if group is None:
            group = self._groups[sub.shops] = set()
            for shop_id in sub.shops:
                self._by_shop.setdefault(shop_id, set()).add(sub.shops)
        group.add(sub)

    def _leave(self, sub: Subscriber) -> None:
        if not sub._joined:
            return
        sub._joined = False
        group = self._groups.get(sub.shops)
        if group is None:
            return
        group.discard(sub)
        if not group:
            del self._groups[sub.shops]
            for shop_id in sub.shops:
                keys = self._by_shop.get(shop_id)
                if keys is not None:
                    keys.discard(sub.shops)
                    if not keys:
                        del self._by_shop[shop_id]

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its call ended); a pending subscription is never added."""
        self._leave(sub)
        sub.closed = True  # also keeps a subscription still in the pending list from joining
        sub.queue.clear()
        sub.pending = 0
        self._close_count(sub)

    def _close_count(self, sub: Subscriber) -> None:
        if sub._open:
            sub._open = False
            self._count -= 1

    def close(self) -> None:
        """End every stream (with OK) once it has written what was published before now."""
        self._distribute(math.inf)
        self._closed = True
        for group in self._groups.values():
            for sub in group:
                sub.closed = True
                sub._wake()

    # ---------------------------------------------------------------- one call

    async def serve(
        self, sub: Subscriber, context: grpc.aio.ServicerContext[Any, Any], *, batched: bool = False
    ) -> None:
        """Write ``sub``'s queue to ``context`` until the server stops (OK) or the subscriber
        falls behind (RESOURCE_EXHAUSTED). The caller unsubscribes ``sub`` afterwards.

        ``batched``: each write is a ``dispatch.v1.WatchAssignmentBatchesResponse``
        holding everything queued by then (up to ``WATCH_BATCH_MAX`` hand-outs);
        otherwise each write is one ``dispatch.v1.Assignment``."""
        sub._task = asyncio.current_task()
        write = context.write
        gated = self.gate.write
        try:
            while True:
                batch = sub.take()
                if batch is None:
                    if sub.overflowed or sub.closed:
                        break
                    await sub._wait()
                    continue
                sub._writing = True
                if batched:
                    frames = list(batch)
                    while len(frames) < WATCH_BATCH_MAX:
                        more = sub.take()
                        if more is None:
                            break
                        frames.extend(more)
                    await gated(write, batch_response(frames))
                else:
                    for frame in batch:
                        await gated(write, frame)
                        if sub.overflowed:
                            break
                sub._writing = False
        except asyncio.CancelledError:
            if not sub.overflowed:
                raise  # the client went away, or the server is stopping
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # it was _overflow's cancel: consumed here
        finally:
            sub._writing = False
        if sub.overflowed:
            # The status follows what gRPC already holds for the client: a client
            # that has stopped reading gets it when it reads again, or its call
            # ends when it cancels or its deadline passes.
            try:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the watcher fell more than {sub.backlog} assignments behind and was ended; "
                    "watch again (GetShopState shows the current state)",
                )
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception:
                return
