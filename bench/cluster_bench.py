"""The "cluster" section of ``make bench`` (issue 15): shops partitioned over nodes.

    .venv/bin/python -m bench.run --cluster-only [--quick]    # this section alone, into RESULTS.md
    .venv/bin/python -m bench.cluster_bench [--quick]         # print the raw JSON

Three clusters run at once on this machine, each node an ordinary ``dispatcher serve``
process (``--cluster-map MAP --node NAME --no-auth --stats-interval 0``, in memory: no data
dir, so no journal and no fsync in any configuration) of 1, 2 and 3 nodes, on the same
shops (``s0`` .. ``s<N-1>`` of ``engine_bench.build_shop``, built in-process by
``node`` below: each node builds only the shops of its partitions). The workload is
bench/lifecycle.py (whole conversations: Dispatch, 3 buyer messages, 3 agent replies,
close, presence churn, returning buyers). The same items go to every cluster (each cluster
has its own state), split by owner with the cluster map (``ClusterMap.owner_of``), as a
smart client routes them.

0. ``verify``: a warm-up through grpc.aio OperateStreams (``cluster_bench load``, core 1),
   every answer parsed: no errors (no WRONG_NODE), the reasons as expected.
1. ``flat``: every node on core 0, h2load on core 1: pre-serialized OperateRequests as gRPC
   frames, one ``h2load -n 1`` stream per node. Rounds alternate the three clusters (the
   machine's drift hits each alike); the figure is operations per node-CPU-second (all the
   cluster's node processes, per-thread schedstat). Three ways: per-node batches, all nodes at
   once (the target); the same, one node at a time; one client's batches split by owner.
2. ``proxy``: the 3-node cluster with HAProxy in front (``write_haproxy`` of
   dispatcher/cluster_tools.py, ``haproxy -db -f cfg``). Unary calls (the lifecycle's 8
   per conversation) straight to the owner vs through HAProxy with ``x-dispatch-shop``
   (``cluster_bench load``): client-observed latency, and CPU per call of the nodes,
   HAProxy and the client. Runs alternate direct and proxy.
3. ``aggregate``: the phase-1 load on the 1-node and the 2-node cluster, nothing pinned:
   operations/s (wall) with both cores shared by nodes and h2load; h2load's CPU and the
   machine's busy/steal time are measured alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import grpc_bench as gb
from bench import lifecycle as lc

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOUR_MS = 3_600_000
OPERATE_STREAM = "/dispatch.v1.Dispatch/OperateStream"
SHOP_HEADER = "x-dispatch-shop"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
COMMANDS: list[str] = []


def log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process: the sum over its threads of ``/proc/<pid>/task/<tid>/schedstat``'s
    time on a CPU (ns; utime+stime of ``/proc/<pid>/stat`` counts in 10 ms ticks, too coarse
    for rounds of a fraction of a second). The nodes' and HAProxy's threads live as long as they do."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except FileNotFoundError:
        total = 0
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ctx_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of all the threads of ``pid``."""
    vol = inv = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    inv += int(line.split()[1])
    return vol, inv


def machine_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all cores from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = f[:8]
    return user + nice + system + irq + softirq, steal, user + nice + system + idle + iowait + irq + softirq + steal


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads started later inherit it from their creator)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), cpus)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


# ===================================================================== a node


def node_main(argv: list[str]) -> int:
    """``python -m bench.cluster_bench node --shops N --contacts C --contacts-at-ms MS --cluster-map F --node X -- serve flags``

    Builds the shops of this node's partitions among ``s0`` .. ``s<N-1>`` (20 agents, the five
    strategies round the shop index, two groups, all online, as ``engine_bench.build_many``),
    then ``C`` recent contacts per shop (buyers ``h<j>``: dispatch, agent reply, close), and
    runs the real ``dispatcher serve`` on that engine with the cluster map."""
    import _fastpath
    from bench import engine_bench as eb
    from dispatcher import cli
    from dispatcher.cluster import Membership, load_map

    own, serve = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="cluster_bench node")
    p.add_argument("--shops", type=int, required=True)
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--contacts", type=int, default=0, help="recent contacts per shop")
    p.add_argument("--contacts-at-ms", type=int, required=True)
    p.add_argument("--capacity", type=int, default=50)
    p.add_argument("--cluster-map", required=True)
    p.add_argument("--node", required=True)
    a = p.parse_args(own)
    membership = Membership(load_map(a.cluster_map), a.node)
    engine = eb.compiled_engine_cls()(7)
    mine = [(i, f"s{i}") for i in range(a.shops) if membership.owns(f"s{i}")]
    for i, shop in mine:
        eb.build_shop(engine, shop, a.agents, eb.STRATEGIES[i % 5], capacity=a.capacity, seed=7 + i)
    at = a.contacts_at_ms
    for j in range(a.contacts):
        for i, shop in mine:  # the same state per shop whichever node holds it
            conv = f"w{j}_{i}"
            engine.dispatch(shop, f"h{j}", conv, at, 1, "", 1 + (j + i) % 5)
            engine.conversation_event(shop, conv, eb.AGENT_REPLY, at)
            engine.conversation_event(shop, conv, eb.CLOSED, at)
        at += 1
    engine.drain_outbox()
    print(f"cluster_bench node {a.node}: {len(mine)} shops", file=sys.stderr, flush=True)
    _fastpath.Engine = lambda seed=0: engine  # type: ignore[assignment,misc]
    return cli.main(["serve", *serve, "--cluster-map", a.cluster_map, "--node", a.node])


# ===================================================================== the load generator


_KIND_FIELD = {"dispatch": 1, "set_presence": 2, "report_conversation": 3}  # dispatch.v1.Operation's oneof


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, data: bytes) -> bytes:
    return bytes([(field << 3) | 2]) + _varint(len(data)) + data


def item_entries(item: lc.Item) -> list[bytes]:
    """An item's operations as ``OperateRequest.operations`` entries (``lifecycle.item_ops``)."""
    out = []
    for kind, msg in lc.item_ops(item):
        out.append(_ld(1, _ld(_KIND_FIELD[kind], msg.SerializeToString())))
    return out


class Enc:
    """One workload item, its operations serialized once as ``OperateRequest.operations`` entries
    (field 1, an ``Operation`` each): a batch is the concatenation of its entries, the same bytes
    as ``lifecycle.operate_batches`` makes, whichever cluster and node the item goes to."""

    __slots__ = ("conv", "ops", "shop")

    def __init__(self, item: lc.Item, ops: list[bytes]) -> None:
        self.shop = item.shop
        self.conv = isinstance(item, lc.Conversation)
        self.ops = ops


def encode(items: Sequence[lc.Item]) -> list[Enc]:
    return [Enc(x, item_entries(x)) for x in items]


def batch_bytes(chunk: Sequence[Enc]) -> bytes:
    """An OperateRequest as ``lifecycle.operate_batches`` orders it: the presence changes, then
    every conversation's 1st operation, then every 2nd, ..."""
    convs = [e.ops for e in chunk if e.conv]
    parts = [e.ops[0] for e in chunk if not e.conv]
    for k in range(lc.OPS_PER_CONVERSATION):
        parts += [c[k] for c in convs]
    return b"".join(parts)


def n_ops(items: Sequence[Enc]) -> int:
    return sum(len(e.ops) for e in items)


def n_conversations(items: Sequence[Enc]) -> int:
    return sum(1 for e in items if e.conv)


def conv_chunks(items: Sequence[Any], per_batch: int) -> Iterator[list[Any]]:
    """Items (``Enc`` or ``lifecycle.Item``) in groups of ``per_batch`` conversations (presence
    changes ride with the next ones), as ``lifecycle.operate_batches`` groups them."""
    chunk: list[Any] = []
    n = 0
    for item in items:
        chunk.append(item)
        if item.conv if isinstance(item, Enc) else isinstance(item, lc.Conversation):
            n += 1
            if n == per_batch:
                yield chunk
                chunk, n = [], 0
    if chunk:
        yield chunk


class Router:
    """Shop -> owner name of one cluster map (the smart client's routing)."""

    def __init__(self, map_path: str) -> None:
        from dispatcher.cluster import load_map

        self.map = load_map(map_path)
        self._owner: dict[str, str] = {}

    def owner(self, shop: str) -> str:
        name = self._owner.get(shop)
        if name is None:
            name = self._owner[shop] = self.map.owner_of(shop).name
        return name

    def split(self, items: Sequence[Enc]) -> dict[str, list[Enc]]:
        out: dict[str, list[Enc]] = {n.name: [] for n in self.map.nodes}
        for item in items:
            out[self.owner(item.shop)].append(item)
        return out

    def node_bodies(self, items: Sequence[Enc], per_batch: int, split: bool) -> dict[str, list[bytes]]:
        """OperateRequests per node: batches of ``per_batch`` conversations of that node's shops
        (``split`` False), or each batch of ``per_batch`` conversations split by owner (True)."""
        if not split:
            return {
                name: [batch_bytes(chunk) for chunk in conv_chunks(mine, per_batch)]
                for name, mine in self.split(items).items()
            }
        out: dict[str, list[bytes]] = {n.name: [] for n in self.map.nodes}
        for chunk in conv_chunks(items, per_batch):
            for name, sub in self.split(chunk).items():
                if sub:
                    out[name].append(batch_bytes(sub))
        return out


class ClusterConn:
    """Channels to the nodes of one cluster (spec: {"label", "map", "nodes": [{"name", "port", "pid"}]})."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import grpc

        self.label = spec["label"]
        self.router = Router(spec["map"])
        self.pids = {n["name"]: n["pid"] for n in spec["nodes"]}
        self.channels = {
            n["name"]: grpc.aio.insecure_channel(f"127.0.0.1:{n['port']}", options=CHANNEL_OPTIONS)
            for n in spec["nodes"]
        }

    async def ready(self) -> None:
        await asyncio.gather(*(c.channel_ready() for c in self.channels.values()))

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    async def close(self) -> None:
        for c in self.channels.values():
            await c.close()


async def send_streams(
    conn: ClusterConn,
    bodies: dict[str, list[bytes]],
    streams: int,
    window: int,
    errors: Counter[str] | None,
    reasons: Counter[str] | None,
) -> None:
    """Every node's batches on ``streams`` OperateStreams per node, ``window`` batches written ahead
    on each, all nodes at once. With ``errors``, every answer is parsed and its errors counted."""
    from dispatcher._gen.dispatch.v1 import common_pb2, dispatch_pb2

    async def one_stream(name: str, mine: list[bytes]) -> None:
        call = conn.channels[name].stream_stream(OPERATE_STREAM)()
        room = asyncio.Semaphore(window)

        async def writer() -> None:
            for body in mine:
                await room.acquire()
                await call.write(body)
            await call.done_writing()

        w = asyncio.ensure_future(writer())
        got = 0
        async for raw in call:
            room.release()
            got += 1
            if errors is not None:
                for r in dispatch_pb2.OperateResponse.FromString(raw).results:
                    if r.HasField("error"):
                        errors[f"{r.error.code}:{r.error.message[:60]}"] += 1
                    elif reasons is not None and r.WhichOneof("kind") == "dispatch":
                        reasons[common_pb2.Reason.Name(r.dispatch.reason)] += 1
        await w
        if got != len(mine):
            raise RuntimeError(f"{conn.label}/{name}: {got} answers to {len(mine)} batches")

    await asyncio.gather(
        *(
            one_stream(name, mine[k::streams])
            for name, mine in bodies.items()
            for k in range(streams)
            if mine[k::streams]
        )
    )


def workload(spec: dict[str, Any], n: int, tag: str, start_ms: int) -> list[lc.Item]:
    """The lifecycle workload over the spec's shops (the same items for every cluster)."""
    return lc.workload(
        n,
        n_shops=spec["shops"],
        contacts_per_shop=spec["contacts"],
        seed=zlib.crc32(tag.encode()),
        tag=tag,
        start_ms=start_ms,
    )


def parts_of(items: list[Enc], rounds: int) -> list[list[Enc]]:
    """``rounds`` contiguous parts with about as many conversations each."""
    chunks = list(conv_chunks(items, max(1, -(-n_conversations(items) // rounds))))
    return chunks[:rounds]


async def phase_verify(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up and check: ``warmup`` conversations to every cluster through grpc.aio OperateStreams
    (per-node batches, routed with the map), every answer parsed: errors and reasons per cluster
    (h2load, which drives the measured rounds, does not read the answers)."""
    conns = [ClusterConn(c) for c in spec["clusters"]]
    await asyncio.gather(*(c.ready() for c in conns))
    items = encode(workload(spec, spec["warmup"], spec["tag"], spec["start_ms"]))
    out: dict[str, Any] = {"conversations": n_conversations(items), "operations": n_ops(items), "clusters": {}}
    for c in conns:
        errors: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        bodies = c.router.node_bodies(items, spec["per_batch"], False)
        await send_streams(c, bodies, spec["streams"], spec["window"], errors, reasons)
        out["clusters"][c.label] = {"errors": dict(errors), "reasons": dict(reasons)}
        log(f"verify {c.label}: {sum(errors.values())} errors, reasons {dict(reasons)}")
        await c.close()
    return out


async def phase_proxy(spec: dict[str, Any]) -> dict[str, Any]:
    """Unary calls (the lifecycle's 8 per conversation + presence changes), straight to the
    owner or through HAProxy, each call carrying ``x-dispatch-shop``; rounds alternate."""
    import grpc

    from dispatcher.cluster_tools import shop_header_value

    conn = ClusterConn(spec["cluster"])
    proxy = grpc.aio.insecure_channel(f"127.0.0.1:{spec['proxy_port']}", options=CHANNEL_OPTIONS)
    await asyncio.gather(conn.ready(), proxy.channel_ready())
    haproxy_pid = spec["proxy_pid"]
    stubs: dict[tuple[str, str], Any] = {}

    def stub(channel_key: str, method: str) -> Any:
        key = (channel_key, method)
        s = stubs.get(key)
        if s is None:
            channel = proxy if channel_key == "" else conn.channels[channel_key]
            s = stubs[key] = channel.unary_unary(method)
        return s

    def calls_of(item: lc.Item) -> list[tuple[str, bytes]]:
        return [(lc.UNARY_METHOD[kind], msg.SerializeToString()) for kind, msg in lc.item_ops(item)]

    async def run(items: list[lc.Item], mode: str, concurrency: int) -> dict[str, Any]:
        todo = [
            (item.shop, conn.router.owner(item.shop), ((SHOP_HEADER, shop_header_value(item.shop)),), calls_of(item))
            for item in items
        ]
        lat: list[float] = []
        errors: Counter[str] = Counter()
        it = iter(todo)

        async def worker() -> None:
            for _shop, owner, metadata, calls in it:
                target = "" if mode == "proxy" else owner
                for method, body in calls:
                    t = time.perf_counter()
                    try:
                        await stub(target, method)(body, metadata=metadata, timeout=30)
                    except grpc.RpcError as e:
                        errors[f"{e.code().name}:{(e.details() or '')[:60]}"] += 1
                        continue
                    lat.append(time.perf_counter() - t)

        cpu0, hp0, me0, t0 = conn.cpu(), cpu_seconds(haproxy_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, me, hp, cpu1 = (
            time.perf_counter() - t0,
            time.process_time() - me0,
            cpu_seconds(haproxy_pid) - hp0,
            conn.cpu(),
        )
        calls = sum(len(x[3]) for x in todo)
        node = sum(cpu1[k] - cpu0[k] for k in cpu0)
        return {
            "mode": mode,
            "concurrency": concurrency,
            "calls": calls,
            "wall_s": wall,
            "calls_per_s": calls / wall,
            "p50_us": pct(lat, 0.5) * 1e6,
            "p99_us": pct(lat, 0.99) * 1e6,
            "node_cpu_us_per_call": node * 1e6 / calls,
            "haproxy_cpu_us_per_call": (hp * 1e6 / calls) if mode == "proxy" else 0.0,
            "haproxy_idle_cpu_us_per_call": (hp * 1e6 / calls) if mode == "direct" else 0.0,
            "client_cpu_us_per_call": me * 1e6 / calls,
            "errors": dict(errors),
        }

    at = spec["start_ms"]
    levels = spec["levels"]  # [[key, concurrency, conversations, spin], ...]
    total = spec["warmup"] + spec["rounds"] * 2 * sum(lv[2] for lv in levels)
    items = workload(spec, total, spec["tag"], at)
    convs = list(conv_chunks(items, 1))
    cursor = 0

    def take(n: int) -> list[lc.Item]:
        nonlocal cursor
        out = [x for chunk in convs[cursor : cursor + n] for x in chunk]
        cursor += n
        return out

    # Warm-up: connections made, HAProxy's backend connections open (retries while it checks its servers).
    warm_convs = convs[cursor : cursor + spec["warmup"]]
    cursor += spec["warmup"]
    for mode in ("direct", "proxy"):
        for _ in range(40):  # a fresh conversation per try (a repeated Dispatch is ALREADY_EXISTS)
            r = await run(warm_convs.pop(0), mode, 1)
            if not r["errors"]:
                break
            await asyncio.sleep(0.25)
        else:
            raise RuntimeError(f"{mode}: calls keep failing: {r['errors']}")
        half = len(warm_convs) // 2
        mine, warm_convs = warm_convs[:half], warm_convs[half:]
        await run([x for chunk in mine for x in chunk], mode, 4)
    res: dict[str, list[dict[str, Any]]] = {}
    for r in range(spec["rounds"]):
        for key, concurrency, n, spin in levels:
            modes = ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct")
            ctx = gb.idle_spinners() if spin else contextlib.nullcontext()
            with ctx:
                for mode in modes:
                    row = await run(take(n), mode, concurrency)
                    res.setdefault(f"{key}:{mode}", []).append(row)
                    log(
                        f"proxy round {r} {key} {mode}: p50 {row['p50_us'] / 1000:.2f} ms p99 {row['p99_us'] / 1000:.2f} ms, "
                        f"node {row['node_cpu_us_per_call']:.0f} µs/call, haproxy {row['haproxy_cpu_us_per_call']:.0f} µs/call"
                    )
    await conn.close()
    await proxy.close()
    return {"runs": res, "levels": levels, "end_ms": at + (total + 10) * lc.MS_PER_CONVERSATION}


def load_main(argv: list[str]) -> int:
    import uvloop

    spec = json.loads(Path(argv[0]).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        res = runner.run(phase_proxy(spec) if spec["phase"] == "proxy" else phase_verify(spec))
    print(json.dumps(res), flush=True)
    return 0


# ===================================================================== the orchestrator


def sizes(quick: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "shops": 300,
        "contacts": 50,
        "partitions": 4096,
        "per_batch": 64,
        "streams": 4,
        "window": 4,
        "node_counts": [1, 2, 3],
        "flat_variants": ["node", "node_seq", "split"],
    }
    if quick:
        cfg.update(
            flat_conversations=20_000,
            flat_rounds=4,
            aggregate_conversations=40_000,
            aggregate_rounds=2,
            proxy_rounds=2,
            proxy_levels=[["seq", 1, 40, False], ["c16", 16, 150, False]],
            proxy_stream_conversations=10_000,
            proxy_stream_rounds=2,
            warmup=1000,
        )
    else:
        cfg.update(
            flat_conversations=150_000,
            flat_rounds=12,
            aggregate_conversations=300_000,
            aggregate_rounds=6,
            proxy_rounds=3,
            proxy_levels=[["seq", 1, 100, False], ["seq_busy", 1, 100, True], ["c16", 16, 500, False]],
            proxy_stream_conversations=40_000,
            proxy_stream_rounds=4,
            warmup=2000,
        )
    return cfg


class Cluster:
    def __init__(self, n: int, root: Path, partitions: int) -> None:
        from dispatcher.cluster import dump_map, even_map

        self.n = n
        self.label = f"{n} node{'s' if n > 1 else ''}"
        self.dir = root / f"c{n}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = [gb.free_port() for _ in range(n)]
        self.map = even_map([(f"n{n}-{i}", f"127.0.0.1:{p}") for i, p in enumerate(self.ports)], partitions)
        self.map_path = self.dir / "cluster.toml"
        self.map_path.write_text(dump_map(self.map))
        self.procs: list[subprocess.Popen[bytes]] = []

    def spec(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "map": str(self.map_path),
            "nodes": [
                {"name": node.name, "port": port, "pid": proc.pid}
                for node, port, proc in zip(self.map.nodes, self.ports, self.procs, strict=True)
            ],
        }

    def pin(self, cpus: set[int]) -> None:
        for proc in self.procs:
            set_affinity(proc.pid, cpus)


@contextlib.contextmanager
def clusters(root: Path, cfg: dict[str, Any], contacts_at: int) -> Iterator[dict[int, Cluster]]:
    out = {n: Cluster(n, root, cfg["partitions"]) for n in cfg["node_counts"]}
    try:
        for c in out.values():
            for node, port in zip(c.map.nodes, c.ports, strict=True):
                cmd = [
                    PY,
                    "-m",
                    "bench.cluster_bench",
                    "node",
                    "--shops",
                    str(cfg["shops"]),
                    "--contacts",
                    str(cfg["contacts"]),
                    "--contacts-at-ms",
                    str(contacts_at),
                    "--cluster-map",
                    str(c.map_path),
                    "--node",
                    node.name,
                    "--",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-auth",
                    "--log-level",
                    "warning",
                    "--stats-interval",
                    "0",
                ]
                COMMANDS.append(shlex.join(cmd))
                with open(c.dir / f"{node.name}.log", "wb") as err:
                    c.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err))
        for c in out.values():
            for port, proc in zip(c.ports, c.procs, strict=True):
                gb.wait_port(port, proc, timeout=120)
        log("nodes up: " + ", ".join(f"{c.label} (pids {[p.pid for p in c.procs]})" for c in out.values()))
        yield out
    finally:
        procs = [p for c in out.values() for p in c.procs]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextlib.contextmanager
def haproxy(cluster: Cluster, root: Path) -> Iterator[tuple[int, int, str]]:
    from dispatcher.cluster_tools import write_haproxy

    port = gb.free_port()
    cfg, _ = write_haproxy(cluster.map, root / "haproxy", port=port, bind_host="127.0.0.1")
    cmd = ["haproxy", "-db", "-f", str(cfg)]
    COMMANDS.append(shlex.join(cmd) + f"   # config: write_haproxy(<{cluster.label} map>, dir, port={port})")
    with open(root / "haproxy.log", "wb") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
    try:
        gb.wait_port(port, proc, timeout=30)
        version = " ".join(subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[:3])
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        log(f"haproxy up on {port} (pid {proc.pid}, {threads} threads)")
        yield port, proc.pid, f"{version}; {threads} threads"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(spec: dict[str, Any], path: Path, cpus: str | None) -> dict[str, Any]:
    path.write_text(json.dumps(spec))
    cmd = (["taskset", "-c", cpus] if cpus else []) + [PY, "-m", "bench.cluster_bench", "load", str(path)]
    COMMANDS.append(shlex.join(cmd) + f"   # phase {spec['phase']}")
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


H2LOAD_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def grpc_frames(bodies: list[bytes]) -> bytes:
    return b"".join(b"\x00" + len(b).to_bytes(4, "big") + b for b in bodies)


def h2load_phase(
    name: str,
    cs: list[Cluster],
    cfg: dict[str, Any],
    *,
    variants: list[str],
    conversations: int,
    rounds: int,
    start_ms: int,
    tmp: Path,
    cpus: str | None,
) -> dict[str, Any]:
    """OperateStream load from h2load (C: about a tenth of a core per node at full speed): for
    each round and cluster, one h2load per node at once (``-n 1 -c 1 -m 1``: one stream carrying
    that node's batches of the round as gRPC frames; HTTP/2 flow control keeps it closed-loop).
    Rounds load the clusters one after the other, the order rotating, on the same items. Around
    each: the CPU time of every node of the cluster, of the h2loads (RUSAGE_CHILDREN), the
    machine's busy and steal time (/proc/stat), the wall time.

    Variants: ``node``: per-node batches of ``per_batch`` conversations, all nodes at once;
    ``node_seq``: the same bodies, one node after the other (the others idle); ``split``: each
    batch of ``per_batch`` conversations split by owner, all nodes at once."""
    import resource

    spec = {"shops": cfg["shops"], "contacts": cfg["contacts"]}
    routers = {c.label: Router(str(c.map_path)) for c in cs}
    out: dict[str, Any] = {"variants": {}}
    at = start_ms
    for variant in variants:
        items = encode(workload(spec, conversations, f"{name}{variant}", at))
        at += (conversations + 10) * lc.MS_PER_CONVERSATION
        rows: dict[str, list[dict[str, Any]]] = {c.label: [] for c in cs}
        for r, part in enumerate(parts_of(items, rounds)):
            ops = n_ops(part)
            files: dict[str, list[tuple[int, Path, int]]] = {}
            node_ops = {c.label: [n_ops(x) for x in routers[c.label].split(part).values()] for c in cs}
            for c in cs:
                bodies = routers[c.label].node_bodies(part, cfg["per_batch"], variant == "split")
                files[c.label] = []
                for node, port in zip(c.map.nodes, c.ports, strict=True):
                    path = tmp / f"{name}-{c.n}-{node.name}.bin"
                    path.write_bytes(grpc_frames(bodies[node.name]))
                    files[c.label].append((port, path, len(bodies[node.name])))
            for c in cs[r % len(cs) :] + cs[: r % len(cs)]:
                cmds = [
                    (["taskset", "-c", cpus] if cpus else [])
                    + ["h2load", "-t", "1", "-c", "1", "-m", "1", "-n", "1", "-d", str(path), *H2LOAD_HEADERS]
                    + [f"http://127.0.0.1:{port}{OPERATE_STREAM}"]
                    for port, path, _ in files[c.label]
                ]
                COMMANDS.append(shlex.join(cmds[0]) + f"   # phase {name}: one per node")
                groups = [[cmd] for cmd in cmds] if variant == "node_seq" else [cmds]
                pids = [proc.pid for proc in c.procs]
                cpu0 = [cpu_seconds(pid) for pid in pids]
                cs0 = [ctx_switches(pid) for pid in pids]
                ru0, jif0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), machine_jiffies(), time.perf_counter()
                for group in groups:
                    procs = [
                        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                        for cmd in group
                    ]
                    for proc in procs:
                        text = proc.communicate(timeout=600)[0]
                        if "1 succeeded" not in text or "1 2xx" not in text:
                            raise RuntimeError(f"h2load: the stream did not succeed:\n{text[-2000:]}")
                wall = time.perf_counter() - t0
                ru1, jif1 = resource.getrusage(resource.RUSAGE_CHILDREN), machine_jiffies()
                node_cpu = [cpu_seconds(pid) - x for pid, x in zip(pids, cpu0, strict=True)]
                cs1 = [ctx_switches(pid) for pid in pids]
                server = sum(node_cpu)
                client = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
                busy, steal, total = (jif1[i] - jif0[i] for i in range(3))
                rows[c.label].append(
                    {
                        "conversations": n_conversations(part),
                        "operations": ops,
                        "batches": sum(x[2] for x in files[c.label]),
                        "wall_s": wall,
                        "server_cpu_s": server,
                        "node_cpu_s": node_cpu,
                        "node_ops": node_ops[c.label],
                        "voluntary_switches": sum(b[0] - a[0] for a, b in zip(cs0, cs1, strict=True)),
                        "involuntary_switches": sum(b[1] - a[1] for a, b in zip(cs0, cs1, strict=True)),
                        "client_cpu_s": client,
                        "ops_per_server_cpu_s": ops / max(1e-9, server),
                        "ops_per_s": ops / wall,
                        "server_cores": server / wall,
                        "client_cores": client / wall,
                        "machine_busy": busy / max(1, total),
                        "machine_steal": steal / max(1, total),
                    }
                )
                log(
                    f"{name} {variant} round {r} {c.label}: {ops / max(1e-9, server):,.0f} ops/server-CPU-s, "
                    f"{ops / wall:,.0f} ops/s, nodes {server / wall:.2f} cores, h2load {client / wall:.2f} cores, "
                    f"machine busy {busy / max(1, total):.0%}"
                )
        out["variants"][variant] = {"rows": rows}
    return out


def proxy_streams(
    c: Cluster, hp_port: int, hp_pid: int, cfg: dict[str, Any], *, start_ms: int, tmp: Path
) -> dict[str, Any]:
    """Batches through HAProxy: per round and mode, one h2load stream per node at once carrying that
    node's OperateRequests of the round, straight to the node or to HAProxy with ``x-dispatch-shop``
    naming one of the node's shops (a stream is routed once, by its headers). Rounds alternate the
    modes, each on items of its own (one cluster). Nothing pinned."""
    from dispatcher.cluster_tools import shop_header_value

    spec = {"shops": cfg["shops"], "contacts": cfg["contacts"]}
    router = Router(str(c.map_path))
    rows: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
    at = start_ms
    n = cfg["proxy_stream_conversations"]
    for r in range(cfg["proxy_stream_rounds"]):
        for mode in ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct"):
            items = encode(workload(spec, n, f"ps{r}{mode}", at))
            at += (n + 10) * lc.MS_PER_CONVERSATION
            cmds, batches = [], 0
            for node, port in zip(c.map.nodes, c.ports, strict=True):
                mine = router.split(items)[node.name]
                bodies = [batch_bytes(chunk) for chunk in conv_chunks(mine, cfg["per_batch"])]
                batches += len(bodies)
                path = tmp / f"ps-{node.name}.bin"
                path.write_bytes(grpc_frames(bodies))
                target = hp_port if mode == "proxy" else port
                cmds.append(
                    ["h2load", "-t", "1", "-c", "1", "-m", "1", "-n", "1", "-d", str(path), *H2LOAD_HEADERS]
                    + ["-H", f"{SHOP_HEADER}: {shop_header_value(mine[0].shop)}"]
                    + [f"http://127.0.0.1:{target}{OPERATE_STREAM}"]
                )
            COMMANDS.append(shlex.join(cmds[0]) + f"   # phase proxy-stream ({mode}): one per node")
            pids = [proc.pid for proc in c.procs]
            cpu0, hp0, t0 = [cpu_seconds(pid) for pid in pids], cpu_seconds(hp_pid), time.perf_counter()
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd in cmds]
            for proc in procs:
                text = proc.communicate(timeout=600)[0]
                if "1 succeeded" not in text or "1 2xx" not in text:
                    raise RuntimeError(f"h2load ({mode}): the stream did not succeed:\n{text[-2000:]}")
            wall = time.perf_counter() - t0
            node = sum(cpu_seconds(pid) - x for pid, x in zip(pids, cpu0, strict=True))
            hp = cpu_seconds(hp_pid) - hp0
            ops = n_ops(items)
            rows[mode].append(
                {
                    "operations": ops,
                    "batches": batches,
                    "wall_s": wall,
                    "ops_per_s": ops / wall,
                    "node_us_per_op": node * 1e6 / ops,
                    "haproxy_us_per_op": hp * 1e6 / ops,
                    "haproxy_us_per_batch": hp * 1e6 / batches,
                }
            )
            log(
                f"proxy-stream round {r} {mode}: node {node * 1e6 / ops:.3f} µs/op, HAProxy {hp * 1e6 / batches:.0f} "
                f"µs/batch, {ops / wall:,.0f} ops/s"
            )
    return {"rows": rows}


def run_cluster(workdir: Path, *, quick: bool) -> dict[str, Any]:
    from bench.lifecycle_bench import Timeline

    missing = [tool for tool in ("h2load", "haproxy") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"the cluster section needs {' and '.join(missing)}: apt-get install nghttp2-client haproxy "
            "(make bench-tools / make test-tools install them)"
        )
    COMMANDS.clear()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = sizes(quick)
    res: dict[str, Any] = {"cfg": cfg, "quick": quick}
    tl = Timeline(budget_ms=12 * HOUR_MS)
    common = {
        "shops": cfg["shops"],
        "contacts": cfg["contacts"],
        "per_batch": cfg["per_batch"],
        "streams": cfg["streams"],
        "window": cfg["window"],
    }
    t_start = time.time()
    with (
        tempfile.TemporaryDirectory(prefix="cluster-", dir=workdir) as tmp,
        clusters(Path(tmp), cfg, tl.contacts_at) as cs,
    ):
        res["shops_per_node"] = {
            c.label: [
                sum(1 for i in range(cfg["shops"]) if c.map.owner_of(f"s{i}").name == node.name) for node in c.map.nodes
            ]
            for c in cs.values()
        }

        # ---- warm-up and check (grpc.aio, answers parsed), then 1. flat: nodes on core 0, h2load on core 1.
        for c in cs.values():
            c.pin({0})
        spec = {
            **common,
            "phase": "verify",
            "clusters": [c.spec() for c in cs.values()],
            "warmup": cfg["warmup"],
            "tag": "v",
            "start_ms": tl.take(cfg["warmup"] + 100),
        }
        log("warm-up and check: every answer parsed")
        res["verify"] = run_load(spec, Path(tmp) / "verify.json", "1")
        n = cfg["flat_conversations"]
        log("phase 1: CPU per operation, 1/2/3 nodes (nodes on core 0, h2load on core 1)")
        res["flat"] = h2load_phase(
            "flat",
            list(cs.values()),
            cfg,
            variants=cfg["flat_variants"],
            conversations=n,
            rounds=cfg["flat_rounds"],
            start_ms=tl.take(len(cfg["flat_variants"]) * (n + 20) + 100),
            tmp=Path(tmp),
            cpus="1",
        )

        # ---- 3. aggregate operations/s, 1 vs 2 nodes, nothing pinned.
        for c in cs.values():
            c.pin({0, 1})
        n = cfg["aggregate_conversations"]
        log("phase 3: aggregate ops/s, 1, 2, 3 nodes (h2load, nothing pinned)")
        res["aggregate"] = h2load_phase(
            "aggregate",
            list(cs.values()),
            cfg,
            variants=["node"],
            conversations=n,
            rounds=cfg["aggregate_rounds"],
            start_ms=tl.take(n + 100),
            tmp=Path(tmp),
            cpus=None,
        )

        # ---- 2. HAProxy in front of the 3-node cluster, unary calls.
        big = cs[max(cs)]
        with haproxy(big, Path(tmp)) as (port, pid, version):
            res["haproxy"] = version
            total = 200 + cfg["proxy_rounds"] * 2 * sum(lv[2] for lv in cfg["proxy_levels"])
            spec = {
                **common,
                "phase": "proxy",
                "cluster": big.spec(),
                "proxy_port": port,
                "proxy_pid": pid,
                "levels": cfg["proxy_levels"],
                "rounds": cfg["proxy_rounds"],
                "warmup": 200,
                "tag": "p",
                "start_ms": tl.take(total + 100),
            }
            log(f"phase 2: unary calls straight to the owner vs through HAProxy ({big.label})")
            res["proxy"] = run_load(spec, Path(tmp) / "proxy.json", None)
            log("phase 2b: OperateStream batches straight to the owner vs through HAProxy")
            n = cfg["proxy_stream_conversations"] * cfg["proxy_stream_rounds"] * 2
            res["proxy_streams"] = proxy_streams(big, port, pid, cfg, start_ms=tl.take(n + 100), tmp=Path(tmp))
    res["elapsed_s"] = time.time() - t_start
    res["commands"] = list(dict.fromkeys(COMMANDS))
    return res


# ===================================================================== figures, targets, RESULTS.md


def flat_summary(res: dict[str, Any], variant: str = "node") -> list[dict[str, Any]]:
    """Per cluster: median ops/server-CPU-s over the rounds and the median of the per-round
    ratios to the 1-node cluster (each round loads every cluster, one after the other)."""
    v = res["flat"]["variants"][variant]
    rows = v["rows"]
    labels = list(rows)
    base = rows[labels[0]]
    out = []
    for label in labels:
        rs = rows[label]
        out.append(
            {
                "label": label,
                "rounds": len(rs),
                "conversations": sum(r["conversations"] for r in rs),
                "operations": sum(r["operations"] for r in rs),
                "ops_per_cpu_s": med([r["ops_per_server_cpu_s"] for r in rs]),
                "us_per_op": med([1e6 / r["ops_per_server_cpu_s"] for r in rs]),
                "ratio": med(
                    [r["ops_per_server_cpu_s"] / b["ops_per_server_cpu_s"] for r, b in zip(rs, base, strict=False)]
                ),
                "ratio_pooled": (sum(r["operations"] for r in rs) / sum(r["server_cpu_s"] for r in rs))
                / (sum(r["operations"] for r in base) / sum(r["server_cpu_s"] for r in base)),
                "ops_per_s": med([r["ops_per_s"] for r in rs]),
                "server_cores": med([r["server_cores"] for r in rs]),
                "ops_per_batch": sum(r["operations"] for r in rs) / max(1, sum(r["batches"] for r in rs)),
                "client_cores": med([r["client_cores"] for r in rs]),
                "switches_per_kop": med(
                    [
                        (r.get("voluntary_switches", 0) + r.get("involuntary_switches", 0)) * 1000 / r["operations"]
                        for r in rs
                    ]
                ),
                "involuntary_per_kop": med([r.get("involuntary_switches", 0) * 1000 / r["operations"] for r in rs]),
            }
        )
    return out


def proxy_summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    runs = res["proxy"]["runs"]
    out = []
    for key, concurrency, _n, spin in res["proxy"]["levels"]:
        for mode in ("direct", "proxy"):
            rs = runs.get(f"{key}:{mode}", [])
            if not rs:
                continue
            out.append(
                {
                    "level": key,
                    "concurrency": concurrency,
                    "spin": spin,
                    "mode": mode,
                    "calls": sum(r["calls"] for r in rs),
                    "calls_per_s": med([r["calls_per_s"] for r in rs]),
                    "p50_ms": med([r["p50_us"] for r in rs]) / 1000,
                    "p99_ms": med([r["p99_us"] for r in rs]) / 1000,
                    "node_us": med([r["node_cpu_us_per_call"] for r in rs]),
                    "haproxy_us": med([r["haproxy_cpu_us_per_call"] for r in rs]),
                    "client_us": med([r["client_cpu_us_per_call"] for r in rs]),
                    "errors": sum(sum(r["errors"].values()) for r in rs),
                }
            )
    return out


def aggregate_summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = res["aggregate"]["variants"]["node"]["rows"]
    labels = list(rows)
    base = rows[labels[0]]
    out = []
    for label in labels:
        rs = rows[label]
        out.append(
            {
                "label": label,
                "rounds": len(rs),
                "operations": sum(r["operations"] for r in rs),
                "ops_per_s": med([r["ops_per_s"] for r in rs]),
                "conv_per_s": med([r["conversations"] / r["wall_s"] for r in rs]),
                "ratio": med([r["ops_per_s"] / b["ops_per_s"] for r, b in zip(rs, base, strict=False)]),
                "server_cores": med([r["server_cores"] for r in rs]),
                "client_cores": med([r["client_cores"] for r in rs]),
                "machine_busy": med([r["machine_busy"] for r in rs]),
                "machine_steal": med([r["machine_steal"] for r in rs]),
                "ops_per_server_cpu_s": med([r["ops_per_server_cpu_s"] for r in rs]),
                "cpu_ratio": med(
                    [r["ops_per_server_cpu_s"] / b["ops_per_server_cpu_s"] for r, b in zip(rs, base, strict=False)]
                ),
                "client_us_per_op": med([r["client_cpu_s"] * 1e6 / r["operations"] for r in rs]),
                # pooled over the rounds: ops/s = node cores × ops per node-CPU-second, exactly
                "pooled_ops_per_s": sum(r["operations"] for r in rs) / sum(r["wall_s"] for r in rs),
                "pooled_server_cores": sum(r["server_cpu_s"] for r in rs) / sum(r["wall_s"] for r in rs),
                "pooled_client_cores": sum(r["client_cpu_s"] for r in rs) / sum(r["wall_s"] for r in rs),
                "pooled_others": sum(
                    max(0.0, 2 * r["machine_busy"] * r["wall_s"] - r["server_cpu_s"] - r["client_cpu_s"]) for r in rs
                )
                / sum(r["wall_s"] for r in rs),
                "pooled_ops_per_cpu_s": sum(r["operations"] for r in rs) / sum(r["server_cpu_s"] for r in rs),
            }
        )
    return out


def proxy_added(res: dict[str, Any], level: str) -> dict[str, float] | None:
    rows = {r["mode"]: r for r in proxy_summary(res) if r["level"] == level}
    if set(rows) != {"direct", "proxy"}:
        return None
    d, p = rows["direct"], rows["proxy"]
    return {
        "p50_ms": p["p50_ms"] - d["p50_ms"],
        "p99_ms": p["p99_ms"] - d["p99_ms"],
        "haproxy_us": p["haproxy_us"],
        "node_us_direct": d["node_us"],
        "node_us_proxy": p["node_us"],
        "p50_direct": d["p50_ms"],
        "p50_proxy": p["p50_ms"],
        "p99_direct": d["p99_ms"],
        "p99_proxy": p["p99_ms"],
    }


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(name, goal, measured, ok); ok None: reported, the issue sets no number."""
    out: list[tuple[str, str, str, bool | None]] = []
    for variant, how in (
        ("node", "all nodes at once, sharing core 0"),
        ("node_seq", "one node at a time"),
    ):
        if variant not in res["flat"]["variants"]:
            continue
        flat = flat_summary(res, variant)
        one = flat[0]
        for row in flat[1:]:
            out.append(
                (
                    f"cluster: ops per node-CPU-second, {row['label']} vs 1 node ({how})",
                    "≥ 0.95× flat",
                    f"{row['ratio']:.3f}× ({row['ops_per_cpu_s']:,.0f} vs {one['ops_per_cpu_s']:,.0f})",
                    row["ratio"] >= 0.95,
                )
            )
    agg_rows = aggregate_summary(res)
    for row in agg_rows[1:]:
        out.append(
            (
                f"cluster: ops per node-CPU-second, {row['label']} vs 1 node (all at once, nothing pinned)",
                "≥ 0.95× flat",
                f"{row['cpu_ratio']:.3f}× ({row['ops_per_server_cpu_s']:,.0f} vs {agg_rows[0]['ops_per_server_cpu_s']:,.0f})",
                row["cpu_ratio"] >= 0.95,
            )
        )
    for level in ("c16", "seq"):
        add = proxy_added(res, level)
        if add is None:
            continue
        conc = "16 calls in flight" if level == "c16" else "1 call at a time"
        out.append(
            (
                f"cluster: what HAProxy adds per unary call ({conc})",
                "reported",
                f"p50 {add['p50_ms']:+.2f} ms ({add['p50_direct']:.2f} → {add['p50_proxy']:.2f}), p99 "
                f"{add['p99_ms']:+.2f} ms, HAProxy CPU {add['haproxy_us']:.0f} µs/call (node "
                f"{add['node_us_direct']:.0f} µs/call direct)",
                None,
            )
        )
    ps = res.get("proxy_streams")
    if ps:
        d, h = ps["rows"]["direct"], ps["rows"]["proxy"]
        out.append(
            (
                "cluster: what HAProxy adds per operation in OperateStream batches (~520 ops)",
                "reported",
                f"HAProxy CPU {med([r['haproxy_us_per_op'] for r in h]):.3f} µs/op "
                f"({med([r['haproxy_us_per_batch'] for r in h]):.0f} µs/batch); node CPU "
                f"{med([r['node_us_per_op'] for r in d]):.3f} → {med([r['node_us_per_op'] for r in h]):.3f} µs/op",
                None,
            )
        )
    agg = aggregate_summary(res)
    if len(agg) > 1:
        out.append(
            (
                "cluster: aggregate operations/s, 2 nodes vs 1 on this 2-core machine",
                "reported (ideal 2×, less the load generator's share)",
                f"{agg[1]['ratio']:.2f}× (median of rounds; pooled {agg[1]['pooled_ops_per_s']:,.0f} vs "
                f"{agg[0]['pooled_ops_per_s']:,.0f} ops/s = "
                f"{agg[1]['pooled_ops_per_s'] / agg[0]['pooled_ops_per_s']:.2f}×; nodes got "
                f"{agg[1]['pooled_server_cores']:.2f} vs {agg[0]['pooled_server_cores']:.2f} cores)",
                None,
            )
        )
    return out


def render(res: dict[str, Any]) -> list[str]:
    cfg = res["cfg"]
    L: list[str] = []
    w = L.append
    w("## Cluster: scale out by shop (issue 15)\n")
    w(
        f"`bench/cluster_bench.py` ({'quick sizes' if res['quick'] else 'full sizes'}; alone: "
        f"`.venv/bin/python -m bench.run --cluster-only{' --quick' if res['quick'] else ''}`; "
        f"{res['elapsed_s']:.0f} s). Three clusters up at once, of 1, 2 and 3 nodes: every node an ordinary "
        "`dispatcher serve --cluster-map MAP --node NAME --no-auth --stats-interval 0` (default "
        f"`--tick-interval-ms 100`), **in memory** (no data dir: no journal, no fsync, in every configuration), "
        f"{cfg['partitions']} partitions split evenly (`even_map`). The same {cfg['shops']} shops in each cluster "
        f"(`s0`..`s{cfg['shops'] - 1}`, 20 agents, five strategies, two groups, {cfg['contacts']} recent contacts "
        "each; each node builds only its partitions' shops, in-process, then serves: `python -m bench.cluster_bench "
        "node`). Shops per node: "
        + "; ".join(f"{k}: {'/'.join(str(x) for x in v)}" for k, v in res["shops_per_node"].items())
        + ". The workload is the lifecycle section's (8 operations per conversation, presence churn, 1 buyer in 4 "
        "returning); the same items go to every cluster, split by owner with the cluster map "
        "(`ClusterMap.owner_of`, as a smart client routes), so nothing crosses nodes and no call is refused.\n"
    )
    # ---- 1
    ver = res.get("verify", {})
    ver_errors = {k: sum(v["errors"].values()) for k, v in ver.get("clusters", {}).items()}
    w("### Server CPU per operation with 1, 2 and 3 nodes\n")
    w(
        f"OperateStream: pre-serialized OperateRequests of {cfg['per_batch']} conversations (~"
        f"{cfg['per_batch'] * 8 + cfg['per_batch'] // 8} operations) as gRPC frames, sent by **h2load** (one "
        "`h2load -n 1 -c 1 -m 1 -d BODY` per node, one stream carrying that node's batches of the round; HTTP/2 "
        "flow control keeps it closed-loop), so the load generator costs a fraction of what the nodes do. Every "
        "node on core 0 (`sched_setaffinity`, all threads), the h2loads on core 1 (`taskset -c 1`). "
        "**ops/CPU-s** = operations / the CPU time of **all** the cluster's node processes around the round "
        "(the sum over each node's threads of `/proc/<pid>/task/<tid>/schedstat`, in ns). "
        f"{flat_summary(res)[0]['rounds']} rounds per way of batching; each round loads the 1-, 2- and 3-node "
        "clusters one after the other (the order rotating) with the same items; **× 1 node** is the median of the "
        "per-round ratios (this VM's drift over seconds hits the three alike), the pooled ratio is all operations "
        "/ all CPU. h2load does not read the answers: before the rounds, "
        f"{ver.get('conversations', 0):,} conversations ({ver.get('operations', 0):,} operations) went to every "
        "cluster through grpc.aio with every answer parsed: errors "
        + ", ".join(f"{k}: {v}" for k, v in ver_errors.items())
        + ".\n"
    )
    w(
        "| batching | cluster | conversations | operations | ops/CPU-s | node CPU µs/op | × 1 node (per round) "
        "| × 1 node (pooled) | ops/batch | ops/s (wall) | node cores busy | h2load cores | node context switches "
        "per 1,000 ops (involuntary) |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    names = {
        "node": f"per node ({cfg['per_batch']} conv/batch), all nodes at once",
        "node_seq": "the same, one node at a time",
        "split": f"{cfg['per_batch']}-conv batches split by owner, all at once",
    }
    for variant in res["flat"]["variants"]:
        for r in flat_summary(res, variant):
            w(
                f"| {names.get(variant, variant)} | {r['label']} | {r['conversations']:,} | {r['operations']:,} | "
                f"**{r['ops_per_cpu_s']:,.0f}** | {r['us_per_op']:.3f} | **{r['ratio']:.2f}×** | "
                f"{r['ratio_pooled']:.2f}× | {r['ops_per_batch']:.0f} | {r['ops_per_s']:,.0f} | "
                f"{r['server_cores']:.2f} | {r['client_cores']:.2f} | {r['switches_per_kop']:.1f} "
                f"({r['involuntary_per_kop']:.1f}) |"
            )
    w("")
    w(
        "- **per node, all at once**: the client batches per owner, so every node gets full batches, and every "
        "node of the cluster works at the same time, the nodes time-slicing core 0 (the strictest reading of the "
        "target; the same ratio with nothing pinned, 2 nodes then mostly on a core each, is in the aggregate "
        "table below).\n"
        "- **one node at a time**: the same bodies, each node's h2load after the previous one ended (the other "
        "nodes idle but counted): what a node costs when it does not share its core with the other nodes.\n"
        f"- **split by owner**: one client's batches of {cfg['per_batch']} conversations, each split into one "
        "sub-batch per node (what the smart client does with one batch that spans nodes): each node gets ~1/N of "
        "a batch, so the fixed cost of a batch (a stream message, its parse and its answer, the servicer call) is "
        "spread over 1/N as many operations. Not a target: it shows why a client should keep batching per node.\n"
    )
    # ---- 2
    haproxy_version = re.sub(r" \d{4}/\d\d/\d\d - [^;\s]+", "", res.get("haproxy", "HAProxy"))
    w("### What HAProxy adds per call\n")
    w(
        f"The {max(cfg['node_counts'])}-node cluster; {haproxy_version}, its config from "
        "`dispatcher.cluster_tools.write_haproxy` (h2c in and out, `http-reuse always`, routing on "
        "`x-dispatch-shop` by `crc32,mod(P),map_int`; TCP health checks every 2 s). Unary calls, the "
        "lifecycle's 8 per conversation (Dispatch, ReportConversation × 7) plus presence changes, pre-serialized, "
        "through raw grpc.aio stubs, every call carrying `x-dispatch-shop`: **direct** = to the owner (one "
        "channel per node, routed with the map), **HAProxy** = one channel to HAProxy. Runs alternate direct and "
        "HAProxy; medians over rounds. Latency is the client's (call to answer); CPU per call is each process's "
        "CPU time over the run (nodes and HAProxy: schedstat of all their threads; the client: its "
        '`time.process_time()`) / calls. Nothing pinned. "1 in flight" pays this VM\'s ~2 ms wake-up of an '
        'idle vCPU at each hop; "cores kept from idling" runs the gRPC section\'s `nice -n 19` spinners.\n'
    )
    w(
        "| load | path | calls | calls/s | p50 ms | p99 ms | node CPU µs/call | HAProxy CPU µs/call | "
        "client CPU µs/call | errors |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in proxy_summary(res):
        load = f"{r['concurrency']} in flight" + (", cores kept from idling" if r["spin"] else "")
        w(
            f"| {load} | {'HAProxy' if r['mode'] == 'proxy' else 'direct'} | {r['calls']:,} | {r['calls_per_s']:,.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['node_us']:.0f} | "
            f"{r['haproxy_us']:.0f} | {r['client_us']:.0f} | {r['errors']} |"
        )
    w("")
    for level, conc in (("c16", "16 in flight"), ("seq", "1 in flight"), ("seq_busy", "1 in flight, no idle")):
        add = proxy_added(res, level)
        if add:
            w(
                f"- {conc}: through HAProxy, p50 **{add['p50_ms'] * 1000:+.0f} µs** and p99 {add['p99_ms'] * 1000:+.0f} µs "
                f"(differences of medians over rounds), and **{add['haproxy_us']:.0f} µs of HAProxy CPU per call** "
                f"({add['haproxy_us'] / max(1e-9, add['node_us_direct']):.0%} of a node's {add['node_us_direct']:.0f} "
                f"µs per call; the nodes spent {add['node_us_proxy']:.0f} µs per call behind HAProxy)."
            )
    ps = res.get("proxy_streams")
    if ps:
        w("")
        w(
            "Batches through HAProxy: the phase-1 OperateStream load (one h2load stream per node, all at once, "
            "nothing pinned), straight to each node or to HAProxy with `x-dispatch-shop` naming one of the node's "
            "shops (HAProxy routes a stream once, by its headers; every batch on it is for that node's shops). "
            f"{len(ps['rows']['direct'])} rounds per path, alternating.\n"
        )
        w(
            "| path | operations | ops/batch | ops/s (wall) | node CPU µs/op | HAProxy CPU µs/op | HAProxy CPU µs/batch |"
        )
        w("|---|---|---|---|---|---|---|")
        for mode, rs in ps["rows"].items():
            w(
                f"| {'HAProxy' if mode == 'proxy' else 'direct'} | {sum(r['operations'] for r in rs):,} | "
                f"{sum(r['operations'] for r in rs) / max(1, sum(r['batches'] for r in rs)):.0f} | "
                f"{med([r['ops_per_s'] for r in rs]):,.0f} | {med([r['node_us_per_op'] for r in rs]):.3f} | "
                f"{med([r['haproxy_us_per_op'] for r in rs]):.3f} | {med([r['haproxy_us_per_batch'] for r in rs]):.0f} |"
            )
    w("")
    # ---- 3
    agg = aggregate_summary(res)
    w("### Aggregate operations/s: 2 (and 3) nodes vs 1 on this 2-core machine\n")
    w(
        "Closed loop, the phase-1 load (per-node batches of "
        f"{cfg['per_batch']} conversations, one h2load stream per node, all nodes at once) with **nothing pinned**: "
        "the kernel spreads the nodes and the h2loads over both cores. "
        f"{agg[0]['rounds']} rounds, each loading the clusters one after the other (the order rotating) with the same "
        "items; × 1 node = median of "
        "the per-round ratios. The load generator and everything else on this shared VM compete for the same two "
        "cores, so each round also reads the nodes' CPU time, the h2loads' (`RUSAGE_CHILDREN`) and the whole "
        'machine\'s busy and steal time (`/proc/stat`); "others" = machine busy − nodes − h2load (other '
        "processes on the VM, this benchmark's own orchestration included). ops/s = node cores × ops per "
        "node-CPU-second, so the ratio splits into the cores the nodes got and what they did with them.\n"
    )
    w(
        "| cluster | operations | ops/s (wall) | conv/s | × 1 node (per round) | node cores | h2load cores | others "
        "(cores) | machine busy (of 2 cores) | steal | ops/node-CPU-s | × 1 node (per round) |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in agg:
        others = max(0.0, 2 * r["machine_busy"] - r["server_cores"] - r["client_cores"])
        w(
            f"| {r['label']} | {r['operations']:,} | **{r['ops_per_s']:,.0f}** | {r['conv_per_s']:,.0f} | "
            f"**{r['ratio']:.2f}×** | {r['server_cores']:.2f} | {r['client_cores']:.2f} | {others:.2f} | "
            f"{r['machine_busy']:.0%} | {r['machine_steal']:.0%} | {r['ops_per_server_cpu_s']:,.0f} | "
            f"{r['cpu_ratio']:.2f}× |"
        )
    w("")
    if len(agg) > 1:
        one, two = agg[0], agg[1]
        cores = two["pooled_server_cores"] / one["pooled_server_cores"]
        eff = two["pooled_ops_per_cpu_s"] / one["pooled_ops_per_cpu_s"]
        w(
            "Accounting, pooled over the rounds (all operations / all wall time, so that ops/s = node cores × "
            f"ops per node-CPU-second exactly): one node is one event loop and got {one['pooled_server_cores']:.2f} "
            f"cores (its h2load {one['pooled_client_cores']:.2f}, everything else on the VM "
            f"{one['pooled_others']:.2f}); two nodes got {two['pooled_server_cores']:.2f} cores ({cores:.2f}×; "
            f"h2load {two['pooled_client_cores']:.2f}, everything else {two['pooled_others']:.2f}) and did "
            f"{eff:.2f}× the operations per node-CPU-second: {cores:.2f} × {eff:.2f} = "
            f"**{two['pooled_ops_per_s'] / one['pooled_ops_per_s']:.2f}×** the operations/s "
            f"({two['pooled_ops_per_s']:,.0f} vs {one['pooled_ops_per_s']:,.0f}; the median of per-round ratios "
            f"above: {two['ratio']:.2f}×). On this VM the most 2 nodes can get is 2 cores less the load generator "
            "and everything else running; where the clients run elsewhere, N nodes scale with the cores they get.\n"
        )
    analysis = ROOT / "bench" / "ANALYSIS_CLUSTER.md"
    if analysis.exists():
        w(analysis.read_text())
    w("### Exact commands\n")
    w("```sh")
    for c in res.get("commands", []):
        w(c.replace(str(ROOT) + "/", "").replace(sys.executable, ".venv/bin/python"))
    w("```\n")
    return L


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        sys.exit(node_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        sys.exit(load_main(sys.argv[2:]))
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    out = run_cluster(Path(os.environ.get("BENCH_WORKDIR", "/tmp/dispatch-bench")) / "cluster", quick=a.quick)
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
