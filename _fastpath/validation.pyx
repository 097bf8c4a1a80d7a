# validation: ids, times and enum numbers at the boundary (spec §9: a precise
# INVALID_ARGUMENT, never a crash). Included by _core.pyx.
#
# Each function is the C fast path of a model.check_* function: it accepts
# exactly what the check accepts, returns the C value without building a
# Python object, and calls the check itself for anything else, so the error
# and its message are the reference engine's.


cdef inline bint has_control_byte(const char* p, Py_ssize_t n) noexcept nogil:
    # A byte < 0x20 or == 0x7f (the only control characters UTF-8 encodes in
    # one byte; multi-byte sequences are all >= 0x80). Eight bytes at a time:
    # (x - 0x20..) & ~x & 0x80.. flags a byte < 0x20; x ^ 0x7f.. makes 0x7f a zero byte.
    cdef uint64_t x, y
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    while i + 8 <= n:
        memcpy(&x, p + i, 8)
        y = x ^ <uint64_t>0x7f7f7f7f7f7f7f7f
        if (((x - <uint64_t>0x2020202020202020) & ~x)
                | ((y - <uint64_t>0x0101010101010101) & ~y)) & <uint64_t>0x8080808080808080:
            return True
        i += 8
    while i < n:
        c = <unsigned char>p[i]
        if c < 0x20 or c == 0x7f:
            return True
        i += 1
    return False


cdef inline const char* utf8_id(object value, Py_ssize_t* size, str field, bint optional) except NULL:
    """Borrow the UTF-8 bytes of a valid id (no copy for ASCII str); raise like check_id."""
    cdef const char* p
    if type(value) is not str:
        check_id(value, field, optional=optional)
    try:
        p = PyUnicode_AsUTF8AndSize(value, size)
    except UnicodeEncodeError:
        check_id(value, field, optional=optional)
        raise
    if size[0] == 0:
        if optional:
            return p
        check_id(value, field, optional=optional)
    if size[0] > MAX_ID:
        check_id(value, field, optional=optional)
    if has_control_byte(p, size[0]):
        check_id(value, field, optional=optional)
    return p


cdef inline int64_t time_ms(object at_ms) except? -1:
    """A valid event time in ms (0..MAX_TIME); raise like check_time."""
    cdef int overflow = 0
    cdef long long value
    if type(at_ms) is int:
        value = PyLong_AsLongLongAndOverflow(at_ms, &overflow)
        if not overflow and 0 <= value <= MAX_TIME:
            return value
    check_time(at_ms)  # raises InvalidArgumentError
    return -1


cdef inline int32_t priority_value(object value) except -1:
    """A dispatch's priority, 0..MAX_PRIORITY (spec §11); raise like model.check_priority."""
    cdef int overflow = 0
    cdef long long v
    if value is _ZERO:  # the default (CPython's one small int 0): no conversion on the hot path
        return 0
    if type(value) is int:
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow and 0 <= v <= MAX_PRIORITY:
            return <int32_t>v
    return check_priority(value)


cdef object _ZERO = 0


cdef inline int32_t enum_value(object value, int32_t highest, object enum_type, str field) except -1:
    """An enum number 0..highest; raise like check_enum (which also takes anything else it names)."""
    cdef int overflow = 0
    cdef long long v
    if type(value) is int:
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow and 0 <= v <= highest:
            return <int32_t>v
    return check_enum(value, enum_type, field)
