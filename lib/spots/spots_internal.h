/* Private helpers of lib/spots. */
#ifndef CP_SPOTS_INTERNAL_H
#define CP_SPOTS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/spots.h"
#include "table/table_internal.h"

/* splitmix64: small, seedable, the same on every platform. */
static inline uint64_t cp_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* Uniform in [0, n) without modulo bias. */
static inline uint64_t cp_rng_below(uint64_t *s, uint64_t n)
{
    uint64_t lim = -n % n, r;
    do
        r = cp_rng_next(s);
    while (r < lim);
    return r % n;
}

/* qsort order of int64_t. */
static inline int cp_i64_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* 1 when a STR value means "removed" (null, "none", ""). */
int cp_spot_removed_str(const char *s);

#endif
