"""The clients. Both wrap one channel and the two generated stubs.

The async client sends ``dispatch``, ``set_presence``, ``report_conversation`` and
``claim_from_pool`` in automatic batches on one OperateStream (``_batching.AutoBatcher``);
the blocking client has explicit batches (``pipeline()``). See clients/python/README.md.

Every method raises a ``DispatchError`` (``_errors``) for a failed call, never grpc's raw
error; enum arguments take numbers or names, full or short (``_enums``).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar, cast

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from . import pb
from ._batching import MAX_BATCH, AutoBatcher, BatchStats, OperationFuture
from ._enums import EnumArg, coerce_fields, enum_number
from ._errors import DispatchError, error_for, error_from_rpc, error_of, raises_dispatch_errors
from ._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc

__all__ = [
    "AsyncDispatchClient",
    "AsyncWatch",
    "DispatchClient",
    "EnumArg",
    "Pipeline",
    "Watch",
    "dispatch_request",
    "pb",
    "to_timestamp",
]

Time = _dt.datetime | int | timestamp_pb2.Timestamp | None
"""A point in time: an aware datetime, integer milliseconds since the epoch, a Timestamp, or None (server clock)."""

_M = TypeVar("_M", bound=Message)

# Generous but bounded: a full 4096-item batch answer fits easily.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]


_CONVERSATION_TYPE: Final = pb.ConversationType.DESCRIPTOR
_ORDER_STATE: Final = pb.OrderState.DESCRIPTOR
_PRESENCE: Final = pb.Presence.DESCRIPTOR
_CLIENT: Final = pb.Client.DESCRIPTOR
_EVENT: Final = pb.ConversationEvent.DESCRIPTOR


def to_timestamp(at: Time) -> timestamp_pb2.Timestamp | None:
    """Convert ``at`` for a request field; None stays None (the server uses its clock)."""
    if at is None or isinstance(at, timestamp_pb2.Timestamp):
        return at
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            raise ValueError("use an aware datetime (e.g. tzinfo=datetime.timezone.utc)")
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(at)
        return ts
    if isinstance(at, int) and not isinstance(at, bool):
        seconds, millis = divmod(at, 1000)
        return timestamp_pb2.Timestamp(seconds=seconds, nanos=millis * 1_000_000)
    raise TypeError(f"cannot use {at!r} as a time")


def _fields(cls: type[Message], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Convert datetimes/timedeltas to protobuf types and enum names to numbers; drop None (unset)."""
    out: dict[str, Any] = {}
    for key, value in coerce_fields(cast(Descriptor, cls.DESCRIPTOR), kwargs).items():
        if value is None:
            continue
        if isinstance(value, _dt.timedelta):
            d = duration_pb2.Duration()
            d.FromTimedelta(value)
            value = d
        elif isinstance(value, _dt.datetime) or (key in ("at", "created_at") and isinstance(value, int)):
            value = to_timestamp(value)
        out[key] = value
    return out


def _build(cls: type[_M], message: _M | None, kwargs: dict[str, Any]) -> _M:
    if message is not None:
        if kwargs:
            raise TypeError("pass either a message or keyword fields, not both")
        return message
    return cls(**_fields(cls, kwargs))


def dispatch_request(
    shop_id: str,
    buyer_id: str = "",
    conversation_id: str = "",
    *,
    type: EnumArg = 0,
    source: str = "",
    order_state: EnumArg = 0,
    to_account: str = "",
    at: Time = None,
    trace: bool = False,
    priority: int = 0,
) -> dispatch_pb2.DispatchRequest:
    """A DispatchRequest; enums take their numbers (``pb.OrderState.ORDER_STATE_UNPAID``) or names,
    full or short (``"ORDER_STATE_UNPAID"``, ``"UNPAID"``).
    ``priority`` is 0..9 (higher is handed out first if the conversation has to wait); a waiting
    answer carries ``position`` and, once known, ``estimated_wait``. Retrying a dispatch of an
    open conversation with the same buyer is safe: it answers what is current and changes nothing."""
    return dispatch_pb2.DispatchRequest(
        shop_id=shop_id,
        buyer_id=buyer_id,
        conversation_id=conversation_id,
        type=enum_number(_CONVERSATION_TYPE, type, "type"),  # type: ignore[arg-type]
        source=source,
        order_state=enum_number(_ORDER_STATE, order_state, "order_state"),  # type: ignore[arg-type]
        to_account=to_account,
        at=to_timestamp(at),
        trace=trace,
        priority=priority,
    )


def _claim(shop_id: str, agent_id: str, conversation_id: str, at: Time) -> dispatch_pb2.ClaimFromPoolRequest:
    return dispatch_pb2.ClaimFromPoolRequest(
        shop_id=shop_id, agent_id=agent_id, conversation_id=conversation_id, at=to_timestamp(at)
    )


def _presence(
    shop_id: str, agent_id: str, presence: EnumArg, client: EnumArg, at: Time
) -> dispatch_pb2.SetPresenceRequest:
    return dispatch_pb2.SetPresenceRequest(
        shop_id=shop_id,
        agent_id=agent_id,
        # an int; mypy-protobuf wants the enum's NewType
        presence=enum_number(_PRESENCE, presence, "presence"),  # type: ignore[arg-type]
        client=enum_number(_CLIENT, client, "client"),  # type: ignore[arg-type]
        at=to_timestamp(at),
    )


def _report(
    shop_id: str,
    conversation_id: str,
    event: EnumArg,
    buyer_id: str,
    agent_id: str,
    to_agent_id: str,
    to_group_id: str,
    at: Time,
) -> dispatch_pb2.ReportConversationRequest:
    return dispatch_pb2.ReportConversationRequest(
        shop_id=shop_id,
        conversation_id=conversation_id,
        event=enum_number(_EVENT, event, "event"),  # type: ignore[arg-type]
        buyer_id=buyer_id,
        agent_id=agent_id,
        to_agent_id=to_agent_id,
        to_group_id=to_group_id,
        at=to_timestamp(at),
    )


class AsyncWatch:
    """An open watch stream: ``async for assignment in watch``.

    It reads ``WatchAssignmentBatches`` (the server groups the hand-outs that
    are ready into one message) and gives them one at a time, in order.
    ``await watch.ready()`` returns once the server has registered the
    subscription (its response headers arrived): every hand-out after that is
    delivered. ``async with`` does that on entry and cancels on exit.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._ready: collections.deque[dispatch_pb2.Assignment] = collections.deque()

    async def ready(self) -> AsyncWatch:
        await self._call.initial_metadata()
        return self

    async def next(self) -> dispatch_pb2.Assignment:
        """The next assignment; StopAsyncIteration when the server ends the stream."""
        while not self._ready:
            try:
                batch = await self._call.read()
            except grpc.RpcError as exc:
                raise error_from_rpc(exc) from None
            if batch is cast(Any, grpc.aio).EOF:  # the stubs lack grpc.aio.EOF
                raise StopAsyncIteration
            self._ready.extend(batch.assignments)
        return self._ready.popleft()

    def __aiter__(self) -> AsyncIterator[dispatch_pb2.Assignment]:
        return self

    async def __anext__(self) -> dispatch_pb2.Assignment:
        return await self.next()

    def cancel(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> AsyncWatch:
        return await self.ready()

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class Watch:
    """The blocking twin of AsyncWatch: ``for assignment in watch``."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._ready: collections.deque[dispatch_pb2.Assignment] = collections.deque()

    def ready(self) -> Watch:
        self._call.initial_metadata()
        return self

    def __iter__(self) -> Iterator[dispatch_pb2.Assignment]:
        return self

    def __next__(self) -> dispatch_pb2.Assignment:
        while not self._ready:
            try:
                batch = next(self._call)
            except grpc.RpcError as exc:
                raise error_from_rpc(exc) from None
            self._ready.extend(batch.assignments)
        return self._ready.popleft()

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> Watch:
        return self.ready()

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class AsyncDispatchClient:
    """The dispatch.v1 API over a grpc.aio channel. Use ``async with`` or ``await close()``.

    **Automatic batching** (on by default; ``auto_batch=False`` for one unary RPC per call):
    ``dispatch``, ``set_presence``, ``report_conversation`` and ``claim_from_pool`` go on one
    shared ``OperateStream``. The calls made in the same loop iteration are sent as one
    batch (``max_batch_size`` at most, 1..4096) as soon as the loop is idle, or after
    ``max_batch_delay`` seconds when that is set; a lone call adds no waiting. Each call
    returns its own response or raises its own error, with the code and details of its
    unary form (an ``OperationError``, a ``grpc.aio.AioRpcError``). The calls of one client
    are applied in the order they were made. At most ``max_batches_in_flight`` batches are
    unanswered at once; later calls wait in the next (growing) batch. If the stream breaks,
    the calls in flight raise UNAVAILABLE (applied or not: see the README for what is safe
    to retry) and the next call opens a new stream. ``timeout`` bounds each batch's answer
    (DEADLINE_EXCEEDED; the stream is then reset). ``batch_stats`` counts what was sent.
    """

    def __init__(
        self,
        target: str,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = 30.0,
        auto_batch: bool = True,
        max_batch_size: int = 1024,
        max_batch_delay: float = 0.0,
        max_batches_in_flight: int = 8,
    ) -> None:
        self.channel = channel if channel is not None else grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.dispatch_stub = dispatch_pb2_grpc.DispatchStub(self.channel)
        self.admin_stub = admin_pb2_grpc.AdminStub(self.channel)
        self._batcher: AutoBatcher | None = None
        self.timeout = timeout
        if auto_batch:
            self._batcher = AutoBatcher(
                self.channel,
                max_batch_size=max_batch_size,
                max_delay=max_batch_delay,
                max_batches_in_flight=max_batches_in_flight,
                timeout=timeout,
                unimplemented=self._unary,
            )

    @property
    def timeout(self) -> float | None:
        """Seconds each call (each batch, when batching) may take; None: no deadline."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value
        if self._batcher is not None:
            self._batcher.timeout = value

    @property
    def auto_batch(self) -> bool:
        """Whether the four hot-path calls go in automatic batches."""
        return self._batcher is not None

    @property
    def batch_stats(self) -> BatchStats | None:
        """Batches, operations and streams sent by automatic batching (None when it is off)."""
        return self._batcher.stats if self._batcher is not None else None

    @property
    def batcher(self) -> AutoBatcher | None:
        """The automatic batcher (None when off): ``reset()`` breaks its stream on purpose."""
        return self._batcher

    def _unary(self, kind: str, payload: bytes) -> asyncio.Future[Any]:
        """One call as its unary RPC (for a server without OperateStream)."""
        stub = self.dispatch_stub
        call: Any
        if kind == "dispatch":
            call = stub.Dispatch(dispatch_pb2.DispatchRequest.FromString(payload), timeout=self.timeout)
        elif kind == "set_presence":
            call = stub.SetPresence(dispatch_pb2.SetPresenceRequest.FromString(payload), timeout=self.timeout)
        elif kind == "report_conversation":
            call = stub.ReportConversation(
                dispatch_pb2.ReportConversationRequest.FromString(payload), timeout=self.timeout
            )
        else:
            call = stub.ClaimFromPool(dispatch_pb2.ClaimFromPoolRequest.FromString(payload), timeout=self.timeout)
        future: asyncio.Future[Any] = asyncio.ensure_future(call)
        return future

    async def __aenter__(self) -> AsyncDispatchClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel. Calls not answered yet raise CANCELLED."""
        if self._batcher is not None:
            await self._batcher.aclose()
        await self.channel.close()

    @raises_dispatch_errors
    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected."""
        import asyncio

        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    # -------------------------------------------------------------- Dispatch

    async def dispatch(
        self, shop_id: str, buyer_id: str = "", conversation_id: str = "", **fields: Any
    ) -> dispatch_pb2.DispatchResponse:
        """Route one conversation; ``fields`` are dispatch_request's keywords."""
        request = dispatch_request(shop_id, buyer_id, conversation_id, **fields)
        try:
            if self._batcher is not None:
                return cast(dispatch_pb2.DispatchResponse, await self._batcher.submit("dispatch", request))
            return await self.dispatch_stub.Dispatch(request, timeout=self.timeout)
        except DispatchError:
            raise
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    @raises_dispatch_errors
    async def dispatch_batch(
        self, requests: Iterable[dispatch_pb2.DispatchRequest]
    ) -> list[dispatch_pb2.DispatchResponse]:
        reply = await self.dispatch_stub.DispatchBatch(
            dispatch_pb2.DispatchBatchRequest(requests=requests), timeout=self.timeout
        )
        return list(reply.responses)

    @raises_dispatch_errors
    async def dispatch_stream(
        self,
        batches: AsyncIterable[Sequence[dispatch_pb2.DispatchRequest]]
        | Iterable[Sequence[dispatch_pb2.DispatchRequest]],
    ) -> AsyncIterator[list[dispatch_pb2.DispatchResponse]]:
        """Send batches on one DispatchStream; yield each answer batch in order."""

        async def requests() -> AsyncIterator[dispatch_pb2.DispatchBatchRequest]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield dispatch_pb2.DispatchBatchRequest(requests=batch)
            else:
                for batch in batches:
                    yield dispatch_pb2.DispatchBatchRequest(requests=batch)

        async for reply in self.dispatch_stub.DispatchStream(requests()):
            yield list(reply.responses)

    async def set_presence(
        self, shop_id: str, agent_id: str, presence: EnumArg, client: EnumArg = 0, *, at: Time = None
    ) -> dispatch_pb2.SetPresenceResponse:
        request = _presence(shop_id, agent_id, presence, client, at)
        try:
            if self._batcher is not None:
                return cast(dispatch_pb2.SetPresenceResponse, await self._batcher.submit("set_presence", request))
            return await self.dispatch_stub.SetPresence(request, timeout=self.timeout)
        except DispatchError:
            raise
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def report_conversation(
        self,
        shop_id: str,
        conversation_id: str,
        event: EnumArg,
        *,
        buyer_id: str = "",
        agent_id: str = "",
        to_agent_id: str = "",
        to_group_id: str = "",
        at: Time = None,
    ) -> dispatch_pb2.ReportConversationResponse:
        request = _report(shop_id, conversation_id, event, buyer_id, agent_id, to_agent_id, to_group_id, at)
        try:
            if self._batcher is not None:
                return cast(
                    dispatch_pb2.ReportConversationResponse, await self._batcher.submit("report_conversation", request)
                )
            return await self.dispatch_stub.ReportConversation(request, timeout=self.timeout)
        except DispatchError:
            raise
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def claim_from_pool(
        self, shop_id: str, agent_id: str, conversation_id: str = "", *, at: Time = None
    ) -> dispatch_pb2.ClaimFromPoolResponse:
        request = _claim(shop_id, agent_id, conversation_id, at)
        try:
            if self._batcher is not None:
                return cast(dispatch_pb2.ClaimFromPoolResponse, await self._batcher.submit("claim_from_pool", request))
            return await self.dispatch_stub.ClaimFromPool(request, timeout=self.timeout)
        except DispatchError:
            raise
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    @raises_dispatch_errors
    async def operate(self, operations: Iterable[dispatch_pb2.Operation]) -> dispatch_pb2.OperateResponse:
        """One unary ``Operate`` call: the operations (at most 4096) applied in order, one
        ``OperationResult`` each. Not ordered with automatic batches still in flight."""
        return await self.dispatch_stub.Operate(
            dispatch_pb2.OperateRequest(operations=operations), timeout=self.timeout
        )

    @raises_dispatch_errors
    async def operate_stream(
        self, batches: AsyncIterable[Sequence[dispatch_pb2.Operation]] | Iterable[Sequence[dispatch_pb2.Operation]]
    ) -> AsyncIterator[dispatch_pb2.OperateResponse]:
        """Send batches of operations on a stream of their own; yield each answer in order."""

        async def requests() -> AsyncIterator[dispatch_pb2.OperateRequest]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield dispatch_pb2.OperateRequest(operations=batch)
            else:
                for batch in batches:
                    yield dispatch_pb2.OperateRequest(operations=batch)

        async for reply in self.dispatch_stub.OperateStream(requests()):
            yield reply

    @raises_dispatch_errors
    async def watch_assignments(self, *shop_ids: str) -> AsyncWatch:
        """Open a watch stream (every shop when none is named) and wait until it is registered."""
        call = self.dispatch_stub.WatchAssignmentBatches(dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=shop_ids))
        return await AsyncWatch(call).ready()

    # -------------------------------------------------------------- Admin

    @raises_dispatch_errors
    async def put_shop(self, shop: admin_pb2.ShopConfig | None = None, **fields: Any) -> admin_pb2.ShopConfig:
        """Create or replace a shop (a ShopConfig or its fields; timedelta for durations). Returns the stored config."""
        reply = await self.admin_stub.PutShop(
            admin_pb2.PutShopRequest(shop=_build(admin_pb2.ShopConfig, shop, fields)), timeout=self.timeout
        )
        return reply.shop

    @raises_dispatch_errors
    async def delete_shop(self, shop_id: str) -> None:
        await self.admin_stub.DeleteShop(admin_pb2.DeleteShopRequest(shop_id=shop_id), timeout=self.timeout)

    @raises_dispatch_errors
    async def put_agent(self, agent: admin_pb2.Agent | None = None, **fields: Any) -> None:
        await self.admin_stub.PutAgent(
            admin_pb2.PutAgentRequest(agent=_build(admin_pb2.Agent, agent, fields)), timeout=self.timeout
        )

    @raises_dispatch_errors
    async def delete_agent(self, shop_id: str, agent_id: str) -> None:
        await self.admin_stub.DeleteAgent(
            admin_pb2.DeleteAgentRequest(shop_id=shop_id, agent_id=agent_id), timeout=self.timeout
        )

    @raises_dispatch_errors
    async def put_group(self, group: admin_pb2.Group | None = None, **fields: Any) -> None:
        await self.admin_stub.PutGroup(
            admin_pb2.PutGroupRequest(group=_build(admin_pb2.Group, group, fields)), timeout=self.timeout
        )

    @raises_dispatch_errors
    async def delete_group(self, shop_id: str, group_id: str) -> None:
        await self.admin_stub.DeleteGroup(
            admin_pb2.DeleteGroupRequest(shop_id=shop_id, group_id=group_id), timeout=self.timeout
        )

    @raises_dispatch_errors
    async def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None:
        request = admin_pb2.SetExclusiveAgentRequest(shop_id=shop_id, buyer_id=buyer_id, agent_id=agent_id)
        await self.admin_stub.SetExclusiveAgent(request, timeout=self.timeout)

    @raises_dispatch_errors
    async def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None:
        request = admin_pb2.DeleteExclusiveAgentRequest(shop_id=shop_id, buyer_id=buyer_id)
        await self.admin_stub.DeleteExclusiveAgent(request, timeout=self.timeout)

    @raises_dispatch_errors
    async def get_shop_state(self, shop_id: str, page_size: int = 0, page_token: str = "") -> admin_pb2.ShopState:
        """One answer of GetShopState: the whole state of a shop that fits, else a page of
        its agents with ``next_page_token`` (see ``iter_shop_agents`` for all of them)."""
        request = admin_pb2.GetShopStateRequest(shop_id=shop_id, page_size=page_size, page_token=page_token)
        return await self.admin_stub.GetShopState(request, timeout=self.timeout)

    @raises_dispatch_errors
    async def iter_shop_agents(self, shop_id: str, page_size: int = 0) -> AsyncIterator[admin_pb2.AgentState]:
        """Every agent of the shop, page after page (each agent once)."""
        token = ""
        while True:
            page = await self.get_shop_state(shop_id, page_size, token)
            for agent in page.agents:
                yield agent
            token = page.next_page_token
            if not token:
                return

    @raises_dispatch_errors
    async def list_shops(self) -> list[str]:
        reply = await self.admin_stub.ListShops(admin_pb2.ListShopsRequest(), timeout=self.timeout)
        return list(reply.shop_ids)

    @raises_dispatch_errors
    async def get_conversation(self, shop_id: str, conversation_id: str) -> admin_pb2.GetConversationResponse:
        request = admin_pb2.GetConversationRequest(shop_id=shop_id, conversation_id=conversation_id)
        return await self.admin_stub.GetConversation(request, timeout=self.timeout)

    @raises_dispatch_errors
    async def get_buyer(self, shop_id: str, buyer_id: str) -> admin_pb2.GetBuyerResponse:
        return await self.admin_stub.GetBuyer(
            admin_pb2.GetBuyerRequest(shop_id=shop_id, buyer_id=buyer_id), timeout=self.timeout
        )


class DispatchClient:
    """The dispatch.v1 API over a blocking grpc channel. Use ``with`` or ``close()``."""

    def __init__(self, target: str, *, channel: grpc.Channel | None = None, timeout: float | None = 30.0) -> None:
        self.channel = channel if channel is not None else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.dispatch_stub = dispatch_pb2_grpc.DispatchStub(self.channel)
        self.admin_stub = admin_pb2_grpc.AdminStub(self.channel)
        self.timeout = timeout

    def __enter__(self) -> DispatchClient:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    @raises_dispatch_errors
    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -------------------------------------------------------------- Dispatch

    @raises_dispatch_errors
    def dispatch(
        self, shop_id: str, buyer_id: str = "", conversation_id: str = "", **fields: Any
    ) -> dispatch_pb2.DispatchResponse:
        return self.dispatch_stub.Dispatch(
            dispatch_request(shop_id, buyer_id, conversation_id, **fields), timeout=self.timeout
        )

    @raises_dispatch_errors
    def dispatch_batch(self, requests: Iterable[dispatch_pb2.DispatchRequest]) -> list[dispatch_pb2.DispatchResponse]:
        reply = self.dispatch_stub.DispatchBatch(
            dispatch_pb2.DispatchBatchRequest(requests=requests), timeout=self.timeout
        )
        return list(reply.responses)

    @raises_dispatch_errors
    def dispatch_stream(
        self, batches: Iterable[Sequence[dispatch_pb2.DispatchRequest]]
    ) -> Iterator[list[dispatch_pb2.DispatchResponse]]:
        requests = (dispatch_pb2.DispatchBatchRequest(requests=batch) for batch in batches)
        for reply in self.dispatch_stub.DispatchStream(requests):
            yield list(reply.responses)

    @raises_dispatch_errors
    def set_presence(
        self, shop_id: str, agent_id: str, presence: EnumArg, client: EnumArg = 0, *, at: Time = None
    ) -> dispatch_pb2.SetPresenceResponse:
        return self.dispatch_stub.SetPresence(_presence(shop_id, agent_id, presence, client, at), timeout=self.timeout)

    @raises_dispatch_errors
    def report_conversation(
        self,
        shop_id: str,
        conversation_id: str,
        event: EnumArg,
        *,
        buyer_id: str = "",
        agent_id: str = "",
        to_agent_id: str = "",
        to_group_id: str = "",
        at: Time = None,
    ) -> dispatch_pb2.ReportConversationResponse:
        request = _report(shop_id, conversation_id, event, buyer_id, agent_id, to_agent_id, to_group_id, at)
        return self.dispatch_stub.ReportConversation(request, timeout=self.timeout)

    @raises_dispatch_errors
    def claim_from_pool(
        self, shop_id: str, agent_id: str, conversation_id: str = "", *, at: Time = None
    ) -> dispatch_pb2.ClaimFromPoolResponse:
        return self.dispatch_stub.ClaimFromPool(_claim(shop_id, agent_id, conversation_id, at), timeout=self.timeout)

    @raises_dispatch_errors
    def operate(self, operations: Iterable[dispatch_pb2.Operation]) -> dispatch_pb2.OperateResponse:
        """One ``Operate`` call: the operations (at most 4096) applied in order, one
        ``OperationResult`` each (its result, or its own ``error``)."""
        return self.dispatch_stub.Operate(dispatch_pb2.OperateRequest(operations=operations), timeout=self.timeout)

    @raises_dispatch_errors
    def operate_stream(
        self, batches: Iterable[Sequence[dispatch_pb2.Operation]]
    ) -> Iterator[dispatch_pb2.OperateResponse]:
        """Send batches of operations on one OperateStream; yield each answer in order."""
        yield from self.dispatch_stub.OperateStream(dispatch_pb2.OperateRequest(operations=batch) for batch in batches)

    def pipeline(self) -> Pipeline:
        """An explicit batch: ``with client.pipeline() as p: f = p.dispatch(...)``; the block's
        operations go as one ``Operate`` call when it ends, then ``f.result()`` is the answer
        (or raises that operation's error). ``p.execute()`` sends them and returns every
        response or error in order."""
        return Pipeline(lambda request: self.dispatch_stub.Operate(request, timeout=self.timeout))

    @raises_dispatch_errors
    def watch_assignments(self, *shop_ids: str) -> Watch:
        call = self.dispatch_stub.WatchAssignmentBatches(dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=shop_ids))
        return Watch(call).ready()

    # -------------------------------------------------------------- Admin

    @raises_dispatch_errors
    def put_shop(self, shop: admin_pb2.ShopConfig | None = None, **fields: Any) -> admin_pb2.ShopConfig:
        reply = self.admin_stub.PutShop(
            admin_pb2.PutShopRequest(shop=_build(admin_pb2.ShopConfig, shop, fields)), timeout=self.timeout
        )
        return reply.shop

    @raises_dispatch_errors
    def delete_shop(self, shop_id: str) -> None:
        self.admin_stub.DeleteShop(admin_pb2.DeleteShopRequest(shop_id=shop_id), timeout=self.timeout)

    @raises_dispatch_errors
    def put_agent(self, agent: admin_pb2.Agent | None = None, **fields: Any) -> None:
        self.admin_stub.PutAgent(
            admin_pb2.PutAgentRequest(agent=_build(admin_pb2.Agent, agent, fields)), timeout=self.timeout
        )

    @raises_dispatch_errors
    def delete_agent(self, shop_id: str, agent_id: str) -> None:
        self.admin_stub.DeleteAgent(
            admin_pb2.DeleteAgentRequest(shop_id=shop_id, agent_id=agent_id), timeout=self.timeout
        )

    @raises_dispatch_errors
    def put_group(self, group: admin_pb2.Group | None = None, **fields: Any) -> None:
        self.admin_stub.PutGroup(
            admin_pb2.PutGroupRequest(group=_build(admin_pb2.Group, group, fields)), timeout=self.timeout
        )

    @raises_dispatch_errors
    def delete_group(self, shop_id: str, group_id: str) -> None:
        self.admin_stub.DeleteGroup(
            admin_pb2.DeleteGroupRequest(shop_id=shop_id, group_id=group_id), timeout=self.timeout
        )

    @raises_dispatch_errors
    def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None:
        request = admin_pb2.SetExclusiveAgentRequest(shop_id=shop_id, buyer_id=buyer_id, agent_id=agent_id)
        self.admin_stub.SetExclusiveAgent(request, timeout=self.timeout)

    @raises_dispatch_errors
    def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None:
        request = admin_pb2.DeleteExclusiveAgentRequest(shop_id=shop_id, buyer_id=buyer_id)
        self.admin_stub.DeleteExclusiveAgent(request, timeout=self.timeout)

    @raises_dispatch_errors
    def get_shop_state(self, shop_id: str, page_size: int = 0, page_token: str = "") -> admin_pb2.ShopState:
        """One answer of GetShopState: the whole state of a shop that fits, else a page of
        its agents with ``next_page_token`` (see ``iter_shop_agents`` for all of them)."""
        request = admin_pb2.GetShopStateRequest(shop_id=shop_id, page_size=page_size, page_token=page_token)
        return self.admin_stub.GetShopState(request, timeout=self.timeout)

    @raises_dispatch_errors
    def iter_shop_agents(self, shop_id: str, page_size: int = 0) -> Iterator[admin_pb2.AgentState]:
        """Every agent of the shop, page after page (each agent once)."""
        token = ""
        while True:
            page = self.get_shop_state(shop_id, page_size, token)
            yield from page.agents
            token = page.next_page_token
            if not token:
                return

    @raises_dispatch_errors
    def list_shops(self) -> list[str]:
        return list(self.admin_stub.ListShops(admin_pb2.ListShopsRequest(), timeout=self.timeout).shop_ids)

    @raises_dispatch_errors
    def get_conversation(self, shop_id: str, conversation_id: str) -> admin_pb2.GetConversationResponse:
        request = admin_pb2.GetConversationRequest(shop_id=shop_id, conversation_id=conversation_id)
        return self.admin_stub.GetConversation(request, timeout=self.timeout)

    @raises_dispatch_errors
    def get_buyer(self, shop_id: str, buyer_id: str) -> admin_pb2.GetBuyerResponse:
        return self.admin_stub.GetBuyer(
            admin_pb2.GetBuyerRequest(shop_id=shop_id, buyer_id=buyer_id), timeout=self.timeout
        )


class Pipeline:
    """Operations collected by the blocking client and sent as one ``Operate`` call (more than
    4096 go as several calls, in order). Use it as a context manager (the block's operations
    are sent when it ends without an exception; nothing is sent when it raises) or call
    ``execute()``. Each method returns an ``OperationFuture`` whose ``result()`` is, once the
    pipeline has run, the same response the unary method returns, or raises its error (an
    ``OperationError`` of its code: ``code()``/``details()`` as the unary call's)."""

    def __init__(self, operate: Callable[[dispatch_pb2.OperateRequest], dispatch_pb2.OperateResponse]) -> None:
        self._operate = operate
        self._operations: list[dispatch_pb2.Operation] = []
        self._futures: list[OperationFuture[Any]] = []
        self.calls = 0
        """Operate calls made so far."""

    def __len__(self) -> int:
        return len(self._operations)

    def add(self, operation: dispatch_pb2.Operation) -> OperationFuture[Message]:
        """Queue an Operation (exactly one kind set); its future gives the response of its kind."""
        if operation.WhichOneof("kind") is None:
            raise ValueError("the operation has no kind set")
        future: OperationFuture[Message] = OperationFuture()
        self._operations.append(operation)
        self._futures.append(future)
        return future

    def dispatch(
        self, shop_id: str, buyer_id: str = "", conversation_id: str = "", **fields: Any
    ) -> OperationFuture[dispatch_pb2.DispatchResponse]:
        future: OperationFuture[dispatch_pb2.DispatchResponse] = OperationFuture()
        self._operations.append(
            dispatch_pb2.Operation(dispatch=dispatch_request(shop_id, buyer_id, conversation_id, **fields))
        )
        self._futures.append(future)
        return future

    def set_presence(
        self, shop_id: str, agent_id: str, presence: EnumArg, client: EnumArg = 0, *, at: Time = None
    ) -> OperationFuture[dispatch_pb2.SetPresenceResponse]:
        future: OperationFuture[dispatch_pb2.SetPresenceResponse] = OperationFuture()
        self._operations.append(dispatch_pb2.Operation(set_presence=_presence(shop_id, agent_id, presence, client, at)))
        self._futures.append(future)
        return future

    def report_conversation(
        self,
        shop_id: str,
        conversation_id: str,
        event: EnumArg,
        *,
        buyer_id: str = "",
        agent_id: str = "",
        to_agent_id: str = "",
        to_group_id: str = "",
        at: Time = None,
    ) -> OperationFuture[dispatch_pb2.ReportConversationResponse]:
        future: OperationFuture[dispatch_pb2.ReportConversationResponse] = OperationFuture()
        request = _report(shop_id, conversation_id, event, buyer_id, agent_id, to_agent_id, to_group_id, at)
        self._operations.append(dispatch_pb2.Operation(report_conversation=request))
        self._futures.append(future)
        return future

    def claim_from_pool(
        self, shop_id: str, agent_id: str, conversation_id: str = "", *, at: Time = None
    ) -> OperationFuture[dispatch_pb2.ClaimFromPoolResponse]:
        future: OperationFuture[dispatch_pb2.ClaimFromPoolResponse] = OperationFuture()
        self._operations.append(dispatch_pb2.Operation(claim_from_pool=_claim(shop_id, agent_id, conversation_id, at)))
        self._futures.append(future)
        return future

    def execute(self) -> list[Message | DispatchError]:
        """Send the queued operations; return each one's response or error (an
        ``OperationError``), in order (and resolve their futures). The failure of a whole call
        (UNAVAILABLE, UNAUTHENTICATED...) is raised, a ``DispatchError`` set on every future
        it left unanswered."""
        operations, futures = self._operations, self._futures
        self._operations, self._futures = [], []
        out: list[Message | DispatchError] = []
        for start in range(0, len(operations), MAX_BATCH):
            chunk = operations[start : start + MAX_BATCH]
            try:
                self.calls += 1
                response = self._operate(dispatch_pb2.OperateRequest(operations=chunk))
                if len(response.results) != len(chunk):
                    details = f"the server answered {len(response.results)} results for {len(chunk)} operations"
                    raise error_for(grpc.StatusCode.INTERNAL, details, batched=True)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                for future in futures[start:]:
                    future._set(None, error)
                if error is exc:
                    raise
                raise error from None
            for future, operation, result in zip(futures[start:], chunk, response.results, strict=False):
                if result.HasField("error"):
                    error = error_of(result.error)
                    future._set(None, error)
                    out.append(error)
                else:
                    value = getattr(result, cast(str, operation.WhichOneof("kind")))
                    future._set(value, None)
                    out.append(value)
        return out

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.execute()
        else:  # the block failed: send nothing
            self._operations, self._futures = [], []
