"""dispatcher/cluster.py and a node's refusals (issue 15).

- The map: partitions by CRC32 mod P, TOML round trip, errors that name the
  place, even splits.
- A node (both engines) serves only its partitions' shops: every kind of call
  for another node's shop gets FAILED_PRECONDITION with a WRONG_NODE
  ``google.rpc.ErrorInfo`` naming the owner; in a batch only that operation
  fails; an unknown shop of its own partitions is still NOT_FOUND.
- ``dispatcher serve --cluster-map --node``: GetClusterMap, refusals at start.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from server_fixtures import ROOT, Proc, ThreadedServer

from dispatcher._gen.dispatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    dispatch_pb2,
    dispatch_pb2_grpc,
)
from dispatcher.cluster import (
    NODE_RECORD,
    ClusterMap,
    ClusterMapError,
    Membership,
    Node,
    NodeRecord,
    WrongNodeError,
    dump_map,
    even_map,
    load_map,
    parse_ranges,
    partition_of,
)

ONLINE = 1
NODES = [("dispatch-0", "127.0.0.1:50061"), ("dispatch-1", "127.0.0.1:50062"), ("dispatch-2", "127.0.0.1:50063")]


def _shops(membership: Membership, mine: bool, n: int) -> list[str]:
    """``n`` shop ids this node owns (``mine``) or does not."""
    out = []
    i = 0
    while len(out) < n:
        shop_id = f"shop-{i}"
        if membership.owns(shop_id) == mine:
            out.append(shop_id)
        i += 1
    return out


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    assert len(status.details) == 1, status
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def _call_status(exc: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status of a failed call (grpc-status-details-bin)."""
    trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert "grpc-status-details-bin" in trailers, trailers
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == exc.code().value[0] and status.message == exc.details()  # type: ignore[attr-defined]
    return status


# ------------------------------------------------------------------ the map


def test_a_shop_partition_is_crc32_of_its_utf8_bytes_mod_p() -> None:
    for shop_id in ["a", "shop-1", "店铺-旗舰", "x" * 64]:
        assert partition_of(shop_id, 4096) == zlib.crc32(shop_id.encode("utf-8")) % 4096
    assert partition_of("shop-1", 1) == 0
    # Fixed values (CRC-32/IEEE): any client language computes the same.
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert partition_of("123456789", 4096) == 0xCBF43926 % 4096


def test_even_maps_cover_every_partition_once_and_round_trip_through_toml(tmp_path: Path) -> None:
    cluster = even_map(NODES, 4096, epoch=7)
    sizes = [sum(end - start for start, end in node.ranges) for node in cluster.nodes]
    assert sum(sizes) == 4096 and max(sizes) - min(sizes) <= 1
    path = tmp_path / "map.toml"
    path.write_text(dump_map(cluster))
    assert load_map(path) == cluster
    assert ClusterMap.from_pb(cluster.to_pb("dispatch-1")) == cluster
    for shop_id in ["shop-1", "shop-2", "shop-3", "店铺"]:
        third = partition_of(shop_id, 4096) * 3 // 4096  # contiguous thirds, in order
        assert cluster.owner_of(shop_id).name == NODES[third][0]
    assert parse_ranges("0-9, 12,20-21") == ((0, 10), (12, 13), (20, 22))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'partitions = 8\nepoch = 1\n[[nodes]]\nname = "a"\naddress = "h:1"\npartitions = "0-6"\n',
            "partitions 7 are owned by no node",
        ),
        (
            'partitions = 8\nepoch = 1\n[[nodes]]\nname = "a"\naddress = "h:1"\npartitions = "0-7"\n'
            '[[nodes]]\nname = "b"\naddress = "h:2"\npartitions = "3"\n',
            "nodes[1].partitions: partition 3 is also owned by 'a'",
        ),
        ('partitions = 8\nepoch = 1\n[[nodes]]\nname = "a"\naddress = "h"\npartitions = "0-7"\n', "nodes[0].address"),
        ('partitions = 8\nepoch = 0\n[[nodes]]\nname = "a"\naddress = "h:1"\npartitions = "0-7"\n', "epoch"),
        ('partitions = 8\nepoch = 1\n[[nodes]]\nname = "a"\naddress = "h:1"\npartitions = "0-8"\n', "outside 0-7"),
        ('partitions = 8\nepoch = 1\nnode = "x"\n', "unknown keys ['node']"),
        (
            'partitions = 8\nepoch = 1\n[[nodes]]\nname = "a"\naddress = "h:1"\npartitions = "x"\n',
            "nodes[0].partitions",
        ),
        ('partitions = 8\nepoch = 1\n[[nodes]]\nname = "a b"\naddress = "h:1"\npartitions = "0-7"\n', "nodes[0].name"),
    ],
)
def test_a_bad_map_is_refused_naming_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.toml"
    path.write_text(text)
    with pytest.raises(ClusterMapError) as info:
        load_map(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_node_not_in_the_map_is_refused() -> None:
    with pytest.raises(ClusterMapError, match="'dispatch-9' is not in the cluster map"):
        Membership(even_map(NODES, 64), "dispatch-9")


# ------------------------------------------------------------------ the engines


def test_both_engines_answer_wrong_node_for_a_foreign_shop_and_not_found_for_their_own(engine_cls: type) -> None:
    membership = Membership(even_map(NODES, 4096), "dispatch-1")
    engine = engine_cls(0)
    engine.foreign_shop = membership.error
    foreign = _shops(membership, False, 1)[0]
    own = _shops(membership, True, 1)[0]
    with pytest.raises(WrongNodeError) as info:
        engine.dispatch(foreign, "b", "c", 1_700_000_000_000)
    assert info.value.info.metadata["owner"] == membership.map.owner_of(foreign).name
    assert info.value.grpc_status == "FAILED_PRECONDITION"
    with pytest.raises(WrongNodeError):
        engine.set_presence(foreign, "a", ONLINE, 0, 1_700_000_000_000)
    with pytest.raises(Exception) as not_found:
        engine.dispatch(own, "b", "c", 1_700_000_000_000)
    assert type(not_found.value).__name__ == "NotFoundError"
    engine.foreign_shop = None
    with pytest.raises(Exception) as plain:
        engine.dispatch(foreign, "b", "c", 1_700_000_000_000)
    assert type(plain.value).__name__ == "NotFoundError"


# ------------------------------------------------------------------ a node over gRPC


@pytest.fixture
def node(engine_cls: type) -> Any:
    membership = Membership(even_map(NODES, 4096), "dispatch-1")
    running = ThreadedServer(engine_cls(0), membership=membership).start()
    try:
        with grpc.insecure_channel(running.target) as channel:
            yield running, membership, channel
    finally:
        running.stop()


def _put_shop(a: admin_pb2_grpc.AdminStub, d: dispatch_pb2_grpc.DispatchStub, shop_id: str) -> None:
    a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop_id, main_account=shop_id)))
    a.PutAgent(
        admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop_id, agent_id=f"{shop_id}:a", max_capacity=5))
    )
    d.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id=shop_id, agent_id=f"{shop_id}:a", presence=ONLINE))


def test_every_call_for_a_foreign_shop_is_wrong_node_naming_the_owner(node: Any) -> None:
    running, membership, channel = node
    a, d = admin_pb2_grpc.AdminStub(channel), dispatch_pb2_grpc.DispatchStub(channel)
    own = _shops(membership, True, 1)[0]
    _put_shop(a, d, own)
    foreign = _shops(membership, False, 1)[0]
    owner = membership.map.owner_of(foreign)
    calls = {
        "PutShop": lambda: a.PutShop(
            admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=foreign, main_account="m"))
        ),
        "PutAgent": lambda: a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=foreign, agent_id="x"))),
        "GetShopState": lambda: a.GetShopState(admin_pb2.GetShopStateRequest(shop_id=foreign)),
        "DeleteShop": lambda: a.DeleteShop(admin_pb2.DeleteShopRequest(shop_id=foreign)),
        "Dispatch": lambda: d.Dispatch(
            dispatch_pb2.DispatchRequest(shop_id=foreign, buyer_id="b", conversation_id="c")
        ),
        "SetPresence": lambda: d.SetPresence(
            dispatch_pb2.SetPresenceRequest(shop_id=foreign, agent_id="x", presence=ONLINE)
        ),
        "ReportConversation": lambda: d.ReportConversation(
            dispatch_pb2.ReportConversationRequest(shop_id=foreign, conversation_id="c", event=3)
        ),
        "ClaimFromPool": lambda: d.ClaimFromPool(dispatch_pb2.ClaimFromPoolRequest(shop_id=foreign, agent_id="x")),
        "WatchAssignmentBatches": lambda: next(
            iter(d.WatchAssignmentBatches(dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=[own, foreign])))
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name  # type: ignore[attr-defined]
        status = _call_status(info.value)
        meta = _error_info(status).metadata
        assert _error_info(status).reason == "WRONG_NODE" and _error_info(status).domain == "dispatch.v1"
        assert dict(meta) == {
            "shop_id": foreign,
            "partition": str(partition_of(foreign, 4096)),
            "owner": owner.name,
            "owner_address": owner.address,
            "epoch": "1",
        }, name
        assert owner.address in status.message and foreign in status.message
    # Nothing changed: the foreign shop never came to exist here.
    assert a.ListShops(admin_pb2.ListShopsRequest()).shop_ids == [own]
    # An unknown shop of this node's own partitions is NOT_FOUND, as on a single server.
    unknown = _shops(membership, True, 2)[1]
    with pytest.raises(grpc.RpcError) as info:
        d.Dispatch(dispatch_pb2.DispatchRequest(shop_id=unknown, buyer_id="b", conversation_id="c"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_in_a_batch_only_the_foreign_operations_fail(node: Any) -> None:
    running, membership, channel = node
    a, d = admin_pb2_grpc.AdminStub(channel), dispatch_pb2_grpc.DispatchStub(channel)
    own = _shops(membership, True, 1)[0]
    _put_shop(a, d, own)
    foreign = _shops(membership, False, 2)
    requests = [
        dispatch_pb2.DispatchRequest(shop_id=own, buyer_id="b1", conversation_id="c1"),
        dispatch_pb2.DispatchRequest(shop_id=foreign[0], buyer_id="b2", conversation_id="c2"),
        dispatch_pb2.DispatchRequest(shop_id=own, buyer_id="b3", conversation_id="c3"),
        dispatch_pb2.DispatchRequest(shop_id=foreign[1], buyer_id="b4", conversation_id="c4"),
    ]
    batch = d.DispatchBatch(dispatch_pb2.DispatchBatchRequest(requests=requests)).responses
    operated = d.Operate(
        dispatch_pb2.OperateRequest(
            operations=[dispatch_pb2.Operation(dispatch=r) for r in requests[:2]]
            + [
                dispatch_pb2.Operation(
                    set_presence=dispatch_pb2.SetPresenceRequest(shop_id=foreign[1], agent_id="x", presence=ONLINE)
                )
            ]
        )
    ).results
    streamed = list(
        d.OperateStream(iter([dispatch_pb2.OperateRequest(operations=[dispatch_pb2.Operation(dispatch=requests[3])])]))
    )
    assert [r.agent_id for r in batch] == [f"{own}:a", "", f"{own}:a", ""]
    for response, shop_id in [(batch[1], foreign[0]), (batch[3], foreign[1])]:
        assert response.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert _error_info(response.error).metadata["owner"] == membership.map.owner_of(shop_id).name
    assert operated[0].dispatch.agent_id == f"{own}:a"  # c1 again: a retry (§12), answered as it is
    for result, shop_id in [(operated[1], foreign[0]), (operated[2], foreign[1])]:
        assert result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert _error_info(result.error).metadata["owner_address"] == membership.map.owner_of(shop_id).address
    assert _error_info(streamed[0].results[0].error).reason == "WRONG_NODE"


def test_get_cluster_map_answers_the_nodes_map_and_an_empty_one_alone(node: Any) -> None:
    running, membership, channel = node
    answer = cluster_pb2_grpc.ClusterStub(channel).GetClusterMap(cluster_pb2.GetClusterMapRequest())
    assert answer.node == "dispatch-1" and ClusterMap.from_pb(answer) == membership.map
    alone = ThreadedServer().start()
    try:
        with grpc.insecure_channel(alone.target) as ch:
            empty = cluster_pb2_grpc.ClusterStub(ch).GetClusterMap(cluster_pb2.GetClusterMapRequest())
        assert empty.partition_count == 0 and not empty.nodes
    finally:
        alone.stop()


# ------------------------------------------------------------------ dispatcher serve


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", "serve", "--no-auth", "--port", "0", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_serve_refuses_a_node_missing_from_the_map_or_a_map_without_a_node(tmp_path: Path) -> None:
    path = tmp_path / "map.toml"
    path.write_text(dump_map(even_map(NODES, 64)))
    missing = _serve("--cluster-map", str(path), "--node", "dispatch-7")
    assert missing.returncode == 2 and "'dispatch-7' is not in the cluster map" in missing.stdout + missing.stderr
    alone = _serve("--cluster-map", str(path))
    assert alone.returncode == 2 and "--cluster-map and --node go together" in alone.stdout + alone.stderr


def test_a_node_takes_its_own_shops_from_a_shared_bootstrap_and_refuses_a_data_dir_with_foreign_ones(
    tmp_path: Path,
) -> None:
    cluster = even_map(NODES, 4096)
    path = tmp_path / "map.toml"
    path.write_text(dump_map(cluster))
    membership = Membership(cluster, "dispatch-0")
    own, foreign = _shops(membership, True, 2), _shops(membership, False, 2)
    bootstrap = tmp_path / "shops.toml"
    bootstrap.write_text("".join(f'[[shops]]\nshop_id = "{s}"\nmain_account = "{s}"\n' for s in own + foreign))
    data = tmp_path / "data"
    proc = Proc(
        "serve", "--port", "0", "--log-format", "json", "--data-dir", str(data), "--create-data-dir",
        "--bootstrap", str(bootstrap), "--cluster-map", str(path), "--node", "dispatch-0",
    )  # fmt: skip
    try:
        with grpc.insecure_channel(proc.target) as channel:
            shops = admin_pb2_grpc.AdminStub(channel).ListShops(admin_pb2.ListShopsRequest()).shop_ids
        assert sorted(shops) == sorted(own)
        started = proc.events("server.started")[0]
        assert started["node"] == "dispatch-0" and started["epoch"] == 1
    finally:
        proc.popen.terminate()
        proc.popen.wait(30)
    # The same data dir under a map where another node owns those shops: refused, nothing served.
    moved = ClusterMap.of(
        4096, 2, [Node("dispatch-0", "127.0.0.1:1", ((0, 1),)), Node("dispatch-1", "127.0.0.1:2", ((1, 4096),))]
    )
    path.write_text(dump_map(moved))
    refused = _serve(
        "--data-dir", str(data), "--cluster-map", str(path), "--node", "dispatch-0", "--log-format", "json"
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "cluster.foreign_shops" in refused.stdout + refused.stderr


def test_a_nodes_data_dir_refuses_a_stale_map_another_partition_count_or_another_node(tmp_path: Path) -> None:
    """The epoch fences stale maps (CLUSTER.md): a node's data dir records the node, epoch and
    partition count it was served with (``CLUSTER``); a start with an older map, another P or as
    another node is refused (exit 3) and changes nothing; a newer epoch is recorded."""
    data, path = tmp_path / "data", tmp_path / "map.toml"
    record = data / NODE_RECORD

    def start(cluster: ClusterMap, node: str = "dispatch-0", *extra: str) -> Proc:
        path.write_text(dump_map(cluster))
        return Proc(
            "serve", "--port", "0", "--log-format", "json", "--data-dir", str(data), *extra,
            "--cluster-map", str(path), "--node", node,
        )  # fmt: skip

    def stop(proc: Proc) -> None:
        proc.port()  # started (its checks passed)
        assert proc.finish(signal.SIGTERM) == 0

    def refused(cluster: ClusterMap, node: str = "dispatch-0") -> str:
        path.write_text(dump_map(cluster))
        before = {p.name: p.read_bytes() for p in data.iterdir()}
        done = _serve("--data-dir", str(data), "--cluster-map", str(path), "--node", node, "--log-format", "json")
        assert done.returncode == 3, done.stdout + done.stderr
        assert "cluster.refused" in done.stdout + done.stderr
        assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # a refused start changes no file
        return done.stdout + done.stderr

    stop(start(even_map(NODES, 4096, epoch=2), "dispatch-0", "--create-data-dir"))
    assert NodeRecord.from_json(record.read_bytes()) == NodeRecord("dispatch-0", 2, 4096)
    assert "a stale map" in refused(even_map(NODES, 4096, epoch=1))
    assert "fixed when a cluster is created" in refused(even_map(NODES, 64, epoch=3))
    # dispatch-1 owning everything: no foreign shop, but the data dir is dispatch-0's.
    everything = ClusterMap.of(4096, 3, [Node("dispatch-1", "127.0.0.1:1", ((0, 4096),))])
    assert "node 'dispatch-0''s, not 'dispatch-1''s" in refused(everything, "dispatch-1")
    stop(start(even_map(NODES, 4096, epoch=3)))  # a newer map is taken and recorded
    assert NodeRecord.from_json(record.read_bytes()).epoch == 3
    # Served alone (no map): allowed, said in the log; the record stays.
    alone = Proc("serve", "--port", "0", "--log-format", "json", "--data-dir", str(data))
    try:
        alone.port()
        assert alone.events("cluster.data_dir_of_a_node")[0]["node"] == "dispatch-0"
    finally:
        stop(alone)
    # A damaged record is refused, naming the file, until fixed or removed.
    record.write_text("{not json")
    path.write_text(dump_map(even_map(NODES, 4096, epoch=3)))
    done = _serve("--data-dir", str(data), "--cluster-map", str(path), "--node", "dispatch-0", "--log-format", "json")
    assert done.returncode == 3 and f"{NODE_RECORD}: not a node record" in done.stdout + done.stderr
