"""Unit tests of dispatcher/durability: framing, group commit, snapshots, recovery, refusal."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import _fastpath
from _fastpath import AgentConfig, ConversationEvent, DispatchError, Presence, ShopConfig
from dispatcher._gen.dispatch.v1 import dispatch_pb2
from dispatcher.durability import DurabilityOptions, DurableStore, JournaledEngine, JournalError, RecoveryError, recover
from dispatcher.durability.datadir import manifest_from
from dispatcher.durability.journal import HEADER, Segment, frame, list_segments, scan_segment
from dispatcher.durability.snapshot import list_snapshots, read_snapshot, write_snapshot

T0 = 1_700_000_000_000


def engine() -> Any:
    return _fastpath.Engine(7)


def state(e: Any) -> dict[str, Any]:
    e = getattr(e, "engine", e)
    s = e.export_state()
    s["outbox"] = []
    return s


def setup_shop(e: Any, shop: str = "s") -> None:
    e.put_shop(ShopConfig(shop, f"{shop}:main", offline_rule=4))  # STAGING when nobody is online
    for i in range(3):
        e.put_agent(AgentConfig(shop, f"{shop}:a{i}", max_capacity=2))
    e.set_presence(shop, f"{shop}:a0", Presence.ONLINE, 1, T0)
    e.set_presence(shop, f"{shop}:a1", Presence.ONLINE, 1, T0)


def traffic(e: Any, n: int, shop: str = "s", start: int = 0) -> None:
    """Dispatches, replies and closes; every call succeeds."""
    for i in range(start, start + n):
        at = T0 + 1000 * (i + 1)
        e.dispatch(shop, f"b{i % 5}", f"c{i}", at)
        if i % 2:
            conv = e.conversation(shop, f"c{i}")
            if conv["agent_id"] and conv["wait"] == 0:
                e.conversation_event(shop, f"c{i}", ConversationEvent.AGENT_REPLY, at + 1)
        if i % 3 == 2:
            e.conversation_event(shop, f"c{i - 2}", ConversationEvent.CLOSED, at + 2)


def options(tmp_path: Path, **kw: Any) -> DurabilityOptions:
    return DurabilityOptions(data_dir=tmp_path / "data", **{"snapshot_interval": 0, "snapshot_every": 0, **kw})


async def open_store(tmp_path: Path, **kw: Any) -> DurableStore:
    store = DurableStore.open(options(tmp_path, **kw), engine)
    store.begin()
    store.start()
    return store


async def crash(store: DurableStore) -> None:
    """Stop a store the way ``kill -9`` would: the files as written, no final snapshot, no clean close."""
    journal = store.journal
    assert journal is not None
    for task in (journal._task, journal._sync_task, journal._watch_task, store._task):
        if task is not None:
            task.cancel()
    await asyncio.sleep(0)
    journal._executor.shutdown(wait=True)
    store._snap_executor.shutdown(wait=True)
    if journal._fd >= 0:
        os.close(journal._fd)
        journal._fd = -1
    store.datadir.close()
    store._closed = True


# ------------------------------------------------------------------ framing


def test_frame_roundtrip_and_every_kind_of_damage_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "journal-00000000000000000005.log"
    payloads = [b'["d","s"]', b"", b"x" * 1000]
    data = b"".join(frame(5 + i, p) for i, p in enumerate(payloads))
    path.write_bytes(data)
    scan = scan_segment(Segment(5, path))
    assert scan.error is None and scan.good_end == len(data)
    assert [(seq, bytes(p)) for seq, p in scan.records] == [(5, payloads[0]), (6, b""), (7, payloads[2])]
    second = HEADER.size + len(payloads[0])
    # A flipped payload bit: bad CRC, everything from that record on is out.
    damaged = bytearray(data)
    third = second + HEADER.size
    damaged[third + HEADER.size + 3] ^= 0x01  # inside the third record's payload
    path.write_bytes(bytes(damaged))
    scan = scan_segment(Segment(5, path))
    assert scan.error == "bad CRC" and [s for s, _ in scan.records] == [5, 6]
    # A flipped seq: also caught by the CRC (it covers the seq).
    damaged = bytearray(data)
    damaged[8] ^= 0x02
    path.write_bytes(bytes(damaged))
    assert scan_segment(Segment(5, path)).error == "bad CRC"
    # Torn writes: a partial header, a partial payload.
    for cut, reason in ((second + 3, "partial record header"), (len(data) - 1, "partial record")):
        path.write_bytes(data[:cut])
        scan = scan_segment(Segment(5, path))
        assert scan.error is not None and scan.error.startswith(reason)
        assert scan.good_end <= cut and scan.records
    # A valid record with the wrong seq for its place (a segment under the wrong name).
    path.write_bytes(data)
    assert "seq 5 where 4" in (scan_segment(Segment(4, path)).error or "")


# ------------------------------------------------------------------ journal and recovery


async def test_recovery_rebuilds_exactly_the_acknowledged_state(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    assert store.fresh
    e = store.engine
    setup_shop(e)
    traffic(e, 40)
    await store.journal.wait_durable()
    expected = state(e)
    assert store.journal.seq > 40 and store.journal.durable_seq == store.journal.seq
    await store.close(snapshot=False)  # as after a crash: only snapshot 0 and the journal
    rec = recover(tmp_path / "data", engine)
    assert not rec.fresh and rec.snapshot_seq == 0 and rec.replayed == store.journal.seq
    assert state(rec.engine) == expected


async def test_failed_and_direct_calls_are_not_journaled(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    e = store.engine
    setup_shop(e)
    await store.journal.wait_durable()
    before = store.journal.seq
    with pytest.raises(DispatchError):
        e.dispatch("nope", "b", "c", T0)
    with pytest.raises(DispatchError):
        e.set_presence("s", "s:ghost", Presence.ONLINE, 1, T0)
    assert e.dispatch("s", "b", "d1", T0, 2, "", 0, "someone")[0] == _fastpath.Reason.DIRECT
    assert store.journal.seq == before
    assert store.journal.barrier() is None  # nothing pending: reads and failures never wait
    with pytest.raises(AttributeError, match="must be journaled"):
        e.some_new_mutation  # noqa: B018 - an unknown engine method is refused, not silently passed
    await store.close()


@pytest.mark.parametrize("engine_cls", [_fastpath.ReferenceEngine, _fastpath.CompiledEngine])
def test_retries_are_not_journaled_and_priorities_replay(engine_cls: type) -> None:
    """§12: a retried dispatch changes nothing and writes nothing, on the object and the wire
    path; §11: a dispatch's priority is in its record (only when not 0) and replays."""
    from dispatcher.durability import apply_record

    records: list[bytes] = []
    live = JournaledEngine(engine_cls(7), lambda p: records.append(p) or len(records))
    live.put_shop(ShopConfig("s", "s:main"))
    live.put_agent(AgentConfig("s", "s:a0", max_capacity=1))
    live.set_presence("s", "s:a0", Presence.ONLINE, 1, T0)
    live.dispatch("s", "b0", "c0", T0)
    live.dispatch("s", "b1", "c1", T0, priority=0)
    live.dispatch("s", "b2", "c2", T0, 1, "", 0, "", False, 7)
    n = len(records)
    assert records[-2] == b'["dispatch","s","b1","c1",1700000000000,1,"",0,""]'  # as before priorities
    assert records[-1] == b'["dispatch","s","b2","c2",1700000000000,1,"",0,"",false,7]'
    assert live.dispatch("s", "b2", "c2", T0 + 1)[0] == _fastpath.Reason.QUEUED  # a retry
    raw = dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="b0", conversation_id="c0").SerializeToString()
    if live.dispatch_wire(raw, T0 + 2) is None:  # a retry through the unary wire path (the reference's)
        live.dispatch("s", "b0", "c0", T0 + 2)  # the compiled one declines: the server's object path
    assert len(records) == n and live.retry_count() == 2
    live.conversation_event("s", "c0", ConversationEvent.CLOSED, T0 + 3)  # c2 (priority 7) goes first
    assert [item[1] for item in live.drain_outbox()] == ["c2"]
    replayed = engine_cls(7)
    for payload in records:
        apply_record(replayed, payload)
    assert state(replayed) == state(live)


async def test_group_commit_one_fsync_covers_many_concurrent_records(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    e = store.engine
    setup_shop(e)
    await store.journal.wait_durable()
    fsyncs = store.journal.fsyncs
    acked: list[int] = []

    async def caller(i: int) -> None:
        e.dispatch("s", f"b{i}", f"g{i}", T0 + 10_000 + i)
        seq = store.journal.seq
        durable = store.journal.barrier()
        assert durable is not None  # nobody is answered before its record is durable
        await durable
        assert store.journal.durable_seq >= seq and store.journal.synced_seq >= seq
        acked.append(i)

    await asyncio.gather(*(caller(i) for i in range(500)))
    assert len(acked) == 500
    used = store.journal.fsyncs - fsyncs
    assert 1 <= used < 50, used  # group commit: far fewer fsyncs than records
    await store.close()


async def test_batch_mode_answers_after_write_and_fsyncs_within_the_interval(tmp_path: Path) -> None:
    store = await open_store(tmp_path, fsync="batch", fsync_interval_ms=20)
    e = store.engine
    setup_shop(e)
    durable = store.journal.barrier()
    assert durable is not None
    await durable
    seg = list_segments(tmp_path / "data")[-1]
    assert len(scan_segment(seg).records) == store.journal.seq  # written before the answer
    for _ in range(200):
        if store.journal.synced_seq == store.journal.seq:
            break
        await asyncio.sleep(0.01)
    assert store.journal.synced_seq == store.journal.seq
    await store.close()


async def test_none_mode_never_waits_but_close_writes_everything(tmp_path: Path) -> None:
    store = await open_store(tmp_path, fsync="none")
    setup_shop(store.engine)
    traffic(store.engine, 10)
    assert store.journal.barrier() is None
    expected = state(store.engine)
    await store.close(snapshot=False)
    assert state(recover(tmp_path / "data", engine).engine) == expected


async def test_torn_tail_is_truncated_at_the_last_good_record(tmp_path: Path, capsys: Any) -> None:
    store = await open_store(tmp_path)
    e = store.engine
    setup_shop(e)
    traffic(e, 20)
    await store.journal.wait_durable()
    good = state(e)
    good_seq = store.journal.seq
    e.dispatch("s", "late", "late-conv", T0 + 999_999)
    await store.journal.wait_durable()
    await crash(store)  # as kill -9 would: no clean close (which records how far the journal got)
    seg = list_segments(tmp_path / "data")[-1]
    scan = scan_segment(seg)
    last_start = scan.good_end - HEADER.size - len(scan.records[-1][1])
    with open(seg.path, "r+b") as fh:  # the last record half written
        fh.truncate(last_start + HEADER.size + 3)
    rec = recover(tmp_path / "data", engine)
    assert state(rec.engine) == good and rec.last_seq == good_seq
    assert rec.truncated and rec.truncated[0]["offset"] == last_start
    assert seg.path.stat().st_size == last_start  # cut at the last good record
    # Garbage after the good records (a torn write of zeros): same result, and the
    # server goes on writing after the good records.
    with open(seg.path, "ab") as fh:
        fh.write(b"\x00" * 37)
    rec = recover(tmp_path / "data", engine)
    assert state(rec.engine) == good and rec.truncated[0]["dropped_bytes"] == 37
    store = DurableStore.open(options(tmp_path), engine)
    store.begin()
    store.start()
    assert store.journal.seq == good_seq
    store.engine.dispatch("s", "again", "again-conv", T0 + 999_999)
    expected = state(store.engine)
    await store.close(snapshot=False)
    assert state(recover(tmp_path / "data", engine).engine) == expected


async def test_snapshots_bound_the_journal_and_a_corrupt_one_falls_back(tmp_path: Path) -> None:
    store = await open_store(tmp_path, snapshot_every=25)
    e = store.engine
    setup_shop(e)
    for round_ in range(6):
        traffic(e, 10, start=round_ * 10)
        await store.journal.wait_durable()
        for _ in range(100):  # let the snapshotter run
            if store.journal.seq - store.snapshot_seq < 25:
                break
            await asyncio.sleep(0.01)
    assert store.snapshots_written >= 2
    expected = state(e)
    await store.close(snapshot=False)
    data = tmp_path / "data"
    snaps = list_snapshots(data)
    assert len(snaps) == 2  # the newest two are kept
    segments = list_segments(data)
    assert segments[0].first_seq <= snaps[0].seq + 1  # the journal since the previous snapshot is kept
    assert all(s.first_seq > 1 for s in segments)  # older segments were deleted
    assert state(recover(data, engine, repair=False).engine) == expected
    # Damage the newest snapshot: the previous one + the journal give the same state.
    raw = bytearray(snaps[-1].path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    snaps[-1].path.write_bytes(bytes(raw))
    rec = recover(data, engine)
    assert rec.snapshot_seq == snaps[0].seq and state(rec.engine) == expected
    assert rec.discarded_snapshots == [snaps[-1].path.name]
    assert snaps[-1].path.with_name(snaps[-1].path.name + ".corrupt").exists()


def test_refuses_to_start_when_nothing_consistent_exists(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    e = engine()
    setup_shop(e)
    write_snapshot(data, 0, state(e))
    assert read_snapshot(list_snapshots(data)[0])["seed"] == 7
    # 1. The only snapshot is damaged.
    snap = list_snapshots(data)[0].path
    snap.write_bytes(snap.read_bytes()[:-10])
    with pytest.raises(RecoveryError, match="no consistent state"):
        recover(data, engine, repair=False)
    # 2. A journal without any snapshot.
    snap.unlink()
    (data / "journal-00000000000000000001.log").write_bytes(frame(1, b'["delete_shop","s"]'))
    with pytest.raises(RecoveryError, match="no snapshot"):
        recover(data, engine)
    # 3. Damage in the middle of the journal (a later segment holds records).
    write_snapshot(data, 0, state(e))
    (data / "MANIFEST").write_bytes(manifest_from([(1, 1), (2, None)], [0], 1).to_bytes())
    (data / "journal-00000000000000000001.log").write_bytes(frame(1, b'["delete_shop","s"]')[:-1])
    (data / "journal-00000000000000000002.log").write_bytes(frame(2, b'["delete_shop","s"]'))
    with pytest.raises(RecoveryError, match="sealed segment cannot have a torn tail.*up to 2.*records 1..2"):
        recover(data, engine)
    # 4. A missing segment (a gap in the journal).
    (data / "journal-00000000000000000001.log").unlink()
    with pytest.raises(RecoveryError, match=r"journal-00000000000000000001.log is missing.*records 1..1 are lost"):
        recover(data, engine)
    # 5. A record the engine refuses (the journal does not belong to this state).
    (data / "journal-00000000000000000002.log").unlink()
    (data / "MANIFEST").write_bytes(manifest_from([(1, None)], [0], 0).to_bytes())
    (data / "journal-00000000000000000001.log").write_bytes(frame(1, b'["delete_shop","other"]'))
    with pytest.raises(RecoveryError, match="does not apply"):
        recover(data, engine)


def test_a_data_dir_is_locked_by_its_server(tmp_path: Path) -> None:
    store = DurableStore.open(options(tmp_path), engine)
    try:
        with pytest.raises(RecoveryError, match="in use"):
            DurableStore.open(options(tmp_path), engine)
    finally:
        asyncio.run(store.close(snapshot=False))
    DurableStore.open(options(tmp_path), engine)  # released


def test_journaled_engine_records_replay_every_mutation(tmp_path: Path) -> None:
    """Every mutating method, through the wrapper, replays to the same state."""
    from dispatcher.durability import apply_record

    records: list[bytes] = []
    live = JournaledEngine(engine(), lambda p: records.append(p) or len(records))
    setup_shop(live)
    live.put_agent(AgentConfig("s", "s:bot", role=4, max_capacity=0))
    live.put_group(_fastpath.GroupConfig("s", "g", members=("s:a0", "s:a1"), order_states=(1,), sources=("app",)))
    live.set_exclusive_agent("s", "vip", "s:a2")
    live.dispatch("s", "vip", "v1", T0 + 1, 1, "app", 1)
    live.conversation_event("s", "x1", ConversationEvent.ASSIGNED, T0 + 2, buyer_id="bx", agent_id="s:a0")
    live.conversation_event("s", "x1", ConversationEvent.TRANSFERRED, T0 + 3, to_agent_id="s:a1")
    live.delete_exclusive_agent("s", "vip")
    live.delete_group("s", "g")
    live.delete_agent("s", "s:bot")
    live.set_presence("s", "s:a0", Presence.OFFLINE, 1, T0 + 4)
    live.set_presence("s", "s:a1", Presence.OFFLINE, 1, T0 + 4)
    live.set_presence("s", "s:a2", Presence.OFFLINE, 1, T0 + 4)
    live.put_shop(ShopConfig("s", "s:main", offline_rule=3))  # MESSAGE_POOL
    live.dispatch("s", "p", "pool-1", T0 + 5)
    batch = dispatch_pb2.DispatchBatchRequest(
        requests=[
            dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="w", conversation_id="pool-2"),  # at: the batch's now
            dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="w", conversation_id="pool-1"),  # ALREADY_EXISTS
        ]
    ).SerializeToString()
    assert live.dispatch_batch_wire(batch, T0 + 5, 16)[1] == 1  # one binary record for the batch
    assert live.dispatch_batch_wire(b"\xff", T0 + 5, 16) is None  # not read: nothing changed, no record
    unary = dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="u", conversation_id="pool-3").SerializeToString()
    assert live.dispatch_wire(unary, T0 + 5) is not None  # recorded as the one-item batch of its request
    assert live.dispatch_wire(b"\xff", T0 + 5) is None  # not read: nothing changed, no record
    direct = dispatch_pb2.DispatchRequest(shop_id="s", conversation_id="p2p", type=2, to_account="s:a1")
    assert live.dispatch_wire(direct.SerializeToString(), T0 + 5) is not None  # DIRECT: no record
    live.claim_from_pool("s", "s:a0", T0 + 6)
    live.put_shop(ShopConfig("t", "t:main"))
    live.delete_shop("t")
    replayed = engine()
    for payload in records:
        apply_record(replayed, payload)
    assert state(replayed) == state(live)
    assert len(records) == 25
    assert sum(p[:1] == b"\x00" for p in records) == 2


def test_operate_batches_are_one_record_each_and_replay_to_the_same_state(tmp_path: Path, engine_cls: type) -> None:
    """operate_wire through the wrapper (issue 13): one binary record per batch it read, none for a
    batch it declined; replay re-applies every operation (failed ones fail again, changing nothing)
    to the same state, on both engines."""
    from dispatcher.durability import apply_record

    def op(**kind: Any) -> dispatch_pb2.Operation:
        return dispatch_pb2.Operation(**kind)

    def event(conv: str, ev: int, **kw: Any) -> dispatch_pb2.Operation:
        return op(
            report_conversation=dispatch_pb2.ReportConversationRequest(
                shop_id="s", conversation_id=conv, event=ev, **kw
            )
        )  # type: ignore[arg-type]

    records: list[bytes] = []
    live = JournaledEngine(engine_cls(7), lambda p: records.append(p) or len(records))
    setup_shop(live)
    live.put_agent(AgentConfig("s", "s:bot", role=4, max_capacity=0))
    batches = []
    for n in range(6):  # lifecycles: dispatch, 3 messages, 3 replies, close; presence churn, errors
        ops = []
        for i in range(4):
            c = f"c{n}-{i}"
            ops.append(
                op(dispatch=dispatch_pb2.DispatchRequest(shop_id="s", buyer_id=f"b{(n + i) % 5}", conversation_id=c))
            )
            for _ in range(3):
                ops += [event(c, ConversationEvent.BUYER_MESSAGE), event(c, ConversationEvent.AGENT_REPLY)]
            if i % 2:
                ops.append(event(c, ConversationEvent.CLOSED))
        ops.append(
            op(set_presence=dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id=f"s:a{n % 3}", presence=1 + n % 3))
        )  # type: ignore[arg-type]
        ops.append(op(set_presence=dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:bot", presence=1)))  # type: ignore[arg-type]
        ops.append(event("nope", ConversationEvent.CLOSED))  # NOT_FOUND
        ops.append(event(f"c{n}-0", ConversationEvent.TRANSFERRED, to_agent_id="s:a2"))
        ops.append(
            op(claim_from_pool=dispatch_pb2.ClaimFromPoolRequest(shop_id="s", agent_id="s:a0"))
        )  # the pool is empty
        batches.append(dispatch_pb2.OperateRequest(operations=ops).SerializeToString())
    failed = 0
    for n, raw in enumerate(batches):
        answer = live.operate_wire(raw, T0 + 1000 * (n + 1), 4096)
        assert answer is not None
        failed += answer[2]
        assert live.operate_wire(raw + b"\x0a\x00", T0, 4096) is None  # an operation of no kind: declined, no record
    assert failed >= 12
    replayed = engine_cls(7)
    for payload in records:
        apply_record(replayed, payload)
    assert state(replayed) == state(live)
    assert sum(p[:2] == b"\x00O" for p in records) == len(batches)
    assert replayed.operation_counts() == live.engine.operation_counts()


# ------------------------------------------------------------------ write errors: stall, retry, resume


async def test_a_failed_write_stalls_refuses_new_calls_and_resumes_without_losing_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected ENOSPC on write(): waiting calls fail UNAVAILABLE, new ones are refused before the
    engine runs (nothing changes), the journal retries and, once writes work, holds every record."""
    from dispatcher.durability.journal import JournalUnavailable

    store = await open_store(tmp_path, retry_interval=0.05)
    e = store.engine
    setup_shop(e)
    await store.journal.wait_durable()
    real_write = os.write
    failing = [True]

    def write(fd: int, data: Any) -> int:
        if failing[0] and fd == store.journal._fd:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    e.dispatch("s", "b", "in-flight", T0 + 1)  # applied, its record in the buffer
    with pytest.raises(JournalUnavailable, match="cannot write"):
        await store.journal.wait_durable()
    assert not store.journal.writable and store.journal.stalled is not None
    before = state(e)
    with pytest.raises(JournalUnavailable):
        e.dispatch("s", "b", "refused", T0 + 2)
    assert state(e) == before  # refused before the engine ran
    failing[0] = False
    for _ in range(200):
        if store.journal.writable:
            break
        await asyncio.sleep(0.01)
    assert store.journal.writable
    e.dispatch("s", "b", "after", T0 + 3)
    await store.journal.wait_durable()
    expected = state(e)
    await store.close(snapshot=False)
    recovered = state(recover(tmp_path / "data", engine).engine)
    assert recovered == expected  # "in-flight" was written by the retry: the journal matches the engine


async def test_a_failed_fsync_rewrites_everything_since_the_last_good_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fsync nobody knows what the page cache holds: the segment is cut back to its
    last fsynced size and the records since are written again (never trusted, never lost)."""
    store = await open_store(tmp_path, retry_interval=0.05, fsync="batch", fsync_interval_ms=10_000)
    e = store.engine
    setup_shop(e)
    await store.journal.sync()
    synced_size = store.journal._synced_size
    traffic(e, 10)
    await store.journal.wait_durable()  # batch: written, not fsynced
    assert store.journal._seg_size > synced_size
    real = os.fdatasync
    failing = [True]

    def fdatasync(fd: int) -> None:
        if failing[0]:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with pytest.raises(JournalError):
        await store.journal.sync()
    seg = list_segments(tmp_path / "data")[-1]
    assert seg.path.stat().st_size == synced_size  # cut back to the last fsynced byte
    failing[0] = False
    for _ in range(200):
        if store.journal.writable:
            break
        await asyncio.sleep(0.01)
    await store.journal.sync()
    expected = state(e)
    await store.close(snapshot=False)
    assert state(recover(tmp_path / "data", engine).engine) == expected


def test_a_missing_data_dir_is_created_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(RecoveryError, match="does not exist.*--create-data-dir"):
        DurableStore.open(options(tmp_path, create=False), engine)
    assert not (tmp_path / "data").exists()
    (tmp_path / "data").mkdir()  # an existing empty dir (a new volume) is a first start
    store = DurableStore.open(options(tmp_path, create=False), engine)
    assert store.fresh
    asyncio.run(store.close(snapshot=False))


def test_a_data_dir_without_manifest_from_an_older_version_still_recovers(tmp_path: Path) -> None:
    """Old data dirs (snapshots without the MANIFEST marker, no MANIFEST) recover as before, and a
    MANIFEST is written from then on; a new one without its MANIFEST is refused."""
    import json as _json
    import struct
    import zlib as _zlib

    data = tmp_path / "data"
    data.mkdir()
    e = engine()
    setup_shop(e)
    payload = _json.dumps({"journal_seq": 0, "state": state(e)}).encode()  # the old format
    (data / "snapshot-00000000000000000000.snap").write_bytes(
        b"DSNAP001" + struct.pack("<QQI", 0, len(payload), _zlib.crc32(payload)) + payload
    )
    records = [b'["p","s","s:a2",1,1,1700000000500]', b'["d","s","b","c1",1700000001000,1,"",0,""]']
    (data / "journal-00000000000000000001.log").write_bytes(b"".join(frame(i + 1, r) for i, r in enumerate(records)))
    rec = recover(data, engine, repair=False)
    assert rec.legacy and rec.last_seq == 2 and rec.engine.conversation("s", "c1") is not None
    store = DurableStore.open(options(tmp_path), engine)
    store.begin()
    asyncio.run(store.close(snapshot=False))
    assert (data / "MANIFEST").exists() and not recover(data, engine, repair=False).legacy
    (data / "MANIFEST").unlink()
    write_snapshot(data, 2, state(rec.engine))  # a snapshot of this version: MANIFEST required
    with pytest.raises(RecoveryError, match="MANIFEST is missing"):
        recover(data, engine, repair=False)


def _as_written(got: Any, like: Any) -> Any:
    """``got`` (a state of this version) in the shape of ``like`` (a state an older version wrote):
    keys added since are left out, and so are items appended to a row of plain values (a
    conversation's stored reason, a waiting conversation's priority). Everything the older
    version wrote must still be there, equal."""
    if isinstance(like, dict) and isinstance(got, dict):
        return {k: _as_written(got.get(k), v) for k, v in like.items()}
    if isinstance(like, list) and isinstance(got, list):
        plain = all(not isinstance(x, (list, dict)) for x in like) and like
        if plain and len(got) > len(like):
            return got[: len(like)]
        return [_as_written(g, v) for g, v in zip(got, like, strict=False)] + got[len(like) :]
    return got


def test_a_data_dir_written_by_the_previous_format_recovers_to_the_same_state(tmp_path: Path) -> None:
    """tests/data/datadir-v1 was written before the MANIFEST and before journal records were named
    in words ("d", "p", "e", "c"): it recovers exactly to the state it was written from."""
    import json as _json
    import shutil

    source = Path(__file__).parent / "data" / "datadir-v1"
    data = tmp_path / "data"
    shutil.copytree(source, data)
    expected = _json.loads((data / "expected-state.json").read_text())
    (data / "expected-state.json").unlink()
    raw = (data / "journal-00000000000000000001.log").read_bytes()
    assert b'["d",' in raw and b'["p",' in raw and b'["e",' in raw and b'["c",' in raw
    for kind in ("compiled", "reference"):
        factory = (
            (lambda: _fastpath.CompiledEngine(7)) if kind == "compiled" else (lambda: _fastpath.ReferenceEngine(7))
        )
        rec = recover(data, factory, repair=False)
        assert rec.legacy and rec.last_seq == 26
        got = _json.loads(_json.dumps(state(rec.engine), sort_keys=True))
        assert _as_written(got, expected) == expected, kind
        # Fields added since (spec §11-§12) take their defaults: priority 0, a stored reason.
        assert [w[5] for w in got["shops"][0]["waiting"]["3"]] == [0]
        assert all(len(row) == 8 for row in got["conversations"])

    # A server run on it writes the MANIFEST and, from then on, records named in words.
    async def run() -> None:
        store = await open_store(tmp_path)
        store.engine.set_presence("s", "s:a1", Presence.ONLINE, 1, T0 + 10)
        await store.close(snapshot=False)

    asyncio.run(run())
    newest = list_segments(data)[-1]
    assert bytes(scan_segment(newest).records[-1][1]).startswith(b'["set_presence",')
    assert not recover(data, engine, repair=False).legacy
