# hashtable: ByteMap, the engine's C hash tables (shops, entry sources,
# conversations, recent contacts, exclusive agents), keyed by (namespace, bytes).
# Serves spec §4 steps 2-3 (recent contact, exclusive agent lookups) and §9
# (a lookup verifies the full key: a hash collision never mixes two buyers).

# Key and value bytes of an entry up to this many live inline in the entry.
cdef enum:
    ENTRY_INLINE = 16

# Where an entry's key bytes (then its value bytes) live.
ctypedef union EntryData:
    char local[16]   # inline, when klen + vlen <= ENTRY_INLINE
    char* ptr        # else a malloc'd block of klen + vlen bytes, owned by the entry

# One entry of a ByteMap: (namespace, key bytes) -> a small payload record. 40 bytes.
# Invariants: the key (ns, key bytes) is unique in its map; `hash` is the low
# 32 bits of hash_key(ns, key) (its home slot, and a filter before the full
# key comparison); the payload fields are the owner's (see the maps in
# routing.pxd), set to handle -1, flags 0, at_ms 0 by insert().
ctypedef struct Entry:
    uint32_t hash      # low 32 bits of hash_key(ns, key)
    int32_t ns         # namespace: the shop handle (0 in engine-wide maps)
    # at_ms: recent contact: time of the contact (it expires at at_ms + window);
    # conversation: time it was created (dispatched or assigned); else 0
    int64_t at_ms
    int32_t handle     # an agent slot, shop handle or source handle (per map); -1: none
    uint16_t flags     # conversation: CONV_* flags (routing.pxd); else 0
    uint8_t klen       # key length in bytes (<= 255)
    uint8_t vlen       # value length in bytes (<= 255): a conversation's buyer id, else 0
    EntryData data     # the key bytes followed by the value bytes


# Open addressing (linear probing) over a dense entry array.
# Invariants: index[i] == 0 is an empty slot, else index[i] - 1 is the entry in
# it; every entry is reachable from its home slot (hash & mask) without an
# empty slot in between; load n / (mask + 1) <= 1/2; entries[0:n] is dense
# (deletion shifts back the probe run, no tombstones, and moves the last entry
# into the hole); n <= cap_entries. The entry array grows by 1/4 at a time
# (memory per entry is the point), the index doubles.
@cython.final
cdef class ByteMap:
    cdef Entry* entries           # entries[0:n] in use, cap_entries allocated
    cdef uint32_t* index          # mask + 1 slots: 0 = empty, else entry index + 1
    cdef Py_ssize_t n             # entries in use
    cdef Py_ssize_t cap_entries   # entries allocated
    cdef Py_ssize_t mask          # index size - 1 (a power of two minus one)
    cdef Py_ssize_t sweep_at      # next entry the recent-contact sweep looks at (routing.pyx)

    cdef Py_ssize_t find(self, int32_t ns, const char* key, Py_ssize_t klen, uint64_t key_hash) noexcept
    cdef Py_ssize_t find_str(self, int32_t ns, object key) except -2
    cdef Py_ssize_t insert(self, int32_t ns, const char* key, Py_ssize_t klen,
                           const char* val, Py_ssize_t vlen, uint64_t key_hash) except -1
    cdef void remove_at(self, Py_ssize_t idx) noexcept
    cdef int grow_index(self) except -1
    cdef void clear_namespace(self, int32_t ns) noexcept
    cdef void prefetch(self, uint64_t key_hash) noexcept
    cdef void prefetch_entry(self, uint64_t key_hash) noexcept
