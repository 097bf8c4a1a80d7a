"""The server's event loop: uvloop, with grpc.aio's wake-up socket kept empty.

grpc.aio (1.76) hands completions from its poller thread to the event loop
through a socket pair: the poller thread pushes each completion on a queue and
writes **one byte per completion**; the loop's reader callback reads **one
byte** and then runs every queued completion. Under load many completions
arrive per turn of the loop, so the bytes pile up (one turn reads one byte)
until the socket's buffer is full (a few hundred 1-byte writes). From then on
the poller thread blocks in ``write`` after each completion and is let go by
one byte per turn of the loop: the server receives one completion (a new call,
a message, a finished write) per turn, and every call waits. With 500
WatchAssignments streams busy, health checks stalled for 60-250 ms at a time
while the loop itself never paused for more than ~10 ms (measured: see
``tests/test_aio.py`` and DURABILITY.md, "Watchers").

``Loop`` wraps that one reader: it counts the bytes waiting, lets grpc's
callback read its byte and run every queued completion, then reads the other
bytes it counted, which belong to completions just run (a completion is queued
before its byte is written). The socket never fills and the poller thread never
blocks; a completion queued meanwhile keeps its byte and wakes the loop again.
If grpc's callback raises, nothing more is read. Any other reader is registered
as it is.

Use it for the only event loop of a process that uses grpc.aio, which is the
server's case (``dispatcher serve``). grpc.aio shares one poller and one socket
between all the loops of a process; with another loop reading the same socket,
the bytes counted could be another loop's, and a wake-up could be lost.
"""

from __future__ import annotations

import fcntl
import socket
import sys
import termios
from collections.abc import Callable
from typing import Any, Final, TypeVarTuple

import uvloop

__all__ = ["Loop", "is_grpc_wakeup_reader", "new_event_loop"]

_Ts = TypeVarTuple("_Ts")

_GRPC_READER: Final = "CompletionQueue._handle_events"
"""The ``__qualname__`` ending of grpc.aio's reader (``PollerCompletionQueue._handle_events``)."""


def is_grpc_wakeup_reader(fd: object, callback: Callable[..., Any]) -> bool:
    """True for the reader grpc.aio registers on its poller's wake-up socket."""
    func = getattr(callback, "func", None)  # grpc registers functools.partial(handler, loop)
    return isinstance(fd, socket.socket) and getattr(func, "__qualname__", "").endswith(_GRPC_READER)


def _draining(sock: socket.socket, callback: Callable[..., Any]) -> Callable[..., Any]:
    fileno = sock.fileno()
    waiting = bytearray(4)
    scratch = bytearray(65536)
    recv_into = sock.recv_into

    def run(*args: Any) -> None:
        fcntl.ioctl(fileno, termios.FIONREAD, waiting, True)
        before = int.from_bytes(waiting, sys.byteorder)
        # grpc's reader: reads one byte, then runs every completion queued by
        # now, which includes the completions of all ``before`` bytes (each
        # byte is written after its completion is queued). If it raises, its
        # bytes stay and the next wake-up runs what it left.
        callback(*args)
        extra = before - 1  # the bytes of completions just run
        while extra > 0:
            try:
                got = recv_into(scratch, min(extra, len(scratch)))
            except BlockingIOError:
                break
            if got <= 0:
                break
            extra -= got

    return run


class Loop(uvloop.Loop):
    """uvloop's loop, except that grpc.aio's wake-up socket is read empty on each wake-up."""

    def __init__(self) -> None:
        super().__init__()
        self.grpc_wakeup_sockets: list[socket.socket] = []
        """The wake-up sockets whose reader was wrapped (one per grpc.aio completion queue)."""

    def add_reader(self, fd: Any, callback: Callable[[*_Ts], Any], *args: *_Ts) -> None:
        if is_grpc_wakeup_reader(fd, callback):
            self.grpc_wakeup_sockets.append(fd)
            super().add_reader(fd, _draining(fd, callback), *args)
        else:
            super().add_reader(fd, callback, *args)


def new_event_loop() -> Loop:
    """A new ``Loop`` (the ``loop_factory`` of the server's ``asyncio.Runner``)."""
    return Loop()
