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
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from .datadir import MANIFEST, DataDir, Manifest, ManifestData, ManifestError, manifest_from, read_manifest
from .journal import (
    HEADER,
    MAX_RECORD,
    SEGMENT_BYTES,
    Journal,
    JournalError,
    Segment,
    SegmentScan,
    list_segments,
    scan_segment,
    segment_path,
    valid_record_at,
)
from .records import JournaledEngine, RecordError, apply_record
from .snapshot import (
    SnapshotError,
    SnapshotFile,
    list_snapshots,
    read_snapshot,
    snapshot_has_manifest,
    snapshot_path,
    write_snapshot,
)

__all__ = [
    "DurabilityOptions",
    "DurableStore",
    "Problem",
    "Recovery",
    "RecoveryError",
    "recover",
    "segment_last_seq",
    "snapshot_state",
    "write_base",
]

log = structlog.get_logger("dispatcher.durability")


def snapshot_state(engine: Any) -> dict[str, Any]:
    """What a snapshot holds of an engine: its ``export_state()`` with an empty outbox (the
    server drains the outbox after every call; a hand-out in it was already sent)."""
    state: dict[str, Any] = engine.export_state()
    state["outbox"] = []
    return state


def write_base(datadir: DataDir, state: dict[str, Any]) -> ManifestData:
    """Make ``datadir`` (empty) hold ``state`` as a fresh start leaves it: snapshot 0 and a
    MANIFEST listing it, no journal yet; returns that MANIFEST's data."""
    manifest = manifest_from([], [0], 0)
    write_snapshot(datadir, 0, state)
    Manifest(datadir, manifest).write()
    return manifest


@dataclasses.dataclass(frozen=True, slots=True)
class DurabilityOptions:
    data_dir: Path
    fsync: str = "always"
    fsync_interval_ms: int = 100
    snapshot_every: int = 100_000
    snapshot_interval: float = 300.0
    segment_bytes: int = SEGMENT_BYTES
    create: bool = True
    """Create the data dir when it is missing (False: a missing dir refuses to start)."""
    retry_interval: float = 1.0
    """Seconds between attempts to write again after a journal write failed (disk full)."""


@dataclasses.dataclass(slots=True)
class Problem:
    """Why a data dir cannot be recovered as it is: what ``dispatcher journal repair`` acts on.

    ``kind``: ``damage`` (a bad record that is not a torn tail: ``segment``,
    ``offset``), ``missing`` (records that should exist do not: a deleted
    segment, a gap, a journal ending below the MANIFEST floor; ``segment`` is
    the first segment that is not usable, or None), ``manifest`` (MANIFEST
    missing where one is required, or unreadable). ``lost`` is the seq range
    that would be dropped, as far as it is known."""

    kind: str
    segment: Path | None = None
    offset: int = 0
    last_good: int = 0
    lost: tuple[int, int | None] | None = None


class RecoveryError(RuntimeError):
    """The data directory holds no state that can be loaded consistently."""

    def __init__(self, message: str, problem: Problem | None = None) -> None:
        super().__init__(message)
        self.problem = problem


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
    manifest: ManifestData | None = None
    """The manifest to run with: read from the directory, or built from it (a legacy dir)."""
    legacy: bool = False
    """The directory had no MANIFEST (written by an older version): continuity was not provable."""

    @property
    def next_seq(self) -> int:
        return max(self.snapshot_seq, self.last_seq) + 1


@dataclasses.dataclass(slots=True)
class _Replayed:
    last: int
    applied: int
    cut: tuple[Segment, int, dict[str, Any]] | None
    stale: list[Segment]
    ends: dict[int, int]
    """The last seq of every segment replayed (by first seq)."""


def _records_after(raw: bytes, offset: int) -> int | None:
    """The last seq of the run of valid records starting at ``offset``."""
    last = None
    while True:
        seq = valid_record_at(raw, offset)
        if seq is None:
            return last
        last = seq
        length = HEADER.unpack_from(raw, offset)[0]
        offset += HEADER.size + length


def segment_last_seq(seg: Segment) -> int | None:
    scan = scan_segment(seg)
    last = scan.last_seq
    if scan.resumes_at is not None:
        after = _records_after(seg.path.read_bytes(), scan.resumes_at[0])
        last = after if last is None or (after is not None and after > last) else last
    return last


def _damage(directory: Path, seg: Segment, scan: SegmentScan, later: list[Segment], why: str) -> RecoveryError:
    last_good = scan.end_seq(seg.first_seq)
    follow: list[str] = []
    highest: int | None = None
    top: int | None
    if scan.resumes_at is not None:
        off, seq = scan.resumes_at
        top = _records_after(seg.path.read_bytes(), off) or seq
        follow.append(f"valid records {seq}..{top} follow it at offset {off}")
        highest = top
    if highest is None and not later:
        # Nothing valid follows: if the damaged bytes still frame whole records to the end of the
        # file (only their content is bad), count them; otherwise how many were lost is unknown.
        raw = seg.path.read_bytes()
        off, count = scan.good_end, 0
        while off + HEADER.size <= len(raw):
            length = HEADER.unpack_from(raw, off)[0]
            if length > MAX_RECORD:
                break
            off += HEADER.size + length
            count += 1
        if off == len(raw) and count:
            highest = last_good + count
    for other in later:
        top = segment_last_seq(other)
        if top is not None:
            follow.append(f"{other.path.name} holds records up to {top}")
            highest = top if highest is None else max(highest, top)
    message = (
        f"{seg.path.name} is damaged at offset {scan.good_end} ({scan.error}) after record {last_good}; {why}"
        + (f"; {'; '.join(follow)}" if follow else "")
        + f": refusing to start without records {last_good + 1}..{highest if highest is not None else '?'}. "
        f"Restore a backup, or run `dispatcher journal repair {directory}` to move the damaged part aside "
        "and start without those records"
    )
    lost = (last_good + 1, highest)
    return RecoveryError(message, Problem("damage", seg.path, scan.good_end, last_good, lost))


def _replay(engine: Any, directory: Path, snap_seq: int, manifest: ManifestData | None) -> _Replayed:
    """Apply every record after ``snap_seq``; refuse anything but a torn tail of the open segment.

    With a MANIFEST, the segments it lists after the snapshot must all be there, the sealed
    ones must end exactly where it says, and the journal must reach its floor."""
    on_disk = list_segments(directory)
    by_first = {s.first_seq: s for s in on_disk}
    stale: list[Segment] = []
    # (segment, its last seq if sealed, or None if it is the open one / unknown)
    relevant: list[tuple[Segment, int | None]] = []
    if manifest is not None:
        listed = [(a, b) for a, b in manifest.segments if b is None or b > snap_seq]
        for a, b in listed:
            if a not in by_first:
                low = max(a, snap_seq + 1)
                rng = f"{low}..{b}" if b is not None else f"{low} to the last record written"
                raise RecoveryError(
                    f"journal segment {segment_path(directory, a).name} is missing (MANIFEST lists it): "
                    f"records {rng} are lost; restore it, or run `dispatcher journal repair {directory}` "
                    "to start without them",
                    Problem("missing", segment_path(directory, a), 0, low - 1, (low, b)),
                )
            relevant.append((by_first[a], b))
        known = {a for a, _ in manifest.segments}
        newest = max([a for a, _ in manifest.segments] or [snap_seq])
        for seg in on_disk:
            if seg.first_seq in known or seg.first_seq <= newest:
                continue
            if seg.path.stat().st_size == 0:
                stale.append(seg)  # opened, never listed (a crash in between): it holds nothing
            else:
                raise RecoveryError(
                    f"{seg.path.name} holds records but MANIFEST does not list it: refusing to guess",
                    Problem("manifest", seg.path),
                )
    else:
        first = 0
        for i in range(len(on_disk) - 1):
            if on_disk[i + 1].first_seq <= snap_seq + 1:
                first = i + 1  # segment i holds only records up to the snapshot
        relevant = [(s, None) for s in on_disk[first:]]
    expected = snap_seq + 1
    last = snap_seq
    applied = 0
    cut: tuple[Segment, int, dict[str, Any]] | None = None
    ends: dict[int, int] = {}
    sizes = [seg.path.stat().st_size for seg, _ in relevant]
    last_nonempty = max((i for i, n in enumerate(sizes) if n), default=-1)
    for idx, (seg, end) in enumerate(relevant):
        if sizes[idx] == 0 and end is None:
            continue  # an empty segment (a start or a rotation with nothing after it) holds nothing
        if seg.first_seq > expected:
            raise RecoveryError(
                f"journal gap: records {expected}..{seg.first_seq - 1} are missing before {seg.path.name}",
                Problem("missing", seg.path, 0, expected - 1, (expected, seg.first_seq - 1)),
            )
        scan = scan_segment(seg)
        if scan.error is not None:
            later = [s for k, (s, _) in enumerate(relevant) if k > idx and sizes[k] > 0]
            if end is not None:
                raise _damage(directory, seg, scan, later, "a sealed segment cannot have a torn tail")
            if not scan.torn:
                raise _damage(directory, seg, scan, later, "this is damage, not an interrupted write")
            if idx < last_nonempty:
                raise _damage(directory, seg, scan, later, "later segments hold records: refusing to guess")
            info = {
                "segment": seg.path.name,
                "offset": scan.good_end,
                "dropped_bytes": scan.size - scan.good_end,
                "reason": scan.error,
                "last_good_seq": scan.end_seq(seg.first_seq),
            }
            cut = (seg, scan.good_end, info)
        seg_last = scan.end_seq(seg.first_seq)
        if end is not None and seg_last != end:
            raise RecoveryError(
                f"{seg.path.name} ends at record {seg_last} but MANIFEST says it was sealed at {end}: "
                f"records {seg_last + 1}..{end} are missing",
                Problem("missing", seg.path, scan.good_end, seg_last, (seg_last + 1, end)),
            )
        ends[seg.first_seq] = seg_last
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
    if manifest is not None and last < manifest.floor:
        open_seg = relevant[-1][0] if relevant else None
        raise RecoveryError(
            f"the journal ends at record {last}, but MANIFEST says record {manifest.floor} was written: "
            f"records {last + 1}..{manifest.floor} are missing; restore them, or run "
            f"`dispatcher journal repair {directory}` to start without them",
            Problem("missing", open_seg.path if open_seg else None, 0, last, (last + 1, manifest.floor)),
        )
    return _Replayed(last, applied, cut, stale, ends)


def _stale_above(directory: Path, next_seq: int) -> list[Segment]:
    """Empty segments named after records that no longer exist (a tail was cut below them)."""
    return [s for s in list_segments(directory) if s.first_seq > next_seq and s.path.stat().st_size == 0]


def _fresh_init_state(snapshots: list[SnapshotFile], segments: list[Segment]) -> bool:
    """A first start that crashed before its MANIFEST: snapshot 0 and empty segments only."""
    return [s.seq for s in snapshots] == [0] and all(seg.path.stat().st_size == 0 for seg in segments)


def recover(directory: Path, engine_factory: Callable[[], Any], *, repair: bool = True) -> Recovery:
    """Load the newest consistent state of ``directory``.

    Deciding reads only: a refusal (``RecoveryError``) changes no file. Once a
    state is chosen and ``repair`` is set (the server; inspection tools pass
    False), it deletes ``*.tmp`` leftovers, renames snapshots it could not load
    to ``*.corrupt``, cuts a torn tail and deletes stale empty segments."""
    started = time.perf_counter()
    try:
        manifest = read_manifest(directory)
    except ManifestError as exc:
        raise RecoveryError(
            f"{directory / MANIFEST}: {exc}; run `dispatcher journal repair {directory}` to rebuild it",
            Problem("manifest"),
        ) from None
    snapshots = list_snapshots(directory)
    segments = list_segments(directory)
    tmps = [p for p in directory.glob("*.tmp")]
    if not snapshots and not segments:
        if manifest is not None and (manifest.snapshots or manifest.floor > 0):
            raise RecoveryError(
                f"{directory} has a MANIFEST (snapshots {manifest.snapshots}, records up to {manifest.floor}) "
                "but no snapshot and no journal: its files are gone; restore them",
                Problem("missing", None, 0, 0, (1, manifest.floor)),
            )
        if repair:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        return Recovery(engine_factory(), fresh=True, seconds=time.perf_counter() - started)
    if not snapshots:
        raise RecoveryError(
            f"{directory} holds journal segments but no snapshot; it cannot be replayed from a known state",
            Problem("missing"),
        )
    legacy = False
    if manifest is None:
        if any(snapshot_has_manifest(s) for s in snapshots) and not _fresh_init_state(snapshots, segments):
            raise RecoveryError(
                f"{directory / MANIFEST} is missing, so nothing proves the journal is complete; restore it, or run "
                f"`dispatcher journal repair {directory}` to rebuild it from the files that are there",
                Problem("manifest"),
            )
        legacy = not _fresh_init_state(snapshots, segments)
    failures: list[str] = []
    discarded: list[SnapshotFile] = []
    for snap in reversed(snapshots):
        try:
            state = read_snapshot(snap)
            engine = engine_factory()
            engine.import_state(state)
        except (SnapshotError, Exception) as exc:
            failures.append(f"{snap.path.name}: {exc}")
            log.error("snapshot.unusable", file=snap.path.name, error=str(exc))
            discarded.append(snap)
            continue
        replayed = _replay(engine, directory, snap.seq, manifest)  # a RecoveryError here is final
        last = max(replayed.last, snap.seq)
        stale = replayed.stale + [s for s in _stale_above(directory, last + 1) if s not in replayed.stale]
        truncations = [replayed.cut[2]] if replayed.cut is not None else []
        if repair:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
            for bad in discarded:
                bad.path.rename(bad.path.with_name(bad.path.name + ".corrupt"))
            if replayed.cut is not None:
                seg, offset, info = replayed.cut
                log.warning("journal.truncated", **info)
                with open(seg.path, "r+b") as fh:
                    fh.truncate(offset)
                    fh.flush()
                    os.fsync(fh.fileno())
            for seg in stale:
                log.warning("journal.stale_segment_deleted", segment=seg.path.name)
                seg.path.unlink()
        if manifest is None:
            # Build one from what is here (a legacy dir, or the first start that crashed early).
            kept = [s for s in list_segments(directory) if s not in stale]
            segs = [(s.first_seq, replayed.ends.get(s.first_seq, segment_last_seq(s) or s.first_seq - 1)) for s in kept]
            entries: list[tuple[int, int | None]] = [(a, b) for a, b in segs]
            if entries:
                entries[-1] = (entries[-1][0], None)
            manifest = manifest_from(entries, [s.seq for s in snapshots if s not in discarded], last)
        else:
            gone = {s.first_seq for s in stale}
            manifest.segments = [x for x in manifest.segments if x.first not in gone]
            manifest.snapshots = [s.seq for s in snapshots if s not in discarded]
        return Recovery(
            engine,
            fresh=False,
            snapshot_seq=snap.seq,
            last_seq=replayed.last,
            replayed=replayed.applied,
            truncated=truncations,
            discarded_snapshots=[s.path.name for s in discarded],
            seconds=time.perf_counter() - started,
            manifest=manifest,
            legacy=legacy,
        )
    raise RecoveryError(f"no consistent state in {directory}: " + "; ".join(failures))


class DurableStore:
    """A locked data directory: recovered engine, journal, snapshots.

    ``open()`` (synchronous: lock + recovery), then apply the bootstrap to
    ``raw_engine`` if ``fresh``, then ``begin()`` (first snapshot, journal),
    then on the event loop ``start()``; finally ``await close()``.
    """

    def __init__(self, options: DurabilityOptions, recovery: Recovery, datadir: DataDir) -> None:
        self.options = options
        self.directory = options.data_dir
        self.datadir = datadir
        self.recovery = recovery
        self.raw_engine = recovery.engine
        self.fresh = recovery.fresh
        self.snapshot_seq = recovery.snapshot_seq
        self.snapshots_written = 0
        self.snapshot_failures = 0
        self.journal: Journal | None = None
        self.engine: JournaledEngine | None = None
        self.manifest: Manifest | None = None
        self._snap_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        self._snap_lock: asyncio.Lock | None = None
        self._snap_wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def open(cls, options: DurabilityOptions, engine_factory: Callable[[], Any]) -> DurableStore:
        """Lock the directory and recover it. A refusal (``RecoveryError``) changes no file."""
        try:
            datadir = DataDir(options.data_dir, create=options.create)
        except OSError as exc:
            raise RecoveryError(str(exc.strerror or exc)) from None
        try:
            recovery = recover(options.data_dir, engine_factory)
            datadir.check()  # still the directory locked (nobody moved it while we read it)
        except OSError as exc:
            datadir.close()
            raise RecoveryError(f"cannot read data dir {options.data_dir}: {exc}") from None
        except BaseException:
            datadir.close()
            raise
        if recovery.fresh:
            log.warning("durability.fresh", data_dir=str(options.data_dir), message="starting with an empty state")
        elif recovery.legacy:
            log.warning(
                "durability.no_manifest",
                data_dir=str(options.data_dir),
                message="a data dir from an older version: its continuity could not be proven; a MANIFEST is written now",
            )
        return cls(options, recovery, datadir)

    def begin(self) -> JournaledEngine:
        """Write the base snapshot of a fresh directory; open the journal; return the journaled engine.

        Raises ``RecoveryError`` when the directory cannot be written (read-only, permissions);
        on a full disk the journal starts *stalled* instead and retries (reads work meanwhile)."""
        try:
            if self.fresh:
                self.recovery.manifest = write_base(self.datadir, self._export())
            assert self.recovery.manifest is not None
            self.manifest = Manifest(self.datadir, self.recovery.manifest)
            if self.recovery.legacy:
                self.manifest.write()
        except OSError as exc:
            raise RecoveryError(f"cannot write data dir {self.directory}: {exc.strerror or exc}") from None
        try:
            self.journal = Journal(
                self.datadir,
                self.recovery.next_seq,
                mode=self.options.fsync,
                fsync_interval_ms=self.options.fsync_interval_ms,
                segment_bytes=self.options.segment_bytes,
                manifest=self.manifest,
                retry_interval=self.options.retry_interval,
            )
        except OSError as exc:
            raise RecoveryError(f"cannot write data dir {self.directory}: {exc.strerror or exc}") from None
        self.engine = JournaledEngine(self.raw_engine, self.journal.append, self.journal.check_writable)
        self._arm()
        return self.engine

    def _export(self) -> dict[str, Any]:
        return snapshot_state(self.raw_engine)

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
        """Snapshots by policy. A failed one (its tmp file is already gone) backs off: 1 s, 2 s, 4 s...
        up to a minute; nothing is snapshotted while the journal cannot write."""
        assert self._snap_wake is not None and self.journal is not None
        interval = self.options.snapshot_interval if self.options.snapshot_interval > 0 else None
        backoff = 0.0
        while True:
            try:
                await asyncio.wait_for(self._snap_wake.wait(), backoff or interval)
            except TimeoutError:
                pass
            self._snap_wake.clear()
            if self.journal.seq > self.snapshot_seq and self.journal.writable:
                try:
                    await self.snapshot("policy")
                    backoff = 0.0
                except Exception as exc:
                    self.snapshot_failures += 1
                    backoff = min(60.0, max(1.0, backoff * 2))
                    log.error("snapshot.failed", error=str(exc), retry_s=backoff)
                    self._arm()

    async def snapshot(self, reason: str = "manual") -> int:
        """Write a snapshot of the current state; return its seq."""
        assert self.journal is not None and self._snap_lock is not None
        async with self._snap_lock:
            self.journal.check_writable()
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            state = self._export()  # on the loop: the engine is not touched by anyone else meanwhile
            seq = self.journal.rotate()
            exported = time.perf_counter()
            await self.journal.wait_durable()  # the records it covers are durable (and their segment sealed)
            _, size = await loop.run_in_executor(self._snap_executor, write_snapshot, self.datadir, seq, state)
            self.snapshot_seq = seq
            self.snapshots_written += 1
            self._arm()
            deleted = await loop.run_in_executor(self._snap_executor, self._retain, seq)
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

    def _retain(self, newest: int) -> list[str]:
        """Keep the newest two snapshots and every segment holding a record after the older one.
        The MANIFEST is updated first, so it never lists a file that retention deleted."""
        assert self.manifest is not None
        names = self.datadir.names()
        snaps = sorted({*(int(n[9:29]) for n in names if n.startswith("snapshot-") and n.endswith(".snap")), newest})
        keep = snaps[-2:]
        segments = sorted(int(n[8:28]) for n in names if n.startswith("journal-") and n.endswith(".log"))
        drop_segments: list[int] = []
        if len(keep) == 2:
            previous = keep[0]
            drop_segments = [a for a, b in zip(segments, segments[1:], strict=False) if b - 1 <= previous]
        self.manifest.snapshot_kept(keep, drop_segments)
        deleted = []
        for seq in snaps[:-2]:
            name = snapshot_path(self.directory, seq).name
            self.datadir.unlink(name)
            deleted.append(name)
        for first in drop_segments:
            name = segment_path(self.directory, first).name
            self.datadir.unlink(name)
            deleted.append(name)
        return deleted

    async def close(self, snapshot: bool = True) -> bool:
        """Final snapshot (graceful shutdown), fsync and close the journal, release the lock.

        Returns True when everything acknowledged is on disk and the journal ended cleanly;
        False when the journal could not write (the state on disk is still the last acknowledged
        one; records never acknowledged are dropped). Never raises for an I/O error."""
        if self._closed:
            return True
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        clean = True
        try:
            journal = self.journal
            if journal is not None and journal.writable and self._snap_lock is not None:
                if snapshot and journal.seq > self.snapshot_seq:
                    try:
                        await self.snapshot("shutdown")
                    except Exception as exc:
                        log.error("snapshot.failed", error=str(exc), reason="shutdown")
            if journal is not None:
                clean = await journal.close()
        finally:
            self._snap_executor.shutdown(wait=True)
            self.datadir.close()
        return clean

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
