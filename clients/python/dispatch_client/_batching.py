"""Batching: the async client's automatic batches on one OperateStream, and the
futures of the blocking client's explicit ``pipeline()`` (``_client.Pipeline``).

Automatic batching (``AutoBatcher``), in the manner of ioredis ``enableAutoPipelining``:
every ``dispatch`` / ``set_presence`` / ``report_conversation`` / ``claim_from_pool``
call of an ``AsyncDispatchClient`` serializes its request, appends it to the open
batch and returns a future. The first call of a batch schedules the flush with
``loop.call_soon`` (or ``call_later(max_delay)``), so every call made in the same
loop iteration lands in the same ``OperateRequest`` and a lone call is sent as soon
as the loop is idle. A batch that reaches ``max_batch_size`` is closed at once.

Batches are written, in order, on one shared ``OperateStream``; the server answers
them in order, so a FIFO of the batches in flight matches each answer to its
batch, and each ``OperationResult`` to its call. At most ``max_batches_in_flight``
batches are on the wire; calls beyond that wait (their callers awaiting) in the
batches still open, which therefore grow: under load the batches get bigger, not
more numerous.

When the stream breaks, the calls in flight fail with UNAVAILABLE (they may or may
not have been applied) and the next batch opens a new stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar, cast

import grpc
from google.protobuf.message import Message

from ._errors import OperationError, error_for, error_of
from ._gen.dispatch.v1 import dispatch_pb2

__all__ = [
    "MAX_BATCH",
    "AutoBatcher",
    "BatchStats",
    "OperationError",
    "OperationFuture",
    "error_of",
]

MAX_BATCH: Final = 4096
"""The server's limit of operations in one OperateRequest."""

OPERATE_STREAM: Final = "/dispatch.v1.Dispatch/OperateStream"

# Stream endings that say nothing about the operations themselves (transport, restart,
# cancellation): the calls in flight get UNAVAILABLE. Any other status of the stream (the
# server refused it: UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, INVALID_ARGUMENT...)
# is what each call in flight gets, as its unary form would have.
_BROKEN: Final = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
    }
)

_T = TypeVar("_T", bound=Message)


def _error(code: grpc.StatusCode, details: str) -> OperationError:
    """The ``OperationError`` (of ``code``'s class) for a call that went in a batch."""
    return cast(OperationError, error_for(code, details, batched=True))


# ---------------------------------------------------------------- the wire form of an Operation
#
# An OperateRequest is the concatenation of its operations, each framed as field 1
# (operations) around an Operation whose oneof field (1..4) frames the unary request.
# Building these bytes directly costs one serialization per call and one join per
# batch (no Operation/OperateRequest objects, no copies of the requests).

KINDS: Final = ("dispatch", "set_presence", "report_conversation", "claim_from_pool")
_TAG: Final = {kind: bytes([(number << 3) | 2]) for number, kind in enumerate(KINDS, start=1)}
_SMALL_VARINTS: Final = [bytes([n]) for n in range(128)]


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_operation(kind: str, payload: bytes) -> bytes:
    """One operation, as the bytes of an ``OperateRequest`` holding only it. ``payload`` is the
    serialized unary request of ``kind``; an OperateRequest is any concatenation of these."""
    body = _TAG[kind] + _varint(len(payload)) + payload
    return b"\x0a" + _varint(len(body)) + body


# ---------------------------------------------------------------- automatic batching (async)


@dataclasses.dataclass(slots=True)
class BatchStats:
    """What an AutoBatcher has sent, for tests and metrics."""

    batches: int = 0
    """OperateRequests written."""
    operations: int = 0
    """Operations in them."""
    streams: int = 0
    """OperateStreams opened (1 + reconnections)."""
    largest_batch: int = 0
    """Most operations in one batch."""
    most_in_flight: int = 0
    """Most batches written and not yet answered at once (at most max_batches_in_flight)."""


class _Batch:
    __slots__ = ("data", "futures", "kinds", "parts", "timer")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.kinds: list[str] = []
        self.data = b""
        self.timer: asyncio.TimerHandle | None = None

    def fail(self, error: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for future in self.futures:
            if not future.done():
                future.set_exception(error)


class _Stream:
    """One OperateStream: a writer task, a reader task, and the FIFO of batches in flight."""

    def __init__(self, owner: AutoBatcher, call: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.call = call
        self.loop = loop
        self.in_flight: deque[_Batch] = deque()
        self.to_write: deque[bytes] = deque()
        self.wake: asyncio.Future[None] | None = None
        self.broken = False
        self.writer = loop.create_task(self._write())
        self.reader = loop.create_task(self._read())

    def send(self, batch: _Batch, timeout: float | None) -> None:
        batch.data = b"".join(batch.parts)
        batch.parts = []
        self.in_flight.append(batch)
        self.to_write.append(batch.data)
        if timeout is not None:
            batch.timer = self.loop.call_later(timeout, self.owner._expired, self, batch)
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write(self) -> None:
        call = self.call
        queue = self.to_write
        try:
            while True:
                while queue:
                    await call.write(queue.popleft())
                self.wake = self.loop.create_future()
                await self.wake
                self.wake = None
        except asyncio.CancelledError:
            if not self.broken:
                self.owner._break(self, grpc.StatusCode.CANCELLED, "the stream's writer was cancelled")
            raise
        except grpc.RpcError as exc:
            self.owner._break(self, exc.code(), exc.details() or "")
        except Exception as exc:
            if not self.broken:
                try:
                    code, details = await call.code(), await call.details()
                except Exception:
                    code, details = grpc.StatusCode.UNKNOWN, repr(exc)
                self.owner._break(self, code, details)

    async def _read(self) -> None:
        call = self.call
        eof = cast(Any, grpc.aio).EOF  # the stubs lack grpc.aio.EOF
        owner = self.owner
        try:
            while True:
                raw = await call.read()
                if raw is eof:
                    break
                if not self.in_flight:
                    owner._break(self, grpc.StatusCode.INTERNAL, "the server answered a batch that was not sent")
                    return
                owner._answered(self, self.in_flight.popleft(), raw)
            code, details = await call.code(), await call.details()
        except asyncio.CancelledError:
            if not self.broken:
                self.owner._break(self, grpc.StatusCode.CANCELLED, "the stream's reader was cancelled")
            raise
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        except Exception as exc:
            code, details = grpc.StatusCode.UNKNOWN, repr(exc)
        owner._break(self, code, details)

    def close(self) -> None:
        """Cancel the call and both tasks (the caller has failed what was in flight)."""
        self.broken = True
        self.call.cancel()
        current = asyncio.current_task()
        for task in (self.writer, self.reader):
            if task is not current:
                task.cancel()


class AutoBatcher:
    """Sends calls as batches on one shared OperateStream (see the module docstring).

    ``submit(kind, request)`` returns a future for that call's response (the unary
    response message of ``kind``), or its ``OperationError``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        max_batch_size: int = 1024,
        max_delay: float = 0.0,
        max_batches_in_flight: int = 8,
        timeout: float | None = 30.0,
        unimplemented: Callable[[str, bytes], asyncio.Future[Any]] | None = None,
    ) -> None:
        if not 1 <= max_batch_size <= MAX_BATCH:
            raise ValueError(f"max_batch_size must be 1..{MAX_BATCH}, not {max_batch_size}")
        if max_delay < 0:
            raise ValueError("max_delay must be >= 0")
        if max_batches_in_flight < 1:
            raise ValueError("max_batches_in_flight must be >= 1")
        self._method: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            OPERATE_STREAM
        )  # raw bytes
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_batches_in_flight = max_batches_in_flight
        self.timeout = timeout
        self.stats = BatchStats()
        self._unimplemented = unimplemented
        """Sends one call as its unary RPC: used for good once the server says it has no OperateStream."""
        self._unary_only = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: deque[_Batch] = deque()
        """Batches being filled or waiting for room, oldest first; only the last one takes new calls."""
        self._scheduled: asyncio.Handle | None = None
        self._stream: _Stream | None = None
        self._closed = False
        self._streams: list[_Stream] = []

    @property
    def stream_open(self) -> bool:
        return self._stream is not None

    def submit(self, kind: str, request: Message) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        payload = request.SerializeToString()
        if self._unary_only and self._unimplemented is not None:
            return self._unimplemented(kind, payload)
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(_error(grpc.StatusCode.CANCELLED, "the client is closed"))
            return future
        open_ = self._open
        if open_ and len(open_[-1].futures) < self.max_batch_size:
            batch = open_[-1]
        else:
            batch = _Batch()
            open_.append(batch)
        batch.parts.append(encode_operation(kind, payload))
        batch.futures.append(future)
        batch.kinds.append(kind)
        if len(batch.futures) >= self.max_batch_size:
            self._flush(full_only=True)  # a full batch goes at once
        if self._scheduled is None and self._open:
            if self.max_delay:
                self._scheduled = loop.call_later(self.max_delay, self._flush_all)
            else:
                self._scheduled = loop.call_soon(self._flush_all)
        return future

    def _flush_all(self) -> None:
        self._scheduled = None
        self._flush(full_only=False)

    def _flush(self, full_only: bool) -> None:
        """Send the open batches (only the full ones when ``full_only``) while there is room."""
        open_ = self._open
        if not open_ or self._closed:
            return
        stream = self._stream
        if stream is None:
            assert self._loop is not None
            self._streams = [s for s in self._streams if not (s.writer.done() and s.reader.done())]
            stream = self._stream = _Stream(self, self._method(), self._loop)
            self._streams.append(stream)
            self.stats.streams += 1
        stats = self.stats
        while open_ and len(stream.in_flight) < self.max_batches_in_flight:
            size = len(open_[0].futures)
            if full_only and size < self.max_batch_size:
                break
            batch = open_.popleft()
            stream.send(batch, self.timeout)
            stats.batches += 1
            stats.operations += size
            stats.largest_batch = max(stats.largest_batch, size)
        stats.most_in_flight = max(stats.most_in_flight, len(stream.in_flight))

    def _answered(self, stream: _Stream, batch: _Batch, raw: bytes) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        try:
            results = dispatch_pb2.OperateResponse.FromString(raw).results
        except Exception:
            batch.fail(_error(grpc.StatusCode.INTERNAL, "the server's answer to a batch could not be parsed"))
            self._break(stream, grpc.StatusCode.INTERNAL, "the server's answer to a batch could not be parsed")
            return
        futures = batch.futures
        if len(results) != len(futures):
            details = f"the server answered {len(results)} results for a batch of {len(futures)} operations"
            batch.fail(_error(grpc.StatusCode.INTERNAL, details))
            self._break(stream, grpc.StatusCode.INTERNAL, details)
            return
        for future, kind, result in zip(futures, batch.kinds, results, strict=False):
            if future.done():  # the caller gave up (cancelled)
                continue
            if result.HasField("error"):
                future.set_exception(error_of(result.error))
            else:
                future.set_result(getattr(result, kind))
        if self._open and self._stream is stream:
            # Room on the wire again: what waited for it goes now (the partial batch too,
            # unless its own flush is already scheduled).
            self._flush(full_only=self._scheduled is not None)

    def _expired(self, stream: _Stream, batch: _Batch) -> None:
        """A batch's deadline passed unanswered: it fails DEADLINE_EXCEEDED, and the stream (whose
        later answers would come after it) is reset; the rest of its batches fail UNAVAILABLE."""
        batch.timer = None
        if stream.broken or batch not in stream.in_flight:
            return
        batch.fail(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
        self._break(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "a batch before these was not answered in time")

    def _break(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        """The stream ended: fail every call in flight on it, forget it, and let the open batches
        (not sent yet) go on a new stream."""
        if stream.broken:
            return
        stream.close()
        if self._stream is stream:
            self._stream = None
        if self._closed:
            error = _error(grpc.StatusCode.CANCELLED, "the client was closed before the answer came")
        elif code == grpc.StatusCode.UNIMPLEMENTED and self._unimplemented is not None:
            # A server without OperateStream: nothing was applied; send every call as its unary RPC.
            self._unary_only = True
            pending = list(stream.in_flight) + list(self._open)
            stream.in_flight.clear()
            self._open.clear()
            for batch in pending:
                if batch.timer is not None:
                    batch.timer.cancel()
                request = dispatch_pb2.OperateRequest.FromString(batch.data or b"".join(batch.parts))
                for future, kind, op in zip(batch.futures, batch.kinds, request.operations, strict=False):
                    if not future.done():
                        _chain(self._unimplemented(kind, getattr(op, kind).SerializeToString()), future)
            return
        elif code in _BROKEN or code == grpc.StatusCode.DEADLINE_EXCEEDED:
            error = _error(
                grpc.StatusCode.UNAVAILABLE,
                f"the OperateStream broke ({code.name}: {details}); the operation may or may not have been applied",
            )
        else:
            error = _error(code, details)
        for batch in stream.in_flight:
            batch.fail(error)
        stream.in_flight.clear()
        if self._open and not self._closed and self._scheduled is None and self._loop is not None:
            self._scheduled = self._loop.call_soon(self._flush_all)

    def reset(self) -> None:
        """Break the current stream on purpose (its calls in flight fail UNAVAILABLE); the next
        batch opens a new one."""
        if self._stream is not None:
            self._break(self._stream, grpc.StatusCode.CANCELLED, "reset by the client")

    async def aclose(self) -> None:
        """Fail what is not answered yet with CANCELLED; stop the stream's tasks."""
        self._closed = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        error = _error(grpc.StatusCode.CANCELLED, "the client was closed before the call was sent")
        for batch in self._open:
            batch.fail(error)
        self._open.clear()
        if self._stream is not None:
            self._break(self._stream, grpc.StatusCode.CANCELLED, "the client was closed")
        tasks = [task for stream in self._streams for task in (stream.writer, stream.reader)]
        self._streams.clear()
        await asyncio.gather(*tasks, return_exceptions=True)


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    def copy(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            if not target.done():
                target.cancel()
            return
        exc = done.exception()  # retrieved even when nobody waits for it any more
        if target.done():
            return
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


# ---------------------------------------------------------------- explicit batches (blocking)


class OperationFuture(Generic[_T]):
    """The answer of one operation of a ``Pipeline``, available once the pipeline has run."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: _T | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def result(self) -> _T:
        """The response; raises the operation's error (an ``OperationError``, or the whole
        call's ``grpc.RpcError``)."""
        if not self._done:
            raise RuntimeError("the pipeline has not been executed yet")
        if self._error is not None:
            raise self._error
        return cast(_T, self._value)

    def exception(self) -> BaseException | None:
        if not self._done:
            raise RuntimeError("the pipeline has not been executed yet")
        return self._error

    def _set(self, value: _T | None, error: BaseException | None) -> None:
        self._value, self._error, self._done = value, error, True
