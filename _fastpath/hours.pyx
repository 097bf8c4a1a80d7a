# hours: spec §10 business hours (see hours.pxd; the rules and every choice are
# in _fastpath/reference/hours.py, written plainly). Included by _core.pyx
# after shop, before routing: the decision calls hours_shop_open,
# hours_group_open and hours_closed; the timers call hours_fire.


cdef inline bint hours_shop_open(Shop shop, int64_t now) except -1:
    """Step 1: the shop's business hours are open at ``now`` (a C comparison until they may
    change). Callers test TIMED_HOURS first: without a schedule it is always open."""
    if now >= shop.hours_until:
        hours_shop_state(shop, now)
    return shop.hours_open


cdef int hours_shop_state(Shop shop, int64_t now) except -1:
    """Out of line (about twice a day per schedule): the shop's open state from ``now`` on."""
    is_open, until = hours_state(shop.config.business_hours, shop.config.timezone, now)
    shop.hours_open = is_open
    shop.hours_until = until
    return 0


cdef inline bint hours_group_open(Shop shop, int32_t gi, int64_t now) except -1:
    """Step 5: group ``gi``'s business hours are open at ``now`` (as hours_shop_open)."""
    if now >= shop.groups[gi].hours_until:
        hours_group_state(shop, gi, now)
    return shop.groups[gi].hours_open


cdef int hours_group_state(Shop shop, int32_t gi, int64_t now) except -1:
    """Out of line: group ``gi``'s open state from ``now`` on."""
    cdef Group* g
    is_open, until = hours_state(shop.group_configs[gi].business_hours, shop.config.timezone, now)
    g = &shop.groups[gi]
    g.hours_open = is_open
    g.hours_until = until
    return 0


cdef int32_t hours_closed(Router router, Shop shop, const Request* rq, Py_ssize_t conv, int64_t now,
                          list trace, Decision* out) except -1:
    """Step 1 for a shop that is online but closed: its recent contact if the shop honours
    them after hours, else the offline rule (reference: Router.decide)."""
    cdef int32_t reason
    if trace is not None:
        trace.append("online:closed")
    if shop.config.recent_contacts_after_hours:
        reason = router.affinity_step(shop, rq.buyer, rq.buyer_len, hash_key(shop.handle, rq.buyer, rq.buyer_len),
                                      now, trace, out)
        if reason:
            router.assign(shop, conv, out.slot, now, reason)
            router.decisions[reason][0] += 1
            return reason
    reason = router.offline(shop, rq, conv, now, trace, out)
    router.decisions[reason][0] += 1
    return reason


cdef bint hours_any(Shop shop):
    """The shop or one of its groups has a schedule."""
    return bool(shop.config.business_hours) or any(g.business_hours for g in shop.group_configs)


cdef bint hours_waiting(Shop shop):
    return bool(shop.waiting_queue) or bool(shop.waiting_staging)


cdef int hours_arm(Router router, Shop shop, int64_t now) except -1:
    """The next opening of the shop or one of its groups after ``now``, as its TIMER_HOURS deadline."""
    tz = shop.config.timezone
    found = [hours_next_opening(shop.config.business_hours, tz, now)]
    found += [hours_next_opening(g.business_hours, tz, now) for g in shop.group_configs]
    times = [t for t in found if t is not None]
    if times:
        router.timers.shop_timers(shop.handle).hours = router.timers.arm(shop.handle, TIMER_HOURS, 0, min(times), -1)
    return 0


cdef int hours_cancel(Timers tm, Shop shop) except -1:
    cdef ShopTimers* st
    if shop.handle < tm.n_shops:
        st = &tm.shops[shop.handle]
        if st.hours >= 0:
            tm.cancel(st.hours)
            st.hours = -1
    return 0


cdef int hours_configure(Router router, Shop shop) except -1:
    """After any configuration change, after timers_configure (reference: hours.configure)."""
    if hours_any(shop):
        shop.timed |= TIMED_HOURS
    else:
        shop.timed &= ~TIMED_HOURS
    shop.hours_until = 0 if shop.config.business_hours else HOURS_NEVER
    for gi in range(shop.n_groups):
        shop.groups[gi].hours_until = 0 if shop.group_configs[gi].business_hours else HOURS_NEVER
    hours_cancel(router.timers, shop)
    if shop.timed & TIMED_HOURS and hours_waiting(shop):
        hours_arm(router, shop, shop.clock)
    return 0


cdef int hours_on_wait(Router router, Shop shop, int32_t kind, int64_t now) except -1:
    """A conversation starts waiting in ``kind``: the next opening, unless already pending."""
    if ((kind == WAIT_QUEUE or kind == WAIT_STAGING)
            and (shop.handle >= router.timers.n_shops or router.timers.shops[shop.handle].hours < 0)):
        hours_arm(router, shop, now)
    return 0


cdef int hours_fire(Router router, Shop shop, int64_t now) except -1:
    """The opening (reference: hours.fire): staging to each available agent, the queue, the next opening."""
    cdef int32_t s
    router.timers.shops[shop.handle].hours = -1
    for s in range(shop.n_agents):
        if available(shop, s):
            router.settle(shop, s)
    router.settle(shop, -1)
    if shop.timed & TIMED_HOURS and hours_waiting(shop):
        hours_arm(router, shop, now)
    return 0
