# constants: the C enums and limits of the compiled engine (spec §2-§7 numbers).
#
# Every value here has a Python twin in _fastpath/model.py (the IntEnums and
# the Final limits), which the reference engine uses; _core.c_constants()
# returns these C values by name and tests/test_constants.py holds each one
# equal to its twin. Enum numbers equal the dispatch.v1 protobuf numbers.
# Invariant: a *_MAX is the largest member of its enum (its range check).

# Reason (model.Reason): why a conversation went where it went.
cdef enum:
    REASON_DIRECT = 1
    REASON_OFFLINE_MAIN_ACCOUNT = 2
    REASON_OFFLINE_PROXY_ACCOUNT = 3
    REASON_OFFLINE_MESSAGE_POOL = 4
    REASON_OFFLINE_STAGING = 5
    REASON_AFFINITY = 6
    REASON_AFFINITY_HELD = 7
    REASON_EXCLUSIVE = 8
    REASON_ROBOT = 9
    REASON_GROUP = 10
    REASON_FALLBACK = 11
    REASON_QUEUED = 12
    REASON_REROUTED = 13        # §10: its agent did not reply in time
    REASON_RECLAIMED = 14       # §10: its agent stayed offline too long
    REASON_QUEUE_TIMEOUT = 15   # §11: max_queue_wait passed; moved to the message pool

# Strategy (model.Strategy, spec §5); 0 on a group: the shop's.
cdef enum:
    STRATEGY_LEAST_SATURATION = 1
    STRATEGY_FEWEST_TODAY = 2
    STRATEGY_CAPACITY_ROUND_ROBIN = 3
    STRATEGY_FEWEST_UNREAD = 4
    STRATEGY_WEIGHTED_BUSYNESS = 5

# OfflineRule (model.OfflineRule, spec §6).
cdef enum:
    OFFLINE_MAIN_ACCOUNT = 1
    OFFLINE_PROXY_ACCOUNT = 2
    OFFLINE_MESSAGE_POOL = 3
    OFFLINE_STAGING = 4

# MainAccountMode (model.MainAccountMode, spec §7 cases A-D).
cdef enum:
    MODE_ONLY_MAIN = 1
    MODE_EXCLUDED = 2
    MODE_FALLBACK = 3
    MODE_MEMBER = 4

# Presence and Client (model.Presence, model.Client, spec §2).
cdef enum:
    PRESENCE_ONLINE = 1
    PRESENCE_SUSPENDED = 2
    PRESENCE_OFFLINE = 3
    PRESENCE_MAX = 3

cdef enum:
    CLIENT_DESKTOP = 1
    CLIENT_MOBILE = 2
    CLIENT_MAX = 2

# Role (model.Role, spec §2).
cdef enum:
    ROLE_MAIN = 1
    ROLE_SUB = 2
    ROLE_PROXY = 3
    ROLE_ROBOT = 4

# ConversationType (model.ConversationType, spec §3): only BUYER_TO_SHOP is dispatched.
cdef enum:
    TYPE_BUYER_TO_SHOP = 1
    TYPE_MAX = 4  # the largest ConversationType; the others are point-to-point

# OrderState (model.OrderState): 0..ORDER_STATE_MAX, 0 = unknown (binds no group).
cdef enum:
    ORDER_STATE_MAX = 5

# ConversationEvent (model.ConversationEvent, spec §8).
cdef enum:
    EVENT_BUYER_MESSAGE = 1
    EVENT_AGENT_REPLY = 2
    EVENT_CLOSED = 3
    EVENT_TRANSFERRED = 4
    EVENT_ASSIGNED = 5
    EVENT_MAX = 5

# WaitKind (model.WaitKind): where a conversation nobody could take waits.
cdef enum:
    WAIT_QUEUE = 1
    WAIT_STAGING = 2
    WAIT_POOL = 3      # the leave-a-message pool (OfflineRule.MESSAGE_POOL)

# Limits.
cdef enum:
    MAX_ID = 128                  # model.MAX_ID_BYTES: an id is 1..MAX_ID UTF-8 bytes
    DEFAULT_MAIN_CAPACITY = 100   # model.DEFAULT_MAIN_CAPACITY: a main account never put_agent'ed
    MAX_PRIORITY = 9              # model.MAX_PRIORITY: a dispatch's priority is 0..MAX_PRIORITY (spec §11)
    N_PRIORITIES = 10             # model.N_PRIORITIES: one FIFO per level in every waiting list

# Operation.kind (wire.OP_*, the field numbers of the dispatch.v1 Operation
# oneof; issue 13) and the length of the operation counters (index 0 unused:
# wire.OPERATION_KINDS).
cdef enum:
    OP_DISPATCH = 1
    OP_SET_PRESENCE = 2
    OP_REPORT_CONVERSATION = 3
    OP_CLAIM_FROM_POOL = 4
    N_OPERATION_KINDS = 5

# Shape of the decision counters, [reason][strategy] (model.N_REASONS,
# model.N_STRATEGIES; strategy 0 = no strategy chose the agent).
cdef enum:
    N_REASONS = 16
    N_STRATEGIES = 6

# Buckets of the estimated-wait counts (model.ESTIMATE_BUCKETS_MS; one more for +Inf).
cdef enum:
    N_ESTIMATE_BUCKETS = 12

# 64-bit limits: C macros (an enum is an int), compile-time constants.
cdef extern from *:
    """
    #define DISPATCH_MAX_TIME 253402300799999LL  /* 9999-12-31T23:59:59.999Z in ms */
    #define DISPATCH_LATEST_SECONDS 253402300799LL  /* 9999-12-31T23:59:59Z in s */
    """
    const int64_t MAX_TIME "DISPATCH_MAX_TIME"              # model.MAX_TIME_MS
    const int64_t LATEST_SECONDS "DISPATCH_LATEST_SECONDS"  # model.LATEST_SECONDS
