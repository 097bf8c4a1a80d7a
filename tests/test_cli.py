"""`python -m dispatcher serve` as a real subprocess: start-up, demo bootstrap, signals, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from server_fixtures import DEMO, ROOT, Proc

from dispatch_client import DispatchClient, pb
from dispatcher.cli import build_parser, port_in_use, ready_line
from dispatcher.config import settings_from_args


def test_serve_demo_then_sigterm_ends_streams_cleanly_and_exits_zero(demo_server: Proc) -> None:
    port = demo_server.port()
    with DispatchClient(f"127.0.0.1:{port}") as client:
        answer = client.dispatch("demo", "buyer-1", "conv-1", order_state=pb.OrderState.ORDER_STATE_NO_ORDER)
        assert answer.reason == pb.Reason.REASON_GROUP
        assert answer.group_id == "presale" and answer.agent_id in ("demo:alice", "demo:bob")
        vip = client.dispatch("demo", "vip-buyer", "conv-2")
        assert (vip.agent_id, vip.reason) == ("demo:carol", pb.Reason.REASON_EXCLUSIVE)
        watch = client.watch_assignments("demo")
        assert demo_server.finish(signal.SIGTERM) == 0
        # The open watch stream was ended cleanly (OK), not cut off.
        assert list(watch) == []
        assert watch._call.code() == grpc.StatusCode.OK
    events = [e["event"] for e in demo_server.events()]
    # Nothing logged per decision: only the lifecycle lines, the decisions are counted.
    assert events == ["bootstrap.loaded", "server.started", "server.stopping", "server.stopped"]
    stopped = demo_server.events()[-1]
    assert stopped["dispatched"] == {"group": 1, "exclusive": 1}
    assert all(e["level"] in ("info", "warning") for e in demo_server.events())


def test_sigint_exits_zero_and_env_vars_configure_the_server() -> None:
    proc = Proc("serve", env={"DISPATCH_PORT": "0", "DISPATCH_LOG_FORMAT": "json", "DISPATCH_SEED": "9"})
    try:
        port = proc.port()
        with DispatchClient(f"127.0.0.1:{port}") as client:
            assert client.list_shops() == []
        assert proc.finish(signal.SIGINT) == 0
        started = [e for e in proc.events() if e["event"] == "server.started"][0]
        assert started["seed"] == 9
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()


def test_bad_bootstrap_exits_2_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"shops": [{"shop_id": "x", "main_account": "x", "agents": [{"agent_id": "x:a"}]}]}))
    proc = Proc("serve", "--port", "0", "--bootstrap", str(bad))
    assert proc.finish() == 2
    failed = [e for e in proc.events() if e["event"] == "bootstrap.failed"]
    assert failed and "agents[0]" in failed[0]["error"] and "max_capacity" in failed[0]["error"]


def test_port_in_use_exits_nonzero(demo_server: Proc) -> None:
    port = demo_server.port()
    proc = Proc("serve", "--port", str(port))
    assert proc.finish() == 1
    assert any(e["event"] == "server.bind_failed" for e in proc.events())


def test_flags_win_over_env_and_bad_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"DISPATCH_HOST": "0.0.0.0", "DISPATCH_PORT": "7000", "DISPATCH_BOOTSTRAP": "x.toml"}
    os_env = dict(os.environ)
    try:
        os.environ.update(env)
        ns = build_parser().parse_args(["serve", "--port", "7001"])
    finally:
        os.environ.clear()
        os.environ.update(os_env)
    settings = settings_from_args(ns)
    assert (settings.host, settings.port, str(settings.bootstrap), settings.log_format) == (
        "0.0.0.0",
        7001,
        "x.toml",
        "json",
    )
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--port", "70000"])
    assert exc.value.code == 2
    assert "70000" in capsys.readouterr().err


def test_console_log_format() -> None:
    proc = Proc("serve", "--port", "0", "--log-format", "console", "--bootstrap", str(DEMO))
    try:
        assert proc._started.wait(30)
        assert proc.finish(signal.SIGTERM) == 0
        text = "".join(proc.lines)
        assert "server.started" in text and "bootstrap.loaded" in text and "server.stopped" in text
        assert not any(line.startswith("{") for line in proc.lines)
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()


# ------------------------------------------------------------------ a first hour without stumbles (issue 16)


def test_a_busy_port_gives_one_line_without_grpc_noise(demo_server: Proc, tmp_path: Path) -> None:
    port = demo_server.port()
    assert port_in_use("127.0.0.1", port) and not port_in_use("127.0.0.1", 0)
    data_dir = tmp_path / "state"
    proc = Proc(
        "serve", "--port", str(port), "--log-format", "console", "--data-dir", str(data_dir), "--create-data-dir"
    )
    assert proc.finish() == 1
    lines = [line for line in proc.lines if line.strip()]
    assert len(lines) == 1, lines
    assert f"port {port} is in use; pass --port" in lines[0] and "server.bind_failed" in lines[0]
    assert "absl" not in lines[0] and "Failed to bind" not in lines[0]
    assert not data_dir.exists()  # refused before the data dir was opened
    as_json = Proc("serve", "--port", str(port))
    assert as_json.finish() == 1
    assert [e["error"] for e in as_json.events("server.bind_failed")] == [f"port {port} is in use; pass --port"]
    assert len(as_json.lines) == 1


def test_console_format_prints_one_ready_line(tmp_path: Path) -> None:
    assert ready_line("127.0.0.1", 50051, Path("var/dispatch")) == (
        "ready on 127.0.0.1:50051, state in var/dispatch, Ctrl-C to stop"
    )
    assert ready_line("::1", 7, None) == "ready on [::1]:7, state in memory only (no --data-dir), Ctrl-C to stop"
    data_dir = tmp_path / "dispatch"
    proc = Proc("serve", "--port", "0", "--log-format", "console", "--data-dir", str(data_dir), "--create-data-dir")
    try:
        assert proc._started.wait(30)
        deadline = time.monotonic() + 10
        while not any(line.startswith("ready on ") for line in proc.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = [line.rstrip("\n") for line in proc.lines if line.startswith("ready on ")]
        assert len(ready) == 1 and ready[0].endswith(f", state in {data_dir}, Ctrl-C to stop"), proc.lines
        address = ready[0].removeprefix("ready on ").split(",")[0]
        with DispatchClient(address) as client:
            assert client.list_shops() == []
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
    as_json = Proc("serve", "--port", "0")  # JSON logs stay JSON lines only
    try:
        as_json.port()
        assert as_json.finish(signal.SIGTERM) == 0
        assert all(line.startswith("{") for line in as_json.lines)
    finally:
        as_json.ensure_dead()


def test_serve_refuses_a_bootstrap_with_a_shop_twice(tmp_path: Path) -> None:
    twice = tmp_path / "twice.json"
    shops = [{"shop_id": "x", "main_account": "x"}, {"shop_id": "y", "main_account": "y"}, {"shop_id": "x"}]
    twice.write_text(json.dumps({"shops": shops}))
    proc = Proc("serve", "--port", "0", "--bootstrap", str(twice))
    assert proc.finish() == 2
    (failed,) = proc.events("bootstrap.failed")
    assert failed["error"] == f"{twice}: shops[2]: shop 'x' is also shops[0]"


def test_make_clean_forces_a_rebuild(tmp_path: Path) -> None:
    """After `make clean`, `make serve` reinstalls (compiling the engine) before it serves: the
    extension and the stamp go together. A stand-in tree, so nothing is built here."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("pyproject.toml", "clients/python/pyproject.toml", "_fastpath/_core.pyx", ".venv/bin/python"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    built = tmp_path / "_fastpath" / "_core.cpython-311-x86_64-linux-gnu.so"
    built.write_text("")
    stamp = tmp_path / ".venv" / ".installed"
    stamp.write_text("")
    later = time.time() + 60
    os.utime(stamp, (later, later))  # the stamp is newer than what it depends on: up to date

    def dry_run() -> str:
        return subprocess.run(
            [make, "-n", "serve"], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60
        ).stdout

    assert "pip install" not in dry_run()
    subprocess.run([make, "clean"], cwd=tmp_path, capture_output=True, check=True, timeout=60)
    assert not built.exists() and not stamp.exists()
    plan = dry_run()
    assert "pip install -q -e '.[dev]'" in plan and plan.index("pip install") < plan.index("dispatcher serve")
