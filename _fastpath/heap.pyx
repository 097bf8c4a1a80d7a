# Indexed binary min-heaps of agent slots (included by _core.pyx).
#
# HEAP_SAT orders by saturation active / max_capacity (compared exactly by
# cross-multiplication), then slot; HEAP_UNREAD by unread, then account
# creation time, then slot. pos[] gives every member's index, so an agent
# whose load changed is re-placed in O(log n) without searching.

cdef enum:
    HEAP_SAT = 0
    HEAP_UNREAD = 1


cdef inline bint heap_less(const Agent* ag, int32_t kind, int32_t x, int32_t y) noexcept nogil:
    cdef int64_t l, r
    if kind == HEAP_SAT:
        l = <int64_t>ag[x].active * ag[y].max_capacity
        r = <int64_t>ag[y].active * ag[x].max_capacity
        if l != r:
            return l < r
        return x < y
    if ag[x].unread != ag[y].unread:
        return ag[x].unread < ag[y].unread
    if ag[x].created_at_ms != ag[y].created_at_ms:
        return ag[x].created_at_ms < ag[y].created_at_ms
    return x < y


cdef inline void heap_place(Heap* h, int32_t i, int32_t slot) noexcept nogil:
    h.items[i] = slot
    h.pos[slot] = i


cdef void heap_sift_up(Heap* h, const Agent* ag, int32_t i) noexcept nogil:
    cdef int32_t slot = h.items[i]
    cdef int32_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if not heap_less(ag, h.kind, slot, h.items[parent]):
            break
        heap_place(h, i, h.items[parent])
        i = parent
    heap_place(h, i, slot)


cdef void heap_sift_down(Heap* h, const Agent* ag, int32_t i) noexcept nogil:
    cdef int32_t slot = h.items[i]
    cdef int32_t child
    while True:
        child = 2 * i + 1
        if child >= h.size:
            break
        if child + 1 < h.size and heap_less(ag, h.kind, h.items[child + 1], h.items[child]):
            child += 1
        if not heap_less(ag, h.kind, h.items[child], slot):
            break
        heap_place(h, i, h.items[child])
        i = child
    heap_place(h, i, slot)


cdef void heap_push(Heap* h, const Agent* ag, int32_t slot) noexcept nogil:
    # Requires pos[slot] == -1; items has room for every agent slot.
    heap_place(h, h.size, slot)
    h.size += 1
    heap_sift_up(h, ag, h.size - 1)


cdef void heap_remove(Heap* h, const Agent* ag, int32_t slot) noexcept nogil:
    cdef int32_t i = h.pos[slot]
    cdef int32_t moved
    h.pos[slot] = -1
    h.size -= 1
    if i == h.size:
        return
    moved = h.items[h.size]
    heap_place(h, i, moved)
    heap_sift_up(h, ag, i)
    heap_sift_down(h, ag, h.pos[moved])


cdef inline void heap_fix(Heap* h, const Agent* ag, int32_t slot) noexcept nogil:
    # The slot's key changed: move it up or down to its place.
    heap_sift_up(h, ag, h.pos[slot])
    heap_sift_down(h, ag, h.pos[slot])


cdef int heap_init(Heap* h, int32_t kind, int32_t n_slots) except -1:
    cdef int32_t i
    h.kind = kind
    h.size = 0
    h.items = <int32_t*>malloc((n_slots + 1) * sizeof(int32_t))
    h.pos = <int32_t*>malloc((n_slots + 1) * sizeof(int32_t))
    if h.items == NULL or h.pos == NULL:
        raise MemoryError()
    for i in range(n_slots):
        h.pos[i] = -1
    return 0


cdef void heap_free(Heap* h) noexcept:
    free(h.items)
    free(h.pos)
    h.items = NULL
    h.pos = NULL
    h.size = 0
