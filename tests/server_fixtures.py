"""Helpers and fixtures shared by the tests (loaded by ``conftest.py`` as a plugin).

- ``ThreadedServer``: a real Dispatch server on a free port, in its own thread
  with its own uvloop event loop, so both the async client (in the test's
  loop) and the blocking client can call it (plain uvloop: ``dispatcher.aio``'s
  loop, which ``dispatcher serve`` runs, is for a process's only loop); the fixtures
  ``server``, ``client`` and ``sync_client`` start one per test.
- ``Proc``: ``dispatcher serve`` as a subprocess (no authentication, explicitly);
  ``demo_server`` runs it on the demo bootstrap.
- ``T0``: a fixed event time.

Tests import the helpers (``from server_fixtures import T0, Proc``); the
fixtures need no import.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

import _fastpath
from dispatcher.server import DispatchServer
from dispatcher.testing import ServerProcess

try:
    import dispatch_client
except ImportError:  # a checkout whose venv predates the client's install line
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python"))
    import dispatch_client

__all__ = ["DEMO", "ROOT", "T0", "Proc", "ThreadedServer", "client", "demo_server", "server", "sync_client"]

T0 = 1_700_000_000_000
"""A fixed event time (2023-11-14T22:13:20Z) in milliseconds; tests pass `at` explicitly."""


class ThreadedServer:
    """DispatchServer on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, engine: Any | None = None, **options: Any) -> None:
        if "auth" not in options:
            options.setdefault("no_auth", True)  # authentication is off explicitly, never by default
        self.server = DispatchServer(engine if engine is not None else _fastpath.Engine(0), **options)
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dispatch-server", daemon=True)
        self.port = 0

    @property
    def engine(self) -> Any:
        return self.server.engine

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop (e.g. to inspect the engine between calls)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ThreadedServer:
        self._thread.start()
        self.port = self.run(self.server.start("127.0.0.1", 0))
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        self.run(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    running = ThreadedServer().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def client(server: ThreadedServer) -> AsyncIterator[dispatch_client.AsyncDispatchClient]:
    async with dispatch_client.AsyncDispatchClient(server.target, timeout=30) as c:
        yield c


@pytest.fixture
def sync_client(server: ThreadedServer) -> Iterator[dispatch_client.DispatchClient]:
    with dispatch_client.DispatchClient(server.target, timeout=30) as c:
        yield c


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "dispatcher" / "demo_bootstrap.json"


class Proc(ServerProcess):
    """A server subprocess; these tests run without authentication, explicitly."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(*args, env={"DISPATCH_NO_AUTH": "1", **(env or {})})


@pytest.fixture
def demo_server() -> Iterator[Proc]:
    proc = Proc("serve", "--port", "0", "--bootstrap", str(DEMO), "--log-format", "json")
    try:
        yield proc
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(10)
