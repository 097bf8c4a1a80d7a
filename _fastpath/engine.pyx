# engine: CompiledEngine, the public API (included by _core.pyx): configuration
# (spec §8 "Configuration"), conversation events (§8: presence, the IM-side
# lifecycle, the message pool), the dispatch entry points (§3, §4: the
# decision itself is Router.decide, routing.pyx) and reads (§9).
#
# Same behaviour, messages and validation order as the reference engine. The
# configuration and reads are ordinary (compiled) Python over shop.pxd's
# structures; dispatch() and the conversation events run on C structures.
# CompiledEngine's own fields and their invariants are in engine.pxd.


cdef class CompiledEngine(Router):
    """All shops of one dispatcher; the default engine."""

    kind = "compiled"

    def __dealloc__(self):
        free(self.out.p)
        free(self.wire_items)
        free(self.scratch.p)
        free(self.wire_ops)

    @property
    def seed(self):
        return self._seed

    @seed.setter
    def seed(self, value):
        """Seed for shops created from now on whose tie_seed is 0."""
        self._seed = (<object>int(value)) & 0xFFFFFFFFFFFFFFFF

    # ------------------------------------------------------------ lookups

    def _agent(self, Shop shop, agent_id):
        return self.agent_for(shop, agent_id)

    cdef object conversation_buyer(self, Py_ssize_t idx):
        cdef Entry* e = &self.conversations.entries[idx]
        return PyUnicode_DecodeUTF8(entry_bytes(e) + e.klen, e.vlen, NULL)

    # ------------------------------------------------------------ configuration

    def put_shop(self, config):
        cdef Shop shop
        cdef Py_ssize_t n, idx
        cdef const char* p
        cdef int32_t slot
        config = config.normalized()
        p = PyUnicode_AsUTF8AndSize(config.shop_id, &n)
        idx = self.shop_map.find(0, p, n, hash_key(0, p, n))
        shop = self.shop_at(self.shop_map.entries[idx].handle) if idx >= 0 else None
        agent_slot = shop.agent_slot if shop is not None else {}
        if shop is not None and shop.config.main_account != config.main_account:
            raise FailedPreconditionError(
                f"shop {config.shop_id!r} has main account {shop.config.main_account!r}; it cannot change"
            )
        if config.robot_agent_id:
            self._check_robot(shop, agent_slot, config.robot_agent_id, "robot_agent_id")
        if config.proxy_account:
            slot = agent_slot.get(config.proxy_account, -1)
            if slot < 0 or shop.agents[slot].deleted:
                raise NotFoundError(f"proxy_account {config.proxy_account!r} is not an agent of the shop")
            if shop.agents[slot].role != ROLE_PROXY:
                raise InvalidArgumentError(f"proxy_account {config.proxy_account!r} does not have role PROXY")
        if shop is None:
            shop = Shop()
            shop.shop_id = config.shop_id
            shop.handle = self.n_handles
            shop.rng = shop_seed(self._seed, config.shop_id, config.tie_seed)
            self.add_handle(shop)
            self.shop_map.entries[self.shop_map.insert(0, p, n, NULL, 0, hash_key(0, p, n))].handle = shop.handle
            shop.add_main_account(config.main_account)
        else:
            if config.tie_seed != shop.config.tie_seed:
                shop.rng = shop_seed(self._seed, config.shop_id, config.tie_seed)
            if config.timezone != shop.config.timezone:
                shop.day = 0
                shop.day_start = 0
                shop.day_end = 0
            if config.affinity_window_ms != shop.config.affinity_window_ms:
                self.forget_expired(shop)
        shop.apply_config(config)
        shop.rebuild()
        timers_configure(self, shop)
        hours_configure(self, shop)
        self.settle(shop, -1)

    def _check_robot(self, Shop shop, dict agent_slot, robot_id, field):
        slot = agent_slot.get(robot_id)
        if slot is None or shop.agents[<int32_t>slot].deleted:
            raise NotFoundError(f"{field} {robot_id!r} is not an agent of the shop")
        if shop.agents[<int32_t>slot].role != ROLE_ROBOT:
            raise InvalidArgumentError(f"{field} {robot_id!r} does not have role ROBOT")

    def delete_shop(self, shop_id):
        cdef Shop shop = self.shop_for(shop_id)
        if shop.live:
            raise FailedPreconditionError(
                f"shop {shop_id!r} still has {shop.live} live or waiting conversations; close them first"
            )
        self.shop_map.remove_at(self.shop_map.find_str(0, shop_id))
        self.affinity.clear_namespace(shop.handle)
        self.exclusive.clear_namespace(shop.handle)
        if shop.handle < self.timers.n_shops:
            timers_drop(self.timers, shop.handle)  # offline agents' reclaim deadlines
        self.shop_ptrs[shop.handle] = NULL
        self.shop_list[shop.handle] = None

    def put_agent(self, config):
        cdef Shop shop
        cdef Agent* a
        cdef int32_t slot
        check_id(config.shop_id, "shop_id")
        shop = self.shop_for(config.shop_id)
        config = config.normalized(shop.config.main_account)
        found = shop.agent_slot.get(config.agent_id)
        if found is not None and not shop.agents[<int32_t>found].deleted:
            self._check_role_change(shop, <int32_t>found, config.role)
        if found is None:
            slot = shop.add_agent_slot(config.agent_id)
        else:
            slot = found
        a = &shop.agents[slot]
        a.deleted = 0
        a.role = config.role
        a.weight = config.weight
        a.max_capacity = config.max_capacity
        a.created_at_ms = config.created_at_ms
        a.chat_permission = config.chat_permission
        shop.rebuild()
        timers_configure(self, shop)
        hours_configure(self, shop)
        self.settle(shop, slot)

    def _check_role_change(self, Shop shop, int32_t slot, int32_t role):
        cdef Agent* a = &shop.agents[slot]
        if role == a.role:
            return
        aid = agent_id_of(shop, slot)
        if shop.config.robot_agent_id == aid or any(g.robot_agent_id == aid for g in shop.group_configs):
            raise FailedPreconditionError(f"agent {aid!r} is configured as a robot; it must keep role ROBOT")
        if shop.config.proxy_account == aid:
            raise FailedPreconditionError(f"agent {aid!r} is the shop's proxy account; it must keep role PROXY")
        if role == ROLE_ROBOT and a.n_groups:
            raise FailedPreconditionError(f"agent {aid!r} is a group member; a robot cannot be one")
        if role == ROLE_ROBOT and a.active:
            raise FailedPreconditionError(f"agent {aid!r} serves conversations; it cannot become a robot")

    def delete_agent(self, shop_id, agent_id):
        cdef Shop shop = self.shop_for(shop_id)
        cdef int32_t slot = self._agent(shop, agent_id)
        cdef Agent* a = &shop.agents[slot]
        config = shop.config
        if agent_id == config.main_account:
            raise FailedPreconditionError(f"agent {agent_id!r} is the main account; delete the shop instead")
        if agent_id in (config.robot_agent_id, config.proxy_account) or any(
            g.robot_agent_id == agent_id for g in shop.group_configs
        ):
            raise FailedPreconditionError(f"agent {agent_id!r} is configured as the shop's robot or proxy")
        if a.active:
            raise FailedPreconditionError(
                f"agent {agent_id!r} serves {a.active} conversations; transfer or close them first"
            )
        shop.group_configs = [
            dataclasses.replace(g, members=tuple(m for m in g.members if m != agent_id))
            if agent_id in g.members else g
            for g in shop.group_configs
        ]
        a.deleted = 1
        a.presence = PRESENCE_OFFLINE
        a.client = CLIENT_DESKTOP
        a.offline_at_ms = -1
        a.unread = 0
        a.today = 0
        a.today_day = 0
        shop.rebuild()
        self.timers.on_presence(shop, slot, False, shop.clock)
        timers_configure(self, shop)
        hours_configure(self, shop)
        self.settle(shop, -1)

    def put_group(self, config):
        cdef Shop shop
        cdef int32_t slot, i
        config = config.normalized()
        shop = self.shop_for(config.shop_id)
        for member in config.members:
            slot = self._agent(shop, member)
            if shop.agents[slot].role == ROLE_ROBOT:
                raise InvalidArgumentError(f"member {member!r} is a robot; use robot_agent_id")
        if config.robot_agent_id:
            self._check_robot(shop, shop.agent_slot, config.robot_agent_id, "robot_agent_id")
        if config.robot_enabled and not (config.robot_agent_id or shop.config.robot_agent_id):
            raise FailedPreconditionError("robot_enabled needs robot_agent_id on the group or the shop")
        handles = [self.intern_source(source) for source in config.sources]
        for i in range(len(shop.group_configs)):
            if shop.group_configs[i].group_id == config.group_id:
                shop.group_configs[i] = config
                shop.group_sources[i] = handles
                break
        else:
            shop.group_configs.append(config)
            shop.group_sources.append(handles)
        shop.rebuild()
        timers_configure(self, shop)
        hours_configure(self, shop)
        self.settle(shop, -1)

    def delete_group(self, shop_id, group_id):
        cdef Shop shop = self.shop_for(shop_id)
        check_id(group_id, "group_id")
        for i in range(len(shop.group_configs)):
            if shop.group_configs[i].group_id == group_id:
                del shop.group_configs[i]
                del shop.group_sources[i]
                break
        else:
            raise NotFoundError(f"group {group_id!r} not found in shop {shop_id!r}")
        shop.rebuild()
        timers_configure(self, shop)
        hours_configure(self, shop)
        self.settle(shop, -1)

    def set_exclusive_agent(self, shop_id, buyer_id, agent_id):
        cdef Shop shop = self.shop_for(shop_id)
        cdef Py_ssize_t n, idx
        cdef const char* p
        cdef int32_t slot
        cdef uint64_t buyer_hash
        check_id(buyer_id, "buyer_id")
        slot = self._agent(shop, agent_id)
        if shop.agents[slot].role == ROLE_ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot; it cannot be an exclusive agent")
        p = PyUnicode_AsUTF8AndSize(buyer_id, &n)
        buyer_hash = hash_key(shop.handle, p, n)
        idx = self.exclusive.find(shop.handle, p, n, buyer_hash)
        if idx < 0:
            idx = self.exclusive.insert(shop.handle, p, n, NULL, 0, buyer_hash)
        self.exclusive.entries[idx].handle = slot

    def delete_exclusive_agent(self, shop_id, buyer_id):
        cdef Shop shop = self.shop_for(shop_id)
        cdef Py_ssize_t idx
        check_id(buyer_id, "buyer_id")
        idx = self.exclusive.find_str(shop.handle, buyer_id)
        if idx < 0:
            raise NotFoundError(f"buyer {buyer_id!r} has no exclusive agent in shop {shop_id!r}")
        self.exclusive.remove_at(idx)

    # ------------------------------------------------------------ events

    def set_presence(self, shop_id, agent_id, presence, client, at_ms):
        cdef Shop shop = self.shop_for(shop_id)
        cdef int32_t slot = self.agent_for(shop, agent_id)
        cdef Agent* a
        cdef int32_t pres, cli
        cdef int64_t now
        pres = enum_value(presence, PRESENCE_MAX, Presence, "presence")
        if pres == 0:
            raise InvalidArgumentError("presence is required")
        cli = enum_value(client, CLIENT_MAX, Client, "client") or CLIENT_DESKTOP
        time_ms(at_ms)
        a = &shop.agents[slot]
        if a.role == ROLE_ROBOT:
            raise FailedPreconditionError(f"agent {agent_id!r} is a robot; presence does not apply")
        timers_fire_due(self, shop, at_ms)
        now = shop.advance(at_ms)
        went_offline = pres == PRESENCE_OFFLINE and a.presence != PRESENCE_OFFLINE
        if went_offline:
            a.offline_at_ms = now
        a.presence = pres
        a.client = cli
        self.timers.on_presence(shop, slot, went_offline, now)
        shop.refresh(slot)
        self.settle(shop, slot)

    def conversation_event(self, shop_id, conversation_id, event, at_ms,
                           buyer_id="", agent_id="", to_agent_id="", to_group_id=""):
        """Apply one IM-side conversation event (section 8); see ReferenceEngine."""
        cdef Shop shop = self.shop_for(shop_id)
        cdef Py_ssize_t n, idx, bn
        cdef const char* p
        cdef const char* bp
        cdef int32_t ev, slot, holder, target, gi, flags
        cdef int64_t now
        cdef Entry* e
        cdef Agent* agent
        cdef Roster* roster
        p = utf8_id(conversation_id, &n, "conversation_id", False)
        ev = enum_value(event, EVENT_MAX, ConversationEvent, "event")
        utf8_id(buyer_id, &bn, "buyer_id", True)
        utf8_id(agent_id, &bn, "agent_id", True)
        utf8_id(to_agent_id, &bn, "to_agent_id", True)
        utf8_id(to_group_id, &bn, "to_group_id", True)
        time_ms(at_ms)
        if ev == 0:
            raise InvalidArgumentError("event is required")
        timers_fire_due(self, shop, at_ms)  # §10: what time passing did comes first
        idx = self.conversations.find(shop.handle, p, n, hash_key(shop.handle, p, n))
        if ev == EVENT_ASSIGNED:
            if idx >= 0:
                raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop_id!r}")
            utf8_id(buyer_id, &bn, "buyer_id", False)
            slot = self.agent_for(shop, agent_id)
            agent = &shop.agents[slot]
            if agent.role == ROLE_ROBOT and agent.max_capacity and agent.active >= agent.max_capacity:
                raise FailedPreconditionError(f"robot {agent_id!r} is at its capacity")
            now = shop.advance(at_ms)
            bp = PyUnicode_AsUTF8AndSize(buyer_id, &bn)
            idx = self.conversations.insert(shop.handle, p, n, bp, bn, hash_key(shop.handle, p, n))
            self.conversations.entries[idx].at_ms = now
            shop.live += 1
            if shop.timed & TIMED_TRACKS:
                self.timers.track_new(shop, self.conversations, idx, NULL, 0, 0)
            self.assign(shop, idx, slot, now, REASON_DIRECT)  # given directly, outside the dispatcher
            self.settle(shop, -1)
            return agent_id_of(shop, slot)
        if idx < 0:
            raise NotFoundError(f"conversation {conversation_id!r} not found in shop {shop_id!r}")
        e = &self.conversations.entries[idx]
        if buyer_id:
            bp = PyUnicode_AsUTF8AndSize(buyer_id, &bn)
            if bn != e.vlen or memcmp(bp, entry_bytes(e) + e.klen, bn) != 0:
                raise FailedPreconditionError(f"conversation {conversation_id!r} belongs to another buyer")
        flags = e.flags
        if ev == EVENT_BUYER_MESSAGE:
            now = shop.advance(at_ms)
            if (flags & CONV_WAIT_MASK) == 0 and not (flags & CONV_UNREAD):
                e.flags = flags | CONV_UNREAD
                shop.agents[e.handle].unread += 1
                shop.refresh(e.handle)
            self.settle(shop, -1)
            return None
        if ev == EVENT_AGENT_REPLY:
            holder = self.holder_of(shop, idx, conversation_id, "answer")
            if agent_id and agent_id != agent_id_of(shop, holder):
                raise FailedPreconditionError(
                    f"conversation {conversation_id!r} is served by {agent_id_of(shop, holder)!r}, not {agent_id!r}"
                )
            now = shop.advance(at_ms)
            if flags & CONV_UNREAD:
                e.flags = flags & ~CONV_UNREAD
                shop.agents[holder].unread -= 1
                shop.refresh(holder)
            self.timers.on_reply(self.conversations, idx)
            self.remember(shop, idx, holder, now)
            self.settle(shop, holder)
            return None
        if ev == EVENT_CLOSED:
            shop.advance(at_ms)
            self.close(shop, idx, conversation_id)
            return None
        # TRANSFERRED
        holder = self.holder_of(shop, idx, conversation_id, "transfer")
        if bool(to_agent_id) == bool(to_group_id):
            raise InvalidArgumentError("a transfer names exactly one of to_agent_id and to_group_id")
        if to_agent_id:
            target = self.agent_for(shop, to_agent_id)
            if shop.agents[target].role == ROLE_ROBOT:
                raise InvalidArgumentError(f"to_agent_id {to_agent_id!r} is a robot")
            if target == holder:
                raise FailedPreconditionError(
                    f"conversation {conversation_id!r} is already served by {to_agent_id!r}"
                )
            now = shop.advance(at_ms)
        else:
            gi = -1
            for i in range(len(shop.group_configs)):
                if shop.group_configs[i].group_id == to_group_id:
                    gi = i
                    break
            if gi < 0:
                raise NotFoundError(f"group {to_group_id!r} not found in shop {shop_id!r}")
            roster = &shop.rosters[shop.groups[gi].roster]
            if roster.sat.size - (1 if roster_eligible(roster, holder) else 0) == 0:
                raise FailedPreconditionError(f"no member of group {to_group_id!r} can take a conversation now")
            now = shop.advance(at_ms)
            target = pick(shop, shop.groups[gi].roster, shop.groups[gi].strategy or shop.strategy, holder, now)
        self.forward(shop, idx, holder, target, now)
        return agent_id_of(shop, target)

    def claim_from_pool(self, shop_id, agent_id, at_ms, conversation_id=""):
        """An agent (or an administrator on its behalf) takes a conversation from the message pool."""
        cdef Shop shop = self.shop_for(shop_id)
        cdef int32_t slot = self._agent(shop, agent_id)
        cdef int64_t now
        check_id(conversation_id, "conversation_id", optional=True)
        time_ms(at_ms)
        if shop.agents[slot].role == ROLE_ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot")
        timers_fire_due(self, shop, at_ms)  # §11: a queue timeout due by now is in the pool first
        message_pool = shop.waiting_message_pool
        if not message_pool:
            raise FailedPreconditionError(f"the message pool of shop {shop_id!r} is empty")
        item = message_pool[0]
        if conversation_id:
            for item in message_pool:
                if item[0] == conversation_id:
                    break
            else:
                raise NotFoundError(f"conversation {conversation_id!r} is not in the message pool")
        now = shop.advance(at_ms)
        message_pool.remove(item)
        self.handed_out(shop, message_pool, item[0], slot, REASON_OFFLINE_MESSAGE_POOL, now)
        self.outbox.append((shop.shop_id, item[0], item[1], agent_id_of(shop, slot), REASON_OFFLINE_MESSAGE_POOL, now))
        self.settle(shop, -1)
        return item[0], item[1]

    # ------------------------------------------------------------ dispatch

    def dispatch(self, shop_id, buyer_id, conversation_id, at_ms, conv_type=1, source="",
                 order_state=0, to_account="", bint trace=False, priority=0):
        """Decide who gets a new conversation: (reason, agent_id, group_id, trace).

        A retry (the conversation is open with the same buyer) answers what is current
        and changes nothing (§12, retry_answer); ``priority`` (0..9, §11) orders it among
        the waiting."""
        cdef Router core = self  # a Router-typed receiver: Cython calls its final methods directly
        cdef Py_ssize_t sn, tn, idx
        cdef const char* sp
        cdef int32_t ctype, reason
        cdef Request rq
        cdef Decision d
        cdef Shop shop
        cdef list tr = None
        ctype = enum_value(conv_type, TYPE_MAX, ConversationType, "type")
        if ctype == 0:
            ctype = TYPE_BUYER_TO_SHOP
        sp = utf8_id(shop_id, &sn, "shop_id", False)
        if unlikely(ctype != TYPE_BUYER_TO_SHOP):
            # Section 3: point-to-point, no state change.
            utf8_id(to_account, &tn, "to_account", False)
            self.decisions[REASON_DIRECT][0] += 1
            return REASON_DIRECT, to_account, None, ([f"direct:{to_account}"] if trace else None)
        rq.buyer = utf8_id(buyer_id, &rq.buyer_len, "buyer_id", False)
        rq.conversation = utf8_id(conversation_id, &rq.conversation_len, "conversation_id", False)
        rq.source = utf8_id(source, &rq.source_len, "source", True)
        rq.order_state = enum_value(order_state, ORDER_STATE_MAX, OrderState, "order_state")
        rq.at_ms = time_ms(at_ms)
        rq.priority = priority_value(priority)
        rq.py_conversation = <PyObject*>conversation_id
        rq.py_buyer = <PyObject*>buyer_id
        rq.py_source = <PyObject*>source
        idx = self.shop_map.find(0, sp, sn, hash_key(0, sp, sn))
        if idx < 0:
            raise self.missing_shop(shop_id)
        shop = core.shop_at(self.shop_map.entries[idx].handle)
        rq.conversation_hash = hash_key(shop.handle, rq.conversation, rq.conversation_len)
        core.prefetch_decision(shop, &rq)
        if unlikely(shop.timed) and core.timers.due(shop.handle, rq.at_ms):
            timers_fire_due(self, shop, rq.at_ms)  # §10: what time passing did comes first
        idx = self.conversations.find(shop.handle, rq.conversation, rq.conversation_len, rq.conversation_hash)
        if unlikely(idx >= 0):
            return self.retry_answer(shop, idx, conversation_id, &rq, trace)  # §12
        if unlikely(trace):
            tr = []
        reason = core.decide(shop, &rq, tr, &d)
        return (reason, agent_id_of(shop, d.slot) if d.slot >= 0 else None,
                <object>shop.groups[d.group].id if d.group >= 0 else None, tr)

    cdef tuple retry_answer(self, Shop shop, Py_ssize_t idx, object conversation_id, const Request* rq, bint trace):
        """A dispatch of open conversation ``idx``: a retry if the buyer is the same (§12:
        what is current, nothing changed), else ALREADY_EXISTS (reference: Router.retry_answer)."""
        cdef Entry* e = &self.conversations.entries[idx]
        cdef int32_t reason, wait
        if rq.buyer_len != e.vlen or memcmp(rq.buyer, entry_bytes(e) + e.klen, rq.buyer_len) != 0:
            raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop.shop_id!r}")
        self.retries += 1
        reason = self.retry_reason(shop, idx)
        wait = e.flags & CONV_WAIT_MASK
        if wait:
            position = (<WaitList>self.waiting_of(shop, wait)).position(conversation_id)
            return reason, None, None, ([f"retry:{WaitKind(wait).name.lower()}:{position}"] if trace else None)
        agent_id = agent_id_of(shop, e.handle)
        return reason, agent_id, None, ([f"retry:{agent_id}"] if trace else None)

    def waiting_position(self, shop_id, conversation_id):
        """Where a waiting conversation stands (§11): (position, 1 = next; estimated wait in
        ms, None while unknown), or None when it does not wait. Changes nothing."""
        cdef Shop shop = self.shop_for(shop_id)
        check_id(conversation_id, "conversation_id")
        return self.waiting_place(shop, self.conversation_index(shop, conversation_id), conversation_id)

    def estimate_counts(self):
        """Estimated waits (§11) written into answers so far: (counts by bucket of
        ``model.ESTIMATE_BUCKETS_MS``, the last one +Inf; their sum in ms). Counters, not state."""
        return [self.estimates[i] for i in range(N_ESTIMATE_BUCKETS + 1)], self.estimates_ms

    def note_estimate(self, eta_ms):
        """Count an estimated wait (ms) that a caller outside the engine wrote into an answer."""
        self.count_estimate(<int64_t>eta_ms)

    def retry_count(self):
        """Dispatches this object answered as retries (§12; not decisions). A counter, not state."""
        return self.retries

    def dispatch_batch_wire(self, data, int64_t now_ms, Py_ssize_t max_items, max_at_ms=None):
        """A serialized ``DispatchBatchRequest`` in, its ``DispatchBatchResponse`` out.

        Returns (response bytes, number of items that failed), or ``None``, with
        nothing changed, when the bytes are not a batch this codec reads or an
        item's ``at`` is later than ``max_at_ms`` (``None``: no bound). Items
        without ``at`` take ``now_ms``. More than ``max_items`` items:
        InvalidArgumentError, nothing changed. See ``_fastpath.wire`` (the
        reference) and wire.pyx (batch_wire)."""
        return batch_wire(self, data, now_ms, max_items, max_at_ms)

    def dispatch_wire(self, data, int64_t now_ms, max_at_ms=None):
        """A serialized ``DispatchRequest`` in, its ``DispatchResponse`` out (unary ``Dispatch``).

        Returns the response bytes, or ``None``, with nothing changed, when the
        request is not an ordinary one this codec decides (the caller then takes
        the object path, protobuf and ``dispatch``, which answers or refuses).
        See ``_fastpath.wire`` (the reference) and wire.pyx (unary_wire)."""
        return unary_wire(self, data, now_ms, max_at_ms)

    def operate_wire(self, data, int64_t now_ms, Py_ssize_t max_items, max_at_ms=None):
        """A serialized ``OperateRequest`` in, its ``OperateResponse`` out (issue 13):
        (response bytes, operations, operations that failed), or ``None``, with nothing
        changed, when the bytes are not a batch this codec reads or an operation's ``at``
        is later than ``max_at_ms``. See ``_fastpath.reference.operations`` (the
        reference) and operations.pyx."""
        return operate_wire(self, data, now_ms, max_items, max_at_ms)

    # ------------------------------------------------------------ time (§10, timers.pyx)

    def tick(self, now_ms):
        """The engine's time is ``now_ms``: fire every shop's deadlines due by then; how many fired."""
        time_ms(now_ms)
        return timers_tick(self, now_ms)

    def tick_shop(self, shop_id, at_ms):
        """Fire one shop's deadlines due by ``at_ms``; how many. An unknown shop or invalid time: 0."""
        cdef Py_ssize_t n, idx
        cdef const char* p
        if not isinstance(shop_id, str) or not isinstance(at_ms, int) or isinstance(at_ms, bool):
            return 0
        if not 0 <= at_ms <= MAX_TIME:
            return 0
        p = PyUnicode_AsUTF8AndSize(shop_id, &n)
        idx = self.shop_map.find(0, p, n, hash_key(0, p, n))
        if idx < 0:
            return 0
        return timers_fire_due(self, self.shop_at(self.shop_map.entries[idx].handle), at_ms)

    def _check_timers(self):
        """Test support: raise AssertionError if a §10 track list disagrees with the conversations
        (or Shop.timed with the rules in use)."""
        return timers_check(self)

    def pending_deadlines(self):
        """Deadlines pending in every shop (a gauge)."""
        return self.timers.pending

    def operation_counts(self):
        """Operations this object applied through ``operate_wire``, by kind
        (``wire.OP_*``; index 0 unused): a copy. Counters, not state."""
        return [self.operations[k] for k in range(N_OPERATION_KINDS)]

    # ------------------------------------------------------------ reading (§9)

    def drain_outbox(self):
        """Hand-outs made after their Dispatch call: (shop, conversation, buyer, agent, reason, at_ms)."""
        out = self.outbox
        self.outbox = []
        return out

    def has_shop(self, shop_id):
        try:
            self.shop_for(shop_id)
        except DispatchError:
            return False
        return True

    def shop_ids(self):
        return sorted([s.shop_id for s in self.shop_list if s is not None])

    def shop_config(self, shop_id):
        return self.shop_for(shop_id).config

    def shop_state(self, shop_id):
        """Everything an operator needs to see why a shop routes as it does (reads.pyx)."""
        return read_shop_state(self, shop_id)

    def totals(self):
        """Engine-wide counts for gauges: shops, agents online/suspended, live and waiting conversations."""
        return read_totals(self)

    def effective_strategy(self, shop_id, group_id=""):
        """The strategy that picks within a group (its own, else the shop's), or the shop's."""
        return read_effective_strategy(self, shop_id, group_id)

    def conversation(self, shop_id, conversation_id):
        return read_conversation(self, shop_id, conversation_id)

    def recent_contact(self, shop_id, buyer_id):
        """The buyer's recent contact in the shop, if younger than the window: (agent_id, contact_at_ms)."""
        return read_recent_contact(self, shop_id, buyer_id)

    def exclusive_agent(self, shop_id, buyer_id):
        return read_exclusive_agent(self, shop_id, buyer_id)

    def decision_counts(self):
        """Decisions this object made, ``[reason][strategy]``: a copy. Replayed
        journal records count too; these are counters, not state."""
        cdef int32_t r, k
        return [[self.decisions[r][k] for k in range(N_STRATEGIES)] for r in range(N_REASONS)]

    def table_sizes(self):
        """Entries held by the C tables (for benchmarks and leak checks)."""
        return {
            "shops": self.shop_map.n,
            "conversations": self.conversations.n,
            "affinity": self.affinity.n,
            "exclusive": self.exclusive.n,
            "sources": self.source_map.n,
        }

    # ------------------------------------------------------------ snapshots (snapshot.pyx)

    def export_state(self):
        """The whole engine state as plain data (JSON-able), identical for both engines."""
        return export_state(self)

    def import_state(self, state):
        """Load an ``export_state()`` (of either engine) into this empty engine."""
        import_state(self, state)
