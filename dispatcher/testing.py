"""Helpers for testing against a real ``dispatcher serve`` process (tests and benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ENV_VARS

__all__ = ["ServerProcess"]

_ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """``python -m dispatcher ARGS...`` in a subprocess; its JSON log lines are read on a thread.

    The server's settings come only from ``args`` and ``env``: the ``DISPATCH_*``
    variables of the calling environment that configure it are dropped.
    """

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", *args],
            cwd=_ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line)
            if "server.started" in line:
                self._started.set()
        self._started.set()  # the process ended

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log records so far, optionally only those of one event."""
        records = [json.loads(line) for line in list(self.lines) if line.startswith("{")]
        return [r for r in records if name is None or r["event"] == name]

    def port(self, timeout: float = 60) -> int:
        """The gRPC port from the ``server.started`` line (fails if the server never started)."""
        assert self._started.wait(timeout), "the server did not start"
        started = self.events("server.started")
        assert started, "".join(self.lines)
        return int(started[0]["port"])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port()}"

    def finish(self, sig: signal.Signals | None = None, timeout: float = 30) -> int:
        """Send ``sig`` (if any), wait for the exit code, and let the reader drain the log."""
        if sig is not None:
            self.popen.send_signal(sig)
        code = self.popen.wait(timeout)
        self._reader.join(10)
        return code

    def ensure_dead(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
