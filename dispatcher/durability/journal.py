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
import errno
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import structlog

from .datadir import DataDir, DataDirLost, Manifest

__all__ = [
    "FSYNC_MODES",
    "HEADER",
    "Journal",
    "JournalError",
    "JournalUnavailable",
    "Segment",
    "SegmentScan",
    "frame",
    "list_segments",
    "scan_segment",
    "segment_path",
    "valid_record_at",
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
    """What a segment holds: its valid records, and where and why it stops being valid.

    ``torn`` is True when what follows the last good record is only an
    interrupted write: a partial header, a record that runs past the end of
    the file, or a record with a zero-filled sector (what an interrupted
    append leaves; etcd's ``isTornEntry``), and no valid record follows it.
    Anything else after the last good record (a bad CRC on a complete record,
    an impossible length, a wrong seq) is damage, and so is a bad record
    followed by a valid one: ``resumes_at`` then names the first valid record
    after the damage (offset, seq)."""

    records: list[tuple[int, memoryview]]
    good_end: int
    size: int
    error: str | None
    torn: bool = False
    resumes_at: tuple[int, int] | None = None

    @property
    def last_seq(self) -> int | None:
        return self.records[-1][0] if self.records else None

    def end_seq(self, first_seq: int) -> int:
        """The seq of the last good record; ``first_seq - 1`` when there is none."""
        return self.records[-1][0] if self.records else first_seq - 1


_SECTOR: Final = 512


def valid_record_at(data: bytes, off: int) -> int | None:
    """The seq of the valid record at ``off``, or None."""
    hsize = HEADER.size
    if off < 0 or len(data) - off < hsize:
        return None
    length, crc, seq = HEADER.unpack_from(data, off)
    end = off + hsize + length
    if length > MAX_RECORD or end > len(data):
        return None
    if zlib.crc32(memoryview(data)[off + 8 : end]) != crc:
        return None
    return int(seq)


def _next_valid(data: bytes, start: int, min_seq: int) -> tuple[int, int] | None:
    """The first valid record at or after ``start`` whose seq is ``min_seq`` or one of the next
    4096 (the records a damaged stretch can have hidden), as (offset, seq); None if there is none.
    Looks for the seq's 8 bytes with ``bytes.find``, so it is fast on a long tail."""
    size = len(data)
    hsize = HEADER.size
    most = min(4096, max(0, (size - start) // hsize) + 1)
    best: tuple[int, int] | None = None
    for k in range(most):
        needle = _SEQ.pack(min_seq + k)
        i = data.find(needle, start + 8)
        while i != -1:
            off = i - 8
            if best is not None and off >= best[0]:
                break
            seq = valid_record_at(data, off)
            if seq is not None:
                best = (off, seq)
                break
            i = data.find(needle, i + 1)
        if best is not None and k > 64:
            break  # the nearest record is found; later seqs lie further on
    return best


def _zero_sector(data: bytes, start: int, end: int) -> bool:
    """Some sector-aligned piece of data[start:end] is all zeros (an append that never reached the disk)."""
    pos = start
    while pos < end:
        stop = min(end, (pos // _SECTOR + 1) * _SECTOR)
        if not any(data[pos:stop]):
            return True
        pos = stop
    return False


def scan_segment(segment: Segment) -> SegmentScan:
    """Read a segment; stop at the first partial, corrupt or out-of-sequence record and tell a
    torn tail from damage (see ``SegmentScan``)."""
    raw = segment.path.read_bytes()
    data = memoryview(raw)
    size = len(data)
    records: list[tuple[int, memoryview]] = []
    pos = 0
    expected = segment.first_seq
    error: str | None = None
    torn = False
    hsize = HEADER.size
    while pos < size:
        if size - pos < hsize:
            error = f"partial record header ({size - pos} bytes)"
            torn = True
            break
        length, crc, seq = HEADER.unpack_from(data, pos)
        if length > MAX_RECORD:
            error = f"record length {length} is impossible"
            break
        end = pos + hsize + length
        if end > size:
            error = f"partial record (needs {length} bytes, {size - pos - hsize} left)"
            torn = True
            break
        payload = data[pos + hsize : end]
        if zlib.crc32(data[pos + 8 : end]) != crc:  # seq ‖ payload are contiguous on disk
            error = "bad CRC"
            torn = end == size and _zero_sector(raw, pos, end)
            break
        if seq != expected:
            error = f"record seq {seq} where {expected} was expected"
            break
        records.append((seq, payload))
        expected += 1
        pos = end
    resumes_at = None
    if error is not None:
        if not any(raw[pos:]):
            torn = True  # only zeros after the last good record: space allocated, never written
        else:
            resumes_at = _next_valid(raw, pos + 1, expected)
            if resumes_at is not None:
                torn = False
    return SegmentScan(records, pos, size, error, torn, resumes_at)


class JournalUnavailable(JournalError):
    """The journal cannot write now (disk full, I/O error: it retries) or any more (the data
    dir is gone): nothing new is accepted and nothing waiting is acknowledged."""


Chunk = tuple[bytes, int, bool]
"""Framed records, the seq of the last one, and whether the segment ends after them."""


class Journal:
    """The writer side. Create after recovery; ``start()`` on the event loop; ``close()`` at the end.

    States: *writable*; *stalled* (a write or fsync failed, e.g. ENOSPC: the
    records not known durable are kept in memory, the file is cut back to its
    last durable byte, and the flusher retries every ``retry_interval``
    seconds; once a retry succeeds the journal is writable again); *failed*
    (the data dir is gone: for good). While not writable, ``check_writable``
    raises ``JournalUnavailable`` (callers refuse new writes before the engine
    applies them) and every barrier fails with it (nothing is acknowledged).
    """

    def __init__(
        self,
        directory: Path | DataDir,
        next_seq: int,
        *,
        mode: str = "always",
        fsync_interval_ms: int = 100,
        segment_bytes: int = SEGMENT_BYTES,
        manifest: Manifest | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        if mode not in FSYNC_MODES:
            raise ValueError(f"fsync mode {mode!r} is not one of {', '.join(FSYNC_MODES)}")
        self.datadir = directory if isinstance(directory, DataDir) else DataDir(directory)
        self._own_datadir = not isinstance(directory, DataDir)
        self.directory = self.datadir.path
        self.manifest = manifest
        self.mode = mode
        self.fsync_interval = fsync_interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        self.retry_interval = retry_interval
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
        """Called when the journal fails for good (the data dir is gone)."""
        self.on_state: Callable[[bool, str | None], None] | None = None
        """Called with (writable, reason) whenever the journal stalls, resumes or fails."""
        self.fsyncs = 0
        self.writes = 0
        self.failed: BaseException | None = None
        self.stalled: BaseException | None = None
        self._buf = bytearray()
        self._sealed: list[Chunk] = []  # chunks ending with a rotation
        self._retained: list[Chunk] = []  # written by no one yet, after a failure (writer thread fills it)
        self._pending: asyncio.Future[None] | None = None
        self._inflight_upto = next_seq - 1
        self._inflight: asyncio.Future[None] | None = None
        self._callbacks: list[tuple[int, Callable[[], None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._last_fsync = time.monotonic()
        self._want_sync = False
        self._closing = False
        # Writer-thread state: the open segment, its size, its last fsynced size and what was
        # written to it since (to write again if an fsync fails).
        self._fd = -1
        self._seg_first = next_seq
        self._seg_size = 0
        self._synced_size = 0
        self._unsynced: list[Chunk] = []
        # The current segment: a fresh one per start (reused if it exists and is empty). On a full
        # disk the journal starts stalled (the flusher retries): reads are served meanwhile, where
        # exiting would make a supervisor restart it in a loop.
        try:
            self._open_segment(next_seq)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.stalled = exc
            log.error("journal.stalled", error=_describe(exc), last_durable_seq=self.durable_seq, at="start")

    # ---------------------------------------------------------------- state

    @property
    def writable(self) -> bool:
        return self.failed is None and self.stalled is None

    def unavailable_reason(self) -> str:
        if self.failed is not None:
            return f"the journal failed for good ({_describe(self.failed)}); restart the server"
        if self.stalled is not None:
            return f"the journal cannot write ({_describe(self.stalled)}); it retries every {self.retry_interval:g} s"
        return ""

    def check_writable(self) -> None:
        """Raise ``JournalUnavailable`` unless a new record could be made durable now."""
        if self.failed is not None or self.stalled is not None:
            raise JournalUnavailable(self.unavailable_reason())

    # ---------------------------------------------------------------- event-loop side

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._flusher(), name="journal-flusher")
        if self._buf or self._sealed:
            self._wake.set()
        if self.mode == "batch":
            self._sync_task = self._loop.create_task(self._sync_timer(), name="journal-fsync-timer")
        self._watch_task = self._loop.create_task(self._watch_dir(), name="journal-dir-watch")

    def append(self, payload: bytes) -> int:
        """Frame one record into the buffer; return its seq. Synchronous, on the event loop.

        Never raises: a record appended while the journal is not writable (the
        caller should have checked) is kept and written once it is, so the
        journal always holds what the engine applied."""
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
        self._sealed.append((bytes(self._buf), self.seq, True))
        self._buf = bytearray()
        if self._wake is not None:
            self._wake.set()
        return self.seq

    def _unavailable_future(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(JournalUnavailable(self.unavailable_reason()))
        return fut

    def barrier(self) -> asyncio.Future[None] | None:
        """A future resolved when everything appended so far is durable; None if it already is.
        While the journal is not writable it fails at once with ``JournalUnavailable``."""
        if self.seq <= self.durable_seq:
            return None
        if self.failed is not None or self.stalled is not None:
            return self._unavailable_future()
        if self.mode == "none":
            return None
        if self.seq <= self._inflight_upto:
            if self._inflight is None:
                self._inflight = asyncio.get_running_loop().create_future()
            return self._inflight
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
        return self._pending

    def after_durable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything appended so far is durable (at once if it is).
        After a stall the callbacks wait for the retry that makes their records durable."""
        if self.seq <= self.durable_seq or self.mode == "none":
            callback()
        elif self.failed is None:
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
            if self.failed is not None or self.stalled is not None:
                raise JournalUnavailable(self.unavailable_reason())
            self._want_sync = True
            assert self._wake is not None
            self._wake.set()
            await asyncio.sleep(0.001)
        raise JournalError("the journal did not sync within a minute")

    async def close(self) -> bool:
        """Write and fsync everything; stop the flusher; close the segment. Returns True when
        everything appended is durable, False when the journal could not write it (stalled or
        failed): those records were never acknowledged and are dropped. Never raises."""
        complete = True
        if self._task is not None and self.writable:
            try:
                await self.sync()
            except JournalError:
                complete = False
        elif self._task is not None:
            complete = self.seq <= self.durable_seq
        self._closing = True
        for task in (self._task, self._sync_task, self._watch_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._executor.shutdown(wait=True)
        if self._fd >= 0:
            try:
                if self._task is None:
                    os.fsync(self._fd)  # never started: a no-op apart from the empty file
                if complete and self.failed is None and self.manifest is not None:
                    self.manifest.raise_floor(self.seq)
            except OSError as exc:
                complete = False
                log.error("journal.close_failed", error=_describe(exc))
            os.close(self._fd)
            self._fd = -1
        if self._own_datadir:
            self.datadir.close()
        return complete and self.failed is None and self.seq <= self.synced_seq

    async def _sync_timer(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            if self.synced_seq < self.durable_seq or self.synced_seq < self.seq:
                self._want_sync = True
                assert self._wake is not None
                self._wake.set()

    async def _watch_dir(self) -> None:
        """Every second: is the data dir (and the open segment) still the one locked?"""
        while True:
            await asyncio.sleep(1.0)
            if self.failed is not None:
                return
            problem = self.datadir.problem(self._fd)
            if problem is not None:
                self._fail(DataDirLost(errno.ESTALE, problem))
                return

    async def _flusher(self) -> None:
        assert self._wake is not None and self._loop is not None
        loop = self._loop
        while True:
            if self.stalled is not None:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.retry_interval)
                except TimeoutError:
                    pass
            else:
                await self._wake.wait()
            self._wake.clear()
            if self.failed is not None:
                return
            while self._buf or self._sealed or self._want_sync or self._retained or self.stalled is not None:
                chunks = self._retained + self._sealed
                chunks.append((bytes(self._buf), self.seq, False))
                self._retained = []
                self._sealed = []
                self._buf = bytearray()
                upto = self.seq
                fut, self._pending = self._pending, None
                self._inflight_upto, self._inflight = upto, fut
                do_sync = (
                    self.mode == "always"
                    or self._want_sync
                    or self.stalled is not None
                    or (self.mode == "batch" and time.monotonic() - self._last_fsync >= self.fsync_interval)
                )
                self._want_sync = False
                try:
                    fsync_s = await loop.run_in_executor(self._executor, self._write, chunks, do_sync)
                except asyncio.CancelledError:
                    raise
                except DataDirLost as exc:
                    self._fail(exc)
                    return
                except OSError as exc:  # ENOSPC, EIO, EROFS...: the writer thread kept what it lost
                    self._stall(exc)
                    break
                except BaseException as exc:
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
                        except Exception:
                            log.exception("journal.on_fsync_failed")
                if self.mode != "always" or fsync_s is not None:
                    self.durable_seq = upto
                fut = self._inflight
                self._inflight = None
                if fut is not None and not fut.done():
                    fut.set_result(None)
                if self.stalled is not None:
                    self._resume()
                if self._callbacks:
                    ready = [cb for seq, cb in self._callbacks if seq <= upto]
                    self._callbacks = [(seq, cb) for seq, cb in self._callbacks if seq > upto]
                    for cb in ready:
                        cb()

    def _fail_waiters(self, error: JournalError) -> None:
        for fut in (self._inflight, self._pending):
            if fut is not None and not fut.done():
                fut.set_exception(error)
                fut.exception()  # mark retrieved: nobody may be waiting on it
        self._inflight = self._pending = None

    def _stall(self, exc: BaseException) -> None:
        first = self.stalled is None
        self.stalled = exc
        if first:
            log.error(
                "journal.stalled",
                error=_describe(exc),
                last_durable_seq=self.durable_seq,
                last_seq=self.seq,
                retry_s=self.retry_interval,
            )
            if self.on_state is not None:
                self.on_state(False, self.unavailable_reason())
        self._fail_waiters(JournalUnavailable(self.unavailable_reason()))

    def _resume(self) -> None:
        log.warning("journal.resumed", error=_describe(self.stalled), last_durable_seq=self.durable_seq)
        self.stalled = None
        if self.on_state is not None:
            self.on_state(True, None)

    def _fail(self, exc: BaseException) -> None:
        if self.failed is not None:
            return
        self.failed = exc
        log.critical("journal.failed", error=_describe(exc), last_durable_seq=self.durable_seq, last_seq=self.seq)
        self._fail_waiters(JournalUnavailable(self.unavailable_reason()))
        self._callbacks.clear()
        if self.on_state is not None:
            self.on_state(False, self.unavailable_reason())
        if self.on_failure is not None:
            self.on_failure(exc)

    # ---------------------------------------------------------------- writer thread

    def _write(self, chunks: list[Chunk], do_sync: bool) -> float | None:
        """Write the chunks in order, starting a new segment after each sealed one and when the
        segment grew past ``segment_bytes``; maybe fsync; check the data dir before returning
        (so nothing is acknowledged into a directory that is gone).

        On an OSError the segment is cut back to the last byte known durable and everything
        not known durable is put back into ``_retained`` for the next attempt, then it raises."""
        done = 0
        try:
            if self._fd < 0:
                self._open_segment(self._seg_first)
            for chunk, upto, seal in chunks:
                start = self._seg_size
                done += 1
                if chunk:
                    try:
                        self._write_all(chunk)
                    except OSError:
                        _ftruncate(self._fd, start)
                        self._seg_size = start
                        self._retained = [(chunk, upto, seal), *chunks[done:]]
                        raise
                    self._unsynced.append((chunk, upto, False))
                if seal or self._seg_size >= self.segment_bytes:
                    self._unsynced.append((b"", upto, True))
                    self._rotate_file(upto + 1)
            if do_sync and self._fd >= 0:
                started = time.perf_counter()
                os.fdatasync(self._fd)
                elapsed = time.perf_counter() - started
                self._synced_size = self._seg_size
                self._unsynced = []
            else:
                elapsed = None
            self.datadir.check(self._fd)
            return elapsed
        except DataDirLost:
            raise
        except OSError:
            if not self._retained:
                # An fsync (or a rotation) failed: what the page cache holds is unknown, so the
                # segment goes back to its last fsynced size and everything since is written again.
                if self._fd >= 0:
                    _ftruncate(self._fd, self._synced_size)
                    self._seg_size = self._synced_size
                self._retained = [*self._unsynced, *chunks[done:]]
                self._unsynced = []
            raise

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._seg_size += n

    def _open_segment(self, first_seq: int) -> None:
        """Open (create) the segment starting at ``first_seq``, make it durable in the directory and
        in the manifest. It must be empty: recovery replays whatever a segment holds."""
        name = segment_path(self.directory, first_seq).name
        fd = self.datadir.open_append(name)
        size = os.fstat(fd).st_size
        if size:
            os.close(fd)
            raise JournalError(f"{name} already holds {size} bytes; recovery should have replayed it")
        try:
            self.datadir.fsync()
            if self.manifest is not None:
                self.manifest.segment_opened(first_seq)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._seg_first = first_seq
        self._seg_size = 0
        self._synced_size = 0
        self._unsynced = []

    def _rotate_file(self, next_seq: int) -> None:
        os.fdatasync(self._fd)
        self._unsynced = []
        os.close(self._fd)
        self._fd = -1
        self._seg_first = next_seq  # a failure from here on: the retry opens it
        self._open_segment(next_seq)
        self.datadir.check(self._fd)


def _ftruncate(fd: int, size: int) -> None:
    """Cut a segment back; if even that fails, the journal cannot be trusted to retry."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise JournalError(f"cannot cut the journal segment back to {size} bytes after a write error: {exc}") from exc


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, OSError) and exc.strerror:
        name = errno.errorcode.get(exc.errno or 0, "")
        return f"{name}: {exc.strerror}" if name and not isinstance(exc, DataDirLost) else exc.strerror
    return str(exc) or type(exc).__name__


def iter_records(scans: list[SegmentScan]) -> Iterator[tuple[int, memoryview]]:
    for scan in scans:
        yield from scan.records
