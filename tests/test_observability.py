"""Health, reflection and Prometheus metrics of a real server (dispatcher/observability.py)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_fixtures import T0, ThreadedServer

from dispatch_client import DispatchClient, dispatch_request, pb
from dispatcher.auth import AuthPolicy, hash_token
from dispatcher.observability import LatencyHistogram

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "dispatch.v1.Dispatch", "dispatch.v1.Admin")


@pytest.fixture
def observed() -> Iterator[ThreadedServer]:
    running = ThreadedServer(metrics_port=0).start()
    try:
        yield running
    finally:
        running.stop()


def health_check(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        )


def scrape(server: ThreadedServer) -> str:
    port = server.server.ecosystem.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def scrape_until(server: ThreadedServer, ready: Callable[[str], bool], timeout: float = 5.0) -> str:
    """Scrape until ``ready`` holds or ``timeout`` passes; return the last exposition either way."""
    deadline = time.monotonic() + timeout
    text = scrape(server)
    while not ready(text) and time.monotonic() < deadline:
        time.sleep(0.01)
        text = scrape(server)
    return text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition (labels in any order); 0 when absent."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return 0.0


def demo_shop(c: DispatchClient) -> None:
    c.put_shop(shop_id="s", main_account="s")
    for agent in ("s:a", "s:b", "s:c"):
        c.put_agent(shop_id="s", agent_id=agent, max_capacity=1)
    c.put_group(shop_id="s", group_id="pre", members=["s:a"], order_states=[pb.OrderState.ORDER_STATE_NO_ORDER])
    c.put_group(
        shop_id="s",
        group_id="after",
        members=["s:b"],
        order_states=[pb.OrderState.ORDER_STATE_PAID_UNSHIPPED],
        strategy=pb.Strategy.STRATEGY_FEWEST_UNREAD,
    )
    c.set_presence("s", "s:a", pb.Presence.PRESENCE_ONLINE, at=T0)
    c.set_presence("s", "s:b", pb.Presence.PRESENCE_ONLINE, at=T0)


# ------------------------------------------------------------------ health


def test_health_is_serving_per_service_and_unknown_services_are_not_found(observed: ThreadedServer) -> None:
    for service in SERVICES:
        assert health_check(observed.target, service) == SERVING, service
    with pytest.raises(grpc.RpcError) as info:
        health_check(observed.target, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_is_not_serving_until_the_state_is_ready() -> None:
    running = ThreadedServer()
    running.server.ecosystem.hold_serving = True  # e.g. while a journal is replayed
    running.start()
    try:
        assert [health_check(running.target, s) for s in SERVICES] == [NOT_SERVING] * 3
        running.run(running.server.ecosystem.set_serving())
        assert [health_check(running.target, s) for s in SERVICES] == [SERVING] * 3
    finally:
        running.stop()


def test_draining_reports_not_serving_to_watchers_and_ends_their_streams() -> None:
    running = ThreadedServer().start()
    seen: dict[str, list[int]] = {s: [] for s in SERVICES}
    codes: dict[str, grpc.StatusCode] = {}
    first = threading.Barrier(len(SERVICES) + 1, timeout=10)

    def watch(service: str) -> None:
        with grpc.insecure_channel(running.target) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service), timeout=20)
            for i, answer in enumerate(call):
                seen[service].append(answer.status)
                if i == 0:
                    first.wait()
            codes[service] = call.code()

    threads = [threading.Thread(target=watch, args=(s,)) for s in SERVICES]
    for t in threads:
        t.start()
    first.wait()  # every watcher has its first answer
    stopping = threading.Thread(target=running.stop, kwargs={"grace": 5.0})
    stopping.start()
    for t in threads:
        t.join(15)
    stopping.join(15)
    assert not stopping.is_alive()
    for service in SERVICES:
        assert seen[service] == [SERVING, NOT_SERVING], service
        assert codes[service] == grpc.StatusCode.OK, service


def test_draining_check_answers_not_serving() -> None:
    running = ThreadedServer().start()
    try:
        running.run(running.server.ecosystem.draining())
        assert [health_check(running.target, s) for s in SERVICES] == [NOT_SERVING] * 3
        running.run(running.server.ecosystem.set_serving())  # draining is final
        assert health_check(running.target, "") == NOT_SERVING
    finally:
        running.stop()


# ------------------------------------------------------------------ reflection


def reflect(target: str, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        return next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))


def test_reflection_lists_the_services_and_serves_their_descriptors(observed: ThreadedServer) -> None:
    answer = reflect(observed.target, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in answer.list_services_response.service}
    assert names == {
        "dispatch.v1.Dispatch",
        "dispatch.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    # What grpcurl asks next: the file that defines a service, with its dependencies.
    answer = reflect(
        observed.target, reflection_pb2.ServerReflectionRequest(file_containing_symbol="dispatch.v1.Dispatch")
    )
    assert answer.file_descriptor_response.file_descriptor_proto
    assert not answer.HasField("error_response")


def test_reflection_can_be_switched_off() -> None:
    running = ThreadedServer(reflection=False).start()
    try:
        with pytest.raises(grpc.RpcError) as info:
            reflect(running.target, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert health_check(running.target, "dispatch.v1.Dispatch") == SERVING  # health stays
    finally:
        running.stop()


# ------------------------------------------------------------------ reflection v1 (issue 16)

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def reflect_v1(target: str, request: Any, response_class: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """One request on the v1 method, with v1 message classes (grpcurl and grpc_cli try v1 first)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            V1_METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        return next(iter(call(iter([request]), timeout=10, metadata=metadata)))


def _v1_classes(file: descriptor_pb2.FileDescriptorProto) -> tuple[Any, Any]:
    """The v1 request/response classes from the v1 file the server itself describes, in a pool of
    their own (as a reflection client builds them)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")),
    )


def test_reflection_v1_lists_the_services_and_describes_itself(observed: ThreadedServer) -> None:
    # What a v1 client asks first: the file of the v1 service itself (over v1alpha here, to get
    # classes that owe nothing to the server's process), then everything over v1.
    answer = reflect(
        observed.target,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    )
    (raw,) = answer.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert (file.name, file.package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    method = file.service[0].method[0]
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    request_class, response_class = _v1_classes(file)
    listed = reflect_v1(observed.target, request_class(list_services=""), response_class)
    assert {s.name for s in listed.list_services_response.service} == {
        "dispatch.v1.Dispatch",
        "dispatch.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    described = reflect_v1(
        observed.target, request_class(file_containing_symbol="dispatch.v1.Dispatch"), response_class
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(f)
        for f in described.file_descriptor_response.file_descriptor_proto
    ]
    assert "dispatch/v1/dispatch.proto" in {f.name for f in files}
    assert not described.HasField("error_response")
    missing = reflect_v1(observed.target, request_class(file_containing_symbol="no.such.Service"), response_class)
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_v1_is_off_with_reflection_and_an_admin_call_with_auth() -> None:
    running = ThreadedServer(reflection=False).start()
    try:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as off:
            reflect_v1(running.target, request, reflection_pb2.ServerReflectionResponse)
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    finally:
        running.stop()
    token = "tok-reflect-Ab12"
    policy = AuthPolicy.from_mapping(
        {"callers": [{"name": "ops", "token_sha256": hash_token(token), "roles": ["admin"], "shops": "*"}]}
    )
    guarded = ThreadedServer(auth=policy).start()
    try:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as anonymous:
            reflect_v1(guarded.target, request, reflection_pb2.ServerReflectionResponse)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        answer = reflect_v1(
            guarded.target, request, reflection_pb2.ServerReflectionResponse, (("authorization", f"Bearer {token}"),)
        )
        assert "grpc.reflection.v1.ServerReflection" in {s.name for s in answer.list_services_response.service}
    finally:
        guarded.stop()


# ------------------------------------------------------------------ metrics


METRIC_NAMES = (
    "dispatch_up",
    "dispatch_decisions_total",
    "dispatch_handed_out_total",
    "dispatch_events_total",
    "dispatch_admin_calls_total",
    "dispatch_errors_total",
    "dispatch_rpc_duration_seconds",
    "dispatch_journal_fsync_seconds",
    "dispatch_shops",
    "dispatch_agents_online",
    "dispatch_agents_suspended",
    "dispatch_live_conversations",
    "dispatch_watchers",
    "dispatch_serving",
    "dispatch_waiting_conversations",
    "dispatch_estimated_wait_seconds",
    "dispatch_retries_total",
    "dispatch_deadlines_fired_total",
    "dispatch_pending_deadlines",
)


def test_metrics_endpoint_names_and_counts(observed: ThreadedServer) -> None:
    before = scrape(observed)
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in before, name
    assert sample(before, "dispatch_up") == 1
    assert sample(before, "dispatch_serving") == 1
    assert sample(before, "dispatch_decisions_total", reason="group", strategy="least_saturation") == 0

    with DispatchClient(observed.target, timeout=10) as c:
        demo_shop(c)
        # shop strategy (the "pre" group has none of its own)
        assert c.dispatch("s", "b1", "c1", order_state=pb.OrderState.ORDER_STATE_NO_ORDER, at=T0).agent_id == "s:a"
        # the "after" group's own strategy
        assert (
            c.dispatch("s", "b2", "c2", order_state=pb.OrderState.ORDER_STATE_PAID_UNSHIPPED, at=T0).agent_id == "s:b"
        )
        # everyone full: queued (no strategy), in a batch
        batch = c.dispatch_batch(
            [dispatch_request("s", "b3", "c3", at=T0), dispatch_request("nope", "b4", "c4", at=T0)]
        )
        assert batch[0].reason == pb.Reason.REASON_QUEUED and batch[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        # a stream of two batches
        answers = list(
            c.dispatch_stream([[dispatch_request("s", "b5", "c5", at=T0)], [dispatch_request("s", "b6", "c6", at=T0)]])
        )
        assert [a[0].reason for a in answers] == [pb.Reason.REASON_QUEUED] * 2
        with pytest.raises(grpc.RpcError):
            c.get_shop_state("ghost")

    # grpc.aio sends an aborted call's status from inside ``context.abort``, before the
    # interceptor's ``finally`` records its latency: the failed GetShopState is the last
    # call, so wait (bounded) until its observation is in before reading the rest.
    text = scrape_until(observed, lambda t: sample(t, "dispatch_rpc_duration_seconds_count",
                                                   service="dispatch.v1.Admin", method="GetShopState") >= 1)  # fmt: skip
    assert sample(text, "dispatch_decisions_total", reason="group", strategy="least_saturation") == 1
    assert sample(text, "dispatch_decisions_total", reason="group", strategy="fewest_unread") == 1
    assert sample(text, "dispatch_decisions_total", reason="queued", strategy="none") == 3
    assert sample(text, "dispatch_errors_total", code="NOT_FOUND") == 2
    assert sample(text, "dispatch_admin_calls_total") == 6
    assert sample(text, "dispatch_events_total") == 2
    # gauges, computed at scrape time from the engine
    assert sample(text, "dispatch_shops") == 1
    assert sample(text, "dispatch_agents_online") == 2
    assert sample(text, "dispatch_live_conversations") == 5
    assert sample(text, "dispatch_waiting_conversations", wait="queue") == 3
    assert sample(text, "dispatch_waiting_conversations", wait="staging") == 0
    # latency histograms per method (shop-agnostic labels only)
    dispatch = {"service": "dispatch.v1.Dispatch", "method": "Dispatch"}
    assert sample(text, "dispatch_rpc_duration_seconds_count", **dispatch) == 2
    assert sample(text, "dispatch_rpc_duration_seconds_bucket", le="+Inf", **dispatch) == 2
    assert sample(text, "dispatch_rpc_duration_seconds_sum", **dispatch) > 0
    assert (
        sample(text, "dispatch_rpc_duration_seconds_count", service="dispatch.v1.Dispatch", method="DispatchStream")
        == 1
    )
    assert sample(text, "dispatch_rpc_duration_seconds_count", service="dispatch.v1.Admin", method="GetShopState") == 1
    assert '"s"' not in text and "s:a" not in text  # no shop or agent ids in labels


def test_group_strategy_changes_are_followed(observed: ThreadedServer) -> None:
    with DispatchClient(observed.target, timeout=10) as c:
        demo_shop(c)
        c.put_group(shop_id="s", group_id="pre", members=["s:a"], order_states=[pb.OrderState.ORDER_STATE_NO_ORDER],
                    strategy=pb.Strategy.STRATEGY_FEWEST_TODAY)  # fmt: skip
        c.dispatch("s", "b1", "c1", order_state=pb.OrderState.ORDER_STATE_NO_ORDER, at=T0)
        c.put_shop(shop_id="s", main_account="s", strategy=pb.Strategy.STRATEGY_WEIGHTED_BUSYNESS)
        c.put_group(shop_id="s", group_id="pre", members=["s:c"], order_states=[pb.OrderState.ORDER_STATE_NO_ORDER])
        c.set_presence("s", "s:c", pb.Presence.PRESENCE_ONLINE, at=T0)
        c.dispatch("s", "b2", "c2", order_state=pb.OrderState.ORDER_STATE_NO_ORDER, at=T0)
    text = scrape(observed)
    assert sample(text, "dispatch_decisions_total", reason="group", strategy="fewest_today") == 1
    assert sample(text, "dispatch_decisions_total", reason="group", strategy="weighted_busyness") == 1


def test_group_strategies_of_a_preloaded_engine_are_known() -> None:
    import _fastpath

    engine = _fastpath.Engine(0)
    engine.put_shop(_fastpath.ShopConfig(shop_id="p", main_account="p"))
    engine.put_agent(_fastpath.AgentConfig(shop_id="p", agent_id="p:a", max_capacity=5))
    engine.put_group(_fastpath.GroupConfig(shop_id="p", group_id="g", members=("p:a",), order_states=(1,), strategy=3))
    engine.set_presence("p", "p:a", 1, 0, T0)
    running = ThreadedServer(engine, metrics_port=0).start()
    try:
        with DispatchClient(running.target, timeout=10) as c:
            assert c.dispatch("p", "b", "c", order_state=1, at=T0).group_id == "g"
        text = scrape(running)
        assert sample(text, "dispatch_decisions_total", reason="group", strategy="capacity_round_robin") == 1
    finally:
        running.stop()


def test_metrics_endpoint_is_off_by_default() -> None:
    plain = ThreadedServer().start()
    try:
        assert plain.server.ecosystem.metrics_port is None
    finally:
        plain.stop()


def test_journal_fsync_hook_feeds_its_histogram(observed: ThreadedServer) -> None:
    hook = observed.server.ecosystem.metrics.observe_journal_fsync
    observed.loop.call_soon_threadsafe(hook, 0.003)
    text = scrape(observed)
    assert sample(text, "dispatch_journal_fsync_seconds_count") == 1
    assert sample(text, "dispatch_journal_fsync_seconds_bucket", le="0.0025") == 0
    assert sample(text, "dispatch_journal_fsync_seconds_bucket", le="0.005") == 1


def test_latency_histogram_buckets_are_cumulative_and_inclusive() -> None:
    hist = LatencyHistogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 5.0):
        hist.observe(value)
    assert hist.buckets() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert hist.total == pytest.approx(5.0035)


async def test_a_watch_whose_first_write_overlaps_drain_still_ends_not_serving() -> None:
    """drain() can begin while a watcher's write is in flight; the stream must still end NOT_SERVING."""
    from dispatcher.observability import _Health

    health = _Health()
    await health.set("svc", SERVING)
    written: list[int] = []
    draining: list[asyncio.Task[None]] = []

    class Context:
        async def write(self, message: health_pb2.HealthCheckResponse) -> None:
            written.append(message.status)
            if len(written) == 1:  # the shutdown starts while this first write is in flight
                draining.append(asyncio.ensure_future(health.drain()))
                await asyncio.sleep(0)

    await asyncio.wait_for(health.Watch(health_pb2.HealthCheckRequest(service="svc"), Context()), 5)
    await asyncio.wait_for(draining[0], 5)
    assert written == [SERVING, NOT_SERVING]


def test_timed_rules_retries_and_estimated_waits_are_counted() -> None:
    """Issue 14: re-routes and queue timeouts are decisions by reason; §12 retries, deadlines fired
    by ticks and pending deadlines are read at scrape time; the estimated wait of a waiting answer
    goes into a histogram with fixed buckets (object paths only: the trace here takes them)."""
    import datetime

    running = ThreadedServer(metrics_port=0, tick_interval_ms=0).start()  # time moves only when told
    sec = 1000
    try:
        with DispatchClient(running.target, timeout=10) as c:
            # "s": one agent, a queue that times out after 30 s.
            c.put_shop(shop_id="s", main_account="s:main", max_queue_wait=datetime.timedelta(seconds=30))
            c.put_agent(shop_id="s", agent_id="s:a", max_capacity=1)
            c.set_presence("s", "s:a", pb.Presence.PRESENCE_ONLINE, at=T0)
            assert c.dispatch("s", "b0", "c0", at=T0).agent_id == "s:a"
            assert c.dispatch("s", "b1", "q1", at=T0, trace=True).reason == pb.Reason.REASON_QUEUED
            c.report_conversation("s", "c0", pb.ConversationEvent.CONVERSATION_EVENT_CLOSED, at=T0 + 10 * sec)
            c.dispatch("s", "b2", "q2", at=T0 + 10 * sec)
            c.report_conversation("s", "q1", pb.ConversationEvent.CONVERSATION_EVENT_CLOSED, at=T0 + 15 * sec)
            # Two hand-outs 5 s apart: the next one to wait is told 5 s.
            waiting = c.dispatch("s", "b3", "q3", at=T0 + 15 * sec, priority=9, trace=True)
            assert (waiting.position, waiting.estimated_wait.ToMilliseconds()) == (1, 5 * sec)
            retry = c.dispatch("s", "b3", "q3", at=T0 + 16 * sec, priority=9, trace=True)  # §12: counted too
            assert (retry.position, retry.estimated_wait.ToMilliseconds()) == (1, 5 * sec)
            # No trace: the engine's wire path answers, and counts it in C.
            wired = c.dispatch("s", "b4", "q4", at=T0 + 16 * sec)
            assert (wired.position, wired.estimated_wait.ToMilliseconds()) == (2, 10 * sec)
            # "r": two agents, a conversation re-routed after 60 s without a reply.
            c.put_shop(shop_id="r", main_account="r:main", reroute_unanswered_after=datetime.timedelta(seconds=60))
            for agent in ("r:a", "r:b"):
                c.put_agent(shop_id="r", agent_id=agent, max_capacity=5)
                c.set_presence("r", agent, pb.Presence.PRESENCE_ONLINE, at=T0)
            first = c.dispatch("r", "rb", "r1", at=T0).agent_id
        text = scrape(running)
        assert sample(text, "dispatch_pending_deadlines") == 3  # q3's and q4's queue waits, r1's re-route
        assert sample(text, "dispatch_retries_total") == 1
        assert sample(text, "dispatch_estimated_wait_seconds_count") == 3
        assert sample(text, "dispatch_estimated_wait_seconds_bucket", le="5.0") == 2
        assert sample(text, "dispatch_estimated_wait_seconds_bucket", le="15.0") == 3
        assert sample(text, "dispatch_estimated_wait_seconds_sum") == 20.0

        # q3 and q4 time out (T0 + 46 s), r1 re-routes (T0 + 60 s)
        fired = running.run(_tick(running, T0 + 61 * sec))
        text = scrape(running)
        assert fired == sample(text, "dispatch_deadlines_fired_total") == 3
        assert sample(text, "dispatch_decisions_total", reason="queue_timeout", strategy="none") == 2
        assert (
            sum(
                sample(text, "dispatch_decisions_total", reason="rerouted", strategy=s)
                for s in (
                    "least_saturation",
                    "fewest_today",
                    "capacity_round_robin",
                    "fewest_unread",
                    "weighted_busyness",
                )
            )
            == 1
        )  # r1, to the other agent
        assert sample(text, "dispatch_pending_deadlines") == 0
        assert sample(text, "dispatch_waiting_conversations", wait="pool") == 2
        assert running.engine.conversation("r", "r1")["agent_id"] != first
        assert '"s"' not in text and '"r"' not in text  # no shop ids in labels
    finally:
        running.stop()


async def _tick(running: ThreadedServer, now: int) -> int:
    return running.server.tick(now)


def test_operate_object_path_counts_estimated_waits_in_the_engine(engine_cls: type) -> None:
    """The object path of Operate counts each estimate it answers with in the engine's counters
    (``note_estimate``), the same counters as the wire paths; a §12 retry answers it again."""
    import _fastpath
    from dispatcher._gen.dispatch.v1 import dispatch_pb2
    from dispatcher.observability import estimated_wait_histogram
    from dispatcher.operations import OperationContext, apply_operations

    engine = engine_cls(0)
    engine.put_shop(_fastpath.ShopConfig(shop_id="s", main_account="s:main"))
    engine.put_agent(_fastpath.AgentConfig(shop_id="s", agent_id="s:a", max_capacity=1))
    engine.set_presence("s", "s:a", int(_fastpath.Presence.ONLINE), 1, T0)
    closed = int(_fastpath.ConversationEvent.CLOSED)
    for conv, at in (("busy", T0), ("q1", T0), ("q2", T0 + 10_000)):
        engine.dispatch("s", f"b-{conv}", conv, at)
    engine.conversation_event("s", "busy", closed, T0 + 10_000)  # q1 goes out
    engine.conversation_event("s", "q1", closed, T0 + 15_000)  # q2 goes out: 5 s apart
    engine.drain_outbox()
    assert engine.estimate_counts() == ([0] * 13, 0)
    ctx = OperationContext(engine, lambda: [], None)
    op = dispatch_pb2.Operation(dispatch=dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="b3", conversation_id="q3"))
    for _ in range(2):  # the second is a retry
        (result,) = apply_operations(ctx, [op], T0 + 15_000).results
        assert (result.dispatch.position, result.dispatch.estimated_wait.ToMilliseconds()) == (1, 5000)
    counts, total_ms = engine.estimate_counts()
    assert counts == [2] + [0] * 12 and total_ms == 10_000
    buckets, total = estimated_wait_histogram(counts, total_ms)
    assert buckets[0] == ("5.0", 2) and buckets[-1] == ("+Inf", 2) and total == 10.0
    engine.note_estimate(90_000_000)  # beyond a day: +Inf
    assert engine.estimate_counts()[0][-1] == 1
