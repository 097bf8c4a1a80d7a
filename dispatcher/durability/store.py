"""Recovery, the snapshot policy and the life cycle of a data directory.

Data directory layout::

    LOCK                                   flock'ed while a server uses the directory
    snapshot-<seq>.snap                    the newest two snapshots (see snapshot.py)
    journal-<first seq>.log                segments (see journal.py)

Recovery (``DurableStore.open``): the newest snapshot that reads back intact,
then every journal record after it, in order. A partial or corrupt record at
the end of the last segment (a torn write) is cut off there and logged; a
damaged snapshot is renamed ``*.corrupt`` and the previous one is used (the
journal since the previous snapshot is always kept). Anything else that does
not fit (damage in the middle of the journal, a gap, a record the engine
refuses) means the state cannot be rebuilt exactly: ``RecoveryError``, and the
server refuses to start.

Snapshot policy: after ``snapshot_every`` records or ``snapshot_interval``
seconds (whichever first, and only if something changed), and on graceful
shutdown. A snapshot starts a new journal segment; once it is durable, the
snapshots older than the previous one and the segments holding only records
up to the previous snapshot are deleted. Recovery therefore replays at most
about ``snapshot_every`` records (plus what arrived while the snapshot was
being written).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from .journal import SEGMENT_BYTES, Journal, JournalError, list_segments, scan_segment
from .records import JournaledEngine, RecordError, apply_record
from .snapshot import SnapshotError, list_snapshots, read_snapshot, snapshot_path, write_snapshot

__all__ = ["DurabilityOptions", "DurableStore", "Recovery", "RecoveryError", "recover"]

log = structlog.get_logger("dispatcher.durability")


class RecoveryError(RuntimeError):
    """The data directory holds no state that can be loaded consistently."""


@dataclasses.dataclass(frozen=True, slots=True)
class DurabilityOptions:
    data_dir: Path
    fsync: str = "always"
    fsync_interval_ms: int = 100
    snapshot_every: int = 100_000
    snapshot_interval: float = 300.0
    segment_bytes: int = SEGMENT_BYTES


@dataclasses.dataclass(slots=True)
class Recovery:
    engine: Any
    fresh: bool
    snapshot_seq: int = 0
    last_seq: int = 0
    replayed: int = 0
    truncated: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    discarded_snapshots: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def next_seq(self) -> int:
        return max(self.snapshot_seq, self.last_seq) + 1


def _replay(engine: Any, directory: Path, start_after: int, truncate: bool) -> tuple[int, int, list[dict[str, Any]]]:
    """Apply every record after ``start_after``; return (last seq, records applied, truncations)."""
    segments = list_segments(directory)
    first = 0
    for i in range(len(segments) - 1):
        if segments[i + 1].first_seq <= start_after + 1:
            first = i + 1  # segment i holds only records up to the snapshot
    relevant = segments[first:]
    expected = start_after + 1
    last = start_after
    applied = 0
    truncations: list[dict[str, Any]] = []
    for idx, seg in enumerate(relevant):
        if seg.path.stat().st_size == 0:
            continue  # an empty segment (a start or a rotation with nothing after it) holds nothing
        if seg.first_seq > expected:
            raise RecoveryError(
                f"journal gap: records {expected}..{seg.first_seq - 1} are missing before {seg.path.name}"
            )
        scan = scan_segment(seg)
        if scan.error is not None:
            later = [s for s in relevant[idx + 1 :] if s.path.stat().st_size > 0]
            if later:
                raise RecoveryError(
                    f"{seg.path.name} is damaged at offset {scan.good_end} ({scan.error}) "
                    f"but later segments hold records ({later[0].path.name}): refusing to guess"
                )
            info = {
                "segment": seg.path.name,
                "offset": scan.good_end,
                "dropped_bytes": scan.size - scan.good_end,
                "reason": scan.error,
                "last_good_seq": scan.last_seq if scan.records else seg.first_seq - 1,
            }
            truncations.append(info)
            if truncate:
                log.warning("journal.truncated", **info)
                with open(seg.path, "r+b") as fh:
                    fh.truncate(scan.good_end)
                    fh.flush()
                    os.fsync(fh.fileno())
        for seq, payload in scan.records:
            if seq < expected:
                continue
            try:
                apply_record(engine, payload)
            except RecordError as exc:
                raise RecoveryError(f"{seg.path.name}: record {seq}: {exc}") from exc
            applied += 1
            expected = seq + 1
            if not applied % 4096:
                engine.drain_outbox()
        if scan.records:
            last = max(last, scan.records[-1][0])
    engine.drain_outbox()
    return last, applied, truncations


def _drop_stale_segments(directory: Path, next_seq: int) -> None:
    """Empty segments named after records that no longer exist (a tail was cut below them) would
    break the rule that a segment's name bounds the records of the one before: delete them."""
    for seg in list_segments(directory):
        if seg.first_seq > next_seq and seg.path.stat().st_size == 0:
            log.warning("journal.stale_segment_deleted", segment=seg.path.name)
            seg.path.unlink()


def recover(directory: Path, engine_factory: Callable[[], Any], *, repair: bool = True) -> Recovery:
    """Load the newest consistent state of ``directory``. ``repair`` truncates torn tails and
    renames damaged snapshots (the server does; inspection tools may not)."""
    started = time.perf_counter()
    for tmp in directory.glob("*.tmp"):
        if repair:
            tmp.unlink()
    snapshots = list_snapshots(directory)
    segments = list_segments(directory)
    if not snapshots and not segments:
        return Recovery(engine_factory(), fresh=True, seconds=time.perf_counter() - started)
    if not snapshots:
        raise RecoveryError(
            f"{directory} holds journal segments but no snapshot; it cannot be replayed from a known state"
        )
    failures: list[str] = []
    discarded: list[str] = []
    for snap in reversed(snapshots):
        try:
            state = read_snapshot(snap)
            engine = engine_factory()
            engine.import_state(state)
        except (SnapshotError, Exception) as exc:  # noqa: BLE001 - any load failure: try the previous one
            failures.append(f"{snap.path.name}: {exc}")
            log.error("snapshot.unusable", file=snap.path.name, error=str(exc))
            if repair:
                snap.path.rename(snap.path.with_name(snap.path.name + ".corrupt"))
            discarded.append(snap.path.name)
            continue
        try:
            last, applied, truncations = _replay(engine, directory, snap.seq, repair)
        except RecoveryError as exc:
            failures.append(f"{snap.path.name} + journal: {exc}")
            log.error("journal.unusable", snapshot=snap.path.name, error=str(exc))
            continue
        if repair:
            _drop_stale_segments(directory, max(last, snap.seq) + 1)
        return Recovery(
            engine,
            fresh=False,
            snapshot_seq=snap.seq,
            last_seq=last,
            replayed=applied,
            truncated=truncations,
            discarded_snapshots=discarded,
            seconds=time.perf_counter() - started,
        )
    raise RecoveryError(f"no consistent state in {directory}: " + "; ".join(failures))


class DurableStore:
    """A locked data directory: recovered engine, journal, snapshots.

    ``open()`` (synchronous: lock + recovery), then apply the bootstrap to
    ``raw_engine`` if ``fresh``, then ``begin()`` (first snapshot, journal),
    then on the event loop ``start()``; finally ``await close()``.
    """

    def __init__(self, options: DurabilityOptions, recovery: Recovery, lock_fd: int) -> None:
        self.options = options
        self.directory = options.data_dir
        self.recovery = recovery
        self.raw_engine = recovery.engine
        self.fresh = recovery.fresh
        self.snapshot_seq = recovery.snapshot_seq
        self.snapshots_written = 0
        self.journal: Journal | None = None
        self.engine: JournaledEngine | None = None
        self._lock_fd = lock_fd
        self._snap_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        self._snap_lock: asyncio.Lock | None = None
        self._snap_wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def open(cls, options: DurabilityOptions, engine_factory: Callable[[], Any]) -> DurableStore:
        directory = options.data_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RecoveryError(f"cannot use data dir {directory}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise RecoveryError(f"data dir {directory} is in use by another process (LOCK is held)") from None
        try:
            recovery = recover(directory, engine_factory)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(options, recovery, lock_fd)

    def begin(self) -> JournaledEngine:
        """Write the base snapshot of a fresh directory; open the journal; return the journaled engine."""
        if self.fresh:
            write_snapshot(self.directory, 0, self._export())
        self.journal = Journal(
            self.directory,
            self.recovery.next_seq,
            mode=self.options.fsync,
            fsync_interval_ms=self.options.fsync_interval_ms,
            segment_bytes=self.options.segment_bytes,
        )
        self.engine = JournaledEngine(self.raw_engine, self.journal.append)
        self._arm()
        return self.engine

    def _export(self) -> dict[str, Any]:
        state = self.raw_engine.export_state()
        state["outbox"] = []  # the server drains the outbox after every call
        return state

    def _arm(self) -> None:
        assert self.journal is not None
        every = self.options.snapshot_every
        self.journal.notify_at = self.snapshot_seq + every if every > 0 else 1 << 62
        self.journal.on_threshold = self._wake_snapshotter

    def _wake_snapshotter(self) -> None:
        assert self.journal is not None
        self.journal.notify_at = 1 << 62  # until the snapshot re-arms it
        if self._snap_wake is not None:
            self._snap_wake.set()

    def start(self) -> None:
        """Start the journal flusher and the snapshot task (on the running loop)."""
        assert self.journal is not None, "begin() first"
        self.journal.start()
        self._snap_lock = asyncio.Lock()
        self._snap_wake = asyncio.Event()
        if self.journal.seq >= self.journal.notify_at:
            self._snap_wake.set()
        self._task = asyncio.get_running_loop().create_task(self._snapshotter(), name="snapshotter")

    async def _snapshotter(self) -> None:
        assert self._snap_wake is not None and self.journal is not None
        interval = self.options.snapshot_interval if self.options.snapshot_interval > 0 else None
        while True:
            try:
                await asyncio.wait_for(self._snap_wake.wait(), interval)
            except TimeoutError:
                pass
            self._snap_wake.clear()
            if self.journal.seq > self.snapshot_seq and self.journal.failed is None:
                try:
                    await self.snapshot("policy")
                except Exception:  # noqa: BLE001 - a failed snapshot leaves the journal intact
                    log.exception("snapshot.failed")
                    self._arm()

    async def snapshot(self, reason: str = "manual") -> int:
        """Write a snapshot of the current state; return its seq."""
        assert self.journal is not None and self._snap_lock is not None
        async with self._snap_lock:
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            state = self._export()  # on the loop: the engine is not touched by anyone else meanwhile
            seq = self.journal.rotate()
            exported = time.perf_counter()
            _, size = await loop.run_in_executor(self._snap_executor, write_snapshot, self.directory, seq, state)
            self.snapshot_seq = seq
            self.snapshots_written += 1
            self._arm()
            deleted = await loop.run_in_executor(self._snap_executor, self._retain)
            log.info(
                "snapshot.written",
                seq=seq,
                bytes=size,
                reason=reason,
                export_ms=round((exported - started) * 1000, 1),
                total_ms=round((time.perf_counter() - started) * 1000, 1),
                deleted=deleted,
            )
            return seq

    def _retain(self) -> list[str]:
        """Keep the newest two snapshots and every segment holding a record after the older one."""
        snapshots = list_snapshots(self.directory)
        if len(snapshots) < 2:
            return []
        previous = snapshots[-2].seq
        deleted = []
        for snap in snapshots[:-2]:
            snap.path.unlink(missing_ok=True)
            deleted.append(snap.path.name)
        segments = list_segments(self.directory)
        for seg, nxt in zip(segments, segments[1:]):
            if nxt.first_seq - 1 <= previous:
                seg.path.unlink(missing_ok=True)
                deleted.append(seg.path.name)
        return deleted

    async def close(self, snapshot: bool = True) -> None:
        """Final snapshot (graceful shutdown), fsync and close the journal, release the lock."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        try:
            if self.journal is not None and self.journal.failed is None and self._snap_lock is not None:
                if snapshot and self.journal.seq > self.snapshot_seq:
                    await self.snapshot("shutdown")
            if self.journal is not None:
                await self.journal.close()
        finally:
            self._snap_executor.shutdown(wait=True)
            os.close(self._lock_fd)

    def describe(self) -> dict[str, Any]:
        r = self.recovery
        return {
            "data_dir": str(self.directory),
            "fresh": r.fresh,
            "snapshot_seq": r.snapshot_seq,
            "replayed": r.replayed,
            "last_seq": max(r.last_seq, r.snapshot_seq),
            "truncated": len(r.truncated),
            "discarded_snapshots": r.discarded_snapshots,
            "seconds": round(r.seconds, 3),
            "fsync": self.options.fsync,
        }


__all__ += ["JournalError", "snapshot_path"]
