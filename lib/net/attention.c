/* The row pass of Cellpose-SAM's attention on the CPU: scale, the decomposed
 * relative-position terms and the softmax in one pass over a row of scores
 * that is still in cache, where ATen made three (add, softmax max/sum,
 * normalise) plus a copy for bf16.
 *
 * One source compiled three times (AVX-512, AVX2, baseline x86-64), the
 * best the CPU has picked at each call (cp_attn_softmax_isa runs a given
 * one, for the test that compares them): every operation is elementwise IEEE float
 * arithmetic without fused multiply-adds, and the two reductions keep 16
 * partial results combined in a fixed order whatever the vector width, so
 * the three give the same bits and a tile's attention does not depend on
 * the CPU. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "net/shim.h"

/* The vector helpers below are inlined into each clone, so no vector ever
 * crosses a call: the ABI note about 64-byte vector arguments does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
#define INL static inline __attribute__((always_inline))

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));

#define LANES 16

/* x in every lane (x is never -0, which this turns into +0); a vector
 * literal of 16 copies compiles to 16 masked moves */
INL v16f splat(float x) { return (v16f){0} + x; }

INL v16f vmax(v16f a, v16f b)
{
    v16i m = a > b;
    return (v16f)((m & (v16i)a) | (~m & (v16i)b));
}

/* e^x for x <= 0 (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-7
 * polynomial, 2^n into the exponent), within 2 ulp. Inputs below -87 give
 * e^-87 (1.6e-38): a softmax term that small vanishes in the row's sum. */
INL v16f vexp(v16f x)
{
    x = vmax(x, splat(-87.0f));
    v16f t = x * splat(1.44269504088896341f);
    v16f n = (t + splat(12582912.0f)) - splat(12582912.0f); /* round to nearest */
    /* ln2 in two parts: n * 0.693359375 is exact for |n| < 2^15 */
    v16f r = (x - n * splat(0.693359375f)) - n * splat(-2.12194440e-4f);
    v16f p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * (r * r) + r + splat(1.0f);
    v16i e = __builtin_convertvector(n, v16i) << 23;
    return (v16f)((v16i)p + e);
}

INL v16f load(const float *p)
{
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The first k (< 16) lanes from p, the rest fill. */
INL v16f load_part(const float *p, int64_t k, float fill)
{
    v16f v = splat(fill);
    memcpy(&v, p, (size_t)k * sizeof(float));
    return v;
}

INL void store(float *p, v16f v, int64_t k) { memcpy(p, &v, (size_t)k * sizeof(float)); }

/* bfloat16 by round to nearest even (the inputs are finite). */
INL void store_bf16(uint16_t *p, v16f v, int64_t k)
{
    v16u u = (v16u)v;
    u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    v16h h = __builtin_convertvector(u, v16h);
    memcpy(p, &h, (size_t)k * sizeof(uint16_t));
}

INL float lane_max(v16f v)
{
    float m = v[0];
    for (int i = 1; i < LANES; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

INL float lane_sum(v16f v)
{
    float s = v[0];
    for (int i = 1; i < LANES; i++)
        s += v[i];
    return s;
}

/* One row: s <- s * scale + rh[j / w] + rw[j % w] (SAM's order), then its
 * softmax into of (float; may be s) or ob (bfloat16). */
INL void softmax_row(float *s, int64_t h, int64_t w, const float *rh, const float *rw, float scale,
                               float *of, uint16_t *ob)
{
    int64_t n = h * w;
    v16f mx = splat(-INFINITY);
    for (int64_t y = 0; y < h; y++) {
        float *p = s + y * w;
        v16f b = splat(rh[y]);
        int64_t x = 0;
        for (; x + LANES <= w; x += LANES) {
            v16f v = load(p + x) * splat(scale) + b + load(rw + x);
            memcpy(p + x, &v, sizeof v);
            mx = vmax(mx, v);
        }
        if (x < w) {
            v16f v = load_part(p + x, w - x, 0) * splat(scale) + b + load_part(rw + x, w - x, 0);
            store(p + x, v, w - x);
            mx = vmax(mx, load_part(p + x, w - x, -INFINITY));
        }
    }
    v16f m = splat(lane_max(mx)), acc = splat(0);
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) {
        v16f e = vexp(load(s + j) - m);
        memcpy(s + j, &e, sizeof e);
        acc += e;
    }
    if (j < n) {
        v16f e = vexp(load_part(s + j, n - j, 0) - m);
        store(s + j, e, n - j);
        acc += load_part(s + j, n - j, 0);
    }
    v16f inv = splat(1.0f / lane_sum(acc));
    for (j = 0; j + LANES <= n; j += LANES)
        if (ob)
            store_bf16(ob + j, load(s + j) * inv, LANES);
        else
            store(of + j, load(s + j) * inv, LANES);
    if (j < n) {
        if (ob)
            store_bf16(ob + j, load_part(s + j, n - j, 0) * inv, n - j);
        else
            store(of + j, load_part(s + j, n - j, 0) * inv, n - j);
    }
}

#define ROWS_BODY                                                                                        \
    {                                                                                                    \
        int64_t n = h * w;                                                                               \
        for (int64_t i = 0; i < m; i++)                                                                  \
            softmax_row(s + i * n, h, w, rh + i * h, rw + i * w, scale,                                  \
                        out_bf16 ? NULL : (float *)out + i * n, out_bf16 ? (uint16_t *)out + i * n : NULL); \
    }
#define ROWS_ARGS                                                                                        \
    float *s, int64_t m, int64_t h, int64_t w, const float *rh, const float *rw, float scale, void *out, \
        int out_bf16

static void rows_base(ROWS_ARGS) ROWS_BODY
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void rows_avx2(ROWS_ARGS) ROWS_BODY
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void rows_avx512(ROWS_ARGS) ROWS_BODY
#endif

int cp_attn_softmax_isa(int isa, ROWS_ARGS)
{
    switch (isa) {
    case CP_ISA_BASE:
        rows_base(s, m, h, w, rh, rw, scale, out, out_bf16);
        return 0;
#if defined(__x86_64__) && defined(__GNUC__)
    case CP_ISA_AVX2:
        if (!__builtin_cpu_supports("avx2"))
            return -1;
        rows_avx2(s, m, h, w, rh, rw, scale, out, out_bf16);
        return 0;
    case CP_ISA_AVX512:
        if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
            !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq"))
            return -1;
        rows_avx512(s, m, h, w, rh, rw, scale, out, out_bf16);
        return 0;
#endif
    default:
        return -1;
    }
}

void cp_attn_softmax(ROWS_ARGS)
{
    if (cp_attn_softmax_isa(CP_ISA_AVX512, s, m, h, w, rh, rw, scale, out, out_bf16) &&
        cp_attn_softmax_isa(CP_ISA_AVX2, s, m, h, w, rh, rw, scale, out, out_bf16))
        cp_attn_softmax_isa(CP_ISA_BASE, s, m, h, w, rh, rw, scale, out, out_bf16);
}
