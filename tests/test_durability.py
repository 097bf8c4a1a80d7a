"""Durability end to end: the real server as a subprocess, kill -9, torn journals, clean restarts.

The strong check: the test keeps a reference engine fed with every acknowledged
call, in the order the server applied it (each shop is driven by one sequential
worker, shops run concurrently; shops are independent in the engine, so the
per-shop order is the whole story). Every acknowledged answer must equal the
reference's answer, and after a ``kill -9`` and a restart each shop's state must
equal the reference, or the reference plus the one call that was in flight
when the process died (it may or may not have become durable; never half).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import _fastpath
from _fastpath import DispatchError
from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.convert import agent_from_pb, shop_from_pb, shop_state_to_pb, timestamp, timestamp_ms
from dispatcher.durability.journal import HEADER, list_segments, scan_segment
from dispatcher.durability.snapshot import list_snapshots
from dispatcher.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
APP_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS"}


class Server(ServerProcess):
    """``dispatcher serve`` on a data dir, in a subprocess."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        super().__init__(
            "serve",
            "--port",
            "0",
            "--no-auth",
            "--log-format",
            "json",
            "--stats-interval",
            "0",
            "--data-dir",
            str(data_dir),
            "--create-data-dir",
            *extra,
        )

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def finish(self, sig: signal.Signals | None = signal.SIGTERM, timeout: float = 30) -> int:
        return super().finish(sig, timeout)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.ensure_dead()


# ---------------------------------------------------------------- the model: one call, two ways


def shop_pb(shop_id: str, rule: int) -> admin_pb2.ShopConfig:
    return admin_pb2.ShopConfig(shop_id=shop_id, main_account=f"{shop_id}:main", offline_rule=rule)  # type: ignore[arg-type]


def agent_pb(shop_id: str, i: int) -> admin_pb2.Agent:
    return admin_pb2.Agent(shop_id=shop_id, agent_id=f"{shop_id}:a{i}", max_capacity=2)


class Stubs:
    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.dispatch = dispatch_pb2_grpc.DispatchStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)


def _assignments(items: Any) -> list[tuple[str, str, int]]:
    return [(a.conversation_id, a.agent_id, int(a.reason)) for a in items]


async def on_server(stubs: Stubs, op: tuple[Any, ...]) -> Any:
    """Run ``op`` over gRPC; its answer, or ("error", code) for an engine error. Other errors raise."""
    kind, shop = op[0], op[1]
    if kind in ("presence", "event", "claim") and zlib.crc32(repr(op).encode()) % 3 == 0:
        return await _as_operation(stubs, op)  # a third of the events go through Operate
    try:
        if kind == "put_shop":
            await stubs.admin.PutShop(admin_pb2.PutShopRequest(shop=op[2]))
            return None
        if kind == "put_agent":
            await stubs.admin.PutAgent(admin_pb2.PutAgentRequest(agent=op[2]))
            return None
        if kind == "dispatch":
            request = dispatch_pb2.DispatchRequest(
                shop_id=shop, buyer_id=op[2], conversation_id=op[3], at=timestamp(op[4])
            )
            if zlib.crc32(op[3].encode()) % 2:  # half the decisions go through a batch (a binary wire record)
                batch = await stubs.dispatch.DispatchBatch(dispatch_pb2.DispatchBatchRequest(requests=[request]))
                r = batch.responses[0]
                if r.HasField("error"):
                    return ("error", _CODE_BY_NUMBER[r.error.code].name)
            else:
                r = await stubs.dispatch.Dispatch(request)
            return (int(r.reason), r.agent_id, r.group_id)
        if kind == "presence":
            r = await stubs.dispatch.SetPresence(
                dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=op[2], presence=op[3], at=timestamp(op[4]))
            )
            return _assignments(r.assignments)
        if kind == "event":
            r = await stubs.dispatch.ReportConversation(
                dispatch_pb2.ReportConversationRequest(
                    shop_id=shop, conversation_id=op[2], event=op[3], at=timestamp(op[4])
                )
            )
            return (r.agent_id, _assignments(r.assignments))
        if kind == "claim":
            r = await stubs.dispatch.ClaimFromPool(
                dispatch_pb2.ClaimFromPoolRequest(shop_id=shop, agent_id=op[2], at=timestamp(op[3]))
            )
            return (r.conversation_id, r.buyer_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code().name in APP_ERRORS:
            return ("error", exc.code().name)
        raise
    raise AssertionError(op)


async def _as_operation(stubs: Stubs, op: tuple[Any, ...]) -> Any:
    """An event as the one operation of an Operate call, answered as on_server answers it."""
    kind, shop = op[0], op[1]
    if kind == "presence":
        operation = dispatch_pb2.Operation(
            set_presence=dispatch_pb2.SetPresenceRequest(
                shop_id=shop, agent_id=op[2], presence=op[3], at=timestamp(op[4])
            )
        )
    elif kind == "event":
        operation = dispatch_pb2.Operation(
            report_conversation=dispatch_pb2.ReportConversationRequest(
                shop_id=shop, conversation_id=op[2], event=op[3], at=timestamp(op[4])
            )
        )
    else:
        operation = dispatch_pb2.Operation(
            claim_from_pool=dispatch_pb2.ClaimFromPoolRequest(shop_id=shop, agent_id=op[2], at=timestamp(op[3]))
        )
    (result,) = (await stubs.dispatch.Operate(dispatch_pb2.OperateRequest(operations=[operation]))).results
    if result.HasField("error"):
        name = _CODE_BY_NUMBER[result.error.code].name
        assert name in APP_ERRORS, result.error
        return ("error", name)
    if kind == "presence":
        return _assignments(result.set_presence.assignments)
    if kind == "event":
        return (result.report_conversation.agent_id, _assignments(result.report_conversation.assignments))
    return (result.claim_from_pool.conversation_id, result.claim_from_pool.buyer_id)


def on_reference(engine: Any, op: tuple[Any, ...]) -> Any:
    """The same call on the reference engine, answered as on_server answers it."""
    kind, shop = op[0], op[1]
    try:
        if kind == "put_shop":
            engine.put_shop(shop_from_pb(op[2]))
            return None
        if kind == "put_agent":
            engine.put_agent(agent_from_pb(op[2]))
            return None
        if kind == "dispatch":
            reason, agent, group, _ = engine.dispatch(shop, op[2], op[3], op[4])
            return (int(reason), agent or "", group or "")
        if kind == "presence":
            engine.set_presence(shop, op[2], op[3], 0, op[4])
            return [(c, a, int(r)) for _, c, _, a, r, _ in engine.drain_outbox()]
        if kind == "event":
            agent = engine.conversation_event(shop, op[2], op[3], op[4])
            return (agent or "", [(c, a, int(r)) for _, c, _, a, r, _ in engine.drain_outbox()])
        if kind == "claim":
            return tuple(engine.claim_from_pool(shop, op[2], op[3]))
    except DispatchError as exc:
        return ("error", exc.grpc_status)
    finally:
        engine.drain_outbox()
    raise AssertionError(op)


class ShopModel:
    """What the test knows of one shop: its ids and clock, to pick the next call."""

    def __init__(self, shop_id: str, rng: random.Random) -> None:
        self.shop_id = shop_id
        self.rng = rng
        self.clock = T0
        self.convs: list[str] = []
        self.buyers = [f"{shop_id}-b{i}" for i in range(8)]
        self.agents = [f"{shop_id}:a{i}" for i in range(3)]

    def next_op(self, engine: Any) -> tuple[Any, ...]:
        rng, shop = self.rng, self.shop_id
        self.clock += rng.randint(1, 20_000)
        roll = rng.random()
        live = [c for c in self.convs[-40:] if engine.conversation(shop, c) is not None]
        if roll < 0.45 or not live:
            conv = f"{shop}-c{len(self.convs)}"
            self.convs.append(conv)
            return ("dispatch", shop, rng.choice(self.buyers), conv, self.clock)
        if roll < 0.6:
            presence = rng.choice((1, 1, 2, 3))  # ONLINE, SUSPENDED, OFFLINE
            return ("presence", shop, rng.choice(self.agents), presence, self.clock)
        if roll < 0.75:
            return ("event", shop, rng.choice(live), 2, self.clock)  # AGENT_REPLY
        if roll < 0.8:
            return ("event", shop, rng.choice(live), 1, self.clock)  # BUYER_MESSAGE
        if roll < 0.95:
            return ("event", shop, rng.choice(live), 3, self.clock)  # CLOSED
        return ("claim", shop, rng.choice(self.agents), self.clock)


async def view(stubs: Stubs, model: ShopModel) -> Any:
    """Everything observable of one shop over gRPC: state, every conversation, every buyer."""
    shop = model.shop_id
    state = await stubs.admin.GetShopState(admin_pb2.GetShopStateRequest(shop_id=shop))

    async def conv(cid: str) -> Any:
        try:
            r = await stubs.admin.GetConversation(admin_pb2.GetConversationRequest(shop_id=shop, conversation_id=cid))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return None
        return (r.buyer_id, r.agent_id, int(r.wait), r.unread, r.forwarded)

    async def buyer(bid: str) -> Any:
        r = await stubs.admin.GetBuyer(admin_pb2.GetBuyerRequest(shop_id=shop, buyer_id=bid))
        at = timestamp_ms(r.recent_contact_expires_at, "x") if r.HasField("recent_contact_expires_at") else None
        return (r.recent_contact, at)

    convs = await asyncio.gather(*(conv(c) for c in model.convs))
    buyers = await asyncio.gather(*(buyer(b) for b in model.buyers))
    return (state.SerializeToString(deterministic=True), convs, buyers)


def reference_view(engine: Any, model: ShopModel) -> Any:
    shop = model.shop_id
    state = shop_state_to_pb(engine.shop_state(shop), engine.shop_config(shop))
    convs = []
    for cid in model.convs:
        c = engine.conversation(shop, cid)
        convs.append(
            None if c is None else (c["buyer_id"], c["agent_id"] or "", c["wait"], c["unread"], c["forwarded"])
        )
    buyers = []
    for bid in model.buyers:
        contact = engine.recent_contact(shop, bid)
        window = engine.shop_config(shop).affinity_window_ms  # GetBuyer answers when the contact expires
        buyers.append(("", None) if contact is None else (contact[0], contact[1] + window))
    return (state.SerializeToString(deterministic=True), convs, buyers)


def clone(engine: Any) -> Any:
    copy = _fastpath.Engine(engine.seed)
    copy.import_state(engine.export_state())
    return copy


# ---------------------------------------------------------------- crash test


@pytest.mark.parametrize("fsync", ["always", "batch"])
async def test_kill_9_at_random_moments_loses_nothing_acknowledged(
    tmp_path: Path, servers: list[Server], fsync: str
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data = tmp_path / "data"
    rounds = 4 if fsync == "always" else 2
    ref = _fastpath.Engine(0)
    rules = (4, 3, 1)  # STAGING, MESSAGE_POOL, MAIN_ACCOUNT when nobody is online
    models = [ShopModel(f"shop{i}", random.Random(rng.random())) for i in range(6)]
    extra = ("--fsync", fsync, "--snapshot-every", "150", "--snapshot-interval", "0.5", "--fsync-interval-ms", "20")
    acked_total = resolved_in_flight = 0

    server = Server(data, *extra)
    servers.append(server)
    stubs = Stubs(server.target)
    for i, m in enumerate(models):
        setup = [("put_shop", m.shop_id, shop_pb(m.shop_id, rules[i % 3]))]
        setup += [("put_agent", m.shop_id, agent_pb(m.shop_id, a)) for a in range(3)]
        setup += [("presence", m.shop_id, f"{m.shop_id}:a{a}", 1, T0) for a in range(2)]
        for op in setup:
            assert await on_server(stubs, op) == on_reference(ref, op)

    for round_ in range(rounds):
        in_flight: dict[str, tuple[Any, ...]] = {}
        stop = asyncio.Event()
        counts = [0]

        async def worker(m: ShopModel) -> None:
            while True:
                op = m.next_op(ref)
                try:
                    answer = await on_server(stubs, op)
                except grpc.aio.AioRpcError:
                    in_flight[m.shop_id] = op  # sent or not, answered never: it may or may not be applied
                    return
                assert answer == on_reference(ref, op), (seed, op)  # every acknowledged answer, exactly
                counts[0] += 1
                if stop.is_set():
                    return

        async def killer() -> None:
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            server.kill9()  # mid-traffic: every worker has a call on the wire
            stop.set()

        await asyncio.wait_for(asyncio.gather(killer(), *(worker(m) for m in models)), 60)
        await stubs.channel.close()
        assert counts[0] > 20, "too little traffic reached the server"
        acked_total += counts[0]

        server = Server(data, *extra)
        servers.append(server)
        stubs = Stubs(server.target)
        recovered = server.events("durability.recovered")
        assert recovered and not recovered[0]["fresh"], server.lines
        # Each shop: exactly the acknowledged calls, or those plus the one in flight; never anything else.
        with_in_flight = clone(ref)
        for op in in_flight.values():
            on_reference(with_in_flight, op)
        for m in models:
            got = await view(stubs, m)
            if got == reference_view(ref, m):
                continue
            op = in_flight.get(m.shop_id)
            assert op is not None and got == reference_view(with_in_flight, m), (
                f"seed {seed} round {round_}: shop {m.shop_id} lost an acknowledged call or shows a half-applied one"
            )
            on_reference(ref, op)  # it became durable before the crash
            resolved_in_flight += 1

    # The survivor keeps answering exactly as the never-crashed reference.
    for m in models:
        for _ in range(5):
            op = m.next_op(ref)
            assert await on_server(stubs, op) == on_reference(ref, op), (seed, op)
    await stubs.channel.close()
    assert server.finish() == 0
    assert acked_total > 100
    snaps = list_snapshots(data)
    assert 1 <= len(snaps) <= 2  # snapshots happened and old ones were deleted


# ---------------------------------------------------------------- torn journal tail


async def test_torn_or_corrupt_journal_tail_recovers_to_the_last_good_record(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    model = ShopModel("torn", random.Random(5))
    server = Server(data, "--snapshot-every", "0", "--snapshot-interval", "0")
    servers.append(server)
    stubs = Stubs(server.target)
    await stubs.admin.PutShop(admin_pb2.PutShopRequest(shop=shop_pb("torn", 4)))
    for a in range(3):
        await stubs.admin.PutAgent(admin_pb2.PutAgentRequest(agent=agent_pb("torn", a)))
        await stubs.dispatch.SetPresence(
            dispatch_pb2.SetPresenceRequest(shop_id="torn", agent_id=f"torn:a{a}", presence=1)
        )
    # Dispatches without `at`: the server's clock decides, and replay must use the same instant.
    model.convs = [f"torn-c{i}" for i in range(6)]
    views = []  # the state after every call
    for i, conv in enumerate(model.convs):
        await stubs.dispatch.Dispatch(
            dispatch_pb2.DispatchRequest(shop_id="torn", buyer_id=model.buyers[i % 3], conversation_id=conv)
        )
        views.append(await view(stubs, model))
        time.sleep(0.003)  # distinct server clocks
        await stubs.dispatch.ReportConversation(
            dispatch_pb2.ReportConversationRequest(shop_id="torn", conversation_id=conv, event=2)
        )
        views.append(await view(stubs, model))
    assert views[-1] != views[-2]
    await stubs.channel.close()
    server.kill9()

    seg = list_segments(data)[-1]
    scan = scan_segment(seg)
    last_start = scan.good_end - HEADER.size - len(scan.records[-1][1])
    original = seg.path.read_bytes()
    pristine = tmp_path / "pristine"  # the data dir as kill -9 left it: each case starts from it
    shutil.copytree(data, pristine)

    def reset() -> None:
        shutil.rmtree(data)
        shutil.copytree(pristine, data)

    async def restart_and_view() -> tuple[Any, Server]:
        s = Server(data, "--snapshot-every", "0", "--snapshot-interval", "0")
        servers.append(s)
        st = Stubs(s.target)
        got = await view(st, model)
        await st.channel.close()
        s.kill9()  # leave the journal as recovery left it
        return got, s

    # 1. Nothing damaged: everything acknowledged is back, server-chosen times included.
    got, s = await restart_and_view()
    assert got == views[-1]
    # 2. The last record half written: recovered up to the record before it, and reported.
    reset()
    seg.path.write_bytes(original[: last_start + HEADER.size + 2])
    got, s = await restart_and_view()
    assert got == views[-2]  # without the last call (the reply), with everything before it
    truncated = s.events("journal.truncated")
    assert truncated and truncated[0]["offset"] == last_start and truncated[0]["level"] == "warning"
    assert seg.path.stat().st_size == last_start
    # 3. A flipped bit in the last record's payload: a complete record with a bad CRC is damage,
    # not a torn write (an interrupted append leaves a partial record or zeros): the server
    # refuses, names it and changes nothing; `dispatcher journal repair` is the deliberate cut.
    reset()
    damaged = bytearray(original)
    damaged[last_start + HEADER.size + 4] ^= 0x10
    seg.path.write_bytes(bytes(damaged))
    refused = Server(data, "--snapshot-every", "0", "--snapshot-interval", "0")
    servers.append(refused)
    assert refused.finish(None) == 3
    error = refused.events("durability.recovery_failed")[0]["error"]
    assert f"{seg.path.name} is damaged at offset {last_start} (bad CRC)" in error
    assert seg.path.read_bytes() == bytes(damaged)  # no file changed
    repaired = subprocess.run(
        [sys.executable, "-m", "dispatcher", "journal", "repair", str(data)], capture_output=True, text=True, timeout=60
    )
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout)
    last_seq = scan.records[-1][0]
    assert report["dropped_seqs"] == [f"{last_seq}..{last_seq}"]
    assert (data / f"{seg.path.name}.damaged-at-{last_start}").read_bytes() == bytes(damaged)[last_start:]
    got2, s = await restart_and_view()
    assert got2 == views[-2]
    # 4. Garbage after the last good record (a torn write of zeros): everything is kept.
    reset()
    seg.path.write_bytes(original + b"\x00" * 11)
    got, s = await restart_and_view()
    assert got == views[-1] and s.events("journal.truncated")[0]["dropped_bytes"] == 11


# ---------------------------------------------------------------- clean restart


async def test_clean_restart_answers_like_a_server_that_never_stopped(tmp_path: Path, servers: list[Server]) -> None:
    restarted = Server(tmp_path / "a")
    never = Server(tmp_path / "b")
    servers += [restarted, never]
    rng = random.Random(11)
    models = [ShopModel(f"eq{i}", random.Random(rng.random())) for i in range(3)]
    ref = _fastpath.Engine(0)  # only to choose the calls
    a, b = Stubs(restarted.target), Stubs(never.target)
    ops: list[tuple[Any, ...]] = []
    for i, m in enumerate(models):
        ops.append(("put_shop", m.shop_id, shop_pb(m.shop_id, (4, 3, 1)[i])))
        ops += [("put_agent", m.shop_id, agent_pb(m.shop_id, x)) for x in range(3)]
        ops += [("presence", m.shop_id, f"{m.shop_id}:a{x}", 1, T0) for x in range(3)]
    for op in ops:
        on_reference(ref, op)
        assert await on_server(a, op) == await on_server(b, op)
    for _ in range(120):
        op = rng.choice(models).next_op(ref)
        on_reference(ref, op)
        assert await on_server(a, op) == await on_server(b, op)
    await a.channel.close()
    assert restarted.finish(signal.SIGTERM) == 0
    assert restarted.events("snapshot.written")[-1]["reason"] == "shutdown"

    again = Server(tmp_path / "a")
    servers.append(again)
    recovered = again.events("durability.recovered") if again.target else []
    assert recovered[0]["replayed"] == 0  # the shutdown snapshot holds everything
    a = Stubs(again.target)
    answers = []
    for _ in range(150):
        op = rng.choice(models).next_op(ref)
        on_reference(ref, op)
        got = await on_server(a, op)
        assert got == await on_server(b, op), op
        answers.append(got)
    assert sum(1 for x in answers if x and x[0] != "error") > 50
    for m in models:
        assert await view(a, m) == await view(b, m)
    await a.channel.close()
    await b.channel.close()


def test_refuses_to_start_on_a_data_dir_it_cannot_load(tmp_path: Path, servers: list[Server]) -> None:
    data = tmp_path / "data"
    first = Server(data, "--bootstrap", str(ROOT / "dispatcher" / "demo_bootstrap.json"))
    servers.append(first)
    assert first.target and first.finish() == 0
    assert first.events("bootstrap.loaded")
    # A second start ignores the bootstrap: the recovered state wins.
    second = Server(data, "--bootstrap", str(ROOT / "dispatcher" / "demo_bootstrap.json"))
    servers.append(second)
    assert second.target and second.finish() == 0
    assert second.events("bootstrap.skipped") and not second.events("bootstrap.loaded")
    for snap in list_snapshots(data):
        snap.path.write_bytes(b"DSNAP001 not really")
    broken = Server(data)
    servers.append(broken)
    assert broken.finish(None) == 3
    failed = broken.events("durability.recovery_failed")
    assert failed and "no consistent state" in failed[0]["error"]
    assert not broken.events("server.started")  # it never served
