# engine: CompiledEngine, the public API: configuration (spec §8), conversation
# events (§8), the dispatch entry points (§3, §4), reads (§9).

# The routing core (routing.pxd: tables, seed, decision) plus the wire codec's
# reused buffers (wire.pxd). Invariants: out and wire_items[0:cap_wire_items]
# are scratch, meaningful only during a wire call; no other method reads them.
# (Calls from here to Router's final methods go through the vtable, a Cython
# limit for inherited methods; the hot paths, dispatch() and wire.pyx's glue,
# call them through a Router-typed receiver, which Cython calls directly.)
@cython.final
cdef class CompiledEngine(Router):
    cdef WireBuffer out             # the wire entry points' output, reused between calls
    cdef WireItem* wire_items       # dispatch_batch_wire's parsed items, reused between calls
    cdef Py_ssize_t cap_wire_items  # wire_items allocated

    cdef object conversation_buyer(self, Py_ssize_t idx)
