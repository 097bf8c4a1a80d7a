# snapshot: the router's whole state as plain data and back (spec §9: the same
# state and seed replay to the same answers). Included by _core.pyx;
# CompiledEngine.export_state / import_state call these.
#
# The format is model.SNAPSHOT_FORMAT, written and read identically by both
# routers (the reference's export_state is the definition). Derived structures
# (rosters, heaps, the day cache) are not stored: import rebuilds them from the
# configuration, then restores each stored round-robin cycle on top.


cdef dict export_state(Router router):
    """The whole router state as plain data (JSON-able), identical for both routers."""
    cdef Shop shop
    cdef int32_t s, ri
    cdef Agent* a
    cdef Roster* r
    cdef Entry* e
    cdef Py_ssize_t k
    shops = []
    for shop in sorted([x for x in router.shop_list if x is not None], key=lambda x: x.shop_id):
        agents = []
        for s in range(shop.n_agents):
            a = &shop.agents[s]
            agents.append([agent_id_of(shop, s), a.role, a.weight, a.max_capacity, a.created_at_ms,
                           bool(a.chat_permission), bool(a.deleted), a.presence, a.client,
                           a.offline_at_ms, a.active, a.unread, a.today, a.today_day])
        round_robin = []
        for ri in range(shop.n_rosters):
            r = &shop.rosters[ri]
            if r.rr.ready:
                round_robin.append({
                    # "pool" (the format's name for a roster): "" = shop-wide, else the group id
                    "pool": "" if ri == 0 else shop.group_configs[ri - 1].group_id,
                    "order": [agent_id_of(shop, r.rr.order[k]) for k in range(r.n_members)],
                    "credit": [r.rr.credit[k] for k in range(r.n_members)],
                    "cursor": r.rr.cursor,
                })
        round_robin.sort(key=lambda rr: rr["pool"])
        shops.append({
            "config": shop_dict(shop.config),
            "rng": shop.rng,
            "clock": shop.clock,
            "live": shop.live,
            "agents": agents,
            "groups": [group_dict(g) for g in shop.group_configs],
            "round_robin": round_robin,
            "waiting": {
                str(WAIT_QUEUE): [list(w) for w in shop.waiting_queue],
                str(WAIT_STAGING): [list(w) for w in shop.waiting_staging],
                str(WAIT_POOL): [list(w) for w in shop.waiting_message_pool],
            },
            "handout_rate": [[w.last_handout_ms, w.interval_ms] for w in
                             (shop.waiting_queue, shop.waiting_staging, shop.waiting_message_pool)],
        })
    conversations = []
    for k in range(router.conversations.n):
        e = &router.conversations.entries[k]
        shop = router.shop_at(e.ns)
        wait = e.flags & CONV_WAIT_MASK
        conversations.append([shop.shop_id, PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL),
                              PyUnicode_DecodeUTF8(entry_bytes(e) + e.klen, e.vlen, NULL),
                              None if wait else agent_id_of(shop, e.handle), wait,
                              bool(e.flags & CONV_UNREAD), bool(e.flags & CONV_FORWARDED),
                              (e.flags & CONV_REASON_MASK) >> CONV_REASON_SHIFT])
    affinity = []
    for k in range(router.affinity.n):
        e = &router.affinity.entries[k]
        shop = router.shop_at(e.ns)
        if shop.clock - e.at_ms < shop.window_ms:
            affinity.append([shop.shop_id, PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL),
                             agent_id_of(shop, e.handle), e.at_ms])
    exclusive = []
    for k in range(router.exclusive.n):
        e = &router.exclusive.entries[k]
        shop = router.shop_at(e.ns)
        exclusive.append([shop.shop_id, PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL),
                          agent_id_of(shop, e.handle)])
    conversations.sort(key=lambda row: (row[0], row[1]))
    affinity.sort()
    exclusive.sort()
    return {
        "format": SNAPSHOT_FORMAT,
        "seed": router._seed,
        "shops": shops,
        "conversations": conversations,
        "affinity": affinity,
        "exclusive": exclusive,
        "outbox": [list(item) for item in router.outbox],
        "timers": timers_export(router),
    }


cdef int32_t conversation_reason(object row) except -1:
    """A conversation row's stored reason (reference: snapshot.conversation_reason): older
    snapshots have none; a held conversation then answers DIRECT, a waiting one 0."""
    if len(row) > 7:
        return row[7]
    return REASON_DIRECT if row[3] is not None else 0


cdef tuple waiting_row(object row):
    """A snapshot's waiting item as a WaitList tuple (older snapshots: no priority, 0)."""
    return tuple(row) if len(row) > 5 else (*row, 0)


cdef int import_state(Router router, object state) except -1:
    """Load an ``export_state()`` (of either router) into this empty router."""
    cdef Shop shop
    cdef int32_t slot, ri, i
    cdef Agent* a
    cdef Roster* r
    cdef Py_ssize_t n, vn, idx
    cdef const char* kp
    cdef const char* vp
    if router.shop_map.n or router.conversations.n or router.affinity.n or router.exclusive.n:
        raise FailedPreconditionError("import_state needs an empty router")
    if state.get("format") != SNAPSHOT_FORMAT:
        raise InvalidArgumentError(f"unknown snapshot format {state.get('format')!r}")
    router._seed = state["seed"]
    handles = {}
    for data in state["shops"]:
        config = ShopConfig(**data["config"])
        shop = Shop()
        shop.shop_id = config.shop_id
        shop.handle = router.n_handles
        router.add_handle(shop)
        kp = PyUnicode_AsUTF8AndSize(config.shop_id, &n)
        router.shop_map.entries[router.shop_map.insert(0, kp, n, NULL, 0, hash_key(0, kp, n))].handle = shop.handle
        handles[config.shop_id] = shop
        shop.rng = data["rng"]
        shop.clock = data["clock"]
        shop.live = data["live"]
        for row in data["agents"]:
            slot = shop.add_agent_slot(row[0])
            a = &shop.agents[slot]
            (a.role, a.weight, a.max_capacity, a.created_at_ms, a.chat_permission, a.deleted,
             a.presence, a.client, a.offline_at_ms, a.active, a.unread, a.today, a.today_day) = row[1:]
        shop.apply_config(config)
        for group in data["groups"]:
            config_g = GroupConfig(**{**group, "members": tuple(group["members"]),
                                      "order_states": tuple(group["order_states"]),
                                      "sources": tuple(group["sources"])})
            shop.group_configs.append(config_g)
            shop.group_sources.append([router.intern_source(src) for src in config_g.sources])
        shop.rebuild()
        for rr in data["round_robin"]:
            ri = 0
            if rr["pool"]:
                ri = 1 + [g.group_id for g in shop.group_configs].index(rr["pool"])
            r = &shop.rosters[ri]
            build_round_robin(shop, r)
            if [agent_id_of(shop, r.rr.order[i]) for i in range(r.n_members)] != rr["order"]:
                raise InvalidArgumentError(f"snapshot round robin of shop {shop.shop_id!r} does not match")
            for i in range(r.n_members):
                r.rr.credit[i] = rr["credit"][i]
            r.rr.cursor = rr["cursor"]
        # Items of older snapshots have no priority (a 6th item): 0.
        shop.waiting_queue.extend(waiting_row(w) for w in data["waiting"][str(WAIT_QUEUE)])
        shop.waiting_staging.extend(waiting_row(w) for w in data["waiting"][str(WAIT_STAGING)])
        shop.waiting_message_pool.extend(waiting_row(w) for w in data["waiting"][str(WAIT_POOL)])
        for waiting, rate in zip((shop.waiting_queue, shop.waiting_staging, shop.waiting_message_pool),
                                 data.get("handout_rate", ())):
            (<WaitList>waiting).last_handout_ms, (<WaitList>waiting).interval_ms = rate
    for row in state["conversations"]:
        shop_id, conv_id, buyer_id, agent_id, wait, unread, forwarded = row[:7]
        shop = handles[shop_id]
        kp = PyUnicode_AsUTF8AndSize(conv_id, &n)
        vp = PyUnicode_AsUTF8AndSize(buyer_id, &vn)
        idx = router.conversations.insert(shop.handle, kp, n, vp, vn, hash_key(shop.handle, kp, n))
        router.conversations.entries[idx].handle = shop.agent_slot[agent_id] if agent_id is not None else -1
        router.conversations.entries[idx].flags = (wait | (CONV_UNREAD if unread else 0)
                                                   | (CONV_FORWARDED if forwarded else 0))
        set_reason(&router.conversations.entries[idx], conversation_reason(row))
    for shop_id, buyer_id, agent_id, at in state["affinity"]:
        shop = handles[shop_id]
        kp = PyUnicode_AsUTF8AndSize(buyer_id, &n)
        idx = router.affinity.insert(shop.handle, kp, n, NULL, 0, hash_key(shop.handle, kp, n))
        router.affinity.entries[idx].handle = shop.agent_slot[agent_id]
        router.affinity.entries[idx].at_ms = at
    for shop_id, buyer_id, agent_id in state["exclusive"]:
        shop = handles[shop_id]
        kp = PyUnicode_AsUTF8AndSize(buyer_id, &n)
        idx = router.exclusive.insert(shop.handle, kp, n, NULL, 0, hash_key(shop.handle, kp, n))
        router.exclusive.entries[idx].handle = shop.agent_slot[agent_id]
    router.outbox = [tuple(item) for item in state["outbox"]]
    timers_import(router, state.get("timers"), handles)
    return 0
