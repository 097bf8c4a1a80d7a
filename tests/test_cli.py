"""`python -m dispatcher serve` as a real subprocess: start-up, demo bootstrap, signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import grpc
import pytest
from server_fixtures import DEMO, Proc

from dispatch_client import DispatchClient, pb
from dispatcher.cli import build_parser
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
