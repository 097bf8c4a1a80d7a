# hashtable: ByteMap, the engine's C hash tables (included by _core.pyx; the
# Entry layout and the table's invariants are in hashtable.pxd).
#
# Keys are (namespace, bytes); lookups take a borrowed UTF-8 pointer, so a
# decision never builds a Python object to find a shop, a conversation, a
# recent contact or an exclusive agent. Every hit verifies the full key
# (namespace, length, bytes): a 64-bit hash collision can never route one
# buyer to another buyer's agent.


cdef inline uint64_t fmix64(uint64_t k) noexcept nogil:
    # MurmurHash3 finalizer: spreads FNV's weak low bits over the whole word.
    k ^= k >> 33
    k *= <uint64_t>0xff51afd7ed558ccd
    k ^= k >> 33
    k *= <uint64_t>0xc4ceb9fe1a85ec53
    k ^= k >> 33
    return k


cdef inline uint64_t hash_key(int32_t ns, const char* key, Py_ssize_t klen) noexcept nogil:
    # FNV-1a 64 over the key bytes, seeded with the namespace, then fmix64.
    cdef uint64_t acc = <uint64_t>0xcbf29ce484222325 ^ (<uint64_t><uint32_t>ns * <uint64_t>0x9E3779B97F4A7C15)
    cdef Py_ssize_t i
    for i in range(klen):
        acc ^= <uint8_t>key[i]
        acc *= <uint64_t>0x100000001b3
    return fmix64(acc)


cdef inline char* entry_bytes(Entry* e) noexcept nogil:
    """The entry's key bytes, followed by its value bytes."""
    if <Py_ssize_t>e.klen + e.vlen <= ENTRY_INLINE:
        return e.data.local
    return e.data.ptr


cdef inline void entry_free(Entry* e) noexcept nogil:
    if <Py_ssize_t>e.klen + e.vlen > ENTRY_INLINE:
        free(e.data.ptr)


cdef class ByteMap:

    def __cinit__(self):
        self.cap_entries = 16
        self.entries = <Entry*>calloc(self.cap_entries, sizeof(Entry))
        self.index = <uint32_t*>calloc(32, sizeof(uint32_t))
        self.mask = 31
        self.n = 0
        self.sweep_at = 0
        if self.entries == NULL or self.index == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.entries != NULL:
            for i in range(self.n):
                entry_free(&self.entries[i])
            free(self.entries)
        free(self.index)

    def __len__(self):
        return self.n

    cdef Py_ssize_t find(self, int32_t ns, const char* key, Py_ssize_t klen, uint64_t key_hash) noexcept:
        cdef Py_ssize_t i = <Py_ssize_t>(key_hash & <uint64_t>self.mask)
        cdef uint32_t s
        cdef Entry* e
        while True:
            s = self.index[i]
            if s == 0:
                return -1
            e = &self.entries[s - 1]
            if (e.hash == <uint32_t>key_hash and e.ns == ns and e.klen == klen
                    and memcmp(entry_bytes(e), key, klen) == 0):
                return s - 1
            i = (i + 1) & self.mask

    cdef void prefetch(self, uint64_t key_hash) noexcept:
        """Start loading the index slot a lookup of ``key_hash`` reads first."""
        __builtin_prefetch(&self.index[key_hash & <uint64_t>self.mask])

    cdef void prefetch_entry(self, uint64_t key_hash) noexcept:
        """Start loading the entry that index slot of ``key_hash`` points to (if any)."""
        cdef uint32_t s = self.index[key_hash & <uint64_t>self.mask]
        if s != 0:
            __builtin_prefetch(&self.entries[s - 1])

    cdef Py_ssize_t find_str(self, int32_t ns, object key) except -2:
        """The entry of (ns, key) or -1; ``key`` is a str id (its UTF-8 bytes are borrowed)."""
        cdef Py_ssize_t n
        cdef const char* p = PyUnicode_AsUTF8AndSize(key, &n)
        return self.find(ns, p, n, hash_key(ns, p, n))

    cdef int grow_index(self) except -1:
        cdef Py_ssize_t size = (self.mask + 1) * 2
        cdef uint32_t* index = <uint32_t*>calloc(size, sizeof(uint32_t))
        cdef Py_ssize_t k, i
        if index == NULL:
            raise MemoryError()
        for k in range(self.n):
            i = <Py_ssize_t>(self.entries[k].hash & <uint64_t>(size - 1))
            while index[i] != 0:
                i = (i + 1) & (size - 1)
            index[i] = <uint32_t>(k + 1)
        free(self.index)
        self.index = index
        self.mask = size - 1
        return 0

    cdef Py_ssize_t insert(self, int32_t ns, const char* key, Py_ssize_t klen,
                           const char* val, Py_ssize_t vlen, uint64_t key_hash) except -1:
        # The caller has checked that the key is absent; klen, vlen <= 255.
        cdef Entry* grown
        cdef Entry* e
        cdef Py_ssize_t idx, i, cap
        cdef char* data
        if (self.n + 1) * 2 > self.mask + 1:
            self.grow_index()
        if self.n == self.cap_entries:
            cap = self.cap_entries + self.cap_entries // 4 + 4
            grown = <Entry*>realloc(self.entries, cap * sizeof(Entry))
            if grown == NULL:
                raise MemoryError()
            self.entries = grown
            self.cap_entries = cap
        idx = self.n
        e = &self.entries[idx]
        e.klen = <uint8_t>klen
        e.vlen = <uint8_t>vlen
        if klen + vlen > ENTRY_INLINE:
            e.data.ptr = <char*>malloc(klen + vlen)
            if e.data.ptr == NULL:
                raise MemoryError()
        data = entry_bytes(e)
        memcpy(data, key, klen)
        if vlen:
            memcpy(data + klen, val, vlen)
        e.hash = <uint32_t>key_hash
        e.ns = ns
        e.at_ms = 0
        e.handle = -1
        e.flags = 0
        i = <Py_ssize_t>(key_hash & <uint64_t>self.mask)
        while self.index[i] != 0:
            i = (i + 1) & self.mask
        self.index[i] = <uint32_t>(idx + 1)
        self.n += 1
        return idx

    cdef void remove_at(self, Py_ssize_t idx) noexcept:
        cdef Py_ssize_t mask = self.mask
        cdef Py_ssize_t i = <Py_ssize_t>(self.entries[idx].hash & <uint64_t>mask)
        cdef Py_ssize_t j, home, last
        while self.index[i] != <uint32_t>(idx + 1):
            i = (i + 1) & mask
        # Backward-shift deletion: pull later members of the probe run into
        # the hole unless they sit at or after their home position.
        j = i
        while True:
            j = (j + 1) & mask
            if self.index[j] == 0:
                break
            home = <Py_ssize_t>(self.entries[self.index[j] - 1].hash & <uint64_t>mask)
            if i <= j:
                if i < home <= j:
                    continue
            elif i < home or home <= j:
                continue
            self.index[i] = self.index[j]
            i = j
        self.index[i] = 0
        entry_free(&self.entries[idx])
        # Keep entries dense: move the last entry into the hole.
        last = self.n - 1
        if idx != last:
            self.entries[idx] = self.entries[last]
            i = <Py_ssize_t>(self.entries[idx].hash & <uint64_t>mask)
            while self.index[i] != <uint32_t>(last + 1):
                i = (i + 1) & mask
            self.index[i] = <uint32_t>(idx + 1)
        self.n = last

    cdef void clear_namespace(self, int32_t ns) noexcept:
        cdef Py_ssize_t k = 0
        while k < self.n:
            if self.entries[k].ns == ns:
                self.remove_at(k)  # moves another entry into k: look at k again
            else:
                k += 1


def _colliding_keys_roundtrip(list keys, uint64_t forced_hash):
    """Test hook: store every key under the same hash, then look each one up.

    Returns [(key, payload found)] after inserting all keys with handle = index
    and removing every third one: proves lookups verify the full key, so a
    64-bit hash collision can never return another key's entry.
    """
    cdef ByteMap m = ByteMap()
    cdef Py_ssize_t i, n, idx
    cdef const char* p
    encoded = [k.encode("utf-8") for k in keys]
    for i in range(len(encoded)):
        p = encoded[i]
        n = len(encoded[i])
        m.entries[m.insert(7, p, n, NULL, 0, forced_hash)].handle = <int32_t>i
    for i in range(0, len(encoded), 3):
        p = encoded[i]
        n = len(encoded[i])
        m.remove_at(m.find(7, p, n, forced_hash))
    out = []
    for i in range(len(encoded)):
        p = encoded[i]
        n = len(encoded[i])
        idx = m.find(7, p, n, forced_hash)
        out.append((keys[i], m.entries[idx].handle if idx >= 0 else None))
    return out
