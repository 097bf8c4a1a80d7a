"""The cluster clients (clients/python/dispatch_client/_cluster.py, issue 15) against real nodes.

Three ``dispatcher serve --cluster-map F --node dispatch-i`` processes on free loopback
ports share one module; each test uses shops of its own, chosen so that they land on
the nodes it needs. What is checked:

- calls go to the owner (each node holds only its own shops; ``list_shops`` merges);
- a batch (``dispatch_batch``, ``operate``, the blocking ``pipeline()``) spanning nodes is
  answered in call order;
- a client started on a stale map (partitions moved) gets WRONG_NODE and retries on the
  owner, for unary calls, automatic batches and split batches alike, and adopts the map;
- a watch fans in the hand-outs of shops on two nodes;
- a node that keeps refusing (a fake) raises ``WrongNodeError`` naming the owner after
  exactly one retry; a server outside any cluster takes every call.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from server_fixtures import Proc, ThreadedServer

from dispatch_client import (
    AsyncClusterClient,
    ClusterClient,
    DispatchClient,
    OperationError,
    Routes,
    WrongNodeError,
    dispatch_request,
    partition_of,
    pb,
    wrong_node_of,
)
from dispatcher._gen.dispatch.v1 import cluster_pb2, dispatch_pb2
from dispatcher.cluster import ClusterMap, Node, dump_map, even_map
from dispatcher.cluster import partition_of as server_partition_of

P = 64
ONLINE = pb.Presence.PRESENCE_ONLINE
CLOSED = pb.ConversationEvent.CONVERSATION_EVENT_CLOSED
QUEUED = pb.Reason.REASON_QUEUED


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class Cluster:
    map: ClusterMap
    procs: list[Proc]

    @property
    def seeds(self) -> list[str]:
        return [node.address for node in self.map.nodes]

    def node_of(self, shop: str) -> int:
        owner = self.map.owner_of(shop)
        return self.map.nodes.index(owner)

    def shop_on(self, node: int, prefix: str) -> str:
        """The first ``prefix-k`` that node ``node`` owns."""
        for k in range(10_000):
            shop = f"{prefix}-{k}"
            if self.node_of(shop) == node:
                return shop
        raise AssertionError("no shop found")

    def stale_map(self) -> cluster_pb2.GetClusterMapResponse:
        """The same nodes with their partitions rotated: every shop routes to the wrong node."""
        nodes = self.map.nodes
        moved = [Node(n.name, nodes[(i + 1) % len(nodes)].address, n.ranges) for i, n in enumerate(nodes)]
        return ClusterMap.of(self.map.partition_count, self.map.epoch, moved).to_pb("dispatch-0")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ports = _free_ports(3)
    cmap = even_map([(f"dispatch-{i}", f"127.0.0.1:{port}") for i, port in enumerate(ports)], partition_count=P)
    path = Path(tmp_path_factory.mktemp("cluster")) / "cluster.toml"
    path.write_text(dump_map(cmap))
    procs = [
        Proc(
            "serve",
            *("--port", str(port), "--cluster-map", str(path), "--node", f"dispatch-{i}", "--log-format", "json"),
        )
        for i, port in enumerate(ports)
    ]
    try:
        for proc, port in zip(procs, ports, strict=True):
            assert proc.port() == port, "".join(proc.lines)
        yield Cluster(cmap, procs)
    finally:
        for proc in procs:
            proc.ensure_dead()


async def _dispatch_once(cluster: Cluster, shop: str, buyer: str, conversation: str) -> dispatch_pb2.DispatchResponse:
    async with AsyncClusterClient(cluster.seeds, timeout=10) as client:
        return await client.dispatch(shop, buyer, conversation)


def _direct_shops(address: str) -> list[str]:
    with DispatchClient(address, timeout=10) as direct:
        return direct.list_shops()


async def _setup(client: AsyncClusterClient, shop: str, capacity: int = 1) -> None:
    await client.put_shop(shop_id=shop, main_account=shop)
    await client.put_agent(shop_id=shop, agent_id=f"{shop}:a", max_capacity=capacity)
    await client.set_presence(shop, f"{shop}:a", ONLINE)


def _setup_sync(client: ClusterClient, shop: str, capacity: int = 1) -> None:
    client.put_shop(shop_id=shop, main_account=shop)
    client.put_agent(shop_id=shop, agent_id=f"{shop}:a", max_capacity=capacity)
    client.set_presence(shop, f"{shop}:a", ONLINE)


# ------------------------------------------------------------------ routing


def test_partition_and_routes_match_the_server() -> None:
    cmap = even_map([("a", "h:1"), ("b", "h:2"), ("c", "h:3")], partition_count=4096, epoch=7)
    routes = Routes(cmap.to_pb("b"), "seed:1")
    assert (routes.partition_count, routes.epoch, routes.node) == (4096, 7, "b")
    assert routes.addresses == ("h:1", "h:2", "h:3")
    for shop in ["", "demo", "shop-1", "店铺-42", "x" * 200]:
        assert partition_of(shop, 4096) == server_partition_of(shop, 4096) == zlib.crc32(shop.encode()) % 4096
        assert routes.address_of(shop) == cmap.owner_of(shop).address
    grouped = routes.group(["demo", "shop-1", "demo", "x"])
    assert sorted(s for shops in grouped.values() for s in shops) == ["demo", "shop-1", "x"]
    assert all(cmap.owner_of(s).address == address for address, shops in grouped.items() for s in shops)
    alone = Routes(cluster_pb2.GetClusterMapResponse(), "seed:1")
    assert alone.addresses == ("seed:1",) and alone.address_of("anything") == "seed:1"


async def test_calls_go_to_the_owner_and_batches_answer_in_order(cluster: Cluster) -> None:
    shops = [cluster.shop_on(i, "own") for i in range(3)]
    async with AsyncClusterClient(cluster.seeds[2:] + cluster.seeds[:2], timeout=10) as client:
        assert client.routes is not None and client.routes.epoch == 1 and client.routes.node == "dispatch-2"
        for shop in shops:
            await _setup(client, shop, capacity=10)
        # Each node holds exactly its own shops; the cluster client sees them all.
        for i, address in enumerate(cluster.seeds):
            assert shops[i] in _direct_shops(address)
            assert not {s for j, s in enumerate(shops) if j != i} & set(_direct_shops(address))
        assert set(shops) <= set(await client.list_shops())

        # Automatic batches (one per node) and the unary path both reach the owner.
        answers = await asyncio.gather(*(client.dispatch(s, f"b-{s}", f"c-{s}") for s in shops))
        assert [a.agent_id for a in answers] == [f"{s}:a" for s in shops]
        state = await client.get_shop_state(shops[1])
        assert state.shop_id == shops[1]

        # A batch spanning the three nodes, interleaved: answered in request order.
        requests = [dispatch_request(shops[i % 3], f"bb{i}", f"cb{i}") for i in range(9)]
        batch = await client.dispatch_batch(requests)
        assert [r.conversation_id for r in batch] == [f"cb{i}" for i in range(9)]
        assert [r.agent_id for r in batch] == [f"{shops[i % 3]}:a" for i in range(9)]
        assert not any(r.HasField("error") for r in batch)

        # operate: mixed kinds and nodes, in order; a bad one keeps its own error.
        ops = [
            pb.Operation(dispatch=dispatch_request(shops[2], "bo0", "co0")),
            pb.Operation(
                report_conversation=pb.ReportConversationRequest(shop_id=shops[0], conversation_id="cb0", event=CLOSED)
            ),
            pb.Operation(dispatch=dispatch_request(shops[1], "bo2", "cb1")),  # cb1 is another buyer's: ALREADY_EXISTS
            pb.Operation(dispatch=dispatch_request(shops[0], "bo3", "co3")),
        ]
        result = await client.operate(ops)
        assert [r.WhichOneof("kind") for r in result.results] == ["dispatch", "report_conversation", None, "dispatch"]
        assert result.results[0].dispatch.agent_id == f"{shops[2]}:a"
        assert result.results[2].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        assert result.results[3].dispatch.conversation_id == "co3"
        assert client.wrong_node_retries == 0
        assert set(client.clients()) == set(cluster.seeds)
        node_clients = list(client.clients().values())
    assert client.clients() == {}  # closed, every node's client with it
    for node_client in node_clients:
        with pytest.raises(grpc.aio.UsageError, match="closed"):
            await node_client.list_shops()
    with pytest.raises(RuntimeError, match="closed"):
        await client.dispatch(shops[0], "b", "c")


async def test_a_stale_map_is_corrected_on_wrong_node(cluster: Cluster) -> None:
    shops = [cluster.shop_on(i, "stale") for i in range(3)]
    async with AsyncClusterClient(cluster.seeds, timeout=10) as setup:
        for shop in shops:
            await _setup(setup, shop, capacity=10)

    # Unary calls (auto_batch=False): the call's own WRONG_NODE status.
    client = AsyncClusterClient(cluster.seeds, cluster_map=cluster.stale_map(), auto_batch=False, timeout=10)
    try:
        assert client.routes is not None
        assert client.routes.address_of(shops[0]) == cluster.seeds[1]  # wrong on purpose
        answer = await client.dispatch(shops[0], "b-u", "c-u")
        assert answer.agent_id == f"{shops[0]}:a"
        assert client.wrong_node_retries == 1 and client.map_fetches == 1
        assert client.routes.address_of(shops[0]) == cluster.seeds[0]  # the map was replaced
        await client.dispatch(shops[1], "b-u", "c-u")
        assert client.wrong_node_retries == 1  # no more refusals
    finally:
        await client.close()

    # Automatic batches: the operation's error inside the OperateStream answer.
    client = AsyncClusterClient(cluster.seeds, cluster_map=cluster.stale_map(), timeout=10)
    try:
        answers = await asyncio.gather(*(client.dispatch(s, "b-a", "c-a") for s in shops))
        assert [a.agent_id for a in answers] == [f"{s}:a" for s in shops]
        assert client.wrong_node_retries == 3 and client.map_fetches == 1  # one refresh for the three
    finally:
        await client.close()

    # A split batch: the refused operations go again, to their owners; order holds.
    client = AsyncClusterClient(cluster.seeds, cluster_map=cluster.stale_map(), timeout=10)
    try:
        requests = [dispatch_request(shops[i % 3], f"bs{i}", f"cs{i}") for i in range(6)]
        batch = await client.dispatch_batch(requests)
        assert [(r.conversation_id, r.agent_id) for r in batch] == [(f"cs{i}", f"{shops[i % 3]}:a") for i in range(6)]
        assert not any(r.HasField("error") for r in batch)
        assert client.wrong_node_retries == 6
        ops = [pb.Operation(dispatch=dispatch_request(s, "bo", "co")) for s in reversed(shops)]
        result = await client.operate(ops)
        assert [r.dispatch.agent_id for r in result.results] == [f"{s}:a" for s in reversed(shops)]
        assert client.wrong_node_retries == 6  # the map is right now
    finally:
        await client.close()


async def test_watch_fans_in_from_two_nodes(cluster: Cluster) -> None:
    a, b = cluster.shop_on(0, "watch"), cluster.shop_on(2, "watch")
    async with AsyncClusterClient(cluster.seeds[1], timeout=10) as client:
        for shop in (a, b):
            await _setup(client, shop, capacity=1)
            assert (await client.dispatch(shop, "b1", "c1")).agent_id == f"{shop}:a"
            assert (await client.dispatch(shop, "b2", "c2")).reason == QUEUED
        named = await client.watch_assignments(a, b)
        every = await client.watch_assignments()
        assert len(named.watches) == 2 and len(every.watches) == 3
        for shop in (a, b):  # closing c1 hands c2 out to the agent
            await client.report_conversation(shop, "c1", CLOSED)

        async def two(watch: Any) -> set[tuple[str, str, str]]:
            got = set()
            while len(got) < 2:
                assignment = await asyncio.wait_for(watch.next(), 10)
                got.add((assignment.shop_id, assignment.conversation_id, assignment.agent_id))
            return got

        expected = {(a, "c2", f"{a}:a"), (b, "c2", f"{b}:a")}
        assert await two(named) == expected
        seen = await two(every)
        assert seen == expected
        named.cancel()
        every.cancel()
        assert [x async for x in named] == []  # cancel ends the iteration


async def test_a_watch_on_a_stale_map_moves_to_the_owner(cluster: Cluster) -> None:
    shop = cluster.shop_on(1, "wstale")
    async with AsyncClusterClient(cluster.seeds, timeout=10) as setup:
        await _setup(setup, shop)
        await setup.dispatch(shop, "b1", "c1")
        assert (await setup.dispatch(shop, "b2", "c2")).reason == QUEUED
    client = AsyncClusterClient(cluster.seeds, cluster_map=cluster.stale_map(), timeout=10)
    try:
        async with await client.watch_assignments(shop) as watch:
            # Refused on arrival by the node the stale map named; registered on the owner instead.
            assert client.wrong_node_retries == 1 and len(watch.watches) == 1
            await client.report_conversation(shop, "c1", CLOSED)
            assignment = await asyncio.wait_for(watch.next(), 10)
            assert (assignment.shop_id, assignment.conversation_id) == (shop, "c2")
        assert (await _dispatch_once(cluster, shop, "b3", "c3")).reason == QUEUED
        with ClusterClient(cluster.seeds, cluster_map=cluster.stale_map(), timeout=10) as sync_client:
            with sync_client.watch_assignments(shop) as sync_watch:
                assert sync_client.wrong_node_retries == 1 and len(sync_watch.watches) == 1
                sync_client.report_conversation(shop, "c2", CLOSED)
                assert sync_watch.next(timeout=10).conversation_id == "c3"
    finally:
        await client.close()


# ------------------------------------------------------------------ blocking


def test_blocking_client(cluster: Cluster) -> None:
    shops = [cluster.shop_on(i, "sync") for i in range(3)]
    with ClusterClient(cluster.seeds[0], timeout=10) as client:
        for shop in shops:
            _setup_sync(client, shop, capacity=1)
        assert set(shops) <= set(client.list_shops())
        for i, shop in enumerate(shops):
            assert shop in _direct_shops(cluster.seeds[i])
        assert client.dispatch(shops[0], "b1", "c1").agent_id == f"{shops[0]}:a"

        # A pipeline spanning nodes: one Operate per node, each future its own answer.
        with client.pipeline() as p:
            first = [p.dispatch(s, "b1", "c1") for s in shops[1:]]
            queued = [p.dispatch(s, "b2", "c2") for s in shops]
        assert [f.result().agent_id for f in first] == [f"{s}:a" for s in shops[1:]]
        assert [f.result().reason for f in queued] == [QUEUED] * 3

        with client.watch_assignments(shops[0], shops[2]) as watch:
            assert len(watch.watches) == 2
            batch = client.dispatch_batch([dispatch_request(s, "b1", "c1") for s in shops])  # retries: current state
            assert [r.agent_id for r in batch] == [f"{s}:a" for s in shops]
            for shop in shops:
                client.report_conversation(shop, "c1", CLOSED)
            got = {(x.shop_id, x.conversation_id) for x in (watch.next(timeout=10), watch.next(timeout=10))}
            assert got == {(shops[0], "c2"), (shops[2], "c2")}
            with pytest.raises(queue.Empty):
                watch.next(timeout=0.3)  # shops[1] is not watched
        assert list(watch) == []

    with ClusterClient(cluster.seeds, cluster_map=cluster.stale_map(), timeout=10) as stale:
        state = stale.get_shop_state(shops[1])  # an Admin call, refused, then answered by the owner
        assert state.shop_id == shops[1] and stale.wrong_node_retries == 1
        assert stale.routes is not None and stale.routes.address_of(shops[1]) == cluster.seeds[1]

    with ClusterClient(cluster.seeds, cluster_map=cluster.stale_map(), timeout=10) as stale:
        result = stale.operate([pb.Operation(dispatch=dispatch_request(s, "b9", "c9")) for s in shops])
        assert [r.dispatch.conversation_id for r in result.results] == ["c9"] * 3
        assert not any(r.HasField("error") for r in result.results) and stale.wrong_node_retries == 3


# ------------------------------------------------------------------ a node that keeps refusing


class _Liar:
    """A fake node that answers a one-node map of itself but refuses every shop as WRONG_NODE,
    naming itself the owner: the client's retry is refused too."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        handlers = {
            "GetClusterMap": grpc.unary_unary_rpc_method_handler(
                self.cluster_map,
                request_deserializer=cluster_pb2.GetClusterMapRequest.FromString,
                response_serializer=cluster_pb2.GetClusterMapResponse.SerializeToString,
            )
        }
        dispatch_handlers = {
            "Dispatch": grpc.unary_unary_rpc_method_handler(
                self.dispatch,
                request_deserializer=dispatch_pb2.DispatchRequest.FromString,
                response_serializer=dispatch_pb2.DispatchResponse.SerializeToString,
            ),
            "DispatchBatch": grpc.unary_unary_rpc_method_handler(
                self.dispatch_batch,
                request_deserializer=dispatch_pb2.DispatchBatchRequest.FromString,
                response_serializer=dispatch_pb2.DispatchBatchResponse.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("dispatch.v1.Cluster", handlers),
                grpc.method_handlers_generic_handler("dispatch.v1.Dispatch", dispatch_handlers),
            )
        )
        self.server.start()

    def status(self, shop: str) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason="WRONG_NODE",
            domain="dispatch.v1",
            metadata={
                "shop_id": shop,
                "partition": "0",
                "owner": "liar-1",
                "owner_address": self.address,
                "epoch": "3",
            },
        )
        status = status_pb2.Status(code=9, message=f"shop {shop!r} belongs to node 'liar-1'")
        status.details.add().Pack(info)
        return status

    def cluster_map(self, request: Any, context: grpc.ServicerContext) -> cluster_pb2.GetClusterMapResponse:
        self.calls.append("GetClusterMap")
        return even_map([("liar-1", self.address)], partition_count=1, epoch=3).to_pb("liar-1")

    def dispatch(self, request: dispatch_pb2.DispatchRequest, context: grpc.ServicerContext) -> Any:
        self.calls.append("Dispatch")
        status = self.status(request.shop_id)
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, status.message)

    def dispatch_batch(self, request: dispatch_pb2.DispatchBatchRequest, context: Any) -> Any:
        self.calls.append("DispatchBatch")
        return dispatch_pb2.DispatchBatchResponse(
            responses=[dispatch_pb2.DispatchResponse(error=self.status(r.shop_id)) for r in request.requests]
        )


@pytest.fixture
def liar() -> Iterator[_Liar]:
    fake = _Liar()
    try:
        yield fake
    finally:
        fake.server.stop(None)


def _check_refused(error: WrongNodeError, liar: _Liar) -> None:
    assert isinstance(error, grpc.RpcError) and isinstance(error, OperationError)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (error.owner, error.owner_address, error.epoch, error.shop_id) == ("liar-1", liar.address, 3, "s")
    assert wrong_node_of(error) == error.wrong_node


async def test_a_second_refusal_raises_wrong_node_error_naming_the_owner(liar: _Liar) -> None:
    async with AsyncClusterClient(liar.address, auto_batch=False, timeout=5) as client:
        with pytest.raises(WrongNodeError) as caught:
            await client.dispatch("s", "b", "c")
        _check_refused(caught.value, liar)
        assert liar.calls == ["GetClusterMap", "Dispatch", "GetClusterMap", "Dispatch"]  # retried exactly once
        [answer] = await client.dispatch_batch([dispatch_request("s", "b", "c")])
        info = wrong_node_of(answer.error)
        assert info is not None and info.owner == "liar-1"  # the batch keeps the operation's error
        assert liar.calls[4:] == ["DispatchBatch", "GetClusterMap", "DispatchBatch"]

    with ClusterClient(liar.address, timeout=5) as sync_client:
        with pytest.raises(WrongNodeError) as caught_sync:
            sync_client.dispatch("s", "b", "c")
        _check_refused(caught_sync.value, liar)
        assert sync_client.wrong_node_retries == 1


async def test_a_server_outside_a_cluster_takes_every_call() -> None:
    server = ThreadedServer().start()
    try:
        async with AsyncClusterClient(server.target, timeout=10) as client:
            assert client.routes is not None and client.routes.partition_count == 0
            for shop in ("one", "two"):
                await _setup(client, shop)
            assert (await client.dispatch("two", "b", "c")).agent_id == "two:a"
            assert await client.list_shops() == ["one", "two"]
            assert list(client.clients()) == [server.target]

        with ClusterClient(server.target, timeout=10) as sync_client:
            assert sync_client.list_shops() == ["one", "two"]
            assert sync_client.dispatch("one", "b", "c").agent_id == "one:a"
    finally:
        server.stop()
