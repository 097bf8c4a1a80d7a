# Shop: one tenant's agents, groups and pools in C arrays (included by _core.pyx).
#
# Configuration changes (rare) rebuild the pools from the Python-level
# configuration; load and presence changes (frequent) go through refresh(),
# which keeps every pool's heaps and counters exact in O(pools * log n).


cdef inline bint has_room(const Agent* a) noexcept nogil:
    # A robot with max_capacity 0 has no limit.
    if a.role == ROLE_ROBOT and a.max_capacity == 0:
        return True
    return a.active < a.max_capacity


cdef int cmp_int64(const void* x, const void* y) noexcept nogil:
    cdef int64_t a = (<const int64_t*>x)[0]
    cdef int64_t b = (<const int64_t*>y)[0]
    return (a > b) - (a < b)


cdef int32_t kth_smallest(int32_t* v, int32_t n, int32_t k) noexcept nogil:
    # Quickselect: the k-th smallest (0-based) of v[0:n]; reorders v.
    cdef int32_t lo = 0, hi = n - 1, i, j, pivot, tmp
    while lo < hi:
        pivot = v[(lo + hi) >> 1]
        i = lo
        j = hi
        while i <= j:
            while v[i] < pivot:
                i += 1
            while v[j] > pivot:
                j -= 1
            if i <= j:
                tmp = v[i]; v[i] = v[j]; v[j] = tmp
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return v[k]
    return v[k]


cdef class Shop:

    def __cinit__(self):
        self.agents = NULL
        self.n_agents = 0
        self.cap_agents = 0
        self.groups = NULL
        self.n_groups = 0
        self.pools = NULL
        self.n_pools = 0
        self.scratch = NULL
        self.agent_slot = {}
        self.group_configs = []
        self.group_sources = []
        self.waiting_queue = deque()
        self.waiting_staging = deque()
        self.waiting_pool = deque()
        self.live = 0
        self.clock = 0
        self.day = 0
        self.day_start = 0
        self.day_end = 0

    def __dealloc__(self):
        cdef int32_t i
        self.free_pools()
        if self.agents != NULL:
            for i in range(self.n_agents):
                Py_XDECREF(self.agents[i].id)
            free(self.agents)
        free(self.scratch)

    cdef int add_agent_slot(self, object agent_id) except -1:
        cdef int32_t slot = self.n_agents
        cdef int32_t cap
        cdef Agent* grown
        cdef int32_t* scratch
        cdef Agent* a
        if slot == self.cap_agents:
            cap = self.cap_agents * 2 if self.cap_agents else 8
            grown = <Agent*>realloc(self.agents, cap * sizeof(Agent))
            if grown == NULL:
                raise MemoryError()
            self.agents = grown
            scratch = <int32_t*>realloc(self.scratch, 2 * cap * sizeof(int32_t))
            if scratch == NULL:
                raise MemoryError()
            self.scratch = scratch
            self.cap_agents = cap
        a = &self.agents[slot]
        memset(a, 0, sizeof(Agent))
        a.id = <PyObject*>agent_id
        Py_INCREF(agent_id)
        a.offline_at_ms = -1
        a.presence = PRESENCE_OFFLINE
        a.client = CLIENT_DESKTOP
        self.agent_slot[agent_id] = slot
        self.n_agents += 1
        return slot

    cdef void free_pools(self) noexcept:
        cdef int32_t i
        cdef Pool* p
        if self.pools != NULL:
            for i in range(self.n_pools):
                p = &self.pools[i]
                free(p.members)
                free(p.is_member)
                heap_free(&p.sat)
                heap_free(&p.unread)
                free(p.rr_order)
                free(p.rr_credit)
                free(p.rr_full)
            free(self.pools)
            self.pools = NULL
        if self.groups != NULL:
            for i in range(self.n_groups):
                Py_XDECREF(self.groups[i].id)
                free(self.groups[i].sources)
            free(self.groups)
            self.groups = NULL
        self.n_pools = 0
        self.n_groups = 0

    cdef bint available(self, int32_t slot) noexcept:
        # ONLINE (not suspended) on a client that counts, with chat permission.
        cdef const Agent* a = &self.agents[slot]
        return (not a.deleted and a.role != ROLE_ROBOT and a.chat_permission
                and a.presence == PRESENCE_ONLINE
                and (a.client != CLIENT_MOBILE or self.mobile_dispatch))

    cdef int rebuild(self) except -1:
        """Recompute groups and pools from the configuration; every round robin restarts."""
        cdef int32_t n = self.n_agents
        cdef int32_t gi, s, k, pi
        cdef Group* g
        cdef Pool* p
        cdef Agent* a
        cdef object cfg, robot_id
        cdef list handles
        cdef bint member_mode = self.mode == MODE_MEMBER
        self.free_pools()
        self.n_groups = len(self.group_configs)
        self.n_pools = self.n_groups + 1
        self.groups = <Group*>calloc(self.n_groups + 1, sizeof(Group))
        self.pools = <Pool*>calloc(self.n_pools, sizeof(Pool))
        if self.groups == NULL or self.pools == NULL:
            raise MemoryError()
        for s in range(n):
            self.agents[s].n_groups = 0
        for pi in range(self.n_pools):
            p = &self.pools[pi]
            p.members = <int32_t*>malloc((n + 1) * sizeof(int32_t))
            p.is_member = <uint8_t*>calloc(n + 1, 1)
            if p.members == NULL or p.is_member == NULL:
                raise MemoryError()
            heap_init(&p.sat, HEAP_SAT, n)
            heap_init(&p.unread, HEAP_UNREAD, n)
        for gi in range(self.n_groups):
            cfg = self.group_configs[gi]
            g = &self.groups[gi]
            g.id = <PyObject*>cfg.group_id
            Py_INCREF(cfg.group_id)
            g.pool = gi + 1
            g.robot_enabled = cfg.robot_enabled
            robot_id = cfg.robot_agent_id or self.config.robot_agent_id
            g.robot_slot = self.agent_slot.get(robot_id, -1) if robot_id else -1
            g.strategy = cfg.strategy
            g.order_mask = 0
            for k in cfg.order_states:
                g.order_mask |= (<uint32_t>1) << k
            handles = self.group_sources[gi]
            g.n_sources = len(handles)
            g.sources = <int32_t*>malloc((g.n_sources + 1) * sizeof(int32_t))
            if g.sources == NULL:
                raise MemoryError()
            for k in range(g.n_sources):
                g.sources[k] = handles[k]
            p = &self.pools[gi + 1]
            for member in cfg.members:
                s = self.agent_slot[member]
                self.agents[s].n_groups += 1
                if self.agents[s].role != ROLE_MAIN or member_mode:
                    p.is_member[s] = 1
        # The shop-wide pool: who falls back (or everyone, without groups).
        p = &self.pools[0]
        for s in range(n):
            a = &self.agents[s]
            if a.deleted or a.role == ROLE_ROBOT:
                continue
            if a.role == ROLE_MAIN:
                if self.mode == MODE_ONLY_MAIN or self.mode == MODE_MEMBER:
                    p.is_member[s] = 1
            elif self.mode == MODE_ONLY_MAIN:
                continue
            elif a.role == ROLE_PROXY:
                if a.n_groups > 0:
                    p.is_member[s] = 1
            else:
                p.is_member[s] = 1
        for s in range(n):
            self.agents[s].avail = self.available(s)
        for pi in range(self.n_pools):
            p = &self.pools[pi]
            p.n_members = 0
            p.n_avail = 0
            for s in range(n):
                if not p.is_member[s]:
                    continue
                p.members[p.n_members] = s
                p.n_members += 1
                a = &self.agents[s]
                if a.avail:
                    p.n_avail += 1
                    if a.active < a.max_capacity:
                        heap_push(&p.sat, self.agents, s)
                        heap_push(&p.unread, self.agents, s)
            p.rr_ready = 0
        return 0

    cdef void refresh(self, int32_t slot) noexcept:
        """The agent's load, presence or permission changed: re-place it in every pool."""
        cdef Agent* a = &self.agents[slot]
        cdef bint now_avail = self.available(slot)
        cdef bint eligible = now_avail and a.active < a.max_capacity
        cdef int32_t pi
        cdef Pool* p
        for pi in range(self.n_pools):
            p = &self.pools[pi]
            if not p.is_member[slot]:
                continue
            if now_avail != a.avail:
                p.n_avail += 1 if now_avail else -1
            if eligible:
                if p.sat.pos[slot] < 0:
                    heap_push(&p.sat, self.agents, slot)
                    heap_push(&p.unread, self.agents, slot)
                else:
                    heap_fix(&p.sat, self.agents, slot)
                    heap_fix(&p.unread, self.agents, slot)
            elif p.sat.pos[slot] >= 0:
                heap_remove(&p.sat, self.agents, slot)
                heap_remove(&p.unread, self.agents, slot)
        a.avail = now_avail

    cdef void prefetch(self) noexcept:
        """Start loading what a decision for this shop reads: the agent array,
        the pools, their membership and heap arrays (up to PREFETCH_BYTES each).
        At many shops every one of these is a cache miss; issued together they
        overlap instead of following one another. A hint: no effect on results."""
        cdef const char* p
        cdef Py_ssize_t off, n
        cdef int32_t pi
        cdef Pool* pool
        p = <const char*>self.agents
        n = min(<Py_ssize_t>self.n_agents * <Py_ssize_t>sizeof(Agent), PREFETCH_BYTES)
        for off in range(0, n, 64):
            __builtin_prefetch(p + off)
        p = <const char*>self.pools
        n = min(<Py_ssize_t>self.n_pools * <Py_ssize_t>sizeof(Pool), PREFETCH_BYTES)
        for off in range(0, n, 64):
            __builtin_prefetch(p + off)
        n = min(<Py_ssize_t>self.n_agents * 4, PREFETCH_BYTES)
        for pi in range(self.n_pools):
            pool = &self.pools[pi]
            __builtin_prefetch(pool.is_member)
            for off in range(0, n, 64):
                __builtin_prefetch(<const char*>pool.sat.items + off)
                __builtin_prefetch(<const char*>pool.sat.pos + off)
                __builtin_prefetch(<const char*>pool.unread.items + off)
                __builtin_prefetch(<const char*>pool.unread.pos + off)

    # ------------------------------------------------------------ time

    cdef int32_t day_of(self, int64_t now) except -1:
        # Cached local day; recomputed (in Python) about once a day per shop.
        if not (self.day_start <= now < self.day_end):
            day, start, end = day_bounds(self.config.timezone, now)
            self.day = day
            self.day_start = start
            self.day_end = end
        return self.day

    cdef int32_t today_of(self, int32_t slot, int64_t now) except -1:
        cdef int32_t day = self.day_of(now)
        return self.agents[slot].today if self.agents[slot].today_day == day else 0

    cdef int bump_today(self, int32_t slot, int64_t now) except -1:
        cdef int32_t day = self.day_of(now)
        cdef Agent* a = &self.agents[slot]
        if a.today_day != day:
            a.today_day = day
            a.today = 0
        a.today += 1
        return 0

    cdef int32_t rand_below(self, int32_t n) noexcept:
        # SplitMix64, drawn only when there is a choice (n > 1).
        cdef uint64_t z
        if n <= 1:
            return 0
        self.rng += <uint64_t>0x9E3779B97F4A7C15
        z = self.rng
        z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
        z = z ^ (z >> 31)
        return <int32_t>(z % <uint64_t>n)

    # ------------------------------------------------------------ strategies

    cdef int32_t pick(self, int32_t pool, int32_t strategy, int32_t exclude, int64_t now) except -2:
        """One eligible member of the pool by the strategy, or -1.

        `exclude` (a transfer's current holder) is taken out of the heaps for
        the pick; every strategy then reads eligibility from the heap.
        """
        cdef Pool* p = &self.pools[pool]
        cdef bint removed = exclude >= 0 and p.sat.pos[exclude] >= 0
        cdef int32_t chosen
        if removed:
            heap_remove(&p.sat, self.agents, exclude)
            heap_remove(&p.unread, self.agents, exclude)
        if p.sat.size == 0:
            chosen = -1
        elif strategy == STRATEGY_LEAST_SATURATION:
            chosen = self.pick_saturation(p)
        elif strategy == STRATEGY_FEWEST_UNREAD:
            chosen = p.unread.items[0]
        elif strategy == STRATEGY_FEWEST_TODAY:
            chosen = self.pick_today(p, exclude, now)
        elif strategy == STRATEGY_WEIGHTED_BUSYNESS:
            chosen = self.pick_weighted(p, exclude)
        else:
            chosen = self.pick_round_robin(p, exclude)
        if removed:
            heap_push(&p.sat, self.agents, exclude)
            heap_push(&p.unread, self.agents, exclude)
        return chosen

    cdef int32_t pick_saturation(self, Pool* p) noexcept:
        # The agents tied at the lowest saturation form a subtree at the heap's
        # root: collect it depth-first, then take the (random k)-th by slot.
        cdef int32_t* stack = self.scratch
        cdef int32_t* ties = self.scratch + self.cap_agents
        cdef int32_t sp = 0, nt = 0, i, s, child
        cdef int32_t top = p.sat.items[0]
        cdef const Agent* ag = self.agents
        cdef int64_t top_active = ag[top].active, top_cap = ag[top].max_capacity
        stack[sp] = 0
        sp += 1
        while sp:
            sp -= 1
            i = stack[sp]
            s = p.sat.items[i]
            if <int64_t>ag[s].active * top_cap != top_active * ag[s].max_capacity:
                continue
            ties[nt] = s
            nt += 1
            child = 2 * i + 1
            if child < p.sat.size:
                stack[sp] = child
                sp += 1
            if child + 1 < p.sat.size:
                stack[sp] = child + 1
                sp += 1
        if nt == 1:
            return ties[0]
        return kth_smallest(ties, nt, self.rand_below(nt))

    cdef int32_t pick_today(self, Pool* p, int32_t exclude, int64_t now) except -2:
        cdef int32_t* ties = self.scratch
        cdef int32_t nt = 0, i, s, v
        cdef int32_t best = 0x7fffffff
        cdef int32_t day = self.day_of(now)
        for i in range(p.n_members):
            s = p.members[i]
            if p.sat.pos[s] < 0:
                continue
            v = self.agents[s].today if self.agents[s].today_day == day else 0
            if v < best:
                best = v
                nt = 0
            if v == best:
                ties[nt] = s
                nt += 1
        return ties[self.rand_below(nt)]

    cdef int32_t pick_weighted(self, Pool* p, int32_t exclude) noexcept:
        # Not busy (unread <= threshold) first, lowest active/weight; if all
        # are busy, lowest unread/weight. Ties: higher weight, then random.
        cdef int32_t* ties = self.scratch
        cdef int32_t nt = 0, i, s, best = -1
        cdef bint calm = False
        cdef const Agent* ag = self.agents
        cdef int64_t l, r
        for i in range(p.n_members):
            s = p.members[i]
            if p.sat.pos[s] >= 0 and ag[s].unread <= self.busy_threshold:
                calm = True
                break
        for i in range(p.n_members):
            s = p.members[i]
            if p.sat.pos[s] < 0 or (calm and ag[s].unread > self.busy_threshold):
                continue
            if best < 0:
                best = s
                ties[0] = s
                nt = 1
                continue
            if calm:
                l = <int64_t>ag[s].active * ag[best].weight
                r = <int64_t>ag[best].active * ag[s].weight
            else:
                l = <int64_t>ag[s].unread * ag[best].weight
                r = <int64_t>ag[best].unread * ag[s].weight
            if l < r or (l == r and ag[s].weight > ag[best].weight):
                best = s
                ties[0] = s
                nt = 1
            elif l == r and ag[s].weight == ag[best].weight:
                ties[nt] = s
                nt += 1
        return ties[self.rand_below(nt)]

    cdef int rr_build(self, Pool* p) except -1:
        # A fresh cycle: members by capacity desc then slot, credits full.
        cdef int32_t n = p.n_members
        cdef int32_t i, s, divisor = 0
        cdef int64_t* keys
        free(p.rr_order)
        free(p.rr_credit)
        free(p.rr_full)
        p.rr_order = <int32_t*>malloc((n + 1) * sizeof(int32_t))
        p.rr_credit = <int32_t*>malloc((n + 1) * sizeof(int32_t))
        p.rr_full = <int32_t*>malloc((n + 1) * sizeof(int32_t))
        keys = <int64_t*>malloc((n + 1) * sizeof(int64_t))
        if p.rr_order == NULL or p.rr_credit == NULL or p.rr_full == NULL or keys == NULL:
            free(keys)
            raise MemoryError()
        for i in range(n):
            s = p.members[i]
            keys[i] = ((<int64_t>0x7fffffff - self.agents[s].max_capacity) << 32) | s
            divisor = gcd32(divisor, self.agents[s].max_capacity)
        qsort(keys, n, sizeof(int64_t), cmp_int64)
        for i in range(n):
            s = <int32_t>(keys[i] & 0xffffffff)
            p.rr_order[i] = s
            p.rr_full[i] = self.agents[s].max_capacity // divisor
            p.rr_credit[i] = p.rr_full[i]
        free(keys)
        p.rr_cursor = 0
        p.rr_ready = 1
        return 0

    cdef int32_t pick_round_robin(self, Pool* p, int32_t exclude) except -2:
        # Cycle: each member gets capacity/gcd turns; a pass visits every
        # member with credit left in capacity order; full members sit out.
        cdef int32_t n = p.n_members
        cdef int32_t i, s, phase, start
        if not p.rr_ready:
            self.rr_build(p)
        for phase in range(3):
            if phase == 2:
                memcpy(p.rr_credit, p.rr_full, n * sizeof(int32_t))
            start = p.rr_cursor if phase == 0 else 0
            for i in range(start, n):
                s = p.rr_order[i]
                if p.rr_credit[i] > 0 and p.sat.pos[s] >= 0:
                    p.rr_credit[i] -= 1
                    p.rr_cursor = i + 1
                    return s
            p.rr_cursor = 0
        return -1


cdef inline int32_t gcd32(int32_t a, int32_t b) noexcept nogil:
    cdef int32_t t
    while b:
        t = a % b
        a = b
        b = t
    return a
