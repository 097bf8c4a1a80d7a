"""``dispatcher cluster`` (dispatcher/cluster_tools.py, issue 15): maps, HAProxy, ``cluster up``.

- ``cluster map`` writes even maps that read back equal; bad arguments exit 2.
- The HAProxy config passes ``haproxy -c`` wherever it is checked from; partitions.map
  names the owner of every partition.
- A live HAProxy's ``crc32`` converter is zlib's CRC-32 (``partition_of``), for ASCII and
  UTF-8 shop ids, and the generated lookup turns a shop into its owner's backend.
- ``cluster up`` on free loopback ports: every node and HAProxy answer health; calls
  with ``x-dispatch-shop`` reach the shop's owner through HAProxy; a call for a foreign
  shop is FAILED_PRECONDITION with a WRONG_NODE ErrorInfo naming the owner; SIGTERM
  stops every process and exits 0; a node that dies takes the cluster down with exit 1.

HAProxy is Debian's ``haproxy`` (``make test`` installs it).
"""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import ROOT

from dispatcher._gen.dispatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    common_pb2,
    dispatch_pb2,
    dispatch_pb2_grpc,
)
from dispatcher.cli import main
from dispatcher.cluster import ClusterMap, dump_map, even_map, load_map, partition_of
from dispatcher.cluster_tools import (
    ANY_NODE_BACKEND,
    SHOP_HEADER,
    UpOptions,
    backend_name,
    find_haproxy,
    haproxy_config,
    k8s_map,
    local_map,
    partitions_map,
    run_up,
    shop_header_value,
    write_haproxy,
)

HAPROXY = find_haproxy()
FP = grpc.StatusCode.FAILED_PRECONDITION
SHOPS = ["demo", "shop-1", "acme.example", "店铺-北京", "ümlaut-laden", "a b", "x" * 200]


@pytest.fixture(autouse=True)
def _haproxy_installed() -> None:
    assert HAPROXY is not None, "haproxy is not installed: `make test` installs it (apt-get install haproxy)"


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive loopback ports that are free now."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free ports")


def haproxy_check(cfg: Path) -> subprocess.CompletedProcess[str]:
    assert HAPROXY is not None
    return subprocess.run([HAPROXY, "-c", "-f", str(cfg)], cwd="/", capture_output=True, text=True, timeout=30)


# ------------------------------------------------------------------ maps


def test_cluster_map_writes_even_maps_that_read_back_equal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.toml"
    assert main(["cluster", "map", "--nodes", "3", "--partitions", "64", "--epoch", "7", "--out", str(out)]) == 0
    written = load_map(out)
    assert written == ClusterMap.of(64, 7, local_map(3, 50061, 64).nodes)
    assert [n.name for n in written.nodes] == ["dispatch-0", "dispatch-1", "dispatch-2"]
    assert [n.address for n in written.nodes] == ["127.0.0.1:50061", "127.0.0.1:50062", "127.0.0.1:50063"]
    assert [n.ranges for n in written.nodes] == [((0, 21),), ((21, 42),), ((42, 64),)]
    assert dump_map(written) == out.read_text()

    capsys.readouterr()
    assert main(["cluster", "map", "--names", "a,b", "--addresses", "10.0.0.1:7000,10.0.0.2:7000"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "ab.toml").write_text(printed)
    assert load_map(tmp_path / "ab.toml") == even_map([("a", "10.0.0.1:7000"), ("b", "10.0.0.2:7000")])

    assert main(["cluster", "map", "--names", "a,b", "--addresses", "10.0.0.1:7000"]) == 2
    assert "1 addresses for 2 nodes" in capsys.readouterr().err
    assert main(["cluster", "map", "--nodes", "5", "--partitions", "4"]) == 2
    with pytest.raises(SystemExit):  # --nodes or --names, not both
        main(["cluster", "map", "--nodes", "2", "--names", "a,b"])


def test_partitions_map_names_the_owner_of_every_partition_once() -> None:
    cluster = even_map([("n0", "127.0.0.1:1"), ("n1", "127.0.0.1:2"), ("n2", "127.0.0.1:3")], 100)
    lines = partitions_map(cluster).splitlines()
    assert len(lines) == 100
    for p, line in enumerate(lines):
        assert line == f"{p} {backend_name(cluster.owner(p).name)}"
    assert {line.split()[1] for line in lines} == {"node_n0", "node_n1", "node_n2"}
    assert ANY_NODE_BACKEND not in {backend_name(n) for n in cluster.names()}


# ------------------------------------------------------------------ HAProxy config


def test_the_haproxy_config_passes_haproxy_check_from_anywhere(tmp_path: Path) -> None:
    cluster = local_map(3, 50061)
    assert main(["cluster", "map", "--nodes", "3", "--out", str(tmp_path / "cluster.toml")]) == 0
    out = tmp_path / "front"
    assert main(["cluster", "haproxy", "--map", str(tmp_path / "cluster.toml"), "--out", str(out)]) == 0
    text = (out / "haproxy.cfg").read_text()
    assert text == haproxy_config(cluster, 50051, "127.0.0.1")
    assert "bind 127.0.0.1:50051 proto h2" in text
    assert text.count("proto h2 check") == 3 and "resolvers" not in text  # IP literals: no DNS
    assert "timeout server 24h" in text and "timeout client 24h" in text
    checked = haproxy_check(out / "haproxy.cfg")  # from cwd /: partitions.map is found beside the config
    assert checked.returncode == 0, checked.stderr
    # The check is real: without partitions.map the config is refused.
    (out / "partitions.map").unlink()
    refused = haproxy_check(out / "haproxy.cfg")
    assert refused.returncode != 0 and "partitions.map" in refused.stderr

    # Nodes by DNS name (Kubernetes): resolved at run time, so HAProxy starts before they exist.
    cfg, _ = write_haproxy(k8s_map(3), tmp_path / "k8s", 50051, "")
    text = cfg.read_text()
    assert "bind :50051 proto h2" in text and "parse-resolv-conf" in text
    assert "dispatch-2.dispatch.dispatch.svc.cluster.local:50051 proto h2 check resolvers dns" in text
    checked = haproxy_check(cfg)
    assert checked.returncode == 0, checked.stderr


class LiveHaproxy:
    """HAProxy on a free loopback port with ``config`` (the frontend's bind is added)."""

    def __init__(self, directory: Path, frontend: str) -> None:
        self.port = free_ports(1)
        cfg = directory / "live.cfg"
        cfg.write_text(
            "global\n    default-path config\n"
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n"
            f"frontend f\n    bind 127.0.0.1:{self.port}\n{frontend}"
        )
        assert HAPROXY is not None
        self.popen = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                assert self.popen.poll() is None, self.popen.communicate()[1]
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)

    def get(self, headers: dict[str, bytes]) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest("GET", "/")
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            assert response.status == 200
            return response.read().decode()
        finally:
            conn.close()

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.communicate(timeout=10)


def test_haproxy_crc32_is_zlib_crc32_and_the_lookup_finds_the_owner(tmp_path: Path) -> None:
    cluster = local_map(3, 50061, 4096)
    (tmp_path / "partitions.map").write_text(partitions_map(cluster))
    # HAProxy's crc32 of the raw UTF-8 bytes of a header, and the generated config's lookup
    # (percent-decoding, crc32, mod P, partitions.map), answered instead of routed.
    crc = "req.hdr(x-raw),crc32"
    lookup = f"req.hdr({SHOP_HEADER}),url_dec,crc32,mod(4096),map_int(partitions.map,{ANY_NODE_BACKEND})"
    assert f" {lookup} if " in haproxy_config(cluster)
    live = LiveHaproxy(
        tmp_path,
        '    http-request return status 200 content-type text/plain lf-string "%[' + crc + "] %[" + lookup + ']"\n',
    )
    try:
        backends = set()
        for shop in SHOPS:
            value = shop_header_value(shop)
            assert value.isascii() and (value == shop) == bool(re.fullmatch(r"[A-Za-z0-9._~-]+", shop))
            answer = live.get({"x-raw": shop.encode("utf-8"), SHOP_HEADER: value.encode("ascii")})
            crc32, backend = answer.split()
            assert int(crc32) == zlib.crc32(shop.encode("utf-8")), shop
            assert backend == backend_name(cluster.owner(partition_of(shop, 4096)).name), shop
            backends.add(backend)
        assert len(backends) > 1  # the ids are spread over nodes
        # An id that does not decode (a raw "%"): no backend from the map, so any node.
        assert live.get({"x-raw": b"", SHOP_HEADER: b"50%off"}).split() == ["0"]
    finally:
        live.stop()


# ------------------------------------------------------------------ cluster up


class Up:
    """``python -m dispatcher cluster up`` as a subprocess; stdout and stderr are read on threads."""

    def __init__(self, data_root: Path, nodes: int, *extra: str) -> None:
        self.front_port = free_ports(nodes + 1)  # HAProxy, then the nodes
        self.base_port = self.front_port + 1
        self.data_root = data_root
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher",
                "cluster",
                "up",
                "--nodes",
                str(nodes),
                "--data-root",
                str(data_root),
                "--port",
                str(self.front_port),
                "--base-port",
                str(self.base_port),
                "--no-auth",
                "--log-format",
                "json",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)
            if line.startswith("ready;"):
                self._ready.set()
        self._ready.set()  # the process ended

    def wait_ready(self, timeout: float = 60) -> ClusterMap:
        assert self._ready.wait(timeout), "cluster up did not get ready"
        assert self.popen.poll() is None, "".join(self.err)
        return load_map(self.data_root / "cluster.toml")

    @property
    def front(self) -> str:
        return f"127.0.0.1:{self.front_port}"

    def children(self) -> list[int]:
        """The pids of the processes ``cluster up`` started."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == self.popen.pid:
                    pids.append(int(entry.name))
        return pids

    def finish(self, timeout: float = 60) -> int:
        code = self.popen.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # its children get SIGTERM (PR_SET_PDEATHSIG)
            self.popen.wait(10)


@pytest.fixture
def up3(tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path / "cluster", 3)
    try:
        yield up
    finally:
        up.kill()


def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def shop_of(cluster: ClusterMap, node: str, prefix: str = "shop") -> str:
    """The first ``<prefix>-i`` that ``node`` owns."""
    return next(f"{prefix}-{i}" for i in range(10_000) if cluster.owner_of(f"{prefix}-{i}").name == node)


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call's google.rpc.Status (trailing grpc-status-details-bin)."""
    trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == FP.value[0] and len(status.details) == 1, status
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_cluster_up_routes_each_shop_to_its_owner_and_stops_on_sigterm(up3: Up) -> None:
    cluster = up3.wait_ready()
    assert [n.address for n in cluster.nodes] == [f"127.0.0.1:{up3.base_port + i}" for i in range(3)]
    assert all(serving(n.address) for n in cluster.nodes) and serving(up3.front)
    shops = {n.name: shop_of(cluster, n.name) for n in cluster.nodes}
    # And a UTF-8 id, whose metadata value is percent-encoded (gRPC metadata is ASCII).
    utf8 = shop_of(cluster, "dispatch-2", "店铺")
    front = grpc.insecure_channel(up3.front)
    d, a = dispatch_pb2_grpc.DispatchStub(front), admin_pb2_grpc.AdminStub(front)
    for node, shop in [*shops.items(), ("dispatch-2", utf8)]:
        md = ((SHOP_HEADER, shop_header_value(shop)),)
        # Routed by the metadata: the node that answers is the owner.
        answered = cluster_pb2_grpc.ClusterStub(front).GetClusterMap(
            cluster_pb2.GetClusterMapRequest(), metadata=md, timeout=10
        )
        assert answered.node == node and ClusterMap.from_pb(answered) == cluster
        a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=shop)), metadata=md)
        agent = admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:a", max_capacity=5)
        a.PutAgent(admin_pb2.PutAgentRequest(agent=agent), metadata=md)
        presence = common_pb2.PRESENCE_ONLINE
        d.SetPresence(
            dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=f"{shop}:a", presence=presence), metadata=md
        )
        answer = d.Dispatch(dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="b", conversation_id="c"), metadata=md)
        assert answer.agent_id == f"{shop}:a"
    # Each shop landed on its owner only.
    for node in cluster.nodes:
        with grpc.insecure_channel(node.address) as channel:
            listed = admin_pb2_grpc.AdminStub(channel).ListShops(admin_pb2.ListShopsRequest(), timeout=10)
            assert sorted(listed.shop_ids) == sorted([shops[node.name]] + [utf8] * (node.name == "dispatch-2"))
            # Straight to a node that does not own the shop: WRONG_NODE naming the owner.
            foreign = shops[cluster.nodes[(cluster.nodes.index(node) + 1) % 3].name]
            owner = cluster.owner_of(foreign)
            with pytest.raises(grpc.RpcError) as refused:
                dispatch_pb2_grpc.DispatchStub(channel).Dispatch(
                    dispatch_pb2.DispatchRequest(shop_id=foreign, buyer_id="b", conversation_id="c2"), timeout=10
                )
            assert refused.value.code() == FP
            info = error_info(refused.value)
            assert (info.reason, info.domain) == ("WRONG_NODE", "dispatch.v1")
            assert info.metadata["owner"] == owner.name and info.metadata["owner_address"] == owner.address
            assert info.metadata["partition"] == str(partition_of(foreign, cluster.partition_count))
    # Through HAProxy without the metadata: round robin over the nodes, so 3 calls reach all
    # three; the two that do not own the shop answer WRONG_NODE, which names the owner.
    shop = shops["dispatch-1"]
    outcomes = []
    for i in range(3):
        try:
            d.Dispatch(
                dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id=f"r{i}", conversation_id=f"r{i}"), timeout=10
            )
            outcomes.append("ok")
        except grpc.RpcError as exc:
            assert exc.code() == FP
            assert error_info(exc).metadata["owner"] == "dispatch-1"
            outcomes.append("wrong_node")
    assert sorted(outcomes) == ["ok", "wrong_node", "wrong_node"]
    front.close()

    children = up3.children()
    assert len(children) == 4  # three nodes and HAProxy
    up3.popen.send_signal(signal.SIGTERM)
    assert up3.finish() == 0, "".join(up3.err)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    log = "".join(up3.err)
    assert log.count('"event": "server.stopped"') == 3 and '"event": "cluster.stopped"' in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", up3.front_port), 1).close()


def test_cluster_up_stops_everything_and_fails_when_a_node_dies(tmp_path: Path) -> None:
    up = Up(tmp_path / "cluster", 2)
    try:
        cluster = up.wait_ready()
        children = up.children()
        assert len(children) == 3 and all(serving(n.address) for n in cluster.nodes)
        victim = next(pid for pid in children if b"dispatch-1" in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.kill(victim, signal.SIGKILL)
        assert up.finish(60) == 1
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert "dispatch-1 exited on its own" in "".join(up.err)
    finally:
        up.kill()


def test_cluster_up_refuses_a_data_root_of_another_cluster(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(dump_map(local_map(2, 50061)))
    code = run_up(UpOptions(nodes=3, data_root=tmp_path, no_auth=True))
    assert code == 2
    assert not (tmp_path / "dispatch-0").exists() and not (tmp_path / "haproxy").exists()
