"""Operate / OperateStream (issue 13): a batch of any mix of operations answers exactly as the
unary calls would, operation by operation, and changes the state exactly as they would."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from server_fixtures import T0, ThreadedServer

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.convert import timestamp

SHOPS = ("s0", "s1", "s2")
RULES = {"s0": 4, "s1": 3, "s2": 1}  # STAGING, MESSAGE_POOL, MAIN_ACCOUNT when nobody is online


class Stubs:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.d = dispatch_pb2_grpc.DispatchStub(self.channel)
        self.a = admin_pb2_grpc.AdminStub(self.channel)


@pytest.fixture
def pair() -> Iterator[tuple[Stubs, Stubs, ThreadedServer]]:
    """Two identical servers: one driven by unary calls, one by Operate batches."""
    unary, batched = ThreadedServer().start(), ThreadedServer().start()
    a, b = Stubs(unary.target), Stubs(batched.target)
    for stubs in (a, b):
        for shop in SHOPS:
            cfg = admin_pb2.ShopConfig(shop_id=shop, main_account=f"{shop}:main", offline_rule=RULES[shop])  # type: ignore[arg-type]
            stubs.a.PutShop(admin_pb2.PutShopRequest(shop=cfg))
            for i in range(3):
                stubs.a.PutAgent(
                    admin_pb2.PutAgentRequest(
                        agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:a{i}", max_capacity=2)
                    )
                )
    try:
        yield a, b, batched
    finally:
        a.channel.close()
        b.channel.close()
        unary.stop()
        batched.stop()


def random_operation(rng: random.Random, step: int, convs: list[tuple[str, str]]) -> dispatch_pb2.Operation:
    """An operation of any kind, valid or not, with an explicit `at` (both servers see the same times)."""
    at = timestamp(T0 + 1000 * step)
    shop = rng.choice(SHOPS + ("nope",)) if rng.random() < 0.05 else rng.choice(SHOPS)
    roll = rng.random()
    if roll < 0.35 or not convs:
        conv = f"c{step}" if rng.random() > 0.05 or not convs else convs[-1][1]  # sometimes a duplicate
        convs.append((shop, conv))
        return dispatch_pb2.Operation(
            dispatch=dispatch_pb2.DispatchRequest(
                shop_id=shop, buyer_id=f"b{rng.randrange(8)}", conversation_id=conv, at=at
            )
        )
    if roll < 0.55:
        presence = rng.choice((1, 1, 2, 3)) if rng.random() > 0.03 else 0  # 0: INVALID_ARGUMENT
        return dispatch_pb2.Operation(
            set_presence=dispatch_pb2.SetPresenceRequest(
                shop_id=shop, agent_id=f"{shop}:a{rng.randrange(4)}", presence=presence, at=at
            )  # type: ignore[arg-type]
        )
    if roll < 0.9:
        cshop, conv = rng.choice(convs)
        event = rng.choice((2, 3, 3, 4))  # BUYER_MESSAGE, AGENT_REPLY, CLOSED
        return dispatch_pb2.Operation(
            report_conversation=dispatch_pb2.ReportConversationRequest(
                shop_id=cshop, conversation_id=conv, event=event, at=at
            )  # type: ignore[arg-type]
        )
    return dispatch_pb2.Operation(
        claim_from_pool=dispatch_pb2.ClaimFromPoolRequest(shop_id="s1", agent_id=f"s1:a{rng.randrange(3)}", at=at)
    )


def unary(stubs: Stubs, op: dispatch_pb2.Operation) -> Any:
    """The operation as its own unary call: (kind, response) or ("error", code number, message)."""
    kind = op.WhichOneof("kind")
    method = {
        "dispatch": stubs.d.Dispatch,
        "set_presence": stubs.d.SetPresence,
        "report_conversation": stubs.d.ReportConversation,
        "claim_from_pool": stubs.d.ClaimFromPool,
    }[kind]
    try:
        return (kind, method(getattr(op, kind), timeout=10))
    except grpc.RpcError as exc:
        return ("error", exc.code().value[0], exc.details())


def batched(result: dispatch_pb2.OperationResult) -> Any:
    if result.HasField("error"):
        return ("error", result.error.code, result.error.message)
    kind = result.WhichOneof("kind")
    return (kind, getattr(result, kind))


def state(stubs: Stubs) -> list[bytes]:
    return [
        stubs.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id=s)).SerializeToString(deterministic=True)
        for s in SHOPS
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_operation_answers_and_changes_state_exactly_as_its_unary_call(
    pair: tuple[Stubs, Stubs, ThreadedServer], seed: int
) -> None:
    a, b, _ = pair
    rng = random.Random(seed)
    convs: list[tuple[str, str]] = []
    step = 0
    kinds: set[str] = set()
    errors = 0
    streamed = rng.random() < 0.5
    requests = []
    for _ in range(25):
        ops = []
        for _ in range(rng.randint(1, 40)):
            step += 1
            ops.append(random_operation(rng, step, convs))
        requests.append(ops)
    expected_batches = []
    for ops in requests:
        expected_batches.append([unary(a, op) for op in ops])
    if streamed:
        answers = list(
            b.d.OperateStream(iter(dispatch_pb2.OperateRequest(operations=ops) for ops in requests), timeout=60)
        )
    else:
        answers = [b.d.Operate(dispatch_pb2.OperateRequest(operations=ops), timeout=60) for ops in requests]
    assert len(answers) == len(requests)
    for ops, expected, answer in zip(requests, expected_batches, answers, strict=True):
        got = [batched(r) for r in answer.results]
        assert len(got) == len(ops)
        for op, want, have in zip(ops, expected, got, strict=True):
            assert have == want, op
            kinds.add(want[0])
            errors += want[0] == "error"
    assert state(a) == state(b)
    assert {"dispatch", "set_presence", "report_conversation", "error"} <= kinds and errors > 3


def test_a_batch_with_an_operation_of_no_kind_or_too_many_is_refused_whole(
    pair: tuple[Stubs, Stubs, ThreadedServer],
) -> None:
    _, b, _ = pair
    before = state(b)
    ok = dispatch_pb2.Operation(
        dispatch=dispatch_pb2.DispatchRequest(shop_id="s0", buyer_id="b", conversation_id="x", at=timestamp(T0))
    )
    with pytest.raises(grpc.RpcError) as info:
        b.d.Operate(dispatch_pb2.OperateRequest(operations=[ok, dispatch_pb2.Operation()]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "operations[1] has no kind" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        b.d.Operate(dispatch_pb2.OperateRequest(operations=[ok] * 4097))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4096" in info.value.details()
    assert state(b) == before


def test_operations_beyond_the_in_flight_bound_answer_resource_exhausted_unapplied(
    pair: tuple[Stubs, Stubs, ThreadedServer],
) -> None:
    _, b, server = pair
    server.server._core.max_operations_in_flight = 3
    ops = [
        dispatch_pb2.Operation(
            dispatch=dispatch_pb2.DispatchRequest(shop_id="s0", buyer_id="b", conversation_id=f"f{i}", at=timestamp(T0))
        )
        for i in range(5)
    ]
    answer = b.d.Operate(dispatch_pb2.OperateRequest(operations=ops))
    codes = [r.error.code if r.HasField("error") else 0 for r in answer.results]
    assert codes == [0, 0, 0, 8, 8]  # RESOURCE_EXHAUSTED for the excess
    assert "retry" in answer.results[3].error.message
    waiting = {c.conversation_id for c in b.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s0")).staging}
    assert {"f0", "f1", "f2"} <= waiting and not waiting & {"f3", "f4"}
    assert server.server._core.operations_in_flight == 0  # released once answered
    again = b.d.Operate(dispatch_pb2.OperateRequest(operations=ops[3:]))
    assert not any(r.HasField("error") for r in again.results)


def test_hand_outs_caused_by_operations_reach_the_answer_and_the_watchers(
    pair: tuple[Stubs, Stubs, ThreadedServer],
) -> None:
    _, b, _ = pair
    watch = b.d.WatchAssignments(dispatch_pb2.WatchAssignmentsRequest(shop_ids=["s0"]), timeout=30)
    assert ("dispatch-watch", "subscribed") in tuple(watch.initial_metadata())
    staged = [
        dispatch_pb2.Operation(
            dispatch=dispatch_pb2.DispatchRequest(
                shop_id="s0", buyer_id=f"b{i}", conversation_id=f"w{i}", at=timestamp(T0 + i)
            )
        )
        for i in range(3)
    ]
    online = dispatch_pb2.Operation(
        set_presence=dispatch_pb2.SetPresenceRequest(shop_id="s0", agent_id="s0:a0", presence=1, at=timestamp(T0 + 10))
    )  # type: ignore[arg-type]
    answer = b.d.Operate(dispatch_pb2.OperateRequest(operations=[*staged, online]))
    handed = [a.conversation_id for a in answer.results[3].set_presence.assignments]
    assert sorted(handed) == ["w0", "w1"]  # capacity 2: the oldest two staged conversations
    seen = [next(watch).conversation_id for _ in handed]
    assert seen == handed
    watch.cancel()


# ------------------------------------------------------------------ the engine reads the bytes


def _engine(cls: type) -> Any:
    import _fastpath

    e = cls(5)
    for shop in SHOPS:
        e.put_shop(_fastpath.ShopConfig(shop, f"{shop}:main", offline_rule=RULES[shop]))
        for i in range(3):
            e.put_agent(_fastpath.AgentConfig(shop, f"{shop}:a{i}", max_capacity=2))
    return e


def _wire_engines() -> list[type]:
    import _fastpath

    engines: list[type] = [_fastpath.ReferenceEngine]
    if _fastpath.CompiledEngine is not None and hasattr(_fastpath.CompiledEngine, "operate_wire"):
        engines.append(_fastpath.CompiledEngine)
    return engines


@pytest.mark.parametrize("seed", range(8))
def test_operate_wire_writes_the_bytes_of_the_object_path(seed: int) -> None:
    """Every engine's ``operate_wire`` answers byte for byte what the object path
    (dispatcher/operations.py, protobuf messages) answers, and leaves the same state and hand-outs;
    on bytes it declines (None) it changes nothing."""
    import _fastpath
    from dispatcher.convert import assignment_to_pb
    from dispatcher.operations import OperationContext, apply_operations

    rng = random.Random(seed)
    for cls in _wire_engines():
        wire, objects = _engine(cls), _engine(_fastpath.ReferenceEngine)
        convs: list[tuple[str, str]] = []
        step = 0
        for _ in range(30):
            ops = []
            for _ in range(rng.randint(1, 30)):
                step += 1
                ops.append(random_operation(rng, step, convs))
            raw = dispatch_pb2.OperateRequest(operations=ops).SerializeToString()
            now = T0 + 1000 * step
            if rng.random() < 0.2:  # mutated bytes: declined and unchanged, or read as protobuf reads them
                mutated = bytearray(raw)
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
                before = wire.export_state()
                try:
                    answer = wire.operate_wire(bytes(mutated), now, 4096)
                except _fastpath.DispatchError:
                    answer = None
                if answer is None:
                    assert wire.export_state() == before
                    continue
                wire = _engine(cls)  # read: compare the rest from a fresh pair
                objects = _engine(_fastpath.ReferenceEngine)
                continue
            engine = objects
            ctx = OperationContext(engine, lambda: [assignment_to_pb(x) for x in engine.drain_outbox()], None)
            expected = apply_operations(ctx, ops, now).SerializeToString()
            answer = wire.operate_wire(raw, now, 4096)
            assert answer is not None
            out, count, failed = answer
            assert out == expected, cls
            assert count == len(ops)
            assert failed == sum(r.HasField("error") for r in dispatch_pb2.OperateResponse.FromString(out).results)
            wire.drain_outbox()
            assert wire.export_state() == objects.export_state()


# ------------------------------------------------------------------ compiled vs reference, byte for byte

DIFF_SHOPS = ("s0", "s1", "s2", "店")
DIFF_RULES = {"s0": 4, "s1": 3, "s2": 1, "店": 2}  # STAGING, MESSAGE_POOL, MAIN_ACCOUNT, PROXY_ACCOUNT
ODD_IDS = ("", "a\x01b", "x" * 129, "nope", "买家😀")


def _diff_engine(cls: type) -> Any:
    """Four shops (every offline rule), groups bound to a source and an order state, a robot, a proxy."""
    import _fastpath

    e = cls(11)
    for n, shop in enumerate(DIFF_SHOPS):
        if shop == "店":
            e.put_shop(_fastpath.ShopConfig(shop, f"{shop}:main"))
            e.put_agent(_fastpath.AgentConfig(shop, f"{shop}:proxy", role=3, max_capacity=5))
            e.put_shop(_fastpath.ShopConfig(shop, f"{shop}:main", offline_rule=2, proxy_account=f"{shop}:proxy"))
        else:
            e.put_shop(_fastpath.ShopConfig(shop, f"{shop}:main", offline_rule=DIFF_RULES[shop], strategy=1 + n))
        for i in range(3):
            e.put_agent(_fastpath.AgentConfig(shop, f"{shop}:a{i}", max_capacity=2))
        e.put_agent(_fastpath.AgentConfig(shop, f"{shop}:bot", role=4, max_capacity=1))
        e.put_agent(_fastpath.AgentConfig(shop, f"{shop}:gone", max_capacity=1))
        e.delete_agent(shop, f"{shop}:gone")
        for i in range(3, 20 if shop == "s2" else 3):  # a shop whose agent index grew
            e.put_agent(_fastpath.AgentConfig(shop, f"{shop}:a{i}", max_capacity=1))
        e.put_group(
            _fastpath.GroupConfig(shop, "g", members=(f"{shop}:a0", f"{shop}:a1"), order_states=(1,), sources=("app",))
        )
    return e


def _diff_id(rng: random.Random, usual: str) -> str:
    return rng.choice(ODD_IDS) if rng.random() < 0.04 else usual


def _diff_at(rng: random.Random, step: int) -> timestamp_pb2.Timestamp | None:
    roll = rng.random()
    if roll < 0.1:
        return None  # the batch's now
    if roll < 0.13:  # invalid or extreme: refused by the operation, or beyond a bound
        seconds, nanos = rng.choice(
            [(-5, 0), (253_402_300_800, 0), (T0 // 1000, -1), (T0 // 1000, 10**9), (T0 // 1000 + 10**6, 0)]
        )
        return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    ms = T0 + 1000 * step + rng.randrange(-3000, 1000)
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000 + rng.choice([0, 0, 7]))


def _diff_operation(rng: random.Random, step: int, convs: list[tuple[str, str, str]]) -> dispatch_pb2.Operation:
    """Any operation, with every event kind, odd ids, bad enums, traces, point-to-point, buyer and agent mismatches."""
    shop = _diff_id(rng, rng.choice(DIFF_SHOPS))
    name = rng.choice(("a0", "a1", "a2", "a0", "a1", "a2", "bot", "main", "zz", "gone", f"a{rng.randrange(20)}"))
    agent = _diff_id(rng, f"{shop}:{name}")
    at = _diff_at(rng, step)
    roll = rng.random()
    if roll < 0.3 or not convs:
        conv = f"c{step}" if rng.random() > 0.05 or not convs else convs[-1][1]
        buyer = _diff_id(rng, f"b{rng.randrange(6)}")
        r = dispatch_pb2.DispatchRequest(
            shop_id=shop, buyer_id=buyer, conversation_id=_diff_id(rng, conv),
            type=rng.choice((0, 1, 1, 1, 1, 1, 1, 1, 2, 9)), source=rng.choice(("", "", "", "app", "app", "\x7f")),
            order_state=rng.choice((0, 0, 0, 1, 1, 2, 7, -1)), to_account=rng.choice(("", f"{shop}:a0")),
            trace=rng.random() < 0.05,
        )  # fmt: skip
        if at is not None:
            r.at.CopyFrom(at)
        convs.append((shop, conv, buyer))
        return dispatch_pb2.Operation(dispatch=r)
    if roll < 0.5:
        p = dispatch_pb2.SetPresenceRequest(
            shop_id=shop,
            agent_id=agent,
            presence=rng.choice((1, 1, 1, 2, 3, 3, 0, 4)),
            client=rng.choice((0, 0, 0, 1, 2, 2, 3)),  # type: ignore[arg-type]
        )
        if at is not None:
            p.at.CopyFrom(at)
        return dispatch_pb2.Operation(set_presence=p)
    if roll < 0.92:
        cshop, conv, buyer = rng.choice(convs[-12:] if rng.random() < 0.8 else convs)
        event = rng.choice((1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5, 0, 6))
        ev = dispatch_pb2.ReportConversationRequest(
            shop_id=_diff_id(rng, cshop), conversation_id=_diff_id(rng, conv if event != 5 else f"x{step}"),
            buyer_id=rng.choice(("", "", "", buyer, buyer, buyer, "someone", "\x02")) if event != 5 else buyer, event=event,  # type: ignore[arg-type]
            agent_id=rng.choice(("", "", "", agent)),
            to_agent_id=rng.choice(("", f"{cshop}:a{rng.randrange(3)}")) if event == 4 else rng.choice(("",) * 9 + ("x",)),
            to_group_id=rng.choice(("", "g", "h")) if event == 4 else "",
        )  # fmt: skip
        if event == 5:
            ev.agent_id = agent
        if at is not None:
            ev.at.CopyFrom(at)
        return dispatch_pb2.Operation(report_conversation=ev)
    c = dispatch_pb2.ClaimFromPoolRequest(
        shop_id=rng.choice(("s1", "s1", shop)), agent_id=f"s1:a{rng.randrange(4)}" if rng.random() < 0.9 else agent,
        conversation_id=rng.choice(("", "", rng.choice(convs)[1], "nope")),
    )  # fmt: skip
    if at is not None:
        c.at.CopyFrom(at)
    return dispatch_pb2.Operation(claim_from_pool=c)


def _odd_bytes(rng: random.Random, raw: bytes) -> bytes:
    """Bytes protobuf may or may not read: flipped, cut, inserted, appended, a second kind, an unknown field."""
    data = bytearray(raw)
    roll = rng.randrange(6)
    if roll == 0 and data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif roll == 1 and data:
        del data[rng.randrange(len(data)) :]
    elif roll == 2:
        data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
    elif roll == 3:  # an operation with two kinds, or none, or an unknown field
        extra = rng.choice(
            [b"\x0a\x00\x12\x00", b"", b"\x2a\x00", b"\x0a\x00\x0a\x00", b"\x12\x02\x18\x01", b"\x1a\x02\x20\x02"]
        )
        data += b"\x0a" + bytes([len(extra)]) + extra
    elif roll == 4:  # a repeated string (last one wins, as protobuf) or a repeated `at` (declined)
        kind, body = rng.choice([
            (0x12, b"\x0a\x02s0\x0a\x02s1\x12\x04s1:a0\x18\x01"),
            (0x12, b"\x0a\x02s0\x12\x04s0:a0\x18\x01\x2a\x00\x2a\x00"),
            (0x1A, b"\x0a\x02s1\x12\x02c1\x20\x01\x42\x02\x08\x01\x42\x00"),
            (0x1A, b"\x0a\x02s1\x12\x04s1:a0\x20\x05\x20\x01"),
            (0x22, b"\x0a\x02s1\x12\x04s1:a0\x1a\x00"),
        ])  # fmt: skip
        data += b"\x0a" + bytes([len(body) + 2, kind, len(body)]) + body
    else:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    return bytes(data)


def _outcome(engine: Any, raw: bytes, now: int, max_items: int, max_at: int | None) -> Any:
    import _fastpath

    try:
        return engine.operate_wire(raw, now, max_items, max_at)
    except _fastpath.DispatchError as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("seed", range(12))
def test_compiled_operate_wire_is_the_reference_byte_for_byte(seed: int) -> None:
    """Random and mutated OperateRequest bytes through both engines: the same answer (or both
    None, or the same error), the same state and hand-outs, the same counters."""
    import _fastpath

    if _fastpath.CompiledEngine is None:
        pytest.fail(f"the compiled engine is not built: {_fastpath.COMPILED_IMPORT_ERROR}")
    rng = random.Random(seed)
    ref, comp = _diff_engine(_fastpath.ReferenceEngine), _diff_engine(_fastpath.CompiledEngine)
    convs: list[tuple[str, str, str]] = []
    step = 0
    read = 0
    for _ in range(60):
        ops = []
        for _ in range(rng.randint(0, 40)):
            step += 1
            ops.append(_diff_operation(rng, step, convs))
        raw = dispatch_pb2.OperateRequest(operations=ops).SerializeToString()
        if rng.random() < 0.25:
            raw = _odd_bytes(rng, raw)
        now = T0 + 1000 * step if rng.random() < 0.97 else rng.choice((-1, 0, 2**62))
        max_items = 4096 if rng.random() < 0.95 else rng.randrange(len(ops) + 1)
        max_at = None if rng.random() < 0.5 else now + rng.choice((0, 500, 10**9))
        want = _outcome(ref, raw, now, max_items, max_at)
        got = _outcome(comp, raw, now, max_items, max_at)
        assert got == want, (seed, raw)
        read += isinstance(want, tuple) and isinstance(want[0], bytes)
        assert comp.drain_outbox() == ref.drain_outbox()
        assert comp.export_state() == ref.export_state()
        assert comp.operation_counts() == ref.operation_counts()
        assert comp.decision_counts() == ref.decision_counts()
    assert read > 30
    counts = comp.operation_counts()
    assert counts[0] == 0 and all(counts[1:]), counts


def test_ordinary_batches_answer_on_both_engines_with_the_lifecycle_and_its_hand_outs() -> None:
    """The C fast paths themselves (dispatch, presence, message, reply, close, each with hand-outs in its answer):
    a lifecycle whose closes let queued conversations through, compared byte for byte."""
    import _fastpath

    answers = []
    for cls in (_fastpath.ReferenceEngine, _fastpath.CompiledEngine):
        e = cls(3)
        e.put_shop(_fastpath.ShopConfig("s", "s:main", offline_rule=4))
        e.put_agent(_fastpath.AgentConfig("s", "s:a", max_capacity=1))
        ops = [
            dispatch_pb2.Operation(
                dispatch=dispatch_pb2.DispatchRequest(shop_id="s", buyer_id=f"b{i}", conversation_id=f"c{i}")
            )
            for i in range(3)
        ]
        ops.append(
            dispatch_pb2.Operation(
                set_presence=dispatch_pb2.SetPresenceRequest(
                    shop_id="s", agent_id="s:a", presence=1, at=timestamp(T0 + 5)
                )
            )
        )  # type: ignore[arg-type]
        for event in (1, 2, 1, 2, 3):  # message, reply, message, reply, close: the close hands out c1
            ops.append(
                dispatch_pb2.Operation(
                    report_conversation=dispatch_pb2.ReportConversationRequest(
                        shop_id="s", conversation_id="c0", event=event, agent_id="s:a" if event == 2 else ""
                    )
                )
            )  # type: ignore[arg-type]
        raw = dispatch_pb2.OperateRequest(operations=ops).SerializeToString()
        out, n, failed = e.operate_wire(raw, T0 + 1234, 64)
        answer = dispatch_pb2.OperateResponse.FromString(out)
        assert (n, failed) == (len(ops), 0)
        assert [a.conversation_id for a in answer.results[3].set_presence.assignments] == ["c0"]
        close = answer.results[-1].report_conversation.assignments
        assert [(a.conversation_id, a.agent_id, a.reason) for a in close] == [("c1", "s:a", 5)]
        assert close[0].at.seconds == (T0 + 1234) // 1000 and close[0].at.nanos == 234_000_000
        answers.append((out, e.drain_outbox(), e.export_state(), e.operation_counts()))
    assert answers[0] == answers[1]
    assert answers[0][3] == [0, 3, 1, 5, 0]


def test_operations_are_counted_by_kind_on_both_paths_and_exported() -> None:
    """The wire path counts in the engine, the object path in the servicer: the same totals."""
    import _fastpath
    from dispatcher.server import DispatchServer

    for engine in (_fastpath.ReferenceEngine(0), _fastpath.CompiledEngine(0)):
        running = ThreadedServer(engine, metrics_port=0).start()
        try:
            stubs = Stubs(running.target)
            stubs.a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="k", main_account="k:main")))
            ops = [
                dispatch_pb2.Operation(
                    dispatch=dispatch_pb2.DispatchRequest(
                        shop_id="k", buyer_id="b", conversation_id=f"k{i}", at=timestamp(T0)
                    )
                )
                for i in range(3)
            ] + [
                dispatch_pb2.Operation(
                    report_conversation=dispatch_pb2.ReportConversationRequest(
                        shop_id="k", conversation_id="k0", event=2, at=timestamp(T0)
                    )
                )  # type: ignore[arg-type]
                for _ in range(2)
            ]
            stubs.d.Operate(dispatch_pb2.OperateRequest(operations=ops))
            server: DispatchServer = running.server
            counts = server.counters.operations
            assert (counts["dispatch"], counts["report_conversation"]) == (3, 2), (type(engine).__name__, counts)
            assert server.counters.events == 2
            import urllib.request

            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{server.ecosystem.metrics_port}/metrics", timeout=10)
                .read()
                .decode()
            )
            assert 'dispatch_operations_total{kind="dispatch"} 3.0' in text
            assert 'dispatch_operations_total{kind="report_conversation"} 2.0' in text
            stubs.channel.close()
        finally:
            running.stop()


def test_a_graceful_stop_ends_an_idle_operation_stream_at_once() -> None:
    import threading
    import time

    running = ThreadedServer().start()
    stubs = Stubs(running.target)
    gate = threading.Event()

    def requests() -> Any:
        yield dispatch_pb2.OperateRequest(
            operations=[
                dispatch_pb2.Operation(
                    set_presence=dispatch_pb2.SetPresenceRequest(shop_id="x", agent_id="x:a", presence=1)
                )
            ]
        )
        gate.wait(30)  # then idle: the next batch never comes

    stream = stubs.d.OperateStream(requests(), timeout=30)
    first = next(stream)
    assert first.results[0].error.code == 5  # NOT_FOUND: the shop does not exist; answered, stream open
    started = time.monotonic()
    running.stop(grace=10.0)
    took = time.monotonic() - started
    assert took < 3.0, f"stop waited {took:.1f} s for an idle stream"
    assert list(stream) == []  # ended with OK, nothing more
    gate.set()
    stubs.channel.close()


def test_the_operate_benchmark_runs_at_a_tiny_size() -> None:
    """bench/operate_bench.py (the in-process cost of operate_wire on the lifecycle mix) keeps working."""
    from bench import operate_bench

    result = operate_bench.main(["--shops", "3", "--agents", "2", "--conversations", "40", "--reference-conversations", "16", "--per-batch", "8", "--presence", "5"])  # fmt: skip
    for path in ("compiled", "objects_on_compiled", "reference"):
        assert result[path]["failed"] == 0 and result[path]["ns_per_op"] > 0, path
    assert set(result["compiled_by_kind"]) == {"dispatch", "events", "presence"}
