# timers: spec §10 (re-route an unanswered conversation, reclaim an offline
# agent's), §11 max_queue_wait, and time moving without calls (tick). Included
# by _core.pyx after routing; the structures and invariants are in timers.pxd,
# the rules and every choice in _fastpath/reference/timers.py (the same, plainly).
#
# A shop that uses none of the rules never has a Track or a Timer: the decision
# tests one byte (Shop.timed) and every hook starts with a flag test
# (CONV_TRACKED, ShopTimers.tracking) and returns. A reclaim reads only its
# agent's list of held tracks (timers_reclaim); nothing here scans every
# conversation except a configuration change that starts tracking a shop.
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
    if on:
        shop.timed |= TIMED_TRACKS  # (ShopTimers.tracking is set below)
    else:
        shop.timed &= ~TIMED_TRACKS
    if not on and not tm.tracks_shop(shop.handle):
        if shop.handle < tm.n_shops and tm.shops[shop.handle].size:
            timers_drop(tm, shop.handle)
        return 0
    st = tm.shop_timers(shop.handle)
    config = shop.config
    if not on:
        timers_untrack(router, shop)  # the conversations forget their tracks (reached through the lists)
        timers_drop(tm, shop.handle)
        st.tracking = 0
        st.reroute_ms = st.reclaim_ms = st.queue_ms = 0
        for s in range(st.n_slots):
            st.agent_reroute[s] = 0
        return 0
    st.reroute_ms = config.reroute_unanswered_after_ms
    st.reclaim_ms = config.reclaim_after_offline_ms
    st.queue_ms = config.max_queue_wait_ms
    st.max_reroutes = config.max_reroutes
    tm.grow_slots(st, n)
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
        # Tracking starts: every conversation of the shop gets a Track (a scan of the
        # conversation table, at this configuration change only), in its holder's list.
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
                if not (e.flags & CONV_WAIT_MASK):
                    tm.link(tid, e.handle)
                e.flags |= CONV_TRACKED
                e.at_ms = tid
            k += 1
        st = &tm.shops[shop.handle]
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


cdef void timers_untrack(Router router, Shop shop) noexcept:
    """The shop stops tracking: each of its tracked conversations (found from its track,
    through the shop's track lists) loses CONV_TRACKED; timers_drop then frees the tracks."""
    cdef Timers tm = router.timers
    cdef ShopTimers* st = &tm.shops[shop.handle]
    cdef int32_t s, tid
    cdef Py_ssize_t idx
    cdef Track* t
    for s in range(-1, st.n_slots):
        tid = st.unheld if s < 0 else st.held[s]
        while tid >= 0:
            t = &tm.tracks[tid]
            idx = router.conversations.find(shop.handle, t.key, t.klen, hash_key(shop.handle, t.key, t.klen))
            router.conversations.entries[idx].flags &= ~CONV_TRACKED
            router.conversations.entries[idx].at_ms = 0
            tid = t.next


cdef void timers_drop(Timers tm, int32_t handle) noexcept:
    """Every track and deadline of a shop goes (its rules are off, or it is deleted)."""
    cdef ShopTimers* st = &tm.shops[handle]
    cdef int32_t i
    while st.unheld >= 0:
        tm.free_track_slot(st.unheld)  # unlinks it: the next one becomes the head
    for i in range(st.n_slots):
        while st.held[i] >= 0:
            tm.free_track_slot(st.held[i])
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
    cdef Py_ssize_t idx
    cdef Track* t
    cdef Entry* e
    tm.cancel(tid)
    now = shop.advance(tm.slab[tid].deadline)
    if kind == TIMER_HOURS:
        hours_fire(router, shop, now)  # §10: the shop or a group opens
        return 0
    if kind == TIMER_RECLAIM:
        tm.shops[shop.handle].reclaim[ref] = -1
        timers_reclaim(router, shop, ref, now)
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


cdef int held_key_cmp(const void* a, const void* b) noexcept nogil:
    """HeldKey order: the key bytes, a prefix first (the conversation id order: UTF-8
    bytes sort as their code points do, as the reference's sorted() of str)."""
    cdef const HeldKey* x = <const HeldKey*>a
    cdef const HeldKey* y = <const HeldKey*>b
    cdef int c = memcmp(x.key, y.key, x.klen if x.klen < y.klen else y.klen)
    if c:
        return c
    return (x.klen > y.klen) - (x.klen < y.klen)


cdef int timers_reclaim(Router router, Shop shop, int32_t slot, int64_t now) except -1:
    """§10 reclaim of offline agent ``slot`` (reference: timers._fire, RECLAIM): each
    conversation it holds whose buyer awaits a reply, in conversation id order, is routed
    again without it. Only the agent's held-track list is read (timerheap.pxd)."""
    cdef Timers tm = router.timers
    cdef ShopTimers* st = &tm.shops[shop.handle]
    cdef int32_t tid, n = 0, i
    cdef HeldKey* held
    cdef Track* t
    cdef Py_ssize_t idx
    if slot >= st.n_slots or st.held[slot] < 0:
        return 0
    tid = st.held[slot]
    while tid >= 0:
        n += 1
        tid = tm.tracks[tid].next
    # A copy: each move takes its track out of this list (on_assign links it to the receiver's).
    held = <HeldKey*>malloc(n * sizeof(HeldKey))
    if held == NULL:
        raise MemoryError()
    try:
        tid = st.held[slot]
        for i in range(n):
            t = &tm.tracks[tid]
            held[i].key = t.key
            held[i].klen = t.klen
            held[i].tid = tid
            tid = t.next
        qsort(held, n, sizeof(HeldKey), held_key_cmp)
        for i in range(n):
            t = &tm.tracks[held[i].tid]
            idx = router.conversations.find(shop.handle, t.key, t.klen, hash_key(shop.handle, t.key, t.klen))
            if router.conversations.entries[idx].flags & CONV_UNREAD:
                timers_reroute(router, shop, idx, slot, REASON_RECLAIMED, now)
    finally:
        free(held)
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


cdef object timers_check(Router router):
    """Test support (CompiledEngine._check_timers): the track invariants of timerheap.pxd
    and Shop.timed's (shop.pxd), checked against the conversation table by a full scan; an
    AssertionError names the first one broken. Changes nothing."""
    cdef Timers tm = router.timers
    cdef ShopTimers* st
    cdef Track* t
    cdef Entry* e
    cdef Shop shop
    cdef int32_t h, s, tid, prev, listed
    cdef Py_ssize_t k, idx, tracked
    live_tracks = {}
    for tid in range(tm.n_tracks):
        if tm.tracks[tid].key != NULL:
            live_tracks[tm.tracks[tid].shop] = live_tracks.get(tm.tracks[tid].shop, 0) + 1
    for h in range(router.n_handles):
        if router.shop_ptrs[h] == NULL:  # deleted
            assert live_tracks.get(h, 0) == 0, (h, "tracks of a deleted shop")
            continue
        shop = router.shop_at(h)
        tracked = 0
        for k in range(router.conversations.n):
            e = &router.conversations.entries[k]
            if e.ns == h and e.flags & CONV_TRACKED:
                tracked += 1
        # Shop.timed (shop.pxd): its bits say what the shop uses; a deadline implies one.
        assert bool(shop.timed & TIMED_TRACKS) == tm.tracks_shop(h), (shop.shop_id, "TIMED_TRACKS", shop.timed)
        assert bool(shop.timed & TIMED_HOURS) == hours_any(shop), (shop.shop_id, "TIMED_HOURS", shop.timed)
        assert shop.timed or h >= tm.n_shops or tm.shops[h].size == 0, (shop.shop_id, "a deadline, timed 0")
        if not tm.tracks_shop(h):
            assert tracked == 0 and live_tracks.get(h, 0) == 0, (shop.shop_id, "tracks while not tracking")
            assert h >= tm.n_shops or tm.shops[h].unheld < 0, (shop.shop_id, "an unheld list while not tracking")
            continue
        st = &tm.shops[h]
        assert tracked == shop.live, (shop.shop_id, "tracked conversations", tracked, shop.live)
        listed = 0
        for s in range(-1, st.n_slots):
            tid = st.unheld if s < 0 else st.held[s]
            prev = -1
            while tid >= 0:
                t = &tm.tracks[tid]
                assert t.key != NULL and t.shop == h, (shop.shop_id, s, tid, "a free or foreign track listed")
                assert t.agent == s and t.prev == prev, (shop.shop_id, s, tid, t.agent, t.prev, "list links")
                idx = router.conversations.find(h, t.key, t.klen, hash_key(h, t.key, t.klen))
                assert idx >= 0, (shop.shop_id, tid, "a track without its conversation")
                e = &router.conversations.entries[idx]
                assert e.flags & CONV_TRACKED and e.at_ms == tid, (shop.shop_id, tid, "entry and track disagree")
                expected = -1 if e.flags & CONV_WAIT_MASK else e.handle
                assert t.agent == expected, (shop.shop_id, PyUnicode_DecodeUTF8(t.key, t.klen, NULL),
                                             "listed under", s, "held by", expected)
                listed += 1
                prev = tid
                tid = t.next
        assert listed == tracked == live_tracks.get(h, 0), (shop.shop_id, "listed", listed, tracked)
    return None


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
