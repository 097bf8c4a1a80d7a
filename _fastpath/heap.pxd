# heap: indexed binary min-heaps of agent slots, the per-roster orders behind
# spec §5 (LEAST_SATURATION, FEWEST_UNREAD) and the eligibility of every
# roster member (a member is in its roster's heaps iff it is eligible now).

# The order of a heap.
cdef enum:
    HEAP_SAT = 0      # saturation active / max_capacity (exact, cross-multiplied), then slot
    HEAP_UNREAD = 1   # unread, then account creation time, then slot

# Invariants: items[0:size] is heap-ordered by the kind's key; pos[slot] is the
# index of slot in items, or -1 when absent; both arrays have room for every
# agent slot of the shop (allocated by Shop.rebuild).
ctypedef struct Heap:
    int32_t* items    # the agent slots, heap-ordered
    int32_t* pos      # per agent slot: its index in items, or -1
    int32_t size      # items in the heap
    int32_t kind      # HEAP_SAT or HEAP_UNREAD
