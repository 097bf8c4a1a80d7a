# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: embedsignature=True
"""The compiled dispatch engine.

One extension module, built from the parts included below, in this order (the
reference engine, ``_fastpath.reference``, has modules of the same names in
the same order, so a rule is found at the same place in both). Each part has
a ``.pxd`` with its C types and their invariants, included by ``_core.pxd``.

- constants: the C enums and limits (their Python twins are in
  ``_fastpath.model``; ``c_constants()`` lists them for the test that holds
  the two equal);
- hashtable, heap: the C tables (ByteMap keyed by (namespace, bytes); indexed
  min-heaps of agent slots);
- validation: ids, times and enum numbers at the boundary (§9);
- eligibility: who may receive (§2, §4 steps 1-5, §5, §7);
- strategies: the five strategies over a roster (§5);
- shop: one tenant's agents, groups, rosters, local day and PRNG (§2);
- hours: §10 business hours: the cached open state of a shop and its groups,
  the decision while closed, the opening deadline;
- routing: Router, the tables and the decision: decide / offline / route /
  assign / remember / settle (§4, §6, §7, §8);
- timers: the rules that fire on time (§10 re-route, reclaim; §11
  max_queue_wait): per-shop deadline heaps, a heap of shops by their next
  deadline (tick), and the hooks the routing state changes call;
- engine: CompiledEngine(Router), the public API: configuration and
  conversation events (§8), dispatch (§3, §4); its reads call reads.pyx;
- wire: the protobuf wire reader/writer and the glue of dispatch_wire /
  dispatch_batch_wire;
- operations: operate_wire (issue 13), a batch of any mix of operations
  read from the bytes: dispatches through wire's glue, the ordinary events
  in C, the rest through the engine's own methods;
- reads: shop state, totals, a conversation, a buyer's contacts (§9);
- snapshot: export_state / import_state.

Its behaviour is defined by ``_fastpath.reference.ReferenceEngine``; the
differential test holds the two to identical answers and state.
"""

cimport cython

import dataclasses
from collections import deque

from _fastpath.model import (
    AlreadyExistsError,
    Client,
    ConversationEvent,
    ConversationType,
    ESTIMATE_BUCKETS_MS,
    DispatchError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OfflineRule,
    OrderState,
    Presence,
    Strategy,
    WaitKind,
    check_enum,
    check_id,
    check_priority,
    check_time,
    day_bounds,
    hours_next_opening,
    hours_state,
    shop_seed,
)
from _fastpath.model import GroupConfig, ShopConfig
from _fastpath.model import SNAPSHOT_FORMAT, group_dict, shop_dict
from _fastpath.wire import WireItem as PyWireItem, check_batch_size, dispatch_item
from _fastpath.wire import (
    check_operations_size,
    encode_claim_response,
    encode_decision,
    encode_event_response,
    encode_presence_response,
    encode_result,
    encode_result_error,
    error_code,
)
from _fastpath.model import timestamp_to_ms

__all__ = ["CompiledEngine", "c_constants"]

include "constants.pyx"
include "hashtable.pyx"
include "heap.pyx"
include "validation.pyx"
include "eligibility.pyx"
include "strategies.pyx"
include "shop.pyx"
include "hours.pyx"
include "routing.pyx"
include "timerheap.pyx"
include "timers.pyx"
include "engine.pyx"
include "wire.pyx"
include "operations.pyx"
include "reads.pyx"
include "snapshot.pyx"
