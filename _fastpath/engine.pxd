# engine: CompiledEngine, the public API: configuration (spec §8), conversation
# events (§8), the dispatch entry points (§3, §4), reads (§9).

# The routing core (routing.pxd: tables, seed, decision) plus the wire codec's
# reused buffers (wire.pxd, operations.pxd). Invariants: out, scratch,
# wire_items[0:cap_wire_items] and wire_ops[0:cap_wire_ops] are scratch,
# meaningful only during a wire call; no other method reads them.
# operations[kind] counts the operations operate_wire applied (not state).
# (Calls from here to Router's final methods go through the vtable, a Cython
# limit for inherited methods; the hot paths, dispatch() and wire.pyx's glue,
# call them through a Router-typed receiver, which Cython calls directly.)
@cython.final
cdef class CompiledEngine(Router):
    cdef WireBuffer out             # the wire entry points' output, reused between calls
    cdef WireItem* wire_items       # dispatch_batch_wire's parsed items, reused between calls
    cdef Py_ssize_t cap_wire_items  # wire_items allocated
    cdef WireBuffer scratch         # operate_wire: one operation's result before it is framed into out
    cdef WireOperation* wire_ops    # operate_wire's parsed operations, reused between calls
    cdef Py_ssize_t cap_wire_ops    # wire_ops allocated
    cdef int64_t operations[N_OPERATION_KINDS]  # counters: operations applied by operate_wire, by OP_*

    cdef object conversation_buyer(self, Py_ssize_t idx)
    cdef tuple retry_answer(self, Shop shop, Py_ssize_t idx, object conversation_id, const Request* rq, bint trace)
