# Declarations of the compiled engine's C-level state.
#
# Everything a decision touches lives here, in C structs and C arrays, keyed
# by integer handles: shop handles (engine-wide, never reused), agent slots
# (per shop, == registration ordinal, never reused), pool and group indices
# (per shop, rebuilt on configuration changes). Strings cross the boundary
# only as UTF-8 pointers borrowed from the caller's str objects.

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from cpython.object cimport PyObject


# One entry of a ByteMap: a (namespace, key bytes) -> small payload record.
# 40 bytes. Invariants: `hash` is the low 32 bits of hash_key(ns, key) (the
# home slot, and a filter before the full key comparison); the klen key bytes
# followed by the vlen value bytes live inline in `data.local` when they fit
# (klen + vlen <= ENTRY_INLINE), else in a malloc'd block owned by the entry
# (`data.ptr`); keys are unique per map.
cdef enum:
    ENTRY_INLINE = 16

ctypedef union EntryData:
    char local[16]
    char* ptr

ctypedef struct Entry:
    uint32_t hash
    int32_t ns         # namespace: the shop handle (0 in engine-wide maps)
    int64_t t          # affinity: contact time ms; conversation: since ms
    int32_t a          # payload: agent slot / shop handle / source handle
    uint16_t b         # payload: conversation flags (see CONV_* in engine.pyx)
    uint8_t klen
    uint8_t vlen
    EntryData data


# Shape of CompiledEngine.decisions: [reason][strategy] (Reason and Strategy
# numbers; strategy 0 = no strategy chose the agent).
cdef enum:
    N_REASONS = 13
    N_STRATEGIES = 6


# One DispatchRequest of a serialized DispatchBatchRequest, as read by
# wire.pyx: each string is (offset, length) into the request bytes, already
# checked to be valid UTF-8; the scalars are proto3 values (0 when absent).
ctypedef struct WireItem:
    Py_ssize_t off[5]  # WIRE_SHOP, WIRE_BUYER, WIRE_CONVERSATION, WIRE_SOURCE, WIRE_TO_ACCOUNT
    Py_ssize_t len[5]
    int32_t type
    int32_t order_state
    int64_t seconds    # at.seconds / at.nanos, meaningful when has_at
    int32_t nanos
    uint8_t has_at
    uint8_t trace


# A growable byte buffer (dispatch_batch_wire's output). Invariant: n <= cap;
# p is NULL only while cap == 0.
ctypedef struct WireBuffer:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


# An indexed binary min-heap of agent slots.
# Invariants: items[0:size] is heap-ordered by the kind's key (HEAP_SAT:
# active/max_capacity then slot; HEAP_UNREAD: unread, created_at, slot);
# pos[slot] is the index of slot in items, or -1 when absent.
ctypedef struct Heap:
    int32_t* items
    int32_t* pos
    int32_t size
    int32_t kind


# A pool: the shop-wide pool (index 0) or one group's members (index g + 1).
# Invariants: members[0:n_members] are the valid members in slot order;
# is_member[slot] says the same as a lookup; both heaps hold exactly the
# members that are eligible (available and not full); n_avail counts the
# members that are available (ONLINE on a counted client, permitted).
# Round robin: rr_order lists members by capacity desc then slot;
# rr_credit[i] is the turns left to rr_order[i] in this cycle, rr_full[i]
# its turns per cycle (capacity / gcd); rr_ready == 0 means "start a fresh
# cycle at the next pick" (set by every configuration change).
ctypedef struct Pool:
    int32_t* members
    int32_t n_members
    uint8_t* is_member
    int32_t n_avail
    Heap sat
    Heap unread
    int32_t* rr_order
    int32_t* rr_credit
    int32_t* rr_full
    int32_t rr_cursor
    int32_t rr_ready


# An agent of a shop. Slot == registration ordinal; a deleted agent keeps its
# slot (re-adding the same id reuses it). `id` is a strong reference to the
# agent id str. `avail` caches available() for the n_avail counters.
ctypedef struct Agent:
    PyObject* id
    int64_t created_at_ms
    int64_t offline_at_ms   # -1: never went offline since it was added
    int32_t role
    int32_t weight
    int32_t max_capacity    # >= 1, or 0 for a robot without limit
    int32_t presence
    int32_t client
    int32_t active
    int32_t unread
    int32_t today
    int32_t today_day       # local day ordinal that `today` counts
    int32_t n_groups
    uint8_t chat_permission
    uint8_t deleted
    uint8_t avail


# A group, in configuration order. pool == index into Shop.pools.
ctypedef struct Group:
    PyObject* id
    int32_t pool
    int32_t robot_enabled
    int32_t robot_slot      # the group's robot, else the shop's, else -1
    int32_t strategy        # 0: the shop's
    uint32_t order_mask     # bit (1 << order_state) per bound order state
    int32_t* sources        # bound source handles
    int32_t n_sources


@cython.final
cdef class ByteMap:
    # Open addressing (linear probing) over a dense entry array.
    # index[i] == 0: empty slot; else entries[index[i] - 1]. Load <= 1/2.
    # Deletion shifts back the probe run (no tombstones) and moves the last
    # entry into the hole, so entries[0:n] stays dense. The entry array grows
    # by 1/4 at a time (memory per entry is the point); the index doubles.
    cdef Entry* entries
    cdef uint32_t* index
    cdef Py_ssize_t n
    cdef Py_ssize_t cap_entries
    cdef Py_ssize_t mask
    cdef Py_ssize_t sweep_at

    cdef Py_ssize_t find(self, int32_t ns, const char* key, Py_ssize_t klen, uint64_t h) noexcept
    cdef Py_ssize_t find_str(self, int32_t ns, object key) except -2
    cdef Py_ssize_t insert(self, int32_t ns, const char* key, Py_ssize_t klen,
                           const char* val, Py_ssize_t vlen, uint64_t h) except -1
    cdef void remove_at(self, Py_ssize_t idx) noexcept
    cdef int grow_index(self) except -1
    cdef void clear_namespace(self, int32_t ns) noexcept
    cdef void prefetch(self, uint64_t h) noexcept
    cdef void prefetch_entry(self, uint64_t h) noexcept


@cython.final
cdef class Shop:
    cdef readonly object shop_id
    cdef object config              # the normalized ShopConfig
    cdef int32_t handle
    cdef int32_t strategy
    cdef int32_t offline_rule
    cdef int32_t mode
    cdef int32_t staging_cap
    cdef int32_t busy_threshold
    cdef int64_t window_ms
    cdef int64_t grace_ms
    cdef bint may_exceed
    cdef bint exclusive_direct
    cdef bint robot_first
    cdef bint mobile_dispatch
    cdef int32_t main_slot
    cdef int32_t robot_slot
    cdef int32_t proxy_slot
    cdef uint64_t rng
    cdef int64_t clock
    cdef int32_t day
    cdef int64_t day_start
    cdef int64_t day_end
    cdef Agent* agents
    cdef int32_t n_agents
    cdef int32_t cap_agents
    cdef dict agent_slot            # agent id -> slot (configuration and events only)
    cdef Group* groups
    cdef int32_t n_groups
    cdef list group_configs         # GroupConfig per group, same order as groups
    cdef list group_sources         # per group: the bound source handles (ints)
    cdef Pool* pools
    cdef int32_t n_pools
    cdef int32_t* scratch           # 2 * cap_agents ints for tie collection
    cdef object waiting_queue       # deques of (conversation, buyer, source, order_state, since)
    cdef object waiting_staging
    cdef object waiting_pool
    cdef int64_t live

    cdef int add_agent_slot(self, object agent_id) except -1
    cdef int rebuild(self) except -1
    cdef void free_pools(self) noexcept
    cdef void refresh(self, int32_t slot) noexcept
    cdef void prefetch(self) noexcept
    cdef int32_t day_of(self, int64_t now) except -1
    cdef int32_t today_of(self, int32_t slot, int64_t now) except -1
    cdef int bump_today(self, int32_t slot, int64_t now) except -1
    cdef int32_t rand_below(self, int32_t n) noexcept
    cdef bint available(self, int32_t slot) noexcept
    cdef int32_t pick(self, int32_t pool, int32_t strategy, int32_t exclude, int64_t now) except -2
    cdef int32_t pick_saturation(self, Pool* p) noexcept
    cdef int32_t pick_today(self, Pool* p, int32_t exclude, int64_t now) except -2
    cdef int32_t pick_weighted(self, Pool* p, int32_t exclude) noexcept
    cdef int32_t pick_round_robin(self, Pool* p, int32_t exclude) except -2
    cdef int rr_build(self, Pool* p) except -1


@cython.final
cdef class CompiledEngine:
    cdef uint64_t _seed
    cdef ByteMap shop_map           # ns 0: shop id -> a = handle
    cdef ByteMap source_map         # ns 0: source -> a = source handle
    cdef ByteMap conversations      # ns shop: conversation id [+ buyer id] -> a = agent slot, b = flags
    cdef ByteMap affinity           # ns shop: buyer id -> a = agent slot, t = expires at
    cdef ByteMap exclusive          # ns shop: buyer id -> a = agent slot
    cdef list shop_list             # owns the Shop objects, index = handle (None once deleted)
    cdef PyObject** shop_ptrs       # borrowed from shop_list, for the hot path
    cdef int32_t n_handles
    cdef int32_t cap_handles
    cdef int32_t n_sources
    cdef list outbox
    cdef int32_t picked_strategy    # the strategy that chose the agent of the current decision (0: none)
    cdef int64_t decisions[N_REASONS][N_STRATEGIES]  # counters, not state: decisions made by this object
    cdef WireBuffer out             # dispatch_batch_wire's output, reused between calls
    cdef WireItem* wire_items       # dispatch_batch_wire's parsed items, reused between calls
    cdef Py_ssize_t cap_wire_items

    cdef Shop shop_for(self, object shop_id)
    cdef Shop shop_at(self, int32_t handle)
    cdef Py_ssize_t conversation_index(self, Shop shop, object conversation_id) except? -2
    cdef object conversation_buyer(self, Py_ssize_t idx)
    cdef int32_t source_handle(self, object source) except? -2
    cdef int64_t advance(self, Shop shop, int64_t at_ms) noexcept
    cdef int add_handle(self, Shop shop) except -1
    cdef int apply_shop_config(self, Shop shop, object config) except -1
    cdef int32_t holder(self, Shop shop, Py_ssize_t idx, object conversation_id, str verb) except -1
    cdef object waiting_of(self, Shop shop, int32_t kind)
    cdef int32_t decide(self, Shop shop, const char* bp, Py_ssize_t bn, const char* cp, Py_ssize_t cn,
                        uint64_t hc, const char* srcp, Py_ssize_t srcn, int32_t ostate, int64_t t,
                        object conversation_id, object buyer_id, object source, list tr,
                        int32_t* out_slot, int32_t* out_group) except -1
    cdef tuple waiting_item(self, const char* cp, Py_ssize_t cn, const char* bp, Py_ssize_t bn,
                            const char* srcp, Py_ssize_t srcn, int32_t ostate, int64_t now,
                            object conversation_id, object buyer_id, object source)
    cdef int32_t source_handle_bytes(self, const char* p, Py_ssize_t n) noexcept
    cdef void prefetch_decision(self, Shop shop, const char* bp, Py_ssize_t bn, uint64_t hc) noexcept
    cdef int wire_item(self, const char* data, WireItem* it, int64_t now_ms) except -1
    cdef bint wire_decide(self, const char* data, WireItem* it, int64_t now_ms, bint element) except -1
    cdef int wire_response(self, const char* ap, Py_ssize_t an, int32_t reason, const char* gp, Py_ssize_t gn,
                           const char* cp, Py_ssize_t cn, bint element) except -1
    cdef int wire_item_slow(self, const char* data, WireItem* it, int64_t now_ms) except -1
    cdef void sweep_affinity(self, int32_t budget) noexcept
    cdef void forget_expired(self, Shop shop) noexcept
    cdef int32_t intern_source(self, object source) except -1
    cdef int32_t agent_slot_of(self, Shop shop, object agent_id) except -1
    cdef int assign(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now) except -1
    cdef int32_t route(self, Shop shop, const char* bp, Py_ssize_t bn, int32_t source, int32_t order_state,
                       int64_t now, list tr, int32_t* out_slot, int32_t* out_group) except -1
    cdef int settle(self, Shop shop, int32_t focus) except -1
    cdef int remember(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now) except -1
