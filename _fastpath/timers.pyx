# timers: spec §10 (re-route an unanswered conversation, reclaim an offline
# agent's), §11 max_queue_wait, and time moving without calls (tick). Included
# by _core.pyx after routing; the structures and invariants are in timers.pxd,
# the rules and every choice in _fastpath/reference/timers.py (the same, plainly).
#
# A shop that uses none of the rules never has a Track or a Timer: every hook
# starts with a flag test (CONV_TRACKED, ShopTimers.tracking) and returns.
# The C storage and the hooks (class Timers) are in timerheap.pyx.


# ------------------------------------------------------------------ configuration


cdef bint timers_tracking(Shop shop):
    config = shop.config
    return bool(config.reroute_unanswered_after_ms or config.reclaim_after_offline_ms or config.max_queue_wait_ms
                or any(g.reroute_unanswered_after_ms for g in shop.group_configs))


cdef int timers_configure(Router router, Shop shop) except -1:
    """After any configuration change of ``shop`` (reference: timers.configure)."""
    cdef Timers tm = router.timers
    cdef ShopTimers* st
    cdef int32_t s, i, tid, n = shop.n_agents
    cdef Py_ssize_t k, sn
    cdef Entry* e
    cdef const char* sp
    cdef bint on = timers_tracking(shop)
    cdef int64_t* reroute
    cdef int32_t* reclaim
    if not on and not tm.tracks_shop(shop.handle):
        if shop.handle < tm.n_shops and tm.shops[shop.handle].size:
            timers_drop(tm, shop.handle)
        return 0
    st = tm.shop_timers(shop.handle)
    config = shop.config
    if not on:
        timers_drop(tm, shop.handle)
        st.tracking = 0
        st.reroute_ms = st.reclaim_ms = st.queue_ms = 0
        for s in range(st.n_slots):
            st.agent_reroute[s] = 0
        k = 0
        while k < router.conversations.n:
            e = &router.conversations.entries[k]
            if e.ns == shop.handle and (e.flags & CONV_TRACKED):
                e.flags &= ~CONV_TRACKED
                e.at_ms = 0
            k += 1
        return 0
    st.reroute_ms = config.reroute_unanswered_after_ms
    st.reclaim_ms = config.reclaim_after_offline_ms
    st.queue_ms = config.max_queue_wait_ms
    st.max_reroutes = config.max_reroutes
    if st.n_slots < n:
        reroute = <int64_t*>realloc(st.agent_reroute, n * sizeof(int64_t))
        if reroute == NULL:
            raise MemoryError()
        st.agent_reroute = reroute
        reclaim = <int32_t*>realloc(st.reclaim, n * sizeof(int32_t))
        if reclaim == NULL:
            raise MemoryError()
        st.reclaim = reclaim
        for s in range(st.n_slots, n):
            st.reclaim[s] = -1
        st.n_slots = n
    # Each agent's re-route delay: the shortest its groups set, else the shop's; never a robot's.
    own = {}
    for g in shop.group_configs:
        if g.reroute_unanswered_after_ms:
            for m in g.members:
                own[m] = min(own.get(m, g.reroute_unanswered_after_ms), g.reroute_unanswered_after_ms)
    for s in range(n):
        if shop.agents[s].role == ROLE_ROBOT or shop.agents[s].deleted:
            st.agent_reroute[s] = 0
        else:
            st.agent_reroute[s] = own.get(agent_id_of(shop, s), st.reroute_ms)
    if not st.tracking:
        st.tracking = 1
        origin = {}
        for kind in (WAIT_QUEUE, WAIT_STAGING, WAIT_POOL):
            for item in router.waiting_of(shop, kind):
                origin[item[0]] = (item[2], item[3])
        k = 0
        while k < router.conversations.n:
            e = &router.conversations.entries[k]
            if e.ns == shop.handle and not (e.flags & CONV_TRACKED):
                src, order = "", 0
                if e.flags & CONV_WAIT_MASK:
                    src, order = origin[PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL)]
                sp = PyUnicode_AsUTF8AndSize(src, &sn)
                tid = tm.new_track(shop.handle, entry_bytes(e), e.klen, sp, sn, order)
                e = &router.conversations.entries[k]
                tm.tracks[tid].agent = -1 if e.flags & CONV_WAIT_MASK else e.handle
                e.flags |= CONV_TRACKED
                e.at_ms = tid
            k += 1
    # Rules now off: their deadlines go.
    i = 0
    while i < st.size:
        tid = st.heap[i]
        kind = tm.slab[tid].kind
        if ((kind == TIMER_RECLAIM and not st.reclaim_ms) or (kind == TIMER_QUEUE and not st.queue_ms)
                or (kind == TIMER_REROUTE and not st.agent_reroute[tm.tracks[tm.slab[tid].ref].agent])):
            if kind == TIMER_RECLAIM:
                st.reclaim[tm.slab[tid].ref] = -1
            else:
                tm.tracks[tm.slab[tid].ref].timer = -1
            tm.cancel(tid)
            i = 0  # the heap moved: look again from the top (configuration is rare)
        else:
            i += 1
    return 0


cdef void timers_drop(Timers tm, int32_t handle) noexcept:
    """Every track and deadline of a shop goes (its rules are off, or it is deleted)."""
    cdef ShopTimers* st = &tm.shops[handle]
    cdef int32_t i
    for i in range(tm.n_tracks):
        if tm.tracks[i].key != NULL and tm.tracks[i].shop == handle:
            tm.free_track_slot(i)
    while st.size:
        tm.cancel(st.heap[0])
    st.hours = -1
    for i in range(st.n_slots):
        st.reclaim[i] = -1


# ------------------------------------------------------------------ firing


cdef int64_t timers_fire_due(Router router, Shop shop, int64_t at) except -1:
    """Fire the shop's deadlines due by ``at``, in order; how many (reference: timers.fire_due)."""
    cdef Timers tm = router.timers
    cdef int64_t fired = 0
    while tm.due(shop.handle, at):
        timers_fire(router, shop, tm.shops[shop.handle].heap[0])
        fired += 1
    return fired


cdef int64_t timers_tick(Router router, int64_t now) except -1:
    """Fire every shop's deadlines due by ``now`` in (deadline, seq) order (reference: timers.tick)."""
    cdef Timers tm = router.timers
    cdef int64_t fired = 0
    cdef int32_t handle
    while tm.gsize:
        handle = tm.gheap[0]
        if tm.slab[tm.shops[handle].heap[0]].deadline > now:
            break
        timers_fire(router, router.shop_at(handle), tm.shops[handle].heap[0])
        fired += 1
    return fired


cdef int timers_fire(Router router, Shop shop, int32_t tid) except -1:
    cdef Timers tm = router.timers
    cdef int32_t kind = tm.slab[tid].kind, ref = tm.slab[tid].ref, holder
    cdef int64_t now
    cdef Py_ssize_t idx, k
    cdef Track* t
    cdef Entry* e
    tm.cancel(tid)
    now = shop.advance(tm.slab[tid].deadline)
    if kind == TIMER_HOURS:
        hours_fire(router, shop, now)  # §10: the shop or a group opens
        return 0
    if kind == TIMER_RECLAIM:
        tm.shops[shop.handle].reclaim[ref] = -1
        held = []
        for k in range(tm.n_tracks):
            t = &tm.tracks[k]
            if t.key != NULL and t.shop == shop.handle and t.agent == ref:
                held.append(PyBytes_FromStringAndSize(t.key, t.klen))
        held.sort()
        for key in held:
            idx = router.conversations.find(shop.handle, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                            hash_key(shop.handle, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)))
            if router.conversations.entries[idx].flags & CONV_UNREAD:
                timers_reroute(router, shop, idx, ref, REASON_RECLAIMED, now)
        router.settle(shop, ref)
        return 0
    t = &tm.tracks[ref]
    t.timer = -1
    idx = router.conversations.find(shop.handle, t.key, t.klen, hash_key(shop.handle, t.key, t.klen))
    if kind == TIMER_REROUTE:
        holder = router.conversations.entries[idx].handle
        timers_reroute(router, shop, idx, holder, REASON_REROUTED, now)
        router.settle(shop, holder)
        return 0
    # TIMER_QUEUE: to the end of the message pool, and watchers learn it.
    cid = PyUnicode_DecodeUTF8(t.key, t.klen, NULL)
    queue = shop.waiting_queue
    for item in queue:
        if item[0] == cid:
            break
    queue.remove(item)
    (<WaitList>shop.waiting_message_pool).push(item)
    e = &router.conversations.entries[idx]
    e.flags = (e.flags & ~CONV_WAIT_MASK) | WAIT_POOL
    router.outbox.append((shop.shop_id, cid, item[1], "", REASON_QUEUE_TIMEOUT, now))
    router.decisions[REASON_QUEUE_TIMEOUT][0] += 1
    router.settle(shop, -1)
    return 0


cdef bint timers_reroute(Router router, Shop shop, Py_ssize_t idx, int32_t holder, int32_t reason,
                         int64_t now) except -1:
    """Route conversation ``idx`` again without ``holder`` (reference: timers.reroute); whether it moved."""
    cdef Timers tm = router.timers
    cdef Entry* e = &router.conversations.entries[idx]
    cdef Track* t = &tm.tracks[<int32_t>e.at_ms]
    cdef Agent* a = &shop.agents[holder]
    cdef uint8_t permitted = a.chat_permission
    cdef Decision d
    cdef int32_t found, target
    cdef const char* bp = entry_bytes(e) + e.klen
    d.strategy = 0
    a.chat_permission = 0  # without the holder: not available, not a contact, for this routing
    shop.refresh(holder)
    try:
        found = router.route(shop, bp, e.vlen, router.source_handle_bytes(t.key + t.klen, t.slen),
                             t.order_state, now, None, &d)
    finally:
        a.chat_permission = permitted
        shop.refresh(holder)
    if not found:
        return 0
    target = d.slot
    e = &router.conversations.entries[idx]
    shop.agents[holder].active -= 1
    shop.agents[target].active += 1
    shop.bump_today(target, now)
    if e.flags & CONV_UNREAD:
        shop.agents[holder].unread -= 1
        shop.agents[target].unread += 1
    shop.refresh(holder)
    shop.refresh(target)
    e.handle = target
    set_reason(e, reason)
    if reason == REASON_REROUTED:
        t.reroutes += 1
    tm.on_assign(shop, router.conversations, idx, target, now)
    router.decisions[reason][d.strategy] += 1
    router.outbox.append((shop.shop_id, PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL),
                          PyUnicode_DecodeUTF8(entry_bytes(e) + e.klen, e.vlen, NULL),
                          agent_id_of(shop, target), reason, now, agent_id_of(shop, holder)))
    return 1


# ------------------------------------------------------------------ snapshots and reads


cdef object timers_export(Router router):
    """The snapshot's "timers" (reference: snapshot._export_timers)."""
    cdef Timers tm = router.timers
    cdef Timer* x
    cdef Track* t
    cdef Shop shop
    cdef int32_t i
    pending = []
    for i in range(tm.n_slab):
        x = &tm.slab[i]
        if x.pos < 0:
            continue
        shop = router.shop_at(x.shop)
        if x.kind == TIMER_RECLAIM:
            key = agent_id_of(shop, x.ref)
        elif x.kind == TIMER_HOURS:
            key = ""
        else:
            key = PyUnicode_DecodeUTF8(tm.tracks[x.ref].key, tm.tracks[x.ref].klen, NULL)
        pending.append([shop.shop_id, x.kind, key, x.deadline, x.seq])
    pending.sort(key=lambda row: (row[3], row[4]))
    tracked = []
    for i in range(tm.n_tracks):
        t = &tm.tracks[i]
        if t.key != NULL and (t.slen or t.order_state or t.reroutes):
            tracked.append([router.shop_at(t.shop).shop_id, PyUnicode_DecodeUTF8(t.key, t.klen, NULL),
                            PyUnicode_DecodeUTF8(t.key + t.klen, t.slen, NULL), t.order_state, t.reroutes])
    tracked.sort()
    return {"seq": tm.seq, "pending": pending, "tracked": tracked}


cdef int timers_import(Router router, object data, dict handles) except -1:
    """Rebuild tracks (configure) and restore the snapshot's "timers" (reference: snapshot._import_timers)."""
    cdef Timers tm = router.timers
    cdef Shop shop
    cdef Py_ssize_t idx, n, sn
    cdef const char* p
    cdef const char* sp
    cdef Track* t
    cdef int32_t tid
    for shop in handles.values():
        timers_configure(router, shop)
        hours_configure(router, shop)
        hours_cancel(tm, shop)  # the snapshot's pending deadlines hold its opening, if any
    if not data:
        return 0
    tm.seq = data["seq"]
    for shop_id, shop_id2, source, order_state, reroutes in data["tracked"]:
        shop = handles[shop_id]
        p = PyUnicode_AsUTF8AndSize(shop_id2, &n)
        idx = router.conversations.find(shop.handle, p, n, hash_key(shop.handle, p, n))
        tid = <int32_t>router.conversations.entries[idx].at_ms
        t = &tm.tracks[tid]
        sp = PyUnicode_AsUTF8AndSize(source, &sn)
        free(t.key)
        t.key = NULL
        t.key = <char*>malloc(n + sn + 1)
        if t.key == NULL:
            raise MemoryError()
        memcpy(t.key, p, n)
        memcpy(t.key + n, sp, sn)
        t.slen = <int32_t>sn
        t.order_state = order_state
        t.reroutes = reroutes
    for shop_id, kind, key, deadline, seq in data["pending"]:
        shop = handles[shop_id]
        if kind == TIMER_RECLAIM:
            slot = shop.agent_slot[key]
            tm.shops[shop.handle].reclaim[<int32_t>slot] = tm.arm(shop.handle, kind, slot, deadline, seq)
        elif kind == TIMER_HOURS:
            tm.shop_timers(shop.handle).hours = tm.arm(shop.handle, kind, 0, deadline, seq)
        else:
            p = PyUnicode_AsUTF8AndSize(key, &n)
            idx = router.conversations.find(shop.handle, p, n, hash_key(shop.handle, p, n))
            tid = <int32_t>router.conversations.entries[idx].at_ms
            tm.tracks[tid].timer = tm.arm(shop.handle, kind, tid, deadline, seq)
    return 0


cdef object timers_next(Router router, Shop shop, int32_t limit):
    """The shop's next ``limit`` deadlines: [(deadline, kind, key)], soonest first."""
    cdef Timers tm = router.timers
    cdef ShopTimers* st
    cdef Timer* x
    cdef int32_t i
    if shop.handle >= tm.n_shops:
        return 0, []
    st = &tm.shops[shop.handle]
    rows = []
    for i in range(st.size):
        x = &tm.slab[st.heap[i]]
        rows.append((x.deadline, x.seq, x.kind, x.ref))
    rows.sort()
    out = []
    for deadline, _seq, kind, ref in rows[:limit]:
        if kind == TIMER_RECLAIM:
            key = agent_id_of(shop, ref)
        elif kind == TIMER_HOURS:
            key = ""
        else:
            key = PyUnicode_DecodeUTF8(tm.tracks[ref].key, tm.tracks[ref].klen, NULL)
        out.append({"at_ms": deadline, "kind": kind, "id": key})
    return st.size, out
