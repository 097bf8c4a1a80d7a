# eligibility: who may receive a conversation. Included by _core.pyx.
#
# Spec §2 (presence, load, full), §4 step 1 (is the shop online?), step 2 (can
# the recent contact take it?), step 5 (which groups are bound and ready), §5
# (strategies skip agents that are offline, suspended, full or without chat
# permission) and §7 (the shop-wide roster decides who falls back). The
# predicates are pure reads of shop.pxd's structures; the rosters' heaps and
# n_avail counters (kept by Shop.refresh) cache them per roster, so a decision
# asks a counter or a heap instead of scanning agents.


cdef inline bint has_room(const Agent* a) noexcept nogil:
    """Below max capacity; a robot with max_capacity 0 has no limit."""
    if a.role == ROLE_ROBOT and a.max_capacity == 0:
        return True
    return a.active < a.max_capacity


cdef inline bint client_counts(Shop shop, const Agent* a) noexcept:
    """A desktop workbench counts as online; a mobile one only if the shop dispatches to mobile."""
    return a.client != CLIENT_MOBILE or shop.mobile_dispatch


cdef inline bint available(Shop shop, int32_t slot) noexcept:
    """ONLINE (not suspended) on a client that counts, with chat permission; never a robot."""
    cdef const Agent* a = &shop.agents[slot]
    return (not a.deleted and a.role != ROLE_ROBOT and a.chat_permission
            and a.presence == PRESENCE_ONLINE and client_counts(shop, a))


cdef inline bint eligible(Shop shop, int32_t slot) noexcept:
    """A strategy may pick it: available and not full (what the roster heaps hold)."""
    return available(shop, slot) and shop.agents[slot].active < shop.agents[slot].max_capacity


cdef inline bint in_roster(const Roster* r, int32_t slot) noexcept nogil:
    """A member of the roster (eligible or not)."""
    return r.is_member[slot] != 0


cdef inline bint roster_eligible(const Roster* r, int32_t slot) noexcept nogil:
    """A member of the roster that is eligible now (it is in the roster's heaps)."""
    return r.sat.pos[slot] >= 0


cdef inline bint shop_online(Shop shop) noexcept:
    """Step 1: an agent of the shop-wide roster is available, or (§7 case C) the
    main account, which then falls back. Otherwise the offline rule applies."""
    return shop.rosters[0].n_avail > 0 or (shop.mode == MODE_FALLBACK and available(shop, shop.main_slot))


cdef inline ContactState contact_state(Shop shop, int32_t s, int64_t now) noexcept:
    """Step 2: whether the buyer's recent contact can take the conversation (see ContactState)."""
    cdef const Agent* a = &shop.agents[s]
    if a.deleted or not a.chat_permission or a.role == ROLE_ROBOT:
        return CONTACT_NONE
    if (a.presence == PRESENCE_ONLINE or a.presence == PRESENCE_SUSPENDED) and client_counts(shop, a):
        return CONTACT_PRESENT
    if (a.presence == PRESENCE_OFFLINE and shop.grace_ms > 0 and a.offline_at_ms != -1
            and now - a.offline_at_ms < shop.grace_ms):
        return CONTACT_HELD
    return CONTACT_NONE


cdef inline int32_t contact_reason(Shop shop, int32_t s, ContactState state) noexcept:
    """Step 2's answer for recent contact ``s`` in ``state``: REASON_AFFINITY,
    REASON_AFFINITY_HELD, or 0 when it is unavailable or (unless the shop lets
    affinity exceed capacity) full."""
    if state == CONTACT_NONE or not (shop.may_exceed or has_room(&shop.agents[s])):
        return 0
    return REASON_AFFINITY_HELD if state == CONTACT_HELD else REASON_AFFINITY


cdef inline bint group_bound(const Group* g, int32_t source, int32_t order_state) noexcept:
    """Step 5: the group is bound to this order state or entry source (handle, -1: none)."""
    cdef int32_t i
    if (g.order_mask >> order_state) & 1:
        return True
    if source >= 0:
        for i in range(g.n_sources):
            if g.sources[i] == source:
                return True
    return False


cdef inline int32_t group_robot(Shop shop, const Group* g) noexcept:
    """Step 5: the group's robot if it is on and has room, else -1."""
    cdef const Agent* r
    if not g.robot_enabled or g.robot_slot < 0:
        return -1
    r = &shop.agents[g.robot_slot]
    if r.deleted or r.role != ROLE_ROBOT or not has_room(r):
        return -1
    return g.robot_slot


cdef inline bint group_ready(Shop shop, const Group* g) noexcept:
    """Step 5: the group can take a conversation now: its robot, or an eligible member."""
    return group_robot(shop, g) >= 0 or shop.rosters[g.roster].sat.size > 0
