# heap: indexed binary min-heaps of agent slots (included by _core.pyx; Heap
# and its invariants are in heap.pxd).
#
# HEAP_SAT orders by saturation active / max_capacity (compared exactly by
# cross-multiplication), then slot; HEAP_UNREAD by unread, then account
# creation time, then slot. pos[] gives every member's index, so an agent
# whose load changed is re-placed in O(log n) without searching.


cdef inline bint heap_less(const Agent* ag, int32_t kind, int32_t x, int32_t y) noexcept nogil:
    cdef int64_t lhs, rhs
    if kind == HEAP_SAT:
        lhs = <int64_t>ag[x].active * ag[y].max_capacity
        rhs = <int64_t>ag[y].active * ag[x].max_capacity
        if lhs != rhs:
            return lhs < rhs
        return x < y
    if ag[x].unread != ag[y].unread:
        return ag[x].unread < ag[y].unread
    if ag[x].created_at_ms != ag[y].created_at_ms:
        return ag[x].created_at_ms < ag[y].created_at_ms
    return x < y


cdef inline void heap_place(Heap* heap, int32_t i, int32_t slot) noexcept nogil:
    heap.items[i] = slot
    heap.pos[slot] = i


cdef void heap_sift_up(Heap* heap, const Agent* ag, int32_t i) noexcept nogil:
    cdef int32_t slot = heap.items[i]
    cdef int32_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if not heap_less(ag, heap.kind, slot, heap.items[parent]):
            break
        heap_place(heap, i, heap.items[parent])
        i = parent
    heap_place(heap, i, slot)


cdef void heap_sift_down(Heap* heap, const Agent* ag, int32_t i) noexcept nogil:
    cdef int32_t slot = heap.items[i]
    cdef int32_t child
    while True:
        child = 2 * i + 1
        if child >= heap.size:
            break
        if child + 1 < heap.size and heap_less(ag, heap.kind, heap.items[child + 1], heap.items[child]):
            child += 1
        if not heap_less(ag, heap.kind, heap.items[child], slot):
            break
        heap_place(heap, i, heap.items[child])
        i = child
    heap_place(heap, i, slot)


cdef void heap_push(Heap* heap, const Agent* ag, int32_t slot) noexcept nogil:
    # Requires pos[slot] == -1; items has room for every agent slot.
    heap_place(heap, heap.size, slot)
    heap.size += 1
    heap_sift_up(heap, ag, heap.size - 1)


cdef void heap_remove(Heap* heap, const Agent* ag, int32_t slot) noexcept nogil:
    cdef int32_t i = heap.pos[slot]
    cdef int32_t moved
    heap.pos[slot] = -1
    heap.size -= 1
    if i == heap.size:
        return
    moved = heap.items[heap.size]
    heap_place(heap, i, moved)
    heap_sift_up(heap, ag, i)
    heap_sift_down(heap, ag, heap.pos[moved])


cdef inline void heap_fix(Heap* heap, const Agent* ag, int32_t slot) noexcept nogil:
    # The slot's key changed: move it up or down to its place.
    heap_sift_up(heap, ag, heap.pos[slot])
    heap_sift_down(heap, ag, heap.pos[slot])


cdef int heap_init(Heap* heap, int32_t kind, int32_t n_slots) except -1:
    cdef int32_t i
    heap.kind = kind
    heap.size = 0
    heap.items = <int32_t*>malloc((n_slots + 1) * sizeof(int32_t))
    heap.pos = <int32_t*>malloc((n_slots + 1) * sizeof(int32_t))
    if heap.items == NULL or heap.pos == NULL:
        raise MemoryError()
    for i in range(n_slots):
        heap.pos[i] = -1
    return 0


cdef void heap_free(Heap* heap) noexcept:
    free(heap.items)
    free(heap.pos)
    heap.items = NULL
    heap.pos = NULL
    heap.size = 0
