# reads: what an operator or a caller may look at (spec §9): a shop's whole
# state, engine-wide totals, one conversation, a buyer's recent contact and
# exclusive agent, the strategy in effect. Included by _core.pyx after
# engine.pyx; CompiledEngine's read methods call these (the reference keeps
# the same functions in reference/reads.py).
#
# Reads never change state and build Python objects freely: they are not on
# the per-decision path. This part owns no C types (reads.pxd is a comment).


cdef object read_shop_state(CompiledEngine self, shop_id):
    """Everything an operator needs to see why a shop routes as it does."""
    cdef Shop shop = self.shop_for(shop_id)
    cdef int64_t now = shop.clock
    cdef int32_t s
    cdef Agent* a
    deadlines, next_deadlines = timers_next(self, shop, 10)
    memberships = {}
    for g in shop.group_configs:
        for m in g.members:
            memberships.setdefault(m, []).append(g.group_id)
    agents = []
    for s in range(shop.n_agents):
        a = &shop.agents[s]
        if a.deleted:
            continue
        aid = agent_id_of(shop, s)
        agents.append({
            "agent_id": aid,
            "role": a.role,
            "presence": a.presence,
            "client": a.client,
            "weight": a.weight,
            "max_capacity": a.max_capacity,
            "created_at_ms": a.created_at_ms,
            "chat_permission": bool(a.chat_permission),
            "offline_at_ms": a.offline_at_ms,
            "active": a.active,
            "unread": a.unread,
            "today": shop.today_of(s, now),
            "groups": sorted(memberships.get(aid, [])),
        })

    return {
        "shop_id": shop_id,
        "clock_ms": now,
        "agents": agents,
        # §10: each group's own schedule (its normalized GroupConfig.business_hours; empty: none,
        # it follows the shop's). Open or closed is the caller's to judge at its own instant
        # (model.hours_state), as for the shop's schedule: the C cache (Group.hours_open) holds
        # the answer at the shop's clock only, and reading it must not move it.
        "groups": [
            {"group_id": g.group_id, "members": list(g.members), "business_hours": g.business_hours}
            for g in shop.group_configs
        ],
        "queue": waiting_rows(shop.waiting_queue),
        "staging": waiting_rows(shop.waiting_staging),
        "pool": waiting_rows(shop.waiting_message_pool),
        "live_conversations": shop.live,
        "deadlines": deadlines,
        "next_deadlines": next_deadlines,
    }


cdef object read_totals(CompiledEngine self):
    """Engine-wide counts for gauges: shops, agents online/suspended, live and waiting conversations."""
    cdef Shop shop
    cdef int32_t s
    cdef int64_t online = 0, suspended = 0, live = 0, n_shops = 0
    cdef const Agent* a
    queue = staging = message_pool = 0
    for shop in self.shop_list:
        if shop is None:
            continue
        n_shops += 1
        live += shop.live
        queue += len(shop.waiting_queue)
        staging += len(shop.waiting_staging)
        message_pool += len(shop.waiting_message_pool)
        for s in range(shop.n_agents):
            a = &shop.agents[s]
            if a.deleted or a.role == ROLE_ROBOT:
                continue
            if a.presence == PRESENCE_ONLINE:
                online += 1
            elif a.presence == PRESENCE_SUSPENDED:
                suspended += 1
    return {"shops": n_shops, "agents_online": online, "agents_suspended": suspended,
            "live_conversations": live, "queue": queue, "staging": staging, "pool": message_pool}


cdef object read_effective_strategy(CompiledEngine self, shop_id, group_id):
    """The strategy that picks within a group (its own, else the shop's), or the shop's."""
    cdef Shop shop = self.shop_for(shop_id)
    if group_id:
        for g in shop.group_configs:
            if g.group_id == group_id:
                if g.strategy:
                    return int(g.strategy)
                break
        else:
            raise NotFoundError(f"group {group_id!r} not found in shop {shop_id!r}")
    return shop.strategy


cdef object read_conversation(CompiledEngine self, shop_id, conversation_id):
    cdef Shop shop = self.shop_for(shop_id)
    cdef Py_ssize_t idx
    cdef Entry* e
    check_id(conversation_id, "conversation_id")
    idx = self.conversation_index(shop, conversation_id)
    if idx < 0:
        return None
    e = &self.conversations.entries[idx]
    wait = e.flags & CONV_WAIT_MASK
    return {
        "buyer_id": self.conversation_buyer(idx),
        "agent_id": None if wait else agent_id_of(shop, e.handle),
        "wait": wait,
        "unread": bool(e.flags & CONV_UNREAD),
        "forwarded": bool(e.flags & CONV_FORWARDED),
    }


cdef object read_recent_contact(CompiledEngine self, shop_id, buyer_id):
    """The buyer's recent contact in the shop, if younger than the window: (agent_id, contact_at_ms)."""
    cdef Shop shop = self.shop_for(shop_id)
    cdef Py_ssize_t idx
    check_id(buyer_id, "buyer_id")
    idx = self.affinity.find_str(shop.handle, buyer_id)
    if idx < 0 or shop.clock - self.affinity.entries[idx].at_ms >= shop.window_ms:
        return None
    return agent_id_of(shop, self.affinity.entries[idx].handle), self.affinity.entries[idx].at_ms


cdef object read_exclusive_agent(CompiledEngine self, shop_id, buyer_id):
    cdef Shop shop = self.shop_for(shop_id)
    cdef Py_ssize_t idx
    check_id(buyer_id, "buyer_id")
    idx = self.exclusive.find_str(shop.handle, buyer_id)
    return agent_id_of(shop, self.exclusive.entries[idx].handle) if idx >= 0 else None


cdef list waiting_rows(object items):
    """A waiting list as GetShopState shows it: position 1 is handed out next."""
    return [{"conversation_id": w[0], "buyer_id": w[1], "since_ms": w[4], "priority": w[5],
             "position": position} for position, w in enumerate(items, 1)]
