"""Snapshot files: the engine's ``export_state()`` at a journal position, written atomically.

``snapshot-<seq, 20 digits>.snap`` holds the state after journal record
``seq``::

    b"DSNAP001" | u64 seq | u64 length | u32 crc32(payload) | payload (JSON)

It is written to ``<name>.tmp``, fsynced, renamed into place and the directory
fsynced, so a snapshot file either is complete or does not exist; its CRC
catches later damage.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Final

from .datadir import DataDir

__all__ = [
    "SnapshotError",
    "SnapshotFile",
    "list_snapshots",
    "read_snapshot",
    "snapshot_has_manifest",
    "snapshot_path",
    "write_snapshot",
]

MAGIC: Final = b"DSNAP001"
_HEAD: Final = struct.Struct("<QQI")
_SNAP_RE: Final = re.compile(r"^snapshot-(\d{20})\.snap$")


class SnapshotError(ValueError):
    """The snapshot file is damaged or not a snapshot."""


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotFile:
    seq: int
    path: Path


def snapshot_path(directory: Path, seq: int) -> Path:
    return directory / f"snapshot-{seq:020d}.snap"


def list_snapshots(directory: Path) -> list[SnapshotFile]:
    """Snapshots, oldest first."""
    out = []
    for entry in os.scandir(directory):
        m = _SNAP_RE.match(entry.name)
        if m:
            out.append(SnapshotFile(int(m.group(1)), Path(entry.path)))
    out.sort(key=lambda s: s.seq)
    return out


def write_snapshot(directory: Path | DataDir, seq: int, state: dict[str, Any]) -> tuple[Path, int]:
    """Write atomically (tmp, fsync, rename, fsync dir); return (path, bytes). Runs in a worker thread.
    A failure (e.g. a full disk) removes the tmp file. Written relative to the open data dir when
    given one, so a server whose directory was moved never writes into another directory."""
    payload = json.dumps({"journal_seq": seq, "manifest": 1, "state": state}, separators=(",", ":")).encode()
    data = MAGIC + _HEAD.pack(seq, len(payload), zlib.crc32(payload)) + payload
    if isinstance(directory, DataDir):
        path = snapshot_path(directory.path, seq)
        directory.write_atomic(path.name, data)
        return path, len(data)
    datadir = DataDir.__new__(DataDir)  # an unlocked handle: tools and tests writing by path
    datadir.path = directory
    datadir.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        path = snapshot_path(directory, seq)
        datadir.write_atomic(path.name, data)
    finally:
        datadir.close()
    return path, len(data)


def read_snapshot(snap: SnapshotFile) -> dict[str, Any]:
    """The engine state of a snapshot file; SnapshotError if it is damaged."""
    try:
        data = snap.path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{snap.path.name}: cannot read: {exc}") from exc
    head = len(MAGIC) + _HEAD.size
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise SnapshotError(f"{snap.path.name}: not a snapshot file (bad magic or too short)")
    seq, length, crc = _HEAD.unpack_from(data, len(MAGIC))
    payload = memoryview(data)[head:]
    if seq != snap.seq:
        raise SnapshotError(f"{snap.path.name}: holds seq {seq}, its name says {snap.seq}")
    if len(payload) != length:
        raise SnapshotError(f"{snap.path.name}: {len(payload)} payload bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise SnapshotError(f"{snap.path.name}: bad CRC")
    try:
        body = json.loads(bytes(payload))
    except ValueError as exc:
        raise SnapshotError(f"{snap.path.name}: undecodable: {exc}") from exc
    if body.get("journal_seq") != seq or not isinstance(body.get("state"), dict):
        raise SnapshotError(f"{snap.path.name}: malformed body")
    state: dict[str, Any] = body["state"]
    return state


def snapshot_has_manifest(snap: SnapshotFile) -> bool:
    """Whether the snapshot was written by a server that keeps a MANIFEST (a cheap look at its head)."""
    head = len(MAGIC) + _HEAD.size
    try:
        with open(snap.path, "rb") as fh:
            start = fh.read(head + 64)[head:]
    except OSError:
        return False
    return b'"manifest":1' in start
