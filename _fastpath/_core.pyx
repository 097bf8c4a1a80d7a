# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: embedsignature=True
"""The compiled dispatch engine.

One extension module, built from the .pyx files included below:

- hashtable.pyx: ByteMap, the C hash tables (shops, conversations, recent
  contacts, exclusive agents, entry sources), keyed by (namespace, bytes);
- heap.pyx: indexed min-heaps of agent slots (saturation, unread);
- shop.pyx: Shop, one tenant's agents, groups and pools, and the strategies;
- wire.pyx: the protobuf wire reader/writer of DispatchBatch (C functions;
  CompiledEngine.dispatch_batch_wire is in engine.pyx);
- engine.pyx: CompiledEngine, the public API.

Its behaviour is defined by ``_fastpath.reference.ReferenceEngine``; the
differential test holds the two to identical answers and state.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from libc.string cimport memcpy, memcmp, memset
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

cdef extern from *:
    # A hint to start loading a cache line (read, keep in all levels); no effect on results.
    void __builtin_prefetch(const void* p) noexcept nogil


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    long long PyLong_AsLongLongAndOverflow(object value, int* overflow) except? -1
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t len)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)

import dataclasses
from collections import deque

from _fastpath.model import (
    AlreadyExistsError,
    Client,
    ConversationEvent,
    ConversationType,
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
    check_time,
    day_bounds,
    shop_seed,
)
from _fastpath.model import GroupConfig, ShopConfig
from _fastpath.model import DEFAULT_MAIN_CAPACITY, SNAPSHOT_FORMAT, group_dict as _group_dict
from _fastpath.wire import WireItem as PyWireItem, check_batch_size, dispatch_item

__all__ = ["CompiledEngine"]

# Enum numbers, as in _fastpath.model (and the dispatch.v1 protos).
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

cdef enum:
    STRATEGY_LEAST_SATURATION = 1
    STRATEGY_FEWEST_TODAY = 2
    STRATEGY_CAPACITY_ROUND_ROBIN = 3
    STRATEGY_FEWEST_UNREAD = 4
    STRATEGY_WEIGHTED_BUSYNESS = 5

cdef enum:
    OFFLINE_MAIN_ACCOUNT = 1
    OFFLINE_PROXY_ACCOUNT = 2
    OFFLINE_MESSAGE_POOL = 3
    OFFLINE_STAGING = 4

cdef enum:
    MODE_ONLY_MAIN = 1
    MODE_EXCLUDED = 2
    MODE_FALLBACK = 3
    MODE_MEMBER = 4

cdef enum:
    PRESENCE_ONLINE = 1
    PRESENCE_SUSPENDED = 2
    PRESENCE_OFFLINE = 3

cdef enum:
    CLIENT_DESKTOP = 1
    CLIENT_MOBILE = 2

cdef enum:
    ROLE_MAIN = 1
    ROLE_SUB = 2
    ROLE_PROXY = 3
    ROLE_ROBOT = 4

cdef enum:
    TYPE_BUYER_TO_SHOP = 1
    TYPE_MAX = 4  # the largest ConversationType; the others are point-to-point

cdef enum:
    EVENT_BUYER_MESSAGE = 1
    EVENT_AGENT_REPLY = 2
    EVENT_CLOSED = 3
    EVENT_TRANSFERRED = 4
    EVENT_ASSIGNED = 5

cdef enum:
    WAIT_QUEUE = 1
    WAIT_STAGING = 2
    WAIT_POOL = 3

cdef enum:
    MAX_ID = 128

cdef enum:
    PREFETCH_BYTES = 2048  # per array: Shop.prefetch's hint stops there (big shops touch little of it)

cdef int64_t MAX_TIME = 253402300799999  # 9999-12-31T23:59:59.999Z

include "hashtable.pyx"
include "heap.pyx"
include "shop.pyx"
include "wire.pyx"
include "engine.pyx"
