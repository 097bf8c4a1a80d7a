"""gRPC load: h2load against the dispatcher and against empty grpc.aio baselines, same run.

The server under test runs on core 0 (``taskset -c 0``), the load generator
on core 1 (``taskset -c 1``). Bodies are gRPC-framed protobuf (1 byte flag +
4 byte big-endian length + message) generated from the real protos.

Why the unary body is a point-to-point (SHOP_TO_SHOP) Dispatch: h2load sends
one fixed body again and again, and a routed Dispatch creates a conversation,
so its second copy is (correctly) ALREADY_EXISTS. The SHOP_TO_SHOP request
goes through the whole servicer (decode, id checks, engine call, counters,
encode) and answers grpc-status 0 every time; routed decisions with real work
(affinity hits and misses, five strategies, groups, offline shops) are
measured over DispatchStream, whose single h2load request body carries many
unique messages, and over DispatchBatch with ``bench/batch_client.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dispatcher._gen.dispatch.v1 import common_pb2, dispatch_pb2

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
STRATS = ["LEAST_SATURATION", "FEWEST_TODAY", "CAPACITY_ROUND_ROBIN", "FEWEST_UNREAD", "WEIGHTED_BUSYNESS"]
H2_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
COMMANDS: list[str] = []  # every external command run, for RESULTS.md


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def frame(msg: Any) -> bytes:
    data = msg.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


# --------------------------------------------------------------------- bootstrap and requests


def gen_bootstrap(path: Path, n_shops: int = 200, agents: int = 20) -> None:
    """Shops round the five strategies, two groups each, most agents online, every 10th shop offline."""
    shops = []
    for i in range(n_shops):
        sid = f"s{i}"
        ids = [f"{sid}:a{k}" for k in range(agents)]
        offline_shop = i % 10 == 9
        shops.append(
            {
                "shop_id": sid,
                "main_account": f"{sid}:main",
                "strategy": STRATS[i % 5],
                "offline_rule": "MAIN_ACCOUNT",
                "tie_seed": i + 1,
                "agents": [{"agent_id": a, "max_capacity": 1_000_000, "weight": 1 + k % 3} for k, a in enumerate(ids)],
                "groups": [
                    {"group_id": "presale", "members": ids[: agents // 2], "order_states": ["NO_ORDER", "UNPAID"]},
                    {
                        "group_id": "aftersale",
                        "members": ids[agents // 2 :],
                        "order_states": ["PAID_UNSHIPPED", "SHIPPED", "AFTER_SALE"],
                        "strategy": STRATS[(i + 2) % 5],
                    },
                ],
                "exclusive_agents": [{"buyer_id": "vip", "agent_id": ids[0]}],
                "presence": []
                if offline_shop
                else [{"agent_id": a, "presence": "ONLINE" if k % 7 else "OFFLINE"} for k, a in enumerate(ids)],
            }
        )
    path.write_text(json.dumps({"shops": shops}))


def request(tag: str, n: int, n_shops: int) -> dispatch_pb2.DispatchRequest:
    """The n-th routed request of a run: every 4th buyer has a recent contact (``h*``), others are new."""
    shop = f"s{(n * 7919) % n_shops}"
    buyer = f"h{n % 50}" if n % 4 == 0 else f"{tag}b{n}"
    return dispatch_pb2.DispatchRequest(
        shop_id=shop, buyer_id=buyer, conversation_id=f"{tag}c{n}", order_state=1 + n % 5
    )


def batch_requests(tag: str, size: int, n_batches: int, n_shops: int) -> Iterator[dispatch_pb2.DispatchBatchRequest]:
    n = 0
    for _ in range(n_batches):
        b = dispatch_pb2.DispatchBatchRequest()
        for _ in range(size):
            b.requests.append(request(tag, n, n_shops))
            n += 1
        yield b


def direct_request() -> dispatch_pb2.DispatchRequest:
    return dispatch_pb2.DispatchRequest(
        shop_id="s1",
        buyer_id="b1",
        conversation_id="p2p-1",
        type=common_pb2.ConversationType.Value("CONVERSATION_TYPE_SHOP_TO_SHOP"),
        to_account="s1:a1",
    )


def write_stream_body(path: Path, tag: str, size: int, decisions: int, n_shops: int) -> int:
    n_batches = max(1, decisions // size)
    with open(path, "wb") as f:
        for b in batch_requests(tag, size, n_batches, n_shops):
            f.write(frame(b))
    return n_batches * size


def precondition_affinity(port: int, n_shops: int) -> int:
    """Recent contacts for buyers h0..h49 in every online shop: dispatch, agent reply, close."""
    from dispatch_client import DispatchClient, pb

    made = 0
    with DispatchClient(f"127.0.0.1:{port}") as client:
        for i in range(n_shops):
            if i % 10 == 9:
                continue
            for j in range(50):
                conv = f"pre-{i}-{j}"
                client.dispatch(f"s{i}", f"h{j}", conv, order_state=1 + j % 5)
                client.report_conversation(f"s{i}", conv, pb.ConversationEvent.CONVERSATION_EVENT_AGENT_REPLY)
                client.report_conversation(f"s{i}", conv, pb.ConversationEvent.CONVERSATION_EVENT_CLOSED)
                made += 1
    return made


# --------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


@contextlib.contextmanager
def server(cmd: list[str], port: int) -> Iterator[subprocess.Popen]:
    COMMANDS.append(shlex.join(cmd))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dispatcher_cmd(port: int, bootstrap: Path, metrics_port: int | None = None) -> list[str]:
    cmd = [
        "taskset",
        "-c",
        "0",
        PY,
        "-m",
        "dispatcher",
        "serve",
        "--port",
        str(port),
        "--bootstrap",
        str(bootstrap),
        "--log-level",
        "warning",
        "--stats-interval",
        "0",
        "--no-auth",
    ]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port)]
    return cmd


def baseline_cmd(port: int) -> list[str]:
    return ["taskset", "-c", "0", PY, "-m", "bench.baseline_server", "--port", str(port)]


# --------------------------------------------------------------------- h2load


def h2load(
    url: str,
    body: Path,
    *,
    clients: int,
    streams: int,
    duration: float | None = None,
    n: int | None = None,
    rps: float | None = None,
    log_file: Path | None = None,
    warmup: float | None = None,
) -> dict[str, Any]:
    cmd = [
        "taskset",
        "-c",
        "1",
        "h2load",
        "-t",
        "1",
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-d",
        str(body),
        *H2_HEADERS,
    ]
    if duration is not None:
        cmd += ["-D", f"{duration:g}"]
        if warmup:
            cmd += ["--warm-up-time", f"{warmup:g}"]
    else:
        cmd += ["-n", str(n or 1)]
    if rps is not None:
        cmd += [f"--rps={rps:g}"]
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    cmd.append(url)
    COMMANDS.append(shlex.join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=(duration or 60) + 120).stdout
    m = re.search(r"finished in ([\d.]+)(m?s|us), ([\d.]+) req/s", out)
    if not m:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    secs = float(m.group(1)) / {"s": 1, "ms": 1e3, "us": 1e6}[m.group(2)]
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out
    )
    codes = re.search(r"status codes: (\d+) 2xx", out)
    res: dict[str, Any] = {
        "seconds": secs,
        "req_per_s": float(m.group(3)),
        "done": int(req.group(3)),
        "succeeded": int(req.group(4)),
        "failed": int(req.group(5)),
        "errored": int(req.group(6)),
        "http_2xx": int(codes.group(1)) if codes else 0,
    }
    if log_file is not None and log_file.exists():
        lat = sorted(int(line.split("\t")[2]) for line in log_file.read_text().splitlines() if line.count("\t") >= 2)
        if lat:
            res["p50_us"] = lat[len(lat) // 2]
            res["p99_us"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)]
            res["latency_samples"] = len(lat)
    return res


def grpc_status(url: str, body: Path) -> list[int]:
    """grpc-status of one call with this exact body, read from the trailers by ``nghttp``."""
    cmd = ["nghttp", "-v", "-d", str(body), *H2_HEADERS, url]
    COMMANDS.append(shlex.join(cmd))
    out = subprocess.run(cmd, capture_output=True, timeout=60).stdout.decode("latin-1")
    return [int(x) for x in re.findall(r"grpc-status: (\d+)", out)]


def stream_check(port: int, tag: str, size: int, n_shops: int) -> dict[str, Any]:
    """Send a few unique batches over DispatchStream with the Python stub; count per-item errors and reasons."""
    import grpc

    from dispatcher._gen.dispatch.v1 import dispatch_pb2_grpc

    reasons: dict[str, int] = {}
    errors = 0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = dispatch_pb2_grpc.DispatchStub(ch)
        for resp in stub.DispatchStream(batch_requests(tag, size, 4, n_shops)):
            for r in resp.responses:
                if r.HasField("error"):
                    errors += 1
                else:
                    name = common_pb2.Reason.Name(r.reason)
                    reasons[name] = reasons.get(name, 0) + 1
    return {"item_errors": errors, "reasons": reasons}


def batch_client(port: int, size: int, decisions: int, tag: str, n_shops: int) -> dict[str, Any]:
    cmd = [
        "taskset",
        "-c",
        "1",
        PY,
        "-m",
        "bench.batch_client",
        "--port",
        str(port),
        "--size",
        str(size),
        "--decisions",
        str(decisions),
        "--tag",
        tag,
        "--shops",
        str(n_shops),
    ]
    COMMANDS.append(shlex.join(cmd))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@contextlib.contextmanager
def idle_spinners() -> Iterator[None]:
    """Keep both cores from idling: one ``nice -n 19`` busy loop pinned to each.

    On this VM (firecracker) an idle vCPU halts, and waking it for the next
    request costs ~2 ms: the sequential latency of the *empty* grpc.aio
    handler is ~2 ms idle and ~0.2 ms with the spinners. They only take time
    nobody else wants (nice 19), so they measure the server without the VM's
    wake-up cost; the bench reports the latency both ways."""
    procs = [
        subprocess.Popen(["taskset", "-c", str(cpu), "nice", "-n", "19", PY, "-c", "while True: pass"])
        for cpu in (0, 1)
    ]
    COMMANDS.append(f"taskset -c {{0,1}} nice -n 19 {PY} -c 'while True: pass'   # idle spinners, see bench/README.md")
    try:
        time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def half_load(
    url: str, body: Path, max_rps: float, *, runs: int, clients: int, duration: float, log_file: Path
) -> list[dict[str, Any]]:
    """``runs`` h2load runs at 50 % of ``max_rps`` (--rps per connection, one stream each)."""
    out = []
    for r in range(runs):
        log(f"50% load run {r} on {url}")
        out.append(
            h2load(
                url,
                body,
                clients=clients,
                streams=1,
                duration=duration,
                warmup=1,
                rps=max_rps * 0.5 / clients,
                log_file=log_file,
            )
        )
    return out


# --------------------------------------------------------------------- the whole gRPC suite


def run_grpc(
    workdir: Path,
    *,
    runs: int = 3,
    duration: float = 5.0,
    sizes: tuple[int, ...] = (1, 16, 128, 1024),
    stream_decisions: dict[int, int] | None = None,
    n_shops: int = 200,
    clients: int = 8,
    streams: int = 8,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    stream_decisions = stream_decisions or {1: 30_000, 16: 150_000, 128: 400_000, 1024: 600_000}
    res: dict[str, Any] = {
        "runs": runs,
        "duration_s": duration,
        "clients": clients,
        "streams_per_client": streams,
        "n_shops": n_shops,
    }
    unary_body = workdir / "dispatch_p2p.bin"
    unary_body.write_bytes(frame(direct_request()))
    bootstrap = workdir / "bootstrap.json"
    gen_bootstrap(bootstrap, n_shops)
    log(f"bodies: generating stream bodies {stream_decisions}")
    bodies: dict[tuple[int, int], Path] = {}
    for size in sizes:
        for r in range(runs):
            p = workdir / f"stream_{size}_{r}.bin"
            write_stream_body(p, f"r{r}z{size}", size, stream_decisions[size], n_shops)
            bodies[(size, r)] = p
    unary_url = "http://127.0.0.1:{}/dispatch.v1.Dispatch/Dispatch"
    stream_url = "http://127.0.0.1:{}/dispatch.v1.Dispatch/DispatchStream"

    def measure(port: int, name: str, tag: str) -> dict[str, Any]:
        """The same load on one server: unary at max and at 50 % (as is, then with the cores kept from
        idling), DispatchStream and DispatchBatch at every size. ``tag`` names its logs and batch ids."""
        out: dict[str, Any] = {"unary": [], "stream": {s: [] for s in sizes}, "batch": {s: [] for s in sizes}}
        url = unary_url.format(port)
        for r in range(runs):
            log(f"{name} unary run {r}")
            out["unary"].append(
                h2load(
                    url,
                    unary_body,
                    clients=clients,
                    streams=streams,
                    duration=duration,
                    warmup=1,
                    log_file=workdir / f"{tag}_unary.log",
                )
            )
        top = median([u["req_per_s"] for u in out["unary"]])
        out["unary_half_load"] = half_load(
            url, unary_body, top, runs=runs, clients=clients, duration=duration, log_file=workdir / f"{tag}_half.log"
        )
        with idle_spinners():
            out["unary_half_load_busy"] = half_load(
                url,
                unary_body,
                top,
                runs=runs,
                clients=clients,
                duration=duration,
                log_file=workdir / f"{tag}_half_busy.log",
            )
        for size in sizes:
            for r in range(runs):
                log(f"{name} stream size {size} run {r}")
                h = h2load(stream_url.format(port), bodies[(size, r)], clients=1, streams=1, n=1)
                h["decisions_per_s"] = stream_decisions[size] // size * size / h["seconds"]
                out["stream"][size].append(h)
            for r in range(runs):
                log(f"{name} batch size {size} run {r}")
                out["batch"][size].append(batch_client(port, size, stream_decisions[size], f"{tag}{r}z{size}", n_shops))
        return out

    # Baseline: empty handlers.
    port = free_port()
    with server(baseline_cmd(port), port):
        res["baseline_grpc_status"] = grpc_status(unary_url.format(port), unary_body)
        res["baseline"] = measure(port, "baseline", "base")
        log("baseline done")

    # The dispatcher.
    port = free_port()
    with server(dispatcher_cmd(port, bootstrap), port):
        t = time.time()
        res["affinity_preconditioned"] = precondition_affinity(port, n_shops)
        log(f"preconditioned {res['affinity_preconditioned']} contacts in {time.time() - t:.1f}s")
        res["dispatcher_grpc_status_unary"] = grpc_status(unary_url.format(port), unary_body)
        check_body = workdir / "stream_check.bin"
        write_stream_body(check_body, "chk", 16, 64, n_shops)
        res["dispatcher_grpc_status_stream"] = grpc_status(stream_url.format(port), check_body)
        res["stream_check"] = stream_check(port, "chk2", 128, n_shops)
        res["dispatcher"] = measure(port, "dispatcher", "disp")

    # Metrics on vs off: two fresh dispatchers up at once (all on core 0, only one loaded at a
    # time), runs alternated so that the machine's drift hits each alike.
    # The empty handler joins the rotation: the unary ratio is taken from these alternated runs.
    off_port, on_port, empty_port = free_port(), free_port(), free_port()
    # Each run also records the server's CPU time per call (utime + stime from /proc): unlike req/s,
    # it does not move when a neighbour steals the core.
    with (
        server(dispatcher_cmd(off_port, bootstrap), off_port) as off_proc,
        server(dispatcher_cmd(on_port, bootstrap, metrics_port=free_port()), on_port) as on_proc,
        server(baseline_cmd(empty_port), empty_port) as empty_proc,
    ):
        rotation = (
            ("paired_empty_unary", empty_port, empty_proc),
            ("dispatcher_metrics_off_unary", off_port, off_proc),
            ("dispatcher_metrics_unary", on_port, on_proc),
        )
        for key, p, _ in rotation:
            res[key] = []
            h2load(unary_url.format(p), unary_body, clients=clients, streams=streams, n=2000)  # warm-up, unmeasured
        for r in range(max(runs, 5)):
            for key, p, proc in rotation:
                log(f"{key} run {r}")
                cpu0 = cpu_seconds(proc.pid)
                h = h2load(
                    unary_url.format(p),
                    unary_body,
                    clients=clients,
                    streams=streams,
                    duration=min(duration, 3.0),
                    log_file=workdir / f"{key}.log",
                )
                h["server_cpu_us_per_call"] = (cpu_seconds(proc.pid) - cpu0) * 1e6 / max(1, h["done"])
                res[key].append(h)
    res["commands"] = list(dict.fromkeys(COMMANDS))
    return res


if __name__ == "__main__":
    out = run_grpc(
        Path(os.environ.get("BENCH_WORKDIR", "/tmp/dispatch-bench")),
        runs=1,
        duration=2,
        stream_decisions={1: 5000, 16: 20000, 128: 50000, 1024: 100000},
    )
    print(json.dumps(out, indent=1, default=str))
