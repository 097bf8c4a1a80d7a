# wire: the protobuf wire format of DispatchRequest / DispatchBatchRequest and
# their responses in C, and the glue that decides ordinary requests straight
# from the bytes (spec §3 point-to-point, §4 through Router.decide). Included
# by _core.pyx; WireItem and WireBuffer are in wire.pxd.
#
# _fastpath/wire.py is the reference: the same reader (same accepted inputs,
# same None for everything else) and the same writer (fields in number order,
# proto3 defaults omitted), so that the compiled and the reference
# dispatch_batch_wire / dispatch_wire answer byte for byte alike.
#
# Reader invariants: every function takes [pos, end) inside the request bytes
# and never reads at or past end; it returns the new position, or -1 when the
# bytes are not something this reader accepts (the caller then returns None
# and nothing has changed: parsing finishes before any dispatch).


cdef inline Py_ssize_t read_varint(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end,
                                   uint64_t* out) noexcept nogil:
    # At most 10 bytes; a 10th byte may only hold the 64th bit (as wire.py).
    cdef uint64_t result = 0
    cdef int i
    cdef unsigned char b
    for i in range(10):
        if pos >= end:
            return -1
        b = d[pos]
        pos += 1
        result |= (<uint64_t>(b & 0x7F)) << (7 * i)
        if b < 0x80:
            if i == 9 and b > 1:
                return -1
            out[0] = result
            return pos
    return -1


cdef void* grow(void* array, Py_ssize_t* cap, size_t size) except NULL:
    """``array`` (of ``cap[0]`` elements of ``size`` bytes, all in use) reallocated to hold
    more: the reused per-batch arrays of the wire readers. Raises MemoryError."""
    cdef Py_ssize_t new_cap = cap[0] * 2 + 64
    cdef void* grown = realloc(array, new_cap * size)
    if grown == NULL:
        raise MemoryError()
    cap[0] = new_cap
    return grown


cdef inline Py_ssize_t next_element(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end,
                                    Py_ssize_t* stop) noexcept:
    """The next element of a batch message's field 1 (repeated, length-delimited: the
    DispatchBatchRequest's requests, the OperateRequest's operations): its start, and its
    end in ``stop``; -1 for any other field or a length past ``end``."""
    cdef uint64_t key, v
    pos = read_varint(d, pos, end, &key)
    if pos < 0 or key != 0x0A:
        return -1
    pos = read_varint(d, pos, end, &v)
    if pos < 0 or v > <uint64_t>(end - pos):
        return -1
    stop[0] = pos + <Py_ssize_t>v
    return pos


cdef inline bint valid_utf8(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # Exactly what Python's strict UTF-8 decoder accepts (utf8_from). ASCII, what
    # ids nearly always are, is checked here, eight bytes at a time, so that this
    # stays small enough to be inlined into the readers; from the first byte
    # above 0x7F on, utf8_from (out of line) decides.
    cdef Py_ssize_t i = 0
    cdef uint64_t x
    while i + 8 <= n:
        memcpy(&x, p + i, 8)
        if (x & <uint64_t>0x8080808080808080) != 0:
            return utf8_from(p, n, i)
        i += 8
    while i < n:
        if p[i] >= 0x80:
            return utf8_from(p, n, i)
        i += 1
    return True


cdef bint utf8_from(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    # p[i:n] (i at a character boundary) is what Python's strict UTF-8 decoder
    # accepts (Unicode table 3-7): no overlong forms, no surrogates, nothing above
    # U+10FFFF. ASCII runs are skipped eight bytes at a time.
    cdef uint64_t x
    cdef unsigned char c, c1
    while i < n:
        if i + 8 <= n:
            memcpy(&x, p + i, 8)
            if (x & <uint64_t>0x8080808080808080) == 0:
                i += 8
                continue
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif 0xE0 <= c <= 0xEF:
            if i + 2 >= n:
                return False
            c1 = p[i + 1]
            if c == 0xE0:
                if not 0xA0 <= c1 <= 0xBF:
                    return False
            elif c == 0xED:
                if not 0x80 <= c1 <= 0x9F:
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (p[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
        elif 0xF0 <= c <= 0xF4:
            if i + 3 >= n:
                return False
            c1 = p[i + 1]
            if c == 0xF0:
                if not 0x90 <= c1 <= 0xBF:
                    return False
            elif c == 0xF4:
                if not 0x80 <= c1 <= 0x8F:
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (p[i + 2] & 0xC0) != 0x80 or (p[i + 3] & 0xC0) != 0x80:
                return False
            i += 4
        else:
            return False
    return True


cdef inline Py_ssize_t read_timestamp(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end,
                                      WireItem* it) noexcept nogil:
    cdef uint64_t key, v
    it.seconds = 0
    it.nanos = 0
    while pos < end:
        pos = read_varint(d, pos, end, &key)
        if pos < 0:
            return -1
        if key == 0x08 or key == 0x10:
            pos = read_varint(d, pos, end, &v)
            if pos < 0:
                return -1
            if key == 0x08:
                it.seconds = <int64_t>v                 # int64: two's complement
            else:
                it.nanos = <int32_t><uint32_t>v         # int32: the low 32 bits
        else:
            return -1
    return pos


cdef inline Py_ssize_t read_item(const unsigned char* d, Py_ssize_t pos, Py_ssize_t end,
                                 WireItem* it) noexcept nogil:
    """One DispatchRequest in [pos, end); proto3 defaults for absent fields."""
    cdef uint64_t key, v
    cdef Py_ssize_t stop
    cdef int k
    # Field by field: GCC turns a memset (or a loop) of this size into `rep stos`,
    # which costs more than reading a short item.
    it.off[0] = it.off[1] = it.off[2] = it.off[3] = it.off[4] = 0
    it.len[0] = it.len[1] = it.len[2] = it.len[3] = it.len[4] = 0
    it.type = it.order_state = 0
    it.seconds = 0
    it.nanos = 0
    it.has_at = it.trace = 0
    it.priority = 0
    while pos < end:
        pos = read_varint(d, pos, end, &key)
        if pos < 0:
            return -1
        if key == 0x0A or key == 0x12 or key == 0x1A or key == 0x2A or key == 0x3A or key == 0x42:
            pos = read_varint(d, pos, end, &v)
            if pos < 0 or v > <uint64_t>(end - pos):
                return -1
            stop = pos + <Py_ssize_t>v
            if key == 0x42:  # at (google.protobuf.Timestamp), at most once
                if it.has_at or read_timestamp(d, pos, stop, it) != stop:
                    return -1
                it.has_at = 1
            else:
                if not valid_utf8(d + pos, stop - pos):
                    return -1
                k = (WIRE_SHOP if key == 0x0A else WIRE_BUYER if key == 0x12 else
                     WIRE_CONVERSATION if key == 0x1A else WIRE_SOURCE if key == 0x2A else WIRE_TO_ACCOUNT)
                it.off[k] = pos
                it.len[k] = stop - pos
            pos = stop
        elif key == 0x20 or key == 0x30 or key == 0x48 or key == 0x50:
            pos = read_varint(d, pos, end, &v)
            if pos < 0:
                return -1
            if key == 0x20:
                it.type = <int32_t><uint32_t>v
            elif key == 0x30:
                it.order_state = <int32_t><uint32_t>v
            elif key == 0x48:
                it.trace = v != 0
            else:
                it.priority = <uint32_t>v               # uint32: the low 32 bits
        else:
            return -1
    return pos


cdef inline bint at_beyond(const WireItem* it, int64_t max_at_ms) noexcept nogil:
    # wire.at_beyond: a valid at (nanos in range, 1970..9999) later than
    # max_at_ms. Invalid ones are not "beyond" (dispatch refuses them item by
    # item); with seconds >= 0 and nanos >= 0 the arithmetic cannot overflow
    # and C's division truncates as Python's floors.
    if not it.has_at or not (0 <= it.nanos < 1000000000 and 0 <= it.seconds <= LATEST_SECONDS):
        return False
    return it.seconds * 1000 + it.nanos // 1000000 > max_at_ms


cdef inline int64_t at_bound(object max_at_ms, bint* bounded) except? -1:
    # The max_at_ms argument of the wire readers: None is no bound; past the
    # latest time (9999) no valid at can exceed it; below -1 acts as -1 (every
    # valid at is >= 0), so any Python int means what it means in wire.py.
    if max_at_ms is None or max_at_ms >= MAX_TIME:
        bounded[0] = False
        return 0
    bounded[0] = True
    if max_at_ms < -1:
        return -1
    return <int64_t>max_at_ms


# --------------------------------------------------------------------- writing

cdef inline Py_ssize_t varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline Py_ssize_t string_field_size(Py_ssize_t n) noexcept nogil:
    # A string field with a one-byte key (field numbers < 16); absent when empty.
    return 0 if n == 0 else 1 + varint_size(<uint64_t>n) + n


cdef int wb_reserve(WireBuffer* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* grown
    if b.n + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.n + extra:
        cap *= 2
    grown = <char*>realloc(b.p, cap)
    if grown == NULL:
        raise MemoryError()
    b.p = grown
    b.cap = cap
    return 0


cdef inline void wb_varint(WireBuffer* b, uint64_t v) noexcept nogil:
    # Caller reserved the room.
    while v >= 0x80:
        b.p[b.n] = <char>((v & 0x7F) | 0x80)
        b.n += 1
        v >>= 7
    b.p[b.n] = <char>v
    b.n += 1


cdef inline void wb_header(WireBuffer* b, unsigned char key, Py_ssize_t n) noexcept nogil:
    # A one-byte key and a length: the start of a length-delimited field.
    b.p[b.n] = <char>key
    b.n += 1
    wb_varint(b, <uint64_t>n)


cdef inline void wb_string(WireBuffer* b, unsigned char key, const char* p, Py_ssize_t n) noexcept nogil:
    if n == 0:
        return
    wb_header(b, key, n)
    memcpy(b.p + b.n, p, n)
    b.n += n


# --------------------------------------------------------------------- the glue
# CompiledEngine.dispatch_batch_wire and dispatch_wire (engine.pyx) call these.
# The decision itself takes a Router-typed receiver, so that Cython calls
# Router's final methods directly (through a CompiledEngine it would go
# through the vtable).

cdef object batch_wire(CompiledEngine engine, object data, int64_t now_ms, Py_ssize_t max_items,
                       object max_at_ms):
    """CompiledEngine.dispatch_batch_wire: (response bytes, items that failed), or
    None, with nothing changed, when the bytes are not a batch this codec reads
    (see _fastpath.wire) or an item's ``at`` is later than ``max_at_ms`` (None:
    no bound; _fastpath.wire.at_beyond). Items without ``at`` take ``now_ms``;
    more than ``max_items`` items: InvalidArgumentError, nothing changed.

    The whole request is read first (into engine.wire_items); then each item
    is decided in order and its response appended to the reused engine.out.
    Ordinary items touch no Python object; the rest (another conversation
    type, a trace, anything the engine rejects) go through ``dispatch``
    exactly as the reference does (wire_item_slow)."""
    cdef const unsigned char* d
    cdef Py_ssize_t end, pos = 0, n = 0, stop, i
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
        if n == engine.cap_wire_items:
            engine.wire_items = <WireItem*>grow(engine.wire_items, &engine.cap_wire_items, sizeof(WireItem))
        if read_item(d, pos, stop, &engine.wire_items[n]) != stop:
            return None
        if bounded and at_beyond(&engine.wire_items[n], max_at):
            return None
        n += 1
        pos = stop
    check_batch_size(n, max_items)
    engine.out.n = 0
    for i in range(n):
        failed += wire_item(engine, <const char*>d, &engine.wire_items[i], now_ms)
    return PyBytes_FromStringAndSize(engine.out.p, engine.out.n), failed


cdef object unary_wire(CompiledEngine engine, object data, int64_t now_ms, object max_at_ms):
    """CompiledEngine.dispatch_wire: the response bytes, or None, with nothing
    changed, when the request is not an ordinary one this codec decides: bytes
    the reader declines, another conversation type, a trace, an unknown shop,
    an existing conversation, any value ``dispatch`` would refuse, an ``at``
    later than ``max_at_ms``. A request without ``at`` takes ``now_ms``."""
    cdef const unsigned char* d
    cdef Py_ssize_t end
    cdef WireItem item
    cdef bint bounded
    cdef int64_t max_at = at_bound(max_at_ms, &bounded)
    if type(data) is not bytes:
        data = bytes(data)
    d = <const unsigned char*>PyBytes_AS_STRING(data)
    end = PyBytes_GET_SIZE(data)
    if read_item(d, 0, end, &item) != end or (bounded and at_beyond(&item, max_at)):
        return None
    engine.out.n = 0
    if not wire_decide(engine, &engine.out, <const char*>d, &item, now_ms, False):
        return None
    return PyBytes_FromStringAndSize(engine.out.p, engine.out.n)


cdef int wire_item(CompiledEngine engine, const char* data, WireItem* it, int64_t now_ms) except -1:
    """Decide one batch item and append its DispatchResponse; 1 if it failed, else 0."""
    if wire_decide(engine, &engine.out, data, it, now_ms, True):
        return 0
    return wire_item_slow(engine, &engine.out, data, it, now_ms)


cdef bint wire_decide(Router router, WireBuffer* out, const char* data, WireItem* it, int64_t now_ms,
                      bint element) except -1:
    """The fast path of one item: the ordinary case, decided without Python objects.

    Returns 1 after appending the item's DispatchResponse to ``out`` (as a
    DispatchBatchResponse element when ``element``, else bare), or 0, with
    nothing changed and nothing appended, when the item is not ordinary
    (the caller then lets ``dispatch()`` decide or refuse it)."""
    cdef const char* sp = data + it.off[WIRE_SHOP]
    cdef const char* tp = data + it.off[WIRE_TO_ACCOUNT]
    cdef Py_ssize_t sn = it.len[WIRE_SHOP], tn = it.len[WIRE_TO_ACCOUNT], idx, an, gn
    cdef Request rq
    cdef Decision d
    cdef int32_t reason
    cdef const char* ap = NULL
    cdef const char* gp = NULL
    cdef Shop shop
    cdef Py_ssize_t position
    cdef int64_t eta
    rq.buyer = data + it.off[WIRE_BUYER]
    rq.buyer_len = it.len[WIRE_BUYER]
    rq.conversation = data + it.off[WIRE_CONVERSATION]
    rq.conversation_len = it.len[WIRE_CONVERSATION]
    rq.source = data + it.off[WIRE_SOURCE]
    rq.source_len = it.len[WIRE_SOURCE]
    rq.order_state = it.order_state
    rq.at_ms = now_ms
    rq.priority = <int32_t>it.priority if it.priority <= MAX_PRIORITY else 0
    rq.py_conversation = rq.py_buyer = rq.py_source = NULL
    # Declines (return 0) come before any change: the caller's dispatch() then
    # decides or refuses the item with its own checks and messages.
    if unlikely(it.trace or not 0 <= it.type <= TYPE_MAX or not 0 < sn <= MAX_ID or has_control_byte(sp, sn)):
        return 0
    if it.has_at:
        if not (0 <= it.nanos < 1000000000 and 0 <= it.seconds <= LATEST_SECONDS):
            return 0
        rq.at_ms = it.seconds * 1000 + it.nanos // 1000000
    if not 0 <= rq.at_ms <= MAX_TIME:
        return 0
    if unlikely(it.type > TYPE_BUYER_TO_SHOP):
        # Section 3, as dispatch(): point to point, to_account gets it, no state change.
        if not 0 < tn <= MAX_ID or has_control_byte(tp, tn):
            return 0
        router.decisions[REASON_DIRECT][0] += 1
        write_response(out, tp, tn, REASON_DIRECT, NULL, 0, rq.conversation, rq.conversation_len, element, 0, -1)
        return 1
    if unlikely(it.priority > MAX_PRIORITY):
        return 0  # dispatch() refuses it, naming the field
    if unlikely(not 0 < rq.buyer_len <= MAX_ID or not 0 < rq.conversation_len <= MAX_ID or rq.source_len > MAX_ID
                or has_control_byte(rq.buyer, rq.buyer_len) or has_control_byte(rq.conversation, rq.conversation_len)
                or has_control_byte(rq.source, rq.source_len) or not 0 <= rq.order_state <= ORDER_STATE_MAX):
        return 0
    idx = router.shop_map.find(0, sp, sn, hash_key(0, sp, sn))
    if unlikely(idx < 0):
        return 0
    shop = router.shop_at(router.shop_map.entries[idx].handle)
    rq.conversation_hash = hash_key(shop.handle, rq.conversation, rq.conversation_len)
    router.prefetch_decision(shop, &rq)
    if unlikely(router.conversations.find(shop.handle, rq.conversation, rq.conversation_len,
                                          rq.conversation_hash) >= 0):
        return 0  # a retry (§12) or ALREADY_EXISTS: dispatch() answers it
    if unlikely(shop.timed) and router.timers.due(shop.handle, rq.at_ms):
        return 0  # a §10 deadline is due first: dispatch() fires it

    reason = router.decide(shop, &rq, None, &d)
    an = gn = 0
    position = 0
    eta = -1
    if d.slot >= 0:
        ap = PyUnicode_AsUTF8AndSize(<object>shop.agents[d.slot].id, &an)
    else:
        position = wire_waiting_place(router, shop, reason, rq.priority, &eta)
    if d.group >= 0:
        gp = PyUnicode_AsUTF8AndSize(<object>shop.groups[d.group].id, &gn)
    write_response(out, ap, an, reason, gp, gn, rq.conversation, rq.conversation_len, element, position, eta)
    return 1


cdef Py_ssize_t wire_waiting_place(Router router, Shop shop, int32_t reason, int32_t priority,
                                   int64_t* eta) except -1:
    """wire_decide's answer for a conversation that waits (§11; out of line): its position, the
    end of its priority's FIFO as just appended, and the estimated wait in ``eta`` (-1: unknown,
    else counted)."""
    cdef WaitList waiting = <WaitList>router.waiting_of(shop, WAIT_QUEUE if reason == REASON_QUEUED else
                                                        WAIT_STAGING if reason == REASON_OFFLINE_STAGING else WAIT_POOL)
    cdef Py_ssize_t position = waiting.position_of_last(priority)
    eta[0] = waiting.estimate(position)
    if eta[0] >= 0:
        router.count_estimate(eta[0])
    return position


cdef inline Py_ssize_t duration_size(int64_t ms) noexcept nogil:
    # A google.protobuf.Duration of ms >= 0: seconds (1) and nanos (2), zeros omitted.
    cdef int64_t seconds = ms // 1000, millis = ms % 1000
    return ((1 + varint_size(<uint64_t>seconds) if seconds else 0)
            + (1 + varint_size(<uint64_t>(millis * 1000000)) if millis else 0))


cdef int write_response(WireBuffer* out, const char* ap, Py_ssize_t an, int32_t reason, const char* gp,
                        Py_ssize_t gn, const char* cp, Py_ssize_t cn, bint element, Py_ssize_t position,
                        int64_t eta) except -1:
    """Append a DispatchResponse (agent_id = 1, reason = 2, group_id = 3,
    conversation_id = 6, position = 7 when not 0, estimated_wait = 8 when
    ``eta`` >= 0 ms) to ``out``, as a DispatchBatchResponse element
    (responses = 1) when ``element``."""
    cdef Py_ssize_t dn = duration_size(eta) if eta >= 0 else 0
    cdef Py_ssize_t size = (string_field_size(an) + 1 + varint_size(<uint64_t>reason) + string_field_size(gn)
                            + string_field_size(cn))
    cdef int64_t seconds, millis
    if position:
        size += 1 + varint_size(<uint64_t>position)
    if eta >= 0:
        size += 1 + varint_size(<uint64_t>dn) + dn
    wb_reserve(out, 1 + varint_size(<uint64_t>size) + size)
    if element:
        wb_header(out, 0x0A, size)
    wb_string(out, 0x0A, ap, an)
    out.p[out.n] = 0x10
    out.n += 1
    wb_varint(out, <uint64_t>reason)
    wb_string(out, 0x1A, gp, gn)
    wb_string(out, 0x32, cp, cn)
    if position:
        out.p[out.n] = 0x38
        out.n += 1
        wb_varint(out, <uint64_t>position)
    if eta >= 0:
        wb_header(out, 0x42, dn)
        seconds = eta // 1000
        millis = eta % 1000
        if seconds:
            out.p[out.n] = 0x08
            out.n += 1
            wb_varint(out, <uint64_t>seconds)
        if millis:
            out.p[out.n] = 0x10
            out.n += 1
            wb_varint(out, <uint64_t>(millis * 1000000))
    return 0


cdef int wire_item_slow(object engine, WireBuffer* out, const char* data, WireItem* it,
                        int64_t now_ms) except -1:
    """An item the fast path does not take: the reference's own per-item code
    (wire.dispatch_item: Python strings, engine.dispatch(), its error as a Status)."""
    cdef Py_ssize_t size
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
    raw, failed = dispatch_item(engine, item, now_ms)
    size = PyBytes_GET_SIZE(raw)
    wb_reserve(out, 1 + varint_size(<uint64_t>size) + size)
    wb_header(out, 0x0A, size)  # an element even if empty: not wb_string, which skips those
    memcpy(out.p + out.n, PyBytes_AS_STRING(raw), size)
    out.n += size
    return 1 if failed else 0
