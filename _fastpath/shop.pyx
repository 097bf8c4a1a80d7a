# shop: one tenant's storage in C arrays (spec §2): agents by slot, groups,
# the rosters (who each strategy may pick from), the local-day cache behind
# the "today" counts (§5 FEWEST_TODAY, reset at the shop's midnight) and the
# seeded PRNG of "random" ties (§9). Included by _core.pyx; the invariants of
# Agent, Group, Roster and Shop are in shop.pxd.
#
# Configuration changes (rare) rebuild the groups and rosters from the
# Python-level configuration; load and presence changes (frequent) go through
# refresh(), which keeps every roster's heaps and counters exact in
# O(rosters * log n).


cdef inline object agent_id_of(Shop shop, int32_t slot):
    """The agent id str of a slot."""
    return <object>shop.agents[slot].id


cdef class WaitList:
    """A shop's queue, staging or message pool: one FIFO per priority (see shop.pxd)."""

    def __cinit__(self):
        # A level's deque is made by its first push (an empty deque is ~760 bytes: ten
        # per list, three lists per shop, would be ~23 KB for every shop, most of which
        # never wait). None: the level never held an item.
        self.levels = [None] * N_PRIORITIES
        self.n = 0
        self.last_handout_ms = -1
        self.interval_ms = -1

    def __len__(self):
        return self.n

    def __bool__(self):
        return self.n > 0

    def __iter__(self):
        cdef int32_t p
        for p in range(N_PRIORITIES - 1, -1, -1):
            level = self.levels[p]
            if level is not None:
                yield from level

    def __getitem__(self, index):
        if index != 0 or not self.n:
            raise IndexError("a WaitList is read at its head only ([0])")
        return self.head()

    def append(self, tuple item):
        self.push(item)

    def extend(self, items):
        for item in items:
            self.push(item)

    def popleft(self):
        if not self.n:
            raise IndexError("pop from an empty WaitList")
        return self.pop_head()

    def remove(self, tuple item):
        level = self.levels[item[5]]
        if level is None:
            raise ValueError("WaitList.remove(item): item not in list")
        (<object>level).remove(item)
        self.n -= 1

    def oldest(self):
        """The item that has waited longest (smallest since; ties: higher priority), or None."""
        cdef int32_t p
        best = None
        for p in range(N_PRIORITIES - 1, -1, -1):
            level = self.levels[p]
            if level and (best is None or level[0][4] < best[4]):
                best = level[0]
        return best

    cdef int push(self, tuple item) except -1:
        cdef Py_ssize_t p = item[5]
        level = self.levels[p]
        if level is None:
            level = self.levels[p] = deque()
        (<object>level).append(item)
        self.n += 1
        return 0

    cdef object head(self):
        cdef int32_t p
        for p in range(N_PRIORITIES - 1, -1, -1):
            level = self.levels[p]
            if level:
                return level[0]
        raise IndexError("head of an empty WaitList")

    cdef object pop_head(self):
        cdef int32_t p
        for p in range(N_PRIORITIES - 1, -1, -1):
            level = self.levels[p]
            if level:
                self.n -= 1
                return level.popleft()
        raise IndexError("pop from an empty WaitList")

    cdef Py_ssize_t position_of_last(self, int32_t priority) except -1:
        """The position of the item just pushed at ``priority``: the items of its level and above."""
        cdef Py_ssize_t k = 0
        cdef int32_t p
        for p in range(priority, N_PRIORITIES):
            level = self.levels[p]
            if level is not None:
                k += len(<object>level)
        return k

    cdef Py_ssize_t position(self, object conversation_id) except -1:
        """1 + the items handed out before the conversation's; 0 if it is not here."""
        cdef Py_ssize_t k = 0
        cdef int32_t p
        for p in range(N_PRIORITIES - 1, -1, -1):
            level = self.levels[p]
            if level is None:
                continue
            for item in <object>level:
                k += 1
                if (<tuple>item)[0] == conversation_id:
                    return k
        return 0

    cdef void note_handout(self, int64_t now) noexcept:
        """An item left the list for an agent at ``now``: the EWMA of the time between hand-outs."""
        cdef int64_t dt
        if self.last_handout_ms >= 0:
            dt = now - self.last_handout_ms
            self.interval_ms = dt if self.interval_ms < 0 else (7 * self.interval_ms + dt) // 8
        self.last_handout_ms = now

    cdef int64_t estimate(self, int64_t position) noexcept:
        """The estimated wait (ms) of ``position``: position * interval, at most MAX_TIME; -1: unknown."""
        if self.interval_ms < 0:
            return -1
        if self.interval_ms > 0 and position > MAX_TIME // self.interval_ms:
            return MAX_TIME
        return position * self.interval_ms


cdef class Shop:

    def __cinit__(self):
        self.agents = NULL
        self.n_agents = 0
        self.cap_agents = 0
        self.groups = NULL
        self.n_groups = 0
        self.rosters = NULL
        self.n_rosters = 0
        self.scratch = NULL
        self.agent_slot = {}
        self.agent_index = NULL
        self.index_mask = -1
        self.group_configs = []
        self.group_sources = []
        self.waiting_queue = WaitList()
        self.waiting_staging = WaitList()
        self.waiting_message_pool = WaitList()
        self.live = 0
        self.clock = 0
        self.day = 0
        self.day_start = 0
        self.day_end = 0

    def __dealloc__(self):
        cdef int32_t i
        self.free_rosters()
        if self.agents != NULL:
            for i in range(self.n_agents):
                Py_XDECREF(self.agents[i].id)
            free(self.agents)
        free(self.scratch)
        free(self.agent_index)

    cdef int add_agent_slot(self, object agent_id) except -1:
        """A new slot for agent_id (OFFLINE on DESKTOP, everything else 0)."""
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
        self.index_agent(slot)
        return slot

    cdef int index_agent(self, int32_t slot) except -1:
        """Put a new slot in agent_index (all of them again when it grows: load <= 1/2)."""
        cdef int32_t cells = self.index_mask + 1, s
        cdef int32_t* grown
        cdef Py_ssize_t n
        cdef const char* p
        cdef uint64_t i
        if 2 * self.n_agents > cells:
            cells = cells * 2 if cells else 16
            grown = <int32_t*>calloc(cells, sizeof(int32_t))
            if grown == NULL:
                raise MemoryError()
            free(self.agent_index)
            self.agent_index = grown
            self.index_mask = cells - 1
            s = 0
        else:
            s = slot
        while s <= slot:
            p = PyUnicode_AsUTF8AndSize(<object>self.agents[s].id, &n)
            i = hash_key(0, p, n) & <uint64_t>self.index_mask
            while self.agent_index[i]:
                i = (i + 1) & <uint64_t>self.index_mask
            self.agent_index[i] = s + 1
            s += 1
        return 0

    cdef int32_t find_agent(self, const char* p, Py_ssize_t n) except -2:
        """The slot of the agent whose id is the UTF-8 p[:n] (deleted or not), or -1."""
        cdef uint64_t i
        cdef int32_t k
        cdef Py_ssize_t m
        cdef const char* q
        if self.index_mask < 0:
            return -1
        i = hash_key(0, p, n) & <uint64_t>self.index_mask
        while True:
            k = self.agent_index[i]
            if k == 0:
                return -1
            q = PyUnicode_AsUTF8AndSize(<object>self.agents[k - 1].id, &m)
            if m == n and memcmp(p, q, n) == 0:
                return k - 1
            i = (i + 1) & <uint64_t>self.index_mask

    cdef int add_main_account(self, object agent_id) except -1:
        """The slot of a new shop's main account: MAIN, weight 1, DEFAULT_MAIN_CAPACITY, permitted."""
        cdef int32_t slot = self.add_agent_slot(agent_id)
        cdef Agent* a = &self.agents[slot]
        a.role = ROLE_MAIN
        a.weight = 1
        a.max_capacity = DEFAULT_MAIN_CAPACITY
        a.created_at_ms = 0
        a.chat_permission = 1
        return slot

    cdef int apply_config(self, object config) except -1:
        """Copy a normalized ShopConfig into the C fields (the agents it names exist)."""
        self.config = config
        self.strategy = config.strategy
        self.offline_rule = config.offline_rule
        self.mode = config.main_account_mode
        self.staging_cap = config.staging_first_cap
        self.busy_threshold = config.busy_threshold
        self.window_ms = config.affinity_window_ms
        self.grace_ms = config.offline_grace_ms
        self.may_exceed = config.affinity_may_exceed_capacity
        self.exclusive_direct = config.exclusive_direct
        self.robot_first = config.robot_first
        self.mobile_dispatch = config.mobile_dispatch
        self.hours_until = 0 if config.business_hours else HOURS_NEVER  # §10: 0 = look it up
        self.hours_open = 1
        self.main_slot = self.agent_slot[config.main_account]
        self.robot_slot = self.agent_slot.get(config.robot_agent_id, -1) if config.robot_agent_id else -1
        self.proxy_slot = self.agent_slot.get(config.proxy_account, -1) if config.proxy_account else -1
        return 0

    cdef void free_rosters(self) noexcept:
        """Free the groups and rosters (rebuild makes them again)."""
        cdef int32_t i
        cdef Roster* r
        if self.rosters != NULL:
            for i in range(self.n_rosters):
                r = &self.rosters[i]
                free(r.members)
                free(r.is_member)
                heap_free(&r.sat)
                heap_free(&r.unread)
                free(r.rr.order)
                free(r.rr.credit)
                free(r.rr.full)
            free(self.rosters)
            self.rosters = NULL
        if self.groups != NULL:
            for i in range(self.n_groups):
                Py_XDECREF(self.groups[i].id)
                free(self.groups[i].sources)
            free(self.groups)
            self.groups = NULL
        self.n_rosters = 0
        self.n_groups = 0

    cdef int rebuild(self) except -1:
        """Recompute groups and rosters from the configuration; every round robin restarts."""
        cdef int32_t n = self.n_agents
        cdef int32_t gi, s, k, ri
        cdef Group* g
        cdef Roster* r
        cdef Agent* a
        cdef object cfg, robot_id
        cdef list handles
        cdef bint member_mode = self.mode == MODE_MEMBER
        self.free_rosters()
        self.n_groups = len(self.group_configs)
        self.n_rosters = self.n_groups + 1
        self.groups = <Group*>calloc(self.n_groups + 1, sizeof(Group))
        self.rosters = <Roster*>calloc(self.n_rosters, sizeof(Roster))
        if self.groups == NULL or self.rosters == NULL:
            raise MemoryError()
        for s in range(n):
            self.agents[s].n_groups = 0
        for ri in range(self.n_rosters):
            r = &self.rosters[ri]
            r.members = <int32_t*>malloc((n + 1) * sizeof(int32_t))
            r.is_member = <uint8_t*>calloc(n + 1, 1)
            if r.members == NULL or r.is_member == NULL:
                raise MemoryError()
            heap_init(&r.sat, HEAP_SAT, n)
            heap_init(&r.unread, HEAP_UNREAD, n)
        for gi in range(self.n_groups):
            cfg = self.group_configs[gi]
            g = &self.groups[gi]
            g.id = <PyObject*>cfg.group_id
            Py_INCREF(cfg.group_id)
            g.roster = gi + 1
            g.robot_enabled = cfg.robot_enabled
            robot_id = cfg.robot_agent_id or self.config.robot_agent_id
            g.robot_slot = self.agent_slot.get(robot_id, -1) if robot_id else -1
            g.strategy = cfg.strategy
            g.hours_until = 0 if cfg.business_hours else HOURS_NEVER  # §10: 0 = look it up
            g.hours_open = 1
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
            r = &self.rosters[gi + 1]
            for member in cfg.members:
                s = self.agent_slot[member]
                self.agents[s].n_groups += 1
                # §7: the main account is a group member only in case D (MEMBER).
                if self.agents[s].role != ROLE_MAIN or member_mode:
                    r.is_member[s] = 1
        # The shop-wide roster: who falls back (or everyone, without groups); §7 for the main account.
        r = &self.rosters[0]
        for s in range(n):
            a = &self.agents[s]
            if a.deleted or a.role == ROLE_ROBOT:
                continue
            if a.role == ROLE_MAIN:
                if self.mode == MODE_ONLY_MAIN or self.mode == MODE_MEMBER:
                    r.is_member[s] = 1
            elif self.mode == MODE_ONLY_MAIN:
                continue
            elif a.role == ROLE_PROXY:
                if a.n_groups > 0:
                    r.is_member[s] = 1
            else:
                r.is_member[s] = 1
        for s in range(n):
            self.agents[s].avail = available(self, s)
        for ri in range(self.n_rosters):
            r = &self.rosters[ri]
            r.n_members = 0
            r.n_avail = 0
            for s in range(n):
                if not in_roster(r, s):
                    continue
                r.members[r.n_members] = s
                r.n_members += 1
                a = &self.agents[s]
                if a.avail:
                    r.n_avail += 1
                    if a.active < a.max_capacity:
                        heap_push(&r.sat, self.agents, s)
                        heap_push(&r.unread, self.agents, s)
            r.rr.ready = 0
        return 0

    cdef void refresh(self, int32_t slot) noexcept:
        """The agent's load, presence or permission changed: re-place it in every roster."""
        cdef Agent* a = &self.agents[slot]
        cdef bint now_avail = available(self, slot)
        cdef bint now_eligible = now_avail and a.active < a.max_capacity
        cdef int32_t ri
        cdef Roster* r
        for ri in range(self.n_rosters):
            r = &self.rosters[ri]
            if not in_roster(r, slot):
                continue
            if now_avail != a.avail:
                r.n_avail += 1 if now_avail else -1
            if now_eligible:
                if not roster_eligible(r, slot):
                    heap_push(&r.sat, self.agents, slot)
                    heap_push(&r.unread, self.agents, slot)
                else:
                    heap_fix(&r.sat, self.agents, slot)
                    heap_fix(&r.unread, self.agents, slot)
            elif roster_eligible(r, slot):
                heap_remove(&r.sat, self.agents, slot)
                heap_remove(&r.unread, self.agents, slot)
        a.avail = now_avail

    cdef void prefetch(self) noexcept:
        """Start loading what a decision for this shop reads: the agent array,
        the rosters, their membership and heap arrays (up to PREFETCH_BYTES each).
        At many shops every one of these is a cache miss; issued together they
        overlap instead of following one another. A hint: no effect on results."""
        cdef const char* p
        cdef Py_ssize_t off, n
        cdef int32_t ri
        cdef Roster* r
        p = <const char*>self.agents
        n = min(<Py_ssize_t>self.n_agents * <Py_ssize_t>sizeof(Agent), PREFETCH_BYTES)
        for off in range(0, n, 64):
            __builtin_prefetch(p + off)
        p = <const char*>self.rosters
        n = min(<Py_ssize_t>self.n_rosters * <Py_ssize_t>sizeof(Roster), PREFETCH_BYTES)
        for off in range(0, n, 64):
            __builtin_prefetch(p + off)
        n = min(<Py_ssize_t>self.n_agents * 4, PREFETCH_BYTES)
        for ri in range(self.n_rosters):
            r = &self.rosters[ri]
            __builtin_prefetch(r.is_member)
            for off in range(0, n, 64):
                __builtin_prefetch(<const char*>r.sat.items + off)
                __builtin_prefetch(<const char*>r.sat.pos + off)
                __builtin_prefetch(<const char*>r.unread.items + off)
                __builtin_prefetch(<const char*>r.unread.pos + off)

    # ------------------------------------------------------------ time

    cdef int64_t advance(self, int64_t at_ms) noexcept:
        """The shop's clock never goes back: an older event counts as happening now."""
        if at_ms > self.clock:
            self.clock = at_ms
        return self.clock

    cdef int32_t day_of(self, int64_t now) except -1:
        """The shop's local day ordinal at now; recomputed (in Python) about once a day per shop."""
        if not (self.day_start <= now < self.day_end):
            day, start, end = day_bounds(self.config.timezone, now)
            self.day = day
            self.day_start = start
            self.day_end = end
        return self.day

    cdef int32_t today_of(self, int32_t slot, int64_t now) except -1:
        """Conversations the agent received on the local day of now."""
        cdef int32_t day = self.day_of(now)
        return self.agents[slot].today if self.agents[slot].today_day == day else 0

    cdef int bump_today(self, int32_t slot, int64_t now) except -1:
        """The agent received a conversation at now."""
        cdef int32_t day = self.day_of(now)
        cdef Agent* a = &self.agents[slot]
        if a.today_day != day:
            a.today_day = day
            a.today = 0
        a.today += 1
        return 0

    # ------------------------------------------------------------ chance

    cdef int32_t rand_below(self, int32_t n) noexcept:
        """A seeded draw in [0, n): SplitMix64 (model.splitmix64), drawn only when n > 1."""
        cdef uint64_t z
        if n <= 1:
            return 0
        self.rng += <uint64_t>0x9E3779B97F4A7C15
        z = self.rng
        z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
        z = z ^ (z >> 31)
        return <int32_t>(z % <uint64_t>n)
