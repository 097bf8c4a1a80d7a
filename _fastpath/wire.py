"""``dispatch.v1`` batch messages on the wire, in plain Python: the reference
for the compiled codec in ``wire.pyx``.

``DispatchBatch`` and ``DispatchStream`` hand the engine the raw bytes of a
``DispatchBatchRequest`` and get back the bytes of its
``DispatchBatchResponse`` (``Engine.dispatch_batch_wire``): no protobuf
objects per item. The field numbers here are the ones of
``protos/dispatch/v1/dispatch.proto``; ``tests/test_wire.py`` checks this
codec against the protobuf runtime on random and mutated messages.

The reader is deliberately narrow. It accepts exactly the fields a
``DispatchRequest`` has, each with its declared wire type, with every string
valid UTF-8, and returns ``None`` for anything else (unknown fields, a
repeated ``at``, groups, truncation, bad UTF-8). ``None`` means "not read
here": the server then parses the bytes with the protobuf runtime, which
either rejects them (``INVALID_ARGUMENT``) or, for valid messages this reader
declines (unknown fields, ...), dispatches them item by item the ordinary
way. Whenever the reader does answer, protobuf would have read the same
values.

The per-item semantics are those of the object path in
``dispatcher/server.py``: an item without ``at`` takes the batch's ``now``;
an item's error becomes its own ``google.rpc.Status`` with the gRPC code
number of the engine's typed error.

Time from callers is bounded by the server (``--max-clock-skew``): both
readers take an optional ``max_at_ms`` and decline (``None``, nothing
changed) a request with an item whose ``at`` is a valid time later than it
(``at_beyond``). The server's object path then refuses that item with
INVALID_ARGUMENT, naming the bound. Without ``max_at_ms`` (journal replay),
nothing is declined for its time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeVar

from .contract import Assignment, DispatchCall, EngineProtocol
from .model import LATEST_SECONDS, DispatchError, InvalidArgumentError, Reason, timestamp_to_ms

__all__ = [
    "GRPC_CODE_NUMBERS",
    "OPERATION_KINDS",
    "OP_CLAIM_FROM_POOL",
    "OP_DISPATCH",
    "OP_REPORT_CONVERSATION",
    "OP_SET_PRESENCE",
    "WireClaim",
    "WireEvent",
    "WireItem",
    "WireOperation",
    "WirePresence",
    "check_operations_size",
    "encode_assignment",
    "WAITING_REASONS",
    "encode_claim_response",
    "encode_decision",
    "encode_event_response",
    "encode_operate_response",
    "encode_presence_response",
    "encode_result",
    "encode_result_error",
    "error_code",
    "operation_at",
    "operations_beyond",
    "parse_operate_request",
    "at_beyond",
    "batch_of_one",
    "check_batch_size",
    "dispatch_item",
    "encode_batch_response",
    "encode_response",
    "encode_status",
    "parse_batch_request",
    "parse_request",
    "reference_dispatch_batch_wire",
    "reference_dispatch_wire",
    "response_reason",
]

GRPC_CODE_NUMBERS: Final = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}  # fmt: skip
"""gRPC status names (``DispatchError.grpc_status``) to their numbers (``google.rpc.Status.code``)."""

_VARINT: Final = 0
_LEN: Final = 2
_STRING_FIELDS: Final = {1: "shop_id", 2: "buyer_id", 3: "conversation_id", 5: "source", 7: "to_account"}
_MASK64: Final = (1 << 64) - 1


class WireItem(NamedTuple):
    """One ``DispatchRequest`` as read from the wire (proto3 defaults for absent fields)."""

    shop_id: str = ""
    buyer_id: str = ""
    conversation_id: str = ""
    type: int = 0
    source: str = ""
    order_state: int = 0
    to_account: str = ""
    at: tuple[int, int] | None = None  # (seconds, nanos) when the field is present
    trace: bool = False
    priority: int = 0  # uint32 on the wire (field 10); the engine refuses above 9

    def call(self, now_ms: int) -> DispatchCall:
        """The engine call of this item; an absent ``at`` is ``now_ms`` (a bad one raises)."""
        at = timestamp_to_ms(self.at[0], self.at[1], "at") if self.at is not None else now_ms
        return DispatchCall(
            self.shop_id, self.buyer_id, self.conversation_id, at, self.type, self.source, self.order_state,
            self.to_account, self.trace, self.priority,
        )  # fmt: skip


_Dispatcher = EngineProtocol


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for i in range(10):
        if pos >= len(data):
            raise _Malformed
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if i == 9 and b > 1:  # bits beyond the 64th
                raise _Malformed
            return result & _MASK64, pos
        shift += 7
    raise _Malformed


def _int32(v: int) -> int:
    """A varint read as protobuf's int32 (and enum): the low 32 bits, two's complement."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    n, pos = _varint(data, pos)
    if n > end - pos:
        raise _Malformed
    return pos + n, pos


def _timestamp(data: bytes, pos: int, end: int) -> tuple[int, int]:
    seconds = nanos = 0
    while pos < end:
        key, pos = _varint(data, pos)
        if key == (1 << 3) | _VARINT:
            v, pos = _varint(data, pos)
            seconds = _int64(v)
        elif key == (2 << 3) | _VARINT:
            v, pos = _varint(data, pos)
            nanos = _int32(v)
        else:
            raise _Malformed
    if pos != end:
        raise _Malformed
    return seconds, nanos


def _item(data: bytes, pos: int, end: int) -> WireItem:
    fields: dict[str, Any] = {}
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number in _STRING_FIELDS and wire_type == _LEN:
            stop, start = _length(data, pos, end)
            try:
                fields[_STRING_FIELDS[number]] = data[start:stop].decode("utf-8")
            except UnicodeDecodeError:
                raise _Malformed from None
            pos = stop
        elif number in (4, 6) and wire_type == _VARINT:
            v, pos = _varint(data, pos)
            fields["type" if number == 4 else "order_state"] = _int32(v)
        elif number == 8 and wire_type == _LEN:
            if "at" in fields:  # protobuf would merge two Timestamps; leave that to it
                raise _Malformed
            stop, start = _length(data, pos, end)
            fields["at"] = _timestamp(data, start, stop)
            pos = stop
        elif number == 9 and wire_type == _VARINT:
            v, pos = _varint(data, pos)
            fields["trace"] = v != 0
        elif number == 10 and wire_type == _VARINT:
            v, pos = _varint(data, pos)
            fields["priority"] = v & 0xFFFFFFFF  # uint32: the low 32 bits
        else:
            raise _Malformed
    if pos != end:
        raise _Malformed
    return WireItem(**fields)


_T = TypeVar("_T")


def _elements(data: bytes, read: Callable[[bytes, int, int], _T]) -> list[_T] | None:
    """The elements of a batch message's field 1 (repeated, length-delimited), each read by
    ``read(data, start, stop)``; ``None`` if this reader declines the bytes."""
    out = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            key, pos = _varint(data, pos)
            if key != (1 << 3) | _LEN:
                return None
            stop, start = _length(data, pos, end)
            out.append(read(data, start, stop))
            pos = stop
    except _Malformed:
        return None
    return out


def parse_batch_request(data: bytes) -> list[WireItem] | None:
    """The items of a ``DispatchBatchRequest``, or ``None`` if this reader declines the bytes."""
    return _elements(data, _item)


def parse_request(data: bytes) -> WireItem | None:
    """One ``DispatchRequest`` (unary ``Dispatch``), or ``None`` if this reader declines the bytes."""
    try:
        return _item(data, 0, len(data))
    except _Malformed:
        return None


def at_beyond(item: WireItem, max_at_ms: int | None) -> bool:
    """Whether ``item`` has an ``at`` that is a valid time (nanos in 0..999999999,
    1970..9999) later than ``max_at_ms`` (``None``: no bound). An invalid ``at``
    is not "beyond": the engine refuses it item by item, as without a bound."""
    if item.at is None or max_at_ms is None:
        return False
    seconds, nanos = item.at
    if not (0 <= nanos < 1_000_000_000 and 0 <= seconds <= LATEST_SECONDS):
        return False
    return seconds * 1000 + nanos // 1_000_000 > max_at_ms


# --------------------------------------------------------------------- writing


def _put_varint(out: bytearray, v: int) -> None:
    v &= _MASK64
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _put_bytes(out: bytearray, number: int, raw: bytes) -> None:
    if raw:
        _put_varint(out, (number << 3) | _LEN)
        _put_varint(out, len(raw))
        out += raw


def encode_status(code: int, message: str, details: tuple[bytes, ...] = ()) -> bytes:
    """A ``google.rpc.Status`` with ``code`` (1), ``message`` (2) and ``details`` (3: serialized Any messages)."""
    out = bytearray()
    if code:
        _put_varint(out, (1 << 3) | _VARINT)
        _put_varint(out, code)
    _put_bytes(out, 2, message.encode("utf-8"))
    for detail in details:
        _put_message(out, 3, detail)
    return bytes(out)


def encode_response(
    conversation_id: str,
    reason: int = 0,
    agent_id: str | None = None,
    group_id: str | None = None,
    trace: list[str] | None = None,
    error: tuple[int, str] | tuple[int, str, tuple[bytes, ...]] | None = None,
    position: int = 0,
    estimated_wait_ms: int | None = None,
) -> bytes:
    """One ``DispatchResponse``, fields in number order, proto3 defaults omitted;
    ``estimated_wait`` (a Duration) is written when ``estimated_wait_ms`` is not None."""
    out = bytearray()
    _put_bytes(out, 1, (agent_id or "").encode("utf-8"))
    if reason:
        _put_varint(out, (2 << 3) | _VARINT)
        _put_varint(out, reason)
    _put_bytes(out, 3, (group_id or "").encode("utf-8"))
    for line in trace or ():
        _put_varint(out, (4 << 3) | _LEN)  # a repeated string: empty lines are kept
        raw = line.encode("utf-8")
        _put_varint(out, len(raw))
        out += raw
    if error is not None:
        status = encode_status(*error)
        _put_varint(out, (5 << 3) | _LEN)  # a set message field is written even when empty
        _put_varint(out, len(status))
        out += status
    _put_bytes(out, 6, conversation_id.encode("utf-8"))
    if position:
        _put_varint(out, (7 << 3) | _VARINT)
        _put_varint(out, position)
    if estimated_wait_ms is not None:
        _put_message(out, 8, _duration(estimated_wait_ms))
    return bytes(out)


def _duration(ms: int) -> bytes:
    """A ``google.protobuf.Duration`` of ``ms`` >= 0: seconds (1), nanos (2), zeros omitted."""
    seconds, millis = divmod(ms, 1000)
    out = bytearray()
    if seconds:
        _put_varint(out, (1 << 3) | _VARINT)
        _put_varint(out, seconds)
    if millis:
        _put_varint(out, (2 << 3) | _VARINT)
        _put_varint(out, millis * 1_000_000)
    return bytes(out)


WAITING_REASONS: Final = frozenset({int(Reason.QUEUED), int(Reason.OFFLINE_STAGING), int(Reason.OFFLINE_MESSAGE_POOL)})
"""The answers of a conversation that waits: they carry its position and estimated wait (§11)."""


def encode_decision(
    engine: _Dispatcher,
    shop_id: str,
    conversation_id: str,
    decision: tuple[int, str | None, str | None, list[str] | None],
) -> bytes:
    """The ``DispatchResponse`` of a ``dispatch`` answer: a waiting one (``WAITING_REASONS``)
    with the position and estimated wait the engine reports (``waiting_position``)."""
    reason, agent_id, group_id, trace = decision
    place = engine.waiting_position(shop_id, conversation_id) if reason in WAITING_REASONS else None
    if place is not None and place[1] is not None:
        engine.note_estimate(place[1])
    if place is None:
        return encode_response(conversation_id, reason, agent_id, group_id, trace)
    return encode_response(
        conversation_id, reason, agent_id, group_id, trace, position=place[0], estimated_wait_ms=place[1]
    )


def encode_batch_response(responses: list[bytes]) -> bytes:
    out = bytearray()
    for response in responses:
        _put_varint(out, (1 << 3) | _LEN)
        _put_varint(out, len(response))
        out += response
    return bytes(out)


# --------------------------------------------------------------------- the batch


def check_batch_size(n: int, max_items: int) -> None:
    if n > max_items:
        raise InvalidArgumentError(f"requests has {n} items; the limit is {max_items} per batch")


def dispatch_item(engine: _Dispatcher, item: WireItem, now_ms: int) -> tuple[bytes, bool]:
    """One item, exactly as the object path does it; its error goes in its response.
    Returns the encoded ``DispatchResponse`` and whether it is an error."""
    try:
        decision = engine.dispatch(*item.call(now_ms))
    except DispatchError as exc:
        code = GRPC_CODE_NUMBERS.get(exc.grpc_status, GRPC_CODE_NUMBERS["INTERNAL"])
        return encode_response(item.conversation_id, error=(code, str(exc), exc.details)), True
    return encode_decision(engine, item.shop_id, item.conversation_id, decision), False


def response_reason(response: bytes) -> int:
    """The ``reason`` of a ``DispatchResponse`` encoded here (fields in number order:
    ``agent_id`` = 1, then ``reason`` = 2); 0 when it has none."""
    pos = 0
    if response[:1] == b"\x0a":
        length, start = _varint(response, 1)
        pos = start + length
    if response[pos : pos + 1] != b"\x10":
        return 0
    return _varint(response, pos + 1)[0]


def batch_of_one(request: bytes) -> bytes:
    """The ``DispatchBatchRequest`` that carries just this ``DispatchRequest``."""
    out = bytearray()
    _put_varint(out, (1 << 3) | _LEN)
    _put_varint(out, len(request))
    out += request
    return bytes(out)


def reference_dispatch_wire(
    engine: _Dispatcher, data: bytes, now_ms: int, max_at_ms: int | None = None
) -> bytes | None:
    """``Engine.dispatch_wire`` in plain Python: the ``DispatchResponse`` bytes,
    the ``DispatchError`` the object path would raise, or ``None`` (nothing
    changed) when this reader declines the bytes or the ``at`` is beyond
    ``max_at_ms`` (``at_beyond``). The compiled engine also answers ``None``
    for any request that is not ordinary; both are allowed."""
    item = parse_request(bytes(data))
    if item is None or at_beyond(item, max_at_ms):
        return None
    return encode_decision(engine, item.shop_id, item.conversation_id, engine.dispatch(*item.call(now_ms)))


def reference_dispatch_batch_wire(
    engine: _Dispatcher, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
) -> tuple[bytes, int] | None:
    """``Engine.dispatch_batch_wire`` in plain Python: (response bytes, items that failed) or None
    (nothing changed: the reader declines the bytes, or an item's ``at`` is beyond ``max_at_ms``)."""
    items = parse_batch_request(bytes(data))
    if items is None or any(at_beyond(item, max_at_ms) for item in items):
        return None
    check_batch_size(len(items), max_items)
    answers = [dispatch_item(engine, item, now_ms) for item in items]
    return encode_batch_response([raw for raw, _ in answers]), sum(failed for _, failed in answers)


# --------------------------------------------------------------------- Operate (issue 13)
#
# ``OperateRequest``: 1 = repeated ``Operation``; an ``Operation`` sets exactly one of
# 1 dispatch (DispatchRequest), 2 set_presence, 3 report_conversation, 4 claim_from_pool.
# The reader declines (``None``) an operation with no kind or more than one (the object
# path refuses the first, and protobuf's last-one-wins settles the second), exactly as it
# declines anything unusual in a DispatchRequest.

OP_DISPATCH: Final = 1
OP_SET_PRESENCE: Final = 2
OP_REPORT_CONVERSATION: Final = 3
OP_CLAIM_FROM_POOL: Final = 4
OPERATION_KINDS: Final = ("", "dispatch", "set_presence", "report_conversation", "claim_from_pool")
"""The ``Operation.kind`` names by field number (index 0 unused)."""


class WirePresence(NamedTuple):
    """A ``SetPresenceRequest``: 1 shop_id, 2 agent_id, 3 presence, 4 client, 5 at."""

    shop_id: str = ""
    agent_id: str = ""
    presence: int = 0
    client: int = 0
    at: tuple[int, int] | None = None


class WireEvent(NamedTuple):
    """A ``ReportConversationRequest``: 1 shop_id, 2 conversation_id, 3 buyer_id, 4 event,
    5 agent_id, 6 to_agent_id, 7 to_group_id, 8 at."""

    shop_id: str = ""
    conversation_id: str = ""
    buyer_id: str = ""
    event: int = 0
    agent_id: str = ""
    to_agent_id: str = ""
    to_group_id: str = ""
    at: tuple[int, int] | None = None


class WireClaim(NamedTuple):
    """A ``ClaimFromPoolRequest``: 1 shop_id, 2 agent_id, 3 conversation_id, 4 at."""

    shop_id: str = ""
    agent_id: str = ""
    conversation_id: str = ""
    at: tuple[int, int] | None = None


WireOperation = tuple[int, "WireItem | WirePresence | WireEvent | WireClaim"]
"""(kind: OP_*, the request)."""

# For each message: its string fields, enum (varint) fields, and the number of its ``at``.
_LAYOUTS: Final = {
    OP_SET_PRESENCE: (WirePresence, {1: "shop_id", 2: "agent_id"}, {3: "presence", 4: "client"}, 5),
    OP_REPORT_CONVERSATION: (
        WireEvent,
        {1: "shop_id", 2: "conversation_id", 3: "buyer_id", 5: "agent_id", 6: "to_agent_id", 7: "to_group_id"},
        {4: "event"},
        8,
    ),
    OP_CLAIM_FROM_POOL: (WireClaim, {1: "shop_id", 2: "agent_id", 3: "conversation_id"}, {}, 4),
}


def _message(kind: int, data: bytes, pos: int, end: int) -> WirePresence | WireEvent | WireClaim:
    cls, strings, enums, at_number = _LAYOUTS[kind]
    fields: dict[str, Any] = {}
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number in strings and wire_type == _LEN:
            stop, start = _length(data, pos, end)
            try:
                fields[strings[number]] = data[start:stop].decode("utf-8")
            except UnicodeDecodeError:
                raise _Malformed from None
            pos = stop
        elif number in enums and wire_type == _VARINT:
            v, pos = _varint(data, pos)
            fields[enums[number]] = _int32(v)
        elif number == at_number and wire_type == _LEN:
            if "at" in fields:
                raise _Malformed
            stop, start = _length(data, pos, end)
            fields["at"] = _timestamp(data, start, stop)
            pos = stop
        else:
            raise _Malformed
    if pos != end:
        raise _Malformed
    return cls(**fields)  # type: ignore[no-any-return]


def _operation(data: bytes, pos: int, end: int) -> WireOperation:
    found: WireOperation | None = None
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if found is not None or wire_type != _LEN or not OP_DISPATCH <= number <= OP_CLAIM_FROM_POOL:
            raise _Malformed  # a second kind, an unknown field
        stop, start = _length(data, pos, end)
        found = (number, _item(data, start, stop) if number == OP_DISPATCH else _message(number, data, start, stop))
        pos = stop
    if found is None or pos != end:
        raise _Malformed  # no kind: the object path refuses the whole call
    return found


def parse_operate_request(data: bytes) -> list[WireOperation] | None:
    """The operations of an ``OperateRequest``, or ``None`` if this reader declines the bytes."""
    return _elements(data, _operation)


def operation_at(item: WireItem | WirePresence | WireEvent | WireClaim, now_ms: int) -> int:
    """The operation's time: its ``at`` (a bad one raises, as in the object path) or ``now_ms``."""
    return timestamp_to_ms(item.at[0], item.at[1], "at") if item.at is not None else now_ms


def operations_beyond(ops: list[WireOperation], max_at_ms: int | None) -> bool:
    """Whether any operation's ``at`` is a valid time later than ``max_at_ms`` (see ``at_beyond``)."""
    return max_at_ms is not None and any(at_beyond(item, max_at_ms) for _, item in ops)  # type: ignore[arg-type]


def _put_message(out: bytearray, number: int, raw: bytes) -> None:
    """A message field that is set: written even when empty."""
    _put_varint(out, (number << 3) | _LEN)
    _put_varint(out, len(raw))
    out += raw


def encode_assignment(item: Assignment) -> bytes:
    """An ``Assignment`` from an outbox hand-out (shop, conversation, buyer, agent, reason, at_ms[, previous agent])."""
    shop_id, conversation_id, buyer_id, agent_id, reason, at_ms = item[:6]
    out = bytearray()
    _put_bytes(out, 1, shop_id.encode("utf-8"))
    _put_bytes(out, 2, conversation_id.encode("utf-8"))
    _put_bytes(out, 3, buyer_id.encode("utf-8"))
    _put_bytes(out, 4, agent_id.encode("utf-8"))
    if reason:
        _put_varint(out, (5 << 3) | _VARINT)
        _put_varint(out, reason)
    seconds, millis = divmod(at_ms, 1000)
    ts = bytearray()
    if seconds:
        _put_varint(ts, (1 << 3) | _VARINT)
        _put_varint(ts, seconds)
    if millis:
        _put_varint(ts, (2 << 3) | _VARINT)
        _put_varint(ts, millis * 1_000_000)
    _put_message(out, 6, bytes(ts))
    if len(item) > 6:
        _put_bytes(out, 7, item[6].encode("utf-8"))  # previous_agent_id (§10 re-route / reclaim)
    return bytes(out)


def encode_presence_response(handed: list[Assignment]) -> bytes:
    """A ``SetPresenceResponse``: 1 = repeated Assignment."""
    out = bytearray()
    for item in handed:
        _put_message(out, 1, encode_assignment(item))
    return bytes(out)


def encode_event_response(agent_id: str | None, handed: list[Assignment]) -> bytes:
    """A ``ReportConversationResponse``: 1 agent_id, 2 = repeated Assignment."""
    out = bytearray()
    _put_bytes(out, 1, (agent_id or "").encode("utf-8"))
    for item in handed:
        _put_message(out, 2, encode_assignment(item))
    return bytes(out)


def encode_claim_response(conversation_id: str, buyer_id: str, agent_id: str) -> bytes:
    """A ``ClaimFromPoolResponse``: 1 conversation_id, 2 buyer_id, 3 agent_id."""
    out = bytearray()
    _put_bytes(out, 1, conversation_id.encode("utf-8"))
    _put_bytes(out, 2, buyer_id.encode("utf-8"))
    _put_bytes(out, 3, agent_id.encode("utf-8"))
    return bytes(out)


def encode_result(kind: int, body: bytes) -> bytes:
    """An ``OperationResult`` holding the response of its kind (field = the kind's number)."""
    out = bytearray()
    _put_message(out, kind, body)
    return bytes(out)


def encode_result_error(code: int, message: str, details: tuple[bytes, ...] = ()) -> bytes:
    """An ``OperationResult`` holding only its ``error`` (5)."""
    out = bytearray()
    _put_message(out, 5, encode_status(code, message, details))
    return bytes(out)


def encode_operate_response(results: list[bytes]) -> bytes:
    """An ``OperateResponse``: 1 = repeated OperationResult."""
    return encode_batch_response(results)  # the same framing: field 1, repeated, length-delimited


def check_operations_size(n: int, max_items: int) -> None:
    if n > max_items:
        raise InvalidArgumentError(f"operations has {n} items; the limit is {max_items} per batch")


def error_code(exc: DispatchError) -> int:
    return GRPC_CODE_NUMBERS.get(exc.grpc_status, GRPC_CODE_NUMBERS["INTERNAL"])
