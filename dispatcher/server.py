"""The gRPC servicers ``dispatch.v1.Dispatch`` and ``dispatch.v1.Admin`` on grpc.aio.

The servicers are thin: decode the request, call the engine, encode the
answer. The engine is single-threaded and synchronous, and every call runs on
the event loop's thread, so calls never interleave. After each mutating call
the engine's outbox (hand-outs made after the original Dispatch: queue drains,
staging pushes, pool claims) is drained and handed to the ``AssignmentHub``
(dispatcher/watch.py), which fans it out to WatchAssignments subscribers off
the call path: an answer never waits for watchers.

Errors: the engine's ``DispatchError`` subclasses become the gRPC status they
name (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS) with
their message; anything else is a bug, logged and answered INTERNAL. Nothing is
logged per decision: ``Counters`` counts, and the server logs them periodically
and at shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar, cast

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

import _fastpath
from _fastpath import DispatchError, Reason
from _fastpath.contract import EngineProtocol
from _fastpath.model import MAX_TIME_MS
from _fastpath.wire import check_batch_size, check_operations_size

from ._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, cluster_pb2, cluster_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from .auth import AuthPolicy
from .cluster import Membership
from .convert import (
    agent_from_pb,
    assignment_to_pb,
    group_from_pb,
    now_ms,
    set_waiting_place,
    shop_config_to_pb,
    shop_from_pb,
    shop_state_page,
    timestamp,
    timestamp_ms,
)
from .durability.journal import Journal, JournalError
from .handlers import Context, Handler
from .observability import Ecosystem
from .operations import KINDS as OPERATION_KINDS
from .operations import OperationContext, apply_operations
from .security import GuardedServer, SecurityGuard, item_scope, malformed_message
from .watch import WATCH_BACKLOG, AssignmentHub, HandOut

__all__ = [
    "MAX_BATCH",
    "MAX_CLOCK_SKEW",
    "MAX_CONCURRENT_RPCS",
    "MAX_CONCURRENT_STREAMS",
    "MAX_MESSAGE_BYTES",
    "WATCH_BACKLOG",
    "AdminServicer",
    "AssignmentHub",
    "CallCore",
    "Counters",
    "DispatchServer",
    "DispatchServicer",
]

MAX_BATCH: Final = 4096
"""Most items in one DispatchBatchRequest (also per message of DispatchStream)."""

MAX_CLOCK_SKEW: Final = 300.0
"""Seconds a caller's ``at`` may be ahead of the server clock (``--max-clock-skew``);
a later one is refused with INVALID_ARGUMENT. See dispatcher/docs/SECURITY.md."""

TICK_INTERVAL_MS: Final = 100
"""Milliseconds between two ticks of the server's clock (``--tick-interval-ms``): §10/§11
deadlines fire at most this late when no call moves their shop's time."""

MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
"""Largest message received or sent. A full batch of 4096 requests with 128-byte
ids is about 3 MiB; anything beyond 8 MiB is refused by gRPC with RESOURCE_EXHAUSTED."""

MAX_OPERATIONS_IN_FLIGHT: Final = 65536
"""Operate/OperateStream: most operations applied but not yet answered (waiting for the
journal), server-wide; the excess of a batch answers RESOURCE_EXHAUSTED, unapplied."""

MAX_CONCURRENT_RPCS: Final = 1024
"""Most unary calls (Dispatch and Admin) in progress at once; beyond it the
guard answers RESOURCE_EXHAUSTED at once. Streams have a limit of their own."""

MAX_CONCURRENT_STREAMS: Final = 1024
"""Most streams (WatchAssignments, DispatchStream, reflection) open at once; beyond
it the guard answers RESOURCE_EXHAUSTED at once. Open streams never take the
slots of unary calls. (``WATCH_BACKLOG``, the watchers' queue bound, lives in
dispatcher/watch.py and is re-exported here.)"""

log = structlog.get_logger("dispatcher.server")

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_CODES: Final = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
}


_CODE_BY_NUMBER: Final = {code.value[0]: code for code in grpc.StatusCode}


def _status_code(exc: DispatchError) -> grpc.StatusCode:
    return _CODES.get(exc.grpc_status, grpc.StatusCode.INTERNAL)


def status_details(code: grpc.StatusCode, message: str, details: tuple[bytes, ...]) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a ``google.rpc.Status`` with ``details`` (the gRPC
    richer error model: ``grpc-status-details-bin``); none when there are no details."""
    if not details:
        return ()
    status = status_pb2.Status(
        code=code.value[0], message=message, details=[any_pb2.Any.FromString(d) for d in details]
    )
    return (("grpc-status-details-bin", status.SerializeToString()),)


@dataclasses.dataclass(slots=True)
class Counters:
    """What the server did, counted instead of logged."""

    handed_out: int = 0
    deadlines_fired: int = 0  # §10/§11 deadlines fired by the server's ticks
    events: int = 0
    admin_calls: int = 0
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    internal_errors: int = 0
    operations: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OPERATION_KINDS, 0))
    """Operations of Operate/OperateStream batches, by kind."""
    """§11: estimated waits (seconds) of the object paths' answers that made a conversation wait."""

    def snapshot(self, decisions: list[list[int]]) -> dict[str, Any]:
        """The counters, with ``decisions`` ([reason][strategy], see ``DispatchServer.decisions``) per reason."""
        return {
            "dispatched": {Reason(i).name.lower(): sum(row) for i, row in enumerate(decisions) if sum(row)},
            "handed_out": self.handed_out,
            "deadlines_fired": self.deadlines_fired,
            "events": self.events,
            "admin_calls": self.admin_calls,
            "errors": dict(sorted(self.errors.items())),
            "internal_errors": self.internal_errors,
            "operations": {k: v for k, v in self.operations.items() if v},
        }


class CallCore:
    """The engine plus what every servicer needs around it: running a call (``call``: errors to
    statuses, the journal's group commit), the outbox (``flush``), flow control, draining."""

    def __init__(
        self,
        engine: EngineProtocol,
        hub: AssignmentHub,
        counters: Counters,
        journal: Journal | None = None,
        membership: Membership | None = None,
    ) -> None:
        self.engine = engine
        self.membership = membership
        """This node's partitions (a cluster) or None (every shop)."""
        self.hub = hub
        self.counters = counters
        self.journal = journal
        """dispatcher.durability.Journal or None: answers wait for its group commit."""
        self.draining = asyncio.Event()
        """Set when a graceful stop begins: streams end between two batches (``until_draining``)."""
        self.max_operations_in_flight = MAX_OPERATIONS_IN_FLIGHT
        """Operate/OperateStream: most operations applied and not yet answered, server-wide."""
        self.operations_in_flight = 0

    async def until_draining(self, requests: AsyncIterator[_Req]) -> AsyncIterator[_Req]:
        """The messages of a client stream until it ends or a graceful stop begins.

        A stream waiting for its next batch when the server drains is ended (OK) at
        once, instead of holding the stop for the whole grace period; a batch being
        applied is finished and answered first. The client reconnects elsewhere."""
        draining = asyncio.ensure_future(self.draining.wait())
        iterator = aiter(requests)
        try:
            while not self.draining.is_set():
                next_message = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({next_message, draining}, return_when=asyncio.FIRST_COMPLETED)
                if next_message not in done:
                    next_message.cancel()
                    return
                try:
                    message = next_message.result()
                except StopAsyncIteration:
                    return
                yield message
        finally:
            draining.cancel()

    def flush(self) -> int:
        """Drain the engine's outbox and publish it; return how many hand-outs it held.

        Publishing is one append to the hub (dispatcher/watch.py): the engine's
        tuples as they are. Its fan-out task turns them into messages, serializes
        them and distributes them after this call answers, so a call that hands
        out thousands of queued conversations costs them nothing per watcher,
        and nothing per hand-out beyond the engine's own work."""
        out = self.engine.drain_outbox()
        if out:
            self._publish(out)
        return len(out)

    def flush_assignments(self) -> list[dispatch_pb2.Assignment]:
        """``flush``, returning the hand-outs as messages for an answer that carries them
        (SetPresence, ReportConversation)."""
        out = self.engine.drain_outbox()
        if not out:
            return []
        self._publish(out)
        return [assignment_to_pb(item) for item in out]

    def _publish(self, out: list[HandOut]) -> None:
        self.counters.handed_out += len(out)
        if self.journal is not None:  # watchers see a hand-out only once it is durable
            self.journal.after_durable(lambda: self.hub.publish(out))
        else:
            self.hub.publish(out)

    async def call(self, context: Context, fn: Callable[[], _Resp]) -> _Resp:
        """Run ``fn``; map its errors to a status (aborting the call); flush the outbox."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # The caller has given up: an expired call must not change state.
            self.counters.errors["DEADLINE_EXCEEDED"] += 1
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline expired before the call was run")
        journal = self.journal
        before = journal.seq if journal is not None else 0
        details: tuple[bytes, ...] = ()
        try:
            result = fn()
        except DispatchError as exc:
            code = _status_code(exc)
            self.counters.errors[code.name] += 1
            message = str(exc)
            details = exc.details
        except JournalError as exc:
            # The journal cannot write (disk full, data dir gone): the call was refused before the
            # engine ran it, so nothing changed and nothing is acknowledged.
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
            self.counters.errors[code.name] += 1
        except Exception:
            self.counters.internal_errors += 1
            log.exception("internal_error")
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        else:
            self.flush()
            if journal is None:
                return result
            if journal.seq == before and not journal.writable:
                return result  # a read (it wrote nothing) is answered from memory while writes are refused
            if (durable := journal.barrier()) is not None:
                try:  # group commit: answer once every record so far is durable
                    await durable
                except JournalError as exc:  # nothing can be acknowledged
                    self.counters.errors["UNAVAILABLE"] += 1
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            return result
        self.flush()
        await context.abort(code, message, status_details(code, message, details))
        raise AssertionError("unreachable")  # abort raises


def _at(request: Any, max_skew_ms: int | None = None, *, now: int | None = None, field: str = "at") -> int:
    """The request's ``field`` in ms, else the server clock (``now``, read here when
    None). A time more than ``max_skew_ms`` ahead of the server clock is refused
    (INVALID_ARGUMENT, naming the bound); ``None``: no bound."""
    if now is None:
        now = now_ms()
    if request.HasField(field):
        return timestamp_ms(getattr(request, field), field, now=now, max_skew_ms=max_skew_ms)
    return now


def _max_at(now: int, max_skew_ms: int | None) -> int | None:
    """The latest ``at`` accepted at ``now`` (the wire readers' ``max_at_ms``), or None: no bound."""
    return None if max_skew_ms is None else now + max_skew_ms


class DispatchServicer(dispatch_pb2_grpc.DispatchServicer):
    """``dispatch.v1.Dispatch``: the hot path and the IM-side events."""

    def __init__(self, core: CallCore, max_batch: int = MAX_BATCH, max_clock_skew_ms: int | None = None) -> None:
        self._core = core
        self._engine = core.engine
        self._max_batch = max_batch
        self._max_skew_ms = max_clock_skew_ms
        """How far ahead of the server clock a caller's ``at`` may be (ms); None: no bound."""
        inner = getattr(self._engine, "engine", self._engine)  # under a JournaledEngine
        self._operate_wire: Callable[..., tuple[bytes, int, int] | None] | None = (
            self._engine.operate_wire if hasattr(inner, "operate_wire") else None
        )
        """The engine's reader of OperateRequest bytes (``operate_wire``), when it has one."""
        self._wire_counts_seen: list[int] = (
            list(self._engine.operation_counts()) if self._operate_wire is not None else []
        )
        """The engine's operation counts already added to the counters (replayed ones are not ours)."""

    def _dispatch(self, request: dispatch_pb2.DispatchRequest, now: int | None = None) -> dispatch_pb2.DispatchResponse:
        reason, agent_id, group_id, trace = self._engine.dispatch(
            request.shop_id,
            request.buyer_id,
            request.conversation_id,
            _at(request, self._max_skew_ms, now=now),
            request.type,
            request.source,
            request.order_state,
            request.to_account,
            request.trace,
            request.priority,
        )
        response = dispatch_pb2.DispatchResponse(
            agent_id=agent_id or "",
            reason=reason,  # type: ignore[arg-type]  # an int from the engine; mypy-protobuf wants its NewType
            group_id=group_id or "",
            trace=trace,
            conversation_id=request.conversation_id,
        )
        set_waiting_place(response, self._engine, request.shop_id)
        return response

    def _batch(self, raw: bytes) -> bytes:
        """A serialized DispatchBatchRequest in, its DispatchBatchResponse out; every
        item in order, an item's error in its own response.

        The engine reads and writes the wire format itself
        (``dispatch_batch_wire``: no protobuf objects per item); items without
        ``at`` share one reading of the clock. Callers limited to some shops,
        and bytes the engine's reader declines (``None``), take the object
        path, which parses with the protobuf runtime. So does a batch with an
        item whose ``at`` is beyond the clock bound: that item alone is refused."""
        now = now_ms()
        scope = item_scope()  # None unless the caller is limited to some shops
        if scope is None:
            answer = self._engine.dispatch_batch_wire(raw, now, self._max_batch, _max_at(now, self._max_skew_ms))
            if answer is not None:
                out, failed = answer
                if failed:  # rare: count the refused items by status
                    self._count_item_errors(dispatch_pb2.DispatchBatchResponse.FromString(out))
                return out  # CallCore.call flushes the outbox
        try:
            request = dispatch_pb2.DispatchBatchRequest.FromString(raw)
        except DecodeError:
            raise _fastpath.InvalidArgumentError(malformed_message(dispatch_pb2.DispatchBatchRequest)) from None
        return self._batch_objects(request.requests, now, scope).SerializeToString()

    def _count_item_errors(self, response: dispatch_pb2.DispatchBatchResponse) -> None:
        errors = self._core.counters.errors
        for item in response.responses:
            if item.HasField("error"):
                errors[_CODE_BY_NUMBER.get(item.error.code, grpc.StatusCode.UNKNOWN).name] += 1

    def _batch_objects(self, requests: Any, now: int, scope: Any) -> dispatch_pb2.DispatchBatchResponse:
        """The object path of ``_batch``: protobuf messages in and out, scope checked per item."""
        check_batch_size(len(requests), self._max_batch)
        out = dispatch_pb2.DispatchBatchResponse()
        add = out.responses.add
        dispatch = self._engine.dispatch
        counters = self._core.counters
        max_skew_ms = self._max_skew_ms
        for request in requests:
            conversation_id = request.conversation_id
            try:
                if scope is not None and request.shop_id not in scope.shops:
                    scope.check_shop(request.shop_id)
                reason, agent_id, group_id, trace = dispatch(
                    request.shop_id,
                    request.buyer_id,
                    conversation_id,
                    timestamp_ms(request.at, "at", now=now, max_skew_ms=max_skew_ms) if request.HasField("at") else now,
                    request.type,
                    request.source,
                    request.order_state,
                    request.to_account,
                    request.trace,
                    request.priority,
                )
            except DispatchError as exc:
                code = _status_code(exc)
                counters.errors[code.name] += 1
                add(
                    conversation_id=conversation_id,
                    error=status_pb2.Status(
                        code=code.value[0],
                        message=str(exc),
                        details=[any_pb2.Any.FromString(d) for d in exc.details],
                    ),
                )
                continue
            response = add(
                agent_id=agent_id or "", reason=reason, group_id=group_id or "", conversation_id=conversation_id
            )
            if trace:
                response.trace.extend(trace)
            set_waiting_place(response, self._engine, request.shop_id)
        return out

    async def Dispatch(self, request: bytes, context: Context) -> bytes:  # type: ignore[override]
        # Registered without (de)serializers (add_dispatch_servicer): raw bytes both ways.
        return await self._core.call(context, lambda: self._unary(request))

    def _unary(self, raw: bytes) -> bytes:
        """A serialized DispatchRequest in, its DispatchResponse out.

        The engine reads and writes ordinary requests itself (``dispatch_wire``);
        the rest (``None``: another conversation type, a trace, anything it would
        refuse, bytes its reader declines), and callers limited to some shops,
        take the object path, which parses with the protobuf runtime."""
        now = now_ms()
        scope = item_scope()  # None unless the caller is limited to some shops
        if scope is None:
            answer = self._engine.dispatch_wire(raw, now, _max_at(now, self._max_skew_ms))
            if answer is not None:
                return answer  # CallCore.call flushes the outbox
        try:
            request = dispatch_pb2.DispatchRequest.FromString(raw)
        except DecodeError:
            raise _fastpath.InvalidArgumentError(malformed_message(dispatch_pb2.DispatchRequest)) from None
        if scope is not None and request.shop_id not in scope.shops:  # type: ignore[operator]
            scope.check_shop(request.shop_id)
        return self._dispatch(request, now).SerializeToString()

    async def DispatchBatch(self, request: bytes, context: Context) -> bytes:  # type: ignore[override]
        # Registered without (de)serializers (add_dispatch_servicer): raw bytes both ways.
        return await self._core.call(context, lambda: self._batch(request))

    async def DispatchStream(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[bytes],
        context: Context,
    ) -> AsyncIterator[bytes]:
        async for batch in self._core.until_draining(request_iterator):
            yield await self._core.call(context, functools.partial(self._batch, batch))

    # ------------------------------------------------------------ Operate / OperateStream (issue 13)

    def _operate(self, raw: bytes, taken: list[int]) -> bytes:
        """A serialized OperateRequest in, its OperateResponse out: every operation in order,
        each with its own result or error (dispatcher/operations.py).

        Flow control: the operations of this batch that would take the server past
        ``max_operations_in_flight`` (applied, not yet durable and answered) are not applied
        and answer RESOURCE_EXHAUSTED; the rest run as usual."""
        now = now_ms()
        core = self._core
        scope = item_scope()  # None unless the caller is limited to some shops
        room = max(0, core.max_operations_in_flight - core.operations_in_flight)
        if scope is None and room >= self._max_batch and self._operate_wire is not None:
            # The engine reads the batch and writes the answer itself: no object per operation.
            answer = self._operate_wire(raw, now, self._max_batch, _max_at(now, self._max_skew_ms))
            if answer is not None:
                out, count, failed = answer
                self._count_wire_operations()
                if failed:  # rare: count the refused operations by status
                    self._count_operation_errors(dispatch_pb2.OperateResponse.FromString(out))
                core.operations_in_flight += count
                taken.append(count)
                return out  # CallCore.call flushes the outbox (the watchers)
        try:
            request = dispatch_pb2.OperateRequest.FromString(raw)
        except DecodeError:
            raise _fastpath.InvalidArgumentError(malformed_message(dispatch_pb2.OperateRequest)) from None
        operations = request.operations
        check_operations_size(len(operations), self._max_batch)
        check_shop = None
        if scope is not None:
            shops = scope.shops

            def check_shop(shop_id: str) -> None:
                if shops is not None and shop_id not in shops:
                    scope.check_shop(shop_id)

        counts = core.counters.operations
        before = counts["dispatch"]
        total = sum(counts.values())
        ctx = OperationContext(
            self._engine,
            core.flush_assignments,
            self._max_skew_ms,
            check_shop,
            counts,
            core.counters.errors,
        )
        response = apply_operations(ctx, operations, now, limit=room)
        events = sum(counts.values()) - total - (counts["dispatch"] - before)
        core.counters.events += events
        applied = min(len(operations), room)
        core.operations_in_flight += applied
        taken.append(applied)
        return response.SerializeToString()

    def _count_wire_operations(self) -> None:
        """Add what the engine's reader applied since the last batch to the per-kind counters
        (the engine counts them in C, ``operation_counts``: nothing per operation here)."""
        now = self._engine.operation_counts()
        seen = self._wire_counts_seen
        counts = self._core.counters.operations
        for kind in range(1, len(now)):
            delta = now[kind] - seen[kind]
            if delta:
                counts[OPERATION_KINDS[kind - 1]] += delta
                if kind != 1:  # events: everything but dispatch, as their unary calls count
                    self._core.counters.events += delta
        self._wire_counts_seen = now

    def _count_operation_errors(self, response: dispatch_pb2.OperateResponse) -> None:
        errors = self._core.counters.errors
        for result in response.results:
            if result.HasField("error"):
                errors[_CODE_BY_NUMBER.get(result.error.code, grpc.StatusCode.UNKNOWN).name] += 1

    async def _operate_call(self, context: Context, raw: bytes) -> bytes:
        core = self._core
        taken: list[int] = []
        try:
            return await core.call(context, lambda: self._operate(raw, taken))
        finally:
            core.operations_in_flight -= sum(taken)  # answered (or failed): no longer in flight

    async def Operate(self, request: bytes, context: Context) -> bytes:  # type: ignore[override]
        # Registered without (de)serializers (add_dispatch_servicer): raw bytes both ways.
        return await self._operate_call(context, request)

    async def OperateStream(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[bytes],
        context: Context,
    ) -> AsyncIterator[bytes]:
        # One batch at a time per stream: the next is read only once this one is durable and
        # answered, so a stream never has more than one batch (max_batch operations) in flight.
        async for batch in self._core.until_draining(request_iterator):
            yield await self._operate_call(context, batch)

    async def SetPresence(
        self, request: dispatch_pb2.SetPresenceRequest, context: Context
    ) -> dispatch_pb2.SetPresenceResponse:
        def run() -> dispatch_pb2.SetPresenceResponse:
            self._core.counters.events += 1
            self._engine.set_presence(
                request.shop_id, request.agent_id, request.presence, request.client, _at(request, self._max_skew_ms)
            )
            return dispatch_pb2.SetPresenceResponse(assignments=self._core.flush_assignments())

        return await self._core.call(context, run)

    async def ReportConversation(
        self, request: dispatch_pb2.ReportConversationRequest, context: Context
    ) -> dispatch_pb2.ReportConversationResponse:
        def run() -> dispatch_pb2.ReportConversationResponse:
            self._core.counters.events += 1
            agent_id = self._engine.conversation_event(
                request.shop_id,
                request.conversation_id,
                request.event,
                _at(request, self._max_skew_ms),
                buyer_id=request.buyer_id,
                agent_id=request.agent_id,
                to_agent_id=request.to_agent_id,
                to_group_id=request.to_group_id,
            )
            return dispatch_pb2.ReportConversationResponse(
                agent_id=agent_id or "", assignments=self._core.flush_assignments()
            )

        return await self._core.call(context, run)

    async def ClaimFromPool(
        self, request: dispatch_pb2.ClaimFromPoolRequest, context: Context
    ) -> dispatch_pb2.ClaimFromPoolResponse:
        def run() -> dispatch_pb2.ClaimFromPoolResponse:
            self._core.counters.events += 1
            conversation_id, buyer_id = self._engine.claim_from_pool(
                request.shop_id, request.agent_id, _at(request, self._max_skew_ms), request.conversation_id
            )
            return dispatch_pb2.ClaimFromPoolResponse(
                conversation_id=conversation_id, buyer_id=buyer_id, agent_id=request.agent_id
            )

        return await self._core.call(context, run)

    async def WatchAssignments(  # type: ignore[override]  # context.write of bytes, not a generator
        self, request: dispatch_pb2.WatchAssignmentsRequest, context: Context
    ) -> None:
        # Registered with an identity response serializer (add_dispatch_servicer):
        # the hub writes each hand-out's bytes, serialized once for every watcher.
        await self._watch(request.shop_ids, context, batched=False)

    async def WatchAssignmentBatches(  # type: ignore[override]  # context.write of bytes, not a generator
        self, request: dispatch_pb2.WatchAssignmentBatchesRequest, context: Context
    ) -> None:
        # The same, with every write carrying the hand-outs queued by then, as
        # the bytes of a dispatch.v1.WatchAssignmentBatchesResponse.
        await self._watch(request.shop_ids, context, batched=True)

    async def _watch(self, shop_ids: Iterable[str], context: Context, *, batched: bool) -> None:
        shops = list(shop_ids)
        membership = self._core.membership
        for i, shop_id in enumerate(shops):
            try:
                _fastpath.model.check_id(shop_id, f"shop_ids[{i}]")
                if membership is not None:
                    membership.check(shop_id)  # each node streams its own shops' hand-outs
            except DispatchError as exc:
                code = _status_code(exc)
                await context.abort(code, str(exc), status_details(code, str(exc), exc.details))
        hub = self._core.hub
        sub = hub.subscribe(shops)
        try:
            # The headers tell the caller that the subscription is registered:
            # every hand-out after they arrive is delivered.
            await context.send_initial_metadata((("dispatch-watch", "subscribed"),))
            await hub.serve(sub, context, batched=batched)  # ends with OK at shutdown, RESOURCE_EXHAUSTED if behind
        finally:
            if sub.overflowed:
                self._core.counters.errors["RESOURCE_EXHAUSTED"] += 1
            hub.unsubscribe(sub)


class ClusterServicer(cluster_pb2_grpc.ClusterServicer):
    """``dispatch.v1.Cluster``: the map this node serves by (empty when it is not in a cluster)."""

    def __init__(self, membership: Membership | None) -> None:
        self._answer = (
            membership.map.to_pb(membership.node.name)
            if membership is not None
            else cluster_pb2.GetClusterMapResponse()
        )

    async def GetClusterMap(
        self, request: cluster_pb2.GetClusterMapRequest, context: Context
    ) -> cluster_pb2.GetClusterMapResponse:
        return self._answer


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """``dispatch.v1.Admin``: configuration and inspection. Mutations are logged, one line each."""

    def __init__(self, core: CallCore) -> None:
        self._core = core
        self._engine = core.engine

    async def _mutate(self, context: Context, event: str, fields: dict[str, str], fn: Callable[[], _Resp]) -> _Resp:
        self._core.counters.admin_calls += 1
        result = await self._core.call(context, fn)
        log.info(event, **fields)
        return result

    async def PutShop(self, request: admin_pb2.PutShopRequest, context: Context) -> admin_pb2.PutShopResponse:
        def run() -> admin_pb2.PutShopResponse:
            if not request.HasField("shop"):
                raise _fastpath.InvalidArgumentError("shop is required")
            if self._core.membership is not None:
                self._core.membership.check(request.shop.shop_id)  # a new shop too: WRONG_NODE
            self._engine.put_shop(shop_from_pb(request.shop))
            return admin_pb2.PutShopResponse(shop=shop_config_to_pb(self._engine.shop_config(request.shop.shop_id)))

        return await self._mutate(context, "shop.put", {"shop_id": request.shop.shop_id}, run)

    async def DeleteShop(self, request: admin_pb2.DeleteShopRequest, context: Context) -> admin_pb2.DeleteShopResponse:
        def run() -> admin_pb2.DeleteShopResponse:
            self._engine.delete_shop(request.shop_id)
            return admin_pb2.DeleteShopResponse()

        return await self._mutate(context, "shop.deleted", {"shop_id": request.shop_id}, run)

    async def PutAgent(self, request: admin_pb2.PutAgentRequest, context: Context) -> admin_pb2.PutAgentResponse:
        def run() -> admin_pb2.PutAgentResponse:
            if not request.HasField("agent"):
                raise _fastpath.InvalidArgumentError("agent is required")
            self._engine.put_agent(agent_from_pb(request.agent))
            return admin_pb2.PutAgentResponse()

        fields = {"shop_id": request.agent.shop_id, "agent_id": request.agent.agent_id}
        return await self._mutate(context, "agent.put", fields, run)

    async def DeleteAgent(
        self, request: admin_pb2.DeleteAgentRequest, context: Context
    ) -> admin_pb2.DeleteAgentResponse:
        def run() -> admin_pb2.DeleteAgentResponse:
            self._engine.delete_agent(request.shop_id, request.agent_id)
            return admin_pb2.DeleteAgentResponse()

        fields = {"shop_id": request.shop_id, "agent_id": request.agent_id}
        return await self._mutate(context, "agent.deleted", fields, run)

    async def PutGroup(self, request: admin_pb2.PutGroupRequest, context: Context) -> admin_pb2.PutGroupResponse:
        def run() -> admin_pb2.PutGroupResponse:
            if not request.HasField("group"):
                raise _fastpath.InvalidArgumentError("group is required")
            self._engine.put_group(group_from_pb(request.group))
            return admin_pb2.PutGroupResponse()

        fields = {"shop_id": request.group.shop_id, "group_id": request.group.group_id}
        return await self._mutate(context, "group.put", fields, run)

    async def DeleteGroup(
        self, request: admin_pb2.DeleteGroupRequest, context: Context
    ) -> admin_pb2.DeleteGroupResponse:
        def run() -> admin_pb2.DeleteGroupResponse:
            self._engine.delete_group(request.shop_id, request.group_id)
            return admin_pb2.DeleteGroupResponse()

        fields = {"shop_id": request.shop_id, "group_id": request.group_id}
        return await self._mutate(context, "group.deleted", fields, run)

    async def SetExclusiveAgent(
        self, request: admin_pb2.SetExclusiveAgentRequest, context: Context
    ) -> admin_pb2.SetExclusiveAgentResponse:
        def run() -> admin_pb2.SetExclusiveAgentResponse:
            self._engine.set_exclusive_agent(request.shop_id, request.buyer_id, request.agent_id)
            return admin_pb2.SetExclusiveAgentResponse()

        fields = {"shop_id": request.shop_id, "buyer_id": request.buyer_id, "agent_id": request.agent_id}
        return await self._mutate(context, "exclusive.set", fields, run)

    async def DeleteExclusiveAgent(
        self, request: admin_pb2.DeleteExclusiveAgentRequest, context: Context
    ) -> admin_pb2.DeleteExclusiveAgentResponse:
        def run() -> admin_pb2.DeleteExclusiveAgentResponse:
            self._engine.delete_exclusive_agent(request.shop_id, request.buyer_id)
            return admin_pb2.DeleteExclusiveAgentResponse()

        fields = {"shop_id": request.shop_id, "buyer_id": request.buyer_id}
        return await self._mutate(context, "exclusive.deleted", fields, run)

    async def GetShopState(self, request: admin_pb2.GetShopStateRequest, context: Context) -> admin_pb2.ShopState:
        # Pages of agents for big shops (GetShopStateRequest.page_size); small shops whole, as before.
        return await self._core.call(
            context,
            lambda: shop_state_page(
                self._engine.shop_state(request.shop_id),
                self._engine.shop_config(request.shop_id),
                request.page_size,
                request.page_token,
            ),
        )

    async def ListShops(self, request: admin_pb2.ListShopsRequest, context: Context) -> admin_pb2.ListShopsResponse:
        return await self._core.call(context, lambda: admin_pb2.ListShopsResponse(shop_ids=self._engine.shop_ids()))

    async def GetConversation(
        self, request: admin_pb2.GetConversationRequest, context: Context
    ) -> admin_pb2.GetConversationResponse:
        def run() -> admin_pb2.GetConversationResponse:
            if not self._engine.has_shop(request.shop_id):
                _fastpath.model.check_id(request.shop_id, "shop_id")
                raise _fastpath.NotFoundError(f"shop {request.shop_id!r} not found")
            _fastpath.model.check_id(request.conversation_id, "conversation_id")
            conv = self._engine.conversation(request.shop_id, request.conversation_id)
            if conv is None:
                raise _fastpath.NotFoundError(
                    f"conversation {request.conversation_id!r} not found in shop {request.shop_id!r}"
                )
            return admin_pb2.GetConversationResponse(
                conversation_id=request.conversation_id,
                buyer_id=conv["buyer_id"],
                agent_id=conv["agent_id"] or "",
                wait=conv["wait"],
                unread=conv["unread"],
                forwarded=conv["forwarded"],
            )

        return await self._core.call(context, run)

    async def GetBuyer(self, request: admin_pb2.GetBuyerRequest, context: Context) -> admin_pb2.GetBuyerResponse:
        def run() -> admin_pb2.GetBuyerResponse:
            _fastpath.model.check_id(request.buyer_id, "buyer_id")
            contact = self._engine.recent_contact(request.shop_id, request.buyer_id)
            response = admin_pb2.GetBuyerResponse(
                exclusive_agent=self._engine.exclusive_agent(request.shop_id, request.buyer_id) or ""
            )
            if contact is not None:
                # The contact holds while the shop's clock is less than the window past it.
                window = self._engine.shop_config(request.shop_id).affinity_window_ms
                response.recent_contact = contact[0]
                response.recent_contact_expires_at.CopyFrom(timestamp(min(contact[1] + window, MAX_TIME_MS)))
            return response

        return await self._core.call(context, run)


class _Registration:
    """Stands in for a server to catch the method handlers a generated ``add_*_to_server`` builds."""

    handlers: dict[str, Handler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.service, self.handlers = service, dict(handlers)


RAW_BYTES_METHODS: Final = ("Dispatch", "DispatchBatch", "DispatchStream", "Operate", "OperateStream")
"""Methods registered without protobuf (de)serializers: the engine reads and
writes their messages itself (``dispatch_wire``, ``dispatch_batch_wire``).
WatchAssignments and WatchAssignmentBatches decode their requests with
protobuf but write bytes: each hand-out is serialized once, by the hub, for
all its watchers."""


def add_dispatch_servicer(servicer: DispatchServicer, server: Any) -> None:
    """The generated registration of ``dispatch.v1.Dispatch``, with raw bytes for RAW_BYTES_METHODS."""
    caught = _Registration()
    dispatch_pb2_grpc.add_DispatchServicer_to_server(servicer, cast(Any, caught))  # it only needs the two add_* methods
    handlers = caught.handlers
    handlers["Dispatch"] = grpc.unary_unary_rpc_method_handler(servicer.Dispatch)
    handlers["DispatchBatch"] = grpc.unary_unary_rpc_method_handler(servicer.DispatchBatch)
    handlers["DispatchStream"] = grpc.stream_stream_rpc_method_handler(servicer.DispatchStream)
    handlers["Operate"] = grpc.unary_unary_rpc_method_handler(servicer.Operate)
    handlers["OperateStream"] = grpc.stream_stream_rpc_method_handler(servicer.OperateStream)
    handlers["WatchAssignments"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchAssignments, request_deserializer=dispatch_pb2.WatchAssignmentsRequest.FromString
    )  # no response serializer: the hub writes serialized dispatch.v1.Assignment bytes
    handlers["WatchAssignmentBatches"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchAssignmentBatches,
        request_deserializer=dispatch_pb2.WatchAssignmentBatchesRequest.FromString,
    )  # likewise: dispatch.v1.WatchAssignmentBatchesResponse bytes
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(caught.service, handlers),))
    server.add_registered_method_handlers(caught.service, handlers)


class DispatchServer:
    """One grpc.aio server with both services over one engine.

    ``await start()`` binds and returns the port (0 picks a free one);
    ``await stop(grace)`` stops accepting, ends watch streams, lets in-flight
    calls finish for up to ``grace`` seconds, and logs the counters.
    ``max_clock_skew`` (seconds; ``None`` or 0: no bound) is how far a caller's
    ``at`` may be ahead of the server clock (dispatcher/docs/SECURITY.md).
    """

    def __init__(
        self,
        engine: Any | None = None,
        *,
        seed: int = 0,
        max_batch: int = MAX_BATCH,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        watch_backlog: int = WATCH_BACKLOG,
        reflection: bool = True,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        auth: AuthPolicy | None = None,
        no_auth: bool = False,
        credentials: grpc.ServerCredentials | None = None,
        max_concurrent_rpcs: int | None = MAX_CONCURRENT_RPCS,
        max_concurrent_streams: int | None = MAX_CONCURRENT_STREAMS,
        journal: Any | None = None,
        max_clock_skew: float | None = MAX_CLOCK_SKEW,
        tick_interval_ms: int | None = TICK_INTERVAL_MS,
        membership: Membership | None = None,
    ) -> None:
        # Security options (see dispatcher/security.py): callers are
        # authenticated by ``auth`` unless ``no_auth`` is asked for explicitly;
        # ``credentials`` (TLS/mTLS) or plaintext when None.
        if (auth is None) == (not no_auth):
            raise ValueError("pass auth=<AuthPolicy> or no_auth=True (and not both)")
        self.auth = auth
        self.credentials = credentials
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self._max_concurrent_streams = max_concurrent_streams  # a limit of their own (security.py)
        self.engine = engine if engine is not None else _fastpath.Engine(seed)
        # A cluster node (dispatcher/cluster.py) serves only its partitions' shops: an unknown
        # shop that another node owns is WRONG_NODE (the engine asks on its NOT_FOUND path,
        # so the shops it serves pay nothing), and PutShop and watches check explicitly.
        self.membership = membership
        if membership is not None:
            self.engine.foreign_shop = membership.error
        self.counters = Counters()
        # The engine counts decisions; those it made before this server (journal replay) are not ours.
        self._decisions_base = self.engine.decision_counts()
        self._retries_base: int = int(self.engine.retry_count())
        self.hub = AssignmentHub(watch_backlog)
        self._core = CallCore(self.engine, self.hub, self.counters, journal, membership)
        self._max_batch = max_batch
        # A caller's ``at`` may be this far ahead of the server clock; None or 0: no bound.
        if max_clock_skew is not None and max_clock_skew < 0:
            raise ValueError(f"max_clock_skew={max_clock_skew} is negative (0 or None: no bound)")
        self.max_clock_skew_ms = round(max_clock_skew * 1000) if max_clock_skew else None
        # §10: the server's clock moves the engine's time every tick_interval_ms (None or 0: only
        # the callers' ``at`` moves it, for replays and simulations of recorded times).
        if tick_interval_ms is not None and tick_interval_ms < 0:
            raise ValueError(f"tick_interval_ms={tick_interval_ms} is negative (0 or None: no ticking)")
        self.tick_interval_ms = tick_interval_ms or None
        self._ticker: asyncio.Task[None] | None = None
        self._max_message_bytes = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None
        # Health, reflection and metrics (dispatcher/observability.py); metrics_port None: no endpoint.
        self.ecosystem = Ecosystem(self, reflection=reflection, metrics_port=metrics_port, metrics_host=metrics_host)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.engine.drain_outbox()  # hand-outs made while bootstrapping have no watcher
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
                # Fail loudly when the port is taken instead of sharing it.
                ("grpc.so_reuseport", 0),
            ]
        )
        # Every method handler is wrapped once, here, not by grpc.aio interceptors
        # (their per-call cost was more than the servicer's). The security guard is
        # outermost: malformed, unauthenticated, denied and over-limit calls end
        # there, untimed. It also bounds concurrent unary calls and, separately,
        # open streams (grpc.aio's maximum_concurrent_rpcs miscounts rejected
        # calls in grpcio 1.76, and would let streams lock out the calls).
        guard = SecurityGuard(self.auth, self.counters.errors, self._max_concurrent_rpcs, self._max_concurrent_streams)
        timing = self.ecosystem.wrap
        registering = GuardedServer(server, lambda method, handler: guard.wrap(method, timing(method, handler)))
        add_dispatch_servicer(DispatchServicer(self._core, self._max_batch, self.max_clock_skew_ms), registering)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self._core), cast(Any, registering))
        cluster_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(self.membership), cast(Any, registering))
        await self.ecosystem.attach(registering)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.credentials is not None:
            bound = server.add_secure_port(address, self.credentials)
        else:
            bound = server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self.port = bound
        if self.tick_interval_ms:
            self._ticker = asyncio.ensure_future(self._tick_loop(self.tick_interval_ms))
        await self.ecosystem.started()
        return bound

    async def stop(self, grace: float | None = 10.0) -> None:
        self._core.draining.set()  # client streams end between batches
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        await self.ecosystem.draining()
        self.hub.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.ecosystem.stopped()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def tick(self, now: int | None = None) -> int:
        """Move the engine's time to ``now`` (the server clock when None): the deadlines of
        §10/§11 due by then fire, journaled as one ``tick`` record when any did, and their
        hand-outs go to the watchers. How many fired; 0 while the journal cannot write."""
        try:
            fired = int(self.engine.tick(now_ms() if now is None else now))
        except (DispatchError, JournalError):
            return 0
        if fired:
            self.counters.deadlines_fired += fired
            self._core.flush()
        return fired

    async def _tick_loop(self, interval_ms: int) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                self.tick()
            except Exception:
                log.exception("tick.failed")

    def retries(self) -> int:
        """Dispatches this server answered as §12 retries (the engine counts them; not journaled)."""
        return int(self.engine.retry_count()) - self._retries_base

    def decisions(self) -> list[list[int]]:
        """Decisions answered by this server, ``[reason][strategy]`` (strategy 0: none picked the agent)."""
        now = self.engine.decision_counts()
        return [
            [n - b for n, b in zip(row, base, strict=False)]
            for row, base in zip(now, self._decisions_base, strict=False)
        ]

    def run_stats(self, interval: float) -> Awaitable[None]:
        """A task body that logs the counters every ``interval`` seconds when they change."""

        async def loop() -> None:
            last: dict[str, Any] | None = None
            while True:
                await asyncio.sleep(interval)
                snap = self.counters.snapshot(self.decisions())
                if snap != last:
                    log.info("stats", **snap)
                    last = snap

        return loop()
