"""Operate / OperateStream (issue 13): a batch of any mix of operations answers exactly as the
unary calls would, operation by operation, and changes the state exactly as they would."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.convert import timestamp
from server_fixtures import T0, ThreadedServer

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
                stubs.a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:a{i}", max_capacity=2)))
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
            dispatch=dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id=f"b{rng.randrange(8)}", conversation_id=conv, at=at)
        )
    if roll < 0.55:
        presence = rng.choice((1, 1, 2, 3)) if rng.random() > 0.03 else 0  # 0: INVALID_ARGUMENT
        return dispatch_pb2.Operation(
            set_presence=dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=f"{shop}:a{rng.randrange(4)}", presence=presence, at=at)  # type: ignore[arg-type]
        )
    if roll < 0.9:
        cshop, conv = rng.choice(convs)
        event = rng.choice((2, 3, 3, 4))  # BUYER_MESSAGE, AGENT_REPLY, CLOSED
        return dispatch_pb2.Operation(
            report_conversation=dispatch_pb2.ReportConversationRequest(shop_id=cshop, conversation_id=conv, event=event, at=at)  # type: ignore[arg-type]
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
    return [stubs.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id=s)).SerializeToString(deterministic=True) for s in SHOPS]


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
        answers = list(b.d.OperateStream(iter(dispatch_pb2.OperateRequest(operations=ops) for ops in requests), timeout=60))
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


def test_a_batch_with_an_operation_of_no_kind_or_too_many_is_refused_whole(pair: tuple[Stubs, Stubs, ThreadedServer]) -> None:
    _, b, _ = pair
    before = state(b)
    ok = dispatch_pb2.Operation(dispatch=dispatch_pb2.DispatchRequest(shop_id="s0", buyer_id="b", conversation_id="x", at=timestamp(T0)))
    with pytest.raises(grpc.RpcError) as info:
        b.d.Operate(dispatch_pb2.OperateRequest(operations=[ok, dispatch_pb2.Operation()]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "operations[1] has no kind" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        b.d.Operate(dispatch_pb2.OperateRequest(operations=[ok] * 4097))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4096" in info.value.details()
    assert state(b) == before


def test_operations_beyond_the_in_flight_bound_answer_resource_exhausted_unapplied(pair: tuple[Stubs, Stubs, ThreadedServer]) -> None:
    _, b, server = pair
    server.server._core.max_operations_in_flight = 3
    ops = [
        dispatch_pb2.Operation(dispatch=dispatch_pb2.DispatchRequest(shop_id="s0", buyer_id="b", conversation_id=f"f{i}", at=timestamp(T0)))
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


def test_hand_outs_caused_by_operations_reach_the_answer_and_the_watchers(pair: tuple[Stubs, Stubs, ThreadedServer]) -> None:
    _, b, _ = pair
    watch = b.d.WatchAssignments(dispatch_pb2.WatchAssignmentsRequest(shop_ids=["s0"]), timeout=30)
    assert ("dispatch-watch", "subscribed") in tuple(watch.initial_metadata())
    staged = [
        dispatch_pb2.Operation(dispatch=dispatch_pb2.DispatchRequest(shop_id="s0", buyer_id=f"b{i}", conversation_id=f"w{i}", at=timestamp(T0 + i)))
        for i in range(3)
    ]
    online = dispatch_pb2.Operation(set_presence=dispatch_pb2.SetPresenceRequest(shop_id="s0", agent_id="s0:a0", presence=1, at=timestamp(T0 + 10)))  # type: ignore[arg-type]
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
    from dispatcher.convert import assignment_to_pb
    from dispatcher.operations import OperationContext, apply_operations

    import _fastpath

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
