# wire: the protobuf wire format of DispatchRequest / DispatchBatchRequest and
# their responses, read and written in C (_fastpath/wire.py is the reference:
# same accepted inputs, same bytes out), and the glue that decides ordinary
# requests straight from the bytes (spec §3, §4 through Router.decide).

# The string fields of a DispatchRequest, as indices of WireItem.off/len.
cdef enum:
    WIRE_SHOP = 0
    WIRE_BUYER = 1
    WIRE_CONVERSATION = 2
    WIRE_SOURCE = 3
    WIRE_TO_ACCOUNT = 4


# One DispatchRequest of a serialized request, as read by read_item.
# Invariants: each string is (off[k], len[k]) inside the request bytes and is
# valid UTF-8; absent fields are proto3 defaults (0, empty).
ctypedef struct WireItem:
    Py_ssize_t off[5]  # per WIRE_*: offset of the string in the request bytes
    Py_ssize_t len[5]  # per WIRE_*: its length in bytes
    int32_t type       # conversation type (field 4)
    int32_t order_state  # field 6
    int64_t seconds    # at.seconds (field 8), meaningful when has_at
    int32_t nanos      # at.nanos, meaningful when has_at
    uint8_t has_at     # 1: the request carries `at`
    uint8_t trace      # 1: a trace was asked for (the Python path answers it)
    uint32_t priority  # field 10 (uint32: the low 32 bits); above MAX_PRIORITY the Python path refuses it


# A growable byte buffer (the responses being written).
# Invariants: n <= cap; p is NULL only while cap == 0.
ctypedef struct WireBuffer:
    char* p            # the bytes, cap allocated
    Py_ssize_t n       # bytes written
    Py_ssize_t cap     # bytes allocated
