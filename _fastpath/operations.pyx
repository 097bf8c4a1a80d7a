# operations: Operate (issue 13): CompiledEngine.operate_wire reads a serialized
# OperateRequest (a batch of any mix of dispatch, set_presence,
# report_conversation and claim_from_pool operations), applies each operation
# in order exactly as its unary call does, and writes the OperateResponse
# bytes itself. Included by _core.pyx; WireOperation is in operations.pxd.
#
# The reference is _fastpath/reference/operations.py with the codec of
# _fastpath/wire.py (section "Operate (issue 13)": parse_operate_request,
# operations_beyond, check_operations_size, encode_result, encode_result_error,
# encode_presence_response, encode_event_response, encode_claim_response,
# encode_assignment): the same accepted inputs, the same None for everything
# else, the same bytes out, the same state after.
#
# Invariants:
# - reading finishes before anything changes: a batch the reader declines (no
#   kind, two kinds, an unknown field, malformed, bad UTF-8, a repeated `at`)
#   or with an `at` beyond max_at_ms is None, and more than max_items
#   operations is InvalidArgumentError, both with nothing changed;
# - every operation counts in engine.operations[kind], failed or not;
# - an ordinary operation touches no Python object: dispatches through wire's
#   wire_decide, BUYER_MESSAGE / AGENT_REPLY / CLOSED of a served conversation
#   and set_presence on the C structures (Shop.find_agent, the ByteMaps). A fast
#   path either applies the operation whole or declines with nothing changed;
#   a declined operation (a trace, a refusal, another event, a claim, a §10
#   deadline of its shop due by its time) then takes the slow path: the engine's own Python-level method, whose
#   DispatchError becomes the operation's `error` (field 5);
# - an operation's hand-outs are the outbox entries it appended, written as
#   its answer's `assignments`; they stay in the outbox (drain_outbox).


# --------------------------------------------------------------------- reading

cdef inline int ops_string(int32_t kind, uint64_t number) noexcept nogil:
    """The OPS_* index of string field ``number`` of a ``kind`` request, or -1."""
    if number == 1:
        return OPS_SHOP
    if kind == OP_SET_PRESENCE:
        return OPS_AGENT if number == 2 else -1
    if kind == OP_CLAIM_FROM_POOL:
        return OPS_AGENT if number == 2 else OPS_CONVERSATION if number == 3 else -1
    if number == 2:
        return OPS_CONVERSATION
    if number == 3:
        return OPS_BUYER
    if number == 5:
        return OPS_AGENT
    if number == 6:
        return OPS_TO_AGENT
    if number == 7:
        return OPS_TO_GROUP
    return -1


cdef inline Py_ssize_t read_message(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end, int32_t kind,
                                    WireOperation* op) noexcept nogil:
    """A SetPresenceRequest, ReportConversationRequest or ClaimFromPoolRequest (``kind``)
    in [pos, end), as wire._message: its strings, its enums, at most one ``at``."""
    cdef uint64_t key, v
    cdef uint64_t at_key = 0x2A if kind == OP_SET_PRESENCE else 0x42 if kind == OP_REPORT_CONVERSATION else 0x22
    cdef Py_ssize_t stop
    cdef int k
    while pos < end:
        pos = read_varint(d, pos, end, &key)
        if pos < 0:
            return -1
        if (key & 7) == 2:
            k = ops_string(kind, key >> 3)
            if k < 0 and key != at_key:
                return -1
            pos = read_varint(d, pos, end, &v)
            if pos < 0 or v > <uint64_t>(end - pos):
                return -1
            stop = pos + <Py_ssize_t>v
            if k < 0:  # the `at` (google.protobuf.Timestamp), at most once
                if op.item.has_at or read_timestamp(d, pos, stop, &op.item) != stop:
                    return -1
                op.item.has_at = 1
            else:
                if not valid_utf8(d + pos, stop - pos):
                    return -1
                op.off[k] = pos
                op.len[k] = stop - pos
            pos = stop
        elif key == 0x18 and kind == OP_SET_PRESENCE or key == 0x20 and kind != OP_CLAIM_FROM_POOL:
            pos = read_varint(d, pos, end, &v)
            if pos < 0:
                return -1
            if kind == OP_REPORT_CONVERSATION:
                op.event = <int32_t><uint32_t>v
            elif key == 0x18:
                op.presence = <int32_t><uint32_t>v
            else:
                op.client = <int32_t><uint32_t>v
        else:
            return -1
    return pos


cdef inline void clear_message(WireOperation* op) noexcept nogil:
    # What read_message and the appliers read, field by field: GCC turns a memset
    # (or a loop) of this size into `rep stos`, which costs more than an event.
    op.off[0] = op.off[1] = op.off[2] = op.off[3] = op.off[4] = op.off[5] = 0
    op.len[0] = op.len[1] = op.len[2] = op.len[3] = op.len[4] = op.len[5] = 0
    op.presence = 0
    op.client = 0
    op.event = 0
    op.item.seconds = 0
    op.item.nanos = 0
    op.item.has_at = 0


cdef inline Py_ssize_t read_operation(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end,
                                      WireOperation* op) noexcept nogil:
    """One Operation in [pos, end): exactly one kind (wire._operation)."""
    cdef uint64_t key, v
    cdef Py_ssize_t stop, got
    op.kind = 0
    while pos < end:
        pos = read_varint(d, pos, end, &key)
        if pos < 0 or op.kind != 0 or (key & 7) != 2 or not OP_DISPATCH <= (key >> 3) <= OP_CLAIM_FROM_POOL:
            return -1  # a second kind, an unknown field
        pos = read_varint(d, pos, end, &v)
        if pos < 0 or v > <uint64_t>(end - pos):
            return -1
        stop = pos + <Py_ssize_t>v
        op.kind = <int32_t>(key >> 3)
        if op.kind == OP_DISPATCH:
            got = read_item(d, pos, stop, &op.item)  # which clears the item first
        else:
            clear_message(op)
            got = read_message(d, pos, stop, op.kind, op)
        if got != stop:
            return -1
        pos = stop
    return pos if op.kind != 0 else -1  # no kind: the object path refuses the whole call


cdef inline int64_t operation_time(const WireItem* it, int64_t now_ms) noexcept nogil:
    # The operation's time for a fast path (its valid `at`, else now_ms), or -1
    # when it is not a valid time (the slow path refuses it with its message).
    if it.has_at:
        if not (0 <= it.nanos < 1000000000 and 0 <= it.seconds <= LATEST_SECONDS):
            return -1
        return it.seconds * 1000 + it.nanos // 1000000
    return now_ms if 0 <= now_ms <= MAX_TIME else -1


cdef inline bint ordinary_id(const char* p, Py_ssize_t n, bint optional) noexcept nogil:
    # What utf8_id / check_id accept (the bytes are valid UTF-8 already).
    return (n > 0 or optional) and n <= MAX_ID and not has_control_byte(p, n)


# --------------------------------------------------------------------- the batch

cdef object operate_wire(CompiledEngine engine, object data, int64_t now_ms, Py_ssize_t max_items,
                         object max_at_ms):
    """CompiledEngine.operate_wire: (response bytes, operations, operations that
    failed), or None with nothing changed (see the invariants above)."""
    cdef const unsigned char* d
    cdef Py_ssize_t end, pos = 0, n = 0, stop, i
    cdef WireOperation* op
    cdef int64_t failed = 0
    cdef bint bounded
    cdef int64_t max_at = at_bound(max_at_ms, &bounded)
    if type(data) is not bytes:
        data = bytes(data)
    d = <const unsigned char*>PyBytes_AS_STRING(data)
    end = PyBytes_GET_SIZE(data)
    while pos < end:
        pos = next_element(d, pos, end, &stop)
        if pos < 0:
            return None
        if n == engine.cap_wire_ops:
            engine.wire_ops = <WireOperation*>grow(engine.wire_ops, &engine.cap_wire_ops, sizeof(WireOperation))
        if read_operation(d, pos, stop, &engine.wire_ops[n]) != stop:
            return None
        if bounded and at_beyond(&engine.wire_ops[n].item, max_at):
            return None
        n += 1
        pos = stop
    check_operations_size(n, max_items)
    engine.out.n = 0
    for i in range(n):
        op = &engine.wire_ops[i]
        engine.operations[op.kind] += 1
        failed += apply_operation(engine, <const char*>d, op, now_ms)
    return PyBytes_FromStringAndSize(engine.out.p, engine.out.n), n, failed


cdef int apply_operation(CompiledEngine engine, const char* data, WireOperation* op, int64_t now_ms) except -1:
    """Apply one operation and append its OperationResult (an OperateResponse
    element) to engine.out; 1 if it failed, else 0."""
    cdef Py_ssize_t start = len(engine.outbox)
    if op.kind == OP_DISPATCH:
        engine.scratch.n = 0
        # As a DispatchBatchResponse element: field 1, which is OperationResult.dispatch.
        if wire_decide(engine, &engine.scratch, data, &op.item, now_ms, True):
            wb_reserve(&engine.out, 1 + varint_size(<uint64_t>engine.scratch.n) + engine.scratch.n)
            wb_header(&engine.out, 0x0A, engine.scratch.n)
            memcpy(engine.out.p + engine.out.n, engine.scratch.p, engine.scratch.n)
            engine.out.n += engine.scratch.n
            return 0
    elif op.kind == OP_SET_PRESENCE:
        if presence_fast(engine, data, op, now_ms):
            write_handed_result(&engine.out, 0x12, NULL, 0, 0x0A, engine.outbox, start)
            return 0
    elif op.kind == OP_REPORT_CONVERSATION:
        if event_fast(engine, data, op, now_ms):
            write_handed_result(&engine.out, 0x1A, NULL, 0, 0x12, engine.outbox, start)
            return 0
    return operation_slow(engine, data, op, now_ms, start)


cdef bint presence_fast(Router router, const char* data, WireOperation* op, int64_t now_ms) except -1:
    """set_presence (engine.pyx) from the bytes when nothing refuses it: 1 once
    applied, 0 with nothing changed."""
    cdef const char* sp = data + op.off[OPS_SHOP]
    cdef const char* ap = data + op.off[OPS_AGENT]
    cdef Py_ssize_t sn = op.len[OPS_SHOP], an = op.len[OPS_AGENT], idx
    cdef int64_t at = operation_time(&op.item, now_ms), now
    cdef int32_t slot
    cdef Agent* a
    cdef Shop shop
    if (at < 0 or not ordinary_id(sp, sn, False) or not ordinary_id(ap, an, False)
            or not 0 < op.presence <= PRESENCE_MAX or not 0 <= op.client <= CLIENT_MAX):
        return 0
    idx = router.shop_map.find(0, sp, sn, hash_key(0, sp, sn))
    if idx < 0:
        return 0
    shop = router.shop_at(router.shop_map.entries[idx].handle)
    slot = shop.find_agent(ap, an)
    if slot < 0:
        return 0
    a = &shop.agents[slot]
    if a.deleted or a.role == ROLE_ROBOT or (unlikely(shop.timed) and router.timers.due(shop.handle, at)):
        return 0  # (a §10 deadline due first: set_presence fires it)
    now = shop.advance(at)
    went_offline = op.presence == PRESENCE_OFFLINE and a.presence != PRESENCE_OFFLINE
    if went_offline:
        a.offline_at_ms = now
    a.presence = op.presence
    a.client = op.client or CLIENT_DESKTOP
    router.timers.on_presence(shop, slot, went_offline, now)
    shop.refresh(slot)
    router.settle(shop, slot)
    return 1


cdef bint event_fast(Router router, const char* data, WireOperation* op, int64_t now_ms) except -1:
    """conversation_event (engine.pyx) from the bytes for BUYER_MESSAGE, AGENT_REPLY
    and CLOSED of a served conversation when nothing refuses it: 1 once applied,
    0 with nothing changed (other events, waiting conversations, refusals)."""
    cdef const char* sp = data + op.off[OPS_SHOP]
    cdef const char* cp = data + op.off[OPS_CONVERSATION]
    cdef const char* bp = data + op.off[OPS_BUYER]
    cdef const char* ap = data + op.off[OPS_AGENT]
    cdef const char* hp
    cdef Py_ssize_t sn = op.len[OPS_SHOP], cn = op.len[OPS_CONVERSATION], bn = op.len[OPS_BUYER]
    cdef Py_ssize_t an = op.len[OPS_AGENT], hn, idx
    cdef int64_t at = operation_time(&op.item, now_ms), now
    cdef int32_t flags, holder
    cdef Entry* e
    cdef Shop shop
    if (at < 0 or not EVENT_BUYER_MESSAGE <= op.event <= EVENT_CLOSED
            or not ordinary_id(sp, sn, False) or not ordinary_id(cp, cn, False) or not ordinary_id(bp, bn, True)
            or not ordinary_id(ap, an, True)
            or not ordinary_id(data + op.off[OPS_TO_AGENT], op.len[OPS_TO_AGENT], True)
            or not ordinary_id(data + op.off[OPS_TO_GROUP], op.len[OPS_TO_GROUP], True)):
        return 0
    idx = router.shop_map.find(0, sp, sn, hash_key(0, sp, sn))
    if idx < 0:
        return 0
    shop = router.shop_at(router.shop_map.entries[idx].handle)
    if unlikely(shop.timed) and router.timers.due(shop.handle, at):
        return 0  # a §10 deadline is due first: conversation_event fires it
    idx = router.conversations.find(shop.handle, cp, cn, hash_key(shop.handle, cp, cn))
    if idx < 0:
        return 0
    e = &router.conversations.entries[idx]
    if bn and (bn != e.vlen or memcmp(bp, entry_bytes(e) + e.klen, bn) != 0):
        return 0
    flags = e.flags
    if op.event == EVENT_BUYER_MESSAGE:
        shop.advance(at)
        if (flags & CONV_WAIT_MASK) == 0 and not (flags & CONV_UNREAD):
            e.flags = flags | CONV_UNREAD
            shop.agents[e.handle].unread += 1
            shop.refresh(e.handle)
        router.settle(shop, -1)
        return 1
    if flags & CONV_WAIT_MASK:
        return 0  # AGENT_REPLY is refused; CLOSED leaves a Python-level waiting list
    holder = e.handle
    if op.event == EVENT_AGENT_REPLY:
        if an:
            hp = PyUnicode_AsUTF8AndSize(<object>shop.agents[holder].id, &hn)
            if an != hn or memcmp(ap, hp, an) != 0:
                return 0
        now = shop.advance(at)
        if flags & CONV_UNREAD:
            e.flags = flags & ~CONV_UNREAD
            shop.agents[holder].unread -= 1
            shop.refresh(holder)
        router.timers.on_reply(router.conversations, idx)
        router.remember(shop, idx, holder, now)
        router.settle(shop, holder)
        return 1
    shop.advance(at)
    router.close(shop, idx, None)  # served: close() needs the id only for a waiting one
    return 1


cdef int operation_slow(CompiledEngine engine, const char* data, WireOperation* op, int64_t now_ms,
                        Py_ssize_t start) except -1:
    """An operation no fast path took: the reference's own per-operation code
    (reference/operations.py: Python strings, the engine's method, its error as
    the result's Status). 1 if it failed, else 0."""
    cdef WireItem* it = &op.item
    cdef Py_ssize_t size
    cdef int failed
    try:
        if op.kind == OP_DISPATCH:
            item = PyWireItem(
                PyUnicode_DecodeUTF8(data + it.off[WIRE_SHOP], it.len[WIRE_SHOP], NULL),
                PyUnicode_DecodeUTF8(data + it.off[WIRE_BUYER], it.len[WIRE_BUYER], NULL),
                PyUnicode_DecodeUTF8(data + it.off[WIRE_CONVERSATION], it.len[WIRE_CONVERSATION], NULL),
                it.type,
                PyUnicode_DecodeUTF8(data + it.off[WIRE_SOURCE], it.len[WIRE_SOURCE], NULL),
                it.order_state,
                PyUnicode_DecodeUTF8(data + it.off[WIRE_TO_ACCOUNT], it.len[WIRE_TO_ACCOUNT], NULL),
                (it.seconds, it.nanos) if it.has_at else None,
                bool(it.trace),
                it.priority,
            )
            raw = encode_result(OP_DISPATCH, encode_decision(engine, item.shop_id, item.conversation_id,
                                                             engine.dispatch(*item.call(now_ms))))
        else:
            at = timestamp_to_ms(it.seconds, it.nanos, "at") if it.has_at else now_ms
            shop_id = ops_str(data, op, OPS_SHOP)
            if op.kind == OP_SET_PRESENCE:
                engine.set_presence(shop_id, ops_str(data, op, OPS_AGENT), op.presence, op.client, at)
                raw = encode_result(OP_SET_PRESENCE, encode_presence_response(engine.outbox[start:]))
            elif op.kind == OP_REPORT_CONVERSATION:
                served = engine.conversation_event(
                    shop_id, ops_str(data, op, OPS_CONVERSATION), op.event, at, ops_str(data, op, OPS_BUYER),
                    ops_str(data, op, OPS_AGENT), ops_str(data, op, OPS_TO_AGENT), ops_str(data, op, OPS_TO_GROUP),
                )
                raw = encode_result(OP_REPORT_CONVERSATION, encode_event_response(served, engine.outbox[start:]))
            else:
                agent_id = ops_str(data, op, OPS_AGENT)
                conversation_id, buyer_id = engine.claim_from_pool(shop_id, agent_id, at,
                                                                   ops_str(data, op, OPS_CONVERSATION))
                raw = encode_result(OP_CLAIM_FROM_POOL, encode_claim_response(conversation_id, buyer_id, agent_id))
        failed = 0
    except DispatchError as exc:
        raw = encode_result_error(error_code(exc), str(exc), exc.details)
        failed = 1
    size = PyBytes_GET_SIZE(raw)
    wb_reserve(&engine.out, 1 + varint_size(<uint64_t>size) + size)
    wb_header(&engine.out, 0x0A, size)
    memcpy(engine.out.p + engine.out.n, PyBytes_AS_STRING(raw), size)
    engine.out.n += size
    return failed


cdef inline object ops_str(const char* data, const WireOperation* op, int k):
    return PyUnicode_DecodeUTF8(data + op.off[k], op.len[k], NULL)


# --------------------------------------------------------------------- writing

cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b  # C truncates (cdivision)
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef Py_ssize_t assignment_size(object handed) except -1:
    """The size of wire.encode_assignment(handed), an outbox hand-out
    (shop, conversation, buyer, agent, reason, at_ms)."""
    cdef Py_ssize_t n, size = 0, ts = 0
    cdef int k
    cdef int64_t reason = handed[4], at_ms = handed[5]
    cdef int64_t seconds = floor_div(at_ms, 1000), millis = at_ms - seconds * 1000
    for k in range(4):
        PyUnicode_AsUTF8AndSize(handed[k], &n)
        size += string_field_size(n)
    if reason:
        size += 1 + varint_size(<uint64_t>reason)
    if seconds:
        ts += 1 + varint_size(<uint64_t>seconds)
    if millis:
        ts += 1 + varint_size(<uint64_t>(millis * 1000000))
    return size + 1 + varint_size(<uint64_t>ts) + ts


cdef int write_assignment(WireBuffer* out, object handed) except -1:
    """wire.encode_assignment, appended to ``out`` (room reserved by the caller)."""
    cdef Py_ssize_t n, ts = 0
    cdef const char* p
    cdef int k
    cdef int64_t reason = handed[4], at_ms = handed[5]
    cdef int64_t seconds = floor_div(at_ms, 1000), millis = at_ms - seconds * 1000
    for k in range(4):
        p = PyUnicode_AsUTF8AndSize(handed[k], &n)
        wb_string(out, <unsigned char>(0x0A + 8 * k), p, n)
    if reason:
        out.p[out.n] = 0x28
        out.n += 1
        wb_varint(out, <uint64_t>reason)
    if seconds:
        ts += 1 + varint_size(<uint64_t>seconds)
    if millis:
        ts += 1 + varint_size(<uint64_t>(millis * 1000000))
    wb_header(out, 0x32, ts)  # at: a set message field, written even when empty
    if seconds:
        out.p[out.n] = 0x08
        out.n += 1
        wb_varint(out, <uint64_t>seconds)
    if millis:
        out.p[out.n] = 0x10
        out.n += 1
        wb_varint(out, <uint64_t>(millis * 1000000))
    return 0


cdef int write_handed_result(WireBuffer* out, unsigned char result_key, const char* ap, Py_ssize_t an,
                             unsigned char assignment_key, list outbox, Py_ssize_t start) except -1:
    """Append an OperationResult element holding, under ``result_key``, a response of
    an optional agent_id (field 1) and the hand-outs outbox[start:] as repeated
    Assignments (``assignment_key``): encode_result(kind, encode_presence_response /
    encode_event_response(...))."""
    cdef Py_ssize_t i, a, body = string_field_size(an), result
    cdef Py_ssize_t end = len(outbox)
    if start == end and an == 0:  # no hand-outs, no agent: an empty response (the usual event)
        if out.n + 4 > out.cap:
            wb_reserve(out, 4)
        out.p[out.n] = 0x0A
        out.p[out.n + 1] = 2
        out.p[out.n + 2] = <char>result_key
        out.p[out.n + 3] = 0
        out.n += 4
        return 0
    for i in range(start, end):
        a = assignment_size(outbox[i])
        body += 1 + varint_size(<uint64_t>a) + a
    result = 1 + varint_size(<uint64_t>body) + body
    wb_reserve(out, 1 + varint_size(<uint64_t>result) + result)
    wb_header(out, 0x0A, result)
    wb_header(out, result_key, body)
    wb_string(out, 0x0A, ap, an)
    for i in range(start, end):
        wb_header(out, assignment_key, assignment_size(outbox[i]))
        write_assignment(out, outbox[i])
    return 0
