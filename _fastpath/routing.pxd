# routing: spec §4 (the decision, steps 1-7), §6 (the offline rule) and §7
# (main account participation), with the state changes of §8 that the rules
# make (assign, wait_in, remember, forward, close, forget_expired) and the
# hand-out of waiting conversations (settle: §6 staging, step 7 queue).

# Conversation flags (Entry.flags in Router.conversations).
cdef enum:
    CONV_WAIT_MASK = 3        # flags & 3: the WAIT_* kind of a waiting conversation, 0 if served
    CONV_UNREAD = 4           # the buyer's last message is not answered yet
    CONV_FORWARDED = 8        # it was transferred at least once
    # Bits 11-15: the REASON_* a held conversation went to its agent with (the
    # answer to a retried Dispatch, spec §12; set_reason), 0 while it waits.
    CONV_REASON_SHIFT = 11
    CONV_REASON_MASK = 0xF800


# One buyer-to-shop decision to make, already validated (ids 1..MAX_ID bytes,
# no control bytes, order_state in range, at_ms in 0..MAX_TIME) and for a
# conversation that does not exist yet. The byte strings are borrowed (from
# the caller's str objects or the request bytes) for the decision's duration.
ctypedef struct Request:
    const char* buyer              # buyer id, UTF-8
    Py_ssize_t buyer_len           # its length in bytes (1..MAX_ID)
    const char* conversation       # conversation id, UTF-8
    Py_ssize_t conversation_len    # its length in bytes (1..MAX_ID)
    uint64_t conversation_hash     # hash_key(shop handle, conversation)
    const char* source             # entry source, UTF-8
    Py_ssize_t source_len          # its length in bytes (0..MAX_ID; 0 = no source)
    int32_t order_state            # 0..ORDER_STATE_MAX
    int64_t at_ms                  # the event time (the shop clock takes the later of it and its own)
    int32_t priority               # 0..MAX_PRIORITY (spec §11): its FIFO if it has to wait
    PyObject* py_conversation      # the same ids as str (borrowed), or NULL: made from the
    PyObject* py_buyer             # bytes only if the conversation has to wait (waiting lists
    PyObject* py_source            # hold Python tuples)


# What a decision (or a hand-out) chose. Invariant: slot >= 0 unless the
# conversation waits (OFFLINE_MESSAGE_POOL, OFFLINE_STAGING, QUEUED).
ctypedef struct Decision:
    int32_t slot                   # the agent, or -1
    int32_t group                  # the group named in the answer (index), or -1
    int32_t strategy               # the strategy that chose the agent, 0 when none did


# The routing core: the engine-wide tables and the decision. CompiledEngine
# (engine.pxd) is its public subclass.
# Invariants: shop_ptrs[0:n_handles] borrows shop_list's Shops (NULL and None
# once deleted; a handle is never reused); the maps below hold, per namespace
# (shop handle) or engine-wide (ns 0):
#   shop_map       ns 0: shop id -> handle = shop handle
#   source_map     ns 0: entry source -> handle = source handle (0..n_sources-1, never reused)
#   conversations  ns shop: conversation id -> handle = agent slot (-1 while waiting),
#                  flags = CONV_*, at_ms = created; value bytes = buyer id
#   affinity       ns shop: buyer id -> handle = agent slot, at_ms = contact time (the
#                  recent contact; dead once the shop clock is window_ms past it)
#   exclusive      ns shop: buyer id -> handle = agent slot (the exclusive agent)
# decisions[reason][strategy] counts the decisions made by this object (not state).
cdef class Router:
    cdef uint64_t _seed             # seed of shops created from now on whose tie_seed is 0
    cdef ByteMap shop_map           # shop id -> shop handle
    cdef ByteMap source_map         # entry source -> source handle
    cdef ByteMap conversations      # per shop: live conversations (served or waiting)
    cdef ByteMap affinity           # per shop: recent contacts
    cdef ByteMap exclusive          # per shop: exclusive agents
    cdef list shop_list             # owns the Shop objects, index = handle (None once deleted)
    cdef PyObject** shop_ptrs       # borrowed from shop_list, for the hot path
    cdef int32_t n_handles          # handles handed out (shop_list length)
    cdef int32_t cap_handles        # shop_ptrs allocated
    cdef int32_t n_sources          # source handles handed out
    cdef Timers timers              # §10-§11 deadlines and the tracks of shops that use them (timers.pxd)
    cdef list outbox                # hand-outs after their Dispatch: (shop, conversation, buyer, agent, reason, at)
    cdef int64_t decisions[N_REASONS][N_STRATEGIES]  # counters: decisions made by this object
    cdef int64_t retries            # counter: dispatches answered as retries (§12), not decisions
    # Counters, not state: estimated waits (§11) written into answers, by bucket
    # (model.ESTIMATE_BUCKETS_MS, the last one +Inf), and their sum in ms.
    cdef int64_t estimates[N_ESTIMATE_BUCKETS + 1]
    cdef int64_t estimates_ms
    # None, or shop_id -> DispatchError | None: the error for an unknown shop
    # that another cluster node owns (dispatcher/cluster.py); not state.
    cdef public object foreign_shop

    @cython.final
    cdef Shop shop_at(self, int32_t handle)
    @cython.final
    cdef Shop shop_for(self, object shop_id)
    @cython.final
    cdef object missing_shop(self, object shop_id)
    @cython.final
    cdef void count_estimate(self, int64_t eta) noexcept
    @cython.final
    cdef int32_t agent_for(self, Shop shop, object agent_id) except -1
    @cython.final
    cdef int32_t holder_of(self, Shop shop, Py_ssize_t conv, object conversation_id, str verb) except -1
    @cython.final
    cdef int add_handle(self, Shop shop) except -1
    @cython.final
    cdef int32_t intern_source(self, object source) except -1
    @cython.final
    cdef int32_t source_handle(self, object source) except? -2
    @cython.final
    cdef int32_t source_handle_bytes(self, const char* p, Py_ssize_t n) noexcept
    @cython.final
    cdef Py_ssize_t conversation_index(self, Shop shop, object conversation_id) except? -2
    @cython.final
    cdef void prefetch_decision(self, Shop shop, const Request* rq) noexcept
    @cython.final
    cdef int32_t decide(self, Shop shop, const Request* rq, list trace, Decision* out) except -1
    @cython.final
    cdef int32_t offline(self, Shop shop, const Request* rq, Py_ssize_t conv, int64_t now,
                         list trace, Decision* out) except -1
    @cython.final
    cdef int32_t route(self, Shop shop, const char* bp, Py_ssize_t bn, int32_t source, int32_t order_state,
                       int64_t now, list trace, Decision* out) except -1
    @cython.final
    cdef inline int32_t recent_contact(self, Shop shop, const char* bp, Py_ssize_t bn, uint64_t buyer_hash,
                                       int64_t now) noexcept
    @cython.final
    cdef int32_t affinity_step(self, Shop shop, const char* bp, Py_ssize_t bn, uint64_t buyer_hash, int64_t now,
                               list trace, Decision* out) except -1
    @cython.final
    cdef int assign(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now, int32_t reason) except -1
    @cython.final
    cdef int forward(self, Shop shop, Py_ssize_t conv, int32_t holder, int32_t target, int64_t now) except -1
    @cython.final
    cdef int close(self, Shop shop, Py_ssize_t conv, object conversation_id) except -1
    @cython.final
    cdef int wait_in(self, Shop shop, Py_ssize_t conv, int32_t kind, const Request* rq, int64_t now) except -1
    @cython.final
    cdef int remember(self, Shop shop, Py_ssize_t conv, int32_t slot, int64_t now) except -1
    @cython.final
    cdef int settle(self, Shop shop, int32_t focus) except -1
    @cython.final
    cdef int handed_out(self, Shop shop, WaitList waiting, object conversation_id, int32_t slot, int32_t reason,
                        int64_t now) except -1
    @cython.final
    cdef int32_t retry_reason(self, Shop shop, Py_ssize_t conv) noexcept
    @cython.final
    cdef object waiting_place(self, Shop shop, Py_ssize_t conv, object conversation_id)
    @cython.final
    cdef tuple waiting_item(self, const Request* rq, int64_t now)
    @cython.final
    cdef object waiting_of(self, Shop shop, int32_t kind)
    @cython.final
    cdef void sweep_affinity(self, int32_t budget) noexcept
    @cython.final
    cdef void forget_expired(self, Shop shop) noexcept
