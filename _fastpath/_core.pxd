# Declarations of the compiled engine (_core.pyx and the parts it includes).
#
# One .pxd per part, included below in the order of the parts (the order of
# _core.pyx's includes and of the reference engine's modules), except that a
# part's types come before the first part that uses them: the C tables
# (hashtable, heap) first, and wire's and operations' structs before engine's
# CompiledEngine, which owns WireBuffers and arrays of WireItems and
# WireOperations.
#
# Everything a decision touches lives in C structs and C arrays, keyed by
# integer handles: shop handles (engine-wide, never reused), agent slots (per
# shop, == registration ordinal, never reused), roster and group indices (per
# shop, rebuilt on configuration changes). Strings cross the boundary only as
# UTF-8 pointers borrowed from the caller's str objects (or request bytes).

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from libc.string cimport memcpy, memcmp, memset
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

cdef extern from *:
    # A hint to start loading a cache line (read, keep in all levels); no effect on results.
    void __builtin_prefetch(const void* p) noexcept nogil
    # A branch hint: the macro every Cython module defines (GCC's __builtin_expect(x, 0)).
    # `if unlikely(x):` says the block is rarely taken (a trace, a §10-§12 rule, a retry):
    # GCC lays it out away from the hot path, so the decision's code stays compact in the
    # instruction cache. No effect on results.
    bint unlikely(bint x) noexcept nogil

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    long long PyLong_AsLongLongAndOverflow(object value, int* overflow) except? -1
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t len)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)

include "constants.pxd"
include "hashtable.pxd"
include "heap.pxd"
include "validation.pxd"
include "eligibility.pxd"
include "strategies.pxd"
include "shop.pxd"
include "hours.pxd"
include "timers.pxd"
include "timerheap.pxd"
include "routing.pxd"
include "wire.pxd"
include "operations.pxd"
include "engine.pxd"
include "reads.pxd"
include "snapshot.pxd"
