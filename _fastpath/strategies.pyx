# strategies: spec §5, the five ways to pick one eligible member of a roster.
# Included by _core.pyx.
#
# Every strategy reads eligibility from the roster's heaps (heap.pxd: a member
# is in them iff it is eligible) and draws "random" ties from the shop's
# seeded PRNG (Shop.rand_below), only when there is a choice, so the same
# state and seed give the same pick (spec §9). The ties are collected in the
# shop's scratch array (2 * cap_agents ints).


cdef int32_t pick(Shop shop, int32_t roster, int32_t strategy, int32_t exclude, int64_t now) except -2:
    """One eligible member of rosters[roster] by the strategy, or -1.

    ``exclude`` (a transfer's current holder, or -1) is taken out of the heaps
    for the pick; every strategy then reads eligibility from the heaps.
    """
    cdef Roster* r = &shop.rosters[roster]
    cdef bint removed = exclude >= 0 and roster_eligible(r, exclude)
    cdef int32_t chosen
    if removed:
        heap_remove(&r.sat, shop.agents, exclude)
        heap_remove(&r.unread, shop.agents, exclude)
    if r.sat.size == 0:
        chosen = -1
    elif strategy == STRATEGY_LEAST_SATURATION:
        chosen = pick_saturation(shop, r)
    elif strategy == STRATEGY_FEWEST_UNREAD:
        chosen = pick_unread(r)
    elif strategy == STRATEGY_FEWEST_TODAY:
        chosen = pick_today(shop, r, now)
    elif strategy == STRATEGY_WEIGHTED_BUSYNESS:
        chosen = pick_weighted(shop, r)
    else:
        chosen = pick_round_robin(shop, r)
    if removed:
        heap_push(&r.sat, shop.agents, exclude)
        heap_push(&r.unread, shop.agents, exclude)
    return chosen


cdef int32_t pick_saturation(Shop shop, Roster* r) noexcept:
    # The agents tied at the lowest saturation form a subtree at the heap's
    # root: collect it depth-first, then take the (random k)-th by slot.
    cdef int32_t* stack = shop.scratch
    cdef int32_t* ties = shop.scratch + shop.cap_agents
    cdef int32_t sp = 0, nt = 0, i, s, child
    cdef int32_t top = r.sat.items[0]
    cdef const Agent* ag = shop.agents
    cdef int64_t top_active = ag[top].active, top_cap = ag[top].max_capacity
    stack[sp] = 0
    sp += 1
    while sp:
        sp -= 1
        i = stack[sp]
        s = r.sat.items[i]
        if <int64_t>ag[s].active * top_cap != top_active * ag[s].max_capacity:
            continue
        ties[nt] = s
        nt += 1
        child = 2 * i + 1
        if child < r.sat.size:
            stack[sp] = child
            sp += 1
        if child + 1 < r.sat.size:
            stack[sp] = child + 1
            sp += 1
    if nt == 1:
        return ties[0]
    return kth_smallest(ties, nt, shop.rand_below(nt))


cdef inline int32_t pick_unread(Roster* r) noexcept:
    # Fewest unread; ties: the account created earliest (then slot): the unread heap's order.
    return r.unread.items[0]


cdef int32_t pick_today(Shop shop, Roster* r, int64_t now) except -2:
    # Fewest received on the shop's local day; ties random (in slot order).
    cdef int32_t* ties = shop.scratch
    cdef int32_t nt = 0, i, s, v
    cdef int32_t best = 0x7fffffff
    cdef int32_t day = shop.day_of(now)
    for i in range(r.n_members):
        s = r.members[i]
        if not roster_eligible(r, s):
            continue
        v = shop.agents[s].today if shop.agents[s].today_day == day else 0
        if v < best:
            best = v
            nt = 0
        if v == best:
            ties[nt] = s
            nt += 1
    return ties[shop.rand_below(nt)]


cdef int32_t pick_weighted(Shop shop, Roster* r) noexcept:
    # Not busy (unread <= threshold) first, lowest active/weight; if all are
    # busy, lowest unread/weight. Ties: higher weight, then random.
    cdef int32_t* ties = shop.scratch
    cdef int32_t nt = 0, i, s, best = -1
    cdef bint calm = False
    cdef const Agent* ag = shop.agents
    cdef int64_t lhs, rhs
    for i in range(r.n_members):
        s = r.members[i]
        if roster_eligible(r, s) and ag[s].unread <= shop.busy_threshold:
            calm = True
            break
    for i in range(r.n_members):
        s = r.members[i]
        if not roster_eligible(r, s) or (calm and ag[s].unread > shop.busy_threshold):
            continue
        if best < 0:
            best = s
            ties[0] = s
            nt = 1
            continue
        if calm:
            lhs = <int64_t>ag[s].active * ag[best].weight
            rhs = <int64_t>ag[best].active * ag[s].weight
        else:
            lhs = <int64_t>ag[s].unread * ag[best].weight
            rhs = <int64_t>ag[best].unread * ag[s].weight
        if lhs < rhs or (lhs == rhs and ag[s].weight > ag[best].weight):
            best = s
            ties[0] = s
            nt = 1
        elif lhs == rhs and ag[s].weight == ag[best].weight:
            ties[nt] = s
            nt += 1
    return ties[shop.rand_below(nt)]


cdef int build_round_robin(Shop shop, Roster* r) except -1:
    """A fresh CAPACITY_ROUND_ROBIN cycle: members by capacity desc then slot, credits full."""
    cdef RoundRobin* rr = &r.rr
    cdef int32_t n = r.n_members
    cdef int32_t i, s, divisor = 0
    cdef int64_t* keys
    free(rr.order)
    free(rr.credit)
    free(rr.full)
    rr.order = <int32_t*>malloc((n + 1) * sizeof(int32_t))
    rr.credit = <int32_t*>malloc((n + 1) * sizeof(int32_t))
    rr.full = <int32_t*>malloc((n + 1) * sizeof(int32_t))
    keys = <int64_t*>malloc((n + 1) * sizeof(int64_t))
    if rr.order == NULL or rr.credit == NULL or rr.full == NULL or keys == NULL:
        free(keys)
        raise MemoryError()
    for i in range(n):
        s = r.members[i]
        keys[i] = ((<int64_t>0x7fffffff - shop.agents[s].max_capacity) << 32) | s
        divisor = gcd32(divisor, shop.agents[s].max_capacity)
    qsort(keys, n, sizeof(int64_t), cmp_int64)
    for i in range(n):
        s = <int32_t>(keys[i] & 0xffffffff)
        rr.order[i] = s
        rr.full[i] = shop.agents[s].max_capacity // divisor
        rr.credit[i] = rr.full[i]
    free(keys)
    rr.cursor = 0
    rr.ready = 1
    return 0


cdef int32_t pick_round_robin(Shop shop, Roster* r) except -2:
    # Cycle: each member gets capacity/gcd turns; a pass visits every member
    # with credit left in capacity order; full members sit out.
    cdef RoundRobin* rr = &r.rr
    cdef int32_t n = r.n_members
    cdef int32_t i, s, phase, start
    if not rr.ready:
        build_round_robin(shop, r)
    for phase in range(3):
        if phase == 2:
            memcpy(rr.credit, rr.full, n * sizeof(int32_t))
        start = rr.cursor if phase == 0 else 0
        for i in range(start, n):
            s = rr.order[i]
            if rr.credit[i] > 0 and roster_eligible(r, s):
                rr.credit[i] -= 1
                rr.cursor = i + 1
                return s
        rr.cursor = 0
    return -1


# ------------------------------------------------------------ helpers

cdef int cmp_int64(const void* x, const void* y) noexcept nogil:
    cdef int64_t a = (<const int64_t*>x)[0]
    cdef int64_t b = (<const int64_t*>y)[0]
    return (a > b) - (a < b)


cdef inline int32_t gcd32(int32_t a, int32_t b) noexcept nogil:
    cdef int32_t t
    while b:
        t = a % b
        a = b
        b = t
    return a


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
                tmp = v[i]
                v[i] = v[j]
                v[j] = tmp
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return v[k]
    return v[k]
