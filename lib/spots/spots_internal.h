/* Private helpers of lib/spots. */
#ifndef CP_SPOTS_INTERNAL_H
#define CP_SPOTS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/spots.h"

size_t cp_scol_elem_size(cp_scol_type t);
int cp_scol_null_bitmap(cp_scol *c, size_t cap);

/* Field text to numbers. 0 = value, 1 = null token, -1 = not a number. */
int cp_parse_na(const char *s, size_t n);
int cp_parse_f32(const char *s, size_t n, float *out);
int cp_parse_f64(const char *s, size_t n, double *out);
int cp_parse_i64(const char *s, size_t n, int64_t *out);
int cp_parse_bool(const char *s, size_t n, int *out);

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

/* Bytes the CSV reader takes per block (default 32 MiB). */
extern size_t cp_csv_block;

/* 1 when a STR value means "removed" (null, "none", ""). */
int cp_spot_removed_str(const char *s);

#endif
