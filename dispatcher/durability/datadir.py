"""The data directory as an open directory, and its manifest.

``DataDir`` holds the directory open (an ``O_DIRECTORY`` file descriptor),
takes an exclusive ``flock`` on that descriptor and remembers the directory's
identity (device, inode). Every file the server writes while it runs is
opened, renamed and deleted *relative to that descriptor*, never by path, so a
server whose directory was deleted or renamed under it can never write into a
new directory that appeared at the same path. ``check()`` tells whether the
path still names the locked directory and the directory is still linked; the
journal calls it before it acknowledges, and a timer calls it every second.

``MANIFEST`` is a small JSON file, replaced atomically (tmp, fsync, rename,
directory fsync), that says what the journal must hold:

``segments``  ``[[first_seq, last_seq or null], ...]``: every segment that
              may hold records after the oldest kept snapshot, in order;
              ``null`` marks the open (newest) segment, whose end is unknown
              until it is sealed.
``snapshots`` the seqs of the snapshots kept.
``floor``     a seq that the journal is known to have reached (raised at every
              rotation, snapshot and clean close): recovery refuses a journal
              that ends below it.

It is rewritten when a segment is opened or sealed, after a snapshot, and at a
clean close: never per record.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any, Final, NamedTuple

__all__ = [
    "MANIFEST",
    "DataDir",
    "DataDirError",
    "DataDirLost",
    "Manifest",
    "ManifestData",
    "ManifestError",
    "SegmentEntry",
    "manifest_from",
    "parse_manifest",
    "read_manifest",
]

MANIFEST: Final = "MANIFEST"
MANIFEST_FORMAT: Final = 1


class DataDirError(OSError):
    """The data directory cannot be opened or locked."""


class DataDirLost(OSError):
    """The locked data directory (or the open journal segment) is gone: deleted, renamed or replaced."""


class ManifestError(ValueError):
    """MANIFEST is present but unreadable."""


class DataDir:
    """An open, locked data directory. All writes go through ``fd``."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if not path.exists():
            if not create:
                raise DataDirError(
                    errno.ENOENT,
                    f"data dir {path} does not exist; pass --create-data-dir to start a new, empty one "
                    "(a missing dir is refused so that a moved or unmounted dir never starts empty)",
                )
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataDirError(exc.errno, f"cannot create data dir {path}: {exc.strerror}") from None
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise DataDirError(exc.errno, f"cannot open data dir {path}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise DataDirError(errno.EBUSY, f"data dir {path} is in use by another process (it is locked)") from None
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    # ---------------------------------------------------------------- identity

    def problem(self, segment_fd: int = -1) -> str | None:
        """Why the directory (or the open segment) is no longer the one locked; None while it is."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return f"the data dir {self.path} is gone ({exc.strerror})"
        if (st.st_dev, st.st_ino) != self.identity:
            return f"{self.path} is no longer the data dir this server locked (renamed or replaced)"
        if os.fstat(self.fd).st_nlink == 0:
            return f"the data dir {self.path} was deleted"
        if segment_fd >= 0 and os.fstat(segment_fd).st_nlink == 0:
            return "the open journal segment was deleted"
        return None

    def check(self, segment_fd: int = -1) -> None:
        problem = self.problem(segment_fd)
        if problem is not None:
            raise DataDirLost(errno.ESTALE, problem)

    # ---------------------------------------------------------------- files, relative to fd

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def open_append(self, name: str) -> int:
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644, dir_fd=self.fd)

    def read(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "rb", closefd=False) as fh:
                return fh.read()
        finally:
            os.close(fd)

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def rename(self, old: str, new: str) -> None:
        os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        self.fsync()

    def fsync(self) -> None:
        os.fsync(self.fd)

    def write_atomic(self, name: str, data: bytes) -> None:
        """``name`` holds ``data`` or its previous content, never a mix: tmp, fsync, rename, dir fsync.
        A failure removes the tmp file (a full disk must not keep a half-written one)."""
        tmp = name + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=self.fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(tmp)
            raise
        self.fsync()

    def close(self) -> None:
        """Release the lock."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SegmentEntry(NamedTuple):
    """A segment the manifest lists: its first seq, and its last once it is sealed (None: open)."""

    first: int
    last: int | None


@dataclasses.dataclass(slots=True)
class ManifestData:
    segments: list[SegmentEntry]
    snapshots: list[int]
    floor: int

    def to_bytes(self) -> bytes:
        segments = [[s.first, s.last] for s in self.segments]
        body = {"format": MANIFEST_FORMAT, "segments": segments, "snapshots": self.snapshots, "floor": self.floor}
        return (json.dumps(body, separators=(",", ":")) + "\n").encode()


def parse_manifest(raw: bytes) -> ManifestData:
    try:
        body = json.loads(raw)
        if body.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"unknown MANIFEST format {body.get('format')!r}")
        segments = [SegmentEntry(int(a), None if b is None else int(b)) for a, b in body["segments"]]
        snapshots = [int(s) for s in body["snapshots"]]
        floor = int(body["floor"])
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"MANIFEST is damaged: {exc}") from None
    return ManifestData(segments, snapshots, floor)


def read_manifest(directory: Path) -> ManifestData | None:
    """The manifest of a directory (by path: recovery and tools), None if it has none."""
    try:
        raw = (directory / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    return parse_manifest(raw)


class Manifest:
    """The live manifest of a running server; every change is written at once (any thread)."""

    def __init__(self, datadir: DataDir, data: ManifestData) -> None:
        self._dir = datadir
        self.data = data
        self._lock = threading.Lock()

    def _write(self) -> None:
        self._dir.write_atomic(MANIFEST, self.data.to_bytes())

    def write(self) -> None:
        with self._lock:
            self._write()

    def segment_opened(self, first_seq: int) -> None:
        """A new segment starting at ``first_seq`` is open; the previous open one is sealed before it."""
        with self._lock:
            old = list(self.data.segments)
            segs = self.data.segments
            if segs and segs[-1].last is None:
                if segs[-1].first == first_seq:
                    return  # already the open one (a retried rotation)
                segs[-1] = segs[-1]._replace(last=first_seq - 1)
            segs.append(SegmentEntry(first_seq, None))
            floor = self.data.floor
            self.data.floor = max(floor, first_seq - 1)
            try:
                self._write()
            except BaseException:
                self.data.segments, self.data.floor = old, floor
                raise

    def snapshot_kept(self, seqs: list[int], deleted_segments: list[int]) -> None:
        """The snapshots now kept, and the segments retention is about to delete."""
        with self._lock:
            old = (list(self.data.snapshots), list(self.data.segments), self.data.floor)
            self.data.snapshots = sorted(seqs)
            gone = set(deleted_segments)
            self.data.segments = [s for s in self.data.segments if s.first not in gone]
            if seqs:
                self.data.floor = max(self.data.floor, max(seqs))
            try:
                self._write()
            except BaseException:
                self.data.snapshots, self.data.segments, self.data.floor = old
                raise

    def raise_floor(self, seq: int) -> None:
        with self._lock:
            if seq <= self.data.floor:
                return
            old = self.data.floor
            self.data.floor = seq
            try:
                self._write()
            except BaseException:
                self.data.floor = old
                raise


def manifest_from(segments: list[tuple[int, int | None]], snapshots: list[int], floor: int) -> ManifestData:
    return ManifestData([SegmentEntry(a, b) for a, b in segments], sorted(snapshots), floor)


def describe(data: ManifestData) -> dict[str, Any]:
    return {"segments": [list(s) for s in data.segments], "snapshots": data.snapshots, "floor": data.floor}
