"""The append-only journal: framed records in segment files, written with group commit.

On disk
-------
``journal-<first seq, 20 digits>.log`` segment files; each record is::

    u32 length | u32 crc32(seq ‖ payload) | u64 seq | payload (length bytes)

little-endian. Sequence numbers are consecutive across segments (a segment's
name is the seq of its first record). A new segment starts at every snapshot
(so whole segments can be deleted once two newer snapshots exist) and when a
segment passes ``segment_bytes``.

Group commit
------------
``append()`` runs on the event loop, synchronously, right after the engine
call: it frames the record into an in-memory buffer and returns its seq. A
flusher task hands the whole buffer to one writer thread, which writes it with
one ``write`` and (mode ``always``) one ``fdatasync``; meanwhile new records
fill the next buffer. ``barrier()`` returns the future that resolves once
every record appended so far is durable under the mode (or ``None`` when they
already are), so a caller that awaits it before answering never acknowledges
a record that could be lost. Under concurrency one fsync covers every record
written since the previous one.

Modes (as Redis' appendfsync):

``always``  answer after write + fdatasync.
``batch``   answer after write (survives a process crash); fdatasync at most
            every ``fsync_interval_ms`` (an OS crash or power loss loses at most
            about that window of acknowledged calls).
``none``    answer at once; written by the flusher soon after, fsynced only at
            rotation and close. Tests and benchmarks only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import structlog

__all__ = [
    "FSYNC_MODES",
    "HEADER",
    "Journal",
    "JournalError",
    "Segment",
    "SegmentScan",
    "frame",
    "list_segments",
    "scan_segment",
    "segment_path",
]

log = structlog.get_logger("dispatcher.durability")

FSYNC_MODES: Final = ("always", "batch", "none")
HEADER: Final = struct.Struct("<IIQ")
_SEQ: Final = struct.Struct("<Q")
MAX_RECORD: Final = 64 * 1024 * 1024
SEGMENT_BYTES: Final = 64 * 1024 * 1024
_SEGMENT_RE: Final = re.compile(r"^journal-(\d{20})\.log$")


class JournalError(RuntimeError):
    """The journal cannot be written: nothing may be acknowledged any more."""


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"journal-{first_seq:020d}.log"


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    first_seq: int
    path: Path


def list_segments(directory: Path) -> list[Segment]:
    out = []
    for entry in os.scandir(directory):
        m = _SEGMENT_RE.match(entry.name)
        if m:
            out.append(Segment(int(m.group(1)), Path(entry.path)))
    out.sort(key=lambda s: s.first_seq)
    return out


def frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))
    return HEADER.pack(len(payload), crc, seq) + payload


@dataclasses.dataclass(slots=True)
class SegmentScan:
    """What a segment holds: its valid records, and where and why it stops being valid."""

    records: list[tuple[int, memoryview]]
    good_end: int
    size: int
    error: str | None

    @property
    def last_seq(self) -> int | None:
        return self.records[-1][0] if self.records else None


def scan_segment(segment: Segment) -> SegmentScan:
    """Read a segment; stop at the first partial, corrupt or out-of-sequence record."""
    data = memoryview(segment.path.read_bytes())
    size = len(data)
    records: list[tuple[int, memoryview]] = []
    pos = 0
    expected = segment.first_seq
    error: str | None = None
    hsize = HEADER.size
    while pos < size:
        if size - pos < hsize:
            error = f"partial record header ({size - pos} bytes)"
            break
        length, crc, seq = HEADER.unpack_from(data, pos)
        if length > MAX_RECORD:
            error = f"record length {length} is impossible"
            break
        end = pos + hsize + length
        if end > size:
            error = f"partial record (needs {length} bytes, {size - pos - hsize} left)"
            break
        payload = data[pos + hsize : end]
        if zlib.crc32(data[pos + 8 : end]) != crc:  # seq ‖ payload are contiguous on disk
            error = "bad CRC"
            break
        if seq != expected:
            error = f"record seq {seq} where {expected} was expected"
            break
        records.append((seq, payload))
        expected += 1
        pos = end
    return SegmentScan(records, pos, size, error)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The writer side. Create after recovery; ``start()`` on the event loop; ``close()`` at the end."""

    def __init__(
        self,
        directory: Path,
        next_seq: int,
        *,
        mode: str = "always",
        fsync_interval_ms: int = 100,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        if mode not in FSYNC_MODES:
            raise ValueError(f"fsync mode {mode!r} is not one of {', '.join(FSYNC_MODES)}")
        self.directory = directory
        self.mode = mode
        self.fsync_interval = fsync_interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        self.seq = next_seq - 1
        """Last appended record."""
        self.durable_seq = next_seq - 1
        """Last record durable under the mode (written for batch, written+fsynced for always)."""
        self.synced_seq = next_seq - 1
        """Last record fsynced."""
        self.on_fsync: Callable[[float], None] | None = None
        """Called on the event loop with the duration (seconds) of every fsync: the metrics hook."""
        self.notify_at = 1 << 62
        """When ``seq`` reaches this, ``on_threshold`` is called (the snapshot policy)."""
        self.on_threshold: Callable[[], None] | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        self.fsyncs = 0
        self.writes = 0
        self.failed: BaseException | None = None
        self._buf = bytearray()
        self._sealed: list[tuple[bytearray, int]] = []  # (chunk, last seq) ending with a rotation
        self._pending: asyncio.Future[None] | None = None
        self._inflight_upto = next_seq - 1
        self._inflight: asyncio.Future[None] | None = None
        self._callbacks: list[tuple[int, Callable[[], None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._last_fsync = time.monotonic()
        self._want_sync = False
        self._closing = False
        # The current segment: a fresh one per start (reused if it exists and is empty).
        path = segment_path(directory, next_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seg_size = os.fstat(self._fd).st_size
        if self._seg_size:
            os.close(self._fd)
            raise JournalError(f"{path} already holds {self._seg_size} bytes; recovery should have replayed it")
        _fsync_dir(directory)

    # ---------------------------------------------------------------- event-loop side

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._flusher(), name="journal-flusher")
        if self._buf or self._sealed:
            self._wake.set()
        if self.mode == "batch":
            self._sync_task = self._loop.create_task(self._sync_timer(), name="journal-fsync-timer")

    def append(self, payload: bytes) -> int:
        """Frame one record into the buffer; return its seq. Synchronous, on the event loop."""
        if self.failed is not None:
            raise JournalError(f"the journal failed: {self.failed}")
        seq = self.seq + 1
        self.seq = seq
        self._buf += HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq))), seq)
        self._buf += payload
        if self._wake is not None:
            self._wake.set()
        if seq >= self.notify_at and self.on_threshold is not None:
            self.on_threshold()
        return seq

    def rotate(self) -> int:
        """End the current segment after the last appended record; return that seq."""
        self._sealed.append((self._buf, self.seq))
        self._buf = bytearray()
        if self._wake is not None:
            self._wake.set()
        return self.seq

    def barrier(self) -> asyncio.Future[None] | None:
        """A future resolved when everything appended so far is durable; None if it already is."""
        if self.failed is not None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(JournalError(f"the journal failed: {self.failed}"))
            return fut
        if self.seq <= self.durable_seq or self.mode == "none":
            return None
        if self.seq <= self._inflight_upto:
            if self._inflight is None:
                self._inflight = asyncio.get_running_loop().create_future()
            return self._inflight
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
        return self._pending

    def after_durable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything appended so far is durable (at once if it is)."""
        if self.seq <= self.durable_seq or self.mode == "none" or self.failed is not None:
            callback()
        else:
            self._callbacks.append((self.seq, callback))

    async def wait_durable(self) -> None:
        fut = self.barrier()
        if fut is not None:
            await fut

    async def sync(self) -> None:
        """Write and fsync everything appended so far (any mode)."""
        target = self.seq
        for _ in range(60_000):  # bounded: a minute of 1 ms waits
            if self.synced_seq >= target:
                return
            if self.failed is not None:
                raise JournalError(f"the journal failed: {self.failed}")
            self._want_sync = True
            assert self._wake is not None
            self._wake.set()
            await asyncio.sleep(0.001)
        raise JournalError("the journal did not sync within a minute")

    async def close(self) -> None:
        """Write and fsync everything; stop the flusher; close the segment."""
        if self._task is not None and self.failed is None:
            await self.sync()
        self._closing = True
        for task in (self._task, self._sync_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._executor.shutdown(wait=True)
        if self._fd >= 0:
            if self.failed is None and self._task is None:
                os.fsync(self._fd)  # never started: a no-op apart from the empty file
            os.close(self._fd)
            self._fd = -1

    async def _sync_timer(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            if self.synced_seq < self.durable_seq or self.synced_seq < self.seq:
                self._want_sync = True
                assert self._wake is not None
                self._wake.set()

    async def _flusher(self) -> None:
        assert self._wake is not None and self._loop is not None
        loop = self._loop
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buf or self._sealed or self._want_sync:
                chunks = self._sealed
                chunks.append((self._buf, self.seq))
                self._sealed = []
                self._buf = bytearray()
                upto = self.seq
                fut, self._pending = self._pending, None
                self._inflight_upto, self._inflight = upto, fut
                do_sync = self.mode == "always" or self._want_sync or (
                    self.mode == "batch" and time.monotonic() - self._last_fsync >= self.fsync_interval
                )
                self._want_sync = False
                try:
                    fsync_s = await loop.run_in_executor(self._executor, self._write, chunks, do_sync)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - an I/O failure ends all durability
                    self._fail(exc)
                    return
                self.writes += 1
                if fsync_s is not None:
                    self.fsyncs += 1
                    self._last_fsync = time.monotonic()
                    self.synced_seq = upto
                    if self.on_fsync is not None:
                        try:
                            self.on_fsync(fsync_s)
                        except Exception:  # noqa: BLE001 - a metrics hook never breaks the journal
                            log.exception("journal.on_fsync_failed")
                if self.mode != "always" or fsync_s is not None:
                    self.durable_seq = upto
                fut = self._inflight
                self._inflight = None
                if fut is not None and not fut.done():
                    fut.set_result(None)
                if self._callbacks:
                    ready = [cb for seq, cb in self._callbacks if seq <= upto]
                    self._callbacks = [(seq, cb) for seq, cb in self._callbacks if seq > upto]
                    for cb in ready:
                        cb()

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        log.critical("journal.failed", error=repr(exc), last_durable_seq=self.durable_seq, last_seq=self.seq)
        error = JournalError(f"the journal failed: {exc!r}")
        for fut in (self._inflight, self._pending):
            if fut is not None and not fut.done():
                fut.set_exception(error)
                fut.exception()  # mark retrieved: nobody may be waiting on it
        self._inflight = self._pending = None
        self._callbacks.clear()
        if self.on_failure is not None:
            self.on_failure(exc)

    # ---------------------------------------------------------------- writer thread

    def _write(self, chunks: list[tuple[bytearray, int]], do_sync: bool) -> float | None:
        """Write the chunks in order, starting a new segment after each sealed one
        (all but the last) and when the segment grew past ``segment_bytes``; maybe fsync."""
        last = len(chunks) - 1
        for i, (chunk, upto) in enumerate(chunks):
            if chunk:
                self._write_all(chunk)
            if i < last or self._seg_size >= self.segment_bytes:
                self._rotate_file(upto + 1)
        if do_sync:
            start = time.perf_counter()
            os.fdatasync(self._fd)
            return time.perf_counter() - start
        return None

    def _write_all(self, data: bytearray) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._seg_size += n

    def _rotate_file(self, next_seq: int) -> None:
        os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1
        path = segment_path(self.directory, next_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seg_size = os.fstat(self._fd).st_size
        _fsync_dir(self.directory)


def iter_records(scans: list[SegmentScan]) -> Iterator[tuple[int, memoryview]]:
    for scan in scans:
        yield from scan.records
