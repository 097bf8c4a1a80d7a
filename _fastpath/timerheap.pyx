# timerheap: the C storage of the rules that fire on time (timers.pyx): the
# Track slab (one per conversation of a shop that uses a timed rule), the
# Timer slab, each shop's binary min-heap of timer ids by (deadline, seq), the
# global heap of shops by their next deadline, and the hooks that routing's
# state changes call (on_assign, on_wait, on_reply, on_close, on_presence),
# which also keep each agent's list of the tracks it holds (link, unlink).
# Compiled-only, like hashtable.pyx and heap.pyx: the reference keeps its
# deadlines in plain Python structures (reference/timers.py). Structures and
# invariants: timerheap.pxd.


cdef class Timers:

    def __cinit__(self):
        self.tracks = NULL
        self.n_tracks = self.cap_tracks = 0
        self.free_track = -1
        self.slab = NULL
        self.n_slab = self.cap_slab = 0
        self.free_timer = -1
        self.shops = NULL
        self.n_shops = 0
        self.gheap = NULL
        self.gsize = self.gcap = 0
        self.seq = 0
        self.pending = 0

    def __dealloc__(self):
        cdef int32_t i
        if self.tracks != NULL:
            for i in range(self.n_tracks):
                free(self.tracks[i].key)
            free(self.tracks)
        free(self.slab)
        if self.shops != NULL:
            for i in range(self.n_shops):
                free(self.shops[i].agent_reroute)
                free(self.shops[i].reclaim)
                free(self.shops[i].held)
                free(self.shops[i].heap)
            free(self.shops)
        free(self.gheap)

    cdef ShopTimers* shop_timers(self, int32_t handle) except NULL:
        """The ShopTimers of a shop handle (made, empty, on first use)."""
        cdef int32_t n
        cdef ShopTimers* grown
        if handle >= self.n_shops:
            n = max(handle + 1, 2 * self.n_shops, 8)
            grown = <ShopTimers*>realloc(self.shops, n * sizeof(ShopTimers))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self.n_shops, 0, (n - self.n_shops) * sizeof(ShopTimers))
            for i in range(self.n_shops, n):
                grown[i].gpos = -1
                grown[i].hours = -1
                grown[i].unheld = -1
            self.shops = grown
            self.n_shops = n
        return &self.shops[handle]

    cdef bint tracks_shop(self, int32_t handle) noexcept:
        return handle < self.n_shops and self.shops[handle].tracking

    cdef bint due(self, int32_t handle, int64_t at) noexcept:
        """A deadline of the shop is due by ``at`` (the wire fast paths then decline)."""
        return (handle < self.n_shops and self.shops[handle].size > 0
                and self.slab[self.shops[handle].heap[0]].deadline <= at)

    # ------------------------------------------------------------ the heaps

    cdef bint less(self, int32_t a, int32_t b) noexcept:
        cdef Timer* x = &self.slab[a]
        cdef Timer* y = &self.slab[b]
        return x.deadline < y.deadline or (x.deadline == y.deadline and x.seq < y.seq)

    cdef void sift_up(self, ShopTimers* st, int32_t i) noexcept:
        cdef int32_t parent, t = st.heap[i]
        while i > 0:
            parent = (i - 1) // 2
            if not self.less(t, st.heap[parent]):
                break
            st.heap[i] = st.heap[parent]
            self.slab[st.heap[i]].pos = i
            i = parent
        st.heap[i] = t
        self.slab[t].pos = i

    cdef void sift_down(self, ShopTimers* st, int32_t i) noexcept:
        cdef int32_t child, t = st.heap[i]
        while True:
            child = 2 * i + 1
            if child >= st.size:
                break
            if child + 1 < st.size and self.less(st.heap[child + 1], st.heap[child]):
                child += 1
            if not self.less(st.heap[child], t):
                break
            st.heap[i] = st.heap[child]
            self.slab[st.heap[i]].pos = i
            i = child
        st.heap[i] = t
        self.slab[t].pos = i

    cdef bint gless(self, int32_t a, int32_t b) noexcept:
        return self.less(self.shops[a].heap[0], self.shops[b].heap[0])

    cdef void gswap(self, int32_t i, int32_t j) noexcept:
        cdef int32_t x = self.gheap[i]
        self.gheap[i] = self.gheap[j]
        self.gheap[j] = x
        self.shops[self.gheap[i]].gpos = i
        self.shops[self.gheap[j]].gpos = j

    cdef void gfix(self, int32_t handle) noexcept:
        """Re-place a shop in the global heap after its heap changed (in, out, or moved)."""
        cdef ShopTimers* st = &self.shops[handle]
        cdef int32_t i = st.gpos, child, last
        if st.size == 0:
            if i < 0:
                return
            last = self.gsize - 1
            self.gswap(i, last)
            self.gsize -= 1
            st.gpos = -1
            if i == last:
                return
            handle = self.gheap[i]
        elif i < 0:
            i = self.gsize
            self.gheap[i] = handle
            st.gpos = i
            self.gsize += 1
        while i > 0 and self.gless(self.gheap[i], self.gheap[(i - 1) // 2]):
            self.gswap(i, (i - 1) // 2)
            i = (i - 1) // 2
        while True:
            child = 2 * i + 1
            if child >= self.gsize:
                break
            if child + 1 < self.gsize and self.gless(self.gheap[child + 1], self.gheap[child]):
                child += 1
            if not self.gless(self.gheap[child], self.gheap[i]):
                break
            self.gswap(i, child)
            i = child

    cdef int32_t arm(self, int32_t shop, int32_t kind, int32_t ref, int64_t deadline, int64_t seq) except -1:
        """A new pending timer (seq -1: the next one); its id."""
        cdef ShopTimers* st = self.shop_timers(shop)
        cdef int32_t tid, n
        cdef Timer* grown
        cdef int32_t* heap
        if self.free_timer >= 0:
            tid = self.free_timer
            self.free_timer = self.slab[tid].ref
        else:
            if self.n_slab == self.cap_slab:
                n = max(16, 2 * self.cap_slab)
                grown = <Timer*>realloc(self.slab, n * sizeof(Timer))
                if grown == NULL:
                    raise MemoryError()
                self.slab = grown
                self.cap_slab = n
            tid = self.n_slab
            self.n_slab += 1
        if st.size == st.cap:
            n = max(8, 2 * st.cap)
            heap = <int32_t*>realloc(st.heap, n * sizeof(int32_t))
            if heap == NULL:
                raise MemoryError()
            st.heap = heap
            st.cap = n
        if self.gcap < self.n_shops:
            heap = <int32_t*>realloc(self.gheap, self.n_shops * sizeof(int32_t))
            if heap == NULL:
                raise MemoryError()
            self.gheap = heap
            self.gcap = self.n_shops
        if seq < 0:
            seq = self.seq
            self.seq += 1
        self.slab[tid].deadline = deadline
        self.slab[tid].seq = seq
        self.slab[tid].shop = shop
        self.slab[tid].kind = kind
        self.slab[tid].ref = ref
        st.heap[st.size] = tid
        st.size += 1
        self.sift_up(st, st.size - 1)
        self.gfix(shop)
        self.pending += 1
        return tid

    cdef void cancel(self, int32_t tid) noexcept:
        """Take a pending timer out of its shop's heap and free it."""
        cdef Timer* t = &self.slab[tid]
        cdef ShopTimers* st = &self.shops[t.shop]
        cdef int32_t i = t.pos, shop = t.shop, moved
        st.size -= 1
        if i < st.size:
            moved = st.heap[st.size]
            st.heap[i] = moved
            self.slab[moved].pos = i
            self.sift_down(st, i)
            self.sift_up(st, self.slab[moved].pos)
        t.pos = -1
        t.ref = self.free_timer
        self.free_timer = tid
        self.pending -= 1
        self.gfix(shop)

    # ------------------------------------------------------------ tracks

    cdef int32_t new_track(self, int32_t shop, const char* k, Py_ssize_t kn, const char* s, Py_ssize_t sn,
                           int32_t order_state) except -1:
        cdef int32_t tid, n
        cdef Track* grown
        cdef Track* t
        cdef ShopTimers* st
        cdef char* block = <char*>malloc(kn + sn + 1)
        if block == NULL:
            raise MemoryError()
        memcpy(block, k, kn)
        if sn:
            memcpy(block + kn, s, sn)
        if self.free_track >= 0:
            tid = self.free_track
            self.free_track = self.tracks[tid].next
        else:
            if self.n_tracks == self.cap_tracks:
                n = max(16, 2 * self.cap_tracks)
                grown = <Track*>realloc(self.tracks, n * sizeof(Track))
                if grown == NULL:
                    free(block)
                    raise MemoryError()
                self.tracks = grown
                self.cap_tracks = n
            tid = self.n_tracks
            self.n_tracks += 1
        t = &self.tracks[tid]
        t.key = block
        t.klen = <int32_t>kn
        t.slen = <int32_t>sn
        t.shop = shop
        t.agent = -1
        t.order_state = order_state
        t.reroutes = 0
        t.timer = -1
        # First in the shop's unheld list (its ShopTimers exists: the shop tracks).
        st = &self.shops[shop]
        t.prev = -1
        t.next = st.unheld
        if st.unheld >= 0:
            self.tracks[st.unheld].prev = tid
        st.unheld = tid
        return tid

    cdef void free_track_slot(self, int32_t tid) noexcept:
        cdef Track* t = &self.tracks[tid]
        if t.timer >= 0:
            self.cancel(t.timer)
        self.unlink(tid)
        free(t.key)
        t.key = NULL
        t.timer = -1
        t.agent = -1
        t.prev = -1
        t.next = self.free_track
        self.free_track = tid

    cdef int grow_slots(self, ShopTimers* st, int32_t n) except -1:
        """Room for agent slots [0, n) in the shop's per-slot arrays (new slots: no delay,
        no reclaim, nothing held)."""
        cdef int64_t* reroute
        cdef int32_t* ints
        cdef int32_t s
        if n <= st.n_slots:
            return 0
        reroute = <int64_t*>realloc(st.agent_reroute, n * sizeof(int64_t))
        if reroute == NULL:
            raise MemoryError()
        st.agent_reroute = reroute
        ints = <int32_t*>realloc(st.reclaim, n * sizeof(int32_t))
        if ints == NULL:
            raise MemoryError()
        st.reclaim = ints
        ints = <int32_t*>realloc(st.held, n * sizeof(int32_t))
        if ints == NULL:
            raise MemoryError()
        st.held = ints
        for s in range(st.n_slots, n):
            st.agent_reroute[s] = 0
            st.reclaim[s] = -1
            st.held[s] = -1
        st.n_slots = n
        return 0

    cdef void unlink(self, int32_t tid) noexcept:
        """Take a live track out of its list (held[agent] or unheld)."""
        cdef Track* t = &self.tracks[tid]
        cdef ShopTimers* st = &self.shops[t.shop]
        if t.prev >= 0:
            self.tracks[t.prev].next = t.next
        elif t.agent >= 0:
            st.held[t.agent] = t.next
        else:
            st.unheld = t.next
        if t.next >= 0:
            self.tracks[t.next].prev = t.prev
        t.prev = t.next = -1

    cdef int link(self, int32_t tid, int32_t slot) except -1:
        """A live track's holder is now ``slot`` (-1: nobody, it waits): it moves to the
        head of that list. The only way Track.agent changes (see timerheap.pxd)."""
        cdef Track* t = &self.tracks[tid]
        cdef ShopTimers* st = &self.shops[t.shop]
        cdef int32_t* head
        if slot >= st.n_slots:
            self.grow_slots(st, slot + 1)
        self.unlink(tid)
        t.agent = slot
        head = &st.held[slot] if slot >= 0 else &st.unheld
        t.next = head[0]
        if t.next >= 0:
            self.tracks[t.next].prev = tid
        head[0] = tid
        return 0

    # ------------------------------------------------------------ hooks (reference: timers.on_*)

    cdef int track_new(self, Shop shop, ByteMap convs, Py_ssize_t conv, const char* s, Py_ssize_t sn,
                       int32_t order_state) except -1:
        """A new conversation (before it is assigned or waits): tracked if its shop tracks."""
        cdef Entry* e
        cdef int32_t tid
        if not self.tracks_shop(shop.handle):
            return 0
        e = &convs.entries[conv]
        tid = self.new_track(shop.handle, entry_bytes(e), e.klen, s, sn, order_state)
        e = &convs.entries[conv]
        e.flags |= CONV_TRACKED
        e.at_ms = tid
        return 0

    cdef int on_assign(self, Shop shop, ByteMap convs, Py_ssize_t conv, int32_t slot, int64_t now) except -1:
        """``slot`` received the conversation: its re-route deadline starts (reference: on_assign)."""
        cdef Entry* e = &convs.entries[conv]
        cdef Track* t
        cdef ShopTimers* st
        cdef int32_t tid
        cdef int64_t delay
        if not (e.flags & CONV_TRACKED):
            return 0
        tid = <int32_t>e.at_ms
        t = &self.tracks[tid]
        if t.timer >= 0:
            self.cancel(t.timer)
            t.timer = -1
        self.link(tid, slot)
        t = &self.tracks[tid]
        st = &self.shops[shop.handle]
        delay = st.agent_reroute[slot] if slot < st.n_slots else 0
        if delay and t.reroutes < st.max_reroutes:
            t.timer = self.arm(shop.handle, TIMER_REROUTE, tid, now + delay, -1)
        return 0

    cdef int on_wait(self, Shop shop, ByteMap convs, Py_ssize_t conv, int32_t kind, int64_t now) except -1:
        """The conversation starts waiting in ``kind``: in the queue, its max_queue_wait starts."""
        cdef Entry* e = &convs.entries[conv]
        cdef Track* t
        cdef ShopTimers* st
        if not (e.flags & CONV_TRACKED):
            return 0
        t = &self.tracks[<int32_t>e.at_ms]
        if t.agent >= 0:
            self.link(<int32_t>e.at_ms, -1)
        st = &self.shops[shop.handle]
        if kind == WAIT_QUEUE and st.queue_ms:
            t.timer = self.arm(shop.handle, TIMER_QUEUE, <int32_t>e.at_ms, now + st.queue_ms, -1)
        return 0

    cdef void on_reply(self, ByteMap convs, Py_ssize_t conv) noexcept:
        """Its agent replied: no re-route for silence."""
        cdef Entry* e = &convs.entries[conv]
        cdef Track* t
        if e.flags & CONV_TRACKED:
            t = &self.tracks[<int32_t>e.at_ms]
            if t.timer >= 0 and self.slab[t.timer].kind == TIMER_REROUTE:
                self.cancel(t.timer)
                t.timer = -1

    cdef void on_close(self, ByteMap convs, Py_ssize_t conv) noexcept:
        """Closed (called before its entry goes): its track and deadlines go."""
        cdef Entry* e = &convs.entries[conv]
        if e.flags & CONV_TRACKED:
            self.free_track_slot(<int32_t>e.at_ms)

    cdef int on_presence(self, Shop shop, int32_t slot, bint went_offline, int64_t now) except -1:
        """Presence set: going OFFLINE starts the agent's reclaim deadline, anything else clears it."""
        cdef ShopTimers* st
        cdef Agent* a = &shop.agents[slot]
        if shop.handle >= self.n_shops:
            return 0
        st = &self.shops[shop.handle]
        if slot >= st.n_slots:
            return 0
        if a.presence != PRESENCE_OFFLINE or a.deleted:
            if st.reclaim[slot] >= 0:
                self.cancel(st.reclaim[slot])
                st.reclaim[slot] = -1
        elif went_offline and st.reclaim_ms:
            st.reclaim[slot] = self.arm(shop.handle, TIMER_RECLAIM, slot, now + st.reclaim_ms, -1)
        return 0
