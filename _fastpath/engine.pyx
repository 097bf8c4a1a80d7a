# CompiledEngine: the API (included by _core.pyx). Same behaviour, messages and
# validation order as reference.ReferenceEngine; see that module for the rules
# written plainly. Configuration and reads are ordinary (compiled) Python;
# dispatch() and the conversation events run on C structures.

cdef enum:
    CONV_WAIT_MASK = 3        # flags & 3: WaitKind of a waiting conversation
    CONV_UNREAD = 4           # the buyer's last message is not answered yet
    CONV_FORWARDED = 8


cdef inline bint has_control_byte(const char* p, Py_ssize_t n) noexcept nogil:
    # A byte < 0x20 or == 0x7f (the only control characters UTF-8 encodes in
    # one byte; multi-byte sequences are all >= 0x80). Eight bytes at a time:
    # (x - 0x20..) & ~x & 0x80.. flags a byte < 0x20; x ^ 0x7f.. makes 0x7f a zero byte.
    cdef uint64_t x, y
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    while i + 8 <= n:
        memcpy(&x, p + i, 8)
        y = x ^ <uint64_t>0x7f7f7f7f7f7f7f7f
        if (((x - <uint64_t>0x2020202020202020) & ~x)
                | ((y - <uint64_t>0x0101010101010101) & ~y)) & <uint64_t>0x8080808080808080:
            return True
        i += 8
    while i < n:
        c = <unsigned char>p[i]
        if c < 0x20 or c == 0x7f:
            return True
        i += 1
    return False


cdef inline const char* utf8_id(object value, Py_ssize_t* size, str field, bint optional) except NULL:
    """Borrow the UTF-8 bytes of a valid id (no copy for ASCII str); raise like check_id."""
    cdef const char* p
    if type(value) is not str:
        check_id(value, field, optional=optional)
    try:
        p = PyUnicode_AsUTF8AndSize(value, size)
    except UnicodeEncodeError:
        check_id(value, field, optional=optional)
        raise
    if size[0] == 0:
        if optional:
            return p
        check_id(value, field, optional=optional)
    if size[0] > MAX_ID:
        check_id(value, field, optional=optional)
    if has_control_byte(p, size[0]):
        check_id(value, field, optional=optional)
    return p


cdef inline int64_t time_ms(object at_ms) except? -1:
    cdef int overflow = 0
    cdef long long value
    if type(at_ms) is int:
        value = PyLong_AsLongLongAndOverflow(at_ms, &overflow)
        if not overflow and 0 <= value <= MAX_TIME:
            return value
    check_time(at_ms)  # raises InvalidArgumentError
    return -1


cdef inline int32_t enum_value(object value, int32_t highest, object enum_type, str field) except -1:
    # Fast path in C for an in-range int; anything else gets check_enum's error.
    cdef int overflow = 0
    cdef long long v
    if type(value) is int:
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow and 0 <= v <= highest:
            return <int32_t>v
    return check_enum(value, enum_type, field)


cdef inline object agent_id_of(Shop shop, int32_t slot):
    return <object>shop.agents[slot].id


cdef class CompiledEngine:
    """All shops of one dispatcher; the default engine."""

    kind = "compiled"

    def __cinit__(self, seed=0):
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
        self.outbox = []

    def __dealloc__(self):
        free(self.shop_ptrs)
        free(self.out.p)
        free(self.wire_items)

    @property
    def seed(self):
        return self._seed

    @seed.setter
    def seed(self, value):
        """Seed for shops created from now on whose tie_seed is 0."""
        self._seed = (<object>int(value)) & 0xFFFFFFFFFFFFFFFF

    # ------------------------------------------------------------ lookups

    cdef Shop shop_at(self, int32_t handle):
        return <Shop>self.shop_ptrs[handle]

    cdef Shop shop_for(self, object shop_id):
        cdef Py_ssize_t n
        cdef const char* p = utf8_id(shop_id, &n, "shop_id", False)
        cdef Py_ssize_t idx = self.shop_map.find(0, p, n, hash_key(0, p, n))
        if idx < 0:
            raise NotFoundError(f"shop {shop_id!r} not found")
        return self.shop_at(self.shop_map.entries[idx].a)

    def _agent(self, Shop shop, agent_id):
        return self.agent_slot_of(shop, agent_id)

    cdef int32_t agent_slot_of(self, Shop shop, object agent_id) except -1:
        cdef Py_ssize_t n
        utf8_id(agent_id, &n, "agent_id", False)
        slot = shop.agent_slot.get(agent_id)
        if slot is None or shop.agents[<int32_t>slot].deleted:
            raise NotFoundError(f"agent {agent_id!r} not found in shop {shop.shop_id!r}")
        return <int32_t>slot

    cdef Py_ssize_t conversation_index(self, Shop shop, object conversation_id) except? -2:
        return self.conversations.find_str(shop.handle, conversation_id)

    cdef object conversation_buyer(self, Py_ssize_t idx):
        cdef Entry* e = &self.conversations.entries[idx]
        return PyUnicode_DecodeUTF8(entry_bytes(e) + e.klen, e.vlen, NULL)

    cdef int32_t source_handle(self, object source) except? -2:
        cdef Py_ssize_t idx
        if not source:
            return -1
        idx = self.source_map.find_str(0, source)
        return self.source_map.entries[idx].a if idx >= 0 else -1

    cdef int64_t advance(self, Shop shop, int64_t at_ms) noexcept:
        # The shop's clock never goes back: an older event counts as happening now.
        if at_ms > shop.clock:
            shop.clock = at_ms
        return shop.clock

    # ------------------------------------------------------------ configuration

    def put_shop(self, config):
        cdef Shop shop
        cdef Py_ssize_t n, idx
        cdef const char* p
        cdef int32_t slot
        config = config.normalized()
        p = PyUnicode_AsUTF8AndSize(config.shop_id, &n)
        idx = self.shop_map.find(0, p, n, hash_key(0, p, n))
        shop = self.shop_at(self.shop_map.entries[idx].a) if idx >= 0 else None
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
            self.shop_map.entries[self.shop_map.insert(0, p, n, NULL, 0, hash_key(0, p, n))].a = shop.handle
            slot = shop.add_agent_slot(config.main_account)
            shop.agents[slot].role = ROLE_MAIN
            shop.agents[slot].weight = 1
            shop.agents[slot].max_capacity = DEFAULT_MAIN_CAPACITY
            shop.agents[slot].created_at_ms = 0
            shop.agents[slot].chat_permission = 1
        else:
            if config.tie_seed != shop.config.tie_seed:
                shop.rng = shop_seed(self._seed, config.shop_id, config.tie_seed)
            if config.timezone != shop.config.timezone:
                shop.day = 0
                shop.day_start = 0
                shop.day_end = 0
            if config.affinity_window_ms != shop.config.affinity_window_ms:
                self.forget_expired(shop)
        self.apply_shop_config(shop, config)
        shop.rebuild()
        self.settle(shop, -1)

    cdef int add_handle(self, Shop shop) except -1:
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

    cdef int apply_shop_config(self, Shop shop, object config) except -1:
        shop.config = config
        shop.strategy = config.strategy
        shop.offline_rule = config.offline_rule
        shop.mode = config.main_account_mode
        shop.staging_cap = config.staging_first_cap
        shop.busy_threshold = config.busy_threshold
        shop.window_ms = config.affinity_window_ms
        shop.grace_ms = config.offline_grace_ms
        shop.may_exceed = config.affinity_may_exceed_capacity
        shop.exclusive_direct = config.exclusive_direct
        shop.robot_first = config.robot_first
        shop.mobile_dispatch = config.mobile_dispatch
        shop.main_slot = shop.agent_slot[config.main_account]
        shop.robot_slot = shop.agent_slot.get(config.robot_agent_id, -1) if config.robot_agent_id else -1
        shop.proxy_slot = shop.agent_slot.get(config.proxy_account, -1) if config.proxy_account else -1
        return 0

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
        self.settle(shop, -1)

    def put_group(self, config):
        cdef Shop shop
        cdef int32_t slot, i
        cdef Py_ssize_t n, idx
        cdef const char* p
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
        self.settle(shop, -1)

    def set_exclusive_agent(self, shop_id, buyer_id, agent_id):
        cdef Shop shop = self.shop_for(shop_id)
        cdef Py_ssize_t n, idx
        cdef const char* p
        cdef int32_t slot
        cdef uint64_t h
        check_id(buyer_id, "buyer_id")
        slot = self._agent(shop, agent_id)
        if shop.agents[slot].role == ROLE_ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot; it cannot be an exclusive agent")
        p = PyUnicode_AsUTF8AndSize(buyer_id, &n)
        h = hash_key(shop.handle, p, n)
        idx = self.exclusive.find(shop.handle, p, n, h)
        if idx < 0:
            idx = self.exclusive.insert(shop.handle, p, n, NULL, 0, h)
        self.exclusive.entries[idx].a = slot

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
        cdef int32_t slot = self.agent_slot_of(shop, agent_id)
        cdef Agent* a
        cdef int32_t pres, cli
        cdef int64_t now
        pres = enum_value(presence, 3, Presence, "presence")
        if pres == 0:
            raise InvalidArgumentError("presence is required")
        cli = enum_value(client, 2, Client, "client") or CLIENT_DESKTOP
        time_ms(at_ms)
        a = &shop.agents[slot]
        if a.role == ROLE_ROBOT:
            raise FailedPreconditionError(f"agent {agent_id!r} is a robot; presence does not apply")
        now = self.advance(shop, at_ms)
        if pres == PRESENCE_OFFLINE and a.presence != PRESENCE_OFFLINE:
            a.offline_at_ms = now
        a.presence = pres
        a.client = cli
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
        cdef Agent* h
        cdef Pool* pool
        p = utf8_id(conversation_id, &n, "conversation_id", False)
        ev = enum_value(event, 5, ConversationEvent, "event")
        utf8_id(buyer_id, &bn, "buyer_id", True)
        utf8_id(agent_id, &bn, "agent_id", True)
        utf8_id(to_agent_id, &bn, "to_agent_id", True)
        utf8_id(to_group_id, &bn, "to_group_id", True)
        time_ms(at_ms)
        if ev == 0:
            raise InvalidArgumentError("event is required")
        idx = self.conversations.find(shop.handle, p, n, hash_key(shop.handle, p, n))
        if ev == EVENT_ASSIGNED:
            if idx >= 0:
                raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop_id!r}")
            utf8_id(buyer_id, &bn, "buyer_id", False)
            slot = self.agent_slot_of(shop, agent_id)
            h = &shop.agents[slot]
            if h.role == ROLE_ROBOT and h.max_capacity and h.active >= h.max_capacity:
                raise FailedPreconditionError(f"robot {agent_id!r} is at its capacity")
            now = self.advance(shop, at_ms)
            bp = PyUnicode_AsUTF8AndSize(buyer_id, &bn)
            idx = self.conversations.insert(shop.handle, p, n, bp, bn, hash_key(shop.handle, p, n))
            self.conversations.entries[idx].t = now
            shop.live += 1
            self.assign(shop, idx, slot, now)
            self.settle(shop, -1)
            return agent_id_of(shop, slot)
        if idx < 0:
            raise NotFoundError(f"conversation {conversation_id!r} not found in shop {shop_id!r}")
        e = &self.conversations.entries[idx]
        if buyer_id:
            bp = PyUnicode_AsUTF8AndSize(buyer_id, &bn)
            if bn != e.vlen or memcmp(bp, entry_bytes(e) + e.klen, bn) != 0:
                raise FailedPreconditionError(f"conversation {conversation_id!r} belongs to another buyer")
        flags = e.b
        if ev == EVENT_BUYER_MESSAGE:
            now = self.advance(shop, at_ms)
            if (flags & CONV_WAIT_MASK) == 0 and not (flags & CONV_UNREAD):
                e.b = flags | CONV_UNREAD
                shop.agents[e.a].unread += 1
                shop.refresh(e.a)
            self.settle(shop, -1)
            return None
        if ev == EVENT_AGENT_REPLY:
            holder = self.holder(shop, idx, conversation_id, "answer")
            if agent_id and agent_id != agent_id_of(shop, holder):
                raise FailedPreconditionError(
                    f"conversation {conversation_id!r} is served by {agent_id_of(shop, holder)!r}, not {agent_id!r}"
                )
            now = self.advance(shop, at_ms)
            if flags & CONV_UNREAD:
                e.b = flags & ~CONV_UNREAD
                shop.agents[holder].unread -= 1
                shop.refresh(holder)
            self.remember(shop, idx, holder, now)
            self.settle(shop, holder)
            return None
        if ev == EVENT_CLOSED:
            now = self.advance(shop, at_ms)
            holder = e.a
            self.conversations.remove_at(idx)
            shop.live -= 1
            if flags & CONV_WAIT_MASK:
                waiting = self.waiting_of(shop, flags & CONV_WAIT_MASK)
                for item in waiting:
                    if item[0] == conversation_id:
                        waiting.remove(item)
                        break
                self.settle(shop, -1)
                return None
            h = &shop.agents[holder]
            h.active -= 1
            if flags & CONV_UNREAD:
                h.unread -= 1
            shop.refresh(holder)
            self.settle(shop, holder)
            return None
        # TRANSFERRED
        holder = self.holder(shop, idx, conversation_id, "transfer")
        if bool(to_agent_id) == bool(to_group_id):
            raise InvalidArgumentError("a transfer names exactly one of to_agent_id and to_group_id")
        if to_agent_id:
            target = self.agent_slot_of(shop, to_agent_id)
            if shop.agents[target].role == ROLE_ROBOT:
                raise InvalidArgumentError(f"to_agent_id {to_agent_id!r} is a robot")
            if target == holder:
                raise FailedPreconditionError(
                    f"conversation {conversation_id!r} is already served by {to_agent_id!r}"
                )
            now = self.advance(shop, at_ms)
        else:
            gi = -1
            for i in range(len(shop.group_configs)):
                if shop.group_configs[i].group_id == to_group_id:
                    gi = i
                    break
            if gi < 0:
                raise NotFoundError(f"group {to_group_id!r} not found in shop {shop_id!r}")
            pool = &shop.pools[shop.groups[gi].pool]
            if pool.sat.size - (1 if pool.sat.pos[holder] >= 0 else 0) == 0:
                raise FailedPreconditionError(f"no member of group {to_group_id!r} can take a conversation now")
            now = self.advance(shop, at_ms)
            target = shop.pick(shop.groups[gi].pool, shop.groups[gi].strategy or shop.strategy, holder, now)
        shop.agents[holder].active -= 1
        shop.agents[target].active += 1
        shop.bump_today(target, now)
        e = &self.conversations.entries[idx]
        if e.b & CONV_UNREAD:
            shop.agents[holder].unread -= 1
            shop.agents[target].unread += 1
        shop.refresh(holder)
        shop.refresh(target)
        e.a = target
        e.b |= CONV_FORWARDED
        self.remember(shop, idx, target, now)
        self.settle(shop, holder)
        return agent_id_of(shop, target)

    cdef int32_t holder(self, Shop shop, Py_ssize_t idx, object conversation_id, str verb) except -1:
        cdef int32_t wait = self.conversations.entries[idx].b & CONV_WAIT_MASK
        if wait:
            raise FailedPreconditionError(
                f"conversation {conversation_id!r} is waiting ({WaitKind(wait).name}); nobody can {verb} it yet"
            )
        return self.conversations.entries[idx].a

    cdef object waiting_of(self, Shop shop, int32_t kind):
        if kind == WAIT_QUEUE:
            return shop.waiting_queue
        if kind == WAIT_STAGING:
            return shop.waiting_staging
        return shop.waiting_pool

    def claim_from_pool(self, shop_id, agent_id, at_ms, conversation_id=""):
        """An agent (or an administrator on its behalf) takes a conversation from the message pool."""
        cdef Shop shop = self.shop_for(shop_id)
        cdef int32_t slot = self._agent(shop, agent_id)
        cdef int64_t now
        check_id(conversation_id, "conversation_id", optional=True)
        time_ms(at_ms)
        if shop.agents[slot].role == ROLE_ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot")
        pool = shop.waiting_pool
        if not pool:
            raise FailedPreconditionError(f"the message pool of shop {shop_id!r} is empty")
        item = pool[0]
        if conversation_id:
            for item in pool:
                if item[0] == conversation_id:
                    break
            else:
                raise NotFoundError(f"conversation {conversation_id!r} is not in the message pool")
        now = self.advance(shop, at_ms)
        pool.remove(item)
        self.assign(shop, self.conversation_index(shop, item[0]), slot, now)
        self.outbox.append((shop.shop_id, item[0], item[1], agent_id_of(shop, slot), REASON_OFFLINE_MESSAGE_POOL, now))
        self.settle(shop, -1)
        return item[0], item[1]

    # ------------------------------------------------------------ dispatch

    def dispatch(self, shop_id, buyer_id, conversation_id, at_ms, conv_type=1, source="",
                 order_state=0, to_account="", bint trace=False):
        """Decide who gets a new conversation: (reason, agent_id, group_id, trace)."""
        cdef Py_ssize_t sn, bn, cn, srcn, idx
        cdef const char* sp
        cdef const char* bp
        cdef const char* cp
        cdef const char* srcp
        cdef int32_t ctype, ostate, reason, slot, group
        cdef int64_t t
        cdef uint64_t hc
        cdef Shop shop
        cdef list tr = None
        ctype = enum_value(conv_type, TYPE_MAX, ConversationType, "type")
        if ctype == 0:
            ctype = TYPE_BUYER_TO_SHOP
        sp = utf8_id(shop_id, &sn, "shop_id", False)
        if ctype != TYPE_BUYER_TO_SHOP:
            # Section 3: point-to-point, no state change.
            utf8_id(to_account, &srcn, "to_account", False)
            self.decisions[REASON_DIRECT][0] += 1
            return REASON_DIRECT, to_account, None, ([f"direct:{to_account}"] if trace else None)
        bp = utf8_id(buyer_id, &bn, "buyer_id", False)
        cp = utf8_id(conversation_id, &cn, "conversation_id", False)
        srcp = utf8_id(source, &srcn, "source", True)
        ostate = enum_value(order_state, 5, OrderState, "order_state")
        t = time_ms(at_ms)
        idx = self.shop_map.find(0, sp, sn, hash_key(0, sp, sn))
        if idx < 0:
            raise NotFoundError(f"shop {shop_id!r} not found")
        shop = self.shop_at(self.shop_map.entries[idx].a)
        hc = hash_key(shop.handle, cp, cn)
        self.prefetch_decision(shop, bp, bn, hc)
        if self.conversations.find(shop.handle, cp, cn, hc) >= 0:
            raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop_id!r}")
        if trace:
            tr = []
        reason = self.decide(shop, bp, bn, cp, cn, hc, srcp, srcn, ostate, t,
                             conversation_id, buyer_id, source, tr, &slot, &group)
        return (reason, agent_id_of(shop, slot) if slot >= 0 else None,
                <object>shop.groups[group].id if group >= 0 else None, tr)

    cdef void prefetch_decision(self, Shop shop, const char* bp, Py_ssize_t bn, uint64_t hc) noexcept:
        """Start loading, all at once, what deciding a new conversation of ``shop``
        reads: the conversation, recent-contact and exclusive index slots and the
        shop's arrays. At many shops each is a cache miss; this lets them overlap.
        A hint only: no effect on results."""
        cdef uint64_t h = hash_key(shop.handle, bp, bn)
        self.conversations.prefetch(hc)
        self.affinity.prefetch(h)
        self.exclusive.prefetch(h)
        shop.prefetch()

    cdef int32_t decide(self, Shop shop, const char* bp, Py_ssize_t bn, const char* cp, Py_ssize_t cn,
                        uint64_t hc, const char* srcp, Py_ssize_t srcn, int32_t ostate, int64_t t,
                        object conversation_id, object buyer_id, object source, list tr,
                        int32_t* out_slot, int32_t* out_group) except -1:
        """Sections 4 and 6 for a valid buyer-to-shop request whose conversation is new.

        The reason; out_slot is the agent (-1 when the conversation waits),
        out_group the group (-1 for none). conversation_id, buyer_id and source
        may be None: they are made from the bytes only if the conversation has
        to wait (the waiting lists hold Python tuples). Counts the decision."""
        cdef Py_ssize_t idx
        cdef int32_t reason, rule
        cdef int64_t now = self.advance(shop, t)
        # The recent-contact index slot was prefetched (prefetch_decision) and has
        # arrived by now: start loading its entry while the conversation is inserted.
        self.affinity.prefetch_entry(hash_key(shop.handle, bp, bn))
        out_slot[0] = -1
        out_group[0] = -1
        self.picked_strategy = 0
        idx = self.conversations.insert(shop.handle, cp, cn, bp, bn, hc)
        self.conversations.entries[idx].t = now
        shop.live += 1

        # Step 1: is the shop online?
        if not (shop.pools[0].n_avail > 0
                or (shop.mode == MODE_FALLBACK and shop.available(shop.main_slot))):
            # Section 6.
            rule = shop.offline_rule
            if tr is not None:
                tr.append("online:no")
                tr.append(f"offline:{OfflineRule(rule).name}")
            if rule == OFFLINE_MAIN_ACCOUNT or rule == OFFLINE_PROXY_ACCOUNT:
                out_slot[0] = shop.main_slot if rule == OFFLINE_MAIN_ACCOUNT else shop.proxy_slot
                self.assign(shop, idx, out_slot[0], now)
                reason = REASON_OFFLINE_MAIN_ACCOUNT if rule == OFFLINE_MAIN_ACCOUNT else REASON_OFFLINE_PROXY_ACCOUNT
            elif rule == OFFLINE_MESSAGE_POOL:
                self.conversations.entries[idx].b = WAIT_POOL
                shop.waiting_pool.append(self.waiting_item(cp, cn, bp, bn, srcp, srcn, ostate, now,
                                                           conversation_id, buyer_id, source))
                reason = REASON_OFFLINE_MESSAGE_POOL
            else:
                self.conversations.entries[idx].b = WAIT_STAGING
                shop.waiting_staging.append(self.waiting_item(cp, cn, bp, bn, srcp, srcn, ostate, now,
                                                              conversation_id, buyer_id, source))
                reason = REASON_OFFLINE_STAGING
            self.decisions[reason][0] += 1
            return reason
        if tr is not None:
            tr.append("online:yes")

        reason = self.route(shop, bp, bn, self.source_handle_bytes(srcp, srcn), ostate, now, tr,
                            out_slot, out_group)
        if reason:
            self.assign(shop, idx, out_slot[0], now)
        else:
            # Step 7: everyone is full.
            reason = REASON_QUEUED
            self.picked_strategy = 0
            self.conversations.entries[idx].b = WAIT_QUEUE
            shop.waiting_queue.append(self.waiting_item(cp, cn, bp, bn, srcp, srcn, ostate, now,
                                                        conversation_id, buyer_id, source))
            if tr is not None:
                tr.append(f"queued:{len(shop.waiting_queue)}")
        self.decisions[reason][self.picked_strategy] += 1
        return reason

    def dispatch_batch_wire(self, data, int64_t now_ms, Py_ssize_t max_items, max_at_ms=None):
        """A serialized ``DispatchBatchRequest`` in, its ``DispatchBatchResponse`` out.

        Returns (response bytes, number of items that failed), or ``None``,
        with nothing changed, when the bytes are not a batch this codec reads
        (see ``_fastpath.wire``). Items without ``at`` take ``now_ms``. More
        than ``max_items`` items: InvalidArgumentError, nothing changed. An
        item whose ``at`` is later than ``max_at_ms`` (``None``: no bound)
        makes it ``None`` too (``_fastpath.wire.at_beyond``).

        The whole request is read first (into wire_items); then each item is
        decided in order and its response appended to the reused ``out``
        buffer. Ordinary items touch no Python object; the rest (another
        conversation type, a trace, anything the engine rejects) go through
        ``dispatch`` exactly as the reference does (wire_item_slow)."""
        cdef const unsigned char* d
        cdef Py_ssize_t end, pos = 0, n = 0, stop, i
        cdef uint64_t key, v
        cdef WireItem* grown
        cdef int64_t failed = 0
        cdef bint bounded
        cdef int64_t max_at = at_bound(max_at_ms, &bounded)
        if type(data) is not bytes:
            data = bytes(data)
        d = <const unsigned char*>PyBytes_AS_STRING(data)
        end = PyBytes_GET_SIZE(data)
        while pos < end:
            pos = read_varint(d, pos, end, &key)
            if pos < 0 or key != 0x0A:
                return None
            pos = read_varint(d, pos, end, &v)
            if pos < 0 or v > <uint64_t>(end - pos):
                return None
            stop = pos + <Py_ssize_t>v
            if n == self.cap_wire_items:
                grown = <WireItem*>realloc(self.wire_items, (n * 2 + 64) * sizeof(WireItem))
                if grown == NULL:
                    raise MemoryError()
                self.wire_items = grown
                self.cap_wire_items = n * 2 + 64
            if read_item(d, pos, stop, &self.wire_items[n]) != stop:
                return None
            if bounded and at_beyond(&self.wire_items[n], max_at):
                return None
            n += 1
            pos = stop
        check_batch_size(n, max_items)
        self.out.n = 0
        for i in range(n):
            failed += self.wire_item(<const char*>d, &self.wire_items[i], now_ms)
        return PyBytes_FromStringAndSize(self.out.p, self.out.n), failed

    def dispatch_wire(self, data, int64_t now_ms, max_at_ms=None):
        """A serialized ``DispatchRequest`` in, its ``DispatchResponse`` out (unary ``Dispatch``).

        Returns the response bytes, or ``None``, with nothing changed, when the
        request is not an ordinary one this codec decides: bytes the reader
        declines, another conversation type, a trace, an unknown shop, an
        existing conversation, any value ``dispatch`` would refuse. The caller
        then takes the object path (protobuf and ``dispatch``), which answers or
        refuses exactly as before. A request without ``at`` takes ``now_ms``;
        one whose ``at`` is later than ``max_at_ms`` (``None``: no bound) is
        declined too (``_fastpath.wire.at_beyond``)."""
        cdef const unsigned char* d
        cdef Py_ssize_t end
        cdef WireItem item
        cdef bint bounded
        cdef int64_t max_at = at_bound(max_at_ms, &bounded)
        if type(data) is not bytes:
            data = bytes(data)
        d = <const unsigned char*>PyBytes_AS_STRING(data)
        end = PyBytes_GET_SIZE(data)
        if read_item(d, 0, end, &item) != end or (bounded and at_beyond(&item, max_at)):
            return None
        self.out.n = 0
        if not self.wire_decide(<const char*>d, &item, now_ms, False):
            return None
        return PyBytes_FromStringAndSize(self.out.p, self.out.n)

    cdef int wire_item(self, const char* data, WireItem* it, int64_t now_ms) except -1:
        """Decide one batch item and append its DispatchResponse; 1 if it failed, else 0."""
        if self.wire_decide(data, it, now_ms, True):
            return 0
        return self.wire_item_slow(data, it, now_ms)

    cdef bint wire_decide(self, const char* data, WireItem* it, int64_t now_ms, bint element) except -1:
        """The fast path of one item: the ordinary case, decided without Python objects.

        Returns 1 after appending the item's DispatchResponse to ``out`` (as a
        DispatchBatchResponse element when ``element``, else bare), or 0, with
        nothing changed and nothing appended, when the item is not ordinary
        (the caller then lets ``dispatch()`` decide or refuse it)."""
        cdef const char* sp = data + it.off[WIRE_SHOP]
        cdef const char* bp = data + it.off[WIRE_BUYER]
        cdef const char* cp = data + it.off[WIRE_CONVERSATION]
        cdef const char* srcp = data + it.off[WIRE_SOURCE]
        cdef const char* tp = data + it.off[WIRE_TO_ACCOUNT]
        cdef Py_ssize_t sn = it.len[WIRE_SHOP], bn = it.len[WIRE_BUYER], cn = it.len[WIRE_CONVERSATION]
        cdef Py_ssize_t srcn = it.len[WIRE_SOURCE], tn = it.len[WIRE_TO_ACCOUNT], idx, an, gn
        cdef int64_t t = now_ms
        cdef uint64_t hc
        cdef int32_t reason, slot, group
        cdef const char* ap = NULL
        cdef const char* gp = NULL
        cdef Shop shop
        # Declines (return 0) come before any change: the caller's dispatch() then
        # decides or refuses the item with its own checks and messages.
        if it.trace or not 0 <= it.type <= TYPE_MAX or not 0 < sn <= MAX_ID or has_control_byte(sp, sn):
            return 0
        if it.has_at:
            if not (0 <= it.nanos < 1000000000 and 0 <= it.seconds <= LATEST_SECONDS):
                return 0
            t = it.seconds * 1000 + it.nanos // 1000000
        if not 0 <= t <= MAX_TIME:
            return 0
        if it.type > TYPE_BUYER_TO_SHOP:
            # Section 3, as dispatch(): point to point, to_account gets it, no state change.
            if not 0 < tn <= MAX_ID or has_control_byte(tp, tn):
                return 0
            self.decisions[REASON_DIRECT][0] += 1
            self.wire_response(tp, tn, REASON_DIRECT, NULL, 0, cp, cn, element)
            return 1
        if (not 0 < bn <= MAX_ID or not 0 < cn <= MAX_ID or srcn > MAX_ID
                or has_control_byte(bp, bn) or has_control_byte(cp, cn)
                or has_control_byte(srcp, srcn) or not 0 <= it.order_state <= 5):
            return 0
        idx = self.shop_map.find(0, sp, sn, hash_key(0, sp, sn))
        if idx < 0:
            return 0
        shop = self.shop_at(self.shop_map.entries[idx].a)
        hc = hash_key(shop.handle, cp, cn)
        self.prefetch_decision(shop, bp, bn, hc)
        if self.conversations.find(shop.handle, cp, cn, hc) >= 0:
            return 0

        reason = self.decide(shop, bp, bn, cp, cn, hc, srcp, srcn, it.order_state, t,
                             None, None, None, None, &slot, &group)
        an = gn = 0
        if slot >= 0:
            ap = PyUnicode_AsUTF8AndSize(<object>shop.agents[slot].id, &an)
        if group >= 0:
            gp = PyUnicode_AsUTF8AndSize(<object>shop.groups[group].id, &gn)
        self.wire_response(ap, an, reason, gp, gn, cp, cn, element)
        return 1

    cdef int wire_response(self, const char* ap, Py_ssize_t an, int32_t reason, const char* gp, Py_ssize_t gn,
                           const char* cp, Py_ssize_t cn, bint element) except -1:
        """Append a DispatchResponse (agent_id = 1, reason = 2, group_id = 3,
        conversation_id = 6) to ``out``, as a DispatchBatchResponse element
        (responses = 1) when ``element``."""
        cdef Py_ssize_t size = (string_field_size(an) + 1 + varint_size(<uint64_t>reason) + string_field_size(gn)
                                + string_field_size(cn))
        wb_reserve(&self.out, 1 + varint_size(<uint64_t>size) + size)
        if element:
            wb_header(&self.out, 0x0A, size)
        wb_string(&self.out, 0x0A, ap, an)
        self.out.p[self.out.n] = 0x10
        self.out.n += 1
        wb_varint(&self.out, <uint64_t>reason)
        wb_string(&self.out, 0x1A, gp, gn)
        wb_string(&self.out, 0x32, cp, cn)
        return 0

    cdef int wire_item_slow(self, const char* data, WireItem* it, int64_t now_ms) except -1:
        """An item the fast path does not take: the reference's own per-item code
        (wire.dispatch_item: Python strings, dispatch(), its error as a Status)."""
        cdef Py_ssize_t size
        item = PyWireItem(
            PyUnicode_DecodeUTF8(data + it.off[WIRE_SHOP], it.len[WIRE_SHOP], NULL),
            PyUnicode_DecodeUTF8(data + it.off[WIRE_BUYER], it.len[WIRE_BUYER], NULL),
            PyUnicode_DecodeUTF8(data + it.off[WIRE_CONVERSATION], it.len[WIRE_CONVERSATION], NULL),
            it.type,
            PyUnicode_DecodeUTF8(data + it.off[WIRE_SOURCE], it.len[WIRE_SOURCE], NULL),
            it.order_state,
            PyUnicode_DecodeUTF8(data + it.off[WIRE_TO_ACCOUNT], it.len[WIRE_TO_ACCOUNT], NULL),
            (it.seconds, it.nanos) if it.has_at else None,
            bool(it.trace),
        )
        raw, failed = dispatch_item(self, item, now_ms)
        size = PyBytes_GET_SIZE(raw)
        wb_reserve(&self.out, 1 + varint_size(<uint64_t>size) + size)
        wb_header(&self.out, 0x0A, size)  # an element even if empty: not wb_string, which skips those
        memcpy(self.out.p + self.out.n, PyBytes_AS_STRING(raw), size)
        self.out.n += size
        return 1 if failed else 0

    cdef tuple waiting_item(self, const char* cp, Py_ssize_t cn, const char* bp, Py_ssize_t bn,
                            const char* srcp, Py_ssize_t srcn, int32_t ostate, int64_t now,
                            object conversation_id, object buyer_id, object source):
        """(conversation, buyer, source, order_state, since) of a waiting conversation."""
        if conversation_id is None:
            conversation_id = PyUnicode_DecodeUTF8(cp, cn, NULL)
        if buyer_id is None:
            buyer_id = PyUnicode_DecodeUTF8(bp, bn, NULL)
        if source is None:
            source = PyUnicode_DecodeUTF8(srcp, srcn, NULL)
        return (conversation_id, buyer_id, source, ostate, now)

    cdef int32_t source_handle_bytes(self, const char* p, Py_ssize_t n) noexcept:
        cdef Py_ssize_t idx
        if n == 0:
            return -1
        idx = self.source_map.find(0, p, n, hash_key(0, p, n))
        return self.source_map.entries[idx].a if idx >= 0 else -1

    def decision_counts(self):
        """Decisions this object made, ``[reason][strategy]``: a copy. Replayed
        journal records count too; these are counters, not state."""
        cdef int32_t r, k
        return [[self.decisions[r][k] for k in range(N_STRATEGIES)] for r in range(N_REASONS)]

    cdef int32_t route(self, Shop shop, const char* bp, Py_ssize_t bn, int32_t source, int32_t order_state,
                       int64_t now, list tr, int32_t* out_slot, int32_t* out_group) except -1:
        """Steps 2 to 6: a reason with out_slot/out_group set, or 0 when everyone is full.
        Sets picked_strategy when a strategy chose the agent."""
        cdef Py_ssize_t idx
        cdef uint64_t h = hash_key(shop.handle, bp, bn)
        cdef int32_t s, state, gi, k, nb, nr, strategy
        cdef Agent* a
        cdef Group* g
        cdef bint groups_on, bound
        out_group[0] = -1

        # Step 2: recent contact.
        idx = self.affinity.find(shop.handle, bp, bn, h)
        if idx >= 0 and now - self.affinity.entries[idx].t >= shop.window_ms:
            self.affinity.remove_at(idx)  # expired: forget it
            idx = -1
        if idx < 0:
            if tr is not None:
                tr.append("affinity:none")
        else:
            s = self.affinity.entries[idx].a
            a = &shop.agents[s]
            state = contact_state(shop, s, now)
            if state == 0:
                if tr is not None:
                    tr.append(f"affinity:{agent_id_of(shop, s)}:unavailable")
            elif not (shop.may_exceed or has_room(a)):
                if tr is not None:
                    tr.append(f"affinity:{agent_id_of(shop, s)}:full")
            elif state == 2:
                if tr is not None:
                    tr.append(f"affinity:{agent_id_of(shop, s)}:held")
                out_slot[0] = s
                return REASON_AFFINITY_HELD
            else:
                if tr is not None:
                    tr.append(f"affinity:{agent_id_of(shop, s)}")
                out_slot[0] = s
                return REASON_AFFINITY

        # Step 3: exclusive agent.
        if not shop.exclusive_direct:
            if tr is not None:
                tr.append("exclusive:off")
        else:
            idx = self.exclusive.find(shop.handle, bp, bn, h)
            if idx < 0:
                if tr is not None:
                    tr.append("exclusive:none")
            else:
                s = self.exclusive.entries[idx].a
                if not shop.available(s):
                    if tr is not None:
                        tr.append(f"exclusive:{agent_id_of(shop, s)}:unavailable")
                elif not (shop.may_exceed or has_room(&shop.agents[s])):
                    if tr is not None:
                        tr.append(f"exclusive:{agent_id_of(shop, s)}:full")
                else:
                    if tr is not None:
                        tr.append(f"exclusive:{agent_id_of(shop, s)}")
                    out_slot[0] = s
                    return REASON_EXCLUSIVE

        # Step 4: robot first.
        if not shop.robot_first:
            if tr is not None:
                tr.append("robot_first:off")
        else:
            s = shop.robot_slot
            if has_room(&shop.agents[s]):
                if tr is not None:
                    tr.append(f"robot_first:{agent_id_of(shop, s)}")
                out_slot[0] = s
                return REASON_ROBOT
            if tr is not None:
                tr.append(f"robot_first:{agent_id_of(shop, s)}:full")

        # Step 5: group.
        groups_on = shop.mode != MODE_ONLY_MAIN and shop.n_groups > 0
        if groups_on:
            nb = 0
            for gi in range(shop.n_groups):
                if group_bound(&shop.groups[gi], source, order_state):
                    nb += 1
            bound = nb > 0
            if tr is not None:
                tr.append(f"groups:{'bound' if bound else 'unbound'}:{nb if bound else shop.n_groups}")
            nr = 0
            for gi in range(shop.n_groups):
                g = &shop.groups[gi]
                if (not bound or group_bound(g, source, order_state)) and group_ready(shop, g):
                    nr += 1
            if tr is not None:
                tr.append(f"groups:ready:{nr}")
            if nr:
                k = shop.rand_below(nr)
                for gi in range(shop.n_groups):
                    g = &shop.groups[gi]
                    if (not bound or group_bound(g, source, order_state)) and group_ready(shop, g):
                        if k == 0:
                            break
                        k -= 1
                out_group[0] = gi
                if tr is not None:
                    tr.append(f"group:{<object>g.id}")
                s = group_robot(shop, g)
                if s >= 0:
                    if tr is not None:
                        tr.append(f"robot:{agent_id_of(shop, s)}")
                    out_slot[0] = s
                    return REASON_ROBOT
                strategy = g.strategy or shop.strategy
                s = shop.pick(g.pool, strategy, -1, now)
                self.picked_strategy = strategy
                if tr is not None:
                    tr.append(f"strategy:{Strategy(strategy).name}:{agent_id_of(shop, s)}")
                out_slot[0] = s
                return REASON_GROUP
        elif tr is not None:
            tr.append("groups:none")

        # Step 6: fallback (or, without groups, the strategy over everyone).
        s = shop.pick(0, shop.strategy, -1, now)
        if s >= 0:
            self.picked_strategy = shop.strategy
            if tr is not None:
                tr.append(f"{'fallback' if groups_on else 'strategy'}:{Strategy(shop.strategy).name}:{agent_id_of(shop, s)}")
            out_slot[0] = s
            return REASON_FALLBACK if groups_on else REASON_GROUP
        if tr is not None:
            tr.append(f"{'fallback' if groups_on else 'strategy'}:{Strategy(shop.strategy).name}:none")
        if shop.mode == MODE_FALLBACK:
            # Case C: the main account receives only when every other agent is offline.
            s = shop.main_slot
            if shop.pools[0].n_avail == 0 and shop.available(s) and shop.agents[s].active < shop.agents[s].max_capacity:
                if tr is not None:
                    tr.append(f"fallback:main:{agent_id_of(shop, s)}")
                out_slot[0] = s
                return REASON_FALLBACK
        return 0

    # ------------------------------------------------------------ state changes

    cdef int assign(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now) except -1:
        cdef Entry* e = &self.conversations.entries[conv]
        cdef Agent* a = &shop.agents[slot]
        e.a = slot
        e.b = (e.b & CONV_FORWARDED) | CONV_UNREAD  # the opening message awaits a reply
        a.active += 1
        a.unread += 1
        shop.bump_today(slot, now)
        shop.refresh(slot)
        return 0

    cdef int remember(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now) except -1:
        """The agent spoke to the buyer (or received the conversation by transfer)."""
        cdef Entry* e = &self.conversations.entries[conv]
        cdef const char* bp = entry_bytes(e) + e.klen
        cdef Py_ssize_t bn = e.vlen
        cdef uint64_t h
        cdef Py_ssize_t idx
        cdef ByteMap aff = self.affinity
        if shop.agents[slot].role == ROLE_ROBOT:
            return 0  # talking to a robot does not bind the buyer to it
        h = hash_key(shop.handle, bp, bn)
        idx = aff.find(shop.handle, bp, bn, h)
        if idx >= 0:
            aff.entries[idx].a = slot
            aff.entries[idx].t = now
            return 0
        idx = aff.insert(shop.handle, bp, bn, NULL, 0, h)
        aff.entries[idx].a = slot
        aff.entries[idx].t = now
        self.sweep_affinity(2)  # after the fields are set: the new entry is alive
        return 0

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
            if shop.clock - e.t >= shop.window_ms:
                aff.remove_at(aff.sweep_at)
            else:
                aff.sweep_at += 1

    cdef void forget_expired(self, Shop shop) noexcept:
        """Before the window changes: forget the contacts already past the old one."""
        cdef ByteMap aff = self.affinity
        cdef Py_ssize_t k = 0
        while k < aff.n:
            if aff.entries[k].ns == shop.handle and shop.clock - aff.entries[k].t >= shop.window_ms:
                aff.remove_at(k)  # moves another entry into k: look at k again
            else:
                k += 1

    cdef int settle(self, Shop shop, int32_t focus) except -1:
        """Hand out waiting conversations after a change (section 6 staging, step 7 queue)."""
        cdef int64_t now = shop.clock
        cdef int32_t reason, slot, group
        cdef Agent* a
        cdef const char* bp
        cdef Py_ssize_t bn
        staging = shop.waiting_staging
        if staging and focus >= 0 and shop.available(focus):
            a = &shop.agents[focus]
            while staging and a.unread < shop.staging_cap and a.active < a.max_capacity:
                item = staging.popleft()
                self.assign(shop, self.conversation_index(shop, item[0]), focus, now)
                self.outbox.append((shop.shop_id, item[0], item[1], agent_id_of(shop, focus),
                                    REASON_OFFLINE_STAGING, now))
        queue = shop.waiting_queue
        while queue:
            item = queue[0]
            bp = PyUnicode_AsUTF8AndSize(item[1], &bn)
            reason = self.route(shop, bp, bn, self.source_handle(item[2]), item[3], now, None, &slot, &group)
            if not reason:
                break
            queue.popleft()
            self.assign(shop, self.conversation_index(shop, item[0]), slot, now)
            self.outbox.append((shop.shop_id, item[0], item[1], agent_id_of(shop, slot), reason, now))
        return 0

    # ------------------------------------------------------------ reading

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
        """Everything an operator needs to see why a shop routes as it does."""
        cdef Shop shop = self.shop_for(shop_id)
        cdef int64_t now = shop.clock
        cdef int32_t s
        cdef Agent* a
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

        def waiting(items):
            return [{"conversation_id": w[0], "buyer_id": w[1], "since_ms": w[4]} for w in items]

        return {
            "shop_id": shop_id,
            "clock_ms": now,
            "agents": agents,
            "groups": [{"group_id": g.group_id, "members": list(g.members)} for g in shop.group_configs],
            "queue": waiting(shop.waiting_queue),
            "staging": waiting(shop.waiting_staging),
            "pool": waiting(shop.waiting_pool),
            "live_conversations": shop.live,
        }

    def totals(self):
        """Engine-wide counts for gauges: shops, agents online/suspended, live and waiting conversations."""
        cdef Shop shop
        cdef int32_t s
        cdef int64_t online = 0, suspended = 0, live = 0, n_shops = 0
        cdef const Agent* a
        queue = staging = pool = 0
        for shop in self.shop_list:
            if shop is None:
                continue
            n_shops += 1
            live += shop.live
            queue += len(shop.waiting_queue)
            staging += len(shop.waiting_staging)
            pool += len(shop.waiting_pool)
            for s in range(shop.n_agents):
                a = &shop.agents[s]
                if a.deleted or a.role == ROLE_ROBOT:
                    continue
                if a.presence == PRESENCE_ONLINE:
                    online += 1
                elif a.presence == PRESENCE_SUSPENDED:
                    suspended += 1
        return {"shops": n_shops, "agents_online": online, "agents_suspended": suspended,
                "live_conversations": live, "queue": queue, "staging": staging, "pool": pool}

    def effective_strategy(self, shop_id, group_id=""):
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

    def conversation(self, shop_id, conversation_id):
        cdef Shop shop = self.shop_for(shop_id)
        cdef Py_ssize_t idx
        cdef Entry* e
        check_id(conversation_id, "conversation_id")
        idx = self.conversation_index(shop, conversation_id)
        if idx < 0:
            return None
        e = &self.conversations.entries[idx]
        wait = e.b & CONV_WAIT_MASK
        return {
            "buyer_id": self.conversation_buyer(idx),
            "agent_id": None if wait else agent_id_of(shop, e.a),
            "wait": wait,
            "unread": bool(e.b & CONV_UNREAD),
            "forwarded": bool(e.b & CONV_FORWARDED),
        }

    def recent_contact(self, shop_id, buyer_id):
        """The buyer's recent contact in the shop, if younger than the window: (agent_id, contact_at_ms)."""
        cdef Shop shop = self.shop_for(shop_id)
        cdef Py_ssize_t idx
        check_id(buyer_id, "buyer_id")
        idx = self.affinity.find_str(shop.handle, buyer_id)
        if idx < 0 or shop.clock - self.affinity.entries[idx].t >= shop.window_ms:
            return None
        return agent_id_of(shop, self.affinity.entries[idx].a), self.affinity.entries[idx].t

    def exclusive_agent(self, shop_id, buyer_id):
        cdef Shop shop = self.shop_for(shop_id)
        cdef Py_ssize_t idx
        check_id(buyer_id, "buyer_id")
        idx = self.exclusive.find_str(shop.handle, buyer_id)
        return agent_id_of(shop, self.exclusive.entries[idx].a) if idx >= 0 else None

    # ------------------------------------------------------------ snapshots

    def export_state(self):
        """The whole engine state as plain data (JSON-able), identical for both engines."""
        cdef Shop shop
        cdef int32_t s, pi
        cdef Agent* a
        cdef Pool* p
        cdef Entry* e
        cdef Py_ssize_t k
        shops = []
        for shop in sorted([x for x in self.shop_list if x is not None], key=lambda x: x.shop_id):
            agents = []
            for s in range(shop.n_agents):
                a = &shop.agents[s]
                agents.append([agent_id_of(shop, s), a.role, a.weight, a.max_capacity, a.created_at_ms,
                               bool(a.chat_permission), bool(a.deleted), a.presence, a.client,
                               a.offline_at_ms, a.active, a.unread, a.today, a.today_day])
            round_robin = []
            for pi in range(shop.n_pools):
                p = &shop.pools[pi]
                if p.rr_ready:
                    round_robin.append({
                        "pool": "" if pi == 0 else shop.group_configs[pi - 1].group_id,
                        "order": [agent_id_of(shop, p.rr_order[k]) for k in range(p.n_members)],
                        "credit": [p.rr_credit[k] for k in range(p.n_members)],
                        "cursor": p.rr_cursor,
                    })
            round_robin.sort(key=lambda rr: rr["pool"])
            shops.append({
                "config": dataclasses.asdict(shop.config),
                "rng": shop.rng,
                "clock": shop.clock,
                "live": shop.live,
                "agents": agents,
                "groups": [_group_dict(g) for g in shop.group_configs],
                "round_robin": round_robin,
                "waiting": {
                    str(WAIT_QUEUE): [list(w) for w in shop.waiting_queue],
                    str(WAIT_STAGING): [list(w) for w in shop.waiting_staging],
                    str(WAIT_POOL): [list(w) for w in shop.waiting_pool],
                },
            })
        conversations = []
        for k in range(self.conversations.n):
            e = &self.conversations.entries[k]
            shop = self.shop_at(e.ns)
            wait = e.b & CONV_WAIT_MASK
            conversations.append([shop.shop_id, PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL),
                                  PyUnicode_DecodeUTF8(entry_bytes(e) + e.klen, e.vlen, NULL),
                                  None if wait else agent_id_of(shop, e.a), wait,
                                  bool(e.b & CONV_UNREAD), bool(e.b & CONV_FORWARDED)])
        affinity = []
        for k in range(self.affinity.n):
            e = &self.affinity.entries[k]
            shop = self.shop_at(e.ns)
            if shop.clock - e.t < shop.window_ms:
                affinity.append([shop.shop_id, PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL),
                                 agent_id_of(shop, e.a), e.t])
        exclusive = []
        for k in range(self.exclusive.n):
            e = &self.exclusive.entries[k]
            shop = self.shop_at(e.ns)
            exclusive.append([shop.shop_id, PyUnicode_DecodeUTF8(entry_bytes(e), e.klen, NULL),
                              agent_id_of(shop, e.a)])
        conversations.sort(key=lambda row: (row[0], row[1]))
        affinity.sort()
        exclusive.sort()
        return {
            "format": SNAPSHOT_FORMAT,
            "seed": self._seed,
            "shops": shops,
            "conversations": conversations,
            "affinity": affinity,
            "exclusive": exclusive,
            "outbox": [list(item) for item in self.outbox],
        }

    def import_state(self, state):
        """Load an ``export_state()`` (of either engine) into this empty engine."""
        cdef Shop shop
        cdef int32_t slot, pi, i
        cdef Agent* a
        cdef Pool* p
        cdef Py_ssize_t n, vn, idx
        cdef const char* kp
        cdef const char* vp
        if self.shop_map.n or self.conversations.n or self.affinity.n or self.exclusive.n:
            raise FailedPreconditionError("import_state needs an empty engine")
        if state.get("format") != SNAPSHOT_FORMAT:
            raise InvalidArgumentError(f"unknown snapshot format {state.get('format')!r}")
        self._seed = state["seed"]
        handles = {}
        for data in state["shops"]:
            config = ShopConfig(**data["config"])
            shop = Shop()
            shop.shop_id = config.shop_id
            shop.handle = self.n_handles
            self.add_handle(shop)
            kp = PyUnicode_AsUTF8AndSize(config.shop_id, &n)
            self.shop_map.entries[self.shop_map.insert(0, kp, n, NULL, 0, hash_key(0, kp, n))].a = shop.handle
            handles[config.shop_id] = shop
            shop.rng = data["rng"]
            shop.clock = data["clock"]
            shop.live = data["live"]
            for row in data["agents"]:
                slot = shop.add_agent_slot(row[0])
                a = &shop.agents[slot]
                (a.role, a.weight, a.max_capacity, a.created_at_ms, a.chat_permission, a.deleted,
                 a.presence, a.client, a.offline_at_ms, a.active, a.unread, a.today, a.today_day) = row[1:]
            self.apply_shop_config(shop, config)
            for group in data["groups"]:
                config_g = GroupConfig(**{**group, "members": tuple(group["members"]),
                                          "order_states": tuple(group["order_states"]),
                                          "sources": tuple(group["sources"])})
                shop.group_configs.append(config_g)
                shop.group_sources.append([self.intern_source(src) for src in config_g.sources])
            shop.rebuild()
            for rr in data["round_robin"]:
                pi = 0
                if rr["pool"]:
                    pi = 1 + [g.group_id for g in shop.group_configs].index(rr["pool"])
                p = &shop.pools[pi]
                shop.rr_build(p)
                if [agent_id_of(shop, p.rr_order[i]) for i in range(p.n_members)] != rr["order"]:
                    raise InvalidArgumentError(f"snapshot round robin of shop {shop.shop_id!r} does not match")
                for i in range(p.n_members):
                    p.rr_credit[i] = rr["credit"][i]
                p.rr_cursor = rr["cursor"]
            shop.waiting_queue.extend(tuple(w) for w in data["waiting"][str(WAIT_QUEUE)])
            shop.waiting_staging.extend(tuple(w) for w in data["waiting"][str(WAIT_STAGING)])
            shop.waiting_pool.extend(tuple(w) for w in data["waiting"][str(WAIT_POOL)])
        for shop_id, conv_id, buyer_id, agent_id, wait, unread, forwarded in state["conversations"]:
            shop = handles[shop_id]
            kp = PyUnicode_AsUTF8AndSize(conv_id, &n)
            vp = PyUnicode_AsUTF8AndSize(buyer_id, &vn)
            idx = self.conversations.insert(shop.handle, kp, n, vp, vn, hash_key(shop.handle, kp, n))
            self.conversations.entries[idx].a = shop.agent_slot[agent_id] if agent_id is not None else -1
            self.conversations.entries[idx].b = wait | (CONV_UNREAD if unread else 0) | (CONV_FORWARDED if forwarded else 0)
        for shop_id, buyer_id, agent_id, at in state["affinity"]:
            shop = handles[shop_id]
            kp = PyUnicode_AsUTF8AndSize(buyer_id, &n)
            idx = self.affinity.insert(shop.handle, kp, n, NULL, 0, hash_key(shop.handle, kp, n))
            self.affinity.entries[idx].a = shop.agent_slot[agent_id]
            self.affinity.entries[idx].t = at
        for shop_id, buyer_id, agent_id in state["exclusive"]:
            shop = handles[shop_id]
            kp = PyUnicode_AsUTF8AndSize(buyer_id, &n)
            idx = self.exclusive.insert(shop.handle, kp, n, NULL, 0, hash_key(shop.handle, kp, n))
            self.exclusive.entries[idx].a = shop.agent_slot[agent_id]
        self.outbox = [tuple(item) for item in state["outbox"]]

    cdef int32_t intern_source(self, object source) except -1:
        cdef Py_ssize_t n, idx
        cdef const char* p = PyUnicode_AsUTF8AndSize(source, &n)
        idx = self.source_map.find(0, p, n, hash_key(0, p, n))
        if idx < 0:
            idx = self.source_map.insert(0, p, n, NULL, 0, hash_key(0, p, n))
            self.source_map.entries[idx].a = self.n_sources
            self.n_sources += 1
        return self.source_map.entries[idx].a

    def table_sizes(self):
        """Entries held by the C tables (for benchmarks and leak checks)."""
        return {
            "shops": self.shop_map.n,
            "conversations": self.conversations.n,
            "affinity": self.affinity.n,
            "exclusive": self.exclusive.n,
            "sources": self.source_map.n,
        }


cdef inline int32_t contact_state(Shop shop, int32_t s, int64_t now) noexcept:
    # 0: unavailable, 1: present (online or suspended), 2: held by the offline grace.
    cdef const Agent* a = &shop.agents[s]
    if a.deleted or not a.chat_permission or a.role == ROLE_ROBOT:
        return 0
    if ((a.presence == PRESENCE_ONLINE or a.presence == PRESENCE_SUSPENDED)
            and (a.client != CLIENT_MOBILE or shop.mobile_dispatch)):
        return 1
    if (a.presence == PRESENCE_OFFLINE and shop.grace_ms > 0 and a.offline_at_ms != -1
            and now - a.offline_at_ms < shop.grace_ms):
        return 2
    return 0


cdef inline bint group_bound(const Group* g, int32_t source, int32_t order_state) noexcept:
    cdef int32_t i
    if (g.order_mask >> order_state) & 1:
        return True
    if source >= 0:
        for i in range(g.n_sources):
            if g.sources[i] == source:
                return True
    return False


cdef inline int32_t group_robot(Shop shop, const Group* g) noexcept:
    cdef const Agent* r
    if not g.robot_enabled or g.robot_slot < 0:
        return -1
    r = &shop.agents[g.robot_slot]
    if r.deleted or r.role != ROLE_ROBOT or not has_room(r):
        return -1
    return g.robot_slot


cdef inline bint group_ready(Shop shop, const Group* g) noexcept:
    # Can take a conversation now: its robot, or an eligible member.
    return group_robot(shop, g) >= 0 or shop.pools[g.pool].sat.size > 0
