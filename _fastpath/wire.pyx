# The protobuf wire format of DispatchBatchRequest / DispatchBatchResponse in C
# (included by _core.pyx). _fastpath/wire.py is the reference: the same reader
# (same accepted inputs, same None for everything else) and the same writer
# (fields in number order, proto3 defaults omitted), so that the compiled and
# the reference dispatch_batch_wire answer byte for byte alike.
#
# Reader invariants: every function takes [pos, end) inside the request bytes
# and never reads at or past end; it returns the new position, or -1 when the
# bytes are not something this reader accepts (the caller then returns None
# and nothing has changed: parsing finishes before any dispatch).

cdef enum:
    WIRE_SHOP = 0
    WIRE_BUYER = 1
    WIRE_CONVERSATION = 2
    WIRE_SOURCE = 3
    WIRE_TO_ACCOUNT = 4

cdef int64_t LATEST_SECONDS = 253402300799  # 9999-12-31T23:59:59Z


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


cdef inline bint valid_utf8(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # Exactly what Python's strict UTF-8 decoder accepts (Unicode table 3-7):
    # no overlong forms, no surrogates, nothing above U+10FFFF. ASCII runs are
    # skipped eight bytes at a time.
    cdef Py_ssize_t i = 0
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
    memset(it, 0, sizeof(WireItem))
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
        elif key == 0x20 or key == 0x30 or key == 0x48:
            pos = read_varint(d, pos, end, &v)
            if pos < 0:
                return -1
            if key == 0x20:
                it.type = <int32_t><uint32_t>v
            elif key == 0x30:
                it.order_state = <int32_t><uint32_t>v
            else:
                it.trace = v != 0
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
