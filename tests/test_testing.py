"""dispatcher.testing: a real server subprocess for tests and benchmarks."""

from __future__ import annotations

import signal

import pytest

from dispatcher.testing import ServerProcess


def test_server_process_ignores_the_callers_settings_and_reads_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings of the calling environment must not leak into the server under test.
    monkeypatch.setenv("DISPATCH_PORT", "1")
    monkeypatch.setenv("DISPATCH_LOG_FORMAT", "console")
    proc = ServerProcess("serve", "--port", "0", "--no-auth")
    try:
        port = proc.port()
        assert port not in (0, 1)
        assert proc.target == f"127.0.0.1:{port}"
        assert proc.finish(signal.SIGTERM) == 0
        assert [e["event"] for e in proc.events()][-1] == "server.stopped"  # JSON lines, read to the end
        assert len(proc.events("server.started")) == 1
    finally:
        proc.ensure_dead()
