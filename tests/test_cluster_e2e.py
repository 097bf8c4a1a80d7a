"""Three `dispatcher serve` nodes on 127.0.0.1 under load, one killed with SIGKILL (issue 15).

- The other nodes' shops see **zero** errors while it is down.
- The killed node's shops fail fast with UNAVAILABLE (no call waits out its
  deadline) and are served again once it restarts on its data dir.
- No acknowledged assignment is lost: every conversation a node answered with
  an agent before the kill is still with that agent after the restart.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import Proc

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.cluster import ClusterMap, dump_map, even_map

ONLINE = 1
NAMES = ["dispatch-0", "dispatch-1", "dispatch-2"]
SHOPS_PER_NODE = 3


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(name: str, port: int, cluster_map: Path, data: Path) -> Proc:
    return Proc(
        "serve", "--port", str(port), "--log-format", "json", "--stats-interval", "0",
        "--data-dir", str(data / name), "--create-data-dir", "--cluster-map", str(cluster_map), "--node", name,
    )  # fmt: skip


def _map_for(ports: list[int]) -> ClusterMap:
    return even_map([(name, f"127.0.0.1:{port}") for name, port in zip(NAMES, ports, strict=True)], 4096)


def _shops_of(cluster: ClusterMap) -> dict[str, list[str]]:
    shops: dict[str, list[str]] = {name: [] for name in NAMES}
    i = 0
    while min(len(v) for v in shops.values()) < SHOPS_PER_NODE:
        shop_id = f"shop-{i}"
        owner = cluster.owner_of(shop_id).name
        if len(shops[owner]) < SHOPS_PER_NODE:
            shops[owner].append(shop_id)
        i += 1
    return shops


class _Load(threading.Thread):
    """Dispatches new conversations to one node's shops, one call at a time, until stopped."""

    def __init__(self, target: str, shops: list[str], tag: str) -> None:
        super().__init__(daemon=True)
        self.target, self.shops, self.tag = target, shops, tag
        self.acknowledged: dict[tuple[str, str], str] = {}  # (shop, conversation) -> agent
        self.errors: list[tuple[float, grpc.StatusCode, float]] = []  # (when, code, how long the call took)
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        with grpc.insecure_channel(self.target) as channel:
            dispatch = dispatch_pb2_grpc.DispatchStub(channel).Dispatch
            while not self.stop.is_set():
                shop_id = self.shops[i % len(self.shops)]
                conversation = f"{self.tag}-{i}"
                started = time.monotonic()
                try:
                    answer = dispatch(
                        dispatch_pb2.DispatchRequest(shop_id=shop_id, buyer_id=f"b-{i}", conversation_id=conversation),
                        timeout=5,
                    )
                    self.acknowledged[(shop_id, conversation)] = answer.agent_id
                except grpc.RpcError as exc:
                    self.errors.append((started, exc.code(), time.monotonic() - started))  # type: ignore[attr-defined]
                    time.sleep(0.01)
                i += 1


def _setup(target: str, shops: list[str]) -> None:
    with grpc.insecure_channel(target) as channel:
        a, d = admin_pb2_grpc.AdminStub(channel), dispatch_pb2_grpc.DispatchStub(channel)
        for shop_id in shops:
            a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop_id, main_account=shop_id)))
            a.PutAgent(
                admin_pb2.PutAgentRequest(
                    agent=admin_pb2.Agent(shop_id=shop_id, agent_id=f"{shop_id}:a", max_capacity=100000)
                )
            )
            d.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id=shop_id, agent_id=f"{shop_id}:a", presence=ONLINE))


def _healthy(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        # wait_for_ready: this process's channels share subchannels, and the one to a
        # restarted node may still be in its reconnect backoff for a moment.
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True
        )
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_kill_9_of_one_node_under_load_touches_only_its_shops_and_loses_nothing(tmp_path: Path) -> None:
    ports = _free_ports(3)
    cluster = _map_for(ports)
    cluster_map = tmp_path / "map.toml"
    cluster_map.write_text(dump_map(cluster))
    nodes = {name: _start(name, port, cluster_map, tmp_path) for name, port in zip(NAMES, ports, strict=True)}
    loads: list[_Load] = []
    try:
        assert [nodes[name].port() for name in NAMES] == ports
        shops = _shops_of(cluster)
        targets = {name: f"127.0.0.1:{port}" for name, port in zip(NAMES, ports, strict=True)}
        for name in NAMES:
            _setup(targets[name], shops[name])
        loads = [_Load(targets[name], shops[name], name) for name in NAMES]
        for load in loads:
            load.start()
        time.sleep(1.0)
        victim = nodes["dispatch-1"]
        killed_at = time.monotonic()
        victim.popen.kill()  # SIGKILL: no final snapshot, no clean close
        victim.popen.wait(10)
        time.sleep(1.0)
        acknowledged_before = dict(loads[1].acknowledged)
        restart = _start("dispatch-1", ports[1], cluster_map, tmp_path)
        nodes["dispatch-1"] = restart
        restarted_target = restart.target
        assert restarted_target == targets["dispatch-1"], restart.lines
        assert _healthy(restarted_target), restart.lines
        # The same load thread goes on: its channel reconnects to the restarted node
        # (after gRPC's reconnect backoff, a second or two).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(k not in acknowledged_before for k in loads[1].acknowledged) < 20:
            time.sleep(0.1)
        for load in loads:
            load.stop.set()
            load.join(10)

        # 1. The other nodes' shops saw no error at all, and kept being served.
        for load in (loads[0], loads[2]):
            assert load.errors == [], load.errors[:3]
            assert len(load.acknowledged) > 50
        # 2. The killed node's shops failed fast with UNAVAILABLE while it was down.
        down = [e for e in loads[1].errors if e[0] >= killed_at - 0.1]
        assert down, "no call reached the dead node"
        assert {code for _, code, _ in down} == {grpc.StatusCode.UNAVAILABLE}, down[:3]
        assert max(took for _, _, took in down) < 1.0  # fast: none waited out its 5 s deadline
        # ... and are served again after the restart (its load thread never stopped).
        served_again = [key for key in loads[1].acknowledged if key not in acknowledged_before]
        assert len(served_again) > 10
        # 3. Nothing acknowledged was lost: every answered conversation is still with its agent.
        assert len(acknowledged_before) > 50
        with grpc.insecure_channel(restarted_target) as channel:
            get = admin_pb2_grpc.AdminStub(channel).GetConversation
            for (shop_id, conversation), agent in acknowledged_before.items():
                state = get(admin_pb2.GetConversationRequest(shop_id=shop_id, conversation_id=conversation))
                assert state.agent_id == agent, (shop_id, conversation)
    finally:
        for load in loads:
            load.stop.set()
        for proc in nodes.values():
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in nodes.values():
            try:
                proc.popen.wait(30)
            except Exception:
                proc.popen.kill()
