"""What lets Dispatch slot into the gRPC ecosystem: health, reflection and Prometheus metrics.

``Ecosystem`` is attached to one ``DispatchServer``; the server calls it at four
points and nothing else of it is on the servicers' code path:

- ``wrap(method, handler)`` is applied to every method handler when it is
  registered (inside the security guard): it times every RPC (per-method
  latency histograms). Decisions by reason and strategy are counted by the
  engine itself (``decision_counts``) and read at scrape time.
- ``await attach(server)`` (before ``server.start()``) adds ``grpc.health.v1.Health``
  (every service NOT_SERVING) and, unless disabled, server reflection: both
  ``grpc.reflection.v1.ServerReflection`` and the older ``v1alpha`` (grpcio-reflection
  ships only v1alpha; the v1 protocol is the same messages under another package, so
  the same servicer answers both, see ``add_reflection_v1``).
- ``await started()`` marks ``""``, ``dispatch.v1.Dispatch`` and ``dispatch.v1.Admin``
  SERVING (unless the server holds it back until its state is recovered: then
  ``await set_serving()`` does it later). The metrics HTTP server is opened by ``attach``.
- ``await draining()`` (first thing of a graceful stop) marks everything
  NOT_SERVING for good and ends the health ``Watch`` streams;
  ``stopped()`` closes the metrics HTTP server.

Hot path: decision counting is a C array increment in the engine; latency is
one ``perf_counter`` pair and a ``bisect`` per call, on the event loop's thread
(no locks, no label look-ups). Gauges (queue/staging/pool depth, online agents, shops,
live conversations, watchers) are computed only when Prometheus scrapes,
on the event loop (the engine is single-threaded), from ``engine.totals()`` (one C pass).

Spec §10-§12 (issue 14): re-routes, reclaims and queue timeouts are decisions like the others
(``dispatch_decisions_total{reason="rerouted"|"reclaimed"|"queue_timeout"}``, counted by the
engine). §12 retries (``engine.retry_count()``), pending deadlines (``engine.pending_deadlines()``)
and deadlines fired by the server's ticks are read at scrape time. The estimated wait of §11 is
a histogram with fixed buckets (no shop label): the engine counts every estimate it or the
servicers write into an answer, on every path (``engine.estimate_counts()``, read at scrape time).

The journal's fsync latency has its histogram already (``dispatch_journal_fsync_seconds``):
durability code calls ``Ecosystem.metrics.observe_journal_fsync(seconds)``.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import inspect
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final

import grpc
import structlog
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from _fastpath import Reason, Strategy
from _fastpath.model import ESTIMATE_BUCKETS_MS

from ._gen.dispatch.v1 import admin_pb2, dispatch_pb2
from .handlers import Handler, replace_handler

__all__ = [
    "DISPATCH_SERVICES",
    "WRITE_SERVICES",
    "LATENCY_BUCKETS",
    "REFLECTION_V1",
    "WAIT_BUCKETS",
    "Ecosystem",
    "add_reflection_v1",
    "LatencyHistogram",
    "Metrics",
    "estimated_wait_histogram",
]

WRITE_SERVICES: Final = ("", "dispatch.v1.Dispatch")
"""Health services that report NOT_SERVING while the journal cannot write."""

DISPATCH_SERVICES: Final = (
    dispatch_pb2.DESCRIPTOR.services_by_name["Dispatch"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)
"""The services whose health is reported one by one (besides the whole server, ``""``)."""

LATENCY_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the RPC latency buckets: 50 µs .. 10 s."""

WAIT_BUCKETS: Final = tuple(ms / 1000 for ms in ESTIMATE_BUCKETS_MS)
"""Upper bounds (seconds) of the estimated-wait buckets (spec §11): 5 s .. 1 day, the same for every shop."""

FSYNC_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

SNAPSHOT_TIMEOUT: Final = 5.0
"""Seconds a scrape waits for the event loop to compute the gauges."""

log = structlog.get_logger("dispatcher.observability")

_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING
_N_STRATEGIES: Final = max(Strategy) + 1
_STRATEGY_LABELS: Final = ["none"] + [Strategy(i).name.lower() for i in range(1, _N_STRATEGIES)]


class LatencyHistogram:
    """A Prometheus-style histogram without locks or labels, for the event loop's thread.

    ``observe`` is one ``bisect`` and two additions; buckets are cumulated only
    when scraped.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last."""
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def estimated_wait_histogram(counts: Sequence[int], total_ms: int) -> tuple[list[tuple[str, int]], float]:
    """The engine's estimate counts (``estimate_counts``: by bucket of ``ESTIMATE_BUCKETS_MS``,
    +Inf last; their sum in ms) as cumulative ``(le seconds, count)`` pairs and a sum in seconds."""
    out, running = [], 0
    for bound, n in zip([*(str(b / 1000) for b in ESTIMATE_BUCKETS_MS), "+Inf"], counts, strict=True):
        running += n
        out.append((bound, running))
    return out, total_ms / 1000


class Metrics:
    """The counters and histograms updated on the hot path, and the hook for journal fsyncs."""

    def __init__(self) -> None:
        self.rpc_latency: dict[str, LatencyHistogram] = {}
        self.journal_fsync = LatencyHistogram(FSYNC_BUCKETS)

    def observe_journal_fsync(self, seconds: float) -> None:
        """The hook for the durability code: one fsync of the journal took ``seconds``."""
        self.journal_fsync.observe(seconds)

    def histogram(self, method: str) -> LatencyHistogram:
        hist = self.rpc_latency.get(method)
        if hist is None:
            hist = self.rpc_latency[method] = LatencyHistogram()
        return hist


class _Timing:
    """Times every RPC (the engine counts the decisions itself: ``decision_counts``).

    ``wrap`` is applied to each method handler once, at registration
    (``security.GuardedServer``), inside the security guard: calls refused
    there (malformed, unauthenticated, over the limit) are not timed.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def wrap(self, method: str, handler: Handler) -> Handler:
        metrics = self._metrics
        observe = metrics.histogram(method).observe
        clock = time.perf_counter

        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                start = clock()
                try:
                    return await behavior(request, context)
                finally:
                    observe(clock() - start)

            return replace_handler(handler, unary_unary=unary)

        if handler.unary_stream is not None:
            # Server streams (WatchAssignments, health Watch) live as long as
            # their subscriber: the histogram says how long they stayed open.
            # grpc.aio tells generator handlers from ``context.write`` ones
            # (e.g. health Watch) by isasyncgenfunction: keep the kind.
            stream_behavior: Any = handler.unary_stream  # grpc.aio: a coroutine or an async generator
            if inspect.isasyncgenfunction(stream_behavior):

                async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    start = clock()
                    try:
                        async for item in stream_behavior(request, context):
                            yield item
                    finally:
                        observe(clock() - start)

            else:

                async def unary_stream(request: Any, context: Any) -> Any:  # type: ignore[misc]  # same name, other kind
                    start = clock()
                    try:
                        return await stream_behavior(request, context)
                    finally:
                        observe(clock() - start)

            return replace_handler(handler, unary_stream=unary_stream)

        if handler.stream_stream is not None:
            bidi: Any = handler.stream_stream  # grpc.aio: a coroutine or an async generator
            if not inspect.isasyncgenfunction(bidi):  # a context.read/write handler (e.g. reflection)

                async def rw_stream(request_iterator: Any, context: Any) -> Any:
                    start = clock()
                    try:
                        return await bidi(request_iterator, context)
                    finally:
                        observe(clock() - start)

                return replace_handler(handler, stream_stream=rw_stream)

            async def stream_stream(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
                start = clock()
                try:
                    async for response in bidi(request_iterator, context):
                        yield response
                finally:
                    observe(clock() - start)

            return replace_handler(handler, stream_stream=stream_stream)

        return handler  # client streaming: the contract has none


class _Health(health_aio.HealthServicer):  # type: ignore[misc]  # grpc_health ships no types
    """The stock asyncio health servicer, whose Watch streams end (OK) once draining has been sent."""

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        condition = self._server_watchers[request.service]
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                    if self._gracefully_shutting_down:
                        # drain() may have begun while the write above was in flight: it then
                        # waits for this lock to set NOT_SERVING, after this stream has ended.
                        # Every known service ends NOT_SERVING: send it now if it is not sent yet.
                        final = _NOT_SERVING if request.service in self._server_status else status
                        if final != last:
                            await context.write(health_pb2.HealthCheckResponse(status=final))
                        return
                    await condition.wait()
        finally:
            self._server_watchers.pop(request.service, None)

    async def drain(self) -> None:
        await self.enter_graceful_shutdown()
        # Wake the watchers of services that never had a status of their own.
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()


class _Collector(Collector):
    """Builds every metric family at scrape time, reading the server on its event loop."""

    def __init__(self, ecosystem: Ecosystem) -> None:
        self._eco = ecosystem

    def describe(self) -> Iterator[Any]:
        return iter(())  # no duplicate checks against the registry; names are fixed below

    def collect(self) -> Iterator[Any]:
        eco = self._eco
        loop = eco.loop
        try:
            if loop is None or loop.is_closed():
                raise RuntimeError("the server's event loop is not running")
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:  # called on the loop itself (e.g. generate_latest in a test)
                snap = eco.snapshot()
            else:
                future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

                def run() -> None:
                    try:
                        future.set_result(eco.snapshot())
                    except BaseException as exc:
                        future.set_exception(exc)

                loop.call_soon_threadsafe(run)
                snap = future.result(SNAPSHOT_TIMEOUT)
        except Exception:
            log.warning("metrics.snapshot_failed", exc_info=True)
            up = GaugeMetricFamily("dispatch_up", "1 when the scrape could read the server's state")
            up.add_metric([], 0)
            yield up
            return
        yield from _families(snap)


def _families(snap: dict[str, Any]) -> Iterator[Any]:
    up = GaugeMetricFamily("dispatch_up", "1 when the scrape could read the server's state")
    up.add_metric([], 1)
    yield up

    decisions = CounterMetricFamily(
        "dispatch_decisions",
        "Dispatch decisions (Dispatch, DispatchBatch, DispatchStream items) by reason and by the strategy that picked the agent",
        labels=["reason", "strategy"],
    )
    for reason, row in enumerate(snap["decisions"]):
        for strategy, n in enumerate(row):
            if n:
                decisions.add_metric([Reason(reason).name.lower(), _STRATEGY_LABELS[strategy]], n)
    yield decisions

    handed = CounterMetricFamily(
        "dispatch_handed_out", "Assignments made after their Dispatch (queue drains, staging pushes, pool claims)"
    )
    handed.add_metric([], snap["handed_out"])
    yield handed

    events = CounterMetricFamily(
        "dispatch_events", "SetPresence, ReportConversation and ClaimFromPool calls, and operations of those kinds"
    )
    events.add_metric([], snap["events"])
    yield events

    operations = CounterMetricFamily(
        "dispatch_operations", "Operations of Operate/OperateStream batches, by kind", labels=["kind"]
    )
    for kind, n in snap["operations"].items():
        operations.add_metric([kind], n)
    yield operations

    admin = CounterMetricFamily("dispatch_admin_calls", "Admin calls that change configuration")
    admin.add_metric([], snap["admin_calls"])
    yield admin

    errors = CounterMetricFamily("dispatch_errors", "Refused calls and batch items, by gRPC status", labels=["code"])
    for code, n in sorted(snap["errors"].items()):
        errors.add_metric([code], n)
    errors.add_metric(["INTERNAL"], snap["internal_errors"])
    yield errors

    latency = HistogramMetricFamily(
        "dispatch_rpc_duration_seconds",
        "Time from the start of an RPC's handler to its end (streams: how long they stayed open)",
        labels=["service", "method"],
    )
    for path, (buckets, total) in sorted(snap["rpc_latency"].items()):
        service, _, method = path.lstrip("/").partition("/")
        latency.add_metric([service, method], buckets, total)
    yield latency

    wait = HistogramMetricFamily(
        "dispatch_estimated_wait_seconds",
        "Estimated wait (spec §11) written into answers that make (or, for a §12 retry, keep) a "
        "conversation waiting, once the shop's hand-out rate is known; counted by the engine on every path",
    )
    wait.add_metric([], *snap["estimated_wait"])
    yield wait

    retries = CounterMetricFamily(
        "dispatch_retries",
        "Dispatches of an open conversation by its own buyer, answered with its current state and nothing changed "
        "(spec §12)",
    )
    retries.add_metric([], snap["retries"])
    yield retries

    fired = CounterMetricFamily(
        "dispatch_deadlines_fired",
        "Deadlines (spec §10 re-route and reclaim, §11 max_queue_wait) fired by the server's ticks",
    )
    fired.add_metric([], snap["deadlines_fired"])
    yield fired

    fsync = HistogramMetricFamily(
        "dispatch_journal_fsync_seconds", "Time one fsync of the journal took (empty until durability is on)"
    )
    fsync.add_metric([], *snap["journal_fsync"])
    yield fsync

    gauges = [
        ("dispatch_shops", "Shops configured", snap["shops"]),
        ("dispatch_agents_online", "Agents (not robots) whose presence is ONLINE", snap["agents_online"]),
        ("dispatch_agents_suspended", "Agents whose presence is SUSPENDED", snap["agents_suspended"]),
        ("dispatch_live_conversations", "Conversations assigned or waiting", snap["live_conversations"]),
        ("dispatch_watchers", "Open WatchAssignments streams", snap["watchers"]),
        (
            "dispatch_pending_deadlines",
            "Deadlines pending in every shop (spec §10 re-route and reclaim, §11 max_queue_wait)",
            snap["pending_deadlines"],
        ),
        (
            "dispatch_serving",
            "1 while health says SERVING, 0 before it is ready, while draining and while the journal cannot write",
            snap["serving"],
        ),
        (
            "dispatch_journal_writable",
            "1 while the journal can write (or there is none), 0 while writes are refused",
            snap["journal_writable"],
        ),
    ]
    for name, doc, value in gauges:
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], value)
        yield gauge
    waiting = GaugeMetricFamily(
        "dispatch_waiting_conversations", "Conversations nobody has taken yet, by where they wait", labels=["wait"]
    )
    for kind in ("queue", "staging", "pool"):
        waiting.add_metric([kind], snap[kind])
    yield waiting


REFLECTION_V1: Final = "grpc.reflection.v1.ServerReflection"
"""The stable reflection service (grpcurl, grpc_cli, Postman and buf curl try it first)."""
_REFLECTION_V1_FILE: Final = "grpc/reflection/v1/reflection.proto"


def _reflection_v1_descriptor() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in the default descriptor pool (once), so
    reflection can describe its own v1 service: v1alpha's file under the v1 package."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    alpha = "." + reflection_pb2.DESCRIPTOR.package + "."
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = _REFLECTION_V1_FILE
    file.package = "grpc.reflection.v1"
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # a message field (setting it on a scalar makes it invalid)
                field.type_name = field.type_name.replace(alpha, ".grpc.reflection.v1.")
    for service in file.service:
        service.ClearField("options")
        for method in service.method:
            method.input_type = method.input_type.replace(alpha, ".grpc.reflection.v1.")
            method.output_type = method.output_type.replace(alpha, ".grpc.reflection.v1.")
    pool.AddSerializedFile(file.SerializeToString())


def add_reflection_v1(servicer: Any, server: Any) -> None:
    """Serve ``grpc.reflection.v1.ServerReflection`` with a v1alpha ``ReflectionServicer``.

    grpcio-reflection (1.76) implements only v1alpha. v1 has the same messages, fields and
    numbers in another package, so the bytes on the wire are the same: the v1 method is
    the v1alpha handler registered under the v1 name (as the generated ``add_*_to_server``
    registers: generic and registered handlers)."""
    _reflection_v1_descriptor()
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, handlers),))
    server.add_registered_method_handlers(REFLECTION_V1, handlers)


class Ecosystem:
    """Health, reflection and metrics of one ``DispatchServer`` (see the module doc)."""

    def __init__(
        self,
        server: Any,
        *,
        reflection: bool = True,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        hold_serving: bool = False,
    ) -> None:
        self._server = server
        self.reflection = reflection
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.hold_serving = hold_serving
        self.metrics = Metrics()
        self.health = _Health()
        # Without an endpoint nobody can read the per-RPC histograms: metrics
        # off means no timing wrapper at all (bench: on vs off).
        self.timing: _Timing | None = _Timing(self.metrics) if metrics_port is not None else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.serving = False
        self.writable = True
        """False while the journal cannot write (``journal_state``)."""
        self.unwritable_reason: str | None = None
        self._ready = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: Any = None
        self._http_thread: Any = None

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler`` timed into the per-method histogram (unchanged when metrics are off)."""
        return handler if self.timing is None else self.timing.wrap(method, handler)

    async def attach(self, server: Any) -> None:
        """Add the health (everything NOT_SERVING) and reflection services and open the metrics
        endpoint (a taken port fails here, before the gRPC port is bound); before ``server.start()``."""
        self.loop = asyncio.get_running_loop()
        if self.metrics_port is not None and self._http is None:
            self._http, self._http_thread = start_http_server(self.metrics_port, self.metrics_host, self.registry)
            self.metrics_port = int(self._http.server_port)
        for service in ("", *DISPATCH_SERVICES):
            await self.health.set(service, _NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.reflection:
            names = (
                *DISPATCH_SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
                REFLECTION_V1,
            )
            # What reflection.enable_server_reflection does for a grpc.aio server
            # (it checks isinstance(server, grpc.aio.Server); ``server`` may be the
            # registration proxy, security.GuardedServer).
            servicer = reflection.aio.ReflectionServicer(names)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
            add_reflection_v1(servicer, server)

    async def started(self) -> None:
        """After ``server.start()``: SERVING, unless held back until the state is ready."""
        if not self.hold_serving:
            await self.set_serving()

    async def set_serving(self) -> None:
        """The engine (and the recovered state, when there is one) is ready: report SERVING
        (``""`` and ``dispatch.v1.Dispatch`` stay NOT_SERVING while the journal cannot write)."""
        self._ready = True
        for service in ("", *DISPATCH_SERVICES):
            writes = service in WRITE_SERVICES
            await self.health.set(service, _SERVING if self.writable or not writes else _NOT_SERVING)
        self.serving = not self.health._gracefully_shutting_down and self.writable

    def journal_state(self, writable: bool, reason: str | None = None) -> None:
        """The journal stalled, failed or resumed (``Journal.on_state``; on the event loop).

        While it cannot write, ``""`` and ``dispatch.v1.Dispatch`` report NOT_SERVING (a load
        balancer or readiness probe sends the writes elsewhere) and ``dispatch.v1.Admin`` stays
        SERVING: its reads keep working, its mutations answer UNAVAILABLE."""
        self.writable = writable
        self.unwritable_reason = reason
        if self.loop is not None and self._ready:
            task = self.loop.create_task(self._apply_journal_state())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _apply_journal_state(self) -> None:
        if self.health._gracefully_shutting_down:
            return
        status = _SERVING if self.writable else _NOT_SERVING
        for service in WRITE_SERVICES:
            await self.health.set(service, status)
        self.serving = self.writable

    async def draining(self) -> None:
        """A graceful stop begins: NOT_SERVING for good; open health Watch streams get it and end."""
        self.serving = False
        await self.health.drain()

    def stopped(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def snapshot(self) -> dict[str, Any]:
        """Everything the scrape exports; runs on the event loop's thread."""
        server = self._server
        engine = server.engine
        counters = server.counters
        metrics = self.metrics
        snap: dict[str, Any] = {
            "decisions": server.decisions(),
            "handed_out": counters.handed_out,
            "events": counters.events,
            "operations": dict(counters.operations),
            "admin_calls": counters.admin_calls,
            "errors": dict(counters.errors),
            "internal_errors": counters.internal_errors,
            "rpc_latency": {m: (h.buckets(), h.total) for m, h in metrics.rpc_latency.items()},
            "journal_fsync": (metrics.journal_fsync.buckets(), metrics.journal_fsync.total),
            "estimated_wait": estimated_wait_histogram(*engine.estimate_counts()),
            "retries": server.retries(),
            "deadlines_fired": counters.deadlines_fired,
            "pending_deadlines": int(engine.pending_deadlines()),
            "watchers": server.hub.subscribers,
            "serving": int(self.serving),
            "journal_writable": int(self.writable),
        }
        totals = engine.totals()
        snap.update(
            shops=totals["shops"],
            agents_online=totals["agents_online"],
            agents_suspended=totals["agents_suspended"],
            live_conversations=totals["live_conversations"],
            queue=totals["queue"],
            staging=totals["staging"],
            pool=totals["pool"],
        )
        return snap
