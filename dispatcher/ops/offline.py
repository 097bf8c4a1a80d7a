"""The commands that read files, never a server: ``check-bootstrap``, ``journal dump|verify``, ``replay``.

None of them writes: ``journal dump``, ``journal verify`` and ``replay`` only read
the data dir (no lock, no repair, no tmp file), so they may run beside a server
using it (they then see the records written so far; a record being written may
look like a torn tail).

Record times (``replay --until``): a journal record is one engine call
(dispatcher/durability/records.py). Event records carry the time the server
resolved for them: ``dispatch``, ``set_presence``, ``conversation_event`` and
``claim_from_pool`` their ``at_ms`` (the caller's ``at``, else the server clock),
``tick``/``tick_shop`` the clock that fired them, and the batches read from the
wire (``dispatch_batch``: Dispatch, DispatchBatch, DispatchStream;
``operate_batch``: Operate, OperateStream) the server clock when they arrived.
Configuration records (``put_shop``, ``put_agent``, ``delete_group``...) carry no
time. ``--until TIME`` replays the records in journal order and stops before the
first record whose time is later than TIME: a configuration record written
between the last record at or before TIME and that one is included (its moment
is unknown); ``--until-seq N`` cuts exactly after record N (``journal dump``
shows the seqs and times).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import _fastpath
from _fastpath import AgentConfig, GroupConfig, ShopConfig

from .._gen.dispatch.v1 import common_pb2, dispatch_pb2
from ..bootstrap import BootstrapError, apply_bootstrap, load_bootstrap
from ..convert import now_ms, shop_state_to_pb
from ..durability.datadir import ManifestError, read_manifest
from ..durability.journal import Segment, SegmentScan, list_segments, scan_segment
from ..durability.records import _OPERATE_BATCH, _WIRE_BATCH, RecordError, apply_record
from ..durability.repair import check
from ..durability.snapshot import SnapshotError, list_snapshots, read_snapshot
from ..durability.store import RecoveryError
from .render import format_ms, message_dict, pairs, render_shop_state, table

__all__ = [
    "EXIT_BAD_FILE",
    "EXIT_OK",
    "EXIT_REFUSED",
    "Record",
    "Replay",
    "ReplayError",
    "check_bootstrap",
    "check_bootstrap_command",
    "decode_record",
    "journal_dump_command",
    "journal_verify_command",
    "parse_time",
    "read_records",
    "replay",
    "replay_command",
    "verify",
]

EXIT_OK: Final = 0
EXIT_BAD_FILE: Final = 2
"""check-bootstrap: the file would make ``serve`` refuse to start (its exit code 2)."""
EXIT_REFUSED: Final = 3
"""journal verify / replay: the data dir is damaged, incomplete or cannot give the asked state
(``dispatcher journal check``'s and ``serve``'s code for a data dir they refuse)."""

# ------------------------------------------------------------------ check-bootstrap


def _duplicates(shops: list[Any], source: str) -> str | None:
    """The first shop id given twice, as an error message; None when every shop is unique."""
    seen: dict[str, int] = {}
    for i, raw in enumerate(shops):
        shop_id = raw.get("shop_id") if isinstance(raw, dict) else None
        if not isinstance(shop_id, str):
            continue
        if shop_id in seen:
            return (
                f"{source}: shops[{i}]: shop_id {shop_id!r} is already defined by shops[{seen[shop_id]}]; "
                "each shop may appear once (merge the two entries)"
            )
        seen[shop_id] = i
    return None


def check_bootstrap(path: Path, seed: int = 0) -> dict[str, Any]:
    """Everything ``serve --bootstrap`` checks, applied to a throwaway engine, and duplicate shop ids.
    Raises BootstrapError naming the place of the first mistake."""
    source = str(path)
    shops = load_bootstrap(path)
    engine = _fastpath.Engine(seed)
    counts = apply_bootstrap(engine, shops, now_ms(), source)
    duplicate = _duplicates(shops, source)  # a fallback: bootstrap.py may refuse them itself
    if duplicate is not None:
        raise BootstrapError(duplicate)
    return {"file": source, "shop_ids": list(engine.shop_ids()), "counts": counts}


def check_bootstrap_command(file: str, seed: int, as_json: bool) -> int:
    """``dispatcher check-bootstrap FILE``: 0 when ``serve`` would load it, 2 (its code) when not."""
    try:
        report = check_bootstrap(Path(file), seed)
    except BootstrapError as exc:
        if as_json:
            print(json.dumps({"ok": False, "file": file, "error": str(exc)}, ensure_ascii=False))
        else:
            print(f"INVALID: {exc}", file=sys.stderr)
        return EXIT_BAD_FILE
    if as_json:
        print(json.dumps({"ok": True, **report}, ensure_ascii=False))
        return EXIT_OK
    counts = report["counts"]
    print(f"{file}: OK: serve would load it")
    rows: list[tuple[str, object]] = [(k.replace("_", " "), v) for k, v in counts.items()]
    print(pairs([*rows, ("shop ids", ", ".join(report["shop_ids"]))]))
    return EXIT_OK


# ------------------------------------------------------------------ records in readable form

_LEGACY: Final = {"d": "dispatch", "p": "set_presence", "e": "conversation_event", "c": "claim_from_pool"}
_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "dispatch": ("shop_id", "buyer_id", "conversation_id", "at_ms", "type", "source", "order_state", "to_account",
                 "trace", "priority"),
    "set_presence": ("shop_id", "agent_id", "presence", "client", "at_ms"),
    "conversation_event": ("shop_id", "conversation_id", "event", "at_ms", "buyer_id", "agent_id", "to_agent_id",
                           "to_group_id"),
    "claim_from_pool": ("shop_id", "agent_id", "at_ms", "conversation_id"),
    "put_shop": ("shop",),
    "put_agent": ("agent",),
    "put_group": ("group",),
    "delete_shop": ("shop_id",),
    "delete_agent": ("shop_id", "agent_id"),
    "delete_group": ("shop_id", "group_id"),
    "set_exclusive_agent": ("shop_id", "buyer_id", "agent_id"),
    "delete_exclusive_agent": ("shop_id", "buyer_id"),
    "tick": ("now_ms",),
    "tick_shop": ("shop_id", "at_ms"),
}  # fmt: skip
"""The engine call of each JSON record (records.py), argument by argument."""
_TIME_FIELDS: Final = ("at_ms", "now_ms")
_ENUMS: Final[dict[str, Any]] = {
    "presence": common_pb2.Presence,
    "client": common_pb2.Client,
    "event": common_pb2.ConversationEvent,
    "order_state": common_pb2.OrderState,
    "order_states": common_pb2.OrderState,
    "type": common_pb2.ConversationType,
    "strategy": common_pb2.Strategy,
    "offline_rule": common_pb2.OfflineRule,
    "main_account_mode": common_pb2.MainAccountMode,
    "role": common_pb2.Role,
}
"""Record arguments (and config keys) that are dispatch.v1 enums, shown by name."""
_CONFIGS: Final[dict[str, type]] = {"shop": ShopConfig, "agent": AgentConfig, "group": GroupConfig}


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One journal record, decoded: its seq, the operation, its time (None: configuration) and fields."""

    seq: int
    op: str
    at_ms: int | None
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": format_ms(self.at_ms) if self.at_ms is not None else None,
                "at_ms": self.at_ms, "op": self.op, "fields": self.fields}  # fmt: skip


def _enum_name(key: str, value: Any) -> Any:
    enum = _ENUMS.get(key)
    if enum is None or isinstance(value, bool) or not isinstance(value, int):
        return value
    try:
        return enum.Name(value)
    except ValueError:
        return value


def _named(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _named(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_named(key, v) for v in value]
    return _enum_name(key, value)


def decode_record(seq: int, payload: bytes | memoryview) -> Record:
    """A record as its operation and named fields (enums by name); never raises."""
    head = bytes(payload[:2])
    if head in (_WIRE_BATCH, _OPERATE_BATCH):
        body = bytes(payload[2:])
        now = int.from_bytes(body[:8], "big", signed=True) if len(body) >= 8 else None
        try:
            if head == _WIRE_BATCH:
                request: Any = dispatch_pb2.DispatchBatchRequest.FromString(body[8:])
            else:
                request = dispatch_pb2.OperateRequest.FromString(body[8:])
        except Exception as exc:
            return Record(seq, "undecodable", now, {"error": str(exc), "bytes": len(payload)})
        op = "dispatch_batch" if head == _WIRE_BATCH else "operate_batch"
        return Record(seq, op, now, {"now_ms": now, "request": message_dict(request)})
    try:
        data = json.loads(str(payload, "utf-8"))
        op = _LEGACY.get(data[0], data[0])
        args = data[1:]
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        return Record(seq, "undecodable", None, {"error": str(exc), "bytes": len(payload)})
    names = _FIELDS.get(str(op))
    if names is None:
        return Record(seq, str(op), None, {"args": args})
    fields = {name: _named(name, value) for name, value in zip(names, args, strict=False)}
    if len(args) > len(names):
        fields["more_args"] = args[len(names) :]
    at = next((fields[k] for k in _TIME_FIELDS if isinstance(fields.get(k), int)), None)
    return Record(seq, str(op), at, fields)


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples as lists, enums as numbers): for comparing with a record."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value))


def _config_defaults(cls: type) -> dict[str, Any]:
    return {
        f.name: _named(f.name, _plain(f.default))
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
    }


_DEFAULTS: Final = {key: _config_defaults(cls) for key, cls in _CONFIGS.items()}


def _value_text(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def record_line(record: Record) -> str:
    """``seq  time  op  key=value ...``: the time in its column, configuration without its defaults."""
    parts = []
    for key, value in record.fields.items():
        if key in _TIME_FIELDS and value == record.at_ms:
            continue
        if key in _CONFIGS and isinstance(value, dict):
            defaults = _DEFAULTS[key]
            shown = {k: v for k, v in value.items() if k not in defaults or _plain(v) != defaults[k]}
            parts += [f"{k}={_value_text(v)}" for k, v in shown.items()]
            continue
        if key == "request" and isinstance(value, dict):
            parts.append(_value_text(value))
            continue
        parts.append(f"{key}={_value_text(value)}")
    time = format_ms(record.at_ms) if record.at_ms is not None else "-"
    return f"{record.seq:>8}  {time:<24}  {record.op:<22}  {' '.join(parts)}".rstrip()


# ------------------------------------------------------------------ reading a data dir


@dataclasses.dataclass(slots=True)
class _Segments:
    """The readable journal: records in seq order, and where (and why) it stops being readable."""

    scans: list[tuple[Segment, SegmentScan]]
    problem: str | None = None
    torn: str | None = None

    def records(self) -> Iterator[tuple[int, memoryview]]:
        for _, scan in self.scans:
            yield from scan.records

    def first_seq(self) -> int | None:
        return next((scan.records[0][0] for _, scan in self.scans if scan.records), None)

    def last_seq(self) -> int | None:
        return next((scan.records[-1][0] for _, scan in reversed(self.scans) if scan.records), None)


def _read_segments(directory: Path) -> _Segments:
    """Scan every segment in order; stop at damage or a gap (a torn tail of the newest one is only noted)."""
    segments = list_segments(directory)
    out = _Segments([])
    expected: int | None = None
    for i, seg in enumerate(segments):
        scan = scan_segment(seg)
        if scan.records and expected is not None and scan.records[0][0] != expected:
            if scan.records[0][0] > expected:
                out.problem = f"records {expected}..{scan.records[0][0] - 1} are missing before {seg.path.name}"
                return out
        out.scans.append((seg, scan))
        if scan.records:
            expected = scan.records[-1][0] + 1
        if scan.error is not None:
            where = f"{seg.path.name} at offset {scan.good_end}: {scan.error}"
            if scan.torn and i == len(segments) - 1:
                out.torn = f"{where} (a torn tail: an interrupted write, which recovery cuts off)"
            else:
                out.problem = f"{where}; nothing after it is read"
                return out
    return out


def read_records(directory: Path) -> tuple[list[Record], str | None, str | None]:
    """Every readable record of a data dir, decoded; the damage that stopped reading; a torn tail."""
    segments = _read_segments(directory)
    return [decode_record(seq, payload) for seq, payload in segments.records()], segments.problem, segments.torn


def _data_dir(text: str) -> Path:
    directory = Path(text)
    if not directory.is_dir():
        raise ReplayError(f"{directory} is not a directory")
    return directory


def journal_dump_command(data_dir: str, as_json: bool) -> int:
    """``dispatcher journal dump DIR``: one line per record (``--json``: one object per line)."""
    try:
        directory = _data_dir(data_dir)
    except ReplayError as exc:
        print(f"dispatcher journal dump: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    segments = _read_segments(directory)

    def lines() -> Iterator[str]:
        if not as_json:
            for snap in list_snapshots(directory):
                yield f"# {snap.path.name}: the state after record {snap.seq}"
        for seg, scan in segments.scans:
            if not as_json:
                span = f"records {scan.records[0][0]}..{scan.records[-1][0]}" if scan.records else "no records"
                yield f"# {seg.path.name}: {span}"
            for seq, payload in scan.records:
                record = decode_record(seq, payload)
                yield json.dumps(record.to_json(), ensure_ascii=False) if as_json else record_line(record)

    for line in lines():
        print(line)
    for note in (segments.torn, segments.problem):
        if note is not None:
            print(json.dumps({"note": note}) if as_json else f"# {note}", file=sys.stderr)
    return EXIT_REFUSED if segments.problem is not None else EXIT_OK


def verify(directory: Path, seed: int = 0) -> dict[str, Any]:
    """Every file's CRC (each snapshot, each record of each segment, the MANIFEST), the seqs'
    continuity across segments, and what a start would recover (``journal check``)."""
    files: list[dict[str, Any]] = []
    ok = True
    try:
        manifest = read_manifest(directory)
        files.append({"file": "MANIFEST", "status": "ok" if manifest is not None else "absent"})
        if manifest is None and (list_snapshots(directory) or list_segments(directory)):
            files[-1]["status"] = "absent (a data dir from an older version, or it was lost)"
    except ManifestError as exc:
        files.append({"file": "MANIFEST", "status": f"damaged: {exc}"})
        ok = False
    for snap in list_snapshots(directory):
        try:
            read_snapshot(snap)
            files.append({"file": snap.path.name, "seqs": f"..{snap.seq}", "status": "ok"})
        except SnapshotError as exc:
            files.append({"file": snap.path.name, "seqs": f"..{snap.seq}", "status": f"damaged: {exc}"})
            ok = False
    segments = list_segments(directory)
    expected: int | None = None
    for i, seg in enumerate(segments):
        scan = scan_segment(seg)
        entry: dict[str, Any] = {"file": seg.path.name, "records": len(scan.records)}
        if scan.records:
            entry["seqs"] = f"{scan.records[0][0]}..{scan.records[-1][0]}"
        status = "ok"
        if scan.records and expected is not None and scan.records[0][0] > expected:
            status = f"gap: records {expected}..{scan.records[0][0] - 1} are missing before it"
            ok = False
        if scan.error is not None:
            if scan.torn and i == len(segments) - 1:
                status = f"torn tail at offset {scan.good_end} ({scan.error}): an interrupted write; a start cuts it"
            else:
                status = f"damaged at offset {scan.good_end}: {scan.error}"
                ok = False
        entry["status"] = status
        files.append(entry)
        if scan.records:
            expected = scan.records[-1][0] + 1
    try:
        recovery: dict[str, Any] = {"ok": True, **check(directory, lambda: _fastpath.Engine(seed))}
    except (RecoveryError, OSError) as exc:
        recovery = {"ok": False, "error": str(exc)}
        ok = False
    return {"ok": ok, "data_dir": str(directory), "files": files, "recovery": recovery}


def journal_verify_command(data_dir: str, seed: int, as_json: bool) -> int:
    """``dispatcher journal verify DIR``: 0 when every file is intact and a start would recover it."""
    try:
        report = verify(_data_dir(data_dir), seed)
    except (ReplayError, OSError) as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        else:
            print(f"dispatcher journal verify: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        rows = [(f["file"], f.get("seqs", "-"), f.get("records", "-"), f["status"]) for f in report["files"]]
        print(table(("file", "seqs", "records", "status"), rows))
        rec = report["recovery"]
        if rec["ok"]:
            what = "nothing (an empty data dir)" if rec["fresh"] else (
                f"snapshot {rec['snapshot_seq']} + {rec['replayed']} records, up to record {rec['last_seq']}"
            )  # fmt: skip
            print(f"recovery: ok: a start would load {what}")
        else:
            print(f"recovery: REFUSED: {rec['error']}")
        print("verify: OK" if report["ok"] else "verify: FAILED")
    return EXIT_OK if report["ok"] else EXIT_REFUSED


# ------------------------------------------------------------------ replay


class ReplayError(ValueError):
    """The data dir cannot give the state asked for."""


def parse_time(text: str) -> int:
    """RFC 3339 (``2024-05-01T12:00:00Z``, ``...+08:00``) or epoch milliseconds → epoch ms."""
    raw = text.strip()
    if raw.lstrip("-").isdigit():
        return int(raw)
    try:
        when = dt.datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 time (2024-05-01T12:00:00Z) nor epoch milliseconds"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z (UTC) or an offset like +08:00")
    return (when - _EPOCH) // dt.timedelta(milliseconds=1)


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(slots=True)
class Replay:
    """The state of a data dir after record ``last_seq``, rebuilt from snapshot ``snapshot_seq``."""

    engine: Any
    snapshot_seq: int
    last_seq: int
    replayed: int
    last_record: Record | None
    """The last record at or before the cut that carries a time."""
    next_record: Record | None
    """The first record after the cut (None: the cut is the end of the journal)."""
    notes: list[str]

    def describe(self) -> dict[str, Any]:
        return {
            "snapshot_seq": self.snapshot_seq,
            "last_seq": self.last_seq,
            "replayed": self.replayed,
            "last_record": _brief(self.last_record),
            "next_record": _brief(self.next_record),
            "notes": self.notes,
        }


def _brief(record: Record | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"seq": record.seq, "op": record.op, "at_ms": record.at_ms, "time": format_ms(record.at_ms)}


def replay(
    directory: Path,
    engine_factory: Callable[[], Any],
    *,
    until_ms: int | None = None,
    until_seq: int | None = None,
) -> Replay:
    """The state after the last record at or before ``until_ms`` (see the module doc), or after record
    ``until_seq``, or after the last readable record; read-only. Raises ReplayError."""
    segments = _read_segments(directory)
    snapshots = list_snapshots(directory)
    notes: list[str] = []
    if segments.torn is not None:
        notes.append(segments.torn)
    if segments.problem is not None:
        notes.append(f"the journal is damaged: {segments.problem}")
    if not snapshots:
        if segments.first_seq() is not None:
            raise ReplayError(f"{directory} holds journal segments but no snapshot to replay them on")
        if until_seq:
            raise ReplayError(f"{directory} holds no records; there is no record {until_seq}")
        return Replay(engine_factory(), 0, 0, 0, None, None, [*notes, f"{directory} holds no state (never started)"])
    decoded = [(seq, payload, decode_record(seq, payload)) for seq, payload in segments.records()]
    top = max(segments.last_seq() or 0, snapshots[-1].seq)
    if until_seq is not None:
        if until_seq < 0:
            raise ReplayError(f"--until-seq {until_seq} is negative")
        if until_seq > top:
            raise ReplayError(f"there is no record {until_seq}: the journal in {directory} ends at record {top}")
        cut = until_seq
    elif until_ms is not None:
        later = next((rec for _, _, rec in decoded if rec.at_ms is not None and rec.at_ms > until_ms), None)
        if later is None and segments.problem is not None:
            readable = segments.last_seq()
            raise ReplayError(
                f"the journal cannot be read {f'past record {readable}' if readable else 'at all'} "
                f"({segments.problem}) and no readable record is later than {format_ms(until_ms)}, so the state "
                "at that moment is unknown; `journal verify` names the damage, --until-seq N cuts at a known record"
            )
        cut = later.seq - 1 if later is not None else top
    else:
        cut = top
    first = segments.first_seq()
    last = segments.last_seq()

    def reaches(base: int) -> bool:  # records base+1 .. cut are all readable
        return cut == base or (first is not None and last is not None and first <= base + 1 and last >= cut)

    engine: Any = None
    base: int | None = None
    for snap in reversed(snapshots):
        if snap.seq > cut or not reaches(snap.seq):
            continue
        try:
            state = read_snapshot(snap)
            candidate = engine_factory()
            candidate.import_state(state)
        except Exception as exc:  # a damaged snapshot: an older one may do
            notes.append(f"{snap.path.name} is unusable ({exc}); tried an older snapshot")
            continue
        engine, base = candidate, snap.seq
        break
    if engine is None or base is None:
        held = f"records {first}..{last}" if first is not None else "no records"
        oldest = snapshots[0].seq
        if until_ms is not None and cut < oldest:
            raise ReplayError(
                f"{format_ms(until_ms)} is before the oldest state {directory} keeps: its oldest snapshot is the "
                f"state after record {oldest} (older records and snapshots were deleted as newer snapshots were "
                f"written), and its journal holds {held}"
            )
        raise ReplayError(
            f"no snapshot from which record {cut} can be reached: the snapshots are after records "
            f"{', '.join(str(s.seq) for s in snapshots)} and the journal holds {held}"
            + (f"; {segments.problem}" if segments.problem else "")
        )
    replayed = 0
    for seq, payload, _ in decoded:
        if seq <= base:
            continue
        if seq > cut:
            break
        try:
            apply_record(engine, payload)
        except RecordError as exc:
            raise ReplayError(f"record {seq} does not apply: {exc}") from None
        replayed += 1
        if not replayed % 4096:
            engine.drain_outbox()
    engine.drain_outbox()
    last_timed = next((rec for seq, _, rec in reversed(decoded) if seq <= cut and rec.at_ms is not None), None)
    following = next((rec for seq, _, rec in decoded if seq > cut), None)
    if until_ms is not None and last_timed is None and base == 0:
        notes.append(f"no record is at or before {format_ms(until_ms)}: this is the state the data dir started with")
    if cut == base and base > 0 and (first is None or first > base):
        notes.append(f"record {base} is no longer in the journal: its time is unknown")
    try:
        manifest = read_manifest(directory)
    except ManifestError:
        manifest = None
    if manifest is not None and last is not None and manifest.floor > last and cut >= last:
        notes.append(f"MANIFEST says record {manifest.floor} was written, the journal here ends at record {last}")
    return Replay(engine, base, cut, replayed, last_timed, following, notes)


def replay_command(
    data_dir: str, until: str | None, until_seq: int | None, shop_id: str | None, seed: int, as_json: bool
) -> int:
    """``dispatcher replay DIR [--until TIME | --until-seq N] [--shop ID]``: shops as ``shop show``."""
    try:
        until_ms = parse_time(until) if until is not None else None
    except ValueError as exc:
        print(f"dispatcher replay: --until: {exc}", file=sys.stderr)
        return EXIT_BAD_FILE
    try:
        directory = _data_dir(data_dir)
        result = replay(directory, lambda: _fastpath.Engine(seed), until_ms=until_ms, until_seq=until_seq)
    except (ReplayError, RecoveryError, OSError) as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        else:
            print(f"dispatcher replay: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    engine = result.engine
    shop_ids = list(engine.shop_ids())
    if shop_id is not None:
        if shop_id not in shop_ids:
            message = f"shop {shop_id!r} does not exist in that state (shops: {', '.join(shop_ids) or 'none'})"
            if as_json:
                print(json.dumps({"ok": False, "error": message}, ensure_ascii=False))
            else:
                print(f"dispatcher replay: {message}", file=sys.stderr)
            return 1
        shop_ids = [shop_id]
    states = []
    for sid in shop_ids:
        state = engine.shop_state(sid)
        moment = until_ms if until_ms is not None else (state.get("clock_ms") or now_ms())
        states.append(shop_state_to_pb(state, engine.shop_config(sid), now=moment))
    if as_json:
        body = {"ok": True, "data_dir": str(directory), "until_ms": until_ms, **result.describe()}
        body["shops"] = [message_dict(s, defaults=True) for s in states]
        print(json.dumps(body, ensure_ascii=False))
        return EXIT_OK
    rows: list[tuple[str, object]] = [
        ("data dir", directory),
        ("state", f"after record {result.last_seq} (snapshot {result.snapshot_seq} + {result.replayed} records)"),
    ]
    if until_ms is not None:
        rows.append(("until", format_ms(until_ms)))
    if result.last_record is not None:
        rows.append(
            (
                "last record",
                f"{result.last_record.seq} {result.last_record.op} at {format_ms(result.last_record.at_ms)}",
            )
        )
    if result.next_record is not None:
        nxt = result.next_record
        rows.append(
            ("next record", f"{nxt.seq} {nxt.op}" + (f" at {format_ms(nxt.at_ms)}" if nxt.at_ms is not None else ""))
        )
    else:
        rows.append(("next record", "none: the end of the journal"))
    rows += [("note", note) for note in result.notes]
    print(pairs(rows))
    for state in states:
        print()
        print(render_shop_state(state))
    if not states:
        print("\nno shops")
    return EXIT_OK
