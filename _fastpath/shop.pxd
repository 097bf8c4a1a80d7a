# shop: one tenant's storage (spec §2): agents, groups, the rosters of who may
# receive by strategy, the local-day cache for "today" counts, and the seeded
# PRNG that breaks "random" ties reproducibly (spec §9).

cdef enum:
    PREFETCH_BYTES = 2048  # per array: Shop.prefetch's hint stops there (big shops touch little of it)

# Shop.timed: the §10-§11 rules a shop uses, as bits.
cdef enum:
    TIMED_TRACKS = 1   # == its ShopTimers.tracking: every conversation has a Track (timers_configure)
    TIMED_HOURS = 2    # the shop or one of its groups has a schedule (hours_configure)


# An agent of a shop. Invariants: slot == registration ordinal; a deleted agent
# keeps its slot (re-adding the same id reuses it); `avail` == available(shop,
# slot) as of the agent's last refresh (the rosters' n_avail count it).
ctypedef struct Agent:
    PyObject* id            # the agent id str (a strong reference)
    int64_t created_at_ms   # account creation time (FEWEST_UNREAD ties)
    int64_t offline_at_ms   # when it last went OFFLINE; -1: never since it was added
    int32_t role            # ROLE_*
    int32_t weight          # >= 1 (WEIGHTED_BUSYNESS)
    int32_t max_capacity    # >= 1, or 0 for a robot without limit
    int32_t presence        # PRESENCE_*
    int32_t client          # CLIENT_*
    int32_t active          # conversations it serves now (spec §2 load)
    int32_t unread          # of those, the ones whose buyer awaits a reply
    int32_t today           # conversations received on local day today_day
    int32_t today_day       # local day ordinal that `today` counts
    int32_t n_groups        # groups it is a member of (configuration)
    uint8_t chat_permission  # 0: never receives
    uint8_t deleted         # 1: deleted (the slot stays)
    uint8_t avail           # cached available() (see above)


# A group, in configuration order (Shop.group_configs[i] is groups[i]).
ctypedef struct Group:
    PyObject* id            # the group id str (a strong reference)
    int32_t roster          # its members' roster: index into Shop.rosters (== group index + 1)
    int32_t robot_enabled   # its robot takes its conversations (spec §4 step 5)
    int32_t robot_slot      # the group's robot, else the shop's, else -1
    int32_t strategy        # 0: the shop's
    uint32_t order_mask     # bit (1 << order_state) per bound order state
    int32_t* sources        # bound source handles (Router.source_map)
    int32_t n_sources       # length of sources
    int64_t hours_until     # §10 (hours.pxd): hours_open holds while the shop's clock is below it
    int32_t hours_open      # its business hours are open (1 without a schedule: hours_until HOURS_NEVER)


# A roster: the agents a strategy may pick from. Roster 0 is the shop-wide one
# (who falls back, or everyone when the shop has no groups); roster g + 1 holds
# group g's members (spec §7 decides whether the main account is one).
# Invariants: members[0:n_members] are the members in slot order; is_member[slot]
# says the same per slot; both heaps hold exactly the members that are
# eligible (available and not full); n_avail counts the members that are
# available (ONLINE on a counted client, with permission), full or not.
ctypedef struct Roster:
    int32_t* members        # member slots, ascending
    int32_t n_members       # length of members
    uint8_t* is_member      # per agent slot: 1 if a member
    int32_t n_avail         # members available now
    Heap sat                # eligible members by saturation
    Heap unread             # eligible members by unread
    RoundRobin rr           # the CAPACITY_ROUND_ROBIN cycle (strategies.pxd)


# One waiting list of a shop (the step 7 queue, §6 staging, §6 message pool):
# one FIFO per priority level (spec §11), items are the tuples
# (conversation, buyer, source, order_state, since, priority). Invariants:
# levels[p] holds the items of priority p in arrival order (None until the
# level's first push: an empty deque is ~760 bytes, and most shops never
# wait); n == their total;
# the hand-out order (iteration, head, pop_head) is highest priority first,
# then oldest first. last_handout_ms / interval_ms: the list's hand-out rate
# (the reference's WaitList: shop clock of the last hand-out, EWMA of the time
# between two, -1 until known). reference.shop.WaitList is the definition.
@cython.final
cdef class WaitList:
    cdef list levels                # N_PRIORITIES deques, None until a level's first push
    cdef Py_ssize_t n               # items in all levels
    cdef readonly int64_t last_handout_ms   # -1: no hand-out yet
    cdef readonly int64_t interval_ms       # -1: unknown (fewer than two hand-outs)

    cdef int push(self, tuple item) except -1
    cdef object head(self)
    cdef object pop_head(self)
    cdef Py_ssize_t position_of_last(self, int32_t priority) except -1
    cdef Py_ssize_t position(self, object conversation_id) except -1
    cdef void note_handout(self, int64_t now) noexcept
    cdef int64_t estimate(self, int64_t position) noexcept


# One tenant. Configuration fields mirror the normalized ShopConfig (set by
# apply_config); groups and rosters are rebuilt from
# group_configs on every configuration change (rebuild), while load and
# presence changes go through refresh(), which keeps every roster exact.
# Invariant: live == conversations of the shop in the conversation table
# (served or waiting); each WaitList holds the waiting conversations of its
# kind in hand-out order (highest priority, then oldest, first).
@cython.final
cdef class Shop:
    cdef readonly object shop_id    # the shop id str
    cdef object config              # the normalized ShopConfig
    cdef int32_t handle             # engine-wide shop handle (namespace in the ByteMaps)
    # §10-§11: the timed rules in use, TIMED_* bits; 0 for a shop that uses none, the
    # common case: its decision then reads nothing else of them (one test of this byte
    # stands for the track, deadline and hours checks). Next to `handle`, which every
    # call reads first: the test costs no other cache line of the shop. Invariant: a
    # shop with a Track or a pending deadline has timed != 0 (tracks and deadlines go
    # when their rules go).
    cdef uint8_t timed
    cdef int32_t strategy           # the shop's strategy (STRATEGY_*)
    cdef int32_t offline_rule       # OFFLINE_*
    cdef int32_t mode               # MODE_* (main account participation)
    cdef int32_t staging_cap        # staging_first_cap (spec §6 STAGING)
    cdef int32_t busy_threshold     # unread above it is busy (WEIGHTED_BUSYNESS)
    cdef int64_t window_ms          # affinity window
    cdef int64_t grace_ms           # offline grace (0: none)
    cdef bint may_exceed            # affinity may exceed max capacity
    cdef bint exclusive_direct      # step 3 on
    cdef bint robot_first           # step 4 on
    cdef bint mobile_dispatch       # a MOBILE client counts as online
    cdef int32_t main_slot          # the main account's slot
    cdef int32_t robot_slot         # the shop's robot, or -1
    cdef int32_t proxy_slot         # the proxy account, or -1
    cdef uint64_t rng               # SplitMix64 state (rand_below)
    cdef int64_t clock              # latest event time seen; never goes back
    cdef int32_t day                # cached local day ordinal (day_of), valid in [day_start, day_end)
    cdef int64_t day_start          # its first ms (0 with day_end 0: nothing cached)
    cdef int64_t day_end            # the first ms after it
    cdef Agent* agents              # agents[0:n_agents] by slot
    cdef int32_t n_agents           # slots handed out (deleted agents included)
    cdef int32_t cap_agents         # agents allocated (scratch holds 2 * cap_agents)
    cdef dict agent_slot            # agent id -> slot (configuration and events only)
    # agent_index: agent_slot in C, for the wire readers (Shop.find_agent). Open
    # addressing by hash_key(0, id UTF-8) over index_mask + 1 cells, 0 = empty, else
    # slot + 1; every slot is in it (deleted ones too); index_mask + 1 >= 2 * n_agents
    # (NULL and -1 before the first agent).
    cdef int32_t* agent_index       # the cells
    cdef int32_t index_mask         # cells - 1
    cdef Group* groups              # groups[0:n_groups], configuration order
    cdef int32_t n_groups           # == len(group_configs) after rebuild
    cdef list group_configs         # GroupConfig per group, same order as groups
    cdef list group_sources         # per group: the bound source handles (ints)
    cdef Roster* rosters            # rosters[0:n_rosters]: 0 = shop-wide, g + 1 = group g
    cdef int32_t n_rosters          # n_groups + 1 after rebuild
    cdef int32_t* scratch           # 2 * cap_agents ints for the strategies' tie collection
    cdef WaitList waiting_queue     # WaitLists of (conversation, buyer, source, order_state, since, priority):
    cdef WaitList waiting_staging   # step 7 queue, §6 staging pool,
    cdef WaitList waiting_message_pool  # §6 leave-a-message pool (claim_from_pool)
    cdef int64_t live               # conversations in the table (served or waiting)
    cdef int64_t hours_until        # §10 (hours.pxd): hours_open holds while clock < hours_until
    cdef bint hours_open            # the shop's business hours are open (always, without a schedule)

    cdef int add_agent_slot(self, object agent_id) except -1
    cdef int index_agent(self, int32_t slot) except -1
    cdef int32_t find_agent(self, const char* p, Py_ssize_t n) except -2
    cdef int add_main_account(self, object agent_id) except -1
    cdef int apply_config(self, object config) except -1
    cdef int rebuild(self) except -1
    cdef void free_rosters(self) noexcept
    cdef void refresh(self, int32_t slot) noexcept
    cdef void prefetch(self) noexcept
    cdef int64_t advance(self, int64_t at_ms) noexcept
    cdef int32_t day_of(self, int64_t now) except -1
    cdef int32_t today_of(self, int32_t slot, int64_t now) except -1
    cdef int bump_today(self, int32_t slot, int64_t now) except -1
    cdef int32_t rand_below(self, int32_t n) noexcept
