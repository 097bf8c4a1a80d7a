# operations: Operate (issue 13), a batch of any mix of operations read from the
# OperateRequest bytes and answered as OperateResponse bytes (operations.pyx;
# the reference is _fastpath/reference/operations.py with the codec of
# _fastpath/wire.py, section "Operate (issue 13)").

# The string fields of a SetPresenceRequest, ReportConversationRequest or
# ClaimFromPoolRequest, as indices of WireOperation.off/len.
cdef enum:
    OPS_SHOP = 0            # shop_id (field 1 of all three)
    OPS_AGENT = 1           # agent_id (presence 2, event 5, claim 2)
    OPS_CONVERSATION = 2    # conversation_id (event 2, claim 3)
    OPS_BUYER = 3           # buyer_id (event 3)
    OPS_TO_AGENT = 4        # to_agent_id (event 6)
    OPS_TO_GROUP = 5        # to_group_id (event 7)
    N_OPS_STRINGS = 6


# One Operation of a serialized OperateRequest, as read by read_operation.
# Invariants: kind is one of OP_* (constants.pxd: exactly one kind was set);
# for OP_DISPATCH `item` is the DispatchRequest (wire.pxd's WireItem
# invariants); for the other kinds only item.seconds / item.nanos / item.has_at
# are used (the request's `at`), each string is (off[k], len[k]) inside the
# request bytes and valid UTF-8, and absent fields are proto3 defaults (0, empty).
ctypedef struct WireOperation:
    int32_t kind                    # OP_*: the Operation field that was set
    int32_t presence                # set_presence: field 3
    int32_t client                  # set_presence: field 4
    int32_t event                   # report_conversation: field 4
    Py_ssize_t off[N_OPS_STRINGS]   # per OPS_*: offset of the string in the request bytes
    Py_ssize_t len[N_OPS_STRINGS]   # per OPS_*: its length in bytes
    WireItem item                   # dispatch: the request; else: its `at`
