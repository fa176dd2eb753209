/* Euler integration of the flow field (spec 5.1-5.2), both Cellpose variants,
 * bit for bit. Every pixel is independent, so pixels are integrated one at a
 * time through all steps (cache-friendly, parallel, thread-count invariant).
 *
 * Speed-up that keeps exact results: the step is a pure function of the float32
 * state, so once a trajectory revisits an earlier state (bit-identical) it is
 * periodic and the final state follows from the period without stepping on.
 * Most pixels end up cycling around their sink long before niter. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

void cp_dyn_params_default(cp_dyn_params *p, cp_dyn_variant variant)
{
    memset(p, 0, sizeof *p);
    p->variant = variant;
    p->niter = 0;
    p->diameter = 0;
    p->diam_mean = 30;
    p->cellprob_threshold = 0.0f;
    p->flow_threshold = 0.4;
    p->min_size = 15;
    p->max_size_fraction = 0.4;
    p->v3_label_bug = 0;
    p->threads = 0;
}

int cp_dyn_niter(cp_dyn_variant variant, double diameter, double diam_mean)
{
    if (!(diameter > 0))
        return 200;
    double n;
    if (variant == CP_DYN_V3) {
        if (!(diam_mean > 0))
            diam_mean = 30;
        double rescale = diam_mean / diameter;
        n = (1.0 / rescale) * 200.0;
    } else {
        n = 200.0 / (30.0 / diameter);
    }
    if (!(n < 2147483647.0))
        return 2147483647;
    return (int)n;
}

void dyn_count_followed(const float *cellprob, size_t npix, float threshold, size_t nchunks,
                        int threads, size_t *first)
{
    first[0] = 0;
#pragma omp parallel for num_threads(dyn_threads(threads)) schedule(static) if (npix >= 65536)
    for (size_t k = 0; k < nchunks; k++) {
        size_t c = 0;
        for (size_t i = dyn_chunk_at(npix, nchunks, k); i < dyn_chunk_at(npix, nchunks, k + 1); i++)
            c += cellprob[i] > threshold;
        first[k + 1] = c;
    }
    for (size_t k = 0; k < nchunks; k++)
        first[k + 1] += first[k];
}

size_t cp_dyn_count_followed(const float *cellprob, size_t npix, float threshold)
{
    size_t first[2];
    dyn_count_followed(cellprob, npix, threshold, 1, 1, first);
    return first[1];
}

/* ---- v3: numba map_coordinates + clamp (spec 5.2b) ----
 * P is the padded field (flowgrid, v3 layout: (y, x) per pixel, rs floats a
 * row, last row and column repeated, so min(yf + 1, Ly - 1) is row yf + 1). */
static inline void step_v3(const float *P, size_t rs, int Ly, int Lx, float *py, float *px)
{
    float y = *py, x = *px;
    int y0 = (int)y, x0 = (int)x;
    float a = y - (float)y0, b = x - (float)x0;
    int yf = y0 < 0 ? 0 : (y0 > Ly - 1 ? Ly - 1 : y0);
    int xf = x0 < 0 ? 0 : (x0 > Lx - 1 ? Lx - 1 : x0);
    double oma = 1.0 - (double)a, omb = 1.0 - (double)b, bd = (double)b;
    const float *f00 = P + (size_t)yf * rs + 2 * (size_t)xf;
    const float *f01 = f00 + 2, *f10 = f00 + rs, *f11 = f10 + 2;
    float s[2];
    for (int c = 0; c < 2; c++) {
        double t0 = (double)f00[c] * oma * omb;
        double t1 = (double)f01[c] * oma * bd;
        float p2 = f10[c] * a;
        double t2 = (double)p2 * omb;
        float t3 = (f11[c] * a) * b;
        s[c] = (float)(((t0 + t1) + t2) + (double)t3);
    }
    float ny = y + s[0], nx = x + s[1];
    ny = ny > 0 ? ny : 0; /* numba max(0, v): v unless v < 0 ... */
    nx = nx > 0 ? nx : 0;
    ny = ny < (float)(Ly - 1) ? ny : (float)(Ly - 1);
    nx = nx < (float)(Lx - 1) ? nx : (float)(Lx - 1);
    *py = ny;
    *px = nx;
}

/* ---- v4: torch grid_sample (align_corners=False, zeros padding), AVX2 FMA order ----
 * P is the padded field (flowgrid, v4 layout: (fx, fy) per pixel in normalised
 * units, zero border at offset 1, (Lx + 2) pixels a row). */
typedef struct v4ctx {
    const float *P;
    int Ly, Lx;
    float hx, hy; /* Lx/2, Ly/2 */
} v4ctx;

static inline void step_v4(const v4ctx *c, float *pgx, float *pgy)
{
    float gx = *pgx, gy = *pgy;
    float ix = fmaf(gx + 1.0f, c->hx, -0.5f);
    float iy = fmaf(gy + 1.0f, c->hy, -0.5f);
    float fx0 = floorf(ix), fy0 = floorf(iy);
    int x0 = (int)fx0, y0 = (int)fy0;
    float w = ix - fx0, e = 1.0f - w;
    float n = iy - fy0, s = 1.0f - n;
    float wnw = s * e, wne = s * w, wsw = n * e, wse = n * w;
    /* states stay in [-1, 1], so x0 is in [-1, Lx - 1] and every corner
     * (x0 + 1 in the padded grid) is in the border or the image; the clamps
     * only guard that, as in step8_v4 */
    x0 = x0 < -1 ? -1 : (x0 > c->Lx - 1 ? c->Lx - 1 : x0);
    y0 = y0 < -1 ? -1 : (y0 > c->Ly - 1 ? c->Ly - 1 : y0);
    size_t rs = 2 * ((size_t)c->Lx + 2);
    const float *nw = c->P + (size_t)(y0 + 1) * rs + 2 * (size_t)(x0 + 1);
    const float *ne = nw + 2, *sw = nw + rs, *se = sw + 2;
    float v[2];
    for (int k = 0; k < 2; k++) {
        float acc = wnw * nw[k];
        acc = fmaf(wne, ne[k], acc);
        acc = fmaf(wsw, sw[k], acc);
        acc = fmaf(wse, se[k], acc);
        v[k] = acc;
    }
    float nx = gx + v[0], ny = gy + v[1];
    nx = nx < -1.0f ? -1.0f : (nx > 1.0f ? 1.0f : nx);
    ny = ny < -1.0f ? -1.0f : (ny > 1.0f ? 1.0f : ny);
    *pgx = nx;
    *pgy = ny;
}

/* The first state of pixel i: (y, x) for v3, (gx, gy) for v4. */
static inline void start_state(int v3, uint32_t i, int Lx, float Wn, float Hn, float *a,
                               float *b)
{
    float y = (float)(i / (uint32_t)Lx), x = (float)(i % (uint32_t)Lx);
    if (v3) {
        *a = y;
        *b = x;
    } else {
        *a = (x / Wn) * 2.0f - 1.0f;
        *b = (y / Hn) * 2.0f - 1.0f;
    }
}

/* The final state as a position: (y, x) for v3; v4 maps back to pixels. */
static inline void store_pos(int v3, float a, float b, size_t j, float Wn, float Hn, float *py,
                             float *px)
{
    if (v3) {
        py[j] = a;
        px[j] = b;
    } else {
        px[j] = ((a + 1.0f) * 0.5f) * Wn;
        py[j] = ((b + 1.0f) * 0.5f) * Hn;
    }
}

/* ---- AVX2: 8 pixels at once (lanes), the same float/double operations as
 * the scalar steps, so lane results are bit-identical to them (no contraction:
 * -ffp-contract=off; FMAs only where torch has them). Each lane follows its own
 * pixel; period detection is vectorised (previous two states, and for v4 a
 * saved state per lane, as in FOLLOW); a finished lane takes the next pixel of
 * the chunk. The flow field's padding (flowgrid) reproduces the clamping (v3)
 * or zero padding (v4), so no per-corner bounds tests remain. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DYN_HAVE_AVX2 1

/* The 2x2 neighbourhoods of 8 lanes from a padded, interleaved (c0, c1) grid:
 * off[k] is the float offset of lane k's top-left pixel, row stride rs floats.
 * Two 16-byte loads per lane (top and bottom pairs of pixels) and a 4x4
 * transpose per half replace eight gathers. q[0..3] = c0, c1 at (y0, x0) and
 * c0, c1 at (y0, x0+1); q[4..7] the same for row y0+1. */
__attribute__((target("avx2,fma"))) static inline void load_quads(const float *P, size_t rs,
                                                                   __m256i voff, __m256 q[8])
{
    int32_t off[8];
    _mm256_storeu_si256((__m256i *)off, voff);
    for (int row = 0; row < 2; row++) {
        const float *b = P + row * rs;
        __m256 r0 = _mm256_loadu2_m128(b + off[4], b + off[0]);
        __m256 r1 = _mm256_loadu2_m128(b + off[5], b + off[1]);
        __m256 r2 = _mm256_loadu2_m128(b + off[6], b + off[2]);
        __m256 r3 = _mm256_loadu2_m128(b + off[7], b + off[3]);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        q[4 * row + 0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
        q[4 * row + 1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
        q[4 * row + 2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
        q[4 * row + 3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    }
}

__attribute__((target("avx2,fma"))) static inline __m256d v3_half(__m128 f00, __m128 f01,
                                                                   __m128 f10a, __m128 t3,
                                                                   __m256d oma, __m256d omb,
                                                                   __m256d bd)
{
    __m256d t0 = _mm256_mul_pd(_mm256_mul_pd(_mm256_cvtps_pd(f00), oma), omb);
    __m256d t1 = _mm256_mul_pd(_mm256_mul_pd(_mm256_cvtps_pd(f01), oma), bd);
    __m256d t2 = _mm256_mul_pd(_mm256_cvtps_pd(f10a), omb);
    return _mm256_add_pd(_mm256_add_pd(_mm256_add_pd(t0, t1), t2), _mm256_cvtps_pd(t3));
}

__attribute__((target("avx2,fma"), always_inline)) static inline void step8_v3(const float *P, int Ly, int Lx,
                                                                 __m256 *py, __m256 *px)
{
    const __m256i zero = _mm256_setzero_si256();
    const __m256i lym1 = _mm256_set1_epi32(Ly - 1), lxm1 = _mm256_set1_epi32(Lx - 1);
    const __m256i vW = _mm256_set1_epi32(Lx + 1);
    const __m256d done = _mm256_set1_pd(1.0);
    __m256 y = *py, x = *px;
    __m256i y0 = _mm256_cvttps_epi32(y), x0 = _mm256_cvttps_epi32(x);
    __m256 a = _mm256_sub_ps(y, _mm256_cvtepi32_ps(y0)), b = _mm256_sub_ps(x, _mm256_cvtepi32_ps(x0));
    __m256i yf = _mm256_min_epi32(_mm256_max_epi32(y0, zero), lym1);
    __m256i xf = _mm256_min_epi32(_mm256_max_epi32(x0, zero), lxm1);
    /* P is (Ly+1) x (Lx+1) with the last row and column repeated: the
     * clamped corners min(yf+1, Ly-1), min(xf+1, Lx-1) are P's (yf+1, xf+1) */
    __m256i i00 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_mullo_epi32(yf, vW), xf), 1);
    __m128 alo = _mm256_castps256_ps128(a), ahi = _mm256_extractf128_ps(a, 1);
    __m128 blo = _mm256_castps256_ps128(b), bhi = _mm256_extractf128_ps(b, 1);
    __m256d bdl = _mm256_cvtps_pd(blo), bdh = _mm256_cvtps_pd(bhi);
    __m256d omal = _mm256_sub_pd(done, _mm256_cvtps_pd(alo));
    __m256d omah = _mm256_sub_pd(done, _mm256_cvtps_pd(ahi));
    __m256d ombl = _mm256_sub_pd(done, bdl), ombh = _mm256_sub_pd(done, bdh);
    __m256 s[2], q[8];
    load_quads(P, 2 * ((size_t)Lx + 1), i00, q);
    for (int c = 0; c < 2; c++) {
        __m256 f00 = q[c], f01 = q[2 + c], f10 = q[4 + c], f11 = q[6 + c];
        __m256 f10a = _mm256_mul_ps(f10, a);
        __m256 t3 = _mm256_mul_ps(_mm256_mul_ps(f11, a), b);
        __m256d lo = v3_half(_mm256_castps256_ps128(f00), _mm256_castps256_ps128(f01),
                             _mm256_castps256_ps128(f10a), _mm256_castps256_ps128(t3), omal,
                             ombl, bdl);
        __m256d hi = v3_half(_mm256_extractf128_ps(f00, 1), _mm256_extractf128_ps(f01, 1),
                             _mm256_extractf128_ps(f10a, 1), _mm256_extractf128_ps(t3, 1),
                             omah, ombh, bdh);
        s[c] = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
    }
    const __m256 fzero = _mm256_setzero_ps();
    const __m256 fLy1 = _mm256_set1_ps((float)(Ly - 1)), fLx1 = _mm256_set1_ps((float)(Lx - 1));
    __m256 ny = _mm256_add_ps(y, s[0]), nx = _mm256_add_ps(x, s[1]);
    ny = _mm256_and_ps(_mm256_cmp_ps(ny, fzero, _CMP_GT_OQ), ny);
    nx = _mm256_and_ps(_mm256_cmp_ps(nx, fzero, _CMP_GT_OQ), nx);
    *py = _mm256_blendv_ps(fLy1, ny, _mm256_cmp_ps(ny, fLy1, _CMP_LT_OQ));
    *px = _mm256_blendv_ps(fLx1, nx, _mm256_cmp_ps(nx, fLx1, _CMP_LT_OQ));
}

__attribute__((target("avx2,fma"), always_inline)) static inline void step8_v4(const v4ctx *c, __m256 *pgx,
                                                                 __m256 *pgy)
{
    const __m256 one = _mm256_set1_ps(1.0f), mhalf = _mm256_set1_ps(-0.5f);
    const __m256 mone = _mm256_set1_ps(-1.0f);
    const __m256i ione = _mm256_set1_epi32(1), mone_i = _mm256_set1_epi32(-1);
    const __m256i vW = _mm256_set1_epi32(c->Lx + 2);
    __m256 gx = *pgx, gy = *pgy;
    __m256 ix = _mm256_fmadd_ps(_mm256_add_ps(gx, one), _mm256_set1_ps(c->hx), mhalf);
    __m256 iy = _mm256_fmadd_ps(_mm256_add_ps(gy, one), _mm256_set1_ps(c->hy), mhalf);
    __m256 fx0 = _mm256_floor_ps(ix), fy0 = _mm256_floor_ps(iy);
    __m256i x0 = _mm256_cvttps_epi32(fx0), y0 = _mm256_cvttps_epi32(fy0);
    __m256 w = _mm256_sub_ps(ix, fx0), e = _mm256_sub_ps(one, w);
    __m256 n = _mm256_sub_ps(iy, fy0), s = _mm256_sub_ps(one, n);
    __m256 wnw = _mm256_mul_ps(s, e), wne = _mm256_mul_ps(s, w);
    __m256 wsw = _mm256_mul_ps(n, e), wse = _mm256_mul_ps(n, w);
    /* P4 is (Ly+2) x (Lx+2) with a zero border (offset 1): corners outside
     * the image read 0 as grid_sample's zero padding; clamps guard NaN states */
    x0 = _mm256_min_epi32(_mm256_max_epi32(x0, mone_i), _mm256_set1_epi32(c->Lx - 1));
    y0 = _mm256_min_epi32(_mm256_max_epi32(y0, mone_i), _mm256_set1_epi32(c->Ly - 1));
    __m256i base = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_add_epi32(y0, ione), vW),
                                    _mm256_add_epi32(x0, ione));
    __m256 v[2], q[8];
    load_quads(c->P, 2 * ((size_t)c->Lx + 2), _mm256_slli_epi32(base, 1), q);
    __m256 gnw[2] = {q[0], q[1]}, gne[2] = {q[2], q[3]}, gsw[2] = {q[4], q[5]}, gse[2] = {q[6], q[7]};
    for (int k = 0; k < 2; k++) {
        __m256 vnw = gnw[k], vne = gne[k], vsw = gsw[k], vse = gse[k];
        __m256 acc = _mm256_mul_ps(wnw, vnw);
        acc = _mm256_fmadd_ps(wne, vne, acc);
        acc = _mm256_fmadd_ps(wsw, vsw, acc);
        acc = _mm256_fmadd_ps(wse, vse, acc);
        v[k] = acc;
    }
    __m256 nx = _mm256_add_ps(gx, v[0]), ny = _mm256_add_ps(gy, v[1]);
    nx = _mm256_blendv_ps(nx, mone, _mm256_cmp_ps(nx, mone, _CMP_LT_OQ));
    nx = _mm256_blendv_ps(nx, one, _mm256_cmp_ps(nx, one, _CMP_GT_OQ));
    ny = _mm256_blendv_ps(ny, mone, _mm256_cmp_ps(ny, mone, _CMP_LT_OQ));
    ny = _mm256_blendv_ps(ny, one, _mm256_cmp_ps(ny, one, _CMP_GT_OQ));
    *pgx = nx;
    *pgy = ny;
}

#define FOLLOW_CHUNK 2048


/* A pixel in a cycle longer than 2 that still has rem < period steps to go. */
typedef struct tail {
    uint32_t j;
    int32_t rem;
    float a, b;
} tail;

/* The remaining steps of cycling pixels, 8 lanes at a time: a lane stops
 * moving once it has made its own number of steps. */
__attribute__((target("avx2,fma"))) static void follow_tails(int v3, const v4ctx *c, int Ly,
                                                             int Lx, const tail *t, size_t n,
                                                             float *py, float *px)
{
    float Wn = (float)(Lx - 1), Hn = (float)(Ly - 1);
    for (size_t i = 0; i < n; i += 8) {
        float A[8] = {0}, B[8] = {0};
        int32_t R[8] = {0};
        int maxr = 0, m = n - i < 8 ? (int)(n - i) : 8;
        for (int k = 0; k < m; k++) {
            A[k] = t[i + k].a;
            B[k] = t[i + k].b;
            R[k] = t[i + k].rem;
            maxr = R[k] > maxr ? R[k] : maxr;
        }
        __m256 va = _mm256_loadu_ps(A), vb = _mm256_loadu_ps(B);
        __m256i vr = _mm256_loadu_si256((const __m256i *)R);
        for (int r = 0; r < maxr; r++) {
            __m256 na = va, nb = vb;
            if (v3)
                step8_v3(c->P, Ly, Lx, &na, &nb);
            else
                step8_v4(c, &na, &nb);
            __m256 go = _mm256_castsi256_ps(_mm256_cmpgt_epi32(vr, _mm256_set1_epi32(r)));
            va = _mm256_blendv_ps(va, na, go);
            vb = _mm256_blendv_ps(vb, nb, go);
        }
        _mm256_storeu_ps(A, va);
        _mm256_storeu_ps(B, vb);
        for (int k = 0; k < m; k++)
            store_pos(v3, A[k], B[k], t[i + k].j, Wn, Hn, py, px);
    }
}

/* One group of 8 lanes, each following its own pixel: the state (a, b), steps
 * made t, the previous two states (bits) a1 b1 a2 b2, and for cycles longer
 * than 2 a saved state sa sb made at step ts, with the next save at step ns.
 * act marks lanes that hold a pixel; J their pixel numbers. */
typedef struct lanes8 {
    __m256 a, b;
    __m256i t, act, a1, b1, a2, b2, sa, sb, ts, ns;
    size_t J[8];
} lanes8;


/* Ends the lanes in mask fin (their results written or queued as tails) and
 * gives them the next pixels of [*next, j1); returns how many lanes went idle. */
__attribute__((target("avx2,fma"), always_inline)) static inline int
lanes_refill(int v3, lanes8 *L, __m256i fin, __m256i per, const uint32_t *idx, size_t *next,
             size_t j1, int niter, int Lx, float Wn, float Hn, tail *tails, size_t *ntail,
             float *py, float *px)
{
    float A[8], B[8], NA[8], NB[8];
    int32_t T[8], PER[8], NACT[8];
    uint32_t A2[8], B2[8];
    _mm256_storeu_ps(A, L->a);
    _mm256_storeu_ps(B, L->b);
    _mm256_storeu_si256((__m256i *)T, L->t);
    _mm256_storeu_si256((__m256i *)PER, per);
    _mm256_storeu_si256((__m256i *)A2, L->a2);
    _mm256_storeu_si256((__m256i *)B2, L->b2);
    int idle = 0;
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(fin));
    for (int k = 0; k < 8; k++) {
        NA[k] = NB[k] = 0.0f;
        NACT[k] = 0;
    }
    while (m) {
        int k = __builtin_ctz(m);
        m &= m - 1;
        int rem = PER[k] ? (niter - T[k]) % PER[k] : 0;
        if (rem && PER[k] == 2) {
            /* two-cycle: the state at niter is the one before this */
            memcpy(&A[k], &A2[k], sizeof A[k]);
            memcpy(&B[k], &B2[k], sizeof B[k]);
        }
        if (rem && PER[k] > 2)
            tails[(*ntail)++] = (tail){(uint32_t)L->J[k], rem, A[k], B[k]};
        else
            store_pos(v3, A[k], B[k], L->J[k], Wn, Hn, py, px);
        if (*next < j1) {
            start_state(v3, idx[*next], Lx, Wn, Hn, &NA[k], &NB[k]);
            L->J[k] = (*next)++;
            NACT[k] = -1;
        } else {
            idle++;
        }
    }
    __m256 na = _mm256_loadu_ps(NA), nb = _mm256_loadu_ps(NB);
    __m256 f = _mm256_castsi256_ps(fin);
    L->a = _mm256_blendv_ps(L->a, na, f);
    L->b = _mm256_blendv_ps(L->b, nb, f);
    L->act = _mm256_blendv_epi8(L->act, _mm256_loadu_si256((const __m256i *)NACT), fin);
    L->t = _mm256_andnot_si256(fin, L->t);
    L->a1 = _mm256_blendv_epi8(L->a1, _mm256_castps_si256(na), fin);
    L->b1 = _mm256_blendv_epi8(L->b1, _mm256_castps_si256(nb), fin);
    if (!v3) {
        L->sa = _mm256_blendv_epi8(L->sa, _mm256_castps_si256(na), fin);
        L->sb = _mm256_blendv_epi8(L->sb, _mm256_castps_si256(nb), fin);
        L->ts = _mm256_andnot_si256(fin, L->ts);
        L->ns = _mm256_blendv_epi8(L->ns, _mm256_set1_epi32(1), fin);
    }
    return idle;
}

/* One step of a group and its cycle bookkeeping; returns the lanes that are
 * done (cycle found or niter reached) and their periods (0: none). */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256i
lanes_step(int v3, lanes8 *L, const v4ctx *c, int Ly, int Lx, __m256i nm1, __m256i *per)
{
    const __m256i ione = _mm256_set1_epi32(1), itwo = _mm256_set1_epi32(2);
    if (v3)
        step8_v3(c->P, Ly, Lx, &L->a, &L->b);
    else
        step8_v4(c, &L->a, &L->b);
    L->t = _mm256_add_epi32(L->t, ione);
    __m256i ua = _mm256_castps_si256(L->a), ub = _mm256_castps_si256(L->b);
    __m256i eq1 = _mm256_and_si256(_mm256_cmpeq_epi32(ua, L->a1), _mm256_cmpeq_epi32(ub, L->b1));
    __m256i eq2 = _mm256_and_si256(_mm256_cmpgt_epi32(L->t, ione),
                                   _mm256_and_si256(_mm256_cmpeq_epi32(ua, L->a2),
                                                    _mm256_cmpeq_epi32(ub, L->b2)));
    __m256i any = _mm256_or_si256(_mm256_or_si256(eq1, eq2), _mm256_cmpgt_epi32(L->t, nm1));
    /* period: 1, else 2, else t - ts, else 0 (niter reached) */
    __m256i p = itwo;
    if (!v3) {
        /* v3 trajectories end in fixed points and 2-cycles; longer v4 cycles
         * are found against the saved state */
        __m256i eqs = _mm256_and_si256(_mm256_cmpeq_epi32(ua, L->sa),
                                       _mm256_cmpeq_epi32(ub, L->sb));
        any = _mm256_or_si256(any, eqs);
        p = _mm256_and_si256(eqs, _mm256_sub_epi32(L->t, L->ts));
        p = _mm256_blendv_epi8(p, itwo, eq2);
        __m256i sv = _mm256_cmpeq_epi32(L->t, L->ns);
        L->sa = _mm256_blendv_epi8(L->sa, ua, sv);
        L->sb = _mm256_blendv_epi8(L->sb, ub, sv);
        L->ts = _mm256_blendv_epi8(L->ts, L->t, sv);
        const __m256i i32 = _mm256_set1_epi32(32);
        __m256i nxt = _mm256_blendv_epi8(_mm256_add_epi32(L->t, i32),
                                         _mm256_add_epi32(L->t, L->t),
                                         _mm256_cmpgt_epi32(i32, L->t));
        L->ns = _mm256_blendv_epi8(L->ns, nxt, sv);
    } else {
        p = _mm256_and_si256(eq2, itwo);
    }
    *per = _mm256_blendv_epi8(p, ione, eq1);
    L->a2 = L->a1;
    L->b2 = L->b1;
    L->a1 = ua;
    L->b1 = ub;
    return _mm256_and_si256(L->act, any);
}

/* Follow pixels idx[j0..j1) (at most FOLLOW_CHUNK, niter > 0) with two groups
 * of 8 lanes: two independent dependency chains keep the core busy, as one
 * step is a long latency chain. A finished lane takes the next pixel. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
follow_impl(int v3, const v4ctx *c, int Ly, int Lx, const uint32_t *idx, size_t j0, size_t j1,
            int niter, float *py, float *px)
{
    float Wn = (float)(Lx - 1), Hn = (float)(Ly - 1);
    tail tails[FOLLOW_CHUNK];
    size_t ntail = 0, next = j0;
    lanes8 L[2];
    int nact = 0;
    for (int g = 0; g < 2; g++) {
        float A[8] = {0}, B[8] = {0};
        int32_t ACT[8] = {0};
        for (int k = 0; k < 8; k++) {
            L[g].J[k] = 0;
            if (next < j1) {
                start_state(v3, idx[next], Lx, Wn, Hn, &A[k], &B[k]);
                L[g].J[k] = next++;
                ACT[k] = -1;
                nact++;
            }
        }
        L[g].a = _mm256_loadu_ps(A);
        L[g].b = _mm256_loadu_ps(B);
        L[g].act = _mm256_loadu_si256((const __m256i *)ACT);
        L[g].t = L[g].ts = _mm256_setzero_si256();
        L[g].ns = _mm256_set1_epi32(1);
        L[g].a1 = L[g].sa = _mm256_castps_si256(L[g].a);
        L[g].b1 = L[g].sb = _mm256_castps_si256(L[g].b);
        L[g].a2 = L[g].b2 = _mm256_setzero_si256();
    }
    const __m256i nm1 = _mm256_set1_epi32(niter - 1);
    while (nact > 0) {
        __m256i per0, per1;
        __m256i fin0 = lanes_step(v3, &L[0], c, Ly, Lx, nm1, &per0);
        __m256i fin1 = lanes_step(v3, &L[1], c, Ly, Lx, nm1, &per1);
        if (!_mm256_testz_si256(fin0, fin0))
            nact -= lanes_refill(v3, &L[0], fin0, per0, idx, &next, j1, niter, Lx, Wn, Hn,
                                 tails, &ntail, py, px);
        if (!_mm256_testz_si256(fin1, fin1))
            nact -= lanes_refill(v3, &L[1], fin1, per1, idx, &next, j1, niter, Lx, Wn, Hn,
                                 tails, &ntail, py, px);
    }
    follow_tails(v3, c, Ly, Lx, tails, ntail, py, px);
}

__attribute__((target("avx2,fma"))) static void follow8_v3(const v4ctx *c, int Ly, int Lx,
                                                           const uint32_t *idx, size_t j0,
                                                           size_t j1, int niter, float *py,
                                                           float *px)
{
    follow_impl(1, c, Ly, Lx, idx, j0, j1, niter, py, px);
}

__attribute__((target("avx2,fma"))) static void follow8_v4(const v4ctx *c, int Ly, int Lx,
                                                           const uint32_t *idx, size_t j0,
                                                           size_t j1, int niter, float *py,
                                                           float *px)
{
    follow_impl(0, c, Ly, Lx, idx, j0, j1, niter, py, px);
}
#endif

/* The flow field the steps read, F = dP * [cellprob > thr] / 5 in float32 as
 * numpy computes it (v4 also scaled to normalised units), interleaved per pixel
 * and padded so that corner reads need no bounds tests: v3 repeats the last row
 * and column (its clamped corners), v4 has a zero border at offset 1
 * (grid_sample's zero padding). */
typedef struct flowgrid {
    float *P;
    size_t rs; /* floats per padded row */
    int pad;   /* 0 (v3) or 1 (v4): offset of pixel (0, 0) */
} flowgrid;

static inline void flow_at(const float *dY, const float *dX, const float *cellprob, size_t i,
                           float threshold, int v3, float sy, float sx, float out[2])
{
    float m = cellprob[i] > threshold ? 1.0f : 0.0f;
    float fy = (dY[i] * m) / 5.0f, fx = (dX[i] * m) / 5.0f;
    if (!v3) {
        fx *= sx;
        fy *= sy;
    }
    /* non-finite flows (a broken network) count as 0: states stay finite */
    if (!isfinite(fy))
        fy = 0.0f;
    if (!isfinite(fx))
        fx = 0.0f;
    out[0] = v3 ? fy : fx;
    out[1] = v3 ? fx : fy;
}

/* Builds the padded field and the raster list of followed pixels in two
 * parallel passes over rows (count, then fill at each row's prefix offset),
 * so the first touch of the ~8 bytes/pixel is spread over the threads too. */
static int flowgrid_build(const float *dP, const float *cellprob, int Ly, int Lx,
                          float threshold, int v3, int nt, flowgrid *g, uint32_t **pidx,
                          size_t *pn)
{
    size_t npix = (size_t)Ly * Lx;
    size_t PH = (size_t)Ly + (v3 ? 1 : 2), PW = (size_t)Lx + (v3 ? 1 : 2);
    size_t *rowoff = cp_malloc_array((size_t)Ly + 1, sizeof *rowoff, "dynamics row offsets");
    g->P = cp_malloc_array(PH * PW, 2 * sizeof(float), "dynamics flow field");
    g->rs = 2 * PW;
    g->pad = v3 ? 0 : 1;
    *pidx = NULL;
    if (!rowoff || !g->P)
        goto oom;
    dyn_count_followed(cellprob, npix, threshold, (size_t)Ly, nt, rowoff);
    *pn = rowoff[Ly];
    *pidx = cp_malloc_array(*pn ? *pn : 1, sizeof(uint32_t), "dynamics followed pixels");
    if (!*pidx)
        goto oom;
    float sy = v3 ? 1.0f : (float)(2.0 / (double)(Ly - 1));
    float sx = v3 ? 1.0f : (float)(2.0 / (double)(Lx - 1));
    const float *dY = dP, *dX = dP + npix;
    uint32_t *idx = *pidx;
    int pad = g->pad;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t py = 0; py < PH; py++) {
        float *row = g->P + py * g->rs;
        long y = (long)py - pad;
        if (!v3 && (y < 0 || y >= Ly)) {
            memset(row, 0, g->rs * sizeof *row);
            continue;
        }
        if (v3 && y == Ly)
            y = Ly - 1;
        size_t k = rowoff[y];
        int own = v3 ? py < (size_t)Ly : 1; /* v3's repeated last row lists nothing */
        for (int x = 0; x < Lx; x++) {
            size_t i = (size_t)y * Lx + x;
            flow_at(dY, dX, cellprob, i, threshold, v3, sy, sx, row + 2 * (x + pad));
            if (own && cellprob[i] > threshold)
                idx[k++] = (uint32_t)i;
        }
        if (v3) {
            memcpy(row + 2 * Lx, row + 2 * (Lx - 1), 2 * sizeof *row);
        } else {
            row[0] = row[1] = 0.0f;
            row[2 * (Lx + 1)] = row[2 * (Lx + 1) + 1] = 0.0f;
        }
    }
    free(rowoff);
    return CP_OK;
oom:
    free(rowoff);
    free(g->P);
    free(*pidx);
    g->P = NULL;
    *pidx = NULL;
    return CP_ENOMEM;
}

int cp_dyn_euler(const float *dP, const float *cellprob, int Ly, int Lx, float threshold,
                 cp_dyn_variant variant, int niter, int threads, float *p)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "dynamics: bad image size %dx%d", Lx, Ly);
    if (variant != CP_DYN_V3 && variant != CP_DYN_V4)
        return cp_error(CP_EINVAL, "dynamics: unknown variant %d", (int)variant);
    if (variant == CP_DYN_V4 && (Ly < 2 || Lx < 2))
        return cp_error(CP_EINVAL, "dynamics: v4 needs an image at least 2x2, got %dx%d", Lx, Ly);
    if (niter < 0)
        return cp_error(CP_EINVAL, "dynamics: negative niter %d", niter);
    int v3 = variant == CP_DYN_V3;
    int nt = dyn_threads(threads);
    flowgrid g;
    uint32_t *idx;
    size_t n;
    if (flowgrid_build(dP, cellprob, Ly, Lx, threshold, v3, nt, &g, &idx, &n) != CP_OK)
        return CP_ENOMEM;
    if (n == 0) {
        free(g.P);
        free(idx);
        return CP_OK;
    }
    float *py = p, *px = p + n;
    v4ctx c = {g.P, Ly, Lx, (float)Lx / 2.0f, (float)Ly / 2.0f};
#ifdef DYN_HAVE_AVX2
    /* gathers take int32 indices: 2*npix must fit */
    if (niter > 0 && !getenv("CP_DYN_SCALAR") && (size_t)Ly * Lx < (size_t)1 << 29 &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        const size_t chunk = FOLLOW_CHUNK;
        size_t nchunk = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (size_t ch = 0; ch < nchunk; ch++) {
            size_t j0 = ch * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
            if (v3)
                follow8_v3(&c, Ly, Lx, idx, j0, j1, niter, py, px);
            else
                follow8_v4(&c, Ly, Lx, idx, j0, j1, niter, py, px);
        }
        free(g.P);
        free(idx);
        return CP_OK;
    }
#endif
    float Wn = (float)(Lx - 1), Hn = (float)(Ly - 1);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 512)
    for (size_t j = 0; j < n; j++) {
        float s[2];
        start_state(v3, idx[j], Lx, Wn, Hn, &s[0], &s[1]);
        if (v3)
            DYN_FOLLOW(step_v3(g.P, g.rs, Ly, Lx, &s[0], &s[1]), s, 2, niter);
        else
            DYN_FOLLOW(step_v4(&c, &s[0], &s[1]), s, 2, niter);
        store_pos(v3, s[0], s[1], j, Wn, Hn, py, px);
    }
    free(g.P);
    free(idx);
    return CP_OK;
}

/* ---- interp=False (numba steps2D), used by Cellpose 3's size pass ----
 * Each step adds the flow at the truncated position to both coordinates, in
 * float32, then clamps as step_v3 does. The v3 flow field layout serves as
 * is: positions stay within [0, L-1], so the padding is never read. */
static inline void step_nointerp(const float *P, size_t rs, int Ly, int Lx, float *py, float *px)
{
    float y = *py, x = *px;
    const float *f = P + (size_t)(int)y * rs + 2 * (size_t)(int)x;
    float ny = y + f[0], nx = x + f[1];
    ny = ny > 0 ? ny : 0;
    nx = nx > 0 ? nx : 0;
    ny = ny < (float)(Ly - 1) ? ny : (float)(Ly - 1);
    nx = nx < (float)(Lx - 1) ? nx : (float)(Lx - 1);
    *py = ny;
    *px = nx;
}

int cp_dyn_euler_nointerp(const float *dP, const float *cellprob, int Ly, int Lx, float threshold,
                          int niter, int threads, float *p)
{
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "dynamics: bad image size %dx%d", Lx, Ly);
    if (niter < 0)
        return cp_error(CP_EINVAL, "dynamics: negative niter %d", niter);
    int nt = dyn_threads(threads);
    flowgrid g;
    uint32_t *idx;
    size_t n;
    if (flowgrid_build(dP, cellprob, Ly, Lx, threshold, 1, nt, &g, &idx, &n) != CP_OK)
        return CP_ENOMEM;
    float *py = p, *px = p + n;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 512)
    for (size_t j = 0; j < n; j++) {
        float s[2];
        start_state(1, idx[j], Lx, 0, 0, &s[0], &s[1]);
        DYN_FOLLOW(step_nointerp(g.P, g.rs, Ly, Lx, &s[0], &s[1]), s, 2, niter);
        py[j] = s[0];
        px[j] = s[1];
    }
    free(g.P);
    free(idx);
    return CP_OK;
}
