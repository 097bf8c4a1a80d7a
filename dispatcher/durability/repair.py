"""``dispatcher journal check|repair DIR``: the deliberate repair of a data dir the server refused.

The server never drops acknowledged records on its own: damage that is not a
torn tail, a missing segment or a gap makes it refuse to start, naming the
file, the offset and the seqs (see ``store.recover``). ``repair`` is the
operator's explicit choice to start without those records, as
``redis-check-aof --fix`` is for Redis:

- the damaged part of a segment is copied to ``<segment>.damaged-at-<offset>``
  and the segment is cut there;
- every later segment (which can no longer be replayed in order) is renamed
  ``<segment>.damaged``;
- ``MANIFEST`` is rebuilt from the files that remain.

Nothing is deleted. It holds the directory's lock, so it refuses to run while a
server uses the directory, and it says exactly which seqs it dropped.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .datadir import MANIFEST, DataDir, ManifestData, manifest_from
from .journal import list_segments
from .snapshot import list_snapshots
from .store import Problem, RecoveryError, recover, segment_last_seq

__all__ = ["RepairReport", "check", "rebuild_manifest", "repair"]


@dataclasses.dataclass(slots=True)
class RepairReport:
    actions: list[str] = dataclasses.field(default_factory=list)
    dropped: list[tuple[int, int | None]] = dataclasses.field(default_factory=list)
    """Seq ranges dropped (None: up to the last record that had been written, unknown)."""
    last_seq: int = 0
    """The last record the repaired directory replays."""


def check(directory: Path, engine_factory: Callable[[], Any]) -> dict[str, Any]:
    """What recovery would load, changing nothing; raises RecoveryError when it would refuse."""
    rec = recover(directory, engine_factory, repair=False)
    return {
        "fresh": rec.fresh,
        "snapshot_seq": rec.snapshot_seq,
        "last_seq": max(rec.last_seq, rec.snapshot_seq),
        "replayed": rec.replayed,
        "torn_tail": rec.truncated[0] if rec.truncated else None,
        "manifest": not rec.legacy,
    }


def rebuild_manifest(directory: Path) -> ManifestData:
    """A manifest of the segments and snapshots that are there (the newest segment is the open one)."""
    segments = list_segments(directory)
    entries: list[tuple[int, int | None]] = []
    top = 0
    for seg in segments:
        last = segment_last_seq(seg)
        end = last if last is not None else seg.first_seq - 1
        top = max(top, end)
        entries.append((seg.first_seq, end))
    if entries:
        entries[-1] = (entries[-1][0], None)
    snapshots = [s.seq for s in list_snapshots(directory)][-2:]
    return manifest_from(entries, snapshots, max([top, *snapshots]))


def _move_aside(datadir: DataDir, name: str, new: str, report: RepairReport) -> None:
    datadir.rename(name, new)
    report.actions.append(f"renamed {name} to {new}")


def _cut(datadir: DataDir, directory: Path, problem: Problem, report: RepairReport) -> None:
    """Move aside what lies after the last good record of ``problem``."""
    keep_up_to = problem.last_good
    if problem.kind == "damage" and problem.segment is not None:
        seg = problem.segment
        aside = f"{seg.name}.damaged-at-{problem.offset}"
        with open(seg, "rb") as src, open(directory / aside, "wb") as dst:
            src.seek(problem.offset)
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        with open(seg, "r+b") as fh:
            fh.truncate(problem.offset)
            fh.flush()
            os.fsync(fh.fileno())
        datadir.fsync()
        report.actions.append(f"copied {seg.name} from offset {problem.offset} to {aside} and cut {seg.name} there")
    for later in list_segments(directory):
        if later.first_seq > keep_up_to + 1:
            _move_aside(datadir, later.path.name, later.path.name + ".damaged", report)
    if problem.lost is not None:
        report.dropped.append(problem.lost)


def repair(directory: Path, engine_factory: Callable[[], Any]) -> RepairReport:
    """Make ``directory`` recoverable by dropping what cannot be replayed; see the module doc.
    Raises RecoveryError when it cannot (e.g. every snapshot is damaged, a record does not apply)."""
    report = RepairReport()
    datadir = DataDir(directory, create=False)  # the lock: never under a running server
    try:
        for _ in range(16):
            try:
                result = recover(directory, engine_factory, repair=False)
            except RecoveryError as exc:
                problem = exc.problem
                if problem is None:
                    raise
                if problem.kind in ("damage", "missing"):
                    _cut(datadir, directory, problem, report)
                rebuilt = rebuild_manifest(directory)
                if problem.kind == "missing" and problem.lost is not None and problem.segment is None:
                    rebuilt.floor = min(rebuilt.floor, problem.last_good)
                datadir.write_atomic(MANIFEST, rebuilt.to_bytes())
                report.actions.append(f"rebuilt {MANIFEST} from the files in {directory}")
                continue
            report.last_seq = max(result.last_seq, result.snapshot_seq)
            return report
        raise RecoveryError(f"{directory}: repair made no progress; restore a backup")
    finally:
        datadir.close()
