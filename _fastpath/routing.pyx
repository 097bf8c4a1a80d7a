# routing: the decision (spec §4 steps 1-7), the offline rule (§6) and main
# account participation (§7), with the state changes of §8 that the rules make
# (assign, wait_in, remember, forward, close, forget_expired) and the hand-out
# of waiting conversations (settle: §6 staging, §4 step 7 queue). Included by
# _core.pyx; Router's tables and their invariants are in routing.pxd.
#
# Router is the engine minus its public surface: CompiledEngine (engine.pyx)
# subclasses it. Its cdef methods are final, so calls between them are direct
# C calls. A decision touches no Python object unless it traces or the
# conversation has to wait.


cdef inline void set_reason(Entry* e, int32_t reason) noexcept:
    """Record why a held conversation went to its agent (CONV_REASON bits; §12 retries)."""
    e.flags = (e.flags & ~CONV_REASON_MASK) | ((reason << CONV_REASON_SHIFT) & CONV_REASON_MASK)


# The upper bounds of the estimated-wait buckets (model.ESTIMATE_BUCKETS_MS), set at import.
cdef int64_t ESTIMATE_BOUNDS_MS[N_ESTIMATE_BUCKETS]
for _bucket in range(N_ESTIMATE_BUCKETS):
    ESTIMATE_BOUNDS_MS[_bucket] = ESTIMATE_BUCKETS_MS[_bucket]


# The decision trace's entries, written out of line: route() and decide() only test
# `trace is not None` and call one of these, so their untraced path stays compact
# (GCC then inlines what the decision calls; the f-string code is large).

cdef int trace_agent(list trace, str step, Shop shop, int32_t s, str suffix) except -1:
    """``step`` + agent ``s``'s id + ``suffix``: "exclusive:" "tb1:a" ":full"."""
    trace.append(f"{step}{agent_id_of(shop, s)}{suffix}")
    return 0


cdef int trace_count(list trace, str step, Py_ssize_t n) except -1:
    """``step`` + a number: "groups:ready:" "2"."""
    trace.append(f"{step}{n}")
    return 0


cdef int trace_text(list trace, str step, object text) except -1:
    """``step`` + a str: "group:" "g1"."""
    trace.append(f"{step}{text}")
    return 0


cdef int trace_pick(list trace, str step, int32_t strategy, Shop shop, int32_t s) except -1:
    """``step``:STRATEGY:agent (s -1: "none")."""
    trace.append(f"{step}:{Strategy(strategy).name}:{agent_id_of(shop, s) if s >= 0 else 'none'}")
    return 0


cdef int trace_affinity(list trace, Shop shop, int32_t s, ContactState state, int32_t reason) except -1:
    """Router.affinity_step's trace entry: no contact (s -1), unavailable, full, held or taken."""
    if s < 0:
        trace.append("affinity:none")
    elif state == CONTACT_NONE:
        trace_agent(trace, "affinity:", shop, s, ":unavailable")
    elif not reason:
        trace_agent(trace, "affinity:", shop, s, ":full")
    else:
        trace_agent(trace, "affinity:", shop, s, ":held" if reason == REASON_AFFINITY_HELD else "")
    return 0


cdef class Router:

    def __cinit__(self, seed=0):
        # (CompiledEngine's arguments pass through here: Cython calls the base
        # __cinit__ with them first.)
        self._seed = (<object>int(seed)) & 0xFFFFFFFFFFFFFFFF
        self.shop_map = ByteMap()
        self.source_map = ByteMap()
        self.conversations = ByteMap()
        self.affinity = ByteMap()
        self.exclusive = ByteMap()
        self.shop_list = []
        self.n_handles = 0
        self.cap_handles = 16
        self.shop_ptrs = <PyObject**>calloc(self.cap_handles, sizeof(PyObject*))
        if self.shop_ptrs == NULL:
            raise MemoryError()
        self.n_sources = 0
        self.retries = 0
        self.outbox = []
        self.timers = Timers()

    def __dealloc__(self):
        free(self.shop_ptrs)

    # ------------------------------------------------------------ tables

    @cython.final
    cdef Shop shop_at(self, int32_t handle):
        return <Shop>self.shop_ptrs[handle]

    @cython.final
    cdef Shop shop_for(self, object shop_id):
        """The shop of a valid shop id, else NotFoundError (InvalidArgumentError if malformed)."""
        cdef Py_ssize_t n
        cdef const char* p = utf8_id(shop_id, &n, "shop_id", False)
        cdef Py_ssize_t idx = self.shop_map.find(0, p, n, hash_key(0, p, n))
        if idx < 0:
            raise self.missing_shop(shop_id)
        return self.shop_at(self.shop_map.entries[idx].handle)

    @cython.final
    cdef void count_estimate(self, int64_t eta) noexcept:
        """Count an estimated wait (ms) written into an answer (§11; a counter, not state)."""
        cdef int i = 0
        while i < N_ESTIMATE_BUCKETS and eta > ESTIMATE_BOUNDS_MS[i]:
            i += 1
        self.estimates[i] += 1
        self.estimates_ms += eta

    @cython.final
    cdef object missing_shop(self, object shop_id):
        """The error for an unknown shop: the cluster's (``foreign_shop``) if another node owns it, else NOT_FOUND."""
        cdef object error
        if self.foreign_shop is not None:
            error = self.foreign_shop(shop_id)
            if error is not None:
                return error
        return NotFoundError(f"shop {shop_id!r} not found")

    @cython.final
    cdef int32_t agent_for(self, Shop shop, object agent_id) except -1:
        """The slot of a live agent of the shop, else NotFoundError (InvalidArgumentError if malformed)."""
        cdef Py_ssize_t n
        utf8_id(agent_id, &n, "agent_id", False)
        slot = shop.agent_slot.get(agent_id)
        if slot is None or shop.agents[<int32_t>slot].deleted:
            raise NotFoundError(f"agent {agent_id!r} not found in shop {shop.shop_id!r}")
        return <int32_t>slot

    @cython.final
    cdef int add_handle(self, Shop shop) except -1:
        """Register a new shop under the next handle (shop.handle == n_handles)."""
        cdef PyObject** grown
        if self.n_handles == self.cap_handles:
            grown = <PyObject**>realloc(self.shop_ptrs, self.cap_handles * 2 * sizeof(PyObject*))
            if grown == NULL:
                raise MemoryError()
            self.shop_ptrs = grown
            self.cap_handles *= 2
        self.shop_list.append(shop)
        self.shop_ptrs[self.n_handles] = <PyObject*>shop
        self.n_handles += 1
        return 0

    @cython.final
    cdef int32_t holder_of(self, Shop shop, Py_ssize_t conv, object conversation_id, str verb) except -1:
        """The agent serving conversation ``conv``; FailedPreconditionError while it waits."""
        cdef int32_t wait = self.conversations.entries[conv].flags & CONV_WAIT_MASK
        if wait:
            raise FailedPreconditionError(
                f"conversation {conversation_id!r} is waiting ({WaitKind(wait).name}); nobody can {verb} it yet"
            )
        return self.conversations.entries[conv].handle

    @cython.final
    cdef int32_t intern_source(self, object source) except -1:
        """The source's handle, made on first sight (groups bind sources by handle)."""
        cdef Py_ssize_t n, idx
        cdef const char* p = PyUnicode_AsUTF8AndSize(source, &n)
        idx = self.source_map.find(0, p, n, hash_key(0, p, n))
        if idx < 0:
            idx = self.source_map.insert(0, p, n, NULL, 0, hash_key(0, p, n))
            self.source_map.entries[idx].handle = self.n_sources
            self.n_sources += 1
        return self.source_map.entries[idx].handle

    @cython.final
    cdef int32_t source_handle(self, object source) except? -2:
        """The handle of a known source, or -1 (no group binds it)."""
        cdef Py_ssize_t idx
        if not source:
            return -1
        idx = self.source_map.find_str(0, source)
        return self.source_map.entries[idx].handle if idx >= 0 else -1

    @cython.final
    cdef int32_t source_handle_bytes(self, const char* p, Py_ssize_t n) noexcept:
        cdef Py_ssize_t idx
        if n == 0:
            return -1
        idx = self.source_map.find(0, p, n, hash_key(0, p, n))
        return self.source_map.entries[idx].handle if idx >= 0 else -1

    @cython.final
    cdef Py_ssize_t conversation_index(self, Shop shop, object conversation_id) except? -2:
        return self.conversations.find_str(shop.handle, conversation_id)

    @cython.final
    cdef void prefetch_decision(self, Shop shop, const Request* rq) noexcept:
        """Start loading, all at once, what deciding a new conversation of ``shop``
        reads: the conversation, recent-contact and exclusive index slots and the
        shop's arrays. At many shops each is a cache miss; this lets them overlap.
        A hint only: no effect on results."""
        cdef uint64_t buyer_hash = hash_key(shop.handle, rq.buyer, rq.buyer_len)
        self.conversations.prefetch(rq.conversation_hash)
        self.affinity.prefetch(buyer_hash)
        self.exclusive.prefetch(buyer_hash)
        shop.prefetch()

    # ------------------------------------------------------------ the decision (§4)

    @cython.final
    cdef int32_t decide(self, Shop shop, const Request* rq, list trace, Decision* out) except -1:
        """Sections 4, 6 and 7 for a valid buyer-to-shop request whose conversation is new.

        Returns the reason and fills ``out``; records the conversation (served
        or waiting) and counts the decision. ``trace`` is None or the list the
        decision trace is appended to."""
        cdef Py_ssize_t conv
        cdef int32_t reason
        cdef int64_t now = shop.advance(rq.at_ms)
        # The recent-contact index slot was prefetched (prefetch_decision) and has
        # arrived by now: start loading its entry while the conversation is inserted.
        self.affinity.prefetch_entry(hash_key(shop.handle, rq.buyer, rq.buyer_len))
        out.slot = -1
        out.group = -1
        out.strategy = 0
        conv = self.conversations.insert(shop.handle, rq.conversation, rq.conversation_len,
                                         rq.buyer, rq.buyer_len, rq.conversation_hash)
        self.conversations.entries[conv].at_ms = now
        shop.live += 1
        if unlikely(shop.timed & TIMED_TRACKS):  # §10: remembered with its source and order state
            self.timers.track_new(shop, self.conversations, conv, rq.source, rq.source_len, rq.order_state)

        # Step 1: is the shop online (and open, §10 business hours: hours.pyx)?
        if not shop_online(shop):
            if unlikely(trace is not None):
                trace.append("online:no")
            reason = self.offline(shop, rq, conv, now, trace, out)
            self.decisions[reason][0] += 1
            return reason
        if unlikely(shop.timed & TIMED_HOURS) and not hours_shop_open(shop, now):
            return hours_closed(self, shop, rq, conv, now, trace, out)
        if unlikely(trace is not None):
            trace.append("online:yes")

        # Steps 2 to 6.
        reason = self.route(shop, rq.buyer, rq.buyer_len, self.source_handle_bytes(rq.source, rq.source_len),
                            rq.order_state, now, trace, out)
        if reason:
            self.assign(shop, conv, out.slot, now, reason)
        else:
            # Step 7: everyone is full.
            reason = REASON_QUEUED
            out.strategy = 0
            self.wait_in(shop, conv, WAIT_QUEUE, rq, now)
            if unlikely(trace is not None):
                trace_count(trace, "queued:", shop.waiting_queue.position_of_last(rq.priority))
        self.decisions[reason][out.strategy] += 1
        return reason

    @cython.final
    cdef int32_t offline(self, Shop shop, const Request* rq, Py_ssize_t conv, int64_t now,
                         list trace, Decision* out) except -1:
        """Section 6: nobody is online; the shop's offline rule takes conversation ``conv``."""
        cdef int32_t rule = shop.offline_rule
        if unlikely(trace is not None):
            trace.append(f"offline:{OfflineRule(rule).name}")
        if rule == OFFLINE_MAIN_ACCOUNT:
            out.slot = shop.main_slot
            self.assign(shop, conv, out.slot, now, REASON_OFFLINE_MAIN_ACCOUNT)
            return REASON_OFFLINE_MAIN_ACCOUNT
        if rule == OFFLINE_PROXY_ACCOUNT:
            out.slot = shop.proxy_slot
            self.assign(shop, conv, out.slot, now, REASON_OFFLINE_PROXY_ACCOUNT)
            return REASON_OFFLINE_PROXY_ACCOUNT
        if rule == OFFLINE_MESSAGE_POOL:
            self.wait_in(shop, conv, WAIT_POOL, rq, now)
            return REASON_OFFLINE_MESSAGE_POOL
        self.wait_in(shop, conv, WAIT_STAGING, rq, now)
        return REASON_OFFLINE_STAGING

    @cython.final
    cdef int32_t route(self, Shop shop, const char* bp, Py_ssize_t bn, int32_t source, int32_t order_state,
                       int64_t now, list trace, Decision* out) except -1:
        """Steps 2 to 6 for buyer ``bp[:bn]`` (source handle, -1: none): a reason with
        out.slot/out.group set (out.strategy when a strategy chose), or 0 when everyone is full."""
        cdef Py_ssize_t idx
        cdef uint64_t buyer_hash = hash_key(shop.handle, bp, bn)
        cdef int32_t s, gi, k, nb, nr, strategy, reason
        cdef ContactState state
        cdef Group* g
        cdef bint groups_on, bound
        cdef bint hours = shop.timed & TIMED_HOURS  # §10: else every group is open
        out.group = -1

        # Step 2: recent contact (affinity_step, inline here).
        s = self.recent_contact(shop, bp, bn, buyer_hash, now)
        state = contact_state(shop, s, now) if s >= 0 else CONTACT_NONE
        reason = contact_reason(shop, s, state)
        if unlikely(trace is not None):
            trace_affinity(trace, shop, s, state, reason)
        if reason:
            out.slot = s
            return reason

        # Step 3: exclusive agent.
        if not shop.exclusive_direct:
            if unlikely(trace is not None):
                trace.append("exclusive:off")
        else:
            idx = self.exclusive.find(shop.handle, bp, bn, buyer_hash)
            if idx < 0:
                if unlikely(trace is not None):
                    trace.append("exclusive:none")
            else:
                s = self.exclusive.entries[idx].handle
                if not available(shop, s):
                    if unlikely(trace is not None):
                        trace_agent(trace, "exclusive:", shop, s, ":unavailable")
                elif not (shop.may_exceed or has_room(&shop.agents[s])):
                    if unlikely(trace is not None):
                        trace_agent(trace, "exclusive:", shop, s, ":full")
                else:
                    if unlikely(trace is not None):
                        trace_agent(trace, "exclusive:", shop, s, "")
                    out.slot = s
                    return REASON_EXCLUSIVE

        # Step 4: robot first.
        if not shop.robot_first:
            if unlikely(trace is not None):
                trace.append("robot_first:off")
        else:
            s = shop.robot_slot
            if has_room(&shop.agents[s]):
                if unlikely(trace is not None):
                    trace_agent(trace, "robot_first:", shop, s, "")
                out.slot = s
                return REASON_ROBOT
            if unlikely(trace is not None):
                trace_agent(trace, "robot_first:", shop, s, ":full")

        # Step 5: group (§7 case A: no groups for ONLY_MAIN).
        groups_on = shop.mode != MODE_ONLY_MAIN and shop.n_groups > 0
        if groups_on:
            nb = 0
            for gi in range(shop.n_groups):
                if group_bound(&shop.groups[gi], source, order_state):
                    nb += 1
            bound = nb > 0
            if unlikely(trace is not None):
                trace_count(trace, "groups:bound:" if bound else "groups:unbound:", nb if bound else shop.n_groups)
            nr = 0
            for gi in range(shop.n_groups):
                g = &shop.groups[gi]
                if ((not bound or group_bound(g, source, order_state)) and group_ready(shop, g)
                        and (not hours or hours_group_open(shop, gi, now))):
                    nr += 1
            if unlikely(trace is not None):
                trace_count(trace, "groups:ready:", nr)
            if nr:
                k = shop.rand_below(nr)
                for gi in range(shop.n_groups):
                    g = &shop.groups[gi]
                    if ((not bound or group_bound(g, source, order_state)) and group_ready(shop, g)
                            and (not hours or hours_group_open(shop, gi, now))):
                        if k == 0:
                            break
                        k -= 1
                out.group = gi
                if unlikely(trace is not None):
                    trace_text(trace, "group:", <object>g.id)
                s = group_robot(shop, g)
                if s >= 0:
                    if unlikely(trace is not None):
                        trace_agent(trace, "robot:", shop, s, "")
                    out.slot = s
                    return REASON_ROBOT
                strategy = g.strategy or shop.strategy
                s = pick(shop, g.roster, strategy, -1, now)
                out.strategy = strategy
                if unlikely(trace is not None):
                    trace_pick(trace, "strategy", strategy, shop, s)
                out.slot = s
                return REASON_GROUP
        elif unlikely(trace is not None):
            trace.append("groups:none")

        # Step 6: fallback (or, without groups, the strategy over everyone).
        s = pick(shop, 0, shop.strategy, -1, now)
        if s >= 0:
            out.strategy = shop.strategy
            if unlikely(trace is not None):
                trace_pick(trace, "fallback" if groups_on else "strategy", shop.strategy, shop, s)
            out.slot = s
            return REASON_FALLBACK if groups_on else REASON_GROUP
        if unlikely(trace is not None):
            trace_pick(trace, "fallback" if groups_on else "strategy", shop.strategy, shop, -1)
        if shop.mode == MODE_FALLBACK:
            # §7 case C: the main account receives only when every other agent is offline.
            s = shop.main_slot
            if (shop.rosters[0].n_avail == 0 and available(shop, s)
                    and shop.agents[s].active < shop.agents[s].max_capacity):
                if unlikely(trace is not None):
                    trace_agent(trace, "fallback:main:", shop, s, "")
                out.slot = s
                return REASON_FALLBACK
        return 0

    # ------------------------------------------------------------ state changes (§8)

    @cython.final
    cdef inline int32_t recent_contact(self, Shop shop, const char* bp, Py_ssize_t bn, uint64_t buyer_hash,
                                       int64_t now) noexcept:
        """Step 2's lookup (small: inline in route()): the slot of the buyer's recent contact,
        -1 if none or expired (an expired one is forgotten)."""
        cdef Py_ssize_t idx = self.affinity.find(shop.handle, bp, bn, buyer_hash)
        if idx < 0:
            return -1
        if now - self.affinity.entries[idx].at_ms >= shop.window_ms:
            self.affinity.remove_at(idx)  # expired: forget it
            return -1
        return self.affinity.entries[idx].handle

    @cython.final
    cdef int32_t affinity_step(self, Shop shop, const char* bp, Py_ssize_t bn, uint64_t buyer_hash, int64_t now,
                               list trace, Decision* out) except -1:
        """Step 2 (also asked while closed, §10): the recent contact's reason with out.slot set, or 0.
        (route() does the same, inline.)"""
        cdef int32_t s = self.recent_contact(shop, bp, bn, buyer_hash, now)
        cdef ContactState state = contact_state(shop, s, now) if s >= 0 else CONTACT_NONE
        cdef int32_t reason = contact_reason(shop, s, state)
        if unlikely(trace is not None):
            trace_affinity(trace, shop, s, state, reason)
        if reason:
            out.slot = s
        return reason

    @cython.final
    cdef int assign(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now, int32_t reason) except -1:
        """Conversation ``conv`` goes to ``slot`` for ``reason`` (kept for §12 retries, as
        set_reason): active +1, today +1, unread +1."""
        cdef Entry* e = &self.conversations.entries[conv]
        cdef Agent* a = &shop.agents[slot]
        e.handle = slot
        # The opening message awaits a reply.
        e.flags = ((e.flags & (CONV_FORWARDED | CONV_TRACKED)) | CONV_UNREAD
                   | ((reason << CONV_REASON_SHIFT) & CONV_REASON_MASK))
        if unlikely(e.flags & CONV_TRACKED):  # (first: nothing below needs self or conv: fewer registers kept)
            self.timers.on_assign(shop, self.conversations, conv, slot, now)  # §10: its re-route deadline
        a.active += 1
        a.unread += 1
        shop.bump_today(slot, now)
        shop.refresh(slot)
        return 0

    @cython.final
    cdef int forward(self, Shop shop, Py_ssize_t conv, int32_t holder, int32_t target, int64_t now) except -1:
        """Conversation ``conv`` is transferred from ``holder`` to ``target``: the load
        moves, the target becomes the buyer's recent contact, the conversation is forwarded."""
        cdef Entry* e
        shop.agents[holder].active -= 1
        shop.agents[target].active += 1
        shop.bump_today(target, now)
        e = &self.conversations.entries[conv]
        if e.flags & CONV_UNREAD:
            shop.agents[holder].unread -= 1
            shop.agents[target].unread += 1
        shop.refresh(holder)
        shop.refresh(target)
        e.handle = target
        e.flags |= CONV_FORWARDED
        if e.flags & CONV_TRACKED:
            self.timers.on_assign(shop, self.conversations, conv, target, now)  # §10: the receiver's deadline
        self.remember(shop, conv, target, now)
        self.settle(shop, holder)
        return 0

    @cython.final
    cdef int close(self, Shop shop, Py_ssize_t conv, object conversation_id) except -1:
        """Conversation ``conv`` is closed: it leaves its waiting list, or its agent's load."""
        cdef Entry* e = &self.conversations.entries[conv]
        cdef int32_t flags = e.flags, holder = e.handle
        cdef Agent* agent
        if flags & CONV_TRACKED:
            self.timers.on_close(self.conversations, conv)
        self.conversations.remove_at(conv)
        shop.live -= 1
        if flags & CONV_WAIT_MASK:
            waiting = self.waiting_of(shop, flags & CONV_WAIT_MASK)
            for item in waiting:
                if item[0] == conversation_id:
                    waiting.remove(item)
                    break
            self.settle(shop, -1)
            return 0
        agent = &shop.agents[holder]
        agent.active -= 1
        if flags & CONV_UNREAD:
            agent.unread -= 1
        shop.refresh(holder)
        self.settle(shop, holder)
        return 0

    @cython.final
    cdef int wait_in(self, Shop shop, Py_ssize_t conv, int32_t kind, const Request* rq, int64_t now) except -1:
        """Conversation ``conv`` waits at the end of its priority's FIFO (rq.priority) in the
        shop's queue, staging or message pool (``kind``)."""
        cdef Entry* e = &self.conversations.entries[conv]
        e.flags = kind | (e.flags & CONV_TRACKED)
        (<WaitList>self.waiting_of(shop, kind)).push(self.waiting_item(rq, now))
        if unlikely(e.flags & CONV_TRACKED):
            self.timers.on_wait(shop, self.conversations, conv, kind, now)  # §11: its max_queue_wait
        if unlikely(shop.timed & TIMED_HOURS):
            hours_on_wait(self, shop, kind, now)  # §10: handed out at the next opening
        return 0

    @cython.final
    cdef int remember(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now) except -1:
        """The agent spoke to the buyer (or received the conversation by transfer):
        it becomes the buyer's recent contact, timed now."""
        cdef Entry* e = &self.conversations.entries[conv]
        cdef const char* bp = entry_bytes(e) + e.klen
        cdef Py_ssize_t bn = e.vlen
        cdef uint64_t buyer_hash
        cdef Py_ssize_t idx
        cdef ByteMap aff = self.affinity
        if shop.agents[slot].role == ROLE_ROBOT:
            return 0  # talking to a robot does not bind the buyer to it
        buyer_hash = hash_key(shop.handle, bp, bn)
        idx = aff.find(shop.handle, bp, bn, buyer_hash)
        if idx >= 0:
            aff.entries[idx].handle = slot
            aff.entries[idx].at_ms = now
            return 0
        idx = aff.insert(shop.handle, bp, bn, NULL, 0, buyer_hash)
        aff.entries[idx].handle = slot
        aff.entries[idx].at_ms = now
        self.sweep_affinity(2)  # after the fields are set: the new entry is alive
        return 0

    @cython.final
    cdef void sweep_affinity(self, int32_t budget) noexcept:
        # Reclaim expired recent contacts, a few per insert, so the table holds
        # O(live contacts) entries. An entry is dead once its age (by its shop's
        # clock) reached the shop's window; clocks never go back and a window
        # change forgets the dead ones first (forget_expired), so it stays dead.
        cdef ByteMap aff = self.affinity
        cdef Entry* e
        cdef Shop shop
        while budget > 0 and aff.n > 0:
            budget -= 1
            if aff.sweep_at >= aff.n:
                aff.sweep_at = 0
            e = &aff.entries[aff.sweep_at]
            shop = <Shop>self.shop_ptrs[e.ns]
            if shop.clock - e.at_ms >= shop.window_ms:
                aff.remove_at(aff.sweep_at)
            else:
                aff.sweep_at += 1

    @cython.final
    cdef void forget_expired(self, Shop shop) noexcept:
        """Before the window changes: forget the contacts already past the old one."""
        cdef ByteMap aff = self.affinity
        cdef Py_ssize_t k = 0
        while k < aff.n:
            if aff.entries[k].ns == shop.handle and shop.clock - aff.entries[k].at_ms >= shop.window_ms:
                aff.remove_at(k)  # moves another entry into k: look at k again
            else:
                k += 1

    # ------------------------------------------------------------ waiting conversations

    @cython.final
    cdef int settle(self, Shop shop, int32_t focus) except -1:
        """Hand out waiting conversations after a change: the staging pool to
        ``focus`` (§6 STAGING; -1: no agent came online), then the queue (step 7)."""
        cdef int64_t now = shop.clock
        cdef int32_t reason
        cdef Decision d
        cdef Agent* a
        cdef const char* bp
        cdef Py_ssize_t bn
        if unlikely(shop.timed & TIMED_HOURS) and not hours_shop_open(shop, now):
            return 0  # §10: nothing is handed out while the shop is closed
        staging = shop.waiting_staging
        if focus >= 0 and staging and available(shop, focus):
            a = &shop.agents[focus]
            while staging and a.unread < shop.staging_cap and a.active < a.max_capacity:
                item = staging.popleft()
                self.handed_out(shop, staging, item[0], focus, REASON_OFFLINE_STAGING, now)
                self.outbox.append((shop.shop_id, item[0], item[1], agent_id_of(shop, focus),
                                    REASON_OFFLINE_STAGING, now))
        queue = shop.waiting_queue
        while queue:
            item = queue[0]
            bp = PyUnicode_AsUTF8AndSize(item[1], &bn)
            d.strategy = 0
            reason = self.route(shop, bp, bn, self.source_handle(item[2]), item[3], now, None, &d)
            if not reason:
                break
            queue.popleft()
            self.handed_out(shop, queue, item[0], d.slot, reason, now)
            self.outbox.append((shop.shop_id, item[0], item[1], agent_id_of(shop, d.slot), reason, now))
        return 0

    @cython.final
    cdef tuple waiting_item(self, const Request* rq, int64_t now):
        """(conversation, buyer, source, order_state, since, priority) of a conversation that waits."""
        return (<object>rq.py_conversation if rq.py_conversation != NULL
                else PyUnicode_DecodeUTF8(rq.conversation, rq.conversation_len, NULL),
                <object>rq.py_buyer if rq.py_buyer != NULL else PyUnicode_DecodeUTF8(rq.buyer, rq.buyer_len, NULL),
                <object>rq.py_source if rq.py_source != NULL else PyUnicode_DecodeUTF8(rq.source, rq.source_len, NULL),
                rq.order_state, now, rq.priority)

    @cython.final
    cdef int handed_out(self, Shop shop, WaitList waiting, object conversation_id, int32_t slot, int32_t reason,
                        int64_t now) except -1:
        """A conversation taken off ``waiting`` goes to ``slot`` (``reason``): assigned, and
        counted in the list's hand-out rate (§11). The caller appends the outbox entry."""
        cdef Py_ssize_t conv = self.conversation_index(shop, conversation_id)
        self.assign(shop, conv, slot, now, reason)
        waiting.note_handout(now)
        return 0

    # ------------------------------------------------------------ retries and positions (§11, §12)

    @cython.final
    cdef int32_t retry_reason(self, Shop shop, Py_ssize_t conv) noexcept:
        """The answer's reason to a retried Dispatch of conversation ``conv`` (§12): where it
        waits, or the reason it went to its agent with (reference: Router.retry_answer)."""
        cdef int32_t flags = self.conversations.entries[conv].flags
        cdef int32_t wait = flags & CONV_WAIT_MASK
        if wait == WAIT_QUEUE:
            return REASON_QUEUED
        if wait == WAIT_STAGING:
            return REASON_OFFLINE_STAGING
        if wait == WAIT_POOL:
            return REASON_OFFLINE_MESSAGE_POOL
        return (flags & CONV_REASON_MASK) >> CONV_REASON_SHIFT

    @cython.final
    cdef object waiting_place(self, Shop shop, Py_ssize_t conv, object conversation_id):
        """(position, estimated wait ms or None) of waiting conversation ``conv``, else None
        (reference: Router.waiting_place)."""
        cdef int32_t wait
        cdef WaitList waiting
        cdef Py_ssize_t position
        cdef int64_t eta
        if conv < 0:
            return None
        wait = self.conversations.entries[conv].flags & CONV_WAIT_MASK
        if not wait:
            return None
        waiting = <WaitList>self.waiting_of(shop, wait)
        position = waiting.position(conversation_id)
        eta = waiting.estimate(position)
        return position, (eta if eta >= 0 else None)

    @cython.final
    cdef object waiting_of(self, Shop shop, int32_t kind):
        """The deque of waiting kind ``kind`` (WAIT_*)."""
        if kind == WAIT_QUEUE:
            return shop.waiting_queue
        if kind == WAIT_STAGING:
            return shop.waiting_staging
        return shop.waiting_message_pool
