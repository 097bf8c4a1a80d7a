"""Fault injection against the real server (``dispatcher serve`` in a subprocess), issue 11.

Each test damages or takes away what the server stands on (journal bytes, segments, snapshots,
the data dir itself, disk space, write permission) and checks two things: nothing acknowledged
is lost (or the server refuses to start, naming what is missing, and changes no file), and the
server answers with the documented status or exits with the documented code.

Disk-full and read-only cases use a real tmpfs mounted by the test (the suite runs as root in
CI); they are skipped only where mounting is impossible, and say so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.cli import EXIT_JOURNAL_UNAVAILABLE, EXIT_OK, EXIT_REFUSED
from dispatcher.durability.journal import list_segments, scan_segment
from dispatcher.durability.snapshot import list_snapshots
from dispatcher.testing import ServerProcess

SHOP = "f"


class Server(ServerProcess):
    def __init__(self, data_dir: Path, *extra: str, create: bool = True) -> None:
        args = ["serve", "--port", "0", "--no-auth", "--log-format", "json", "--stats-interval", "0"]
        args += ["--data-dir", str(data_dir), "--snapshot-every", "0", "--snapshot-interval", "0"]
        super().__init__(*args, *(["--create-data-dir"] if create else []), *extra)
        self.channel: grpc.Channel | None = None

    def stubs(self) -> tuple[dispatch_pb2_grpc.DispatchStub, admin_pb2_grpc.AdminStub, health_pb2_grpc.HealthStub]:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.target)
        return (
            dispatch_pb2_grpc.DispatchStub(self.channel),
            admin_pb2_grpc.AdminStub(self.channel),
            health_pb2_grpc.HealthStub(self.channel),
        )

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def kill9(self) -> None:
        self.close()
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self) -> int:
        self.close()
        return self.finish(signal.SIGTERM, 60)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.close()
        s.ensure_dead()


def start(servers: list[Server], data: Path, *extra: str, create: bool = True) -> Server:
    server = Server(data, *extra, create=create)
    servers.append(server)
    return server


def setup_shop(server: Server) -> None:
    _, admin, _ = server.stubs()
    # Nobody online and STAGING: every dispatched conversation waits, so each one is state to lose.
    admin.PutShop(
        admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=SHOP, main_account=f"{SHOP}:main", offline_rule=4))
    )


def dispatch(server: Server, first: int, n: int) -> list[str]:
    """Dispatch conversations c<first>..; return the ids acknowledged (every one, or it raises)."""
    d, _, _ = server.stubs()
    acked = []
    for i in range(first, first + n):
        conv = f"c{i}"
        d.Dispatch(dispatch_pb2.DispatchRequest(shop_id=SHOP, buyer_id=f"b{i % 7}", conversation_id=conv), timeout=10)
        acked.append(conv)
    return acked


def present(server: Server, ids: list[str]) -> list[str]:
    _, admin, _ = server.stubs()
    found = []
    for conv in ids:
        try:
            admin.GetConversation(admin_pb2.GetConversationRequest(shop_id=SHOP, conversation_id=conv), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            continue
        found.append(conv)
    return found


def health(server: Server, service: str = "") -> int:
    _, _, h = server.stubs()
    return int(h.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def journal_cli(action: str, data: Path) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "journal", action, str(data)], capture_output=True, text=True, timeout=120
    )
    return done.returncode, json.loads(done.stdout)


def refused(servers: list[Server], data: Path, *extra: str, create: bool = True) -> str:
    """Start a server that must refuse: exit 3, durability.recovery_failed, never serving. Its error."""
    server = start(servers, data, *extra, create=create)
    assert server.finish(None, 60) == EXIT_REFUSED, "".join(server.lines)
    assert not server.events("server.started")
    failed = server.events("durability.recovery_failed")
    assert failed and failed[0]["level"] == "error"
    return str(failed[0]["error"])


def code_of(call: object) -> grpc.StatusCode | None:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    return None


# ---------------------------------------------------------------- damage at rest


@pytest.mark.parametrize("snapshot_first", [False, True], ids=["one-segment", "after-a-snapshot"])
def test_a_flip_in_the_middle_of_a_segment_refuses_and_repair_drops_only_the_named_seqs(
    tmp_path: Path, servers: list[Server], snapshot_first: bool
) -> None:
    data = tmp_path / "data"
    server = start(servers, data)
    setup_shop(server)
    acked = dispatch(server, 0, 100)
    if snapshot_first:  # a clean stop writes a snapshot; the damage then lands in the segment after it
        assert server.stop() == EXIT_OK
        server = start(servers, data)
    acked += dispatch(server, 100, 900)
    server.kill9()

    seg = list_segments(data)[-1]
    scan = scan_segment(seg)
    assert scan.error is None and len(scan.records) >= 900
    raw = bytearray(seg.path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    seg.path.write_bytes(bytes(raw))
    before = digests(data)

    error = refused(servers, data)
    assert f"{seg.path.name} is damaged at offset" in error
    assert "refusing to start without records" in error and "journal repair" in error
    assert digests(data) == before  # a refused start changes no file
    code, report = journal_cli("check", data)
    assert code == EXIT_REFUSED and not report["ok"] and digests(data) == before

    code, report = journal_cli("repair", data)
    assert code == 0, report
    (dropped,) = report["dropped_seqs"]  # type: ignore[misc]
    low, high = (int(x) for x in str(dropped).split(".."))
    assert low > scan.records[0][0] and high == scan.records[-1][0]
    aside = [p.name for p in data.iterdir() if ".damaged-at-" in p.name]
    assert aside, "the damaged part is moved aside, never deleted"

    server = start(servers, data)
    got = present(server, acked)
    lost = [c for c in acked if c not in got]
    assert len(lost) == high - low + 1  # exactly the seqs the repair named, one dispatch each
    assert got == acked[: len(got)]  # everything before the damage is there, in order
    assert dispatch(server, 5000, 3)  # and the server writes again


def test_a_deleted_newest_segment_or_journal_refuses_naming_the_missing_records(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    server = start(servers, data)
    setup_shop(server)
    dispatch(server, 0, 200)
    assert server.stop() == EXIT_OK  # snapshot; the next records go to a new segment
    server = start(servers, data)
    dispatch(server, 200, 300)
    server.kill9()
    pristine = tmp_path / "pristine"
    shutil.copytree(data, pristine)

    newest = list_segments(data)[-1]
    newest.path.unlink()
    before = digests(data)
    error = refused(servers, data)
    assert f"{newest.path.name} is missing" in error and "are lost" in error
    assert digests(data) == before

    shutil.rmtree(data)
    shutil.copytree(pristine, data)
    for seg in list_segments(data):
        seg.path.unlink()
    before = digests(data)
    error = refused(servers, data)
    assert "is missing" in error and digests(data) == before

    # Untouched, the same directory recovers everything.
    shutil.rmtree(data)
    shutil.copytree(pristine, data)
    server = start(servers, data)
    assert len(present(server, [f"c{i}" for i in range(500)])) == 500


def test_a_truncated_only_snapshot_refuses_and_touches_no_file(tmp_path: Path, servers: list[Server]) -> None:
    data = tmp_path / "data"
    server = start(servers, data)
    setup_shop(server)
    dispatch(server, 0, 20)
    assert server.stop() == EXIT_OK
    for snap in list_snapshots(data):
        raw = snap.path.read_bytes()
        snap.path.write_bytes(raw[: len(raw) // 2])
    before = digests(data)
    error = refused(servers, data)
    assert "no consistent state" in error
    assert digests(data) == before  # nothing renamed to .corrupt, nothing cut


# ---------------------------------------------------------------- the data dir goes away


def _wait_unavailable(server: Server, prefix: str, pause: float = 0.2, within: float = 5.0) -> None:
    """Dispatch until one is answered UNAVAILABLE; every answer before it must be a success."""
    d, _, _ = server.stubs()
    deadline = time.monotonic() + within
    for i in range(100_000):
        conv = f"{prefix}{i}"
        code = code_of(
            lambda: d.Dispatch(
                dispatch_pb2.DispatchRequest(shop_id=SHOP, buyer_id="x", conversation_id=conv), timeout=5
            )
        )
        if code == grpc.StatusCode.UNAVAILABLE:
            return
        assert code is None, code  # acknowledged (before the failure showed) or UNAVAILABLE, nothing else
        assert time.monotonic() < deadline, f"writes were still acknowledged {within} s after the fault"
        time.sleep(pause)


def test_rm_rf_of_the_data_dir_stops_writes_and_a_second_server_is_never_touched(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    first = start(servers, data)
    setup_shop(first)
    dispatch(first, 0, 50)
    shutil.rmtree(data)
    time.sleep(1.5)  # the once-a-second check, with no write in between
    assert health(first) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health(first, "dispatch.v1.Admin") == health_pb2.HealthCheckResponse.SERVING
    _wait_unavailable(first, "after-rm")
    assert present(first, ["c0"]) == ["c0"]  # reads still answer
    failed = first.events("journal.failed")
    assert failed and failed[0]["level"] == "critical" and "gone" in failed[0]["error"]

    second = start(servers, data)  # a new directory at the same path: a new lock
    setup_shop(second)
    dispatch(second, 0, 30)
    files = digests(data)
    assert first.stop() == EXIT_JOURNAL_UNAVAILABLE
    assert first.events("server.stopped")
    assert digests(data) == files, "the first server wrote into the second server's directory"
    assert second.stop() == EXIT_OK
    again = start(servers, data)
    assert len(present(again, [f"c{i}" for i in range(30)])) == 30


def test_a_renamed_data_dir_stops_writes_and_the_old_path_does_not_start_empty(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    server = start(servers, data)
    setup_shop(server)
    acked = dispatch(server, 0, 40)
    moved = tmp_path / "moved"
    data.rename(moved)
    _wait_unavailable(server, "after-mv")
    assert server.stop() == EXIT_JOURNAL_UNAVAILABLE
    assert not data.exists()
    error = refused(servers, data, create=False)
    assert "does not exist" in error and "--create-data-dir" in error
    back = start(servers, moved, create=False)
    assert present(back, acked) == acked


# ---------------------------------------------------------------- full disk, read-only disk


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the full-disk tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` to the last byte; return the filler file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            chunk = b"\xaa" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_writes_keeps_reads_and_resumes_when_space_returns(
    tmp_path: Path, servers: list[Server]
) -> None:
    with tmpfs(tmp_path / "fs", "8m") as fs:
        data = fs / "data"
        server = start(servers, data)
        setup_shop(server)
        d, admin, _ = server.stubs()
        acked = dispatch(server, 0, 100)
        filler = fill(fs)
        codes: list[grpc.StatusCode | None] = []
        for i in range(1000):  # the last page of the open segment still takes a few records
            conv = f"full{i}"
            code = code_of(
                lambda: d.Dispatch(
                    dispatch_pb2.DispatchRequest(shop_id=SHOP, buyer_id="x", conversation_id=conv), timeout=10
                )
            )
            codes.append(code)
            if code is None:
                acked.append(conv)
            if codes.count(grpc.StatusCode.UNAVAILABLE) >= 5:
                break
        assert grpc.StatusCode.UNAVAILABLE in codes and grpc.StatusCode.INTERNAL not in codes, codes
        assert set(codes) <= {None, grpc.StatusCode.UNAVAILABLE}
        message = [
            exc
            for exc in [
                code_of(
                    lambda: admin.PutAgent(
                        admin_pb2.PutAgentRequest(
                            agent=admin_pb2.Agent(shop_id=SHOP, agent_id="f:new", max_capacity=1)
                        ),
                        timeout=10,
                    )
                )
            ]
        ]
        assert message == [grpc.StatusCode.UNAVAILABLE]
        # Reads and health keep working; health says NOT_SERVING for writes.
        assert present(server, acked[:5]) == acked[:5]
        assert health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(server, "dispatch.v1.Dispatch") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(server, "dispatch.v1.Admin") == health_pb2.HealthCheckResponse.SERVING
        stalled = server.events("journal.stalled")
        assert stalled and "ENOSPC" in stalled[0]["error"]
        assert server.popen.poll() is None  # still running
        # Space returns: the journal resumes by itself.
        filler.unlink()
        deadline = time.monotonic() + 10
        while health(server) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "the journal did not resume"
            time.sleep(0.2)
        acked += dispatch(server, 200, 20)
        assert server.events("journal.resumed")
        server.kill9()
        again = start(servers, data)
        assert present(again, acked) == acked  # nothing acknowledged was lost
        assert again.stop() == EXIT_OK


def test_sigterm_and_restart_on_a_full_disk(tmp_path: Path, servers: list[Server]) -> None:
    with tmpfs(tmp_path / "fs", "8m") as fs:
        data = fs / "data"
        server = start(servers, data)
        setup_shop(server)
        acked = dispatch(server, 0, 50)
        filler = fill(fs)
        _wait_unavailable(server, "full", pause=0)
        # SIGTERM on a full disk: the documented code and a server.stopped line, no traceback.
        assert server.stop() == EXIT_JOURNAL_UNAVAILABLE
        stopped = server.events("server.stopped")
        assert stopped and stopped[0]["exit_code"] == EXIT_JOURNAL_UNAVAILABLE
        assert not any("Traceback" in line for line in server.lines)
        assert not list(data.glob("*.tmp"))
        # A restart on the still-full disk serves reads and refuses writes; it does not exit.
        again = start(servers, data)
        assert present(again, acked) == acked
        assert health(again) == health_pb2.HealthCheckResponse.NOT_SERVING
        _wait_unavailable(again, "still-full", pause=0)
        time.sleep(1.5)
        assert again.popen.poll() is None
        filler.unlink()
        deadline = time.monotonic() + 10
        while health(again) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "the journal did not resume after the restart"
            time.sleep(0.2)
        acked += dispatch(again, 100, 10)
        assert again.stop() == EXIT_OK
        last = start(servers, data)
        assert present(last, acked) == acked


def test_a_failed_snapshot_removes_its_tmp_and_backs_off(tmp_path: Path, servers: list[Server]) -> None:
    with tmpfs(tmp_path / "fs", "6m") as fs:
        data = fs / "data"
        server = start(servers, data, "--snapshot-interval", "0.2")
        setup_shop(server)
        d, _, _ = server.stubs()
        big = "x" * 100
        for part in range(2):  # ~1.5 MB of state: its snapshot needs that much free space
            batch = dispatch_pb2.DispatchBatchRequest(
                requests=[
                    dispatch_pb2.DispatchRequest(
                        shop_id=SHOP, buyer_id=f"{big}{part}-{i}", conversation_id=f"{big}{part}-c{i}"
                    )
                    for i in range(4000)
                ]
            )
            answer = d.DispatchBatch(batch, timeout=30)
            assert not any(r.HasField("error") for r in answer.responses)
        time.sleep(1)
        filler = fill(fs)
        with open(filler, "r+b") as fh:  # leave ~256 KB: enough for journal records, not for a snapshot
            fh.truncate(os.path.getsize(filler) - 256 * 1024)
        dispatch(server, 0, 5)  # something changed: the snapshot policy wants one
        time.sleep(3)
        failed = server.events("snapshot.failed")
        assert failed, "".join(server.lines[-5:])
        assert len(failed) <= 4, f"{len(failed)} snapshot attempts in 3 s: no back-off"
        assert [f["retry_s"] for f in failed[:2]] == [1.0, 2.0][: len(failed[:2])]
        assert not list(data.glob("*.tmp")), "a failed snapshot left its .tmp behind"
        assert dispatch(server, 10, 5)  # the journal still writes
        filler.unlink()
        server.kill9()


def test_an_unwritable_data_dir_at_start_exits_3(tmp_path: Path, servers: list[Server]) -> None:
    with tmpfs(tmp_path / "fs", "8m") as fs:
        data = fs / "data"
        server = start(servers, data)
        setup_shop(server)
        dispatch(server, 0, 10)
        assert server.stop() == EXIT_OK
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        try:
            error = refused(servers, data)
            assert "cannot write data dir" in error and "Read-only file system" in error
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
