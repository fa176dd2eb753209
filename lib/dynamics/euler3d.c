/* Euler integration in 3D (golden/3d README, "The 3D pipeline" step 7), bit
 * for bit: trilinear steps as torch 1.13's scalar 3D grid sampler computes
 * them (zeros padding, align_corners=False; each float32 operation in its
 * order, no fused multiply-adds), used by v3 (interp=True) and v4 alike, and
 * v3's nearest-voxel steps3D. Voxels are independent: each is followed
 * through all its steps, in parallel, with the cycle shortcut of the 2D steps. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

/* The field the steps read, F = dP * [cellprob > thr] / 5 in float32 as numpy
 * computes it, 3 floats a voxel. Trilinear: (fx, fy, fz) scaled to grid_sample
 * units (x 2/(L-1), in float32 as torch) with a zero border of one voxel (the
 * zero padding), so corner reads need no bounds tests. Nearest: (fz, fy, fx)
 * unpadded (positions stay inside). */
typedef struct field3 {
    float *F;
    int Lz, Ly, Lx, pad;
    size_t rs, ps; /* floats a padded row, a padded plane */
} field3;

static inline void flow3_at(const float *dP, const float *cellprob, size_t nvox, size_t i,
                            float threshold, int interp, const float sc[3], float out[3])
{
    float m = cellprob[i] > threshold ? 1.0f : 0.0f;
    float f[3]; /* z, y, x */
    for (int k = 0; k < 3; k++) {
        f[k] = (dP[k * nvox + i] * m) / 5.0f;
        if (interp)
            f[k] *= sc[k];
        if (!isfinite(f[k])) /* a broken network: states stay finite */
            f[k] = 0.0f;
    }
    for (int k = 0; k < 3; k++)
        out[k] = f[interp ? 2 - k : k];
}

/* Builds the field and the C-order list of followed voxels, row by row in
 * parallel (count, then fill at each row's prefix offset). */
static int field3_build(const float *dP, const float *cellprob, int Lz, int Ly, int Lx,
                        float threshold, int interp, int nt, field3 *g, size_t **pidx, size_t *pn)
{
    size_t nvox = (size_t)Lz * Ly * Lx, nrows = (size_t)Lz * Ly;
    int pad = interp ? 1 : 0;
    size_t PZ = (size_t)Lz + 2 * pad, PY = (size_t)Ly + 2 * pad, PX = (size_t)Lx + 2 * pad;
    g->Lz = Lz, g->Ly = Ly, g->Lx = Lx, g->pad = pad;
    g->rs = 3 * PX;
    g->ps = g->rs * PY;
    size_t *rowoff = cp_malloc_array(nrows + 1, sizeof *rowoff, "dynamics row offsets");
    g->F = pad ? cp_calloc(PZ * PY, g->rs * sizeof(float), "dynamics flow field")
               : cp_malloc_array(PZ * PY, g->rs * sizeof(float), "dynamics flow field");
    *pidx = NULL;
    if (!rowoff || !g->F)
        goto oom;
    dyn_count_followed(cellprob, nvox, threshold, nrows, nt, rowoff);
    *pn = rowoff[nrows];
    *pidx = cp_malloc_array(*pn ? *pn : 1, sizeof **pidx, "dynamics followed voxels");
    if (!*pidx)
        goto oom;
    /* im[:, k] *= 2 / (L - 1): the double factor rounded to float32 */
    float sc[3] = {1.0f, 1.0f, 1.0f};
    if (interp) {
        sc[0] = (float)(2.0 / (double)(Lz - 1));
        sc[1] = (float)(2.0 / (double)(Ly - 1));
        sc[2] = (float)(2.0 / (double)(Lx - 1));
    }
    size_t *idx = *pidx;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t r = 0; r < nrows; r++) {
        size_t z = r / (size_t)Ly, y = r % (size_t)Ly, k = rowoff[r];
        float *row = g->F + (z + pad) * g->ps + (y + pad) * g->rs + 3 * pad;
        for (int x = 0; x < Lx; x++) {
            size_t i = r * Lx + x;
            flow3_at(dP, cellprob, nvox, i, threshold, interp, sc, row + 3 * x);
            if (cellprob[i] > threshold)
                idx[k++] = i;
        }
    }
    free(rowoff);
    return CP_OK;
oom:
    free(rowoff);
    free(g->F);
    free(*pidx);
    g->F = NULL;
    *pidx = NULL;
    return CP_ENOMEM;
}

static inline int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* grid_sampler_compute_source_index (zeros padding, align_corners=False):
 * the voxel coordinate a normalised position g is read at. */
static inline float unnormalize(float g, int L)
{
    return ((g + 1.0f) * (float)L - 1.0f) / 2.0f;
}

/* One grid_sample step of s = (gx, gy, gz), clamped to [-1, 1]. */
static inline void step_tri(const field3 *g, float s[3])
{
    float ix = unnormalize(s[0], g->Lx), iy = unnormalize(s[1], g->Ly),
          iz = unnormalize(s[2], g->Lz);
    /* states stay in [-1, 1], so the lower corners are in [-1, L-1]; the
     * clamps only guard that */
    int x0 = clampi((int)floorf(ix), -1, g->Lx - 1), y0 = clampi((int)floorf(iy), -1, g->Ly - 1),
        z0 = clampi((int)floorf(iz), -1, g->Lz - 1);
    /* ATen subtracts the integer corners (converted to float) from ix */
    float wx1 = (float)(x0 + 1) - ix, wx0 = ix - (float)x0;
    float wy1 = (float)(y0 + 1) - iy, wy0 = iy - (float)y0;
    float wz1 = (float)(z0 + 1) - iz, wz0 = iz - (float)z0;
    float w[8] = {wx1 * wy1 * wz1, wx0 * wy1 * wz1, wx1 * wy0 * wz1, wx0 * wy0 * wz1,
                  wx1 * wy1 * wz0, wx0 * wy1 * wz0, wx1 * wy0 * wz0, wx0 * wy0 * wz0};
    const float *c = g->F + (size_t)(z0 + 1) * g->ps + (size_t)(y0 + 1) * g->rs + 3 * (size_t)(x0 + 1);
    /* corners tnw, tne, tsw, tse, bnw, bne, bsw, bse (z, then y, then x) */
    const float *q0 = c, *q2 = c + g->rs, *q4 = c + g->ps, *q6 = q4 + g->rs;
    for (int k = 0; k < 3; k++) {
        float acc = 0.0f;
        acc += q0[k] * w[0];
        acc += q0[k + 3] * w[1];
        acc += q2[k] * w[2];
        acc += q2[k + 3] * w[3];
        acc += q4[k] * w[4];
        acc += q4[k + 3] * w[5];
        acc += q6[k] * w[6];
        acc += q6[k + 3] * w[7];
        float v = s[k] + acc;
        s[k] = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    }
}

/* One steps3D step of s = (z, y, x): the flow at the truncated position
 * added in float32, then clamped to [0, L-1] as numba's min/max do. */
static inline void step_nearest(const field3 *g, float s[3])
{
    const float *f = g->F + (size_t)(int)s[0] * g->ps + (size_t)(int)s[1] * g->rs +
                     3 * (size_t)(int)s[2];
    const int L[3] = {g->Lz, g->Ly, g->Lx};
    for (int k = 0; k < 3; k++) {
        float v = s[k] + f[k];
        v = v > 0 ? v : 0;
        s[k] = v < (float)(L[k] - 1) ? v : (float)(L[k] - 1);
    }
}

/* The first trilinear state of voxel i, (gx, gy, gz) in grid_sample units:
 * pt /= (L - 1); pt *= 2; pt -= 1. */
static inline void start_tri(size_t i, int Ly, int Lx, const float Ln[3], float s[3])
{
    size_t plane = (size_t)Ly * Lx;
    float z = (float)(i / plane), y = (float)(i % plane / (size_t)Lx), x = (float)(i % (size_t)Lx);
    s[0] = (x / Ln[0]) * 2.0f - 1.0f;
    s[1] = (y / Ln[1]) * 2.0f - 1.0f;
    s[2] = (z / Ln[2]) * 2.0f - 1.0f;
}

/* The final trilinear state back in voxels: (pt + 1) * 0.5 * (L - 1). */
static inline void store_tri(const float s[3], size_t j, size_t n, const float Ln[3], float *p)
{
    for (int k = 0; k < 3; k++) /* p is (z, y, x) planes, s is (x, y, z) */
        p[(size_t)(2 - k) * n + j] = ((s[k] + 1.0f) * 0.5f) * Ln[k];
}

/* ---- AVX2: 8 voxels at once (lanes), the same float operations in the same
 * order as step_tri (no FMAs: -ffp-contract=off and none written), so each
 * lane is bit-identical to the scalar loop; CP_DYN_SCALAR=1 forces that loop.
 * Cycles are detected per lane as DYN_FOLLOW does (previous two states and a
 * saved one); a finished lane takes the next voxel of the chunk, and the few
 * steps left in a cycle longer than 2 are made by step_tri. Corners are read
 * with 4-float loads and transposes (faster than gathers here).
 * Measured vs the scalar loop (same run, 1-2 threads, eval3d v4_do3D_dnone and platy v4
 * niter 200): cp_dyn_euler3d 3.4-5.3x, cp_dynamics3d 3.0-4.9x faster. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DYN3_HAVE_AVX2 1

#define FOLLOW3_CHUNK 2048

/* The lower corner index along one axis and the two linear weights
 * (w1 = (x0 + 1) - ix, w0 = ix - x0), as step_tri. */
__attribute__((target("avx2"), always_inline)) static inline __m256i
axis8(__m256 g, int L, __m256 *w1, __m256 *w0)
{
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    /* ((g + 1) * L - 1) / 2: halving is exact, so * 0.5 is the same float */
    __m256 i = _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(g, one),
                                                         _mm256_set1_ps((float)L)),
                                           one),
                             half);
    __m256i i0 = _mm256_cvttps_epi32(_mm256_floor_ps(i));
    i0 = _mm256_min_epi32(_mm256_max_epi32(i0, _mm256_set1_epi32(-1)), _mm256_set1_epi32(L - 1));
    __m256i i1 = _mm256_add_epi32(i0, _mm256_set1_epi32(1));
    *w1 = _mm256_sub_ps(_mm256_cvtepi32_ps(i1), i);
    *w0 = _mm256_sub_ps(i, _mm256_cvtepi32_ps(i0));
    return i1; /* the corner in the padded grid */
}

/* Lane k's 4 floats at P + o[k], transposed: v[j] holds float j of each lane. */
__attribute__((target("avx2"), always_inline)) static inline void load4x8(const float *P,
                                                                              const int32_t o[8],
                                                                              __m256 v[4])
{
    __m256 r0 = _mm256_loadu2_m128(P + o[4], P + o[0]), r1 = _mm256_loadu2_m128(P + o[5], P + o[1]);
    __m256 r2 = _mm256_loadu2_m128(P + o[6], P + o[2]), r3 = _mm256_loadu2_m128(P + o[7], P + o[3]);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    v[0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    v[1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    v[2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    v[3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

/* step_tri on 8 lanes, s = (gx, gy, gz); corner offsets are int32 (the
 * caller checks that the field fits). */
__attribute__((target("avx2"), always_inline)) static inline void step8_tri(const field3 *g,
                                                                                __m256 s[3])
{
    __m256 wx1, wx0, wy1, wy0, wz1, wz0;
    __m256i cx = axis8(s[0], g->Lx, &wx1, &wx0), cy = axis8(s[1], g->Ly, &wy1, &wy0),
            cz = axis8(s[2], g->Lz, &wz1, &wz0);
    __m256 w[8] = {_mm256_mul_ps(_mm256_mul_ps(wx1, wy1), wz1),
                   _mm256_mul_ps(_mm256_mul_ps(wx0, wy1), wz1),
                   _mm256_mul_ps(_mm256_mul_ps(wx1, wy0), wz1),
                   _mm256_mul_ps(_mm256_mul_ps(wx0, wy0), wz1),
                   _mm256_mul_ps(_mm256_mul_ps(wx1, wy1), wz0),
                   _mm256_mul_ps(_mm256_mul_ps(wx0, wy1), wz0),
                   _mm256_mul_ps(_mm256_mul_ps(wx1, wy0), wz0),
                   _mm256_mul_ps(_mm256_mul_ps(wx0, wy0), wz0)};
    __m256i off = _mm256_add_epi32(
        _mm256_add_epi32(_mm256_mullo_epi32(cz, _mm256_set1_epi32((int)g->ps)),
                         _mm256_mullo_epi32(cy, _mm256_set1_epi32((int)g->rs))),
        _mm256_mullo_epi32(cx, _mm256_set1_epi32(3)));
    /* the corner values in step_tri's order (q0, q0 + 3, q2, q2 + 3, ...),
     * component k: two 4-float loads a lane for each pair of corners */
    int32_t o[8];
    _mm256_storeu_si256((__m256i *)o, off);
    const size_t po[4] = {0, g->rs, g->ps, g->ps + g->rs};
    __m256 q[8][3];
    for (int c = 0; c < 4; c++) {
        __m256 A[4], B[4];
        load4x8(g->F + po[c], o, A);
        load4x8(g->F + po[c] + 2, o, B);
        q[2 * c][0] = A[0], q[2 * c][1] = A[1], q[2 * c][2] = A[2];
        q[2 * c + 1][0] = A[3], q[2 * c + 1][1] = B[2], q[2 * c + 1][2] = B[3];
    }
    const __m256 mone = _mm256_set1_ps(-1.0f), one = _mm256_set1_ps(1.0f);
    for (int k = 0; k < 3; k++) {
        __m256 acc = _mm256_setzero_ps(); /* 0 + x, as the scalar sum (-0 -> +0) */
        for (int c = 0; c < 8; c++)
            acc = _mm256_add_ps(acc, _mm256_mul_ps(q[c][k], w[c]));
        __m256 v = _mm256_add_ps(s[k], acc);
        v = _mm256_blendv_ps(v, one, _mm256_cmp_ps(v, one, _CMP_GT_OQ));
        s[k] = _mm256_blendv_ps(v, mone, _mm256_cmp_ps(v, mone, _CMP_LT_OQ));
    }
}

/* A group of 8 lanes: the state s, steps made t, the previous two states
 * q1 q2 (bits), a saved state sv made at step ts with the next save at step
 * ns; act marks lanes that hold a voxel, J[k] its number. */
typedef struct lanes3 {
    __m256 s[3];
    __m256i q1[3], q2[3], sv[3], t, ts, ns, act;
    size_t J[8];
} lanes3;

/* Ends the lanes in fin (results stored, the steps left in a cycle made by
 * step_tri) and gives them the next voxels of [*next, j1); returns how many
 * lanes went idle. */
__attribute__((target("avx2"))) static int lanes3_refill(const field3 *g, lanes3 *L, __m256i fin,
                                                         __m256i per, const size_t *idx,
                                                         size_t *next, size_t j1, size_t n,
                                                         int niter, const float Ln[3], float *p)
{
    float S[3][8];
    int32_t T[8], PER[8], ACT[8], Q2[3][8];
    _mm256_storeu_si256((__m256i *)T, L->t);
    _mm256_storeu_si256((__m256i *)PER, per);
    _mm256_storeu_si256((__m256i *)ACT, L->act);
    for (int c = 0; c < 3; c++) {
        _mm256_storeu_ps(S[c], L->s[c]);
        _mm256_storeu_si256((__m256i *)Q2[c], L->q2[c]);
    }
    int idle = 0;
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(fin));
    while (m) {
        int k = __builtin_ctz(m);
        m &= m - 1;
        float st[3] = {S[0][k], S[1][k], S[2][k]};
        int rem = PER[k] ? (niter - T[k]) % PER[k] : 0;
        if (rem && PER[k] == 2) /* two-cycle: the state at niter is the one before */
            for (int c = 0; c < 3; c++)
                memcpy(&st[c], &Q2[c][k], sizeof st[c]);
        else
            for (int r = 0; r < rem; r++)
                step_tri(g, st);
        store_tri(st, L->J[k], n, Ln, p);
        if (*next < j1) {
            start_tri(idx[*next], g->Ly, g->Lx, Ln, st);
            L->J[k] = (*next)++;
        } else {
            st[0] = st[1] = st[2] = 0.0f;
            ACT[k] = 0;
            idle++;
        }
        for (int c = 0; c < 3; c++)
            S[c][k] = st[c];
    }
    for (int c = 0; c < 3; c++) {
        L->s[c] = _mm256_blendv_ps(L->s[c], _mm256_loadu_ps(S[c]), _mm256_castsi256_ps(fin));
        L->q1[c] = _mm256_blendv_epi8(L->q1[c], _mm256_castps_si256(L->s[c]), fin);
        L->sv[c] = _mm256_blendv_epi8(L->sv[c], _mm256_castps_si256(L->s[c]), fin);
        L->q2[c] = _mm256_andnot_si256(fin, L->q2[c]);
    }
    L->act = _mm256_loadu_si256((const __m256i *)ACT);
    L->t = _mm256_andnot_si256(fin, L->t);
    L->ts = _mm256_andnot_si256(fin, L->ts);
    L->ns = _mm256_blendv_epi8(L->ns, _mm256_set1_epi32(1), fin);
    return idle;
}

/* One step of a group and its cycle bookkeeping (as DYN_FOLLOW); returns the
 * lanes that are done (cycle found or niter reached), *per their periods
 * (0: none). */
__attribute__((target("avx2"), always_inline)) static inline __m256i
lanes3_step(const field3 *g, lanes3 *L, __m256i nm1, __m256i *per)
{
    const __m256i ione = _mm256_set1_epi32(1), itwo = _mm256_set1_epi32(2),
                  i32 = _mm256_set1_epi32(32);
    step8_tri(g, L->s);
    __m256i t = L->t = _mm256_add_epi32(L->t, ione);
    __m256i u[3], eq1 = _mm256_set1_epi32(-1), eq2 = _mm256_cmpgt_epi32(t, ione), eqs = eq1;
    for (int c = 0; c < 3; c++) {
        u[c] = _mm256_castps_si256(L->s[c]);
        eq1 = _mm256_and_si256(eq1, _mm256_cmpeq_epi32(u[c], L->q1[c]));
        eq2 = _mm256_and_si256(eq2, _mm256_cmpeq_epi32(u[c], L->q2[c]));
        eqs = _mm256_and_si256(eqs, _mm256_cmpeq_epi32(u[c], L->sv[c]));
    }
    /* period: 1, else 2, else t - ts, else 0 (niter reached) */
    __m256i pr = _mm256_and_si256(eqs, _mm256_sub_epi32(t, L->ts));
    pr = _mm256_blendv_epi8(pr, itwo, eq2);
    *per = _mm256_blendv_epi8(pr, ione, eq1);
    __m256i fin = _mm256_or_si256(_mm256_or_si256(eq1, eq2),
                                  _mm256_or_si256(eqs, _mm256_cmpgt_epi32(t, nm1)));
    __m256i save = _mm256_cmpeq_epi32(t, L->ns);
    for (int c = 0; c < 3; c++) {
        L->sv[c] = _mm256_blendv_epi8(L->sv[c], u[c], save);
        L->q2[c] = L->q1[c];
        L->q1[c] = u[c];
    }
    L->ts = _mm256_blendv_epi8(L->ts, t, save);
    L->ns = _mm256_blendv_epi8(L->ns,
                               _mm256_blendv_epi8(_mm256_add_epi32(t, i32), _mm256_add_epi32(t, t),
                                                  _mm256_cmpgt_epi32(i32, t)),
                               save);
    return _mm256_and_si256(fin, L->act);
}

/* Follow voxels idx[j0..j1) (niter > 0) in two groups of 8 lanes: two
 * independent dependency chains keep the core busy. */
__attribute__((target("avx2"))) static void follow8_tri(const field3 *g, const size_t *idx,
                                                        size_t j0, size_t j1, size_t n, int niter,
                                                        const float Ln[3], float *p)
{
    lanes3 L[2];
    size_t next = j0;
    int nact = 0;
    for (int h = 0; h < 2; h++) {
        float S[3][8] = {{0}};
        int32_t ACT[8] = {0};
        for (int k = 0; k < 8; k++) {
            L[h].J[k] = 0;
            if (next < j1) {
                float st[3];
                start_tri(idx[next], g->Ly, g->Lx, Ln, st);
                for (int c = 0; c < 3; c++)
                    S[c][k] = st[c];
                L[h].J[k] = next++;
                ACT[k] = -1;
                nact++;
            }
        }
        for (int c = 0; c < 3; c++) {
            L[h].s[c] = _mm256_loadu_ps(S[c]);
            L[h].q1[c] = L[h].sv[c] = _mm256_castps_si256(L[h].s[c]);
            L[h].q2[c] = _mm256_setzero_si256();
        }
        L[h].act = _mm256_loadu_si256((const __m256i *)ACT);
        L[h].t = L[h].ts = _mm256_setzero_si256();
        L[h].ns = _mm256_set1_epi32(1);
    }
    const __m256i nm1 = _mm256_set1_epi32(niter - 1);
    while (nact > 0) {
        __m256i per0, per1;
        __m256i fin0 = lanes3_step(g, &L[0], nm1, &per0);
        __m256i fin1 = lanes3_step(g, &L[1], nm1, &per1);
        if (!_mm256_testz_si256(fin0, fin0))
            nact -= lanes3_refill(g, &L[0], fin0, per0, idx, &next, j1, n, niter, Ln, p);
        if (!_mm256_testz_si256(fin1, fin1))
            nact -= lanes3_refill(g, &L[1], fin1, per1, idx, &next, j1, n, niter, Ln, p);
    }
}
#endif

int cp_dyn_euler3d(const float *dP, const float *cellprob, int Lz, int Ly, int Lx, float threshold,
                   int interp, int niter, int threads, float *p)
{
    size_t nvox;
    int rc = dyn_dims3(Lz, Ly, Lx, "euler3d", &nvox);
    if (rc != CP_OK)
        return rc;
    if (!dP || !cellprob || !p)
        return cp_error(CP_EINVAL, "euler3d: NULL argument");
    if (interp && (Lz < 2 || Ly < 2 || Lx < 2))
        return cp_error(CP_EINVAL, "euler3d: trilinear steps need a volume at least 2x2x2, got %dx%dx%d",
                        Lx, Ly, Lz);
    if (niter < 0)
        return cp_error(CP_EINVAL, "euler3d: negative niter %d", niter);
    int nt = dyn_threads(threads);
    field3 g;
    size_t *idx, n;
    if (field3_build(dP, cellprob, Lz, Ly, Lx, threshold, interp ? 1 : 0, nt, &g, &idx, &n) !=
        CP_OK)
        return CP_ENOMEM;
    const float Ln[3] = {(float)(Lx - 1), (float)(Ly - 1), (float)(Lz - 1)}; /* x, y, z */
#ifdef DYN3_HAVE_AVX2
    /* the lanes take int32 offsets: the padded field must fit */
    if (interp && niter > 0 && n > 0 && !getenv("CP_DYN_SCALAR") &&
        (size_t)(Lz + 2) * g.ps < (size_t)1 << 31 && __builtin_cpu_supports("avx2")) {
        size_t nchunk = (n + FOLLOW3_CHUNK - 1) / FOLLOW3_CHUNK;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (size_t ch = 0; ch < nchunk; ch++) {
            size_t j0 = ch * FOLLOW3_CHUNK, j1 = j0 + FOLLOW3_CHUNK < n ? j0 + FOLLOW3_CHUNK : n;
            follow8_tri(&g, idx, j0, j1, n, niter, Ln, p);
        }
        free(g.F);
        free(idx);
        return CP_OK;
    }
#endif
    float *pz = p, *py = p + n, *px = p + 2 * n;
    size_t plane = (size_t)Ly * Lx;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 256)
    for (size_t j = 0; j < n; j++) {
        size_t i = idx[j];
        if (interp) {
            float s[3];
            start_tri(i, Ly, Lx, Ln, s);
            DYN_FOLLOW(step_tri(&g, s), s, 3, niter);
            store_tri(s, j, n, Ln, p);
        } else {
            float s[3] = {(float)(i / plane), (float)(i % plane / (size_t)Lx),
                          (float)(i % (size_t)Lx)};
            DYN_FOLLOW(step_nearest(&g, s), s, 3, niter);
            pz[j] = s[0];
            py[j] = s[1];
            px[j] = s[2];
        }
    }
    free(g.F);
    free(idx);
    return CP_OK;
}
