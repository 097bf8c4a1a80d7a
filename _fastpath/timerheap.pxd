# timerheap: the C storage of the timed rules (timerheap.pyx; the rules are in
# timers.pyx and, plainly, in reference/timers.py). TIMER_* and CONV_TRACKED
# are in timers.pxd.

# What a shop that uses timed rules remembers of one of its conversations
# (reference: shop.Track). Slab slots are reused (a free one has key NULL).
# Invariants (live track, key != NULL): the conversation's Entry has
# CONV_TRACKED and at_ms == its id; `agent` is the Entry's handle while an
# agent holds it (flags & CONV_WAIT_MASK == 0), -1 while it waits or before it
# is first placed; it is in exactly one of its shop's track lists (ShopTimers):
# held[agent] when agent >= 0, else unheld, doubly linked through prev/next
# (-1 ends a list). Timers.link / Timers.unlink are the only writers of agent,
# prev and next. A free slot (key NULL) is only on the free list, chained
# through `next`.
ctypedef struct Track:
    char* key             # the conversation id's UTF-8 bytes, then the source's (malloc'd)
    int32_t klen          # conversation id length
    int32_t slen          # source length (0: none)
    int32_t shop          # shop handle
    int32_t agent         # the holder's slot, -1 while it waits
    int32_t order_state   # the order state it was dispatched with
    int32_t reroutes      # times re-routed for silence
    int32_t timer         # its pending REROUTE or QUEUE timer id, -1: none
    int32_t prev          # the previous track of its list, -1: it is the head
    int32_t next          # the next track of its list, -1: the last; free slot: the next free slot


# A reclaim's work list entry (timers_fire): a held track and its key, sorted by
# the key bytes (the conversation id order of the reference, reference/timers.py).
ctypedef struct HeldKey:
    const char* key       # Track.key (the conversation id's UTF-8 bytes)
    int32_t klen          # Track.klen
    int32_t tid           # the Track id


# A pending deadline. Slab slots are reused (pos -1: free).
ctypedef struct Timer:
    int64_t deadline      # fires when its shop's time reaches it
    int64_t seq           # engine-wide order of setting: ties between equal deadlines
    int32_t shop          # shop handle
    int32_t kind          # TIMER_*
    int32_t ref           # a Track id or an agent slot (see TIMER_*)
    int32_t pos           # index in its shop's heap; -1: free


# One shop's settings (copied from its configuration by timers_configure) and
# deadlines: a binary min-heap of timer ids by (deadline, seq), timers[id].pos
# its index. agent_reroute[slot] is the re-route delay of what that agent
# receives (0: none; robots 0); reclaim[slot] its reclaim timer or -1.
# The track lists (see Track): held[slot] is the first track of the
# conversations agent `slot` holds (-1: none), the ones a reclaim of that agent
# looks at (it moves those whose buyer awaits a reply: CONV_UNREAD is read when
# it fires, so messages and replies never touch the lists); unheld is the first
# track of the shop's waiting (or not yet placed) conversations. Every live
# track of the shop is in exactly one of them, so a reclaim touches only its
# agent's conversations and dropping a shop's tracks only the shop's; a list's
# order means nothing (a reclaim sorts its conversations by id). Invariant:
# n_slots > every slot that holds a tracked conversation (grow_slots).
ctypedef struct ShopTimers:
    int64_t reroute_ms
    int64_t reclaim_ms
    int64_t queue_ms
    int32_t max_reroutes
    int32_t tracking      # 1: any rule on: every conversation of the shop has a Track
    int64_t* agent_reroute
    int32_t* reclaim
    int32_t* held         # per agent slot: head of its held-track list, -1: empty
    int32_t unheld        # head of the list of tracks no agent holds, -1: empty
    int32_t n_slots       # length of agent_reroute, reclaim and held
    int32_t* heap         # timer ids
    int32_t size
    int32_t cap
    int32_t gpos          # index in Timers.gheap, -1 while the heap is empty
    int32_t hours         # its pending TIMER_HOURS timer id, -1: none (hours.pyx)


# Every shop's deadlines, and the global order of shops by their next one
# (gheap: shop handles by their heap top), so tick() finds what is due in
# O(log shops) per deadline and touches nothing else.
@cython.final
cdef class Timers:
    cdef Track* tracks
    cdef int32_t n_tracks         # slots handed out
    cdef int32_t cap_tracks
    cdef int32_t free_track       # first free slot, -1
    cdef Timer* slab
    cdef int32_t n_slab
    cdef int32_t cap_slab
    cdef int32_t free_timer       # first free slot (chained through ref), -1
    cdef ShopTimers* shops        # by shop handle
    cdef int32_t n_shops
    cdef int32_t* gheap
    cdef int32_t gsize
    cdef int32_t gcap
    cdef int64_t seq              # the next timer's seq (state: exported)
    cdef int64_t pending          # timers pending

    cdef ShopTimers* shop_timers(self, int32_t handle) except NULL
    cdef bint tracks_shop(self, int32_t handle) noexcept
    cdef bint due(self, int32_t handle, int64_t at) noexcept
    cdef int32_t arm(self, int32_t shop, int32_t kind, int32_t ref, int64_t deadline, int64_t seq) except -1
    cdef void cancel(self, int32_t tid) noexcept
    cdef int32_t new_track(self, int32_t shop, const char* k, Py_ssize_t kn, const char* s, Py_ssize_t sn,
                           int32_t order_state) except -1
    cdef void free_track_slot(self, int32_t tid) noexcept
    cdef int grow_slots(self, ShopTimers* st, int32_t n) except -1
    cdef void unlink(self, int32_t tid) noexcept
    cdef int link(self, int32_t tid, int32_t slot) except -1
    cdef int track_new(self, Shop shop, ByteMap convs, Py_ssize_t conv, const char* s, Py_ssize_t sn,
                       int32_t order_state) except -1
    cdef int on_assign(self, Shop shop, ByteMap convs, Py_ssize_t conv, int32_t slot, int64_t now) except -1
    cdef int on_wait(self, Shop shop, ByteMap convs, Py_ssize_t conv, int32_t kind, int64_t now) except -1
    cdef void on_reply(self, ByteMap convs, Py_ssize_t conv) noexcept
    cdef void on_close(self, ByteMap convs, Py_ssize_t conv) noexcept
    cdef int on_presence(self, Shop shop, int32_t slot, bint went_offline, int64_t now) except -1
    cdef bint less(self, int32_t a, int32_t b) noexcept
    cdef void sift_up(self, ShopTimers* st, int32_t i) noexcept
    cdef void sift_down(self, ShopTimers* st, int32_t i) noexcept
    cdef bint gless(self, int32_t a, int32_t b) noexcept
    cdef void gfix(self, int32_t handle) noexcept
    cdef void gswap(self, int32_t i, int32_t j) noexcept
