/* Memory latency of this machine: nanoseconds per dependent random load.
 *
 * One pointer chase through a random cyclic permutation of the cache lines of
 * a buffer: every load depends on the previous one, so the time per load is
 * the latency of the level of the memory hierarchy that holds the buffer.
 * bench/memlat.py builds it with gcc and runs it at a few sizes; the engine's
 * numbers at 100,000 shops are read against it (bench/ANALYSIS.md).
 *
 *     memlat <MiB> <huge: 0|1>    prints "<ns per load> <AnonHugePages kB>"
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: memlat <MiB> <huge: 0|1>\n");
        return 2;
    }
    size_t bytes = (size_t)atol(argv[1]) << 20, lines = bytes / 64;
    uint64_t *a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *order = malloc(lines * sizeof(uint32_t));
    if (a == MAP_FAILED || order == NULL || lines < 2) return 1;
    if (atoi(argv[2])) madvise(a, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < lines; i++) order[i] = (uint32_t)i;
    uint64_t s = 88172645463325252ULL; /* xorshift64; Sattolo's shuffle makes one cycle */
    for (size_t i = lines - 1; i > 0; i--) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        size_t j = s % i;
        uint32_t t = order[i]; order[i] = order[j]; order[j] = t;
    }
    for (size_t i = 0; i < lines; i++) a[(size_t)order[i] * 8] = (uint64_t)order[(i + 1) % lines] * 8;
    size_t x = (size_t)order[0] * 8, loads = 2000000;
    for (size_t i = 0; i < lines && i < loads; i++) x = a[x]; /* warm the TLB and caches as far as they go */
    double t0 = now_ns();
    for (size_t i = 0; i < loads; i++) x = a[x];
    double t1 = now_ns();
    long huge_kb = 0;
    char line[256];
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "AnonHugePages:", 14) == 0) huge_kb = atol(line + 14);
    if (f) fclose(f);
    printf("%.1f %ld %zu\n", (t1 - t0) / loads, huge_kb, x & 1);
    return 0;
}
