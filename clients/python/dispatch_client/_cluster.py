"""Smart clients of a dispatch cluster (issue 15): each call goes to the node that owns its shop.

A cluster splits shops over nodes by partition: ``CRC32(shop_id as UTF-8) mod P``
(zlib's CRC-32). ``dispatch.v1.Cluster/GetClusterMap`` tells which node owns which
partitions (protos/dispatch/v1/cluster.proto). ``AsyncClusterClient`` and
``ClusterClient`` ask a seed for that map, keep one ordinary client
(``AsyncDispatchClient`` / ``DispatchClient``) per node, opened on first use, and
send each call to its shop's owner: per-node automatic batching comes with it.

- A server that is not part of a cluster answers ``partition_count`` 0: every call
  goes to the seed that answered.
- Batches (``dispatch_batch``, ``operate``, the blocking ``pipeline()``) are split by
  node, sent concurrently and answered in call order.
- A node that does not own a shop refuses its call with FAILED_PRECONDITION and a
  ``google.rpc.ErrorInfo`` (reason ``WRONG_NODE``: the owner, its address, the map
  epoch), for a whole call or as one operation's ``error`` in a batch. The client then
  refreshes its map (asking the owner named first) and retries that call or those
  operations once on the owner; a second refusal raises ``WrongNodeError`` (a batch
  keeps the operation's error, read it with ``wrong_node_of``).
- ``watch_assignments`` fans in every node's ``WatchAssignmentBatches``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar, cast

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped,unused-ignore]

from ._client import AsyncDispatchClient, AsyncWatch, DispatchClient, Pipeline, Time, Watch, _build
from ._enums import EnumArg
from ._errors import (
    ERROR_DOMAIN,
    WRONG_NODE,
    WrongNode,
    WrongNodeError,
    error_from_rpc,
    raises_dispatch_errors,
    status_of,
    wrong_node_in,
    wrong_node_of,
)
from ._gen.dispatch.v1 import admin_pb2, cluster_pb2, cluster_pb2_grpc, dispatch_pb2

__all__ = [
    "ERROR_DOMAIN",
    "WRONG_NODE",
    "AsyncClusterClient",
    "AsyncClusterWatch",
    "ClusterClient",
    "ClusterWatch",
    "Routes",
    "WrongNode",
    "WrongNodeError",
    "partition_of",
    "wrong_node_of",
]

_WATCH_QUEUE: Final = 1024
"""Assignments a fan-in watch holds for its reader before its node streams wait (flow control)."""

_R = TypeVar("_R")
_I = TypeVar("_I")
_O = TypeVar("_O")


def partition_of(shop_id: str, partition_count: int) -> int:
    """The shop's partition: CRC-32 (zlib's) of its UTF-8 bytes, mod ``partition_count``."""
    return zlib.crc32(shop_id.encode("utf-8", "surrogatepass")) % partition_count


# ---------------------------------------------------------------- WRONG_NODE
# (WrongNode, WrongNodeError and wrong_node_of live in _errors: every client raises them.)


def _call_failed(error: BaseException) -> status_pb2.Status:
    """A node's whole-call failure as the ``error`` of each of its operations."""
    status = status_of(error)
    return status if status.message else status_pb2.Status(code=status.code, details=status.details, message=str(error))


# ---------------------------------------------------------------- the map


class Routes:
    """A cluster map as the client routes by it: shop -> the address of its owner.

    ``partition_count`` 0 (a server outside any cluster) routes every shop to ``fallback``,
    the address that answered. A partition no node claims also goes there (the node then
    names the owner)."""

    __slots__ = ("_owner", "addresses", "epoch", "fallback", "message", "node", "nodes", "partition_count")

    def __init__(self, message: cluster_pb2.GetClusterMapResponse, fallback: str) -> None:
        self.message = message
        self.partition_count: int = message.partition_count
        self.epoch: int = message.epoch
        self.node: str = message.node
        """The name of the node that answered ('' outside a cluster)."""
        self.fallback = fallback
        self.nodes: dict[str, str] = {node.name: node.address for node in message.nodes}
        """Node name -> address."""
        owner = [fallback] * self.partition_count
        addresses: list[str] = []
        for node in message.nodes:
            if node.address not in addresses:
                addresses.append(node.address)
            for span in node.partitions:
                for p in range(span.start, min(span.end, self.partition_count)):
                    owner[p] = node.address
        if not self.partition_count:
            addresses = [fallback]
        self.addresses: tuple[str, ...] = tuple(addresses)
        """Every node's address, in map order (the fallback alone outside a cluster)."""
        self._owner = owner

    def address_of(self, shop_id: str) -> str:
        """The address of the node that owns ``shop_id``."""
        count = self.partition_count
        if not count:
            return self.fallback
        return self._owner[zlib.crc32(shop_id.encode("utf-8", "surrogatepass")) % count]

    def group(self, shops: Iterable[str]) -> dict[str, list[str]]:
        """Shops by the address of their owner (each shop once, in first-seen order)."""
        out: dict[str, list[str]] = {}
        for shop in dict.fromkeys(shops):
            out.setdefault(self.address_of(shop), []).append(shop)
        return out

    def __repr__(self) -> str:
        return f"Routes(partition_count={self.partition_count}, epoch={self.epoch}, nodes={self.nodes!r})"


def _unclustered(error: grpc.RpcError) -> bool:
    return error_from_rpc(error).status_code == grpc.StatusCode.UNIMPLEMENTED


def _candidates(*groups: Iterable[str]) -> list[str]:
    return [address for address in dict.fromkeys(a for group in groups for a in group) if address]


def _shop_of_operation(operation: dispatch_pb2.Operation) -> str:
    kind = operation.WhichOneof("kind")
    return cast(str, getattr(operation, kind).shop_id) if kind is not None else ""


def _dispatch_error(request: dispatch_pb2.DispatchRequest, status: status_pb2.Status) -> dispatch_pb2.DispatchResponse:
    return dispatch_pb2.DispatchResponse(conversation_id=request.conversation_id, error=status)


def _operation_error(_: dispatch_pb2.Operation, status: status_pb2.Status) -> dispatch_pb2.OperationResult:
    return dispatch_pb2.OperationResult(error=status)


def _item_status(item: dispatch_pb2.DispatchResponse | dispatch_pb2.OperationResult) -> status_pb2.Status | None:
    return item.error if item.HasField("error") else None


class _Split:
    """The bookkeeping of one batch split by node: the answers so far, in call order, and the
    operations a node refused as WRONG_NODE (to retry once)."""

    def __init__(self, size: int) -> None:
        self.out: list[Any] = [None] * size
        self.refused: list[tuple[int, str, WrongNode]] = []
        self.failures: list[grpc.RpcError] = []
        self.sent_to = 0

    def answered(
        self,
        indexes: list[int],
        address: str,
        answer: Sequence[Any] | grpc.RpcError,
        items: Sequence[Any],
        fail: Callable[[Any, status_pb2.Status], Any],
        retrying: bool,
    ) -> None:
        self.sent_to += 1
        if isinstance(answer, grpc.RpcError):
            self.failures.append(answer)
            status = _call_failed(answer)
            for i in indexes:
                self.out[i] = fail(items[i], status)
            return
        if len(answer) != len(indexes):
            status = status_pb2.Status(
                code=grpc.StatusCode.INTERNAL.value[0],
                message=f"node {address} answered {len(answer)} results for {len(indexes)} operations",
            )
            for i in indexes:
                self.out[i] = fail(items[i], status)
            return
        for i, item in zip(indexes, answer, strict=True):
            self.out[i] = item
            if not retrying:
                status = _item_status(item)
                wrong = wrong_node_in(status) if status is not None else None
                if wrong is not None:
                    self.refused.append((i, address, wrong))

    def result(self) -> list[Any]:
        if self.failures and len(self.failures) == self.sent_to:
            raise error_from_rpc(self.failures[0])  # nothing was answered: the call fails as on one node
        return self.out


def _regroup(shops: Sequence[str], targets: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for shop, target in zip(shops, targets, strict=True):
        groups.setdefault(target, []).append(shop)
    return groups


def _group_indexes(addresses: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, address in enumerate(addresses):
        groups.setdefault(address, []).append(i)
    return groups


def _reroute(routes: Routes | None, refused: Sequence[tuple[str, str, WrongNode]]) -> list[str]:
    """Where to retry each refused (shop, refused address, refusal): its owner in ``routes``,
    or the owner the refusal names when the map still says the node that refused."""
    out = []
    for shop_id, address, wrong in refused:
        target = routes.address_of(shop_id) if routes is not None else ""
        if (not target or target == address) and wrong.owner_address:
            target = wrong.owner_address
        out.append(target or address)
    return out


def _stale(routes: Routes | None, refused: Sequence[tuple[str, str, WrongNode]]) -> bool:
    """Whether the map must be fetched again before retrying these refusals."""
    if routes is None:
        return True
    return any(routes.epoch < wrong.epoch or routes.address_of(shop) == address for shop, address, wrong in refused)


# ---------------------------------------------------------------- async


class AsyncClusterClient:
    """The ``AsyncDispatchClient`` methods over a cluster: each call goes to its shop's owner.

    ``seeds`` are addresses to ask for the cluster map (the first that answers); the map
    is fetched on first use (or by ``refresh()`` / ``async with``), unless ``cluster_map``
    gives one to start from. The other keywords configure the per-node clients
    (``AsyncDispatchClient``: ``timeout``, ``auto_batch``, ``max_batch_size``...).
    ``map_timeout`` bounds each GetClusterMap call."""

    def __init__(
        self,
        seeds: str | Sequence[str],
        *,
        cluster_map: cluster_pb2.GetClusterMapResponse | None = None,
        map_timeout: float = 5.0,
        timeout: float | None = 30.0,
        auto_batch: bool = True,
        max_batch_size: int = 1024,
        max_batch_delay: float = 0.0,
        max_batches_in_flight: int = 8,
    ) -> None:
        self.seeds: list[str] = [seeds] if isinstance(seeds, str) else list(seeds)
        if not self.seeds:
            raise ValueError("a cluster client needs at least one seed address")
        self.map_timeout = map_timeout
        self._options: dict[str, Any] = {
            "timeout": timeout,
            "auto_batch": auto_batch,
            "max_batch_size": max_batch_size,
            "max_batch_delay": max_batch_delay,
            "max_batches_in_flight": max_batches_in_flight,
        }
        self._clients: dict[str, AsyncDispatchClient] = {}
        self._routes: Routes | None = Routes(cluster_map, self.seeds[0]) if cluster_map is not None else None
        self._refreshing: asyncio.Task[Routes] | None = None
        self._closed = False
        self.map_fetches = 0
        """GetClusterMap calls answered so far."""
        self.wrong_node_retries = 0
        """Calls and batch operations retried on another node after a WRONG_NODE refusal."""

    # ------------------------------------------------------------ plumbing

    @property
    def routes(self) -> Routes | None:
        """The current map (None until it is fetched)."""
        return self._routes

    def client(self, address: str) -> AsyncDispatchClient:
        """The client of one node (opened on first use)."""
        client = self._clients.get(address)
        if client is None:
            if self._closed:
                raise RuntimeError("the cluster client is closed")
            client = self._clients[address] = AsyncDispatchClient(address, **self._options)
        return client

    def clients(self) -> dict[str, AsyncDispatchClient]:
        """The per-node clients opened so far, by address."""
        return dict(self._clients)

    @raises_dispatch_errors
    async def client_for(self, shop_id: str) -> AsyncDispatchClient:
        """The client of the node that owns ``shop_id`` by the current map."""
        return self.client((self._routes or await self.refresh()).address_of(shop_id))

    @raises_dispatch_errors
    async def refresh(self, prefer: Sequence[str] = (), *, min_epoch: int = 0) -> Routes:
        """Fetch the map again: from ``prefer`` first, then the known nodes, then the seeds; the
        first answer with an epoch of at least ``min_epoch`` (else the newest) replaces the
        current map unless that one is newer. Concurrent refreshes share one fetch."""
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.ensure_future(self._fetch(prefer, min_epoch))
        return await asyncio.shield(task)

    async def _fetch(self, prefer: Sequence[str], min_epoch: int) -> Routes:
        known = self._routes.addresses if self._routes is not None else ()
        best: Routes | None = None
        error: BaseException | None = None
        for address in _candidates(prefer, known, self.seeds):
            try:
                stub = cluster_pb2_grpc.ClusterStub(self.client(address).channel)
                reply = await stub.GetClusterMap(cluster_pb2.GetClusterMapRequest(), timeout=self.map_timeout)
            except grpc.RpcError as exc:
                if _unclustered(exc):  # a server from before clusters: it serves every shop
                    reply = cluster_pb2.GetClusterMapResponse()
                else:
                    error = exc
                    continue
            self.map_fetches += 1
            routes = Routes(reply, address)
            if best is None or routes.epoch > best.epoch:
                best = routes
            if routes.epoch >= min_epoch:
                break
        if best is None:
            assert error is not None
            raise error_from_rpc(error)
        current = self._routes
        if current is None or best.epoch >= current.epoch:
            self._routes = current = best
        return current

    async def _routes_now(self) -> Routes:
        return self._routes or await self.refresh()

    async def _after_refusal(self, refused: Sequence[tuple[str, str, WrongNode]]) -> list[str]:
        self.wrong_node_retries += len(refused)
        routes = self._routes
        if _stale(routes, refused):
            try:
                routes = await self.refresh(
                    [wrong.owner_address for _, _, wrong in refused],
                    min_epoch=max(wrong.epoch for _, _, wrong in refused),
                )
            except grpc.RpcError:
                routes = self._routes  # no map to be had: go by what the refusals say
        return _reroute(routes, refused)

    async def _on_shop(self, shop_id: str, call: Callable[[AsyncDispatchClient], Awaitable[_R]]) -> _R:
        """Run ``call`` on the owner's client; after a WRONG_NODE refusal, once more on the new owner."""
        address = (self._routes or await self.refresh()).address_of(shop_id)
        try:
            return await call(self.client(address))
        except grpc.RpcError as exc:
            wrong = wrong_node_of(exc)
            if wrong is None:
                raise
        (retry_at,) = await self._after_refusal([(shop_id, address, wrong)])
        try:
            return await call(self.client(retry_at))
        except grpc.RpcError as exc:
            again = wrong_node_of(exc)
            if again is None:
                raise
            raise WrongNodeError.of(exc, again) from None

    async def _split(
        self,
        items: Sequence[_I],
        shop_of: Callable[[_I], str],
        send: Callable[[AsyncDispatchClient, list[_I]], Awaitable[Sequence[_O]]],
        fail: Callable[[_I, status_pb2.Status], _O],
    ) -> list[_O]:
        """Send ``items`` split by owner, concurrently; the answers in item order. Items a node
        refused as WRONG_NODE are sent once more, to their new owners."""
        split = _Split(len(items))
        if not items:
            return []
        shops = [shop_of(item) for item in items]
        routes = await self._routes_now()
        await self._send_split(split, items, list(range(len(items))), [routes.address_of(s) for s in shops], send, fail)
        if split.refused:
            refused = [(shops[i], address, wrong) for i, address, wrong in split.refused]
            targets = await self._after_refusal(refused)
            indexes = [i for i, _, _ in split.refused]
            await self._send_split(split, items, indexes, targets, send, fail, retrying=True)
        return cast(list[_O], split.result())

    async def _send_split(
        self,
        split: _Split,
        items: Sequence[_I],
        indexes: list[int],
        addresses: list[str],
        send: Callable[[AsyncDispatchClient, list[_I]], Awaitable[Sequence[_O]]],
        fail: Callable[[_I, status_pb2.Status], _O],
        retrying: bool = False,
    ) -> None:
        groups = {a: [indexes[j] for j in js] for a, js in _group_indexes(addresses).items()}

        async def one(address: str, members: list[int]) -> Sequence[_O] | grpc.RpcError:
            try:
                return await send(self.client(address), [items[i] for i in members])
            except grpc.RpcError as exc:
                return exc

        answers = await asyncio.gather(*(one(a, m) for a, m in groups.items()))
        for (address, members), answer in zip(groups.items(), answers, strict=True):
            split.answered(members, address, answer, items, fail, retrying)

    async def __aenter__(self) -> AsyncClusterClient:
        await self._routes_now()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every node's client (their calls not answered yet raise CANCELLED)."""
        self._closed = True
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    @raises_dispatch_errors
    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Fetch the map and wait until every node's channel is connected."""
        routes = await asyncio.wait_for(self.refresh(), timeout)
        await asyncio.gather(*(self.client(a).wait_ready(timeout) for a in routes.addresses))

    # ------------------------------------------------------------ Dispatch

    @raises_dispatch_errors
    async def dispatch(
        self, shop_id: str, buyer_id: str = "", conversation_id: str = "", **fields: Any
    ) -> dispatch_pb2.DispatchResponse:
        """Route one conversation on its shop's node; ``fields`` are dispatch_request's keywords."""
        return await self._on_shop(shop_id, lambda c: c.dispatch(shop_id, buyer_id, conversation_id, **fields))

    @raises_dispatch_errors
    async def dispatch_batch(
        self, requests: Iterable[dispatch_pb2.DispatchRequest]
    ) -> list[dispatch_pb2.DispatchResponse]:
        """DispatchBatch split by node (concurrently); the responses in request order. A node's
        whole-call failure becomes the ``error`` of each of its requests, unless every node
        failed: then it is raised."""
        return await self._split(
            list(requests), lambda r: r.shop_id, lambda c, part: c.dispatch_batch(part), _dispatch_error
        )

    @raises_dispatch_errors
    async def dispatch_stream(
        self,
        batches: AsyncIterable[Sequence[dispatch_pb2.DispatchRequest]]
        | Iterable[Sequence[dispatch_pb2.DispatchRequest]],
    ) -> AsyncIterator[list[dispatch_pb2.DispatchResponse]]:
        """Each batch as a ``dispatch_batch``, one after another; yields each answer in order."""
        if isinstance(batches, AsyncIterable):
            async for batch in batches:
                yield await self.dispatch_batch(batch)
        else:
            for batch in batches:
                yield await self.dispatch_batch(batch)

    @raises_dispatch_errors
    async def set_presence(
        self, shop_id: str, agent_id: str, presence: EnumArg, client: EnumArg = 0, *, at: Time = None
    ) -> dispatch_pb2.SetPresenceResponse:
        return await self._on_shop(shop_id, lambda c: c.set_presence(shop_id, agent_id, presence, client, at=at))

    @raises_dispatch_errors
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
        return await self._on_shop(
            shop_id,
            lambda c: c.report_conversation(
                shop_id,
                conversation_id,
                event,
                buyer_id=buyer_id,
                agent_id=agent_id,
                to_agent_id=to_agent_id,
                to_group_id=to_group_id,
                at=at,
            ),
        )

    @raises_dispatch_errors
    async def claim_from_pool(
        self, shop_id: str, agent_id: str, conversation_id: str = "", *, at: Time = None
    ) -> dispatch_pb2.ClaimFromPoolResponse:
        return await self._on_shop(shop_id, lambda c: c.claim_from_pool(shop_id, agent_id, conversation_id, at=at))

    @raises_dispatch_errors
    async def operate(self, operations: Iterable[dispatch_pb2.Operation]) -> dispatch_pb2.OperateResponse:
        """Operate split by node (concurrently); one ``OperationResult`` per operation, in order.
        The operations of one shop go to one node in their order. A node's whole-call failure
        becomes each of its operations' ``error``, unless every node failed: then it is raised."""
        results = await self._split(list(operations), _shop_of_operation, _operate_on_async, _operation_error)
        return dispatch_pb2.OperateResponse(results=results)

    @raises_dispatch_errors
    async def operate_stream(
        self, batches: AsyncIterable[Sequence[dispatch_pb2.Operation]] | Iterable[Sequence[dispatch_pb2.Operation]]
    ) -> AsyncIterator[dispatch_pb2.OperateResponse]:
        """Each batch as an ``operate``, one after another; yields each answer in order."""
        if isinstance(batches, AsyncIterable):
            async for batch in batches:
                yield await self.operate(batch)
        else:
            for batch in batches:
                yield await self.operate(batch)

    @raises_dispatch_errors
    async def watch_assignments(self, *shop_ids: str) -> AsyncClusterWatch:
        """Watch the hand-outs of ``shop_ids`` (every shop when none is named) on every node that
        owns some, merged into one stream; returns once every node's watch is registered."""
        watch = AsyncClusterWatch(self, shop_ids)
        await watch._start()
        return watch

    # ------------------------------------------------------------ Admin

    @raises_dispatch_errors
    async def put_shop(self, shop: admin_pb2.ShopConfig | None = None, **fields: Any) -> admin_pb2.ShopConfig:
        """Create or replace a shop on its node (a ShopConfig or its fields). Returns the stored config."""
        config = _build(admin_pb2.ShopConfig, shop, fields)
        return await self._on_shop(config.shop_id, lambda c: c.put_shop(config))

    @raises_dispatch_errors
    async def delete_shop(self, shop_id: str) -> None:
        await self._on_shop(shop_id, lambda c: c.delete_shop(shop_id))

    @raises_dispatch_errors
    async def put_agent(self, agent: admin_pb2.Agent | None = None, **fields: Any) -> None:
        message = _build(admin_pb2.Agent, agent, fields)
        await self._on_shop(message.shop_id, lambda c: c.put_agent(message))

    @raises_dispatch_errors
    async def delete_agent(self, shop_id: str, agent_id: str) -> None:
        await self._on_shop(shop_id, lambda c: c.delete_agent(shop_id, agent_id))

    @raises_dispatch_errors
    async def put_group(self, group: admin_pb2.Group | None = None, **fields: Any) -> None:
        message = _build(admin_pb2.Group, group, fields)
        await self._on_shop(message.shop_id, lambda c: c.put_group(message))

    @raises_dispatch_errors
    async def delete_group(self, shop_id: str, group_id: str) -> None:
        await self._on_shop(shop_id, lambda c: c.delete_group(shop_id, group_id))

    @raises_dispatch_errors
    async def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None:
        await self._on_shop(shop_id, lambda c: c.set_exclusive_agent(shop_id, buyer_id, agent_id))

    @raises_dispatch_errors
    async def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None:
        await self._on_shop(shop_id, lambda c: c.delete_exclusive_agent(shop_id, buyer_id))

    @raises_dispatch_errors
    async def get_shop_state(self, shop_id: str, page_size: int = 0, page_token: str = "") -> admin_pb2.ShopState:
        return await self._on_shop(shop_id, lambda c: c.get_shop_state(shop_id, page_size, page_token))

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
        """Every shop of every node, sorted."""
        routes = await self._routes_now()
        answers = await asyncio.gather(*(self.client(a).list_shops() for a in routes.addresses))
        return sorted({shop for answer in answers for shop in answer})

    @raises_dispatch_errors
    async def get_conversation(self, shop_id: str, conversation_id: str) -> admin_pb2.GetConversationResponse:
        return await self._on_shop(shop_id, lambda c: c.get_conversation(shop_id, conversation_id))

    @raises_dispatch_errors
    async def get_buyer(self, shop_id: str, buyer_id: str) -> admin_pb2.GetBuyerResponse:
        return await self._on_shop(shop_id, lambda c: c.get_buyer(shop_id, buyer_id))


async def _operate_on_async(
    client: AsyncDispatchClient, operations: list[dispatch_pb2.Operation]
) -> Sequence[dispatch_pb2.OperationResult]:
    return (await client.operate(operations)).results


_END: Final = object()


class AsyncClusterWatch:
    """Assignments from every node's ``WatchAssignmentBatches``, merged: ``async for a in watch``.

    Each node's hand-outs come in their order; those of different nodes interleave as they
    arrive. The iteration ends when every node's stream has ended or on ``cancel()``; a
    node's stream failing raises its error (after cancelling the others). A node that
    refuses a watched shop as WRONG_NODE gets that shop's watch moved to the owner once."""

    def __init__(self, owner: AsyncClusterClient, shop_ids: Sequence[str]) -> None:
        self._owner = owner
        self._shops = tuple(shop_ids)
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_WATCH_QUEUE)
        self._watches: list[AsyncWatch] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        self._done = False
        self._cancelled = False

    @property
    def watches(self) -> list[AsyncWatch]:
        """The per-node watches open now."""
        return list(self._watches)

    async def _start(self) -> None:
        if self._shops:
            routes = await self._owner._routes_now()
            groups = routes.group(self._shops)
        else:
            routes = await self._owner.refresh()  # a watch of every shop needs every node of now
            groups = {address: [] for address in routes.addresses}
        try:
            await self._open(groups, retry=True)
        except BaseException:
            self.cancel()
            raise

    async def _open(self, groups: dict[str, list[str]], retry: bool) -> None:
        """Open a watch per node and wait until each is registered. A node that refuses its shops
        as WRONG_NODE (a stale map) gets them moved to their owners (when ``retry``)."""

        async def one(address: str, shops: list[str]) -> AsyncWatch:
            request = dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=shops)
            call = self._owner.client(address).dispatch_stub.WatchAssignmentBatches(request)
            watch = await AsyncWatch(call).ready()
            if call.done() and (code := await call.code()) != grpc.StatusCode.OK:  # refused on arrival
                raise grpc.aio.AioRpcError(
                    code, await call.initial_metadata(), await call.trailing_metadata(), await call.details()
                )
            return watch

        opened = await asyncio.gather(*(one(a, shops) for a, shops in groups.items()), return_exceptions=True)
        refused: list[tuple[str, str, WrongNode]] = []
        failure: BaseException | None = None
        for (address, shops), watch in zip(groups.items(), opened, strict=True):
            if isinstance(watch, AsyncWatch):
                self._watches.append(watch)
                self._running += 1
                self._tasks.append(asyncio.ensure_future(self._read(address, shops, watch, retry)))
                continue
            wrong = wrong_node_of(watch)
            if wrong is not None and retry and shops:
                refused.extend((shop, address, wrong) for shop in shops)
            elif failure is None:
                failure = watch
        if failure is not None:
            raise error_from_rpc(failure)
        if refused:
            targets = await self._owner._after_refusal(refused)
            await self._open(_regroup([shop for shop, _, _ in refused], targets), retry=False)

    async def _read(self, address: str, shops: list[str], watch: AsyncWatch, retry: bool) -> None:
        error: BaseException | None = None
        try:
            while True:
                try:
                    assignment = await watch.next()
                except StopAsyncIteration:
                    break
                await self._queue.put(assignment)
        except asyncio.CancelledError:
            self._running -= 1
            raise
        except grpc.RpcError as exc:
            error = exc
            wrong = wrong_node_of(exc)
            if wrong is not None and retry and shops and not self._cancelled:
                # The map was stale: watch these shops on their owners instead (once).
                targets = await self._owner._after_refusal([(shop, address, wrong) for shop in shops])
                try:
                    await self._open(_regroup(shops, targets), retry=False)
                    error = None
                except grpc.RpcError as again:
                    error = again
        self._running -= 1
        if self._cancelled:
            return
        if error is not None:
            await self._queue.put(error)
        elif self._running == 0:
            await self._queue.put(_END)

    async def next(self) -> dispatch_pb2.Assignment:
        """The next assignment; StopAsyncIteration once every node's stream ended or on cancel()."""
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.cancel()
            self._done = True
            raise error_from_rpc(item) if isinstance(item, grpc.RpcError) else item
        return cast(dispatch_pb2.Assignment, item)

    def __aiter__(self) -> AsyncIterator[dispatch_pb2.Assignment]:
        return self

    async def __anext__(self) -> dispatch_pb2.Assignment:
        return await self.next()

    def cancel(self) -> None:
        """End every node's watch; the iteration then ends."""
        if self._cancelled:
            return
        self._cancelled = True
        for watch in self._watches:
            watch.cancel()
        for task in self._tasks:
            task.cancel()
        while not self._queue.empty():  # make room for the end mark
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    async def __aenter__(self) -> AsyncClusterWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


# ---------------------------------------------------------------- blocking


class ClusterClient:
    """The ``DispatchClient`` methods over a cluster (blocking): each call goes to its shop's
    owner. See ``AsyncClusterClient``; ``timeout`` configures the per-node clients. Safe to
    share between threads."""

    def __init__(
        self,
        seeds: str | Sequence[str],
        *,
        cluster_map: cluster_pb2.GetClusterMapResponse | None = None,
        map_timeout: float = 5.0,
        timeout: float | None = 30.0,
    ) -> None:
        self.seeds: list[str] = [seeds] if isinstance(seeds, str) else list(seeds)
        if not self.seeds:
            raise ValueError("a cluster client needs at least one seed address")
        self.map_timeout = map_timeout
        self.timeout = timeout
        self._clients: dict[str, DispatchClient] = {}
        self._routes: Routes | None = Routes(cluster_map, self.seeds[0]) if cluster_map is not None else None
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._closed = False
        self.map_fetches = 0
        """GetClusterMap calls answered so far."""
        self.wrong_node_retries = 0
        """Calls and batch operations retried on another node after a WRONG_NODE refusal."""

    # ------------------------------------------------------------ plumbing

    @property
    def routes(self) -> Routes | None:
        """The current map (None until it is fetched)."""
        return self._routes

    def client(self, address: str) -> DispatchClient:
        """The client of one node (opened on first use)."""
        client = self._clients.get(address)
        if client is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the cluster client is closed")
                client = self._clients.get(address)
                if client is None:
                    client = self._clients[address] = DispatchClient(address, timeout=self.timeout)
        return client

    def clients(self) -> dict[str, DispatchClient]:
        """The per-node clients opened so far, by address."""
        return dict(self._clients)

    @raises_dispatch_errors
    def client_for(self, shop_id: str) -> DispatchClient:
        """The client of the node that owns ``shop_id`` by the current map."""
        return self.client(self._routes_now().address_of(shop_id))

    @raises_dispatch_errors
    def refresh(self, prefer: Sequence[str] = (), *, min_epoch: int = 0, stale: Routes | None = None) -> Routes:
        """Fetch the map again (see ``AsyncClusterClient.refresh``). With ``stale``: only if the
        current map is still that one (another thread may have refreshed it meanwhile)."""
        with self._fetch_lock:
            current = self._routes
            if stale is not None and current is not None and current is not stale:
                return current
            known = current.addresses if current is not None else ()
            best: Routes | None = None
            error: BaseException | None = None
            for address in _candidates(prefer, known, self.seeds):
                try:
                    stub = cluster_pb2_grpc.ClusterStub(self.client(address).channel)
                    reply = stub.GetClusterMap(cluster_pb2.GetClusterMapRequest(), timeout=self.map_timeout)
                except grpc.RpcError as exc:
                    if _unclustered(exc):  # a server from before clusters: it serves every shop
                        reply = cluster_pb2.GetClusterMapResponse()
                    else:
                        error = exc
                        continue
                self.map_fetches += 1
                routes = Routes(reply, address)
                if best is None or routes.epoch > best.epoch:
                    best = routes
                if routes.epoch >= min_epoch:
                    break
            if best is None:
                assert error is not None
                raise error_from_rpc(error)
            if current is None or best.epoch >= current.epoch:
                self._routes = current = best
            return current

    def _routes_now(self) -> Routes:
        return self._routes or self.refresh()

    def _after_refusal(self, refused: Sequence[tuple[str, str, WrongNode]]) -> list[str]:
        with self._lock:
            self.wrong_node_retries += len(refused)
        routes = self._routes
        if _stale(routes, refused):
            try:
                routes = self.refresh(
                    [wrong.owner_address for _, _, wrong in refused],
                    min_epoch=max(wrong.epoch for _, _, wrong in refused),
                    stale=routes,
                )
            except grpc.RpcError:
                routes = self._routes
        return _reroute(routes, refused)

    def _on_shop(self, shop_id: str, call: Callable[[DispatchClient], _R]) -> _R:
        """Run ``call`` on the owner's client; after a WRONG_NODE refusal, once more on the new owner."""
        address = self._routes_now().address_of(shop_id)
        try:
            return call(self.client(address))
        except grpc.RpcError as exc:
            wrong = wrong_node_of(exc)
            if wrong is None:
                raise
        (retry_at,) = self._after_refusal([(shop_id, address, wrong)])
        try:
            return call(self.client(retry_at))
        except grpc.RpcError as exc:
            again = wrong_node_of(exc)
            if again is None:
                raise
            raise WrongNodeError.of(exc, again) from None

    def _split(
        self,
        items: Sequence[_I],
        shop_of: Callable[[_I], str],
        send: Callable[[DispatchClient, list[_I]], Callable[[], Sequence[_O]]],
        fail: Callable[[_I, status_pb2.Status], _O],
    ) -> list[_O]:
        """As ``AsyncClusterClient._split``; ``send`` starts a node's call and returns its waiter."""
        if not items:
            return []
        split = _Split(len(items))
        shops = [shop_of(item) for item in items]
        routes = self._routes_now()
        self._send_split(split, items, list(range(len(items))), [routes.address_of(s) for s in shops], send, fail)
        if split.refused:
            refused = [(shops[i], address, wrong) for i, address, wrong in split.refused]
            targets = self._after_refusal(refused)
            indexes = [i for i, _, _ in split.refused]
            self._send_split(split, items, indexes, targets, send, fail, retrying=True)
        return cast(list[_O], split.result())

    def _send_split(
        self,
        split: _Split,
        items: Sequence[_I],
        indexes: list[int],
        addresses: list[str],
        send: Callable[[DispatchClient, list[_I]], Callable[[], Sequence[_O]]],
        fail: Callable[[_I, status_pb2.Status], _O],
        retrying: bool = False,
    ) -> None:
        groups = {a: [indexes[j] for j in js] for a, js in _group_indexes(addresses).items()}
        started: list[tuple[str, list[int], Callable[[], Sequence[_O]] | grpc.RpcError]] = []
        for address, members in groups.items():  # every node's call is on the wire before waiting
            try:
                started.append((address, members, send(self.client(address), [items[i] for i in members])))
            except grpc.RpcError as exc:
                started.append((address, members, exc))
        for address, members, waiter in started:
            answer: Sequence[_O] | grpc.RpcError
            if isinstance(waiter, grpc.RpcError):
                answer = waiter
            else:
                try:
                    answer = waiter()
                except grpc.RpcError as exc:
                    answer = exc
            split.answered(members, address, answer, items, fail, retrying)

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close every node's client."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    @raises_dispatch_errors
    def wait_ready(self, timeout: float = 10.0) -> None:
        """Fetch the map and wait until every node's channel is connected."""
        for address in self.refresh().addresses:
            self.client(address).wait_ready(timeout)

    # ------------------------------------------------------------ Dispatch

    @raises_dispatch_errors
    def dispatch(
        self, shop_id: str, buyer_id: str = "", conversation_id: str = "", **fields: Any
    ) -> dispatch_pb2.DispatchResponse:
        return self._on_shop(shop_id, lambda c: c.dispatch(shop_id, buyer_id, conversation_id, **fields))

    @raises_dispatch_errors
    def dispatch_batch(self, requests: Iterable[dispatch_pb2.DispatchRequest]) -> list[dispatch_pb2.DispatchResponse]:
        """DispatchBatch split by node (concurrently); the responses in request order (see
        ``AsyncClusterClient.dispatch_batch``)."""
        return self._split(list(requests), lambda r: r.shop_id, _dispatch_batch_on, _dispatch_error)

    @raises_dispatch_errors
    def dispatch_stream(
        self, batches: Iterable[Sequence[dispatch_pb2.DispatchRequest]]
    ) -> Iterator[list[dispatch_pb2.DispatchResponse]]:
        """Each batch as a ``dispatch_batch``, one after another; yields each answer in order."""
        for batch in batches:
            yield self.dispatch_batch(batch)

    @raises_dispatch_errors
    def set_presence(
        self, shop_id: str, agent_id: str, presence: EnumArg, client: EnumArg = 0, *, at: Time = None
    ) -> dispatch_pb2.SetPresenceResponse:
        return self._on_shop(shop_id, lambda c: c.set_presence(shop_id, agent_id, presence, client, at=at))

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
        return self._on_shop(
            shop_id,
            lambda c: c.report_conversation(
                shop_id,
                conversation_id,
                event,
                buyer_id=buyer_id,
                agent_id=agent_id,
                to_agent_id=to_agent_id,
                to_group_id=to_group_id,
                at=at,
            ),
        )

    @raises_dispatch_errors
    def claim_from_pool(
        self, shop_id: str, agent_id: str, conversation_id: str = "", *, at: Time = None
    ) -> dispatch_pb2.ClaimFromPoolResponse:
        return self._on_shop(shop_id, lambda c: c.claim_from_pool(shop_id, agent_id, conversation_id, at=at))

    @raises_dispatch_errors
    def operate(self, operations: Iterable[dispatch_pb2.Operation]) -> dispatch_pb2.OperateResponse:
        """Operate split by node (concurrently); one ``OperationResult`` per operation, in order
        (see ``AsyncClusterClient.operate``)."""
        results = self._split(list(operations), _shop_of_operation, _operate_on, _operation_error)
        return dispatch_pb2.OperateResponse(results=results)

    @raises_dispatch_errors
    def operate_stream(
        self, batches: Iterable[Sequence[dispatch_pb2.Operation]]
    ) -> Iterator[dispatch_pb2.OperateResponse]:
        """Each batch as an ``operate``, one after another; yields each answer in order."""
        for batch in batches:
            yield self.operate(batch)

    def pipeline(self) -> Pipeline:
        """An explicit batch, as ``DispatchClient.pipeline()``: the block's operations are split
        by node when it ends (one ``operate``), each future gets its own answer."""
        return Pipeline(lambda request: self.operate(request.operations))

    @raises_dispatch_errors
    def watch_assignments(self, *shop_ids: str) -> ClusterWatch:
        """Watch the hand-outs of ``shop_ids`` (every shop when none is named) on every node that
        owns some, merged into one iterator; returns once every node's watch is registered."""
        watch = ClusterWatch(self, shop_ids)
        watch._start()
        return watch

    # ------------------------------------------------------------ Admin

    @raises_dispatch_errors
    def put_shop(self, shop: admin_pb2.ShopConfig | None = None, **fields: Any) -> admin_pb2.ShopConfig:
        config = _build(admin_pb2.ShopConfig, shop, fields)
        return self._on_shop(config.shop_id, lambda c: c.put_shop(config))

    @raises_dispatch_errors
    def delete_shop(self, shop_id: str) -> None:
        self._on_shop(shop_id, lambda c: c.delete_shop(shop_id))

    @raises_dispatch_errors
    def put_agent(self, agent: admin_pb2.Agent | None = None, **fields: Any) -> None:
        message = _build(admin_pb2.Agent, agent, fields)
        self._on_shop(message.shop_id, lambda c: c.put_agent(message))

    @raises_dispatch_errors
    def delete_agent(self, shop_id: str, agent_id: str) -> None:
        self._on_shop(shop_id, lambda c: c.delete_agent(shop_id, agent_id))

    @raises_dispatch_errors
    def put_group(self, group: admin_pb2.Group | None = None, **fields: Any) -> None:
        message = _build(admin_pb2.Group, group, fields)
        self._on_shop(message.shop_id, lambda c: c.put_group(message))

    @raises_dispatch_errors
    def delete_group(self, shop_id: str, group_id: str) -> None:
        self._on_shop(shop_id, lambda c: c.delete_group(shop_id, group_id))

    @raises_dispatch_errors
    def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None:
        self._on_shop(shop_id, lambda c: c.set_exclusive_agent(shop_id, buyer_id, agent_id))

    @raises_dispatch_errors
    def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None:
        self._on_shop(shop_id, lambda c: c.delete_exclusive_agent(shop_id, buyer_id))

    @raises_dispatch_errors
    def get_shop_state(self, shop_id: str, page_size: int = 0, page_token: str = "") -> admin_pb2.ShopState:
        return self._on_shop(shop_id, lambda c: c.get_shop_state(shop_id, page_size, page_token))

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
        """Every shop of every node, sorted (the nodes are asked concurrently)."""
        routes = self._routes_now()
        request = admin_pb2.ListShopsRequest()
        futures = [self.client(a).admin_stub.ListShops.future(request, timeout=self.timeout) for a in routes.addresses]
        return sorted({shop for future in futures for shop in future.result().shop_ids})

    @raises_dispatch_errors
    def get_conversation(self, shop_id: str, conversation_id: str) -> admin_pb2.GetConversationResponse:
        return self._on_shop(shop_id, lambda c: c.get_conversation(shop_id, conversation_id))

    @raises_dispatch_errors
    def get_buyer(self, shop_id: str, buyer_id: str) -> admin_pb2.GetBuyerResponse:
        return self._on_shop(shop_id, lambda c: c.get_buyer(shop_id, buyer_id))


def _dispatch_batch_on(
    client: DispatchClient, requests: list[dispatch_pb2.DispatchRequest]
) -> Callable[[], Sequence[dispatch_pb2.DispatchResponse]]:
    future = client.dispatch_stub.DispatchBatch.future(
        dispatch_pb2.DispatchBatchRequest(requests=requests), timeout=client.timeout
    )
    return lambda: future.result().responses


def _operate_on(
    client: DispatchClient, operations: list[dispatch_pb2.Operation]
) -> Callable[[], Sequence[dispatch_pb2.OperationResult]]:
    future = client.dispatch_stub.Operate.future(
        dispatch_pb2.OperateRequest(operations=operations), timeout=client.timeout
    )
    return lambda: future.result().results


class ClusterWatch:
    """The blocking twin of ``AsyncClusterWatch``: ``for assignment in watch`` (one reader
    thread per node's stream)."""

    def __init__(self, owner: ClusterClient, shop_ids: Sequence[str]) -> None:
        self._owner = owner
        self._shops = tuple(shop_ids)
        self._queue: queue.Queue[Any] = queue.Queue(_WATCH_QUEUE)
        self._watches: list[Watch] = []
        self._lock = threading.Lock()
        self._running = 0
        self._done = False
        self._cancelled = threading.Event()

    @property
    def watches(self) -> list[Watch]:
        """The per-node watches open now."""
        return list(self._watches)

    def _start(self) -> None:
        if self._shops:
            groups = self._owner._routes_now().group(self._shops)
        else:
            groups = {address: [] for address in self._owner.refresh().addresses}
        try:
            self._open(groups, retry=True)
        except BaseException:
            self.cancel()
            raise

    def _open(self, groups: dict[str, list[str]], retry: bool) -> None:
        """As ``AsyncClusterWatch._open``: a reader thread per node's registered watch."""
        calls: list[tuple[str, list[str], Any]] = []  # Any: the stubs type the call as a plain iterator
        for address, shops in groups.items():  # every call starts before any is waited for
            stub = self._owner.client(address).dispatch_stub
            request = dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=shops)
            calls.append((address, shops, stub.WatchAssignmentBatches(request)))
        refused: list[tuple[str, str, WrongNode]] = []
        failure: BaseException | None = None
        for address, shops, call in calls:
            watch = Watch(call).ready()
            if call.done() and call.code() != grpc.StatusCode.OK:  # refused on arrival; the call is its error
                wrong = wrong_node_of(call)
                if wrong is not None and retry and shops:
                    refused.extend((shop, address, wrong) for shop in shops)
                elif failure is None:
                    failure = call
                continue
            with self._lock:
                self._watches.append(watch)
                self._running += 1
            thread = threading.Thread(
                target=self._read, args=(address, shops, watch, retry), name=f"watch-{address}", daemon=True
            )
            thread.start()
        if failure is not None:
            raise error_from_rpc(failure)
        if refused:
            targets = self._owner._after_refusal(refused)
            self._open(_regroup([shop for shop, _, _ in refused], targets), retry=False)

    def _put(self, item: Any) -> None:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _read(self, address: str, shops: list[str], watch: Watch, retry: bool) -> None:
        error: BaseException | None = None
        try:
            for assignment in watch:
                self._put(assignment)
        except grpc.RpcError as exc:
            error = exc
            wrong = wrong_node_of(exc)
            if wrong is not None and retry and shops and not self._cancelled.is_set():
                # The map was stale: watch these shops on their owners instead (once).
                targets = self._owner._after_refusal([(shop, address, wrong) for shop in shops])
                try:
                    self._open(_regroup(shops, targets), retry=False)
                    error = None
                except grpc.RpcError as again:
                    error = again
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if error is not None:
            self._put(error)
        elif last:
            self._put(_END)

    def __iter__(self) -> Iterator[dispatch_pb2.Assignment]:
        return self

    def __next__(self) -> dispatch_pb2.Assignment:
        return self.next()

    def next(self, timeout: float | None = None) -> dispatch_pb2.Assignment:
        """The next assignment, waiting at most ``timeout`` seconds (``queue.Empty`` after that);
        StopIteration once every node's stream ended or on cancel()."""
        if self._done or self._cancelled.is_set():
            raise StopIteration
        item = self._queue.get(timeout=timeout)
        if item is _END or self._cancelled.is_set():
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self.cancel()
            self._done = True
            raise error_from_rpc(item) if isinstance(item, grpc.RpcError) else item
        return cast(dispatch_pb2.Assignment, item)

    def cancel(self) -> None:
        """End every node's watch; the iteration then ends."""
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        for watch in list(self._watches):
            watch.cancel()
        while True:  # wake a reader waiting in next()
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(_END)
                return
            except queue.Full:
                continue

    def __enter__(self) -> ClusterWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
