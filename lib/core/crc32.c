/* CRC-32 (the ZIP/PNG/gzip polynomial, reflected 0xEDB88320).
 *
 * Weight files are checked entry by entry on every load: zlib's crc32 does
 * about 1 GB/s here, a third of a ViT-L load. Where the CPU has carry-less
 * multiplication the bulk is folded 64 bytes at a time (Gopal et al., "Fast
 * CRC Computation for Generic Polynomials Using PCLMULQDQ", Intel 2009:
 * four 128-bit lanes, folded by x^(512±32) mod P, then to one lane, then a
 * Barrett reduction); zlib does the rest. A CRC is exact arithmetic, so both
 * give the same value (test_core checks this against zlib). */
#include <limits.h>
#include <stdint.h>
#include <zlib.h>

#include "cellpose/zip.h"

static uint32_t crc_zlib(uint32_t crc, const unsigned char *p, size_t size)
{
    uLong c = crc;
    while (size > 0) {
        uInt chunk = size > (size_t)UINT_MAX ? UINT_MAX : (uInt)size;
        c = crc32(c, p, chunk);
        p += chunk;
        size -= chunk;
    }
    return (uint32_t)c;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define FOLD_TARGET __attribute__((target("pclmul,sse4.1")))

/* x * k.lo-or-hi: a 128-bit lane folded forward by the distance k encodes. */
FOLD_TARGET static inline __m128i fold(__m128i x, __m128i k, __m128i next)
{
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

/* The CRC register (not inverted) after n bytes, n a multiple of 16, >= 64. */
FOLD_TARGET static uint32_t crc_fold(uint32_t reg, const unsigned char *p, size_t n)
{
    const __m128i k512 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4); /* x^(512+32), x^(512-32) mod P */
    const __m128i k128 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0); /* x^(128+32), x^(128-32) mod P */
    const __m128i k64 = _mm_set_epi64x(0, 0x163cd6124);            /* x^64 mod P */
    const __m128i bar = _mm_set_epi64x(0x1f7011641, 0x1db710641);  /* floor(x^64 / P), P */
    const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
    __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)reg));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16)), x2 = _mm_loadu_si128((const __m128i *)(p + 32)),
            x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    p += 64;
    n -= 64;
    for (; n >= 64; p += 64, n -= 64) {
        x0 = fold(x0, k512, _mm_loadu_si128((const __m128i *)p));
        x1 = fold(x1, k512, _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = fold(x2, k512, _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = fold(x3, k512, _mm_loadu_si128((const __m128i *)(p + 48)));
    }
    x0 = fold(fold(fold(x0, k128, x1), k128, x2), k128, x3);
    for (; n >= 16; p += 16, n -= 16)
        x0 = fold(x0, k128, _mm_loadu_si128((const __m128i *)p));
    /* 128 -> 96 -> 64 bits, then Barrett */
    __m128i t = _mm_xor_si128(_mm_clmulepi64_si128(x0, k128, 0x10), _mm_srli_si128(x0, 8));
    t = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(t, low32), k64, 0x00), _mm_srli_si128(t, 4));
    __m128i u = _mm_clmulepi64_si128(_mm_and_si128(t, low32), bar, 0x10);
    u = _mm_clmulepi64_si128(_mm_and_si128(u, low32), bar, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(u, t), 1);
}
#endif

uint32_t cp_crc32(uint32_t crc, const void *data, size_t size)
{
    const unsigned char *p = data;
#if defined(__x86_64__) && defined(__GNUC__)
    if (size >= 256 && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1")) {
        size_t bulk = size & ~(size_t)15;
        crc = ~crc_fold(~crc, p, bulk);
        p += bulk;
        size -= bulk;
    }
#endif
    return crc_zlib(crc, p, size);
}
