"""The DispatchBatch wire codec (_fastpath/wire.py, and wire.pyx in the compiled engine).

Three claims, each checked on random and mutated messages:

- the reader reads what the protobuf runtime reads, and declines (None) at
  least everything protobuf rejects;
- the writer writes what protobuf serializes;
- ``dispatch_batch_wire`` answers, byte for byte, like the item-by-item object
  path, on the compiled and the reference engine alike, leaving the same state;
  and so does the unary ``Dispatch`` (``dispatch_wire``, with the object path
  for whatever the engine declines);
- with a clock bound (``max_at_ms``, the server's ``--max-clock-skew``), both
  engines decline exactly the requests with an ``at`` beyond it, changing
  nothing, and the servicer's answers (the refused item alone) are the object
  path's.
"""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _fastpath
from _fastpath import AgentConfig, CompiledEngine, GroupConfig, InvalidArgumentError, ReferenceEngine, ShopConfig
from _fastpath.wire import at_beyond, batch_of_one, encode_response, parse_batch_request, parse_request, response_reason
from dispatcher._gen.dispatch.v1 import dispatch_pb2

T0 = 1_700_000_000_000
ENGINES = [CompiledEngine, ReferenceEngine]

# Ids that exercise the checks: ASCII, CJK (3-byte UTF-8), emoji (4-byte), empty,
# control characters, too long, unknown shop.
ids = st.sampled_from(["s1", "s2", "b1", "b2", "c1", "c2", "淘宝店", "买家😀", "", "a\x01b", "x" * 129, "nope"])
convs = st.one_of(st.sampled_from(["c1", "c2", "会话", ""]), st.text(alphabet="cdef0123", min_size=1, max_size=6))
enums = st.one_of(st.integers(0, 6), st.sampled_from([-1, 2**31 - 1, -(2**31)]))
timestamps = st.one_of(
    st.none(),
    st.builds(lambda s, n: (s, n), st.integers(T0 // 1000 - 10, T0 // 1000 + 10), st.integers(0, 999_999_999)),
    st.builds(lambda s, n: (s, n), st.sampled_from([-5, 0, 253_402_300_799, 253_402_300_800, 2**62]),
              st.sampled_from([0, -1, 1_000_000_000, 999_999_999])),
)  # fmt: skip


@st.composite
def requests(draw: Any) -> dispatch_pb2.DispatchRequest:
    r = dispatch_pb2.DispatchRequest(
        shop_id=draw(st.sampled_from(["s1", "s2", "s1", "nope", "", "淘宝店"])),
        buyer_id=draw(ids),
        conversation_id=draw(convs),
        type=draw(st.sampled_from([0, 1, 1, 1, 2, 4, 9])),
        source=draw(st.sampled_from(["", "", "app", "web", "\x7f"])),
        order_state=draw(enums),
        to_account=draw(st.sampled_from(["", "s1:a0", "x\x02"])),
        trace=draw(st.booleans()) and draw(st.booleans()),
        priority=draw(st.sampled_from([0, 0, 0, 1, 5, 9, 10, 2**32 - 1])),
    )
    at = draw(timestamps)
    if at is not None:
        r.at.CopyFrom(timestamp_pb2.Timestamp(seconds=at[0], nanos=at[1]))
    return r


batches = st.lists(requests(), max_size=12).map(lambda rs: dispatch_pb2.DispatchBatchRequest(requests=rs))


def fields(r: dispatch_pb2.DispatchRequest) -> tuple[Any, ...]:
    at = (r.at.seconds, r.at.nanos) if r.HasField("at") else None
    return (
        r.shop_id, r.buyer_id, r.conversation_id, r.type, r.source, r.order_state, r.to_account, at, r.trace,
        r.priority,
    )  # fmt: skip


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 5)))
    return bytes(data)


# --------------------------------------------------------------------- the reader


@given(batches)
@settings(max_examples=300, deadline=None)
def test_reader_reads_what_protobuf_reads(batch: dispatch_pb2.DispatchBatchRequest) -> None:
    items = parse_batch_request(batch.SerializeToString())
    assert items is not None
    assert [tuple(i) for i in items] == [fields(r) for r in batch.requests]


@given(batches, st.integers(0, 2**32))
@settings(max_examples=500, deadline=None)
def test_reader_never_reads_what_protobuf_rejects(batch: dispatch_pb2.DispatchBatchRequest, seed: int) -> None:
    raw = mutate(batch.SerializeToString(), random.Random(seed))
    items = parse_batch_request(raw)
    try:
        parsed = dispatch_pb2.DispatchBatchRequest.FromString(raw)
    except DecodeError:
        assert items is None
        return
    if items is not None:  # it may decline valid messages (unknown fields, ...), never misread one
        assert [tuple(i) for i in items] == [fields(r) for r in parsed.requests]


def test_reader_declines_unknown_fields_bad_utf8_and_a_second_timestamp() -> None:
    good = dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="b", conversation_id="c").SerializeToString()
    assert parse_batch_request(b"\x0a" + bytes([len(good)]) + good) is not None
    unknown = good + b"\x58\x01"  # field 11, varint
    assert parse_batch_request(b"\x0a" + bytes([len(unknown)]) + unknown) is None
    bad_utf8 = b"\x0a\x02\xc3\x28"  # shop_id: an invalid 2-byte sequence
    assert parse_batch_request(b"\x0a" + bytes([len(bad_utf8)]) + bad_utf8) is None
    surrogate = b"\x0a\x03\xed\xa0\x80"  # a UTF-16 surrogate, encoded: not UTF-8
    assert parse_batch_request(b"\x0a" + bytes([len(surrogate)]) + surrogate) is None
    two_ats = b"\x42\x02\x08\x01\x42\x02\x08\x02"
    assert parse_batch_request(b"\x0a" + bytes([len(two_ats)]) + two_ats) is None
    assert parse_batch_request(b"\x12\x00") is None  # a top-level field other than requests
    assert parse_batch_request(b"") == []


# --------------------------------------------------------------------- the writer


@given(
    st.text(max_size=8), st.integers(0, 12), st.text(max_size=8), st.text(max_size=8),
    st.one_of(st.none(), st.lists(st.text(max_size=6), max_size=3)),
    st.one_of(st.none(), st.tuples(st.integers(0, 16), st.text(max_size=10))),
    st.sampled_from([0, 1, 2, 127, 128, 70_000]),
    st.one_of(st.none(), st.sampled_from([0, 1, 999, 1000, 1001, 61_500, 253_402_300_799_999])),
)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_writer_writes_what_protobuf_serializes(
    conv: str,
    reason: int,
    agent: str,
    group: str,
    trace: list[str] | None,
    error: tuple[int, str] | None,
    position: int,
    eta_ms: int | None,
) -> None:
    expected = dispatch_pb2.DispatchResponse(
        agent_id=agent, reason=reason, group_id=group, trace=trace or [], conversation_id=conv, position=position
    )
    if error is not None:
        expected.error.CopyFrom(status_pb2.Status(code=error[0], message=error[1]))
    if eta_ms is not None:
        expected.estimated_wait.SetInParent()
        expected.estimated_wait.FromMilliseconds(eta_ms)
    raw = encode_response(conv, reason, agent, group, trace, error, position, eta_ms)
    assert raw == expected.SerializeToString()
    assert response_reason(raw) == reason


# --------------------------------------------------------------------- the batch


def build(cls: type) -> Any:
    e = cls(3)
    for shop, strategy in (("s1", 1), ("s2", 3), ("淘宝店", 4)):
        e.put_shop(ShopConfig(shop, f"{shop}:main", strategy=strategy, offline_rule=1 if shop == "s2" else 4))
        for i in range(3):
            e.put_agent(AgentConfig(shop, f"{shop}:a{i}", max_capacity=2))
        e.put_group(GroupConfig(shop, "g", members=(f"{shop}:a0", f"{shop}:a1"), order_states=(1,), sources=("app",)))
    for i in range(3):
        e.set_presence("s1", f"s1:a{i}", 1, 1, T0)
        e.set_presence("淘宝店", f"淘宝店:a{i}", 1, 1, T0)
    return e


def object_path(engine: Any, batch: dispatch_pb2.DispatchBatchRequest, now: int) -> bytes:
    """The servicer's protobuf-object path (``DispatchServicer._batch_objects``), as the expected answer."""
    from dispatcher.server import AssignmentHub, CallCore, Counters, DispatchServicer

    servicer = DispatchServicer(CallCore(engine, AssignmentHub(), Counters()), max_batch=64)
    out = servicer._batch_objects(batch.requests, now, None).SerializeToString()
    engine.drain_outbox()  # as CallCore.call does after every call
    return out


@given(st.lists(batches, min_size=1, max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_wire_batches_answer_like_the_object_path_on_both_engines(seq: list[dispatch_pb2.DispatchBatchRequest]) -> None:
    expected_engine = build(ReferenceEngine)
    engines = [build(cls) for cls in ENGINES]
    for n, batch in enumerate(seq):
        now = T0 + 1000 * n
        expected = object_path(expected_engine, batch, now)
        raw = batch.SerializeToString()
        for e in engines:
            out, failed = e.dispatch_batch_wire(raw, now, 64)
            assert out == expected, type(e).__name__
            parsed = dispatch_pb2.DispatchBatchResponse.FromString(out)
            assert failed == sum(r.HasField("error") for r in parsed.responses)
        for e in engines:
            e.drain_outbox()
    want = expected_engine.export_state()
    for e in engines:
        assert e.export_state() == want
        assert e.decision_counts() == expected_engine.decision_counts()


@pytest.mark.parametrize("cls", ENGINES)
def test_declined_bytes_and_oversized_batches_change_nothing(cls: type) -> None:
    e = build(cls)
    before = e.export_state()
    one = dispatch_pb2.DispatchRequest(shop_id="s1", buyer_id="b", conversation_id="c")
    raw = dispatch_pb2.DispatchBatchRequest(requests=[one] * 3).SerializeToString()
    assert e.dispatch_batch_wire(raw[:-1], T0, 64) is None  # truncated
    with pytest.raises(InvalidArgumentError, match="requests has 3 items; the limit is 2 per batch"):
        e.dispatch_batch_wire(raw, T0, 2)
    assert e.export_state() == before
    out, failed = e.dispatch_batch_wire(raw, T0, 3)
    assert failed == 0  # the same conversation and buyer twice more: retries (§12), the same answer
    answers = dispatch_pb2.DispatchBatchResponse.FromString(out).responses
    assert [r.error.code for r in answers] == [0, 0, 0]
    assert len({(r.agent_id, r.reason) for r in answers}) == 1  # a retry names no group (README: retries)
    other = dispatch_pb2.DispatchRequest(shop_id="s1", buyer_id="b2", conversation_id="c")
    out, failed = e.dispatch_batch_wire(dispatch_pb2.DispatchBatchRequest(requests=[other]).SerializeToString(), T0, 3)
    assert failed == 1  # another buyer on the same conversation id: ALREADY_EXISTS
    assert [r.error.code for r in dispatch_pb2.DispatchBatchResponse.FromString(out).responses] == [6]


@pytest.mark.parametrize("cls", ENGINES)
def test_decisions_are_counted_by_reason_and_picking_strategy(cls: type) -> None:
    e = build(cls)
    e.dispatch("s1", "b1", "c1", T0 + 1, order_state=1)  # group g, the shop's LEAST_SATURATION
    e.dispatch("s2", "b1", "c1", T0 + 1)  # nobody online: OFFLINE_MAIN_ACCOUNT, no strategy
    e.dispatch("s1", "x", "p2p", T0 + 1, conv_type=2, to_account="s1:a0")  # DIRECT
    counts = e.decision_counts()
    assert counts[_fastpath.Reason.GROUP][_fastpath.Strategy.LEAST_SATURATION] == 1
    assert counts[_fastpath.Reason.OFFLINE_MAIN_ACCOUNT][0] == 1
    assert counts[_fastpath.Reason.DIRECT][0] == 1
    assert sum(map(sum, counts)) == 3
    counts[1][0] = 99  # a copy
    assert e.decision_counts()[1][0] == 1


# --------------------------------------------------------------------- unary Dispatch


@given(requests(), st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_the_unary_reader_reads_what_protobuf_reads_and_nothing_it_rejects(
    r: dispatch_pb2.DispatchRequest, seed: int
) -> None:
    raw = r.SerializeToString()
    item = parse_request(raw)
    assert item is not None and tuple(item) == fields(r)
    assert parse_batch_request(batch_of_one(raw)) == [item]
    mutated = mutate(raw, random.Random(seed))
    item = parse_request(mutated)
    try:
        parsed = dispatch_pb2.DispatchRequest.FromString(mutated)
    except DecodeError:
        assert item is None
        return
    if item is not None:
        assert tuple(item) == fields(parsed)


class _ObjectPathOnly:
    """An engine whose wire reader declines everything: the servicer's object path alone."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def dispatch_wire(self, data: bytes, now_ms: int, max_at_ms: int | None = None) -> None:
        return None

    def dispatch_batch_wire(self, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None) -> None:
        return None


def unary_outcome(servicer: Any, raw: bytes) -> Any:
    try:
        out = servicer._unary(raw)
    except _fastpath.DispatchError as exc:
        out = (exc.grpc_status, str(exc))
    servicer._engine.drain_outbox()  # as CallCore.call does after every call
    return out


ordinary_requests = st.builds(
    dispatch_pb2.DispatchRequest,
    shop_id=st.sampled_from(["s1", "s2", "淘宝店"]),
    buyer_id=st.sampled_from(["b1", "b2", "买家😀"]),
    conversation_id=convs.filter(bool),
    type=st.sampled_from([0, 1]),
    source=st.sampled_from(["", "app"]),
    order_state=st.integers(0, 5),
)
"""Requests the compiled engine decides on its wire fast path (unless the conversation exists)."""


@given(st.lists(st.tuples(st.one_of(requests(), ordinary_requests), st.integers(0, 2**32)), min_size=1, max_size=16))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_unary_dispatch_answers_like_the_object_path_on_both_engines(seq: list[tuple[Any, int]]) -> None:
    """``DispatchServicer._unary`` over each engine's ``dispatch_wire`` against the object path alone:
    the same bytes or the same refusal for every request (some mutated), and the same state."""
    from dispatcher import server as server_module
    from dispatcher.server import AssignmentHub, CallCore, Counters, DispatchServicer

    expected_engine = build(ReferenceEngine)
    engines = [build(cls) for cls in ENGINES]
    servicers = [DispatchServicer(CallCore(e, AssignmentHub(), Counters()), max_batch=64) for e in engines]
    expected = DispatchServicer(CallCore(_ObjectPathOnly(expected_engine), AssignmentHub(), Counters()), max_batch=64)
    for n, (request, seed) in enumerate(seq):
        raw = request.SerializeToString()
        if seed % 4 == 0:
            raw = mutate(raw, random.Random(seed))
        with mock.patch.object(server_module, "now_ms", lambda n=n: T0 + 1000 * n):
            want = unary_outcome(expected, raw)
            for e, servicer in zip(engines, servicers, strict=False):
                assert unary_outcome(servicer, raw) == want, type(e).__name__
    for e in engines:
        assert e.export_state() == expected_engine.export_state()
        assert e.decision_counts() == expected_engine.decision_counts()


@pytest.mark.parametrize("cls", ENGINES)
def test_unary_wire_declines_without_changing_anything(cls: type) -> None:
    e = build(cls)
    before = e.export_state()
    raw = dispatch_pb2.DispatchRequest(shop_id="s1", buyer_id="b", conversation_id="c").SerializeToString()
    assert e.dispatch_wire(raw[:-1], T0) is None  # truncated
    assert e.dispatch_wire(raw + b"\x58\x01", T0) is None  # an unknown field: protobuf's to read
    assert e.export_state() == before
    reason, agent_id, group_id, _ = build(cls).dispatch("s1", "b", "c", T0)
    assert agent_id is not None and agent_id.startswith("s1:a")
    assert e.dispatch_wire(raw, T0) == encode_response("c", reason, agent_id, group_id)
    assert e.export_state() != before


# --------------------------------------------------------------------- the clock bound

SKEW = 3000
"""The bound of these tests (ms): small, so that random times fall on both sides of it."""

near = st.one_of(
    st.none(),
    st.builds(lambda s, n: (s, n), st.integers(T0 // 1000 - 5, T0 // 1000 + 25), st.sampled_from([0, 1_000_000, 999_999_999])),
    st.builds(lambda s, n: (s, n), st.sampled_from([-5, 0, 253_402_300_799, 253_402_300_800, 2**62]),
              st.sampled_from([0, -1, 1_000_000_000, 999_999_999])),
)  # fmt: skip


@st.composite
def timed_requests(draw: Any) -> dispatch_pb2.DispatchRequest:
    r = draw(st.one_of(requests(), ordinary_requests))
    r.ClearField("at")
    at = draw(near)
    if at is not None:
        r.at.CopyFrom(timestamp_pb2.Timestamp(seconds=at[0], nanos=at[1]))
    return r


def beyond(r: dispatch_pb2.DispatchRequest, max_at: int) -> bool:
    """The bound, from protobuf's fields: a valid time (as the engine accepts) later than max_at."""
    if not r.HasField("at"):
        return False
    valid = 0 <= r.at.nanos < 10**9 and 0 <= r.at.seconds <= 253_402_300_799
    return valid and r.at.seconds * 1000 + r.at.nanos // 10**6 > max_at


@given(st.lists(timed_requests(), max_size=8), st.integers(0, 20))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_both_engines_decline_exactly_what_is_beyond_the_bound_and_change_nothing(
    items: list[dispatch_pb2.DispatchRequest], n: int
) -> None:
    now = T0 + 1000 * n
    max_at = now + SKEW
    raw = dispatch_pb2.DispatchBatchRequest(requests=items).SerializeToString()
    refused = any(beyond(r, max_at) for r in items)
    assert any(at_beyond(i, max_at) for i in parse_batch_request(raw) or []) == refused
    answers = []
    for cls in ENGINES:
        e = build(cls)
        before = e.export_state()
        answer = e.dispatch_batch_wire(raw, now, 64, max_at)
        if refused:
            assert answer is None, cls.__name__
            assert e.export_state() == before
        else:  # no item beyond it: as without a bound
            assert answer == build(cls).dispatch_batch_wire(raw, now, 64), cls.__name__
        answers.append(answer)
        for r in items:
            one = r.SerializeToString()
            fresh = build(cls)
            if beyond(r, max_at):
                assert fresh.dispatch_wire(one, now, max_at) is None, cls.__name__
                assert fresh.export_state() == before
    assert answers[0] == answers[1]
    # No bound (journal replay): nothing is declined for its time.
    assert build(ReferenceEngine).dispatch_batch_wire(raw, now, 64) is not None


def test_the_bound_is_a_plain_integer_on_both_engines() -> None:
    """Any Python int means the same to both engines (None and beyond year 9999: no bound)."""
    late = dispatch_pb2.DispatchRequest(shop_id="s1", buyer_id="b", conversation_id="c")
    late.at.FromMilliseconds(T0 + 1)
    raw = late.SerializeToString()
    for bound, declined in ((None, False), (T0 + 1, False), (T0, True), (0, True), (-(2**80), True), (2**80, False),
                            (253_402_300_799_999, False), (253_402_300_799_998, False)):  # fmt: skip
        for cls in ENGINES:
            assert (build(cls).dispatch_wire(raw, T0, bound) is None) == declined, (cls.__name__, bound)
            assert (build(cls).dispatch_batch_wire(batch_of_one(raw), T0, 4, bound) is None) == declined


def outcome(servicer: Any, call: Any) -> Any:
    try:
        out = call()
    except _fastpath.DispatchError as exc:
        out = (exc.grpc_status, str(exc))
    servicer._engine.drain_outbox()  # as CallCore.call does after every call
    return out


@given(st.lists(st.tuples(st.lists(timed_requests(), min_size=1, max_size=6), st.booleans()), min_size=1, max_size=8))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_with_a_bound_the_servicer_answers_like_the_object_path_on_both_engines(seq: list[tuple[Any, bool]]) -> None:
    """``_batch`` and ``_unary`` with a clock bound, over each engine, against the object path alone:
    an item beyond the bound is refused by itself (INVALID_ARGUMENT, naming the bound), the others
    are answered, and the engines end in the same state."""
    from dispatcher import server as server_module
    from dispatcher.server import AssignmentHub, CallCore, Counters, DispatchServicer

    expected_engine = build(ReferenceEngine)
    engines = [build(cls) for cls in ENGINES]
    servicers = [DispatchServicer(CallCore(e, AssignmentHub(), Counters()), 64, SKEW) for e in engines]
    expected = DispatchServicer(CallCore(_ObjectPathOnly(expected_engine), AssignmentHub(), Counters()), 64, SKEW)
    for n, (items, unary) in enumerate(seq):
        with mock.patch.object(server_module, "now_ms", lambda n=n: T0 + 1000 * n):
            if unary:
                raw = items[0].SerializeToString()
                want = outcome(expected, lambda: expected._unary(raw))
                if beyond(items[0], T0 + 1000 * n + SKEW):
                    assert want[0] == "INVALID_ARGUMENT" and "ahead of the server clock" in want[1]
                for s in servicers:
                    assert outcome(s, lambda s=s: s._unary(raw)) == want
            else:
                raw = dispatch_pb2.DispatchBatchRequest(requests=items).SerializeToString()
                want = outcome(expected, lambda: expected._batch(raw))
                for r, answer in zip(
                    items, dispatch_pb2.DispatchBatchResponse.FromString(want).responses, strict=False
                ):
                    if beyond(r, T0 + 1000 * n + SKEW):
                        assert answer.error.code == 3 and "the bound is 3 s (--max-clock-skew)" in answer.error.message
                for s in servicers:
                    assert outcome(s, lambda s=s: s._batch(raw)) == want
    for e in engines:
        assert e.export_state() == expected_engine.export_state()
        assert e.decision_counts() == expected_engine.decision_counts()
