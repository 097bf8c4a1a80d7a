"""dispatcher.aio: the server's loop keeps grpc.aio's wake-up socket empty."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import sys
import termios
from collections.abc import Callable
from typing import Any

import grpc
import uvloop

from dispatcher import aio


class _Recording(uvloop.Loop):  # type: ignore[misc]
    """Plain uvloop that only remembers grpc's wake-up socket: what the server ran on before."""

    def __init__(self) -> None:
        super().__init__()
        self.grpc_wakeup_sockets: list[socket.socket] = []

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        if aio.is_grpc_wakeup_reader(fd, callback):
            self.grpc_wakeup_sockets.append(fd)
        super().add_reader(fd, callback, *args)


def _waiting(sock: socket.socket) -> int:
    buf = bytearray(4)
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
    return int.from_bytes(buf, sys.byteorder)


async def _burst(calls: int) -> dict[str, int]:
    """A grpc.aio echo server and client on this loop; ``calls`` concurrent calls, 3 rounds.

    Returns the most bytes seen waiting in the wake-up socket, and what is left at the end."""
    loop = asyncio.get_running_loop()
    server = grpc.aio.server()

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("t.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    most = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.Echo/Echo")
            await call(b"x")
            sockets = loop.grpc_wakeup_sockets  # type: ignore[attr-defined]
            assert len(sockets) == 1, sockets  # one completion queue for the process
            sampling = True

            async def sample() -> None:
                nonlocal most
                while sampling:
                    most = max(most, _waiting(sockets[0]))
                    await asyncio.sleep(0)

            sampler = loop.create_task(sample())
            for _ in range(3):
                answers = await asyncio.gather(*(call(b"%d" % i) for i in range(calls)))
                assert answers == [b"%d" % i for i in range(calls)]
            sampling = False
            await sampler
            await asyncio.sleep(0.05)
            left = _waiting(sockets[0])
    finally:
        await server.stop(None)
    return {"most": most, "left": left}


def _run(factory: Callable[[], asyncio.AbstractEventLoop]) -> dict[str, int]:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_burst(2000))


def test_the_wakeup_socket_never_fills_on_the_server_loop() -> None:
    # grpc's poller writes one byte per completion and its reader reads one byte
    # per turn of the loop: on plain uvloop the bytes pile up under load (until
    # the socket is full and the poller thread blocks after every completion).
    # On dispatcher.aio's loop only the bytes of the completions that arrived
    # during the turn in progress wait (a handful), and none are left after.
    plain = _run(_Recording)
    ours = _run(aio.new_event_loop)
    assert plain["most"] >= 200, plain  # full: a few hundred 1-byte writes fill a unix socket's buffer
    assert ours["most"] <= 50 and ours["left"] <= 1, ours


def test_other_readers_are_registered_unchanged() -> None:
    loop = aio.new_event_loop()
    try:
        a, b = socket.socketpair()
        got: list[bytes] = []
        loop.add_reader(a, lambda: got.append(a.recv(10)))
        b.send(b"hi")
        loop.run_until_complete(asyncio.sleep(0.05))
        assert got == [b"hi"]
        assert loop.grpc_wakeup_sockets == []
        loop.remove_reader(a)
        a.close()
        b.close()
    finally:
        loop.close()
