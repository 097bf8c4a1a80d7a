"""The clients' batching (issue 13): the async client's automatic batches on one
OperateStream, the blocking client's pipeline(), and operate(), against real servers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from server_fixtures import T0, ThreadedServer

from dispatch_client import AsyncDispatchClient, DispatchClient, OperationError, dispatch_request, pb
from dispatch_client._batching import encode_operation
from dispatcher._gen.dispatch.v1 import dispatch_pb2
from dispatcher.server import DispatchServicer

ONLINE = pb.Presence.PRESENCE_ONLINE
OFFLINE = pb.Presence.PRESENCE_OFFLINE
EV = pb.ConversationEvent
R = pb.Reason
Code = grpc.StatusCode


@pytest.fixture
async def batching(server: ThreadedServer) -> AsyncIterator[AsyncDispatchClient]:
    async with AsyncDispatchClient(server.target, timeout=30) as c:
        assert c.auto_batch  # the default
        yield c


async def make_shop(c: AsyncDispatchClient | DispatchClient, shop: str = "s", capacity: int = 1, **fields: Any) -> None:
    """Shop ``shop`` with agents <shop>:a and <shop>:b of ``capacity`` each (offline)."""
    calls: list[Any] = [c.put_shop(shop_id=shop, main_account=shop, **fields)]
    calls += [c.put_agent(shop_id=shop, agent_id=f"{shop}:{agent}", max_capacity=capacity) for agent in ("a", "b")]
    for call in calls:
        if asyncio.iscoroutine(call):
            await call


def outcome(answer: Any) -> tuple[Any, ...]:
    """A call's response, or its error as (code, details): what two runs must agree on."""
    if isinstance(answer, grpc.RpcError):
        return ("error", answer.code(), answer.details())
    assert not isinstance(answer, BaseException), answer
    return ("ok", type(answer).__name__, answer.SerializeToString(deterministic=True))


# A mixed script over two shops, with an error of every kind the brief names. Every call
# has an explicit `at`, so two servers given the same script answer byte for byte alike.
SCRIPT: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("set_presence", ("s", "s:a", ONLINE), {"at": T0}),
    ("set_presence", ("s", "s:b", ONLINE), {"at": T0}),
    ("dispatch", ("s", "b1", "c1"), {"at": T0 + 1}),
    ("dispatch", ("s", "b2", "c2"), {"at": T0 + 2}),
    ("dispatch", ("s", "b3", "c3"), {"at": T0 + 3}),  # both agents full: queued
    ("dispatch", ("nope", "b", "c"), {"at": T0 + 3}),  # NOT_FOUND
    ("dispatch", ("s", "b7", "c1"), {"at": T0 + 4}),  # another buyer on an open id: ALREADY_EXISTS
    ("dispatch", ("s", "b9", ""), {"at": T0 + 4}),  # INVALID_ARGUMENT
    ("report_conversation", ("s", "c1", EV.CONVERSATION_EVENT_BUYER_MESSAGE), {"at": T0 + 5}),
    ("report_conversation", ("s", "c1", EV.CONVERSATION_EVENT_AGENT_REPLY), {"at": T0 + 6}),
    ("report_conversation", ("s", "c1", EV.CONVERSATION_EVENT_CLOSED), {"at": T0 + 7}),  # hands c3 out
    ("dispatch", ("s", "b1", "c1"), {"at": T0 + 8, "trace": True}),  # the id is free again
    ("report_conversation", ("s", "ghost", EV.CONVERSATION_EVENT_CLOSED), {"at": T0 + 8}),  # NOT_FOUND
    ("set_presence", ("s", "s:zz", ONLINE), {"at": T0 + 9}),  # NOT_FOUND
    ("set_presence", ("s", "s:a", pb.Presence.PRESENCE_UNSPECIFIED), {"at": T0 + 9}),  # INVALID_ARGUMENT
    ("claim_from_pool", ("s", "s:a"), {"at": T0 + 10}),  # FAILED_PRECONDITION: empty pool
    ("report_conversation", ("s", "c2", EV.CONVERSATION_EVENT_TRANSFERRED), {"to_agent_id": "s:a", "at": T0 + 11}),
    ("set_presence", ("s", "s:b", OFFLINE), {"at": T0 + 12}),
    ("dispatch", ("p", "pb1", "p1"), {"at": T0 + 13}),  # nobody online: message pool
    ("dispatch", ("p", "pb2", "p2"), {"at": T0 + 14}),
    ("claim_from_pool", ("p", "p:a", "p2"), {"at": T0 + 15}),
    ("claim_from_pool", ("p", "p:b"), {"at": T0 + 16}),
    ("claim_from_pool", ("p", "p:b"), {"at": T0 + 17}),  # FAILED_PRECONDITION: empty again
]


async def setup_script_shops(c: AsyncDispatchClient) -> None:
    await make_shop(c, "s")
    await make_shop(c, "p", capacity=5, offline_rule=pb.OfflineRule.OFFLINE_RULE_MESSAGE_POOL)


async def run_script_batched(c: AsyncDispatchClient) -> list[Any]:
    return list(await asyncio.gather(*(getattr(c, m)(*a, **k) for m, a, k in SCRIPT), return_exceptions=True))


async def run_script_unary(c: AsyncDispatchClient) -> list[Any]:
    out: list[Any] = []
    for method, args, kwargs in SCRIPT:
        try:
            out.append(await getattr(c, method)(*args, **kwargs))
        except grpc.RpcError as exc:
            out.append(exc)
    return out


# ------------------------------------------------------------------ one batch per loop iteration


async def test_calls_of_one_loop_iteration_go_as_one_batch(batching: AsyncDispatchClient) -> None:
    await make_shop(batching, capacity=1000)
    await batching.set_presence("s", "s:a", ONLINE, at=T0)
    stats = batching.batch_stats
    assert stats is not None
    before = stats.batches
    answers = await asyncio.gather(*(batching.dispatch("s", f"b{i}", f"c{i}", at=T0 + 1) for i in range(500)))
    assert stats.batches == before + 1 and stats.largest_batch == 500
    assert [(a.conversation_id, a.agent_id, a.reason) for a in answers] == [
        (f"c{i}", "s:a", R.REASON_GROUP) for i in range(500)
    ]
    assert (await batching.get_shop_state("s")).live_conversations == 500
    # Mixed kinds in one iteration: one batch too, each call its own type of answer.
    mixed = await asyncio.gather(
        batching.report_conversation("s", "c0", EV.CONVERSATION_EVENT_BUYER_MESSAGE, at=T0 + 2),
        batching.set_presence("s", "s:b", ONLINE, at=T0 + 2),
        batching.dispatch("s", "x", "cx", at=T0 + 2),
        batching.claim_from_pool("s", "s:a", at=T0 + 2),
        return_exceptions=True,
    )
    assert stats.batches == before + 2
    assert isinstance(mixed[0], pb.ReportConversationResponse) and isinstance(mixed[1], pb.SetPresenceResponse)
    assert isinstance(mixed[2], pb.DispatchResponse)
    assert isinstance(mixed[3], OperationError) and mixed[3].code() == Code.FAILED_PRECONDITION
    assert stats.streams == 1  # every batch on the one shared stream


async def test_max_batch_size_and_batches_in_flight(server: ThreadedServer) -> None:
    async with AsyncDispatchClient(server.target, max_batch_size=100, max_batches_in_flight=2) as c:
        await make_shop(c, capacity=10_000)
        await c.set_presence("s", "s:a", ONLINE, at=T0)
        stats = c.batch_stats
        assert stats is not None
        before = stats.batches
        answers = await asyncio.gather(*(c.dispatch("s", f"b{i}", f"c{i}", at=T0 + 1) for i in range(1050)))
        assert [a.conversation_id for a in answers] == [f"c{i}" for i in range(1050)]
        assert stats.batches - before == 11 and stats.largest_batch == 100
        assert stats.most_in_flight == 2  # back-pressure: never more on the wire
        assert (await c.get_shop_state("s")).live_conversations == 1050
    with pytest.raises(ValueError):
        AsyncDispatchClient(server.target, max_batch_size=4097)


# ------------------------------------------------------------------ same answers as unary


async def test_every_call_gets_the_answer_unary_gives(batching: AsyncDispatchClient) -> None:
    twin = ThreadedServer().start()
    try:
        async with AsyncDispatchClient(twin.target, auto_batch=False) as unary:
            assert not unary.auto_batch and unary.batch_stats is None
            await setup_script_shops(batching)
            await setup_script_shops(unary)
            stats = batching.batch_stats
            assert stats is not None
            before = stats.batches
            batched = await run_script_batched(batching)
            assert stats.batches == before + 1  # the whole script in one batch
            expected = await run_script_unary(unary)
            assert [outcome(a) for a in batched] == [outcome(e) for e in expected]
            for shop in ("s", "p"):
                assert await batching.get_shop_state(shop) == await unary.get_shop_state(shop)
    finally:
        twin.stop()
    codes = [a.code() if isinstance(a, grpc.RpcError) else None for a in batched]
    for code in (Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION):
        assert code in codes
    # The errors are grpc.RpcError / grpc.aio.AioRpcError like the unary calls' (except clauses keep working).
    error = batched[5]
    assert isinstance(error, grpc.aio.AioRpcError) and isinstance(error, OperationError)
    assert error.code() == Code.NOT_FOUND and "shop" in (error.details() or "")
    # ... and the calls around each error were applied: c1 served again after its close.
    assert isinstance(batched[11], pb.DispatchResponse) and batched[11].trace


async def test_errors_raise_like_unary_and_spare_the_rest(batching: AsyncDispatchClient) -> None:
    await make_shop(batching, capacity=10)
    await batching.set_presence("s", "s:a", ONLINE, at=T0)
    calls = [
        batching.dispatch("s", "b1", "c1", at=T0),
        batching.dispatch("ghost-shop", "b", "c", at=T0),
        batching.dispatch("s", "b2", "c1", at=T0),  # another buyer on an open id
        batching.dispatch("s", "", "c2", at=T0),
        batching.dispatch("s", "b3", "c3", at=T0),
    ]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(answers[0], pb.DispatchResponse) and isinstance(answers[4], pb.DispatchResponse)
    assert [a.code() for a in answers[1:4] if isinstance(a, grpc.RpcError)] == [
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.INVALID_ARGUMENT,
    ]
    with pytest.raises(grpc.RpcError) as info:  # awaited alone: raised, as the unary call does
        await batching.dispatch("s", "b2", "c1", at=T0)
    assert info.value.code() == Code.ALREADY_EXISTS
    assert (await batching.get_shop_state("s")).live_conversations == 2


async def test_calls_for_one_shop_keep_their_order(batching: AsyncDispatchClient) -> None:
    await make_shop(batching, capacity=10)
    await batching.set_presence("s", "s:a", ONLINE, at=T0)
    answers = await asyncio.gather(
        batching.dispatch("s", "b1", "c1", at=T0 + 1),
        batching.report_conversation("s", "c1", EV.CONVERSATION_EVENT_BUYER_MESSAGE, at=T0 + 2),
        batching.report_conversation("s", "c1", EV.CONVERSATION_EVENT_CLOSED, at=T0 + 3),
        batching.dispatch("s", "b1", "c1", at=T0 + 4),  # the same id again, after its close
        batching.dispatch("s", "b9", "c1", at=T0 + 5),  # still open, another buyer: ALREADY_EXISTS
        batching.set_presence("s", "s:a", OFFLINE, at=T0 + 6),
        batching.dispatch("s", "b2", "c2", at=T0 + 7),  # nobody online now
        return_exceptions=True,
    )
    assert answers[0].agent_id == "s:a" and answers[3].agent_id == "s:a"  # type: ignore[union-attr]
    assert isinstance(answers[4], grpc.RpcError) and answers[4].code() == Code.ALREADY_EXISTS
    assert answers[6].reason == R.REASON_OFFLINE_MAIN_ACCOUNT  # type: ignore[union-attr]
    assert (await batching.get_conversation("s", "c1")).agent_id == "s:a"


# ------------------------------------------------------------------ latency


async def test_a_lone_call_is_sent_at_once(server: ThreadedServer) -> None:
    async with (
        AsyncDispatchClient(server.target) as c,
        AsyncDispatchClient(server.target, max_batch_delay=0.25) as slow,
    ):
        await make_shop(c, capacity=1000)
        await c.set_presence("s", "s:a", ONLINE, at=T0)  # opens the stream
        stats = c.batch_stats
        assert stats is not None
        lone = []
        for i in range(20):
            before = stats.batches
            started = time.perf_counter()
            await c.dispatch("s", f"b{i}", f"c{i}", at=T0)
            lone.append(time.perf_counter() - started)
            assert stats.batches == before + 1
        assert sorted(lone)[10] < 0.05  # no added wait (a round trip here is well under 1 ms)
        await slow.set_presence("s", "s:b", ONLINE, at=T0)
        started = time.perf_counter()
        await slow.dispatch("s", "late", "late", at=T0)
        assert time.perf_counter() - started >= 0.2  # max_batch_delay does wait


# ------------------------------------------------------------------ stream breaks

STALL = threading.Event()


@pytest.fixture
def stallable(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Servers started while this is active hold every OperateStream batch unanswered while the
    event is set (as a server stuck on its disk would)."""
    original = DispatchServicer.OperateStream

    async def operate_stream(
        self: DispatchServicer, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        async def gated() -> AsyncIterator[bytes]:
            async for raw in requests:
                while STALL.is_set():
                    await asyncio.sleep(0.01)
                yield raw

        async for answer in original(self, gated(), context):
            yield answer

    monkeypatch.setattr(DispatchServicer, "OperateStream", operate_stream)
    STALL.clear()
    yield STALL
    STALL.clear()


def start_on(port: int) -> ThreadedServer:
    srv = ThreadedServer()
    srv._thread.start()
    srv.port = srv.run(srv.server.start("127.0.0.1", port))
    return srv


async def retry_until_served(c: AsyncDispatchClient, *args: Any, **kwargs: Any) -> pb.DispatchResponse:
    deadline = time.monotonic() + 10
    while True:
        try:
            return await c.dispatch(*args, **kwargs)
        except grpc.RpcError as exc:
            if exc.code() != Code.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_stream_break_fails_in_flight_calls_unavailable_then_reconnects(stallable: threading.Event) -> None:
    first = ThreadedServer().start()
    second: ThreadedServer | None = None
    try:
        async with AsyncDispatchClient(first.target) as c:
            await make_shop(c, capacity=100)
            await c.set_presence("s", "s:a", ONLINE, at=T0)  # the stream is open and serving
            stats = c.batch_stats
            assert stats is not None and stats.streams == 1
            stallable.set()
            before = stats.batches
            calls = [asyncio.ensure_future(c.dispatch("s", f"b{i}", f"c{i}", at=T0 + 1)) for i in range(10)]
            await asyncio.sleep(0.2)  # the batch is written; the server holds it unanswered
            assert stats.batches == before + 1 and not any(call.done() for call in calls)
            first.stop(grace=0)  # the server goes away mid-flight
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, OperationError) for r in results), results
            assert {r.code() for r in results if isinstance(r, grpc.RpcError)} == {Code.UNAVAILABLE}
            assert "may or may not have been applied" in (results[0].details() or "")  # type: ignore[union-attr]
            stallable.clear()
            second = start_on(first.port)  # a new server on the same port: the next call reconnects
            await make_shop(c, capacity=100)
            await c.set_presence("s", "s:a", ONLINE, at=T0)
            answer = await retry_until_served(c, "s", "b", "after", at=T0 + 2)
            assert answer.agent_id == "s:a"
            assert stats.streams >= 2
    finally:
        if second is not None:
            second.stop()


async def test_a_cancelled_stream_fails_its_calls_and_the_next_call_reconnects(stallable: threading.Event) -> None:
    srv = ThreadedServer().start()
    try:
        async with AsyncDispatchClient(srv.target) as c:
            await make_shop(c, capacity=100)
            await c.set_presence("s", "s:a", ONLINE, at=T0)
            stats, batcher = c.batch_stats, c.batcher
            assert stats is not None and batcher is not None
            stallable.set()
            before = stats.batches
            calls = [asyncio.ensure_future(c.dispatch("s", f"b{i}", f"c{i}", at=T0 + 1)) for i in range(5)]
            while stats.batches == before:
                await asyncio.sleep(0.001)
            batcher.reset()  # as a network failure would
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, grpc.RpcError) and r.code() == Code.UNAVAILABLE for r in results), results
            stallable.clear()
            streams = stats.streams
            assert (await c.dispatch("s", "b", "again", at=T0 + 2)).agent_id == "s:a"
            assert stats.streams == streams + 1
    finally:
        srv.stop(grace=0)


async def test_an_unanswered_batch_times_out(stallable: threading.Event) -> None:
    srv = ThreadedServer().start()
    try:
        async with AsyncDispatchClient(srv.target, timeout=0.3) as c:
            await make_shop(c, capacity=100)
            stallable.set()
            with pytest.raises(grpc.RpcError) as info:
                await c.set_presence("s", "s:a", ONLINE, at=T0)
            assert info.value.code() == Code.DEADLINE_EXCEEDED
            stallable.clear()
            assert not (await c.set_presence("s", "s:a", ONLINE, at=T0)).assignments  # a new stream
    finally:
        srv.stop(grace=0)


async def test_flow_control_refusals_are_the_calls_errors(
    batching: AsyncDispatchClient, server: ThreadedServer
) -> None:
    core = getattr(server.server, "_core", None)
    if core is None or not hasattr(core, "max_operations_in_flight"):
        pytest.skip("the server's flow-control bound is not where this test expects it")
    await make_shop(batching, capacity=100)
    await batching.set_presence("s", "s:a", ONLINE, at=T0)
    core.max_operations_in_flight = 3
    answers = await asyncio.gather(
        *(batching.dispatch("s", f"b{i}", f"c{i}", at=T0) for i in range(5)), return_exceptions=True
    )
    assert [isinstance(a, pb.DispatchResponse) for a in answers] == [True, True, True, False, False]
    assert {a.code() for a in answers[3:] if isinstance(a, grpc.RpcError)} == {Code.RESOURCE_EXHAUSTED}
    core.max_operations_in_flight = 1 << 16
    assert (await batching.get_shop_state("s")).live_conversations == 3


async def test_closing_fails_unanswered_calls_cancelled(server: ThreadedServer) -> None:
    c = AsyncDispatchClient(server.target)
    await make_shop(c)
    pending = asyncio.ensure_future(c.dispatch("s", "b", "c", at=T0))
    await c.close()
    with pytest.raises(grpc.RpcError) as info:
        await pending
    assert info.value.code() == Code.CANCELLED


async def test_a_server_without_operate_stream_gets_unary_calls() -> None:
    seen: list[str] = []

    async def dispatch(request: dispatch_pb2.DispatchRequest, context: Any) -> dispatch_pb2.DispatchResponse:
        seen.append(request.conversation_id)
        return dispatch_pb2.DispatchResponse(
            agent_id="x", reason=R.REASON_GROUP, conversation_id=request.conversation_id
        )

    old = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        dispatch,
        request_deserializer=dispatch_pb2.DispatchRequest.FromString,
        response_serializer=dispatch_pb2.DispatchResponse.SerializeToString,
    )
    old.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("dispatch.v1.Dispatch", {"Dispatch": handler}),))
    port = old.add_insecure_port("127.0.0.1:0")
    await old.start()
    try:
        async with AsyncDispatchClient(f"127.0.0.1:{port}") as c:
            answers = await asyncio.gather(*(c.dispatch("s", "b", f"c{i}") for i in range(3)))
            assert [a.conversation_id for a in answers] == ["c0", "c1", "c2"]
            assert (await c.dispatch("s", "b", "c3")).agent_id == "x"
            assert seen == ["c0", "c1", "c2", "c3"]
    finally:
        await old.stop(0)


# ------------------------------------------------------------------ operate() and the blocking pipeline


def test_operation_bytes_are_the_protobuf_encoding() -> None:
    ops = [
        dispatch_pb2.Operation(dispatch=dispatch_request("s", "b", "c" * 300, at=T0, trace=True)),
        dispatch_pb2.Operation(set_presence=pb.SetPresenceRequest(shop_id="s", agent_id="a", presence=ONLINE)),
        dispatch_pb2.Operation(
            report_conversation=pb.ReportConversationRequest(
                shop_id="s", conversation_id="c", event=EV.CONVERSATION_EVENT_CLOSED
            )
        ),
        dispatch_pb2.Operation(claim_from_pool=pb.ClaimFromPoolRequest()),
    ]
    ours = b"".join(
        encode_operation(op.WhichOneof("kind") or "", getattr(op, op.WhichOneof("kind") or "").SerializeToString())
        for op in ops
    )
    assert ours == dispatch_pb2.OperateRequest(operations=ops).SerializeToString()


def test_blocking_pipeline_is_one_operate_call(sync_client: DispatchClient) -> None:
    sync_client.put_shop(shop_id="s", main_account="s")
    sync_client.put_agent(shop_id="s", agent_id="s:a", max_capacity=5)
    with sync_client.pipeline() as p:
        online = p.set_presence("s", "s:a", ONLINE, at=T0)
        first = p.dispatch("s", "b1", "c1", at=T0 + 1)
        missing = p.dispatch("nope", "b", "c", at=T0 + 1)
        again = p.dispatch("s", "b2", "c1", at=T0 + 2)  # another buyer on an open id
        message = p.report_conversation("s", "c1", EV.CONVERSATION_EVENT_BUYER_MESSAGE, at=T0 + 3)
        claim = p.claim_from_pool("s", "s:a", at=T0 + 4)
        assert len(p) == 6 and not first.done()
        with pytest.raises(RuntimeError):
            first.result()
    assert p.calls == 1  # one Operate call for the six
    assert online.result().assignments == [] and first.result().agent_id == "s:a"
    assert message.result().agent_id == ""
    for future, code in ((missing, Code.NOT_FOUND), (again, Code.ALREADY_EXISTS), (claim, Code.FAILED_PRECONDITION)):
        with pytest.raises(grpc.RpcError) as info:
            future.result()
        assert info.value.code() == code
    # The same code and message as the unary call.
    with pytest.raises(grpc.RpcError) as unary:
        sync_client.dispatch("nope", "b", "c", at=T0 + 1)
    assert (missing.exception().code(), missing.exception().details()) == (unary.value.code(), unary.value.details())  # type: ignore[union-attr]
    # execute() returns every answer or error, in order; a failed block sends nothing.
    p2 = sync_client.pipeline()
    p2.dispatch("s", "b2", "c2", at=T0 + 5)
    p2.add(
        dispatch_pb2.Operation(
            report_conversation=pb.ReportConversationRequest(
                shop_id="s", conversation_id="zz", event=EV.CONVERSATION_EVENT_CLOSED
            )
        )
    )
    out = p2.execute()
    assert (
        isinstance(out[0], pb.DispatchResponse)
        and isinstance(out[1], grpc.RpcError)
        and out[1].code() == Code.NOT_FOUND
    )
    with pytest.raises(KeyError), sync_client.pipeline() as p3:
        p3.dispatch("s", "b3", "c3", at=T0 + 6)
        raise KeyError
    assert p3.calls == 0
    assert sync_client.get_shop_state("s").live_conversations == 2


def test_blocking_pipeline_whole_call_failure_is_raised() -> None:
    with DispatchClient("127.0.0.1:1", timeout=2) as c:  # nobody listens
        p = c.pipeline()
        f = p.dispatch("s", "b", "c")
        with pytest.raises(grpc.RpcError) as info:
            p.execute()
        assert info.value.code() == Code.UNAVAILABLE
        assert f.exception() is info.value


async def test_operate_low_level(batching: AsyncDispatchClient, sync_client: DispatchClient) -> None:
    await make_shop(batching, capacity=5)
    ops = [
        dispatch_pb2.Operation(set_presence=pb.SetPresenceRequest(shop_id="s", agent_id="s:a", presence=ONLINE)),
        dispatch_pb2.Operation(dispatch=dispatch_request("s", "b1", "c1")),
        dispatch_pb2.Operation(dispatch=dispatch_request("s", "b2", "c1")),  # another buyer: ALREADY_EXISTS
    ]
    response = await batching.operate(ops)
    assert [r.WhichOneof("kind") for r in response.results] == ["set_presence", "dispatch", None]
    assert response.results[2].error.code == Code.ALREADY_EXISTS.value[0]
    blocking = sync_client.operate([dispatch_pb2.Operation(dispatch=dispatch_request("s", "b2", "c2"))])
    assert blocking.results[0].dispatch.agent_id == "s:a"
    streamed = [
        r
        async for r in batching.operate_stream(
            [[ops[2]], [dispatch_pb2.Operation(dispatch=dispatch_request("s", "b3", "c3"))]]
        )
    ]
    assert [r.results[0].WhichOneof("kind") for r in streamed] == [None, "dispatch"]
    assert [len(r.results) for r in sync_client.operate_stream([[ops[0]], ops[1:]])] == [1, 2]
